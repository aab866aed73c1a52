"""engine/index/snapshot.py: the readers' columnar table snapshot is used only when it matches
the committed state, and anything wrong with it (stale, foreign, truncated, damaged, wrong dtype
or shape, not a file) gives the SQLite rows instead: the same tables, never an error."""

from __future__ import annotations

import io
import json
import os
import zlib

import numpy as np
import pytest

from probret.engine.index import FileEntry, IndexReader, IndexWriter, snapshot
from probret.engine.index.reader import table_state
from probret.engine.index.snapshot import SNAPSHOT_NAME
from tests.engine.test_index import SETTINGS, assert_stored, video

TABLES = ("seg_video", "seg_index", "seg_start", "seg_end", "seg_shard", "seg_row", "video_offsets")


@pytest.fixture
def idx(tmp_path):
    """An index of 6 videos (one failed) with a snapshot written when its writer closed."""
    root = tmp_path / "idx"
    with IndexWriter(root, SETTINGS) as w:
        w.add([video(f"v{i}.mp4", 1 + i % 3, seed=i) for i in range(6)])
        w.add_failed(FileEntry("bad.mp4", 3, 4), "cannot decode")
    return root


def _tables(r: IndexReader) -> dict:
    v = r.videos
    out = {k: getattr(v, k) for k in v._NUM}
    out.update({k: getattr(r, k) for k in TABLES}, blob=np.frombuffer(v._blob, np.uint8), ends=v._ends)
    return out


def _from_sqlite(root) -> dict:
    """The reader's tables with no snapshot in the way (moved aside and back)."""
    path, aside = root / SNAPSHOT_NAME, root.parent / "aside"
    os.rename(path, aside) if path.exists() else None
    try:
        with IndexReader(root) as r:
            assert not r.from_snapshot
            return _tables(r)
    finally:
        os.rename(aside, path) if aside.exists() else None


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=True), k


def _reads_sqlite(root, reference: dict) -> None:
    with IndexReader(root) as r:
        assert not r.from_snapshot
        _same(_tables(r), reference)


def test_a_closed_writer_leaves_a_snapshot_readers_use_with_identical_tables(idx):
    with IndexReader(idx) as r:
        assert r.from_snapshot
        got = _tables(r)
        assert [p for p, _ in r.failed] == ["bad.mp4"]
        assert_stored(r, video("v4.mp4", 2, seed=4))
    _same(got, _from_sqlite(idx))


def test_every_change_makes_the_old_snapshot_stale_until_the_writer_closes(idx):
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("new.mp4", 2, seed=9)])
        with IndexReader(idx) as r:  # generation moved on: the SQLite rows, with the new video
            assert not r.from_snapshot and r.video_index("new.mp4") is not None
        w.remove(["v0.mp4"])
        with IndexReader(idx) as r:
            assert not r.from_snapshot and r.video_index("v0.mp4") is None
        w.compact(force=True)
        with IndexReader(idx) as r:
            assert not r.from_snapshot
            assert_stored(r, video("new.mp4", 2, seed=9))
    with IndexReader(idx) as r:
        assert r.from_snapshot and r.video_index("new.mp4") is not None and r.video_index("v0.mp4") is None
        assert_stored(r, video("new.mp4", 2, seed=9))
        got = _tables(r)
    _same(got, _from_sqlite(idx))


def test_a_snapshot_of_another_index_or_build_is_never_used(idx, tmp_path):
    reference = _from_sqlite(idx)
    other = tmp_path / "other"
    with IndexWriter(other, SETTINGS) as w:
        w.add([video(f"v{i}.mp4", 1 + i % 3, seed=i) for i in range(6)])
    (idx / SNAPSHOT_NAME).write_bytes((other / SNAPSHOT_NAME).read_bytes())  # same paths, other index_id
    _reads_sqlite(idx, reference)
    with IndexWriter(idx, SETTINGS, rebuild=True) as w:  # a new build_id, generation from 0 again
        w.add([video(f"v{i}.mp4", 1 + i % 3, seed=i) for i in range(6)])
        (idx / SNAPSHOT_NAME).write_bytes((other / SNAPSHOT_NAME).read_bytes())
        with IndexReader(idx) as r:
            assert not r.from_snapshot


