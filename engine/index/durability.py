"""Durability points of an index update, for the crash harness (tests/engine/test_crash.py,
bench/crash.py; docs/reliability.md).

Every step whose order the crash-safety argument relies on calls :func:`point` right after
it: each write of shard rows, each fsync, each SQLite commit, each rename, truncate and unlink.
Nothing happens unless the environment asks for it:

* ``PROBRET_CRASH_AT=N``: the process ends with ``os._exit(CRASH_EXIT)`` at the N-th point (1-based),
  a real crash: no finally blocks, no atexit, no flush of Python buffers.
* ``PROBRET_CRASH_LOG=FILE``: every point appends one line ``N LABEL PATH SIZE`` to FILE (write
  points carry the file and its size after the write, fsync points the file just synced), so the
  harness can enumerate the points of a run and emulate a power loss by cutting each file back to
  its size at its last fsync (the writes after it were never durable).

The cost when neither is set is one dict lookup per point, cached at import.
"""

from __future__ import annotations

import os

__all__ = ["point", "CRASH_EXIT"]

CRASH_EXIT = 86
_crash_at = int(os.environ.get("PROBRET_CRASH_AT", "0") or 0)
_log_path = os.environ.get("PROBRET_CRASH_LOG") or None
_count = 0


def point(label: str, path=None, size: int | None = None) -> None:
    """One durability point has been passed (module docstring)."""
    global _count
    if not _crash_at and _log_path is None:
        return
    _count += 1
    if _log_path is not None:
        line = f"{_count} {label} {os.fsdecode(path) if path is not None else '-'} {-1 if size is None else size}\n"
        fd = os.open(_log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
    if _count == _crash_at:
        os._exit(CRASH_EXIT)
