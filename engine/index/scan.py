"""What is in a folder of videos, and what an update of its index has to do.

:func:`list_folder` walks the folder; :func:`diff` compares the listing with what an index holds.
Neither writes anything nor takes a lock: a search of an up-to-date index calls them through
``reader.plan_update`` and never becomes a writer.

Rules (docs/search.md, "Incremental indexing"):

* Hidden files and directories (a name starting with '.') are skipped, as is every directory in
  ``exclude`` (the index itself when it lives inside the folder). Symlinked files are followed,
  symlinked directories are not (no cycles).
* A file is a video by its extension (:data:`VIDEO_EXTENSIONS`); other regular files are counted
  as ``ignored``. Anything that is not a regular file (FIFO, socket, device, broken link) is
  reported in ``skipped`` with the reason, never silently dropped, and never opened.
* A subfolder that cannot be listed (permissions) is reported in ``unlisted``; the videos the
  index holds under it are kept, not treated as removed. The same holds for a file that cannot
  be stat-ed.
* Names need not be UTF-8: paths are ``str`` with surrogate escapes (``os.fsdecode``), stored as
  their OS bytes, so they round-trip.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from probret.engine.errors import DataError
from probret.engine.index.schema import FileEntry

log = logging.getLogger(__name__)

#: File extensions treated as videos; other files are ignored (counted, not reported one by one).
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".m2v", ".ts",
    ".mts", ".m2ts", ".3gp", ".3g2", ".ogv", ".gif", ".vob", ".mxf", ".h264", ".264", ".hevc", ".h265",
})


@dataclass
class FolderListing:
    """One walk of a folder (:func:`list_folder`)."""

    files: list[FileEntry] = field(default_factory=list)  # videos, sorted by relative path
    ignored: int = 0  # regular files that are not videos by extension
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason): not regular files
    unlisted: list[str] = field(default_factory=list)  # relative folders that could not be listed
    unreadable: list[str] = field(default_factory=list)  # relative video paths that could not be stat-ed


@dataclass
class ScanResult:
    """What an incremental update has to do (:func:`diff`)."""

    new: list[FileEntry] = field(default_factory=list)
    changed: list[FileEntry] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    failed_before: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), unchanged since
    ignored: int = 0  # files that are not videos by extension
    total_videos: int = 0  # video files on disk
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): FIFOs, devices, sockets, ...
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed (their entries kept)
    #: Why a writer would rebuild the index (settings changed, no index yet); None when it would not.
    rebuild_reason: str | None = None

    @property
    def todo(self) -> list[FileEntry]:
        return self.new + self.changed

    @property
    def up_to_date(self) -> bool:
        """Nothing to encode, drop or rebuild: a search needs no writer (and no lock)."""
        return not self.new and not self.changed and not self.removed and self.rebuild_reason is None


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


def list_folder(folder: str | Path, *, exclude: Sequence[str | Path] = ()) -> FolderListing:
    """Walk ``folder`` (module docstring's rules)."""
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
    out = FolderListing()

    def rel(full: str) -> str:
        return Path(os.path.relpath(full, root)).as_posix()

    def onerror(exc: OSError):
        # debug only: the folder is reported once, by whoever reads ``unlisted`` (the CLI's
        # indexing summary); a warning here came out once per walk, twice when the writer rescans
        log.debug("cannot list %r: %s; its videos stay in the index as they were", exc.filename, exc.strerror)
        out.unlisted.append(rel(exc.filename))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in excluded)
        for name in filenames:
            if not name.startswith("."):
                _add_file(out, os.path.join(dirpath, name), rel)
    out.files.sort(key=lambda f: os.fsencode(f.path))
    return out


def _add_file(out: FolderListing, full: str, rel) -> None:
    is_video = os.path.splitext(full)[1].lower() in VIDEO_EXTENSIONS
    try:
        st = os.stat(full)
    except FileNotFoundError:
        out.skipped.append((rel(full), "a broken symbolic link"))
        return
    except OSError as exc:
        log.warning("cannot stat %r: %s", full, exc.strerror)
        if is_video:
            out.unreadable.append(rel(full))
        return
    if not stat.S_ISREG(st.st_mode):
        out.skipped.append((rel(full), _kind(st.st_mode) + ", not a video file"))
    elif not is_video:
        out.ignored += 1
    else:
        out.files.append(FileEntry(rel(full), int(st.st_size), int(st.st_mtime_ns)))


def scan_folder(folder: str | Path, *, exclude: Sequence[str | Path] = ()) -> tuple[list[FileEntry], int]:
    """(video files sorted by relative path, number of non-video files ignored): the short form
    of :func:`list_folder`."""
    listing = list_folder(folder, exclude=exclude)
    return listing.files, listing.ignored


def _under(path: str, folders: Sequence[str]) -> bool:
    return any(f in (".", "") or path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def diff(listing: FolderListing, stored: dict[str, tuple[int, int, str, str | None]], *,
         retry_failed: bool = False) -> ScanResult:
    """Compare a listing with the stored videos (path -> (size, mtime_ns, status, error))."""
    res = ScanResult(ignored=listing.ignored, total_videos=len(listing.files), skipped=list(listing.skipped),
                     unlisted=list(listing.unlisted))
    on_disk = set(listing.unreadable)
    for f in listing.files:
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
    res.removed = sorted((p for p in stored if p not in on_disk and not _under(p, listing.unlisted)),
                         key=os.fsencode)
    return res
