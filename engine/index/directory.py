"""The index directory belongs to probret: its marker, what may be in it, the writer's lock, and
file access that never follows a symlink and never touches a file probret did not create.

The rules (docs/reliability.md, "The index directory"):

* An index is recognised by its marker ``probret-index.json`` (format name, version, id).
* A new index is created only in a missing or empty directory; any other directory is refused.
* An unmarked directory written by a probret from before the marker is *adopted* once when every
  entry in it is a file such a probret writes (:func:`foreign_entries`) and its database has
  probret's tables and header; the writer then migrates it and adds the marker.
* Every file inside is opened with ``O_NOFOLLOW`` (or checked with ``lstat`` first), must be a
  regular file with a single link when written (a hard link to a user's file is refused), and is
  deleted only when probret created and recorded it (``files`` table, fixed names).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from probret.engine.errors import IndexStoreError
from probret.engine.fsutil import fsync_dir
from probret.engine.index import durability
from probret.engine.index.schema import (ANN_DIR, ANN_FILES, DB_NAME, INDEX_FORMAT, INDEX_FORMAT_VERSION, LOCK_NAME,
                                         MANIFEST_NAME, MARKER_NAME, SHARD_DIR, connect, schema_problem)

#: Names of shard files (``shards/000001.video_mean.bin`` and its ``.crc``).
SHARD_FILE_RE = re.compile(r"^\d{6}\.[A-Za-z0-9_]+\.(bin|crc)$")
DB_FILES = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm")
_MARKER_TMP_RE = re.compile(r"^\.probret-index\.json\.tmp-\d+$")
_TMP_RE = re.compile(r"^\.(index\.faiss|ann\.json|manifest\.json|probret-index\.json|tables\.snapshot)\.tmp-\d+$")


def linked(path) -> IndexStoreError:
    return IndexStoreError(f"{path} is a symbolic link; probret never follows links inside an index "
                           "(remove it, or pass --index DIR with a new directory)")


def open_nofollow(path, flags: int, mode: int = 0o644, *, for_writing: bool = False) -> int:
    """``os.open`` that refuses a symlink (``O_NOFOLLOW``) and, for writing, anything but a
    regular file with one link."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise linked(path) from None
        raise
    if for_writing:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"linked {st.st_nlink} times"
            raise IndexStoreError(f"{path} is {what}; probret writes only files it created "
                                  "(remove it, or pass --index DIR with a new directory)")
    return fd


def map_file(path, dtype=np.uint8, shape=None) -> np.memmap:
    """A read-only ``np.memmap`` of ``path`` opened without following a symlink."""
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as fh:
        return np.memmap(fh, dtype=dtype, mode="r", shape=shape)


