"""A columnar snapshot of the reader's tables, so that opening an index does not rebuild numpy
columns from SQLite rows on every search.

Why: an :class:`~probret.engine.index.reader.IndexReader` holds the video and segment tables as
numpy columns. Building them from SQLite rows costs ~3 us a video (10,000 videos: ~33 ms of a
0.3 s CLI search; docs/benchmarks.md, "CLI latency"); loading the same columns from one file
costs well under a millisecond per 10,000 videos.

SQLite stays the only source of truth. The snapshot (``INDEX/tables.snapshot``) is a cache the
writer derives from the committed tables when it closes (not at every commit: rewriting every
column after each batch of an update would make indexing quadratic), and a reader uses it only
when it matches the state it read in the same transaction: the header's ``index_id``,
``build_id`` and ``generation`` (every committed change of the videos or segments bumps the
generation, writer.py), and the row counts of both tables. Anything else (no file, a stale or
foreign one, a truncated or damaged one, a column of the wrong dtype or shape, a CRC mismatch)
makes :func:`load` return None, and the reader reads the SQLite rows as before: never an error,
never wrong results.

The file: a sequence of ``.npy`` records (numpy's format, read with ``allow_pickle=False``). The
first is a uint8 array holding a JSON header (format, version, the state it was taken from, the
CRC32 of every byte after it); then one record per column of :data:`COLUMNS`, in that order. It
is replaced atomically (temporary file, fsync, rename) and only over a file that is a probret
snapshot: a file of any other kind at that name is left alone and no snapshot is written.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import zlib
from pathlib import Path

import numpy as np

SNAPSHOT_NAME = "tables.snapshot"
SNAPSHOT_FORMAT = "probret-tables"
SNAPSHOT_VERSION = 1
#: Largest header record accepted (a damaged length field must not make a reader allocate).
_MAX_HEADER = 1 << 16
#: Every column: name -> (dtype, shape given n videos and m segments).
COLUMNS = {
    "id": ("<i8", lambda n, m: (n,)),
    "size": ("<i8", lambda n, m: (n,)),
    "mtime_ns": ("<i8", lambda n, m: (n,)),
    "duration": ("<f8", lambda n, m: (n,)),
    "fps": ("<f8", lambda n, m: (n,)),
    "width": ("<i8", lambda n, m: (n,)),
    "height": ("<i8", lambda n, m: (n,)),
    "path_ends": ("<i8", lambda n, m: (n + 1,)),
    "path_blob": ("|u1", None),  # its length is path_ends[-1]
    "segments": ("<f8", lambda n, m: (m, 6)),
}

#: How the header record of every snapshot starts (after numpy's own few bytes).
_OURS = b'{"format": "%s"' % SNAPSHOT_FORMAT.encode()

log = logging.getLogger(__name__)


def state_of(meta: dict, videos_total: int, segments_total: int) -> dict:
    """What a snapshot must have been taken from to be used: the header's identity and
    generation, and the row counts of the ``videos`` and ``segments`` tables."""
    return {"index_id": str(meta.get("index_id", "")), "build_id": str(meta.get("build_id", "")),
            "generation": int(meta.get("generation", 0)), "videos_total": int(videos_total),
            "segments_total": int(segments_total)}


def _record(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode(state: dict, columns: dict[str, np.ndarray]) -> bytes:
    """The bytes of a snapshot of ``columns`` (every name of :data:`COLUMNS`) taken at ``state``."""
    body = b"".join(_record(np.asarray(columns[k], dtype=dt)) for k, (dt, _) in COLUMNS.items())
    header = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, **state,  # format first: see ours()
              "videos": int(len(columns["id"])), "segments": int(len(columns["segments"])),
              "crc32": zlib.crc32(body), "bytes": len(body)}
    return _record(np.frombuffer(json.dumps(header).encode(), np.uint8)) + body


def _read(fh: io.BytesIO, dtype: str, shape: tuple | None) -> np.ndarray:
    arr = np.lib.format.read_array(fh, allow_pickle=False)
    if arr.dtype != np.dtype(dtype) or arr.ndim != (1 if shape is None else len(shape)) or \
            (shape is not None and arr.shape != shape):
        raise ValueError(f"column of dtype {arr.dtype} and shape {arr.shape}")
    return arr


def _owned(seg_ids: np.ndarray, ids: np.ndarray) -> bool:
    """Whether every segment names a video of the table (the reader maps them by id)."""
    if not len(seg_ids):
        return True
    known = np.sort(ids)
    pos = np.minimum(np.searchsorted(known, seg_ids), max(len(known) - 1, 0))
    return bool(len(known)) and bool(np.all(known[pos] == seg_ids))


def _header(data: bytes) -> tuple[dict, int]:
    """The JSON header of snapshot bytes ``data`` and where the body starts (ValueError if none)."""
    fh = io.BytesIO(data[:_MAX_HEADER])
    raw = _read(fh, "|u1", None)
    header = json.loads(raw.tobytes())
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        raise ValueError("not a probret snapshot")
    return header, fh.tell()


def decode(data: bytes, state: dict) -> dict[str, np.ndarray] | None:
    """The columns of snapshot bytes ``data`` when they were taken at ``state`` and are intact,
    else None (the caller reads SQLite). Every column is checked: dtype, shape, the CRC32 of the
    whole body, path offsets that start at 0, never decrease and end at the blob's length, and
    segments that all name a video of the table."""
    try:
        header, start = _header(data)
        if header.get("version") != SNAPSHOT_VERSION or any(header.get(k) != v for k, v in state.items()):
            return None
        n, m = int(header["videos"]), int(header["segments"])
        body = memoryview(data)[start:]
        if len(body) != header["bytes"] or zlib.crc32(body) != header["crc32"] or n < 0 or m < 0:
            return None
        fh, out = io.BytesIO(body), {}
        for name, (dtype, shape) in COLUMNS.items():
            out[name] = _read(fh, dtype, None if shape is None else shape(n, m))
        ends = out["path_ends"]
        if ends[0] != 0 or ends[-1] != len(out["path_blob"]) or (n and np.any(np.diff(ends) < 0)) or \
                fh.tell() != len(body) or not _owned(out["segments"][:, 0], out["id"]):
            return None
        return out
    except (ValueError, TypeError, KeyError, OverflowError, EOFError, UnicodeDecodeError):  # damaged: not used
        return None


def _read_file(path: Path) -> bytes | None:
    """The bytes of the regular file at ``path`` (never through a symlink), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def load(root: Path, state: dict) -> dict[str, np.ndarray] | None:
    """The columns of ``root``'s snapshot when it is valid for ``state`` (module docstring), else None."""
    data = _read_file(Path(root) / SNAPSHOT_NAME)
    return None if data is None else decode(data, state)


def ours(path: Path) -> bool:
    """Whether ``path`` is absent or a probret snapshot (of any state): the only files a writer
    may replace at that name."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(st.st_mode):
        return False
    data = _read_file(path) or b""
    # its first bytes, not a whole header: a snapshot probret wrote and something cut short is still ours
    return data.startswith(np.lib.format.MAGIC_PREFIX) and _OURS in data[:256]


def save(root: Path, state: dict, columns: dict[str, np.ndarray]) -> bool:
    """Write ``root``'s snapshot (atomically) unless a file that is not one is in the way; True
    when written. The caller treats any OSError as "no snapshot" (it is a cache)."""
    from probret.engine.index.directory import write_atomic

    path = Path(root) / SNAPSHOT_NAME
    if not ours(path):
        log.warning("index %s: %s is not a probret snapshot; left alone (searches read the database)",
                    root, SNAPSHOT_NAME)
        return False
    write_atomic(path, encode(state, columns))
    return True


__all__ = ["SNAPSHOT_NAME", "COLUMNS", "state_of", "encode", "decode", "load", "save"]
