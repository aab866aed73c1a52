"""engine/index/directory.py: the index directory belongs to probret (issue 12 §1).

Each attack of the issue and its siblings: the index never deletes, truncates or writes a file
it did not create, never follows a symlink inside itself, creates an index only in a missing or
empty directory, adopts an unmarked index of an earlier probret once, refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time

import numpy as np
import pytest

from probret.engine import _version
from probret.engine.errors import IndexStoreError
from probret.engine.index import INDEX_DIRNAME, MARKER_NAME, IndexReader, IndexWriter
from tests.engine.test_index import SETTINGS, assert_stored, video


def tree_digest(root) -> dict[str, str]:
    """Every file under ``root`` (not following links) with the sha256 of its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = ("link:" + os.readlink(p)) if os.path.islink(p) else \
                hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def make_index(idx, n: int = 2):
    with IndexWriter(idx, SETTINGS) as w:
        w.add([video(f"v{i}.mp4", 1, seed=i) for i in range(n)])


@pytest.fixture
def victim(tmp_path):
    """A directory of the user's own files that probret must never touch."""
    d = tmp_path / "victim"
    d.mkdir()
    (d / "000001.video_x.bin").write_bytes(b"user data that looks like a shard")
    (d / "thesis.txt").write_text("years of work")
    return d


# --------------------------------------------------------------------------------------------
# the marker; creation only in a missing or empty directory
# --------------------------------------------------------------------------------------------
def test_new_index_has_a_marker(tmp_path):
    make_index(tmp_path / "new" / "idx")
    marker = json.loads((tmp_path / "new" / "idx" / MARKER_NAME).read_text())
    assert marker["format"] == "probret-index" and marker["version"] == 2 and len(marker["id"]) == 32
    empty = tmp_path / "empty"
    empty.mkdir()
    make_index(empty)
    assert (empty / MARKER_NAME).is_file()


@pytest.mark.parametrize("rebuild", [False, True])
def test_index_dir_with_a_foreign_shards_folder_is_refused(tmp_path, victim, rebuild):
    """`--index DIR` on a directory that already has a shards/ subfolder: nothing is deleted,
    and --rebuild does not remove the tree."""
    d = tmp_path / "mine"
    (d / "shards").mkdir(parents=True)
    (d / "shards" / "000001.video_x.bin").write_bytes(b"mine")
    (d / "shards" / "notes.txt").write_text("mine too")
    before = tree_digest(d)
    with pytest.raises(IndexStoreError, match="not a probret index and not empty.*--index DIR"):
        IndexWriter(d, SETTINGS, rebuild=rebuild)
    assert tree_digest(d) == before


@pytest.mark.parametrize("rebuild", [False, True])
def test_a_foreign_index_db_is_neither_written_nor_deleted(tmp_path, rebuild):
    d = tmp_path / "app"
    d.mkdir()
    con = sqlite3.connect(d / "index.db")
    con.execute("CREATE TABLE customers (name TEXT)")
    con.execute("INSERT INTO customers VALUES ('ada')")
    con.commit()
    con.close()
    before = tree_digest(d)
    with pytest.raises(IndexStoreError, match="index.db is not a probret index"):
        IndexWriter(d, SETTINGS, rebuild=rebuild)
    with pytest.raises(IndexStoreError, match="not a probret index"):
        IndexReader(d)
    assert tree_digest(d) == before
    (d / "index.db").write_bytes(b"not even sqlite" * 100)  # a sibling: a file that is no database
    before = tree_digest(d)
    with pytest.raises(IndexStoreError, match="not a probret index"):
        IndexWriter(d, SETTINGS, rebuild=rebuild)
    assert tree_digest(d) == before


def test_a_directory_of_user_files_is_refused(tmp_path, victim):
    before = tree_digest(victim)
    for rebuild in (False, True):
        with pytest.raises(IndexStoreError, match="not a probret index and not empty"):
            IndexWriter(victim, SETTINGS, rebuild=rebuild)
    assert tree_digest(victim) == before
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(IndexStoreError, match="not a directory"):
        IndexWriter(f, SETTINGS)