def lstat_or_none(path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def real_dir(path, *, create: bool) -> bool:
    """True when ``path`` is a directory and not a symlink (created when missing and ``create``)."""
    st = lstat_or_none(path)
    if st is None:
        if not create:
            return False
        os.mkdir(path, 0o755)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
        return True
    if stat.S_ISLNK(st.st_mode):
        raise linked(path)
    if not stat.S_ISDIR(st.st_mode):
        raise IndexStoreError(f"{path} is not a directory; probret did not create it (remove it, or use another --index)")
    return True


def unlink_owned(path) -> bool:
    """Delete ``path`` when it is a regular file (a file probret created: the caller says so);
    a symlink or anything else is left alone. True when something was deleted."""
    st = lstat_or_none(path)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    os.unlink(path)
    durability.point("unlink", path)
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a new temporary file beside ``path``, fsync it, rename it over ``path``
    (refusing a symlink or a non-file there), fsync the directory."""
    st = lstat_or_none(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise linked(path) if stat.S_ISLNK(st.st_mode) else IndexStoreError(f"{path} is not a regular file")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    unlink_owned(tmp)  # our own leftover of a killed run with the same pid
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        durability.point("write", tmp, len(data))
        os.fsync(fd)
        durability.point("fsync", tmp)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    durability.point("rename", path)
    fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------
# the marker and adoption
# --------------------------------------------------------------------------------------------
def read_marker(root: Path) -> dict | None:
    """The marker of the index at ``root`` (None when there is none; refused when damaged or a link)."""
    try:
        fd = open_nofollow(root / MARKER_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        raw = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        marker = json.loads(raw)
        if marker.get("format") != INDEX_FORMAT or not isinstance(marker.get("id"), str):
            raise ValueError("not probret's")
        int(marker["version"])
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise IndexStoreError(f"{root / MARKER_NAME}: the index marker is damaged ({exc}); "
                              "pass --index DIR with a new directory") from None
    return marker


def write_marker(root: Path, index_id: str | None = None) -> dict:
    marker = {"format": INDEX_FORMAT, "version": INDEX_FORMAT_VERSION, "id": index_id or uuid.uuid4().hex}
    write_atomic(root / MARKER_NAME, (json.dumps(marker) + "\n").encode())
    return marker


def foreign_entries(root: Path) -> list[str]:
    """Entries of an unmarked directory that no probret writes (empty: adoptable by its files)."""
    out = []
    for name in sorted(os.listdir(root)):
        st = os.lstat(root / name)
        if name in DB_FILES + (LOCK_NAME, MANIFEST_NAME) or _TMP_RE.match(name):
            ok = stat.S_ISREG(st.st_mode)
        elif name in (SHARD_DIR, ANN_DIR) and stat.S_ISDIR(st.st_mode):
            allowed = (lambda n: bool(SHARD_FILE_RE.match(n))) if name == SHARD_DIR else \
                (lambda n: n in ANN_FILES or bool(_TMP_RE.match(n)))
            inner = [n for n in sorted(os.listdir(root / name))
                     if not (allowed(n) and stat.S_ISREG(os.lstat(root / name / n).st_mode))]
            out += [f"{name}/{n}" for n in inner]
            continue
        else:
            ok = False
        if not ok:
            out.append(name)
    return out


@dataclass
class Claim:
    """What the directory at ``root`` is to a writer: ``marker`` (None: not marked yet), ``fresh``
    (nothing in it: create an index), ``adopt`` (an unmarked index of an older probret)."""

    marker: dict | None
    fresh: bool
    adopt: bool


def claim(root: Path, *, create: bool) -> Claim:
    """Decide whether a writer may use ``root`` (module docstring), refusing with one line."""
    st = lstat_or_none(root)
    if st is None:
        if not create:
            raise IndexStoreError(f"{root}: no index here (run `probret index FOLDER` first)")
        try:
            root.mkdir(parents=True)
        except OSError as exc:
            raise IndexStoreError(f"cannot create the index directory {root} ({exc.strerror}); "
                                  "pass --index DIR somewhere writable") from None
        return Claim(None, True, False)
    if not root.is_dir():
        raise IndexStoreError(f"{root} is not a directory; pass --index DIR with a new or empty directory")
    marker = read_marker(root)
    if marker is not None:
        return Claim(marker, False, False)
    entries = [n for n in os.listdir(root) if not (n == LOCK_NAME and _pid_file(root / n))
               and not (n == SHARD_DIR and _empty_dir(root / n)) and not _MARKER_TMP_RE.match(n)]
    if not entries:  # empty, or what a writer killed while creating it left
        return Claim(None, True, False)
    foreign = foreign_entries(root)
    if foreign or not (root / DB_NAME).is_file():
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "") if foreign else "no index.db"
        raise IndexStoreError(f"{root}: not a probret index and not empty ({shown}); probret creates an index only "
                              "in a new or empty directory: pass --index DIR with one")
    try:
        conn = connect(root / DB_NAME, writer=False)
    except IndexStoreError:
        problem = "it is not a readable SQLite database"
    else:
        try:
            problem = schema_problem(conn)
        finally:
            conn.close()
    if problem:
        raise IndexStoreError(f"{root}: {DB_NAME} is not a probret index ({problem}); probret creates an index only "
                              "in a new or empty directory: pass --index DIR with one")
    return Claim(None, False, True)


def remove_temporaries(root: Path) -> None:
    """Delete the temporary files of atomic writes that a killed writer left (probret's names only)."""
    for folder in (root, root / ANN_DIR):
        if real_dir(folder, create=False):
            for name in os.listdir(folder):
                if _TMP_RE.match(name):
                    unlink_owned(folder / name)


def _pid_file(path: Path) -> bool:
    """A lock file as a writer killed while creating the index leaves it: a pid, or nothing."""
    st = lstat_or_none(path)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size > 32:
        return False
    return bool(re.fullmatch(rb"\d*\n?", path.read_bytes()))


def _empty_dir(path: Path) -> bool:
    st = lstat_or_none(path)
    return st is not None and stat.S_ISDIR(st.st_mode) and not os.listdir(path)


# --------------------------------------------------------------------------------------------
# the writer's lock
# --------------------------------------------------------------------------------------------
class WriterLock:
    """``INDEX/lock``: an exclusive ``flock`` held by the single writer, the file holding its pid."""

    def __init__(self, root: Path, *, wait: bool, say: Callable[[str], None]):
        path = root / LOCK_NAME
        try:
            fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644, for_writing=True)
        except OSError as exc:
            raise IndexStoreError(f"cannot open {path} ({exc.strerror}); the index is read-only here: search it with "
                                  "--no-update, or pass --index DIR somewhere writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            except OSError:
                holder = "?"
            if not wait:
                os.close(fd)
                raise IndexStoreError(f"index {root} is being written by another probret process (pid {holder}); "
                                      "wait for it to finish, or pass --wait to queue behind it") from None
            say(f"index {root} is being written by another probret process (pid {holder}); waiting (--wait)")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None
