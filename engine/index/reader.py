"""Reading an index: a consistent snapshot for searching, its header and stored settings, and the
plan of an update, all without the writer's lock.

Memory (docs/benchmarks_memory.md, bench/memory.py): the reader holds the video and segment
tables in RAM as numpy columns (:class:`VideoTable`: ~280 B a video resident with its segment),
never the feature rows: an exact scan maps the shards block by block (:meth:`IndexReader.blocks`,
pages released behind it) and scattered rows are read with ``pread`` (:meth:`IndexReader.gather`),
so a search's resident set does not grow with the stored bytes.

Readers and writers coexist (docs/reliability.md): a reader takes no lock; SQLite (WAL) gives it
the last committed state, and it opens every shard file of that state at once, so a compaction
that deletes those files afterwards cannot pull them from under it (the descriptors keep them);
when a compaction deleted them *before* they were opened, the reader takes a fresh snapshot.
Every row it hands out has been checked against its stored CRC32, lazily, once per reader.
"""

from __future__ import annotations

import bisect
import mmap
import os
import sqlite3
import time
import zlib
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from probret.engine.errors import IndexStoreError
from probret.engine.index import snapshot
from probret.engine.index.directory import lstat_or_none, open_nofollow, read_marker, real_dir
from probret.engine.index.layout import CRC_DTYPE, crc_file, row_bytes, shard_file
from probret.engine.index.schema import (DB_NAME, INDEX_FORMAT, SHARD_DIR, INDEX_FORMAT_VERSION, IndexSettings, check_version, connect, damaged,
                                         describe_change, has_table, path_key, path_of, read_meta, schema_problem,
                                         stored_files)

