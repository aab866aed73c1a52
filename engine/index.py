"""The on-disk index of a folder of videos: crash-safe, incremental, memory-mapped (torch-free).

Layout of an index directory (default ``FOLDER/.probret-index/``, see docs/search.md)::

    INDEX/index.db                 SQLite (WAL): header, one row per video, one per segment, shards
    INDEX/index.db-wal, -shm       SQLite's write-ahead log (part of the database)
    INDEX/lock                     fcntl lock of the single writer (holds the writer's pid)
    INDEX/shards/000001.<tensor>.bin   raw little-endian arrays, one file per stored tensor per shard
    INDEX/ann/index.faiss, ann.json  optional ANN first stage (engine/ann.py), a cache kept up to date

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

Memory (docs/benchmarks_memory.md, bench/memory.py): the reader holds the video and segment
tables in RAM as numpy columns (:class:`VideoTable`: ~280 B a video resident with its segment,
was ~640 as a list of entry objects and a path dict), never the feature rows: an exact scan maps
the shards block by block (:meth:`IndexReader.blocks`, pages released behind it) and scattered
rows are read with ``pread`` (:meth:`IndexReader.gather`), so a search's resident set does not
grow with the stored bytes. Bytes per stored video (d=512, T'=12,
one segment): meanP 28,672 at float32 / 14,336 at float16; X-Pool 82,172 / 41,086; DUQ 86,268 /
43,134; T-MASS and SPEM 105,908 / 52,954 (of which the pair graph reads 79,284 / 39,642).

Storage dtype, decided on measurement (issue 6): **float16 loses nothing measurable in the
rankings** (the shipped demo SPEM on the procedural test split: R@1 0.32 and R@5 0.76 at both
dtypes, identical top-10 sets for all 100 captions, top-1 identical, largest score change
4.5e-5; a random d=512 SPEM over 4,096 videos: identical top-10 sets for 64 queries, 98 % in
the same order, the rest swapping near-ties, scores within 2.6e-5) and halves the disk, the
page cache and the bytes an exact scan reads: a million SPEM videos need 53 GB instead of
106 GB. Its cost is the float16 -> float32 conversion of every block an exact scan reads
(engine/search.py: ONNX Runtime's vectorised Cast, ~0.45 ns an element here, numpy's cast 1.15),
which a scan from the page cache pays on top of the pair graph; a scan that would not fit the
page cache at float32 gains far more than that. So
float16 is the storage ``probret index`` should use by default (the CLI's choice, ``--half``
today); this library default stays float32, the lossless reference the tests compare with.
Values beyond float16's range are refused (IndexError_), never stored as inf.

Incremental rules: a file is (re-)encoded when its relative path is new or its size or
modification time (ns) differs from the stored ones; files that are gone drop out; files that
failed to decode are remembered with their reason and retried only when they change (or with
``retry_failed``). A change of the model (bundle sha256), of the frame-sampling settings, of
the storage dtype, of the index format or of the probret version forces a rebuild, said out
loud through ``say``.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import mmap
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence as SequenceABC
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from probret.engine._version import __version__
from probret.engine.errors import DataError, IndexError_

__all__ = ["INDEX_DIRNAME", "INDEX_FORMAT", "INDEX_FORMAT_VERSION", "VIDEO_EXTENSIONS", "IndexSettings",
           "EncodedVideo", "FileEntry", "ScanResult", "IndexWriter", "IndexReader", "default_index_dir",
           "scan_folder", "open_reader", "read_header", "VideoEntry", "VideoTable", "BLOCK_BYTES"]

log = logging.getLogger(__name__)

INDEX_DIRNAME = ".probret-index"
INDEX_FORMAT = "probret-index"
INDEX_FORMAT_VERSION = 1
DB_NAME = "index.db"
LOCK_NAME = "lock"
SHARD_DIR = "shards"
#: A shard is closed (a new one started) once it would pass this many bytes in one tensor file.
SHARD_MAX_BYTES = 1 << 31
#: Bytes of stored tensors per block of a full scan (IndexReader.blocks): large enough that the
#: per-block overhead vanishes, small enough that converting a block to float32 stays cheap.
BLOCK_BYTES = 32 << 20
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

    @classmethod
    def for_bundle(cls, bundle, **kw) -> "IndexSettings":
        """The settings of an index of ``bundle``'s features: its hash, frames and preprocessing
        (a square ``image_size`` given as [S, S] becomes S); ``kw`` sets window, resize, dtype."""
        p = bundle.preprocessing
        size = p["image_size"]
        return cls(bundle_sha256=bundle.sha256, num_frames=bundle.num_frames,
                   image_size=int(size if isinstance(size, int) else size[0]), mean=tuple(p["mean"]),
                   std=tuple(p["std"]), **kw)

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
            with np.errstate(over="ignore"):  # float16 overflow is checked just below
                block = np.concatenate([np.asarray(v.tensors[n], dtype=dtype) for v in videos], axis=0)
            if dtype.itemsize < 4 and not np.isfinite(block).all():
                with np.errstate(over="ignore"):
                    bad = [v.path for v in videos if not np.isfinite(np.asarray(v.tensors[n], dtype=dtype)).all()]
                raise IndexError_(f"{bad[0]}: tensor {n} does not fit {dtype.name} storage (values beyond "
                                  f"+-{float(np.finfo(dtype).max):g}, or not finite); index with float32 storage "
                                  "(without --half)")
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
@dataclass(frozen=True, slots=True)
class VideoEntry:
    id: int
    path: str
    size: int
    mtime_ns: int
    duration: float
    fps: float
    width: int
    height: int


class VideoTable(SequenceABC):
    """The reader's videos in path order as columns: a read-only sequence of :class:`VideoEntry`
    built on access. Why: a list of a million entry objects (and their int, float and str
    objects) costs ~300 B a video of RAM; columns cost ~85 (numbers in numpy arrays, the paths
    as one UTF-8 blob with offsets). Measured: opening a 100k-video index grows the resident set
    by ~275 B a video in all (columns, segment arrays, allocator slack), against ~580 B a video
    for the list of entries and the path dict alone before."""

    _NUM = ("id", "size", "mtime_ns", "duration", "fps", "width", "height")

    def __init__(self, cursor, chunk: int = 1 << 16):
        """From rows (id, path, size, mtime_ns, duration, fps, width, height), fetched in chunks."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in self._NUM}
        blob, ends, total = [], [], 0
        while True:
            rows = cursor.fetchmany(chunk)
            if not rows:
                break
            for k, j in zip(self._NUM, (0, 2, 3, 4, 5, 6, 7)):
                kind = np.float64 if k in ("duration", "fps") else np.int64
                cols[k].append(np.array([np.nan if r[j] is None and kind is np.float64 else (r[j] or 0)
                                         for r in rows], dtype=kind))
            enc = [r[1].encode("utf-8", "surrogatepass") for r in rows]
            blob.append(b"".join(enc))
            lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
            ends.append(total + np.cumsum(lens))
            total += int(lens.sum())
        for k in self._NUM:
            setattr(self, k, np.concatenate(cols[k]) if cols[k] else np.zeros(0, np.float64 if k in ("duration", "fps")
                                                                               else np.int64))
        self._blob = b"".join(blob)
        self._ends = np.concatenate([[0], *ends]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.id)

    def path(self, i: int) -> str:
        return self._blob[self._ends[i]:self._ends[i + 1]].decode("utf-8", "surrogatepass")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("video index out of range")
        return VideoEntry(int(self.id[i]), self.path(i), int(self.size[i]), int(self.mtime_ns[i]),
                          float(self.duration[i]), float(self.fps[i]), int(self.width[i]), int(self.height[i]))

    def index_of(self, path: str) -> int | None:
        """Position of ``path`` (bisection: SQLite's BINARY order of UTF-8 = Python's code-point order)."""
        i = bisect.bisect_left(range(len(self)), path, key=self.path)
        return i if i < len(self) and self.path(i) == path else None

    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes for k in self._NUM) + len(self._blob) + self._ends.nbytes


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
            self.videos = VideoTable(conn.execute(
                "SELECT id, path, size, mtime_ns, duration, fps, width, height FROM videos WHERE status = 'ok' "
                "ORDER BY path"))
            self.failed = conn.execute("SELECT path, error FROM videos WHERE status != 'ok' ORDER BY path").fetchall()
            segs = self._read_segments(conn)
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
        # video ids -> positions in path order without a per-video dict (1M videos: ~100 MB less)
        ids = self.videos.id
        by_id = np.argsort(ids, kind="stable")
        seg_ids = segs[:, 0].astype(np.int64)
        self.seg_video = by_id[np.searchsorted(ids[by_id], seg_ids)] if len(ids) else np.zeros(0, np.int64)
        self.seg_index = segs[:, 1].astype(np.int64)
        self.seg_start = np.ascontiguousarray(segs[:, 2])
        self.seg_end = np.ascontiguousarray(segs[:, 3])
        self.seg_shard = segs[:, 4].astype(np.int64)
        self.seg_row = segs[:, 5].astype(np.int64)
        del segs
        # segments are sorted by video: video i owns segments [video_offsets[i], video_offsets[i + 1])
        counts = np.bincount(self.seg_video, minlength=len(self.videos))
        self.video_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._fds: dict[tuple[int, str], int] = {}

    @staticmethod
    def _read_segments(conn: sqlite3.Connection, chunk: int = 1 << 16) -> np.ndarray:
        """(n, 6) float64 [video id, seg, start, stop, shard, row] in (path, seg) order, fetched in
        chunks so that no list of a million Python tuples is ever held (ids and rows are < 2**53,
        exact in float64)."""
        n = conn.execute("SELECT count(*) FROM segments s JOIN videos v ON v.id = s.video_id").fetchone()[0]
        out = np.empty((n, 6), dtype=np.float64)
        cur = conn.execute("SELECT s.video_id, s.seg, s.start, s.stop, s.shard, s.row FROM segments s "
                           "JOIN videos v ON v.id = s.video_id ORDER BY v.path, s.seg")
        i = 0
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                break
            out[i:i + len(rows)] = rows
            i += len(rows)
        return out[:i]

    def close(self) -> None:
        self._maps.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
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
        return self.videos.index_of(path)

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
        """Rows of ``segments`` (positions in the reader's segment order) for each tensor, in RAM.

        Read with ``pread`` rather than through the memory map: touching scattered rows of a
        mapping maps far more than the rows (measured: 1,000 rows of 20,000 mapped the whole
        245 MB file, the kernel faulting in whole page-cache folios), so re-ranking ANN candidates
        would grow the resident set with the index; a read copies just the rows."""
        segments = np.asarray(segments, dtype=np.int64)
        out = {}
        for name in names:
            spec = self.layout[name]
            arr = np.empty((len(segments), *spec["shape"]), dtype=np.dtype(spec["dtype"]))
            shards = self.seg_shard[segments]
            for sid in np.unique(shards):
                sel = np.nonzero(shards == sid)[0]
                arr[sel] = self._read_rows(int(sid), name, self.seg_row[segments[sel]])
            out[name] = arr
        return out

    def _read_rows(self, shard: int, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of one tensor of one shard read with pread (runs of consecutive rows in
        one call), in the stored dtype."""
        m = self.tensor(shard, name)  # checks the shard file (maps it; touches nothing)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *m.shape[1:]), dtype=m.dtype)
        if not len(rows) or not isinstance(m, np.memmap):
            return m[rows] if len(rows) else out
        if rows.min() < 0 or rows.max() >= len(m):
            raise IndexError(f"row out of range for shard {shard} of {name}")
        rb = _row_bytes(self.layout)[name]
        buf = memoryview(out.reshape(len(rows), -1).view(np.uint8).reshape(-1))
        fd = self._fds.get((shard, name))
        if fd is None:
            fd = self._fds[(shard, name)] = os.open(_shard_file(self.root, shard, name), os.O_RDONLY)
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(rows)]])
        for a, b in zip(starts.tolist(), ends.tolist()):
            view, pos = buf[a * rb:b * rb], int(rows[a]) * rb
            while len(view):
                got = os.preadv(fd, [view], pos)
                if got <= 0:
                    raise IndexError_(f"{self.root}: shard {shard} of {name} ended early; "
                                      "run `probret index` to repair it")
                view, pos = view[got:], pos + got
        return out

    def row_bytes(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """Stored bytes of one row (one segment) of each tensor (all of them by default)."""
        rb = _row_bytes(self.layout)
        return rb if names is None else {n: rb[n] for n in names}

    def blocks(self, names: Sequence[str], block: int | None = None, *, max_bytes: int = BLOCK_BYTES,
               release: bool = False):
        """Yield (segment positions, {name: rows}) covering every segment once, in storage order:
        contiguous live runs are passed as memmap slices (no copy, in the stored dtype), scattered
        rows gathered. A block holds ``block`` rows, or as many as fit ``max_bytes`` of the named
        tensors (at least one).

        ``release``: once the consumer asks for the next block, the pages of the previous one are
        dropped from this process's mapping (``madvise(MADV_DONTNEED)``: they stay in the page
        cache, a later touch maps them again with a minor fault). A full scan then holds at most one
        block of the index in its resident set whatever the index's size, instead of every page it
        touched: peak RSS does not grow with the number of videos (docs/benchmarks_memory.md)."""
        if block is None:
            per_row = max(1, sum(_row_bytes(self.layout)[n] for n in names)) if self.layout else 1
            block = max(1, int(max_bytes) // per_row)
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
            lo, hi = int(r[0]), int(r[-1]) + 1
            if hi - lo == stop - start:  # contiguous rows
                yield order[start:stop], {nm: self.tensor(int(sid), nm)[lo:hi] for nm in names}
            else:
                yield order[start:stop], {nm: self._read_rows(int(sid), nm, r) for nm in names}
            if release:
                for nm in names:
                    self._release(int(sid), nm, int(r.min()), int(r.max()) + 1)
            start = stop

    def _release(self, shard: int, name: str, lo: int, hi: int) -> None:
        """Drop rows [lo, hi) of one mapped tensor from the process's resident set (see blocks)."""
        arr = self._maps.get((shard, name))
        mm = getattr(arr, "_mmap", None)  # np.memmap's mmap.mmap (numpy has kept this name since 1.x)
        if mm is None or not hasattr(mm, "madvise"):
            return
        rb = _row_bytes(self.layout)[name]
        a = (lo * rb) // mmap.PAGESIZE * mmap.PAGESIZE  # madvise wants a page-aligned start
        try:
            mm.madvise(mmap.MADV_DONTNEED, a, hi * rb - a)
        except (OSError, ValueError):  # an advice, never an error
            pass

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
