"""The on-disk index of a folder of videos: crash-safe, incremental, memory-mapped (torch-free).

Layout of an index directory (default ``FOLDER/.probret-index/``, see docs/search.md)::

    INDEX/index.db                 SQLite (WAL): header, one row per video, one per segment, shards
    INDEX/index.db-wal, -shm       SQLite's write-ahead log (part of the database)
    INDEX/lock                     fcntl lock of the single writer (holds the writer's pid)
    INDEX/shards/000001.<tensor>.bin   raw little-endian arrays, one file per stored tensor per shard
    INDEX/ann-g<gen>-*.faiss       optional ANN first stage (engine/search.py), rebuilt when stale

Every stored tensor has a fixed per-row shape (one row = one segment of one video); a shard file
is ``rows x row_shape`` in ``dtype`` with no header, so a reader maps it with ``np.memmap`` and an
index larger than RAM still searches. The database says how many rows of each shard are
*committed*; bytes beyond that are an unfinished append and are ignored (and cut off by the next
writer).

Crash safety (the argument is spelled out in docs/search.md): feature rows are written past the
committed end of a shard and ``fsync``-ed *before* the SQLite transaction that records the
video, its segments and the shard's new row count commits. SQLite (WAL, synchronous=FULL)
makes that commit atomic and durable. So at any instant a kill leaves either the old state
(the new rows are an ignored tail) or the new one (rows on disk, then recorded): a finished
video is never lost and a half-written one is never visible. A changed file is replaced in the
same transaction that adds its new version. Files no transaction references (orphan shards of a
crashed compaction, say) are deleted when the next writer opens.

Incremental rules: a file is (re-)encoded when its relative path is new or its size or
modification time (ns) differs from the stored ones; files that are gone drop out; files that
failed to decode are remembered with their reason and retried only when they change (or with
``retry_failed``). A change of the model (bundle sha256), of the frame-sampling settings, of
the storage dtype, of the index format or of the probret version forces a rebuild, said out
loud through ``say``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from probret.engine._version import __version__
from probret.engine.errors import DataError, IndexError_

__all__ = ["INDEX_DIRNAME", "INDEX_FORMAT", "INDEX_FORMAT_VERSION", "VIDEO_EXTENSIONS", "IndexSettings",
           "EncodedVideo", "FileEntry", "ScanResult", "IndexWriter", "IndexReader", "default_index_dir",
           "scan_folder", "open_reader", "read_header"]

log = logging.getLogger(__name__)

INDEX_DIRNAME = ".probret-index"
INDEX_FORMAT = "probret-index"
INDEX_FORMAT_VERSION = 1
DB_NAME = "index.db"
LOCK_NAME = "lock"
SHARD_DIR = "shards"
#: A shard is closed (a new one started) once it would pass this many bytes in one tensor file.
SHARD_MAX_BYTES = 1 << 31
#: Dead rows (removed or replaced videos) are compacted away once they outnumber live rows and
#: exceed this many.
COMPACT_MIN_DEAD = 1024

#: File extensions treated as videos; other files are ignored (counted, not reported one by one).
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".m2v", ".ts",
    ".mts", ".m2ts", ".3gp", ".3g2", ".ogv", ".gif", ".vob", ".mxf", ".h264", ".264", ".hevc", ".h265",
})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    duration REAL,
    fps REAL,
    width INTEGER,
    height INTEGER,
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    video_id INTEGER NOT NULL,
    seg INTEGER NOT NULL,
    start REAL NOT NULL,
    stop REAL NOT NULL,
    timestamps BLOB NOT NULL,
    shard INTEGER NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (video_id, seg)
);
CREATE INDEX IF NOT EXISTS segments_by_shard ON segments (shard, row);
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, rows INTEGER NOT NULL);
"""


def default_index_dir(folder: str | Path) -> Path:
    return Path(folder) / INDEX_DIRNAME


