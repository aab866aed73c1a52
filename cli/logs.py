"""One logging setup for every ``probret`` command.

Two channels, both on stderr:

* **notes** (logger ``probret.notes``, INFO): what the user is told as a command runs (what is
  indexed, a rebuild, a one-time export, timings). Shown unless ``--quiet``.
* **details** (every other ``probret.*`` logger): INFO lines only with ``--verbose``.

Warnings and errors always show, as ``warning: ...`` / ``error: ...``. ``--quiet`` wins over
``--verbose``: it silences every INFO line, the library's included.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging", "warn"]

NOTES = "probret.notes"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


class _Handler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (click's test runner and pytest swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """Configure the ``probret`` loggers (idempotent: a second call only changes the levels)."""
    root = logging.getLogger("probret")
    if not any(isinstance(h, _Handler) for h in root.handlers):
        handler = _Handler()
        handler.setFormatter(_Formatter())
        root.addHandler(handler)
        root.propagate = False
    if quiet:
        root.setLevel(logging.WARNING)
        logging.getLogger(NOTES).setLevel(logging.WARNING)
    else:
        root.setLevel(logging.INFO if verbose else logging.WARNING)
        logging.getLogger(NOTES).setLevel(logging.INFO)


def warn(message: str) -> None:
    logging.getLogger("probret.cli").warning(message)
