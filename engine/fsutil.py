"""Filesystem idioms with one implementation each (torch-free).

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json`: a reader
  sees the old file or the new one, never a torn one, and after a crash the new one is either
  complete or absent. The data goes to a temporary file in the *same* directory (``os.replace``
  is atomic only within one filesystem), which is fsynced, renamed over the target, and then the
  directory is fsynced so the rename itself survives a power cut.
* :func:`read_versioned_json`: the reader side of the small JSON records probret caches (e.g. the
  int8 probe verdicts, engine/int8_probe.py): a record of another format or version is treated as
  absent, so an older cache is recomputed, never misread.
* :func:`open_inside`: open a file by a relative name for reading, only if the file opened is a
  regular file inside a given folder, and hand out the open descriptor. Checking a path and then
  opening it by name is a race (a symlink swapped in between leads the open anywhere), so the
  check is made on what was opened: the last component is opened with ``O_NOFOLLOW``, and the
  descriptor's (device, inode) must equal those of the name's real path, re-resolved *after*
  the open and still inside the folder. Reading the descriptor (or ``/proc/self/fd/N``, which
  reopens that same inode) then reads the checked file whatever the path does next. A hard link
  to an outside file is, by design of hard links, a file inside the folder; the kernel's
  ``protected_hardlinks`` is what stops other users' files being linked in.

The cache directory rule lives in engine/cache.py.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir", "read_versioned_json",
           "OpenedFile", "open_inside"]


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


#: where an open descriptor can be reopened by name (Linux; /dev/fd on macOS and the BSDs; None on Windows)
_FD_DIR = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)


@dataclass
class OpenedFile:
    """A regular file inside a folder, open for reading (:func:`open_inside`); ``close()`` when done.

    ``path`` is its real path at the time of the check (for names and media types, not for
    reading), ``stat`` the descriptor's ``fstat``, and ``source`` a name that reads this very
    file, safe to hand to a library that opens by name (a web server's file response, a video
    decoder) while the descriptor stays open.
    """

    fd: int
    path: Path
    stat: os.stat_result

    @property
    def source(self) -> str:
        if _FD_DIR is None:
            return str(self.path)  # no descriptor directory (Windows): the checked path, the best there is
        return f"{_FD_DIR}/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _inside(root: Path, rel: str) -> Path | None:
    path = (root / rel).resolve()
    return path if path.is_relative_to(root) else None


def open_inside(root: str | Path, rel: str) -> OpenedFile | None:
    """Open ``root/rel`` for reading if it is a regular file inside ``root`` (module docstring).

    ``root`` must already be a real path (``Path.resolve()``). None when the name leaves the
    folder, through ``..`` or a symlink, when it is not a regular file, or when it changed
    between the check and the open.
    """
    root = Path(root)
    checked = _inside(root, rel)
    if checked is None:
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(checked, flags)  # O_NONBLOCK: a FIFO swapped in must not hang the open
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        again = _inside(root, rel)
        same = again is not None and stat.S_ISREG(st.st_mode) and _same_inode(again, st)
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return None
    return OpenedFile(fd, checked, st)


def _same_inode(path: Path, st: os.stat_result) -> bool:
    other = os.stat(path, follow_symlinks=False)
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
