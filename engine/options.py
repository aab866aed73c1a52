"""Option types every entry point shares (CLI, Python API, ``probret serve``): the numeric bounds
of each option, and dataclasses that check them in ``__post_init__``. The CLI derives its click
parameter types from the same :class:`Bound` objects (cli/options.py), so a bad value gets the
same one-line message, naming the flag and the allowed range, wherever it comes from. A bad value
raises :class:`~probret.engine.errors.UsageError` (exit code 2, like click's own usage errors).

Why these bounds:

* ``--window`` 0 (one segment per video) or 1 s .. 24 h: a window shorter than a second holds
  fewer frames than a clip samples, and multiplies the stored segments (a 1 h video at 0.01 s
  would be 360,000 segments); NaN and infinity are refused (NaN used to wipe an index).
* ``--workers`` 0 (one per core, at most 8) .. 256, ``--batch`` 1 .. 4096 segments per encoder call.
* ``--top-k`` 1 .. 100,000, ``--ann-candidates`` 1 .. 10,000,000, ``--moments`` 1 .. 100,
  ``--min-confidence`` 0 .. 1 (a calibrated probability).
* ``synth --resolution`` each side 32 .. 4096 pixels and even (H.264's 4:2:0 chroma).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from probret.engine.errors import UsageError

__all__ = ["Bound", "WINDOW", "WORKERS", "BATCH", "TOP_K", "ANN_CANDIDATES", "MOMENTS", "MIN_CONFIDENCE",
           "RESOLUTION_SIDE", "DTYPES", "RESIZE_MODES", "IndexOptions", "SearchOptions", "parse_resolution", "check_choice"]

#: Storage dtypes of an index (engine/index.py's IndexSettings.dtype).
DTYPES = ("float16", "float32")
#: Frame resize modes (engine/pipeline.py's RESIZE_MODES; tests/engine/test_options.py keeps the
#: two equal, and the CLI reads this one without importing the decoder).
RESIZE_MODES = ("auto", "exact", "decoder")


@dataclass(frozen=True)
class Bound:
    """A numeric option: ``lo <= value <= hi`` (or ``value == zero`` when ``zero`` says what 0
    means), finite, an integer when ``integer``."""

    flag: str
    lo: float
    hi: float
    integer: bool = False
    zero: str | None = None  # what 0 means, when 0 is allowed outside [lo, hi]
    unit: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = (int(self.lo), int(self.hi)) if self.integer else (self.lo, self.hi)
        text = f"{kind} from {lo:g} to {hi:g}{' ' + self.unit if self.unit else ''}"
        return text + (f", or 0 ({self.zero})" if self.zero else "")

    def fail(self, value) -> UsageError:
        return UsageError(f"{self.flag} must be {self.describe()}, got {value!r}")

    def check(self, value):
        """``value`` (a number or its text) as an int / float within the bound, else UsageError."""
        if isinstance(value, bool):
            raise self.fail(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.fail(value) from None
        if not math.isfinite(number):
            raise self.fail(value)
        if self.integer:
            if number != int(number):
                raise self.fail(value)
            number = int(number)
        if self.zero is not None and number == 0:
            return 0 if self.integer else 0.0
        if not self.lo <= number <= self.hi:
            raise self.fail(value)
        return number


WINDOW = Bound("--window", 1.0, 86400.0, zero="one segment per video", unit="seconds")
WORKERS = Bound("--workers", 1, 256, integer=True, zero="one decoding thread per core, at most 8")
BATCH = Bound("--batch", 1, 4096, integer=True, unit="segments")
TOP_K = Bound("--top-k", 1, 100_000, integer=True)
ANN_CANDIDATES = Bound("--ann-candidates", 1, 10_000_000, integer=True)
MOMENTS = Bound("--moments", 1, 100, integer=True)
MIN_CONFIDENCE = Bound("--min-confidence", 0.0, 1.0)
RESOLUTION_SIDE = Bound("--resolution", 32, 4096, integer=True, unit="pixels per side")


def check_choice(flag: str, value, choices: Sequence[str]):
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_resolution(value: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height), each side within :data:`RESOLUTION_SIDE` and even."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(value))
    if not m:
        raise UsageError(f"--resolution must look like WIDTHxHEIGHT (e.g. 112x112), got {value!r}")
    sides = tuple(RESOLUTION_SIDE.check(int(g)) for g in m.groups())
    if any(s % 2 for s in sides):
        raise UsageError(f"--resolution sides must be even numbers (H.264 4:2:0), each "
                         f"{RESOLUTION_SIDE.describe()}, got {value!r}")
    return sides  # type: ignore[return-value]


@dataclass(frozen=True)
class IndexOptions:
    """What defines and drives an index update. ``None`` (window, dtype, resize): the setting the
    index already stores, else the default; an explicit different value rebuilds the index."""

    window: float | None = None
    dtype: str | None = None
    resize: str | None = None
    workers: int | None = None
    batch: int | None = None

    def __post_init__(self):
        if self.window is not None:
            object.__setattr__(self, "window", WINDOW.check(self.window))
        if self.workers is not None:
            object.__setattr__(self, "workers", WORKERS.check(self.workers))
        if self.batch is not None:
            object.__setattr__(self, "batch", BATCH.check(self.batch))
        if self.dtype is not None:
            check_choice("dtype", self.dtype, DTYPES)
        if self.resize is not None:
            check_choice("--resize", self.resize, RESIZE_MODES)


@dataclass(frozen=True)
class SearchOptions:
    top_k: int = 10
    min_confidence: float | None = None
    moments: int = 1
    ann: bool | None = None
    ann_candidates: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "top_k", TOP_K.check(self.top_k))
        object.__setattr__(self, "moments", MOMENTS.check(self.moments))
        object.__setattr__(self, "ann_candidates", ANN_CANDIDATES.check(self.ann_candidates))
        if self.min_confidence is not None:
            object.__setattr__(self, "min_confidence", MIN_CONFIDENCE.check(self.min_confidence))
        if self.ann not in (None, True, False):
            raise UsageError(f"ann must be None (automatic), True or False, got {self.ann!r}")