# --------------------------------------------------------------------------------------------
# symlinks inside the index
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("marked", [True, False])
def test_shards_symlink_is_never_followed(tmp_path, victim, marked):
    """`.probret-index/shards` as a symlink to another directory: its files are not deleted (a
    downloaded folder's index, with or without a marker of its own)."""
    folder = tmp_path / "downloaded"
    idx = folder / INDEX_DIRNAME
    make_index(idx)
    for p in (idx / "shards").iterdir():
        p.unlink()
    (idx / "shards").rmdir()
    (idx / "shards").symlink_to(victim)
    if not marked:
        (idx / MARKER_NAME).unlink()
    before = tree_digest(victim)
    for rebuild in (False, True):
        with pytest.raises(IndexStoreError, match="symbolic link|not a probret index"):
            IndexWriter(idx, SETTINGS, rebuild=rebuild)
    with pytest.raises(IndexStoreError, match="symbolic link|not a probret index"):
        IndexReader(idx)
    assert tree_digest(victim) == before


def test_lock_symlink_to_a_file_is_not_truncated(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me")
    (idx / "lock").unlink()
    (idx / "lock").symlink_to(precious)
    with pytest.raises(IndexStoreError, match="symbolic link"):
        IndexWriter(idx, SETTINGS)
    assert precious.read_text() == "do not truncate me"
    (idx / "lock").unlink()
    os.link(precious, idx / "lock")  # a sibling: a hard link to the user's file
    with pytest.raises(IndexStoreError, match="linked 2 times"):
        IndexWriter(idx, SETTINGS)
    assert precious.read_text() == "do not truncate me"


def test_shard_file_symlink_is_never_written_or_cut(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"\1" * 4096)  # longer than the shard: a writer would cut the "tail"
    shard = idx / "shards" / "000001.video_x.bin"
    shard.unlink()
    shard.symlink_to(precious)
    with pytest.raises(IndexStoreError, match="symbolic link"):
        IndexWriter(idx, SETTINGS)
    with pytest.raises(IndexStoreError, match="symbolic link"):
        IndexReader(idx)
    assert precious.read_bytes() == b"\1" * 4096


def test_marker_and_db_symlinks_are_refused(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    other = tmp_path / "other"
    make_index(other, 3)
    (idx / MARKER_NAME).unlink()
    (idx / MARKER_NAME).symlink_to(other / MARKER_NAME)
    with pytest.raises(IndexStoreError, match="symbolic link"):
        IndexWriter(idx, SETTINGS)
    (idx / MARKER_NAME).unlink()
    (idx / MARKER_NAME).write_text(json.dumps({"format": "probret-index", "version": 2, "id": "x" * 32}))
    for n in ("index.db", "index.db-wal", "index.db-shm"):
        (idx / n).unlink(missing_ok=True)
    (idx / "index.db").symlink_to(other / "index.db")
    before = tree_digest(other)
    with pytest.raises(IndexStoreError, match="not a regular file|symbolic link"):
        IndexReader(idx)
    with pytest.raises(IndexStoreError):
        IndexWriter(idx, SETTINGS, rebuild=True)
    assert (other / "index.db").is_file() and tree_digest(other)["index.db"] == before["index.db"]


# --------------------------------------------------------------------------------------------
# deleting only what it created and recorded
# --------------------------------------------------------------------------------------------
def test_rebuild_removes_only_what_the_index_recorded(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    (idx / "shards" / "000009.video_x.bin").write_bytes(b"dropped here by hand")
    (idx / "README").write_text("a note the user left")
    said = []
    with IndexWriter(idx, SETTINGS, rebuild=True, say=said.append) as w:
        w.add([video("new.mp4", seed=7)])
    assert (idx / "shards" / "000009.video_x.bin").read_bytes() == b"dropped here by hand"
    assert (idx / "README").read_text() == "a note the user left"
    with IndexReader(idx) as r:
        assert [v.path for v in r.videos] == ["new.mp4"] and 9 not in r.shard_rows


# --------------------------------------------------------------------------------------------
# adoption and migration of an index of an earlier probret (format 1, no marker)
# --------------------------------------------------------------------------------------------
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, status TEXT NOT NULL, error TEXT, duration REAL, fps REAL, width INTEGER,
    height INTEGER, indexed_at REAL NOT NULL);
CREATE TABLE segments (video_id INTEGER NOT NULL, seg INTEGER NOT NULL, start REAL NOT NULL, stop REAL NOT NULL,
    timestamps BLOB NOT NULL, shard INTEGER NOT NULL, row INTEGER NOT NULL, PRIMARY KEY (video_id, seg));
CREATE INDEX segments_by_shard ON segments (shard, row);
CREATE TABLE shards (id INTEGER PRIMARY KEY, rows INTEGER NOT NULL);
"""


def make_v1_index(root, videos) -> None:
    """An index exactly as probret wrote it before the marker (format 1): TEXT paths, no
    checksums, no record of its files."""
    (root / "shards").mkdir(parents=True)
    con = sqlite3.connect(root / "index.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(V1_SCHEMA)
    settings = dict(SETTINGS.identity(), format_version=1)
    names = sorted(videos[0].tensors)
    layout = {n: {"dtype": "float32", "shape": list(videos[0].tensors[n].shape[1:])} for n in names}
    meta = {"format": "probret-index", "format_version": 1, "settings": settings, "created": time.time(),
            "generation": len(videos), "layout": layout, "model": {}, "probret_version": _version.__version__}
    con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    row = 0
    for v in videos:
        cur = con.execute("INSERT INTO videos (path, size, mtime_ns, status, duration, fps, width, height, indexed_at) "
                          "VALUES (?, ?, ?, 'ok', ?, ?, ?, ?, 0)", (v.path, v.size, v.mtime_ns, v.duration, v.fps,
                                                                    v.width, v.height))
        for k, (s, e) in enumerate(v.segments):
            con.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?, 1, ?)",
                        (cur.lastrowid, k, s, e, np.asarray(v.timestamps[k], "<f8").tobytes(), row + k))
        row += len(v.segments)
    con.execute("INSERT INTO shards VALUES (1, ?)", (row,))
    con.close()
    for n in names:
        data = np.concatenate([v.tensors[n] for v in videos]).astype("<f4").tobytes()
        (root / "shards" / f"000001.{n}.bin").write_bytes(data + b"\xee" * 7)  # and an unfinished tail


def test_unmarked_index_of_an_earlier_probret_is_adopted_once(tmp_path):
    idx = tmp_path / "old"
    vids = [video("a.mp4", 2, seed=1), video("sub/é.mp4", 1, seed=2)]
    make_v1_index(idx, vids)
    with pytest.raises(IndexStoreError, match="format 1 is older.*run `probret index FOLDER` once to migrate"):
        IndexReader(idx)
    said = []
    with IndexWriter(idx, SETTINGS, say=said.append) as w:
        assert w.counts()["videos"] == 2  # nothing re-encoded
    assert any("adopted" in m for m in said) and any("migrated from format 1 to 2" in m for m in said)
    assert json.loads((idx / MARKER_NAME).read_text())["version"] == 2
    with IndexReader(idx) as r:
        for v in vids:
            assert_stored(r, v)  # through the new per-row checksums
        list(r.blocks(sorted(r.layout)))
    said.clear()
    with IndexWriter(idx, SETTINGS, say=said.append):
        pass
    assert not any("adopted" in m or "migrated" in m for m in said)


def test_unmarked_index_with_anything_else_in_it_is_refused(tmp_path):
    idx = tmp_path / "old"
    make_v1_index(idx, [video("a.mp4")])
    (idx / "holiday.jpg").write_bytes(b"\xff\xd8")
    before = tree_digest(idx)
    with pytest.raises(IndexStoreError, match="not a probret index and not empty \\(holiday.jpg\\)"):
        IndexWriter(idx, SETTINGS)
    assert tree_digest(idx) == before and not (idx / MARKER_NAME).exists()


def test_newer_format_is_refused_never_misread(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    con = sqlite3.connect(idx / "index.db")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'format_version'")
    con.commit()
    con.close()
    for open_it in (lambda: IndexReader(idx), lambda: IndexWriter(idx, SETTINGS)):
        with pytest.raises(IndexStoreError, match="format 3 was written by a newer probret"):
            open_it()


def test_a_user_file_named_lock_is_not_mistaken_for_an_empty_index(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "lock").write_text("my own notes about locks, not a pid\n")
    with pytest.raises(IndexStoreError, match="not a probret index and not empty"):
        IndexWriter(d, SETTINGS)
    assert (d / "lock").read_text() == "my own notes about locks, not a pid\n"
    (d / "lock").write_text("12345\n")  # what a writer killed while creating the index leaves
    make_index(d)
    assert (d / MARKER_NAME).is_file()
