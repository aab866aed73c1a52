"""The on-disk index of a folder of videos: crash-safe, incremental, memory-mapped (torch-free).

Layout of an index directory (default ``FOLDER/.probret-index/``, see docs/search.md and
docs/reliability.md)::

    INDEX/probret-index.json           the marker: format name, version, id (directory.py)
    INDEX/index.db                     SQLite (WAL): header, one row per video, one per segment,
                                       shards, the record of the files probret created (schema.py)
    INDEX/index.db-wal, -shm           SQLite's write-ahead log (part of the database)
    INDEX/lock                         fcntl lock of the single writer (holds the writer's pid)
    INDEX/shards/000001.<tensor>.bin   raw little-endian rows, one file per stored tensor per shard
    INDEX/shards/000001.<tensor>.crc   one CRC32 per row of it (layout.py)
    INDEX/ann/index.faiss, ann.json    optional ANN first stage (engine/ann.py), a cache tied to the build
    INDEX/tables.snapshot              the readers' video and segment tables as numpy columns, a cache
                                       the writer rewrites when it closes (snapshot.py)

The package's parts, one job each:

* :mod:`.schema`: names, format versions, SQLite schema, :class:`IndexSettings` and the records.
* :mod:`.directory`: the directory belongs to probret (marker, adoption, no symlinks, the lock).
* :mod:`.scan`: what is in a folder and what an update has to do (no lock, no writes).
* :mod:`.writer`: :class:`IndexWriter`, crash-safe appends, removal, compaction, migration.
* :mod:`.reader`: :class:`IndexReader` snapshots, :func:`read_header`, :func:`stored_settings`,
  :func:`plan_update`.
* :mod:`.layout`: shard file names, row sizes, per-row checksums.
* :mod:`.durability`: the points the crash harness kills the writer at.
* :mod:`.snapshot`: the readers' columnar table snapshot, used only when it matches the database.

Storage dtype, decided on measurement (issue 6): **float16 loses nothing measurable in the
rankings** (the shipped demo SPEM on the procedural test split: R@1 0.32 and R@5 0.76 at both
dtypes, identical top-10 sets for all 100 captions, top-1 identical, largest score change
4.5e-5; a random d=512 SPEM over 4,096 videos: identical top-10 sets for 64 queries, 98 % in
the same order, the rest swapping near-ties, scores within 2.6e-5) and halves the disk, the
page cache and the bytes an exact scan reads: a million SPEM videos need 53 GB instead of
106 GB. Its cost is the float16 -> float32 conversion of every block an exact scan reads
(engine/search.py: ONNX Runtime's vectorised Cast, ~0.45 ns an element here, numpy's cast 1.15),
which a scan from the page cache pays on top of the pair graph; a scan that would not fit the
page cache at float32 gains far more than that. So float16 is the storage ``probret index``
should use by default (the CLI's choice, ``--half`` today); this library default stays float32,
the lossless reference the tests compare with. Values beyond float16's range are refused
(IndexStoreError), and NaN or infinite features are refused (ModelError): never stored, never ranked.

Bytes per stored video (d=512, T'=12, one segment): meanP 28,672 at float32 / 14,336 at
float16; X-Pool 82,172 / 41,086; DUQ 86,268 / 43,134; T-MASS and SPEM 105,908 / 52,954 (of
which the pair graph reads 79,284 / 39,642), plus 4 bytes a row per tensor of checksums.

Incremental rules: a file is (re-)encoded when its relative path is new or its size or
modification time (ns) differs from the stored ones; files that are gone drop out; files that
failed to decode are remembered with their reason and retried only when they change (or with
``retry_failed``). A change of the model (bundle sha256), of the frame-sampling settings, of
the storage dtype, of the index format or of the probret version forces a rebuild, said out
loud through ``say`` and recorded as the header's ``rebuild_reason``.
"""

from probret.engine.index.reader import (BLOCK_BYTES, IndexReader, StoredSettings, VideoEntry, VideoTable,
                                         plan_update, read_header, stored_settings)
from probret.engine.index.schema import (INDEX_DIRNAME, INDEX_FORMAT, INDEX_FORMAT_VERSION, MARKER_NAME,
                                         EncodedVideo, FileEntry, IndexSettings, Txn as _Txn)
from probret.engine.lazy import lazy_attributes

#: Names of the folder scan and the writer, imported on first use: a ``--no-update`` search needs
#: neither module (nor the scan's dataclasses).
_LAZY = {**dict.fromkeys(("VIDEO_EXTENSIONS", "FolderListing", "ScanResult", "diff", "list_folder", "scan_folder"),
                         "scan"),
         **dict.fromkeys(("COMPACT_MIN_DEAD", "SHARD_MAX_BYTES", "IndexWriter"), "writer")}

__all__ = ["INDEX_DIRNAME", "INDEX_FORMAT", "INDEX_FORMAT_VERSION", "MARKER_NAME", "VIDEO_EXTENSIONS",
           "IndexSettings", "EncodedVideo", "FileEntry", "ScanResult", "FolderListing", "IndexWriter", "IndexReader",
           "scan_folder", "list_folder", "diff", "plan_update", "read_header", "stored_settings", "StoredSettings",
           "VideoEntry", "VideoTable", "BLOCK_BYTES", "SHARD_MAX_BYTES", "COMPACT_MIN_DEAD"]


__getattr__, __dir__ = lazy_attributes('probret.engine.index', _LAZY, globals(), __all__)