def _rewritten(data: bytes, pickled: bool = False, **changes) -> bytes:
    """``data`` with columns replaced (``name=array``; ``pickled``: the ids as a pickled object
    array) and a valid CRC and header."""
    header, start = snapshot._header(data)
    fh = io.BytesIO(data[start:])
    cols = {k: np.lib.format.read_array(fh) for k in snapshot.COLUMNS}
    cols.update(changes)
    records = {k: snapshot._record(cols[k]) for k in snapshot.COLUMNS}
    if pickled:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, cols["id"].astype(object), allow_pickle=True)
        records["id"] = buf.getvalue()
    body = b"".join(records.values())
    header.update(crc32=zlib.crc32(body), bytes=len(body))
    return snapshot._record(np.frombuffer(json.dumps(header).encode(), np.uint8)) + body


@pytest.mark.parametrize("damage", [
    "empty", "garbage", "truncated_header", "truncated_body", "flipped_byte", "extra_bytes", "int32_ids",
    "short_column", "2d_path_ends", "unsorted_offsets", "stranger_segment", "pickled_column", "directory",
    "symlink"])
def test_damaged_snapshots_give_the_sqlite_rows(idx, tmp_path, damage):
    reference = _from_sqlite(idx)
    path = idx / SNAPSHOT_NAME
    data = path.read_bytes()
    header, start = snapshot._header(data)
    bad = {
        "empty": b"", "garbage": os.urandom(4096),
        "truncated_header": data[:start - 7], "truncated_body": data[:len(data) - 100],
        "flipped_byte": data[:start + 300] + bytes([data[start + 300] ^ 1]) + data[start + 301:],
        "extra_bytes": data + b"\0" * 8,
        "int32_ids": _rewritten(data, id=reference["id"].astype("<i4")),
        "short_column": _rewritten(data, fps=reference["fps"][:-1]),
        "2d_path_ends": _rewritten(data, path_ends=reference["ends"].reshape(1, -1)),
        "unsorted_offsets": _rewritten(data, path_ends=reference["ends"][::-1].copy()),
        "stranger_segment": _rewritten(data, id=reference["id"] + 1000),
    }
    path.unlink()
    if damage == "directory":
        path.mkdir()
    elif damage == "symlink":
        (tmp_path / "target").write_bytes(data)
        path.symlink_to(tmp_path / "target")
    elif damage == "pickled_column":  # a valid CRC over a pickle: never unpickled
        path.write_bytes(_rewritten(data, pickled=True))
    else:
        path.write_bytes(bad[damage])
    _reads_sqlite(idx, reference)


def test_the_writer_replaces_only_its_own_snapshots(idx, caplog):
    path = idx / SNAPSHOT_NAME
    path.write_bytes(path.read_bytes()[:200])  # a damaged probret snapshot: its header still says so
    with IndexWriter(idx, SETTINGS):
        pass
    with IndexReader(idx) as r:
        assert r.from_snapshot
    path.write_bytes(b"a user's file that happens to have this name\n")
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("new.mp4", 1, seed=7)])
    assert path.read_bytes() == b"a user's file that happens to have this name\n"
    assert "not a probret snapshot; left alone" in caplog.text
    with IndexReader(idx) as r:
        assert not r.from_snapshot and r.video_index("new.mp4") is not None


def test_a_snapshot_that_cannot_be_written_costs_time_not_the_update(idx, monkeypatch, caplog):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("probret.engine.index.directory.write_atomic", full)
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video("new.mp4", 1, seed=7)])
    assert "could not write its table snapshot (No space left on device)" in caplog.text
    with IndexReader(idx) as r:
        assert not r.from_snapshot and r.video_index("new.mp4") is not None


def test_every_truncation_of_a_snapshot_is_refused(idx):
    data = (idx / SNAPSHOT_NAME).read_bytes()
    with IndexReader(idx) as r:
        state = table_state(r._conn, r.meta)
    assert snapshot.decode(data, state) is not None
    for cut in list(range(0, len(data), max(1, len(data) // 97))) + [len(data) - 1]:
        assert snapshot.decode(data[:cut], state) is None
