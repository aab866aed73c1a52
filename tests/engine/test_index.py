"""engine/index.py: storage, incremental scan rules, lock, rebuild triggers, damage recovery.

Synthetic feature rows (no model, no decoding): these tests exercise the index alone.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import numpy as np
import pytest

from probret.engine import _version
from probret.engine import index as I
from probret.engine.index import writer as W
from probret.engine.errors import DataError, IndexStoreError
from probret.engine.index import EncodedVideo, IndexReader, IndexSettings, IndexWriter, scan_folder

SETTINGS = IndexSettings(bundle_sha256="a" * 64, num_frames=4, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


def video(path: str, n_seg: int = 1, seed: int = 0, size: int = 100, mtime_ns: int = 1) -> EncodedVideo:
    rng = np.random.default_rng(seed)
    return EncodedVideo(
        path=path, size=size, mtime_ns=mtime_ns, duration=2.0 * n_seg, fps=8.0, width=64, height=48,
        segments=[(2.0 * k, 2.0 * k + 2.0) for k in range(n_seg)],
        timestamps=np.stack([2.0 * k + np.array([0.25, 0.75, 1.25, 1.75]) for k in range(n_seg)]),
        tensors={"frame_features": rng.standard_normal((n_seg, 4, 8)).astype(np.float32),
                 "video_x": rng.standard_normal((n_seg, 3, 3)).astype(np.float32),
                 "ann": rng.standard_normal((n_seg, 8)).astype(np.float32)})


def rows_of(reader: IndexReader, path: str) -> dict[str, np.ndarray]:
    i = reader.video_index(path)
    segs = np.arange(reader.video_offsets[i], reader.video_offsets[i + 1])
    return reader.gather(sorted(reader.layout), segs)


def assert_stored(reader: IndexReader, v: EncodedVideo, atol: float = 0.0) -> None:
    got = rows_of(reader, v.path)
    for name, arr in v.tensors.items():
        np.testing.assert_allclose(got[name], arr, atol=atol, rtol=0)


def test_roundtrip_and_blocks(tmp_path):
    vids = [video("a.mp4", 1, 0), video("sub/b.mp4", 3, 1), video("c.mp4", 2, 2)]
    with IndexWriter(tmp_path / "idx", SETTINGS) as w:
        w.add(vids[:2])
        w.add(vids[2:])
    with IndexReader(tmp_path / "idx") as r:
        assert [v.path for v in r.videos] == ["a.mp4", "c.mp4", "sub/b.mp4"]  # sorted by path
        assert r.num_segments == 6 and r.video_offsets.tolist() == [0, 1, 3, 6]
        for v in vids:
            assert_stored(r, v)
        i = r.video_index("sub/b.mp4")
        seg = int(r.video_offsets[i]) + 2
        assert (r.seg_start[seg], r.seg_end[seg]) == (4.0, 6.0)
        np.testing.assert_array_equal(r.timestamps(seg), [4.25, 4.75, 5.25, 5.75])
        seen = np.zeros(r.num_segments, int)
        for segs, t in r.blocks(["video_x"], block=4):
            seen[segs] += 1
            np.testing.assert_array_equal(np.asarray(t["video_x"]), r.gather(["video_x"], segs)["video_x"])
        assert seen.tolist() == [1] * 6
        assert isinstance(r.tensor(1, "video_x"), np.memmap)


def test_float16_storage(tmp_path):
    s = IndexSettings(**{**SETTINGS.__dict__, "dtype": "float16"})
    v = video("a.mp4", 2)
    with IndexWriter(tmp_path / "idx", s) as w:
        w.add([v])
    with IndexReader(tmp_path / "idx") as r:
        assert r.tensor(1, "ann").dtype == np.float16
        assert_stored(r, v, atol=5e-3)
    assert (tmp_path / "idx" / "shards" / "000001.ann.bin").stat().st_size == 2 * 8 * 2


def test_scan_rules(tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for name in ("a.mp4", "b.MKV", "sub/c.webm", ".hidden/d.mp4", ".e.mp4", "notes.txt"):
        (folder / name).write_bytes(b"x" * 10)
    files, ignored = scan_folder(folder)
    assert [f.path for f in files] == ["a.mp4", "b.MKV", "sub/c.webm"] and ignored == 1
    with pytest.raises(DataError, match="no such folder"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="not a folder"):
        scan_folder(folder / "a.mp4")

    idx = folder / I.INDEX_DIRNAME
    with IndexWriter(idx, SETTINGS) as w:
        st = {f.path: f for f in files}
        w.add([video("a.mp4", size=st["a.mp4"].size, mtime_ns=st["a.mp4"].mtime_ns),
               video("gone.mp4")])
        w.add_failed(st["b.MKV"], "no video stream")
        scan = w.scan(folder)
        assert [f.path for f in scan.new] == ["sub/c.webm"]
        assert scan.changed == [] and scan.unchanged == 2 and scan.removed == ["gone.mp4"]
        assert scan.failed_before == [("b.MKV", "no video stream")]
        assert [f.path for f in w.scan(folder, retry_failed=True).changed] == ["b.MKV"]
        # size or mtime changes -> changed; the index's own files are never scanned
        os.utime(folder / "a.mp4", ns=(1, 12345))
        assert [f.path for f in w.scan(folder).changed] == ["a.mp4"]
        w.remove(scan.removed)
        assert w.counts()["videos"] == 1 and w.counts()["dead_rows"] == 1


def test_replacing_a_changed_video_keeps_one_version(tmp_path):
    with IndexWriter(tmp_path / "idx", SETTINGS) as w:
        w.add([video("a.mp4", 2, seed=1)])
        new = video("a.mp4", 1, seed=2, size=200)
        w.add([new])
    with IndexReader(tmp_path / "idx") as r:
        assert len(r.videos) == 1 and r.num_segments == 1 and r.videos[0].size == 200
        assert_stored(r, new)


def test_second_writer_fails_or_waits(tmp_path):
    idx = tmp_path / "idx"
    first = IndexWriter(idx, SETTINGS)
    with pytest.raises(IndexStoreError, match=rf"another probret process \(pid {os.getpid()}\).*--wait"):
        IndexWriter(idx, SETTINGS)
    got = []

    said = []

    def second():
        with IndexWriter(idx, SETTINGS, wait=True, say=said.append) as w:
            got.append(w.counts()["videos"])

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    assert not got  # still waiting
    first.add([video("a.mp4")])
    first.close()
    t.join(10)
    assert got == [1] and said == [f"index {idx} is being written by another probret process (pid {os.getpid()}); "
                                   "waiting (--wait)"]
    # a reader needs no lock
    with IndexWriter(idx, SETTINGS):
        with IndexReader(idx) as r:
            assert len(r.videos) == 1


def test_settings_change_rebuilds_out_loud(tmp_path):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4")])
    said = []
    with IndexWriter(idx, SETTINGS, say=said.append) as w:
        assert w.counts()["videos"] == 1 and not said
    other = IndexSettings(**{**SETTINGS.__dict__, "bundle_sha256": "b" * 64, "window": 10.0})
    with IndexWriter(idx, other, say=said.append) as w:
        assert w.counts()["videos"] == 0
    assert len(said) == 1 and "rebuilding its 1 video(s)" in said[0]
    assert "model (bundle sha256) aaaaaaaaaaaa -> bbbbbbbbbbbb" in said[0] and "segment window 30.0 -> 10.0" in said[0]
    assert not any(p.name.startswith("000001") for p in (idx / "shards").iterdir())


def test_probret_version_change_rebuilds(tmp_path, monkeypatch):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4")])
    monkeypatch.setattr(_version, "__version__", "99.0.0")
    said = []
    with IndexWriter(idx, SETTINGS, say=said.append) as w:
        assert w.counts()["videos"] == 0
    assert "probret version" in said[0] and "99.0.0" in said[0]


def test_unreadable_index(tmp_path):
    """probret's own index whose database was damaged: the true reason, and --rebuild repairs it."""
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4")])
    for name in ("index.db-wal", "index.db-shm"):
        (idx / name).unlink(missing_ok=True)
    (idx / "index.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexStoreError, match="unreadable.*--rebuild"):
        IndexWriter(idx, SETTINGS)
    with pytest.raises(IndexStoreError, match="unreadable"):
        IndexReader(idx)
    said = []
    with IndexWriter(idx, SETTINGS, rebuild=True, say=said.append) as w:
        w.add([video("a.mp4")])
    assert "rebuilding from scratch" in said[0]
    with IndexReader(idx) as r:
        assert len(r.videos) == 1
    with pytest.raises(IndexStoreError, match="no index here"):
        IndexReader(tmp_path / "nothing")


def test_unfinished_append_is_ignored_then_cut(tmp_path):
    """What a kill between the fsync of the rows and the commit leaves: a tail past the
    committed rows. Readers ignore it, the next writer cuts it off and reuses the space."""
    idx = tmp_path / "idx"
    a = video("a.mp4", 2)
    with IndexWriter(idx, SETTINGS) as w:
        w.add([a])
    f = idx / "shards" / "000001.video_x.bin"
    committed = f.stat().st_size
    with open(f, "ab") as fh:
        fh.write(b"\xff" * 100)
    with IndexReader(idx) as r:
        assert_stored(r, a)
    with IndexWriter(idx, SETTINGS) as w:
        assert f.stat().st_size == committed
        b = video("b.mp4", 1, seed=5)
        w.add([b])
    with IndexReader(idx) as r:
        assert_stored(r, a)
        assert_stored(r, b)


def test_orphans_probret_made_are_removed_and_foreign_files_kept(tmp_path, monkeypatch):
    """A writer killed after creating a new shard, before committing it, leaves recorded orphans:
    the next writer deletes them. A file probret did not create is left alone."""
    monkeypatch.setattr(W, "SHARD_MAX_BYTES", 4 * 4 * 8)  # one row of frame_features per shard
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4")])
        monkeypatch.setattr(W.IndexWriter, "_commit_rows", lambda *a: (_ for _ in ()).throw(RuntimeError("kill")))
        with pytest.raises(RuntimeError):
            w.add([video("b.mp4", seed=1)])
    monkeypatch.undo()
    orphans = sorted(p.name for p in (idx / "shards").iterdir() if p.name.startswith("000002."))
    assert len(orphans) == 6  # three tensors, .bin and .crc each
    foreign = idx / "shards" / "000007.video_x.bin"
    foreign.write_bytes(b"\0" * 64)
    with IndexWriter(idx, SETTINGS) as w:
        assert w.counts()["videos"] == 1
    assert not any((idx / "shards" / n).exists() for n in orphans)
    assert foreign.read_bytes() == b"\0" * 64
    with IndexWriter(idx, SETTINGS) as w:  # and a new shard does not collide with the foreign file
        w.add([video("c.mp4", seed=2)])
    with IndexReader(idx) as r:
        assert [v.path for v in r.videos] == ["a.mp4", "c.mp4"] and 7 not in r.shard_rows
    assert foreign.read_bytes() == b"\0" * 64


def test_damaged_shard(tmp_path):
    """A shard cut short outside probret: readers refuse it clearly; the writer drops the videos
    whose rows are gone (to index them again) and keeps the rest."""
    idx = tmp_path / "idx"
    a, b = video("a.mp4", 1, 1), video("b.mp4", 1, 2)
    with IndexWriter(idx, SETTINGS) as w:
        w.add([a])
        w.add([b])
    f = idx / "shards" / "000001.video_x.bin"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 4)
    with pytest.raises(IndexStoreError, match="shorter than recorded"):
        with IndexReader(idx) as r:
            r.gather(["video_x"], np.arange(r.num_segments))
    said = []
    with IndexWriter(idx, SETTINGS, say=said.append) as w:
        assert w.counts()["videos"] == 1
    assert "1 video(s) will be indexed again" in said[0]
    with IndexReader(idx) as r:
        assert [v.path for v in r.videos] == ["a.mp4"]
        assert_stored(r, a)


