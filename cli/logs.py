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
import os
import sys

__all__ = ["setup_logging", "warn"]

NOTES = "probret.notes"


class _Formatter(logging.Formatter):
    """``warning: ...`` for problems; INFO lines bare, or, for long jobs (training, evaluation),
    with the time and the logger's name so that a log read later says when and where."""

    def __init__(self, stamped: bool = False):
        super().__init__("%(asctime)s %(name)s %(message)s" if stamped else None)
        self.stamped = stamped

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return super().format(record) if self.stamped else msg


class _Handler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (click's test runner and pytest swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _ensure_handler(logger: logging.Logger, stamped: bool) -> None:
    handler = next((h for h in logger.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler()
        logger.addHandler(handler)
    handler.setFormatter(_Formatter(stamped))


def setup_logging(*, quiet: bool = False, verbose: bool = False, stamped: bool = False,
                  details: bool | None = None) -> None:
    """Configure the ``probret`` loggers (idempotent: a second call only changes the levels).

    Other libraries' INFO lines (open_clip's "Loaded ... model config") show only with
    ``--verbose``. Under DDP, ranks other than 0 (``RANK`` set by torchrun) say only warnings, so a
    job prints each summary once. ``details`` (default: ``verbose``) shows probret's own INFO
    lines; long jobs (training, evaluation) turn it on, since their step lines are the output."""
    root = logging.getLogger("probret")
    _ensure_handler(root, stamped)
    root.propagate = False
    libraries = logging.getLogger()
    if verbose and not quiet:
        _ensure_handler(libraries, stamped)
    libraries.setLevel(logging.INFO if verbose and not quiet else logging.WARNING)
    if int(os.environ.get("RANK", "0") or 0) != 0 and not verbose:
        quiet = True
    if quiet:
        root.setLevel(logging.WARNING)
        logging.getLogger(NOTES).setLevel(logging.WARNING)
    else:
        root.setLevel(logging.INFO if (verbose if details is None else details) else logging.WARNING)
        logging.getLogger(NOTES).setLevel(logging.INFO)


def warn(message: str) -> None:
    logging.getLogger("probret.cli").warning(message)
