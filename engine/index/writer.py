"""The single writer of an index: create or adopt the directory, append finished videos
crash-safely, drop removed ones, compact.

Crash safety (docs/reliability.md has the argument and how it is tested): feature rows and
their checksums are written past the committed end of a shard and ``fsync``-ed *before* the
SQLite transaction that records the video, its segments and the shard's new row count commits.
SQLite (WAL, synchronous=FULL) makes that commit atomic and durable. So a kill at any instant
leaves either the old state (the new rows are an ignored tail) or the new one: a finished video
is never lost and a half-written one is never visible. A changed file is replaced in the same
transaction that adds its new version. A new shard file is recorded in the ``files`` table before
it is created, so probret deletes only files it can show it made (orphans of a crashed
compaction, the old shards after one).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from probret.engine import _version
from probret.engine.errors import IndexStoreError, ModelError
from probret.engine.index import durability
from probret.engine.index.directory import (DB_FILES, SHARD_FILE_RE, WriterLock, claim, fsync_dir, map_file,
                                            open_nofollow, real_dir, remove_temporaries, unlink_owned, write_marker)
from probret.engine.index.layout import CRC_DTYPE, crc_file, row_bytes, row_crcs, shard_file, shard_files
from probret.engine.index.scan import ScanResult, diff, list_folder
from probret.engine.index.schema import (ANN_DIR, ANN_FILES, DB_NAME, INDEX_FORMAT, INDEX_FORMAT_VERSION, SHARD_DIR,
                                         EncodedVideo, FileEntry, IndexSettings, Txn, check_version, connect,
                                         create_db, describe_change, path_key, path_of, read_meta, stored_files,
                                         write_failed)

log = logging.getLogger(__name__)

#: A shard is closed (a new one started) once it would pass this many bytes in one tensor file.
SHARD_MAX_BYTES = 1 << 31
#: Dead rows (removed or replaced videos) are compacted away once they outnumber live rows and
#: exceed this many.
COMPACT_MIN_DEAD = 1024


def _write_all(fd: int, data, offset: int, path) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    durability.point("write", path, offset)


def _stamp(fd: int, path: Path) -> tuple[str, int, int]:
    """(name, size, ctime_ns) of a shard file just written and synced: a reader trusts its rows
    while the file still has this size and ctime (layout.py: any later write changes the ctime)."""
    st = os.fstat(fd)
    return path.name, int(st.st_size), int(st.st_ctime_ns)


def _fsync(fd: int, path) -> None:
    os.fsync(fd)
    durability.point("fsync", path, os.fstat(fd).st_size)


class IndexWriter:
    """The single writer of an index (holds ``INDEX/lock`` until :meth:`close`).

    ``wait=False``: a second writer fails at once with :class:`IndexStoreError` naming the holder's
    pid; ``wait=True`` blocks until the lock is free. ``rebuild=True`` starts from scratch (also
    the way out of an unreadable index); it deletes only files this index recorded.
    ``shard_max_bytes`` (default :data:`SHARD_MAX_BYTES`) closes a shard file at that size (the
    crash harness uses tiny shards to rotate often)."""

    def __init__(self, path: str | Path, settings: IndexSettings, *, model: dict | None = None, wait: bool = False,
                 rebuild: bool = False, say: Callable[[str], None] | None = None, shard_max_bytes: int | None = None):
        self.root = Path(path)
        self.shard_max_bytes = int(shard_max_bytes or SHARD_MAX_BYTES)
        self.settings = settings
        self.model = dict(model or {})
        self.say = say or (lambda msg: log.info(msg))
        self._fds: dict[tuple[int, str], tuple[int, int]] = {}
        self._conn = None
        self._lock: WriterLock | None = None
        self.layout: dict[str, dict] | None = None
        claim(self.root, create=True)  # refuses a directory that is not probret's before touching it
        self._lock = WriterLock(self.root, wait=wait, say=self.say)
        try:
            self._open(rebuild)
        except (OSError, sqlite3.OperationalError) as exc:  # recovery writes too: a full disk can refuse them
            self.close()
            raise write_failed(self.root, exc) from None
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        for fds in self._fds.values():
            for fd in fds:
                os.close(fd)
        self._fds.clear()
        if self._conn is not None:
            self._save_snapshot()
            self._conn.close()
            self._conn = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _save_snapshot(self) -> None:
        """Rewrite the readers' table snapshot (snapshot.py) from the committed state, under the
        lock: always, so that ``probret index`` also replaces one an edit outside probret made
        stale. It is a cache: failing to write it costs later searches time, never results."""
        from probret.engine.index.reader import save_snapshot

        try:
            save_snapshot(self.root, self._conn, force=True)
        except (OSError, sqlite3.Error, IndexStoreError) as exc:
            log.warning("index %s: could not write its table snapshot (%s); searches read the database", self.root,
                        getattr(exc, "strerror", None) or exc)

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self, rebuild: bool) -> None:
        c = claim(self.root, create=True)  # again, under the lock
        remove_temporaries(self.root)
        real_dir(self.root / SHARD_DIR, create=True)
        if c.adopt:  # migrate first, mark last: a crash in between leaves it adoptable again
            self.index_id = uuid.uuid4().hex
            self._conn = connect(self.root / DB_NAME, writer=True)
            self._migrate()
            write_marker(self.root, self.index_id)
            self.say(f"index {self.root}: adopted an index of an earlier probret (marker added)")
        else:
            self.index_id = (c.marker or write_marker(self.root))["id"]
        if rebuild:
            if (self.root / DB_NAME).exists():
                self.say(f"index {self.root}: rebuilding from scratch (--rebuild)")
            self._wipe()
            self._create("--rebuild")
        elif not (self.root / DB_NAME).exists():
            self._create("new index")
        else:
            self._reopen()
        with Txn(self._conn, self.root):
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (json.dumps(self.model),))
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('probret_version', ?)",
                               (json.dumps(_version.__version__),))
        self._recover()

    def _reopen(self) -> None:
        """Open the existing database; rebuild (out loud) when the settings that define it changed."""
        if self._conn is None:
            self._conn = connect(self.root / DB_NAME, writer=True)
        meta = read_meta(self._conn, self.root)
        if not meta:  # killed while creating it: nothing was committed
            self._wipe()
            self._create("new index")
            return
        if meta.get("format") != INDEX_FORMAT:
            raise IndexStoreError(f"{self.root}: not a probret index (format {meta.get('format')!r})")
        if check_version(meta, self.root, writer=True) != INDEX_FORMAT_VERSION:
            self._migrate()
            meta = read_meta(self._conn, self.root)
        old, new = meta.get("settings") or {}, self.settings.identity()
        if old != new:
            n = self._conn.execute("SELECT count(*) FROM videos").fetchone()[0]
            reason = describe_change(old, new)
            self.say(f"index {self.root}: rebuilding its {n} video(s): {reason}")
            self._wipe()
            self._create(reason)
            return
        self.layout = meta.get("layout")

    def _create(self, reason: str) -> None:
        """A new database with this writer's settings (the file must not exist)."""
        self._conn = create_db(self.root / DB_NAME)
        fsync_dir(self.root)
        header = {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "settings": self.settings.identity(),
                  "created": time.time(), "generation": 0, "layout": None, "index_id": self.index_id,
                  "build_id": uuid.uuid4().hex, "rebuild_reason": reason}
        with Txn(self._conn, self.root):
            for k, v in header.items():
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))
        self.layout = None

    def _recorded(self) -> list[str]:
        try:
            return [n for (n,) in self._conn.execute("SELECT name FROM files")]
        except Exception:  # an unreadable database records nothing we could trust
            return []

    def _wipe(self) -> None:
        """Delete what this index created and recorded: its database, shard files, ANN cache."""
        recorded = self._recorded() if self._conn is not None else []
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        # the log before the database: a stale -wal next to a new database could be replayed into it
        for name in reversed(DB_FILES):
            unlink_owned(self.root / name)
        for name in recorded:
            unlink_owned(self.root / SHARD_DIR / name)
        if real_dir(self.root / ANN_DIR, create=False):
            for name in ANN_FILES:
                unlink_owned(self.root / ANN_DIR / name)
        fsync_dir(self.root / SHARD_DIR)
        fsync_dir(self.root)

    # -- migration (schema.py lists the versions) ------------------------------------------------
    def _migrate(self) -> None:
        """Bring a version-1 index to this version in place: paths to BLOB, a record of its shard
        files, per-row checksums. Each step can be repeated after a crash."""
        conn = self._conn
        meta = read_meta(conn, self.root)
        if int(meta.get("format_version", 0)) == INDEX_FORMAT_VERSION:
            return
        layout = meta.get("layout") or {}
        shards = dict(conn.execute("SELECT id, rows FROM shards").fetchall())
        names = [p.name for sid in shards for p in shard_files(self.root, sid, layout)]
        with Txn(conn, self.root):
            conn.execute("CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY)")
            conn.execute("CREATE TABLE IF NOT EXISTS stamps (name TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                         "ctime_ns INTEGER NOT NULL)")
            conn.executemany("INSERT OR IGNORE INTO files VALUES (?)", [(n,) for n in names])
        for sid, rows in shards.items():
            for name, nbytes in row_bytes(layout).items():
                self._write_crc_of_existing(sid, name, rows, nbytes)
        settings = dict(meta.get("settings") or {}, format_version=INDEX_FORMAT_VERSION)
        with Txn(conn, self.root):
            conn.execute("UPDATE videos SET path = CAST(path AS BLOB) WHERE typeof(path) = 'text'")
            self._bump()
            for k, v in {"format_version": INDEX_FORMAT_VERSION, "settings": settings,
                         "build_id": uuid.uuid4().hex, "index_id": self.index_id}.items():
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))
        self.say(f"index {self.root}: migrated from format {meta.get('format_version')} to {INDEX_FORMAT_VERSION}")

    def _write_crc_of_existing(self, sid: int, name: str, rows: int, nbytes: int) -> None:
        src, out = shard_file(self.root, sid, name), crc_file(self.root, sid, name)
        step = max(1, (64 << 20) // max(1, nbytes))  # rows per read: 64 MB at a time
        fd = open_nofollow(src, os.O_RDONLY)
        crc_fd = open_nofollow(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, for_writing=True)
        try:
            for lo in range(0, rows, step):
                n = min(step, rows - lo)
                data = os.pread(fd, n * nbytes, lo * nbytes)
                if len(data) < n * nbytes:
                    break  # a short shard: recovery drops the videos whose rows are gone
                _write_all(crc_fd, row_crcs(data, nbytes).tobytes(), lo * CRC_DTYPE.itemsize, out)
            _fsync(crc_fd, out)
        finally:
            os.close(fd)
            os.close(crc_fd)

    # -- recovery ------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Cut uncommitted tails off shard files, delete recorded orphans, drop videos whose
        committed rows are missing on disk (damage from outside probret)."""
        conn = self._conn
        shards = dict(conn.execute("SELECT id, rows FROM shards").fetchall())
        for sid, rows in sorted(shards.items()):
            avail = min([rows] + [self._cut_tail(sid, name, rows, nbytes)
                                  for name, nbytes in row_bytes(self.layout or {}).items()])
            if avail < rows:
                self._drop_damaged(sid, rows, avail)
        live = {p.name for sid in shards for p in shard_files(self.root, sid, self.layout or {})}
        orphans = [n for n in self._recorded() if n not in live]
        for name in orphans:
            unlink_owned(self.root / SHARD_DIR / name)
        if orphans:
            fsync_dir(self.root / SHARD_DIR)
            with Txn(conn, self.root):
                conn.executemany("DELETE FROM files WHERE name = ?", [(n,) for n in orphans])
        recorded = set(self._recorded())
        strangers = [n for n in os.listdir(self.root / SHARD_DIR) if n not in recorded]
        if strangers:
            log.warning("index %s: %s/ holds %d file(s) probret did not create (%s); left alone", self.root,
                        SHARD_DIR, len(strangers), ", ".join(sorted(strangers)[:3]))
        self._shard_rows = dict(conn.execute("SELECT id, rows FROM shards").fetchall())

    def _cut_tail(self, sid: int, name: str, rows: int, nbytes: int) -> int:
        """Cut both files of one tensor of one shard back to ``rows`` rows; the rows they really hold."""
        avail = rows
        for path, width in ((shard_file(self.root, sid, name), nbytes), (crc_file(self.root, sid, name), 4)):
            try:
                fd = open_nofollow(path, os.O_RDWR, for_writing=True)
            except FileNotFoundError:
                return 0
            try:
                size = os.fstat(fd).st_size
                if size > rows * width:
                    self._conn.execute("DELETE FROM stamps WHERE name = ?", (path.name,))  # readers verify it all
                    os.ftruncate(fd, rows * width)
                    durability.point("truncate", path, rows * width)
                    _fsync(fd, path)
                    log.info("index %s: cut an unfinished append off %s", self.root, path.name)
                avail = min(avail, size // width)
            finally:
                os.close(fd)
        return avail

    def _drop_damaged(self, sid: int, rows: int, avail: int) -> None:
        conn = self._conn
        lost = conn.execute("SELECT DISTINCT v.path FROM segments s JOIN videos v ON v.id = s.video_id "
                            "WHERE s.shard = ? AND s.row >= ?", (sid, avail)).fetchall()
        self.say(f"index {self.root}: shard {sid} is shorter than recorded ({avail} of {rows} rows; "
                 f"damaged outside probret?); {len(lost)} video(s) will be indexed again")
        with Txn(conn, self.root):
            self._delete_paths([path_of(p) for (p,) in lost])
            conn.execute("UPDATE shards SET rows = ? WHERE id = ?", (avail, sid))
            self._bump()  # the videos changed: a reader's table snapshot of before is stale
        for name, nbytes in row_bytes(self.layout).items():
            self._cut_tail(sid, name, avail, nbytes)

    # -- scanning ------------------------------------------------------------------------------
    def scan(self, folder: str | Path, *, retry_failed: bool = False) -> ScanResult:
        """Compare the folder with the index: what is new, changed, unchanged, removed, skipped."""
        return diff(list_folder(folder, exclude=[self.root]), stored_files(self._conn), retry_failed=retry_failed)

    # -- writing -------------------------------------------------------------------------------
    def _delete_paths(self, paths: Iterable[str]) -> None:
        for p in paths:
            row = self._conn.execute("SELECT id FROM videos WHERE path = ?", (path_key(p),)).fetchone()
            if row is not None:
                self._conn.execute("DELETE FROM segments WHERE video_id = ?", (row[0],))
                self._conn.execute("DELETE FROM videos WHERE id = ?", (row[0],))

    def _bump(self) -> None:
        self._conn.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'")

    def remove(self, paths: Sequence[str]) -> None:
        """Drop videos (their rows become dead space until compaction)."""
        if not paths:
            return
        with Txn(self._conn, self.root):
            self._delete_paths(paths)
            self._bump()

    def add_failed(self, entry: FileEntry, reason: str) -> None:
        """Remember a file that could not be indexed (replaces an older version of it)."""
        with Txn(self._conn, self.root):
            self._delete_paths([entry.path])
            self._conn.execute("INSERT INTO videos (path, size, mtime_ns, status, error, indexed_at) "
                               "VALUES (?, ?, ?, 'error', ?, ?)",
                               (path_key(entry.path), entry.size, entry.mtime_ns, reason, time.time()))
            self._bump()

    def _set_layout(self, tensors: dict[str, np.ndarray]) -> None:
        layout = {n: {"dtype": self.settings.dtype, "shape": list(a.shape[1:])} for n, a in sorted(tensors.items())}
        with Txn(self._conn, self.root):
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'layout'", (json.dumps(layout),))
        self.layout = layout

    def _shard_fds(self, shard: int, name: str) -> tuple[int, int]:
        """(data fd, checksum fd) of one tensor of one shard, opened (created when new) once."""
        key = (shard, name)
        if key not in self._fds:
            paths = (shard_file(self.root, shard, name), crc_file(self.root, shard, name))
            if shard not in self._committed_shards():
                with Txn(self._conn, self.root):  # record before creating: only recorded files are deleted
                    self._conn.executemany("INSERT OR IGNORE INTO files VALUES (?)", [(p.name,) for p in paths])
                flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
            else:
                flags = os.O_RDWR
            self._fds[key] = tuple(open_nofollow(p, flags, for_writing=True) for p in paths)
            fsync_dir(self.root / SHARD_DIR)
        return self._fds[key]

    def _committed_shards(self) -> set[int]:
        return {s for (s,) in self._conn.execute("SELECT id FROM shards")}

    def _next_shard_id(self) -> int:
        """Above every shard id in use or on disk, so a new shard never meets an existing file."""
        ids = set(self._shard_rows) | self._committed_shards()
        ids |= {int(n[:6]) for n in os.listdir(self.root / SHARD_DIR) if SHARD_FILE_RE.match(n)}
        return max(ids, default=0) + 1

    def _reserve(self, rows: int) -> tuple[int, int]:
        """(shard, first row) for ``rows`` new rows: the last shard while it has room (an empty
        shard takes any batch), else a new one."""
        rb = row_bytes(self.layout)
        cap = max(1, self.shard_max_bytes // max(rb.values()))
        sid = max(self._shard_rows) if self._shard_rows else 0
        if sid and (self._shard_rows[sid] == 0 or self._shard_rows[sid] + rows <= cap):
            return sid, self._shard_rows[sid]
        for key in [k for k in self._fds if k[0] == sid]:
            for fd in self._fds.pop(key):
                os.close(fd)
        sid = self._next_shard_id()
        self._shard_rows[sid] = 0
        return sid, 0

    def _check_batch(self, videos: Sequence[EncodedVideo]) -> list[str]:
        names = sorted(videos[0].tensors)
        for v in videos:
            if sorted(v.tensors) != names:
                raise ValueError(f"{v.path}: tensors {sorted(v.tensors)} differ from {names}")
            n = len(v.segments)
            if v.timestamps.shape[0] != n or any(a.shape[0] != n for a in v.tensors.values()):
                raise ValueError(f"{v.path}: {n} segments but tensors/timestamps of another length")
        if self.layout is None:
            self._set_layout(videos[0].tensors)
        if sorted(self.layout) != names:
            raise IndexStoreError(f"index {self.root}: stored tensors {sorted(self.layout)} differ from the model's "
                                  f"{names}; run with --rebuild")
        for n in names:
            want = tuple(self.layout[n]["shape"])
            for v in videos:
                if tuple(v.tensors[n].shape[1:]) != want:
                    raise IndexStoreError(f"index {self.root}: tensor {n} has shape {v.tensors[n].shape[1:]} but the "
                                          f"index stores {want}; run with --rebuild")
        return names

    def _stored_block(self, videos: Sequence[EncodedVideo], name: str) -> bytes:
        """The rows of tensor ``name`` of ``videos`` as stored bytes; NaN and values that do not fit
        the storage dtype are refused (never stored, never ranked)."""
        dtype = np.dtype(self.settings.dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
            block = np.concatenate([np.asarray(v.tensors[name], dtype=dtype) for v in videos], axis=0)
            finite = [bool(np.isfinite(np.asarray(v.tensors[name], dtype=dtype)).all()) for v in videos]
        if not all(finite):
            bad = videos[finite.index(False)]
            raw = np.asarray(bad.tensors[name])
            if np.isfinite(raw).all():
                raise IndexStoreError(f"{bad.path}: tensor {name} does not fit {dtype.name} storage (values beyond "
                                      f"+-{float(np.finfo(dtype).max):g}, or not finite); index with float32 "
                                      "storage (without --half)")
            raise ModelError(f"{bad.path}: the model produced NaN or infinite features ({name}); the index stores "
                             "only finite values: check the model (probret-export's parity report)")
        return np.ascontiguousarray(block).astype(dtype.newbyteorder("<"), copy=False).tobytes()

    def add(self, videos: Sequence[EncodedVideo]) -> None:
        """Append the videos' rows and checksums, fsync them, then commit their records in one
        transaction. A failed write (disk full) leaves the index as it was, and says so."""
        if not videos:
            return
        names = self._check_batch(videos)
        blocks = {n: self._stored_block(videos, n) for n in names}
        rows = sum(len(v.segments) for v in videos)
        sid, start = self._reserve(rows)
        rb = row_bytes(self.layout)
        stamps = []
        try:
            for n in names:
                data_fd, crc_fd = self._shard_fds(sid, n)
                _write_all(data_fd, blocks[n], start * rb[n], shard_file(self.root, sid, n))
                _write_all(crc_fd, row_crcs(blocks[n], rb[n]).tobytes(), start * CRC_DTYPE.itemsize,
                           crc_file(self.root, sid, n))
                _fsync(data_fd, shard_file(self.root, sid, n))
                _fsync(crc_fd, crc_file(self.root, sid, n))
                stamps.append(_stamp(data_fd, shard_file(self.root, sid, n)))
        except OSError as exc:
            raise write_failed(self.root, exc) from None
        self._commit_rows(videos, sid, start, rows, stamps)

    def _commit_rows(self, videos: Sequence[EncodedVideo], sid: int, start: int, rows: int,
                     stamps: list[tuple[str, int, int]]) -> None:
        now = time.time()
        conn = self._conn
        with Txn(conn, self.root):
            conn.execute("INSERT OR REPLACE INTO shards (id, rows) VALUES (?, ?)", (sid, start + rows))
            conn.executemany("INSERT OR REPLACE INTO stamps VALUES (?, ?, ?)", stamps)
            row = start
            for v in videos:
                self._delete_paths([v.path])
                cur = conn.execute("INSERT INTO videos (path, size, mtime_ns, status, error, duration, fps, width, "
                                   "height, indexed_at) VALUES (?, ?, ?, 'ok', NULL, ?, ?, ?, ?, ?)",
                                   (path_key(v.path), v.size, v.mtime_ns, float(v.duration), float(v.fps),
                                    int(v.width), int(v.height), now))
                conn.executemany("INSERT INTO segments (video_id, seg, start, stop, timestamps, shard, row) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(cur.lastrowid, k, float(s), float(e), np.asarray(v.timestamps[k], "<f8").tobytes(),
                                   sid, row + k) for k, (s, e) in enumerate(v.segments)])
                row += len(v.segments)
            self._bump()
        self._shard_rows[sid] = start + rows

    # -- compaction ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        c = self._conn
        live = c.execute("SELECT count(*) FROM segments").fetchone()[0]
        total = c.execute("SELECT coalesce(sum(rows), 0) FROM shards").fetchone()[0]
        ok = c.execute("SELECT count(*) FROM videos WHERE status = 'ok'").fetchone()[0]
        bad = c.execute("SELECT count(*) FROM videos WHERE status != 'ok'").fetchone()[0]
        return {"videos": ok, "failed": bad, "segments": live, "rows": total, "dead_rows": total - live}

    def compact(self, *, force: bool = False) -> bool:
        """Rewrite live rows into fresh shards when dead rows dominate (or ``force``). Crash-safe:
        the new shards are recorded orphans until one transaction repoints every segment at them;
        the old ones are recorded orphans after it (deleted now, or by the next writer). A reader
        that opened the old shards keeps reading them (it holds their descriptors)."""
        c = self.counts()
        if self.layout is None or not c["dead_rows"] or not (force or (c["dead_rows"] > max(COMPACT_MIN_DEAD,
                                                                                             c["segments"]))):
            return False
        for key in list(self._fds):
            for fd in self._fds.pop(key):
                os.close(fd)
        old_ids = sorted(self._shard_rows)
        segs = self._conn.execute("SELECT video_id, seg, shard, row FROM segments ORDER BY video_id, seg").fetchall()
        try:
            moves, new_rows, stamps = self._copy_live(segs)
        except OSError as exc:
            raise write_failed(self.root, exc) from None
        with Txn(self._conn, self.root):
            self._conn.executemany("UPDATE segments SET shard = ?, row = ? WHERE video_id = ? AND seg = ?", moves)
            self._conn.execute("DELETE FROM shards")
            self._conn.executemany("INSERT INTO shards (id, rows) VALUES (?, ?)", sorted(new_rows.items()))
            self._conn.execute("DELETE FROM stamps")
            self._conn.executemany("INSERT INTO stamps VALUES (?, ?, ?)", stamps)
            self._bump()
        gone = [p.name for s in old_ids for p in shard_files(self.root, s, self.layout)]
        for name in gone:
            unlink_owned(self.root / SHARD_DIR / name)
        with Txn(self._conn, self.root):
            self._conn.executemany("DELETE FROM files WHERE name = ?", [(n,) for n in gone])
        self._shard_rows = dict(self._conn.execute("SELECT id, rows FROM shards").fetchall())
        return True

    def _copy_live(self, segs: list[tuple]) -> tuple[list[tuple], dict[int, int], list[tuple[str, int, int]]]:
        """Copy the rows of ``segs`` (video_id, seg, shard, row) into new shards, fsynced; returns
        the segment moves, the new shards' row counts and their files' stamps."""
        rb = row_bytes(self.layout)
        cap = max(1, self.shard_max_bytes // max(rb.values()))
        sid = self._next_shard_id()
        moves, new_rows, maps, stamps = [], {}, {}, []
        for i in range(0, len(segs), cap):
            part = segs[i:i + cap]
            self._shard_rows.setdefault(sid, 0)
            for name, nbytes in rb.items():
                data_fd, crc_fd = self._shard_fds(sid, name)
                for src in {shard for (_, _, shard, _) in part}:
                    if (src, name) not in maps:
                        maps[(src, name)] = map_file(shard_file(self.root, src, name))
                data = b"".join(maps[(shard, name)][row * nbytes:(row + 1) * nbytes].tobytes()
                                for (_, _, shard, row) in part)
                _write_all(data_fd, data, 0, shard_file(self.root, sid, name))
                _write_all(crc_fd, row_crcs(data, nbytes).tobytes(), 0, crc_file(self.root, sid, name))
                _fsync(data_fd, shard_file(self.root, sid, name))
                _fsync(crc_fd, crc_file(self.root, sid, name))
                stamps.append(_stamp(data_fd, shard_file(self.root, sid, name)))
            moves.extend((sid, k, vid, seg) for k, (vid, seg, _, _) in enumerate(part))
            new_rows[sid] = len(part)
            sid += 1
        maps.clear()
        return moves, new_rows, stamps
