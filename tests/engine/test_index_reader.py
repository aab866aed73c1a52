"""engine/index/reader.py with a writer at work: readers and writers coexist (issue 12 §3).

Compaction under readers, many readers at once, a read-only index, damage reported with the
true reason (checksums), disk full, NaN, and the stored settings a later search reuses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from probret.engine.errors import IndexStoreError, ModelError
from probret.engine.index import IndexReader, IndexSettings, IndexWriter, stored_settings
from probret.engine.index import writer as W
from tests.engine.test_index import SETTINGS, assert_stored, video
from tests.engine.test_index_scan import run_without_permission_override

TESTS = str(Path(__file__).parent)


def test_reader_keeps_reading_what_a_compaction_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "SHARD_MAX_BYTES", 4 * 4 * 8 * 4)  # 4 rows per shard: several shards
    idx = tmp_path / "idx"
    vids = [video(f"v{i:02d}.mp4", 1 + i % 2, seed=i) for i in range(10)]
    with IndexWriter(idx, SETTINGS) as w:
        for v in vids:
            w.add([v])
        w.remove([v.path for v in vids[:5]])
        r = IndexReader(idx)  # opened before the compaction
        old = sorted(p.name for p in (idx / "shards").iterdir())
        assert w.compact(force=True)
    assert not set(old) & {p.name for p in (idx / "shards").iterdir()}  # the old shards are gone from disk
    with r:
        assert len(r.videos) == 5
        for v in vids[5:]:
            assert_stored(r, v)
        assert sum(len(s) for s, _ in r.blocks(sorted(r.layout), block=3)) == r.num_segments


def test_readers_never_fail_while_a_writer_compacts(tmp_path, monkeypatch):
    """Readers open and scan in a loop while another thread appends, removes and compacts:
    every reader sees a consistent committed state, none is told the index is damaged."""
    monkeypatch.setattr(W, "SHARD_MAX_BYTES", 4 * 4 * 8 * 2)
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video(f"base{i}.mp4", 1, seed=i) for i in range(4)])
    stop, errors, compactions = threading.Event(), [], [0]

    def churn():
        try:
            with IndexWriter(idx, SETTINGS) as w:
                k = 0
                while not stop.is_set():
                    w.add([video(f"tmp{k}.mp4", 1, seed=100 + k)])
                    w.remove([f"tmp{k}.mp4"])
                    compactions[0] += bool(w.compact(force=True))
                    k += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    t = threading.Thread(target=churn)
    t.start()
    reads = 0
    try:
        while compactions[0] < 25 and t.is_alive():
            with IndexReader(idx) as r:
                assert {v.path for v in r.videos} >= {f"base{i}.mp4" for i in range(4)}
                for i in range(4):
                    assert_stored(r, video(f"base{i}.mp4", 1, seed=i))
                reads += 1
    finally:
        stop.set()
        t.join(30)
    assert not errors and compactions[0] >= 25 and reads > 0


READ_MANY = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from probret.engine.index import IndexReader, plan_update
    from test_index import SETTINGS
    folder, idx = sys.argv[1], sys.argv[2]
    assert plan_update(folder, idx, SETTINGS).up_to_date
    with IndexReader(idx) as r:
        n = sum(len(s) for s, _ in r.blocks(sorted(r.layout)))
    print(n)
""")