def test_shard_rotation_and_compaction(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "SHARD_MAX_BYTES", 4 * 4 * 8 * 4)  # 4 rows of frame_features per shard
    monkeypatch.setattr(W, "COMPACT_MIN_DEAD", 2)
    idx = tmp_path / "idx"
    vids = [video(f"v{i:02d}.mp4", 1 + i % 3, seed=i) for i in range(8)]
    with IndexWriter(idx, SETTINGS) as w:
        for v in vids:
            w.add([v])
        assert len(w._shard_rows) > 2
        w.remove([v.path for v in vids[:6]])
        c = w.counts()
        assert c["dead_rows"] > c["segments"]
        assert w.compact()
        assert w.counts()["dead_rows"] == 0
    with IndexReader(idx) as r:
        assert [v.path for v in r.videos] == ["v06.mp4", "v07.mp4"]
        for v in vids[6:]:
            assert_stored(r, v)
    with IndexWriter(idx, SETTINGS) as w:  # and it keeps appending after compaction
        w.add([video("z.mp4", 2, seed=99)])
    with IndexReader(idx) as r:
        assert len(r.videos) == 3
        assert_stored(r, video("z.mp4", 2, seed=99))


def test_reader_is_a_snapshot(tmp_path):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4")])
        r = IndexReader(idx)
        w.add([video("b.mp4", seed=3)])
        assert len(r.videos) == 1 and r.num_segments == 1
        r.close()
    with IndexReader(idx) as r:
        assert len(r.videos) == 2 and r.generation >= 2


