"""Shard files: names, row sizes and per-row checksums.

Every stored tensor has a fixed per-row shape (one row = one segment of one video); the shard file
``shards/NNNNNN.<tensor>.bin`` is ``rows x row_shape`` little-endian values in the index's dtype,
no header, so a reader maps it with ``np.memmap``. Beside it, ``NNNNNN.<tensor>.crc`` holds one
little-endian uint32 CRC32 (zlib's) per row. Rows never change once written, so neither do their
checksums: both files only grow, both are fsynced before the commit that records the rows, and
bytes past the committed row count are an unfinished append (ignored by readers, cut off by the
next writer).

Why per row: a reader verifies lazily exactly the rows it reads, whether an exact scan reads them
as contiguous blocks or the ANN re-ranking gathers a thousand scattered ones, and nothing
mutable is ever rewritten in place (a per-block checksum of a growing last block would be). The
cost is 4 bytes a row per tensor and one CRC pass (~5 GB/s here) over the bytes read, once per
reader.

Which rows a reader checks (``IndexReader(verify=...)``): a full CRC pass costs about as much as
an exact scan from the page cache itself (both are memory-bound: bench/checksums.py measured a
fresh 10k-video search 3.8x slower with every row checked), so by default (``"changed"``) a
reader checks only the shard files that changed since probret wrote them. At each commit the
writer records every data file's size and ctime (``stamps`` table) right after its fsync; any
later write to the file by anyone (an editor, ``dd``, a copy over it, a truncation, a writer
appending now) moves its ctime, which no unprivileged process can set back, and the reader
then checks every row of that file as it reads it. What the default does not catch is a change
below the file system that leaves the ctime alone (silent media corruption that the disk's own
ECC misses); ``verify="always"`` checks every row regardless.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from probret.engine.index.schema import SHARD_DIR

CRC_DTYPE = np.dtype("<u4")


def shard_file(root: Path, shard: int, name: str) -> Path:
    return Path(root) / SHARD_DIR / f"{shard:06d}.{name}.bin"


def crc_file(root: Path, shard: int, name: str) -> Path:
    return Path(root) / SHARD_DIR / f"{shard:06d}.{name}.crc"


def shard_files(root: Path, shard: int, names) -> list[Path]:
    return [p for n in names for p in (shard_file(root, shard, n), crc_file(root, shard, n))]


def row_bytes(layout: dict[str, dict]) -> dict[str, int]:
    return {n: int(np.dtype(s["dtype"]).itemsize * int(np.prod(s["shape"], dtype=np.int64)))
            for n, s in layout.items()}


def row_crcs(data, nbytes: int) -> np.ndarray:
    """CRC32 of each ``nbytes``-byte row of ``data`` (bytes-like, a whole number of rows)."""
    view = memoryview(data).cast("B")
    n = len(view) // nbytes if nbytes else 0
    return np.fromiter((zlib.crc32(view[i * nbytes:(i + 1) * nbytes]) for i in range(n)), dtype=CRC_DTYPE, count=n)