def test_many_concurrent_searches_of_an_up_to_date_index_all_succeed(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    idx = folder / ".probret-index"
    entries = []
    for i in range(6):
        (folder / f"v{i}.mp4").write_bytes(b"x" * (i + 1))
        st = os.stat(folder / f"v{i}.mp4")
        entries.append(video(f"v{i}.mp4", 2, seed=i, size=st.st_size, mtime_ns=st.st_mtime_ns))
    with IndexWriter(idx, SETTINGS) as w:
        w.add(entries)
    holder = IndexWriter(idx, SETTINGS)  # a writer holds the lock all along: readers need none
    try:
        procs = [subprocess.Popen([sys.executable, "-c", READ_MANY.format(tests=TESTS), str(folder), str(idx)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        holder.close()
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    assert {o.strip() for o, _ in outs} == {"12"}


READ_ONLY = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from probret.engine.errors import IndexStoreError
    from probret.engine.index import IndexReader, IndexWriter, plan_update
    from test_index import SETTINGS
    folder, idx = sys.argv[1], sys.argv[2]
    out = {{"up_to_date": plan_update(folder, idx, SETTINGS).up_to_date}}
    with IndexReader(idx) as r:
        out["rows"] = sum(len(s) for s, _ in r.blocks(sorted(r.layout)))
    try:
        IndexWriter(idx, SETTINGS)
    except IndexStoreError as exc:
        out["writer"] = str(exc)
    print(json.dumps(out))
""")


def test_a_read_only_index_is_searched_without_an_update():
    """Another user's index (or a read-only mount): no write access anywhere in it."""
    base = Path(tempfile.mkdtemp(prefix="probret-ro-"))
    folder = base / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"x")
    st = os.stat(folder / "a.mp4")
    idx = folder / ".probret-index"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4", 3, size=st.st_size, mtime_ns=st.st_mtime_ns)])
    for dirpath, _, filenames in os.walk(base, topdown=False):
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o444)
        os.chmod(dirpath, 0o555)
    try:
        res = run_without_permission_override(READ_ONLY.format(tests=TESTS), folder, idx)
    finally:
        for dirpath, _, _ in os.walk(base):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(base)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["up_to_date"] and out["rows"] == 3
    assert "read-only" in out["writer"] and "--no-update" in out["writer"]


@pytest.mark.parametrize("verify", ["changed", "always"])
def test_flipped_bytes_are_detected_and_reported(tmp_path, verify):
    idx = tmp_path / "idx"
    vids = [video(f"v{i}.mp4", 2, seed=i) for i in range(3)]
    with IndexWriter(idx, SETTINGS) as w:
        w.add(vids)
    f = idx / "shards" / "000001.video_x.bin"
    data = bytearray(f.read_bytes())
    data[36 * 3 + 5] ^= 0x10  # one bit of row 3
    f.write_bytes(bytes(data))
    with IndexReader(idx, verify=verify) as r:
        assert_stored(r, vids[0])  # rows 0-1 are intact and still readable
        with pytest.raises(IndexStoreError, match="row 3, fails its checksum.*--rebuild"):
            list(r.blocks(["video_x"]))
        with pytest.raises(IndexStoreError, match="fails its checksum"):
            r.gather(["video_x"], np.arange(r.num_segments))
        r.gather(["frame_features", "ann"], np.arange(r.num_segments))  # other tensors are fine


def test_only_files_changed_since_probret_wrote_them_are_checked_by_default(tmp_path):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4", 2)])
        with IndexReader(idx) as r:
            assert r._trusted == {(1, n) for n in r.layout}  # as written: nothing to check
        w.add([video("b.mp4", 1, seed=2)])
        with IndexReader(idx) as r:
            assert r._trusted == {(1, n) for n in r.layout}  # the stamps follow the writer's appends
    f = idx / "shards" / "000001.ann.bin"
    f.write_bytes(f.read_bytes())  # same bytes, but rewritten from outside: checked again
    with IndexReader(idx) as r:
        assert (1, "ann") not in r._trusted and (1, "video_x") in r._trusted
        assert_stored(r, video("b.mp4", 1, seed=2))
    with pytest.raises(ValueError, match="verify must be one of"):
        IndexReader(idx, verify="sometimes")


def test_nan_features_are_never_stored(tmp_path):
    v = video("bad.mp4")
    v.tensors["ann"][0, 3] = np.nan
    with IndexWriter(tmp_path / "idx", SETTINGS) as w:
        w.add([video("ok.mp4")])
        with pytest.raises(ModelError, match="bad.mp4: the model produced NaN"):
            w.add([video("ok2.mp4", seed=4), v])
    with IndexReader(tmp_path / "idx") as r:
        assert [x.path for x in r.videos] == ["ok.mp4"]


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {tests!r})
    from probret.engine.errors import IndexStoreError
    from probret.engine.index import IndexWriter
    from test_index import SETTINGS, video
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    try:
        with IndexWriter(sys.argv[1], SETTINGS) as w:
            w.add([video("big.mp4", 4000, seed=9)])
    except IndexStoreError as exc:
        print(exc)
        sys.exit(exc.exit_code)
""")


def test_disk_full_is_a_clear_error_and_the_index_stays_usable(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), as a full disk refuses
    them with ENOSPC: a real failing write in a real subprocess."""
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("a.mp4", 2)])
    limit = max(p.stat().st_size for p in idx.iterdir()) + 60_000  # room for SQLite, not for the rows
    for _ in range(2):  # retrying on a still-full disk says the same thing
        res = subprocess.run([sys.executable, "-c", DISK_FULL.format(tests=TESTS), str(idx), str(limit)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 5, res.stderr
        assert res.stdout.startswith(f"cannot write the index {idx}: File too large; free some space")
        assert "Traceback" not in res.stderr
    with IndexReader(idx) as r:
        assert [v.path for v in r.videos] == ["a.mp4"]
        assert_stored(r, video("a.mp4", 2))
    with IndexWriter(idx, SETTINGS) as w:  # with space again it carries on
        w.add([video("b.mp4", 1, seed=3)])
    with IndexReader(idx) as r:
        assert len(r.videos) == 2


def test_stored_settings_and_rebuild_reason(tmp_path):
    idx = tmp_path / "idx"
    assert stored_settings(idx) is None
    with IndexWriter(idx, SETTINGS, model={"description": "demo"}) as w:
        w.add([video("a.mp4")])
    s = stored_settings(idx)
    assert s.settings == SETTINGS and s.model == {"description": "demo"} and s.rebuild_reason == "new index"
    ten = IndexSettings(**{**SETTINGS.__dict__, "window": 10.0, "dtype": "float16"})
    with IndexWriter(idx, ten):
        pass
    s = stored_settings(idx)
    assert s.settings == ten and s.rebuild_reason == "segment window 30.0 -> 10.0, storage dtype float32 -> float16"
    with IndexWriter(idx, ten, rebuild=True):
        pass
    assert stored_settings(idx).rebuild_reason == "--rebuild"


def test_kill_during_compaction_keeps_every_video(tmp_path):
    """A real SIGKILL while a compaction copies rows (the crash harness covers every point)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {TESTS!r})
        from probret.engine.index import IndexWriter, writer as W
        from test_index import SETTINGS
        original = W.IndexWriter._copy_live
        def copy_then_die(self, segs):
            out = original(self, segs)
            os.kill(os.getpid(), signal.SIGKILL)
        W.IndexWriter._copy_live = copy_then_die
        with IndexWriter(sys.argv[1], SETTINGS) as w:
            w.compact(force=True)
    """)
    idx = tmp_path / "idx"
    vids = [video(f"v{i}.mp4", 2, seed=i) for i in range(6)]
    with IndexWriter(idx, SETTINGS) as w:
        w.add(vids)
        w.remove(["v0.mp4"])
    res = subprocess.run([sys.executable, "-c", script, str(idx)], capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL
    with IndexWriter(idx, SETTINGS) as w:  # cleans the recorded orphans of the copy
        assert w.counts()["videos"] == 5
    assert sorted({p.name[:6] for p in (idx / "shards").iterdir()}) == ["000001"]
    with IndexReader(idx) as r:
        for v in vids[1:]:
            assert_stored(r, v)


def test_read_header_only_of_a_probret_index(tmp_path):
    import sqlite3

    from probret.engine.index import read_header
    d = tmp_path / "d"
    d.mkdir()
    con = sqlite3.connect(d / "index.db")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("""INSERT INTO meta VALUES ('format', '"something-else"')""")
    con.commit()
    con.close()
    assert read_header(d) is None and read_header(tmp_path / "missing") is None
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS):
        pass
    assert read_header(idx)["format"] == "probret-index"