# --------------------------------------------------------------------------------------------
# settings and records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexSettings:
    """Everything the stored features depend on; any change forces a rebuild."""

    bundle_sha256: str
    num_frames: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    window: float = 30.0  # seconds per segment (0: one segment per video), see pipeline.plan_segments
    resize: str = "auto"  # "auto" | "exact" | "decoder", see pipeline.decode_video
    dtype: str = "float32"  # storage dtype of every tensor: "float32" | "float16"

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = [round(float(x), 8) for x in self.mean]
        d["std"] = [round(float(x), 8) for x in self.std]
        d["window"] = float(self.window)
        d["probret_version"] = __version__
        d["format_version"] = INDEX_FORMAT_VERSION
        return d


@dataclass
class EncodedVideo:
    """One finished video, the unit of commit: its segments' rows go in together or not at all."""

    path: str  # relative to the indexed folder, POSIX separators
    size: int
    mtime_ns: int
    duration: float
    fps: float
    width: int
    height: int
    segments: list[tuple[float, float]]  # (start, end) seconds
    timestamps: np.ndarray  # float64 (n_seg, T)
    tensors: dict[str, np.ndarray]  # name -> (n_seg, ...)


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, POSIX
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    """What an incremental update has to do (``IndexWriter.scan``)."""

    new: list[FileEntry] = field(default_factory=list)
    changed: list[FileEntry] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    failed_before: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), unchanged since
    ignored: int = 0  # files that are not videos by extension
    total_videos: int = 0  # video files on disk

    @property
    def todo(self) -> list[FileEntry]:
        return self.new + self.changed


def scan_folder(folder: str | Path, *, exclude: Sequence[str | Path] = ()) -> tuple[list[FileEntry], int]:
    """(video files sorted by relative path, number of non-video files ignored).

    Hidden files and directories (name starting with '.') are skipped, as is every directory in
    ``exclude`` (the index itself when it lives inside the folder). Symlinked files are followed,
    symlinked directories are not (no cycles)."""
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (give the directory that holds the videos)")
    excluded = set()
    for e in exclude:
        try:
            excluded.add(os.path.realpath(e))
        except OSError:
            pass
    found: list[FileEntry] = []
    ignored = 0

    def onerror(exc: OSError):
        log.warning("cannot list %s: %s", exc.filename, exc.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in excluded)
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                ignored += 1
                continue
            try:
                st = os.stat(full)
            except OSError as exc:
                log.warning("cannot stat %s: %s", full, exc.strerror)
                continue
            if not os.path.isfile(full):
                continue
            rel = Path(os.path.relpath(full, root)).as_posix()
            found.append(FileEntry(rel, int(st.st_size), int(st.st_mtime_ns)))
    found.sort(key=lambda f: f.path)
    return found, ignored


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _shard_file(root: Path, shard: int, name: str) -> Path:
    return root / SHARD_DIR / f"{shard:06d}.{name}.bin"


def _row_bytes(layout: dict[str, dict]) -> dict[str, int]:
    return {n: int(np.dtype(s["dtype"]).itemsize * int(np.prod(s["shape"], dtype=np.int64))) for n, s in layout.items()}


