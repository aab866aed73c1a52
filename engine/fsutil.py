"""Filesystem idioms with one implementation each (torch-free).

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: a reader
  sees the old file or the new one, never a torn one, and after a crash the new one is either
  complete or absent. The data goes to a temporary file in the *same* directory (``os.replace``
  is atomic only within one filesystem), which is fsynced, renamed over the target, and then the
  directory is fsynced so the rename itself survives a power cut.
* :func:`read_versioned_json`: the reader side of the small JSON records probret caches (e.g. the
  int8 probe verdicts, engine/int8_probe.py): a record of another format or version is treated as
  absent, so an older cache is recomputed, never misread.

The cache directory rule lives in engine/cache.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir", "read_versioned_json"]


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so renames and creations inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` atomically and durably (module docstring)."""
    import tempfile  # ~3 ms of imports (shutil, random) that reading never needs

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | Path, obj: Any, *, mode: int = 0o644) -> None:
    """``obj`` as indented JSON (NaN refused: it is not JSON), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n", mode=mode)


def read_versioned_json(path: str | Path, *, fmt: str, version: int) -> dict | None:
    """The JSON object at ``path`` when its ``format`` is ``fmt`` and its ``format_version`` is
    ``version``; None when it is missing, unreadable, a symlink, or of another format or version."""
    path = Path(path)
    try:
        if path.is_symlink():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != fmt or data.get("format_version") != version:
        return None
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