def test_layout_mismatch_is_an_index_error(tmp_path):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4")])
        bad = video("b.mp4")
        bad.tensors["video_x"] = np.zeros((1, 5, 5), np.float32)
        with pytest.raises(IndexStoreError, match="--rebuild"):
            w.add([bad])
    # the database is untouched by the refused add
    con = sqlite3.connect(idx / "index.db")
    assert con.execute("SELECT count(*) FROM videos").fetchone()[0] == 1
    con.close()


def test_gather_reads_scattered_rows_and_paths_bisect(tmp_path):
    vids = [video(f"d{i:02d}/é{i}.mp4", 1 + i % 3, seed=i) for i in range(12)] + [video("Z.mp4", 2, seed=50)]
    with IndexWriter(tmp_path / "idx", SETTINGS) as w:
        w.add(vids[:5])
        w.add(vids[5:])
    with IndexReader(tmp_path / "idx") as r:
        for v in vids:  # video_index by bisection over the path-sorted videos
            assert r.videos[r.video_index(v.path)].path == v.path
            assert_stored(r, v)
        assert r.video_index("nope.mp4") is None and r.video_index("d99/x.mp4") is None
        segs = np.array([7, 3, 4, 5, 0, 9, 9, r.num_segments - 1])  # runs, jumps, repeats, out of order
        want = np.stack([r.tensor(int(r.seg_shard[s]), "video_x")[r.seg_row[s]] for s in segs])
        np.testing.assert_array_equal(r.gather(["video_x"], segs)["video_x"], want)
        assert r.gather(["ann"], np.zeros(0, np.int64))["ann"].shape == (0, 8)
        assert r.row_bytes() == {"ann": 32, "frame_features": 128, "video_x": 36}


