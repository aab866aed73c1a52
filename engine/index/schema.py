"""What an index is on disk: names, format version, the SQLite schema, the settings that define
an index, and the records that go in and out of it.

Format versions (``INDEX_FORMAT_VERSION``, stored in the ``meta`` table and in the marker):

* 1 (probret <= 0.x before the marker): paths stored as TEXT (a name that is not valid UTF-8
  could not be stored at all), no per-row checksums, no marker file.
* 2: paths stored as BLOB, the bytes of ``os.fsencode(path)`` (any name the OS gives round-trips);
  a ``files`` table recording every shard file probret created; per-row CRC32 of every stored
  tensor in ``shards/NNNNNN.<tensor>.crc``; ``build_id`` in the header (new on every rebuild:
  the ANN cache is tied to it); the marker file ``probret-index.json``; a ``stamps`` table with
  the size and ctime of each shard file as probret last wrote it (layout.py: which rows a reader
  must verify).

An index of version 1 is migrated in place by the next writer (docs/reliability.md,
"Adoption and migration"); a reader of a version-1 index says to run ``probret index``. An
index of a version newer than this probret's is refused, never misread.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from probret.engine import _version
from probret.engine.errors import IndexStoreError

INDEX_DIRNAME = ".probret-index"
INDEX_FORMAT = "probret-index"
INDEX_FORMAT_VERSION = 2
#: Versions a writer migrates in place (each step in writer._migrate).
MIGRATABLE_VERSIONS = (1,)
DB_NAME = "index.db"
LOCK_NAME = "lock"
MARKER_NAME = "probret-index.json"
SHARD_DIR = "shards"
ANN_DIR = "ann"
ANN_FILES = ("index.faiss", "ann.json")
MANIFEST_NAME = "manifest.json"  # written by engine/shards.py

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
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
CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS stamps (name TEXT PRIMARY KEY, size INTEGER NOT NULL, ctime_ns INTEGER NOT NULL);
"""
#: The columns of each table, checked before an unmarked index is adopted.
TABLE_COLUMNS = {
    "meta": {"key", "value"},
    "videos": {"id", "path", "size", "mtime_ns", "status", "error", "duration", "fps", "width", "height", "indexed_at"},
    "segments": {"video_id", "seg", "start", "stop", "timestamps", "shard", "row"},
    "shards": {"id", "rows"},
}


def path_key(path: str) -> bytes:
    """How a relative path is stored: its OS bytes (names that are not UTF-8 round-trip)."""
    return os.fsencode(path)


def path_of(stored: bytes | str) -> str:
    """The relative path of a stored key (a str with surrogate escapes for undecodable bytes)."""
    return stored if isinstance(stored, str) else os.fsdecode(stored)


# --------------------------------------------------------------------------------------------
# settings and records
# --------------------------------------------------------------------------------------------
#: Labels of the settings (and header fields) that define an index, for "rebuilding: ..." lines.
SETTING_LABELS = {"bundle_sha256": "model (bundle sha256)", "num_frames": "frames per segment",
                  "image_size": "image size", "mean": "normalisation mean", "std": "normalisation std",
                  "window": "segment window", "resize": "resize mode", "dtype": "storage dtype",
                  "probret_version": "probret version", "format_version": "index format"}


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

    @classmethod
    def from_identity(cls, identity: dict[str, Any]) -> "IndexSettings":
        """The settings recorded in an index header (``meta.settings``), the inverse of identity()."""
        try:
            kw = {f.name: identity[f.name] for f in fields(cls) if f.name in identity}
            kw["mean"], kw["std"] = tuple(kw["mean"]), tuple(kw["std"])
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise IndexStoreError(f"the index header's settings are incomplete ({exc})") from None

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = [round(float(x), 8) for x in self.mean]
        d["std"] = [round(float(x), 8) for x in self.std]
        d["window"] = float(self.window)
        d["probret_version"] = _version.__version__
        d["format_version"] = INDEX_FORMAT_VERSION
        return d


def describe_change(old: dict, new: dict) -> str:
    """``"segment window 30.0 -> 10.0, ..."``: why an index with settings ``old`` is rebuilt."""
    parts = []
    for key, label in SETTING_LABELS.items():
        a, b = old.get(key), new.get(key)
        if a != b:
            if key == "bundle_sha256":
                a, b = (a or "?")[:12], (b or "?")[:12]
            parts.append(f"{label} {a} -> {b}")
    return ", ".join(parts) or "settings changed"


@dataclass
class EncodedVideo:
    """One finished video, the unit of commit: its segments' rows go in together or not at all."""

    path: str  # relative to the indexed folder, POSIX separators (surrogate escapes for non-UTF-8 bytes)
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
    path: str  # relative, POSIX (surrogate escapes for non-UTF-8 bytes, as os.walk gives them)
    size: int
    mtime_ns: int