def _connect(db: Path, *, create: bool) -> sqlite3.Connection:
    if not create and not db.is_file():
        raise IndexError_(f"{db.parent}: no index here (run `probret index FOLDER` first)")
    try:
        conn = sqlite3.connect(str(db), timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=60000")
        if create:  # the writer; a reader changes nothing (the database is already in WAL mode)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise IndexError_(f"{db.parent}: the index is unreadable ({exc}); delete the directory or run with --rebuild") from None
    return conn


def _read_meta(conn: sqlite3.Connection, root: Path) -> dict[str, Any]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as exc:
        raise IndexError_(f"{root}: the index is unreadable ({exc}); delete the directory or run with --rebuild") from None
    try:
        return {k: json.loads(v) for k, v in rows}
    except ValueError as exc:
        raise IndexError_(f"{root}: the index header is damaged ({exc}); delete the directory or run with --rebuild") from None


def _describe_change(old: dict, new: dict) -> str:
    names = {"bundle_sha256": "model (bundle sha256)", "num_frames": "frames per segment", "image_size": "image size",
             "mean": "normalisation mean", "std": "normalisation std", "window": "segment window",
             "resize": "resize mode", "dtype": "storage dtype", "probret_version": "probret version",
             "format_version": "index format"}
    parts = []
    for key, label in names.items():
        a, b = old.get(key), new.get(key)
        if a != b:
            if key == "bundle_sha256":
                a = (a or "?")[:12]
                b = (b or "?")[:12]
            parts.append(f"{label} {a} -> {b}")
    return ", ".join(parts) or "settings changed"


# --------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------
class IndexWriter:
    """The single writer of an index (holds ``INDEX/lock`` until :meth:`close`).

    ``wait=False``: a second writer fails at once with :class:`IndexError_` naming the holder's
    pid; ``wait=True`` blocks until the lock is free. ``rebuild=True`` starts from scratch
    (also the way out of an unreadable index)."""

    def __init__(self, path: str | Path, settings: IndexSettings, *, model: dict | None = None, wait: bool = False,
                 rebuild: bool = False, say: Callable[[str], None] | None = None):
        self.root = Path(path)
        self.settings = settings
        self.model = dict(model or {})
        self.say = say or (lambda msg: log.info(msg))
        self._files: dict[tuple[int, str], Any] = {}
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / SHARD_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise IndexError_(f"cannot create the index directory {self.root} ({exc.strerror}); "
                              "pass --index DIR somewhere writable") from None
        self._lock(wait)
        try:
            self._open(rebuild)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------
    def _lock(self, wait: bool) -> None:
        lock = self.root / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise IndexError_(f"cannot open {lock} ({exc.strerror}); pass --index DIR somewhere writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            except OSError:
                holder = "?"
            if not wait:
                os.close(fd)
                raise IndexError_(f"index {self.root} is being written by another probret process (pid {holder}); "
                                  "wait for it to finish, or pass --wait to queue behind it") from None
            self.say(f"index {self.root} is being written by another probret process (pid {holder}); waiting (--wait)")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wipe(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        # the log before the database: a stale -wal next to a new database could be replayed into it
        for name in (DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME):
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
        for f in self.root.glob("ann-*.faiss"):
            f.unlink(missing_ok=True)
        shutil.rmtree(self.root / SHARD_DIR, ignore_errors=True)
        (self.root / SHARD_DIR).mkdir(exist_ok=True)
        _fsync_dir(self.root)

    def _open(self, rebuild: bool) -> None:
        db = self.root / DB_NAME
        if rebuild:
            if db.exists():
                self.say(f"index {self.root}: rebuilding from scratch (--rebuild)")
            self._wipe()
        conn = _connect(db, create=True)
        meta = _read_meta(conn, self.root) if self._has_meta(conn) else {}
        identity = self.settings.identity()
        if meta:
            if meta.get("format") != INDEX_FORMAT:
                conn.close()
                raise IndexError_(f"{self.root}: not a probret index (format {meta.get('format')!r})")
            if int(meta.get("format_version", 0)) > INDEX_FORMAT_VERSION:
                conn.close()
                raise IndexError_(f"{self.root}: index format {meta.get('format_version')} was written by a newer probret "
                                  f"than this one ({__version__}); upgrade probret or run with --rebuild")
            old = meta.get("settings") or {}
            if old != identity:
                n = conn.execute("SELECT count(*) FROM videos").fetchone()[0]
                self.say(f"index {self.root}: rebuilding its {n} video(s): {_describe_change(old, identity)}")
                conn.close()
                self._wipe()
                conn = _connect(db, create=True)
                meta = {}
        if not meta:
            conn.executescript(_SCHEMA)
            with _Txn(conn):
                for k, v in {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "settings": identity,
                             "created": time.time(), "generation": 0, "layout": None}.items():
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))
            _fsync_dir(self.root)
            meta = _read_meta(conn, self.root)
        with _Txn(conn):
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (json.dumps(self.model),))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('probret_version', ?)", (json.dumps(__version__),))
        self._conn = conn
        self.layout: dict[str, dict] | None = meta.get("layout")
        self._recover()

    @staticmethod
    def _has_meta(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is not None

    def _recover(self) -> None:
        """Cut uncommitted tails off shard files, delete orphan files, drop videos whose committed
        rows are missing on disk (damage from outside probret)."""
        conn = self._conn
        shards = dict(conn.execute("SELECT id, rows FROM shards").fetchall())
        known = set()
        if self.layout:
            rb = _row_bytes(self.layout)
            for sid, rows in sorted(shards.items()):
                avail = rows
                for name, nbytes in rb.items():
                    f = _shard_file(self.root, sid, name)
                    known.add(f.name)
                    size = f.stat().st_size if f.exists() else 0
                    if size > rows * nbytes:
                        with open(f, "r+b") as fh:
                            fh.truncate(rows * nbytes)
                            os.fsync(fh.fileno())
                        log.info("index %s: cut an unfinished append off %s", self.root, f.name)
                    avail = min(avail, size // nbytes)
                if avail < rows:
                    lost = conn.execute("SELECT DISTINCT v.path FROM segments s JOIN videos v ON v.id = s.video_id "
                                        "WHERE s.shard = ? AND s.row >= ?", (sid, avail)).fetchall()
                    self.say(f"index {self.root}: shard {sid} is shorter than recorded ({avail} of {rows} rows; "
                             f"damaged outside probret?); {len(lost)} video(s) will be indexed again")
                    with _Txn(conn):
                        self._delete_paths([p for (p,) in lost])
                        conn.execute("UPDATE shards SET rows = ? WHERE id = ?", (avail, sid))
                        for name, nbytes in rb.items():
                            f = _shard_file(self.root, sid, name)
                            if f.exists():
                                with open(f, "r+b") as fh:
                                    fh.truncate(avail * nbytes)
        for f in (self.root / SHARD_DIR).iterdir():
            if f.name not in known:
                try:
                    f.unlink()
                except OSError:
                    pass
        self._shard_rows = dict(conn.execute("SELECT id, rows FROM shards").fetchall())

    # -- scanning ------------------------------------------------------------------------------
    def scan(self, folder: str | Path, *, retry_failed: bool = False) -> ScanResult:
        """Compare the folder with the index: what is new, changed, unchanged, removed."""
        files, ignored = scan_folder(folder, exclude=[self.root])
        stored = {p: (s, m, st, err) for p, s, m, st, err in
                  self._conn.execute("SELECT path, size, mtime_ns, status, error FROM videos")}
        res = ScanResult(ignored=ignored, total_videos=len(files))
        on_disk = set()
        for f in files:
            on_disk.add(f.path)
            old = stored.get(f.path)
            if old is None:
                res.new.append(f)
            elif (old[0], old[1]) != (f.size, f.mtime_ns):
                res.changed.append(f)
            elif old[2] != "ok" and retry_failed:
                res.changed.append(f)
            else:
                res.unchanged += 1
                if old[2] != "ok":
                    res.failed_before.append((f.path, old[3] or "failed"))
        res.removed = sorted(p for p in stored if p not in on_disk)
        return res

    # -- writing -------------------------------------------------------------------------------
    def _delete_paths(self, paths: Iterable[str]) -> None:
        for p in paths:
            row = self._conn.execute("SELECT id FROM videos WHERE path = ?", (p,)).fetchone()
            if row is not None:
                self._conn.execute("DELETE FROM segments WHERE video_id = ?", (row[0],))
                self._conn.execute("DELETE FROM videos WHERE id = ?", (row[0],))

    def _bump(self) -> None:
        self._conn.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'")

    def remove(self, paths: Sequence[str]) -> None:
        """Drop videos (their rows become dead space until compaction)."""
        if not paths:
            return
        with _Txn(self._conn):
            self._delete_paths(paths)
            self._bump()

    def add_failed(self, entry: FileEntry, reason: str) -> None:
        """Remember a file that could not be indexed (replaces an older version of it)."""
        with _Txn(self._conn):
            self._delete_paths([entry.path])
            self._conn.execute("INSERT INTO videos (path, size, mtime_ns, status, error, indexed_at) "
                               "VALUES (?, ?, ?, 'error', ?, ?)",
                               (entry.path, entry.size, entry.mtime_ns, reason, time.time()))
            self._bump()

    def _set_layout(self, tensors: dict[str, np.ndarray]) -> None:
        layout = {n: {"dtype": self.settings.dtype, "shape": list(a.shape[1:])} for n, a in sorted(tensors.items())}
        with _Txn(self._conn):
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'layout'", (json.dumps(layout),))
        self.layout = layout

    def _file(self, shard: int, name: str):
        key = (shard, name)
        if key not in self._files:
            path = _shard_file(self.root, shard, name)
            created = not path.exists()
            fh = open(path, "r+b" if not created else "w+b")
            if created:
                _fsync_dir(self.root / SHARD_DIR)
            self._files[key] = fh
        return self._files[key]

    def _reserve(self, rows: int) -> tuple[int, int]:
        """(shard, first row) for ``rows`` new rows: the last shard while it has room (an empty
        shard takes any batch), else a new one."""
        rb = _row_bytes(self.layout)
        cap = max(1, SHARD_MAX_BYTES // max(rb.values()))
        sid = max(self._shard_rows) if self._shard_rows else 0
        if sid and (self._shard_rows[sid] == 0 or self._shard_rows[sid] + rows <= cap):
            return sid, self._shard_rows[sid]
        for key in [k for k in self._files if k[0] == sid]:
            self._files.pop(key).close()
        sid += 1
        self._shard_rows[sid] = 0
        return sid, 0

    def add(self, videos: Sequence[EncodedVideo]) -> None:
        """Append the videos' rows, fsync them, then commit their records in one transaction."""
        if not videos:
            return
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
            raise IndexError_(f"index {self.root}: stored tensors {sorted(self.layout)} differ from the model's {names}; "
                              "run with --rebuild")
        dtype = np.dtype(self.settings.dtype)
        for n in names:
            want = tuple(self.layout[n]["shape"])
            for v in videos:
                if tuple(v.tensors[n].shape[1:]) != want:
                    raise IndexError_(f"index {self.root}: tensor {n} has shape {v.tensors[n].shape[1:]} but the index "
                                      f"stores {want}; run with --rebuild")
        rows = sum(len(v.segments) for v in videos)
        sid, start = self._reserve(rows)
        rb = _row_bytes(self.layout)
        for n in names:
            block = np.concatenate([np.asarray(v.tensors[n], dtype=dtype) for v in videos], axis=0)
            data = np.ascontiguousarray(block).astype(dtype.newbyteorder("<"), copy=False).tobytes()
            assert len(data) == rows * rb[n]
            fh = self._file(sid, n)
            fh.seek(start * rb[n])
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        now = time.time()
        conn = self._conn
        with _Txn(conn):
            conn.execute("INSERT OR REPLACE INTO shards (id, rows) VALUES (?, ?)", (sid, start + rows))
            row = start
            for v in videos:
                self._delete_paths([v.path])
                cur = conn.execute("INSERT INTO videos (path, size, mtime_ns, status, error, duration, fps, width, height, "
                                   "indexed_at) VALUES (?, ?, ?, 'ok', NULL, ?, ?, ?, ?, ?)",
                                   (v.path, v.size, v.mtime_ns, float(v.duration), float(v.fps), int(v.width),
                                    int(v.height), now))
                vid = cur.lastrowid
                conn.executemany("INSERT INTO segments (video_id, seg, start, stop, timestamps, shard, row) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(vid, k, float(s), float(e), np.asarray(v.timestamps[k], "<f8").tobytes(), sid, row + k)
                                  for k, (s, e) in enumerate(v.segments)])
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
        the new shards are orphans until one transaction repoints every segment at them; the old
        ones are orphans after it (deleted now, or by the next writer)."""
        c = self.counts()
        if self.layout is None or not c["dead_rows"] or not (force or (c["dead_rows"] > max(COMPACT_MIN_DEAD, c["segments"]))):
            return False
        rb = _row_bytes(self.layout)
        old_ids = sorted(self._shard_rows)
        for f in list(self._files):
            self._files.pop(f).close()
        segs = self._conn.execute("SELECT video_id, seg, shard, row FROM segments ORDER BY video_id, seg").fetchall()
        cap = max(1, SHARD_MAX_BYTES // max(rb.values()))
        sid = (max(old_ids) if old_ids else 0) + 1
        new_ids, moves = [], []
        maps = {}
        for i in range(0, len(segs), cap):
            part = segs[i:i + cap]
            new_ids.append(sid)
            for name, nbytes in rb.items():
                with open(_shard_file(self.root, sid, name), "wb") as out:
                    for (_, _, shard, row) in part:
                        key = (shard, name)
                        if key not in maps:
                            maps[key] = np.memmap(_shard_file(self.root, shard, name), dtype=np.uint8, mode="r")
                        out.write(maps[key][row * nbytes:(row + 1) * nbytes].tobytes())
                    out.flush()
                    os.fsync(out.fileno())
            moves.extend((sid, k, vid, seg) for k, (vid, seg, _, _) in enumerate(part))
            sid += 1
        maps.clear()
        _fsync_dir(self.root / SHARD_DIR)
        with _Txn(self._conn):
            self._conn.executemany("UPDATE segments SET shard = ?, row = ? WHERE video_id = ? AND seg = ?", moves)
            self._conn.execute("DELETE FROM shards")
            self._conn.executemany("INSERT INTO shards (id, rows) VALUES (?, ?)",
                                   [(s, min(cap, len(segs) - k * cap)) for k, s in enumerate(new_ids)])
            self._bump()
        for s in old_ids:
            for name in rb:
                try:
                    _shard_file(self.root, s, name).unlink()
                except FileNotFoundError:
                    pass
        self._shard_rows = dict(self._conn.execute("SELECT id, rows FROM shards").fetchall())
        return True


class _Txn:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                self.conn.execute("ROLLBACK")
                raise IndexError_(f"cannot write the index ({e})") from None
        else:
            self.conn.execute("ROLLBACK")
        return False


# --------------------------------------------------------------------------------------------
# the reader
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoEntry:
    id: int
    path: str
    size: int
    mtime_ns: int
    duration: float
    fps: float
    width: int
    height: int


class IndexReader:
    """A consistent snapshot of an index for searching: video and segment tables in RAM, the
    feature rows memory-mapped. Takes no lock (SQLite WAL lets it read while a writer appends:
    it sees the last committed state)."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        if not self.root.is_dir():
            raise IndexError_(f"{self.root}: no index here (run `probret index FOLDER` first)")
        conn = _connect(self.root / DB_NAME, create=False)
        try:
            conn.execute("BEGIN")
            if not IndexWriter._has_meta(conn):
                raise IndexError_(f"{self.root}: the index is empty or unfinished; run `probret index` again")
            self.meta = _read_meta(conn, self.root)
            if self.meta.get("format") != INDEX_FORMAT:
                raise IndexError_(f"{self.root}: not a probret index")
            if int(self.meta.get("format_version", 0)) > INDEX_FORMAT_VERSION:
                raise IndexError_(f"{self.root}: written by a newer probret; upgrade probret or run with --rebuild")
            vids = conn.execute("SELECT id, path, size, mtime_ns, duration, fps, width, height FROM videos "
                                "WHERE status = 'ok' ORDER BY path").fetchall()
            self.failed = conn.execute("SELECT path, error FROM videos WHERE status != 'ok' ORDER BY path").fetchall()
            segs = conn.execute("SELECT s.video_id, s.seg, s.start, s.stop, s.shard, s.row FROM segments s "
                                "JOIN videos v ON v.id = s.video_id ORDER BY v.path, s.seg").fetchall()
            self.shard_rows = dict(conn.execute("SELECT id, rows FROM shards").fetchall())
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise IndexError_(f"{self.root}: the index is unreadable ({exc}); delete the directory or run with --rebuild") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.settings: dict = self.meta.get("settings") or {}
        self.layout: dict[str, dict] = self.meta.get("layout") or {}
        self.generation = int(self.meta.get("generation", 0))
        self.videos = [VideoEntry(*v) for v in vids]
        pos = {v.id: i for i, v in enumerate(self.videos)}
        n = len(segs)
        self.seg_video = np.fromiter((pos[s[0]] for s in segs), dtype=np.int64, count=n)
        self.seg_index = np.fromiter((s[1] for s in segs), dtype=np.int64, count=n)
        self.seg_start = np.fromiter((s[2] for s in segs), dtype=np.float64, count=n)
        self.seg_end = np.fromiter((s[3] for s in segs), dtype=np.float64, count=n)
        self.seg_shard = np.fromiter((s[4] for s in segs), dtype=np.int64, count=n)
        self.seg_row = np.fromiter((s[5] for s in segs), dtype=np.int64, count=n)
        # segments are sorted by video: video i owns segments [video_offsets[i], video_offsets[i + 1])
        counts = np.bincount(self.seg_video, minlength=len(self.videos))
        self.video_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._by_path = {v.path: i for i, v in enumerate(self.videos)}

    def close(self) -> None:
        self._maps.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "IndexReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_segments(self) -> int:
        return int(self.seg_video.shape[0])

    def video_index(self, path: str) -> int | None:
        return self._by_path.get(path)

    def tensor(self, shard: int, name: str) -> np.ndarray:
        """The committed rows of one tensor of one shard, memory-mapped (rows, *shape)."""
        key = (shard, name)
        if key not in self._maps:
            spec = self.layout.get(name)
            if spec is None:
                raise IndexError_(f"{self.root}: the index stores no tensor {name!r} (it has {sorted(self.layout)})")
            rows = self.shard_rows.get(shard, 0)
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            shape = (rows, *spec["shape"])
            f = _shard_file(self.root, shard, name)
            need = rows * dtype.itemsize * int(np.prod(spec["shape"], dtype=np.int64))
            try:
                have = f.stat().st_size
            except FileNotFoundError:
                raise IndexError_(f"{self.root}: shard file {f.name} is missing; run with --rebuild") from None
            if have < need:
                raise IndexError_(f"{self.root}: shard file {f.name} is shorter than recorded; run `probret index` "
                                  "to repair it (or --rebuild)")
            self._maps[key] = np.memmap(f, dtype=dtype, mode="r", shape=shape) if rows else np.zeros(shape, dtype)
        return self._maps[key]

    def gather(self, names: Sequence[str], segments: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of ``segments`` (positions in the reader's segment order) for each tensor, in RAM."""
        segments = np.asarray(segments, dtype=np.int64)
        out = {}
        for name in names:
            spec = self.layout[name]
            arr = np.empty((len(segments), *spec["shape"]), dtype=np.dtype(spec["dtype"]))
            shards = self.seg_shard[segments]
            for sid in np.unique(shards):
                sel = np.nonzero(shards == sid)[0]
                arr[sel] = self.tensor(int(sid), name)[self.seg_row[segments[sel]]]
            out[name] = arr
        return out

    def blocks(self, names: Sequence[str], block: int = 8192):
        """Yield (segment positions, {name: rows}) covering every segment once, in storage order:
        contiguous live runs are passed as memmap slices (no copy), scattered rows gathered."""
        order = np.lexsort((self.seg_row, self.seg_shard))
        shards = self.seg_shard[order]
        rows = self.seg_row[order]
        start = 0
        n = len(order)
        while start < n:
            sid = shards[start]
            stop = min(n, start + block)
            same = np.nonzero(shards[start:stop] != sid)[0]
            if same.size:
                stop = start + int(same[0])
            r = rows[start:stop]
            if r[-1] - r[0] == stop - start - 1:  # contiguous rows
                yield order[start:stop], {nm: self.tensor(int(sid), nm)[int(r[0]):int(r[-1]) + 1] for nm in names}
            else:
                yield order[start:stop], {nm: self.tensor(int(sid), nm)[r] for nm in names}
            start = stop

    def timestamps(self, segment: int) -> np.ndarray:
        v = self.videos[int(self.seg_video[segment])]
        row = self._conn.execute("SELECT timestamps FROM segments WHERE video_id = ? AND seg = ?",
                                 (v.id, int(self.seg_index[segment]))).fetchone()
        return np.frombuffer(row[0], dtype="<f8").astype(np.float64) if row else np.zeros(0)


def open_reader(path: str | Path) -> IndexReader:
    return IndexReader(path)


def read_header(path: str | Path) -> dict | None:
    """The header (meta table) of the index at ``path``, or None when there is none or it cannot be
    read (callers that need the index open it properly and get the error then)."""
    db = Path(path) / DB_NAME
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
        try:
            return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        finally:
            conn.close()
    except (sqlite3.Error, ValueError):
        return None