#: Bytes of stored tensors per block of a full scan (IndexReader.blocks): large enough that the
#: per-block overhead vanishes, small enough that converting a block to float32 stays cheap.
BLOCK_BYTES = 32 << 20
#: Fresh snapshots a reader takes when compactions keep deleting the shards it was about to open.
SNAPSHOT_TRIES = 8


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
    as one blob of their stored bytes with offsets). Measured: opening a 100k-video index grows
    the resident set by ~275 B a video in all (columns, segment arrays, allocator slack), against
    ~580 B a video for the list of entries and the path dict alone before."""

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
            enc = [bytes(r[1]) if not isinstance(r[1], str) else path_key(r[1]) for r in rows]
            blob.append(b"".join(enc))
            lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
            ends.append(total + np.cumsum(lens))
            total += int(lens.sum())
        for k in self._NUM:
            setattr(self, k, np.concatenate(cols[k]) if cols[k] else np.zeros(0, np.float64 if k in ("duration", "fps")
                                                                               else np.int64))
        self._blob = b"".join(blob)
        self._ends = np.concatenate([[0], *ends]).astype(np.int64)

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray]) -> "VideoTable":
        """From the columns of a snapshot (snapshot.py: ``path_blob`` bytes, ``path_ends`` offsets)."""
        self = cls.__new__(cls)
        for k in cls._NUM:
            setattr(self, k, cols[k])
        self._blob = cols["path_blob"].tobytes()
        self._ends = cols["path_ends"]
        return self

    def columns(self) -> dict[str, np.ndarray]:
        """The inverse of :meth:`from_columns`."""
        return {**{k: getattr(self, k) for k in self._NUM}, "path_blob": np.frombuffer(self._blob, np.uint8),
                "path_ends": self._ends}

    def __len__(self) -> int:
        return len(self.id)

    def path_bytes(self, i: int) -> bytes:
        return self._blob[self._ends[i]:self._ends[i + 1]]

    def path(self, i: int) -> str:
        return os.fsdecode(self.path_bytes(i))

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
        """Position of ``path`` (bisection over the stored bytes: SQLite orders BLOBs by memcmp)."""
        key = path_key(path)
        i = bisect.bisect_left(range(len(self)), key, key=self.path_bytes)
        return i if i < len(self) and self.path_bytes(i) == key else None

    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes for k in self._NUM) + len(self._blob) + self._ends.nbytes


if TYPE_CHECKING:
    from probret.engine.index.scan import ScanResult


# --------------------------------------------------------------------------------------------
# opening the database read-only
# --------------------------------------------------------------------------------------------
def _open_db(root: Path) -> sqlite3.Connection:
    """A read-only connection to the index database; ``immutable`` when this process cannot write
    anywhere near it (a read-only mount, another user's index without its -shm file)."""
    db = root / DB_NAME
    st = lstat_or_none(db)
    if st is None:
        raise IndexStoreError(f"{root}: no index here (run `probret index FOLDER` first)")
    if not os.path.isfile(db) or os.path.islink(db):
        raise IndexStoreError(f"{db} is not a regular file; probret never follows links inside an index")
    try:
        return connect(db, writer=False)
    except IndexStoreError:
        if os.access(root, os.W_OK) and os.access(db, os.W_OK):
            raise  # the true reason: it could open it and found it damaged
    return connect(db, writer=False, read_only_fs=True)


def _check_is_index(root: Path, conn: sqlite3.Connection) -> dict:
    """The header of the index behind ``conn``, refused with the true reason when it is not one
    this probret can read."""
    if read_marker(root) is None:
        problem = schema_problem(conn)
        if problem:
            raise IndexStoreError(f"{root}: not a probret index ({problem})")
    if not has_table(conn, "meta"):
        raise IndexStoreError(f"{root}: the index is empty or unfinished; run `probret index FOLDER` again")
    meta = read_meta(conn, root)
    if meta.get("format") != INDEX_FORMAT:
        raise IndexStoreError(f"{root}: not a probret index")
    check_version(meta, root, writer=False)
    return meta


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


def read_tables(conn: sqlite3.Connection) -> tuple[VideoTable, np.ndarray]:
    """The searchable videos (path order) and their segments (:func:`_read_segments`) from SQLite
    rows, inside the caller's transaction: what a snapshot (snapshot.py) caches."""
    videos = VideoTable(conn.execute("SELECT id, path, size, mtime_ns, duration, fps, width, height FROM videos "
                                     "WHERE status = 'ok' ORDER BY path"))
    return videos, _read_segments(conn)


def table_state(conn: sqlite3.Connection, meta: dict) -> dict:
    """The state a snapshot must match (snapshot.state_of), read inside the caller's transaction."""
    return snapshot.state_of(meta, conn.execute("SELECT count(*) FROM videos").fetchone()[0],
                             conn.execute("SELECT count(*) FROM segments").fetchone()[0])


def save_snapshot(root: Path, conn: sqlite3.Connection, *, force: bool = False) -> bool:
    """Write ``root``'s table snapshot from ``conn``'s committed state unless the one there is
    already valid for it (``force``: rewrite anyway); True when written (snapshot.py)."""
    conn.execute("BEGIN")
    try:
        state = table_state(conn, read_meta(conn, root))
        if not force and snapshot.load(root, state) is not None:
            return False
        videos, segs = read_tables(conn)
    finally:
        conn.execute("COMMIT")
    return snapshot.save(root, state, {**videos.columns(), "segments": segs})


class IndexReader:
    """A consistent snapshot of an index for searching: video and segment tables in RAM, the
    feature rows memory-mapped, every row checked against its checksum when first read. Takes no
    lock and writes nothing (module docstring).

    ``verify``: ``"changed"`` (default) checks the rows of every shard file that changed since
    probret wrote it (its size or ctime differ from the ``stamps`` table: an edit, a copy, a
    truncation, a writer appending right now), and trusts the others, which costs nothing;
    ``"always"`` checks every row read; ``"off"`` none (for measuring, bench/checksums.py)."""

    VERIFY_MODES = ("changed", "always", "off")

    def __init__(self, path: str | Path, *, verify: str = "changed"):
        if verify not in self.VERIFY_MODES:
            raise ValueError(f"verify must be one of {self.VERIFY_MODES}, got {verify!r}")
        self.root = Path(path)
        self.verify = verify
        self._trusted: set[tuple[int, str]] = set()
        if not self.root.is_dir():
            raise IndexStoreError(f"{self.root}: no index here (run `probret index FOLDER` first)")
        self._conn = None
        self._fds: dict[tuple[int, str], tuple[int, int]] = {}
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._crcs: dict[tuple[int, str], np.ndarray] = {}
        self._verified: dict[tuple[int, str], np.ndarray] = {}
        try:
            conn = _open_db(self.root)
        except IndexStoreError:
            if read_marker(self.root) is None and (self.root / DB_NAME).exists():
                raise IndexStoreError(f"{self.root}: not a probret index (its {DB_NAME} is not a readable "
                                      "SQLite database, and it has no probret marker)") from None
            raise
        try:
            for attempt in range(SNAPSHOT_TRIES):
                segs = self._snapshot(conn)
                if self._open_shards(last=attempt == SNAPSHOT_TRIES - 1):
                    break
                time.sleep(0.01 * (attempt + 1))
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._close_fds()
            raise damaged(self.root, exc) from None
        except BaseException:
            conn.close()
            self._close_fds()
            raise
        self._conn = conn
        self._index_segments(segs)

    def _snapshot(self, conn: sqlite3.Connection) -> np.ndarray:
        """Read the tables of the last committed state in one transaction; returns the segments."""
        conn.execute("BEGIN")
        try:
            self.meta = _check_is_index(self.root, conn)
            cols = snapshot.load(self.root, table_state(conn, self.meta))
            self.from_snapshot = cols is not None
            self.videos, segs = (VideoTable.from_columns(cols), cols["segments"]) if cols else read_tables(conn)
            self.failed = [(path_of(p), e) for p, e in
                           conn.execute("SELECT path, error FROM videos WHERE status != 'ok' ORDER BY path")]
            self.shard_rows = dict(conn.execute("SELECT id, rows FROM shards").fetchall())
            self._stamps = {n: (size, ctime) for n, size, ctime in conn.execute(
                "SELECT name, size, ctime_ns FROM stamps")} if has_table(conn, "stamps") else {}
        finally:
            conn.execute("COMMIT")
        self.settings: dict = self.meta.get("settings") or {}
        self.layout: dict[str, dict] = self.meta.get("layout") or {}
        self.generation = int(self.meta.get("generation", 0))
        self.build_id = str(self.meta.get("build_id", ""))
        return segs

    def _open_shards(self, *, last: bool) -> bool:
        """Open both files of every tensor of every shard of the snapshot; False when one is gone
        (a compaction won the race: take a fresh snapshot), refused when it stays gone or short."""
        self._close_fds()
        self._trusted.clear()
        real_dir(self.root / SHARD_DIR, create=False)  # refuses a symlink
        rb = row_bytes(self.layout)
        for sid, rows in self.shard_rows.items():
            for name, nbytes in rb.items():
                paths = (shard_file(self.root, sid, name), crc_file(self.root, sid, name))
                try:
                    fds = tuple(open_nofollow(p, os.O_RDONLY) for p in paths)
                except FileNotFoundError as exc:
                    if not last:
                        return False
                    raise IndexStoreError(f"{self.root}: shard file {Path(exc.filename).name} is missing (damaged "
                                          "outside probret?); run `probret index FOLDER` to repair it") from None
                self._fds[(sid, name)] = fds
                st = os.fstat(fds[0])
                if self._stamps.get(paths[0].name) == (st.st_size, st.st_ctime_ns):
                    self._trusted.add((sid, name))  # unchanged since probret wrote and checked it
                for fd, p, width in zip(fds, paths, (nbytes, CRC_DTYPE.itemsize)):
                    if os.fstat(fd).st_size < rows * width:
                        raise IndexStoreError(f"{self.root}: shard file {p.name} is shorter than recorded; run "
                                              "`probret index FOLDER` to repair it (or --rebuild)")
        return True

    def _index_segments(self, segs: np.ndarray) -> None:
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
        # segments are sorted by video: video i owns segments [video_offsets[i], video_offsets[i + 1])
        counts = np.bincount(self.seg_video, minlength=len(self.videos))
        self.video_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _close_fds(self) -> None:
        self._maps.clear()
        self._crcs.clear()
        for fds in self._fds.values():
            for fd in fds:
                os.close(fd)
        self._fds.clear()

    def close(self) -> None:
        self._close_fds()
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

    # -- rows ----------------------------------------------------------------------------------
    def tensor(self, shard: int, name: str) -> np.ndarray:
        """The committed rows of one tensor of one shard, memory-mapped (rows, *shape), as stored:
        :meth:`blocks` and :meth:`gather` check rows against their checksums, this does not."""
        key = (shard, name)
        if key not in self._maps:
            spec = self.layout.get(name)
            if spec is None:
                raise IndexStoreError(f"{self.root}: the index stores no tensor {name!r} (it has {sorted(self.layout)})")
            if key not in self._fds:
                raise IndexStoreError(f"{self.root}: the index has no shard {shard}")
            rows = self.shard_rows.get(shard, 0)
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            shape = (rows, *spec["shape"])
            if rows:
                with os.fdopen(os.dup(self._fds[key][0]), "rb") as fh:
                    self._maps[key] = np.memmap(fh, dtype=dtype, mode="r", shape=shape)
            else:
                self._maps[key] = np.zeros(shape, dtype)
        return self._maps[key]

    def _check_rows(self, shard: int, name: str, rows: np.ndarray, data: np.ndarray) -> None:
        """Compare rows ``rows`` (their bytes in ``data``, one row each) with their stored CRC32,
        once per reader; a mismatch is reported, never ranked."""
        key = (shard, name)
        if self.verify == "off" or (self.verify == "changed" and key in self._trusted):
            return
        done = self._verified.get(key)
        if done is None:
            n = self.shard_rows.get(shard, 0)
            done = self._verified[key] = np.zeros(n, bool)
            self._crcs[key] = np.frombuffer(os.pread(self._fds[key][1], n * CRC_DTYPE.itemsize, 0), CRC_DTYPE)
        todo = np.nonzero(~done[rows])[0]
        if not len(todo):
            return
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        nbytes = len(view) // len(rows)
        got = np.fromiter((zlib.crc32(view[j * nbytes:(j + 1) * nbytes]) for j in todo.tolist()), CRC_DTYPE,
                          count=len(todo))
        bad = np.nonzero(got != self._crcs[key][rows[todo]])[0]
        if len(bad):
            r = int(rows[todo[bad[0]]])
            raise IndexStoreError(f"{self.root}: shard {shard} of {name}, row {r}, fails its checksum (the file was "
                                  "changed outside probret, or the disk flipped bytes); run with --rebuild")
        done[rows[todo]] = True

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
            for sid in sorted(set(shards.tolist())):  # not np.unique: numpy 2 imports numpy.ma for it (~6 ms)
                sel = np.nonzero(shards == sid)[0]
                arr[sel] = self._read_rows(int(sid), name, self.seg_row[segments[sel]])
            out[name] = arr
        return out

    def _read_rows(self, shard: int, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of one tensor of one shard read with pread (runs of consecutive rows in
        one call), in the stored dtype, checked against their checksums."""
        m = self.tensor(shard, name)  # checks the shard exists (maps it; touches nothing)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *m.shape[1:]), dtype=m.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= len(m):
            raise IndexError(f"row out of range for shard {shard} of {name}")
        rb = row_bytes(self.layout)[name]
        buf = memoryview(out.reshape(len(rows), -1).view(np.uint8).reshape(-1))
        fd = self._fds[(shard, name)][0]
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(rows)]])
        for a, b in zip(starts.tolist(), ends.tolist()):
            view, pos = buf[a * rb:b * rb], int(rows[a]) * rb
            while len(view):
                got = os.preadv(fd, [view], pos)
                if got <= 0:
                    raise IndexStoreError(f"{self.root}: shard {shard} of {name} ended early; "
                                          "run `probret index FOLDER` to repair it")
                view, pos = view[got:], pos + got
        self._check_rows(shard, name, rows, out)
        return out

    def row_bytes(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """Stored bytes of one row (one segment) of each tensor (all of them by default)."""
        rb = row_bytes(self.layout)
        return rb if names is None else {n: rb[n] for n in names}

    def blocks(self, names: Sequence[str], block: int | None = None, *, max_bytes: int = BLOCK_BYTES,
               release: bool = False):
        """Yield (segment positions, {name: rows}) covering every segment once, in storage order:
        contiguous live runs are passed as memmap slices (no copy, in the stored dtype), scattered
        rows gathered; every row checked against its checksum. A block holds ``block`` rows, or as
        many as fit ``max_bytes`` of the named tensors (at least one).

        ``release``: once the consumer asks for the next block, the pages of the previous one are
        dropped from this process's mapping (``madvise(MADV_DONTNEED)``: they stay in the page
        cache, a later touch maps them again with a minor fault). A full scan then holds at most one
        block of the index in its resident set whatever the index's size, instead of every page it
        touched: peak RSS does not grow with the number of videos (docs/benchmarks_memory.md)."""
        if block is None:
            per_row = max(1, sum(row_bytes(self.layout)[n] for n in names)) if self.layout else 1
            block = max(1, int(max_bytes) // per_row)
        order = np.lexsort((self.seg_row, self.seg_shard))
        shards, rows = self.seg_shard[order], self.seg_row[order]
        start, n = 0, len(order)
        while start < n:
            sid = int(shards[start])
            stop = min(n, start + block)
            same = np.nonzero(shards[start:stop] != sid)[0]
            if same.size:
                stop = start + int(same[0])
            r = rows[start:stop]
            lo, hi = int(r[0]), int(r[-1]) + 1
            if hi - lo == stop - start:  # contiguous rows
                out = {nm: self.tensor(sid, nm)[lo:hi] for nm in names}
                for nm in names:
                    self._check_rows(sid, nm, r, out[nm])
                yield order[start:stop], out
            else:
                yield order[start:stop], {nm: self._read_rows(sid, nm, r) for nm in names}
            if release:
                for nm in names:
                    self._release(sid, nm, int(r.min()), int(r.max()) + 1)
            start = stop

    def _release(self, shard: int, name: str, lo: int, hi: int) -> None:
        """Drop rows [lo, hi) of one mapped tensor from the process's resident set (see blocks)."""
        arr = self._maps.get((shard, name))
        mm = getattr(arr, "_mmap", None)  # np.memmap's mmap.mmap (numpy has kept this name since 1.x)
        if mm is None or not hasattr(mm, "madvise"):
            return
        rb = row_bytes(self.layout)[name]
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


# --------------------------------------------------------------------------------------------
# the header, the stored settings, the plan of an update
# --------------------------------------------------------------------------------------------
def read_header(path: str | Path) -> dict | None:
    """The header (meta table) of the index at ``path``, or None when there is none or it cannot be
    read (callers that need the index open it properly and get the true error then)."""
    root = Path(path)
    try:
        conn = _open_db(root)
    except (IndexStoreError, OSError):
        return None
    try:
        meta = read_meta(conn, root)
        return meta if meta.get("format") == INDEX_FORMAT else None
    except IndexStoreError:
        return None
    finally:
        conn.close()


@dataclass(frozen=True)
class StoredSettings:
    """What an index remembers about how it was built: a later update reuses these unless the
    user asks for a change (the facade's job), and ``rebuild_reason`` says why it was last built
    from scratch ("new index", "--rebuild", "segment window 30.0 -> 10.0", ...)."""

    settings: IndexSettings
    model: dict
    rebuild_reason: str
    format_version: int
    build_id: str


def stored_settings(path: str | Path) -> StoredSettings | None:
    """The settings that define the index at ``path`` (None when there is no readable index)."""
    header = read_header(path)
    if not header or not header.get("settings"):
        return None
    try:
        settings = IndexSettings.from_identity(header["settings"])
    except IndexStoreError:
        return None
    return StoredSettings(settings, dict(header.get("model") or {}), str(header.get("rebuild_reason") or ""),
                          int(header.get("format_version", 0)), str(header.get("build_id", "")))


def plan_update(folder: str | Path, index: str | Path, settings: IndexSettings | None = None, *,
                retry_failed: bool = False) -> ScanResult:
    """What an update of ``index`` from ``folder`` would do, read without the writer's lock: a
    search whose plan is ``up_to_date`` opens an :class:`IndexReader` and never a writer."""
    from probret.engine.index.scan import diff, list_folder  # a --no-update search never walks the folder

    root = Path(index)
    listing = list_folder(folder, exclude=[root])
    header = read_header(root)
    if not header or header.get("format") != INDEX_FORMAT:
        res = diff(listing, {}, retry_failed=retry_failed)
        res.rebuild_reason = "no index yet"
        return res
    conn = _open_db(root)
    try:
        res = diff(listing, stored_files(conn), retry_failed=retry_failed)
    except sqlite3.DatabaseError as exc:
        raise damaged(root, exc) from None
    finally:
        conn.close()
    old = header.get("settings") or {}
    if settings is not None and old != settings.identity():
        res.rebuild_reason = describe_change(old, settings.identity())
    elif check_version(header, root, writer=True) != INDEX_FORMAT_VERSION:
        res.rebuild_reason = "index format migration"
    return res


__all__ = ["BLOCK_BYTES", "VideoEntry", "VideoTable", "IndexReader", "read_header", "StoredSettings",
           "stored_settings", "plan_update"]