def _rss_file() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.mark.skipif(_rss_file() is None, reason="needs Linux /proc/self/status")
def test_blocks_bounded_by_bytes_and_release_pages(tmp_path):
    """A full scan with release=True keeps about one block of the index mapped, without it every
    touched page stays in the resident set (the 1M-video search depends on this)."""
    n, width = 2048, 8192  # 2048 rows of 32 KiB: a 64 MiB tensor file
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, width)).astype(np.float32)
    with IndexWriter(tmp_path / "idx", SETTINGS) as w:
        for lo in range(0, n, 256):
            w.add([EncodedVideo(path=f"v{i:05d}.mp4", size=1, mtime_ns=1, duration=1.0, fps=1.0, width=8, height=8,
                                segments=[(0.0, 1.0)], timestamps=np.zeros((1, 4)),
                                tensors={"big": big[i % 64][None], "ann": big[i % 64][None, :8]})
                   for i in range(lo, lo + 256)])
    for release, limit in ((True, 8 << 20), (False, None)):
        with IndexReader(tmp_path / "idx") as r:
            before = _rss_file()
            seen, total = 0, np.zeros(width, np.float64)
            for segs, t in r.blocks(["big"], max_bytes=1 << 20, release=release):
                assert len(segs) == 32  # 1 MiB of 32 KiB rows
                total += t["big"].sum(axis=0, dtype=np.float64)
                seen += len(segs)
            grown = _rss_file() - before
            assert seen == n
            np.testing.assert_allclose(total, big.astype(np.float64).sum(0) * (n // 64), rtol=1e-6)
            if limit:
                assert grown < limit, grown
            else:
                assert grown > (32 << 20), grown  # the contrast: pages stay mapped without release


def test_float16_overflow_is_refused(tmp_path):
    s = IndexSettings(**{**SETTINGS.__dict__, "dtype": "float16"})
    v = video("a.mp4")
    v.tensors["video_x"][0, 0, 0] = 1e6  # beyond float16's 65504
    with IndexWriter(tmp_path / "idx", s) as w:
        with pytest.raises(IndexStoreError, match="float32 storage"):
            w.add([video("ok.mp4"), v])
    with IndexReader(tmp_path / "idx") as r:
        assert len(r.videos) == 0  # nothing of the refused batch was committed
