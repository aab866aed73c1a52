"""Typed errors shared by every layer.

A user mistake (bad path, broken video, missing model) raises a subclass of
:class:`ProbretError`; the CLI turns it into one line on stderr and the subclass's
``exit_code``, never a traceback. Anything else is a bug and keeps its traceback.

Exit codes (stable; the table users see is in docs/search.md, "Exit codes"):
    1  unexpected internal error (a bug)
    2  bad command-line usage (click's own code)
    3  input data problem (video, annotation, dataset folder)
    4  model / checkpoint / bundle problem
    5  index problem (unreadable, locked, version mismatch)
"""

from __future__ import annotations

from pathlib import Path


class ProbretError(Exception):
    """Base class of errors caused by input a user can fix."""

    exit_code = 1


class DataError(ProbretError):
    """An input file or folder is missing or malformed."""

    exit_code = 3


class VideoDecodeError(DataError):
    """A file could not be decoded as a video.

    Carries the path and a short human reason ("no video stream", "empty file", ...).
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(ProbretError):
    """A checkpoint, bundle, config or pretrained weight cannot be used."""

    exit_code = 4


class IndexStoreError(ProbretError):
    """The index directory cannot be used: missing, damaged, locked by another writer, not
    probret's, written by another format version, or out of disk space."""

    exit_code = 5


class UsageError(ProbretError):
    """An option has a value outside what it accepts (engine/options.py). Same exit code as
    click's own usage errors, so a bad ``--window`` reads alike from the CLI and the Python API."""

    exit_code = 2