# --------------------------------------------------------------------------------------------
# the database
# --------------------------------------------------------------------------------------------
def damaged(root, exc: Exception | str) -> IndexStoreError:
    return IndexStoreError(f"{root}: the index is unreadable ({exc}); run with --rebuild to build it again")


def connect(db, *, writer: bool, read_only_fs: bool = False) -> sqlite3.Connection:
    """A connection to the index database. A reader opens it read-only (``mode=ro``), and on a
    file system it cannot write at all (a read-only mount, another user's index) as
    ``immutable`` so that SQLite needs no -shm file."""
    if writer:
        uri = f"file:{_quote(db)}?mode=rw"
    else:
        uri = f"file:{_quote(db)}?" + ("immutable=1" if read_only_fs else "mode=ro")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=60000")
        if writer:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:  # could not open or write (I/O, space, permissions): not damage
        if writer:
            raise write_failed(os.path.dirname(db), exc) from None
        raise IndexStoreError(f"cannot open the index {os.path.dirname(db)}: {exc}") from None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed": the file is damaged
        raise damaged(os.path.dirname(db), exc) from None
    return conn


def create_db(db) -> sqlite3.Connection:
    """A new, empty database (the file must not exist: O_EXCL, never a symlink)."""
    fd = os.open(db, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.close(fd)
    conn = connect(db, writer=True)
    conn.executescript(SCHEMA_SQL)
    return conn


def _quote(path) -> str:
    from urllib.parse import quote
    return quote(os.fsdecode(os.path.abspath(path)))


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def read_meta(conn: sqlite3.Connection, root) -> dict[str, Any]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall() if has_table(conn, "meta") else []
    except sqlite3.DatabaseError as exc:
        raise damaged(root, exc) from None
    try:
        return {k: json.loads(v) for k, v in rows}
    except ValueError as exc:
        raise IndexStoreError(f"{root}: the index header is damaged ({exc}); run with --rebuild") from None


def stored_files(conn: sqlite3.Connection) -> dict[str, tuple[int, int, str, str | None]]:
    """path -> (size, mtime_ns, status, error) of every video row (ok or failed)."""
    return {path_of(p): (s, m, st, err) for p, s, m, st, err in
            conn.execute("SELECT path, size, mtime_ns, status, error FROM videos")}


def schema_problem(conn: sqlite3.Connection) -> str | None:
    """Why this database is not a probret index (None when its tables and header are ours)."""
    try:
        for table, cols in TABLE_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if not have:
                return f"it has no {table!r} table"
            if not cols <= have:
                return f"table {table!r} lacks {sorted(cols - have)}"
        meta = {k: v for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        return f"it is not a readable SQLite database ({exc})"
    try:
        fmt = json.loads(meta.get("format", "null"))
    except ValueError:
        fmt = None
    if fmt != INDEX_FORMAT:
        return f"its header names format {fmt!r}, not {INDEX_FORMAT!r}"
    return None


def check_version(meta: dict, root, *, writer: bool) -> int:
    """The header's format version, refused when this probret cannot read it as it is."""
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        version = 0
    if version > INDEX_FORMAT_VERSION:
        raise IndexStoreError(f"{root}: index format {version} was written by a newer probret than this one "
                              f"({_version.__version__}); upgrade probret, or run with --rebuild")
    if version != INDEX_FORMAT_VERSION and (not writer or version not in MIGRATABLE_VERSIONS):
        what = "run `probret index FOLDER` once to migrate it" if version in MIGRATABLE_VERSIONS else \
            "run with --rebuild"
        raise IndexStoreError(f"{root}: index format {version} is older than this probret's "
                              f"({INDEX_FORMAT_VERSION}); {what}")
    return version


class Txn:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection; a failed
    commit (disk full, I/O error) becomes an IndexStoreError naming the index."""

    def __init__(self, conn: sqlite3.Connection, root=None):
        self.conn = conn
        self.root = root

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if self.conn.in_transaction:  # a COMMIT that hit a full disk may have rolled back already
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.OperationalError:
                        pass
                raise write_failed(self.root, e) from None
            from probret.engine.index import durability
            durability.point("commit")
        else:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass
            if isinstance(exc, sqlite3.OperationalError):
                raise write_failed(self.root, exc) from None
        return False


def write_failed(root, exc: Exception) -> IndexStoreError:
    """The one-line error of a write that failed (disk full, file too large, I/O error)."""
    text = getattr(exc, "strerror", None) or str(exc)
    full = "full" in text or getattr(exc, "errno", None) in (28, 27, 122)  # ENOSPC, EFBIG, EDQUOT
    hint = ("free some space (or pass --index DIR on another disk) and run again; the index is unchanged"
            if full else "the index is unchanged; check the disk and run again")
    return IndexStoreError(f"cannot write the index {root or ''}: {text}; {hint}".replace("index :", "index:"))
