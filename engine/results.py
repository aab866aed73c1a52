"""What the engine facade (engine/facade.py) returns: frozen dataclasses with ``to_json()`` dicts.
``probret search --json`` prints exactly these dicts, and ``probret serve`` answers with them.

Paths. A hit's ``path`` is relative to the indexed folder, as the file system spells it:
``os.fsdecode`` of the raw name, so a name that is not valid UTF-8 keeps its bytes as surrogate
escapes and ``hit.path_bytes`` (``os.fsencode``) gives them back exactly. ``hit.display_path``
is safe to print: undecodable bytes, control characters (newlines, escape sequences) and
invisible format characters (bidirectional overrides) are shown as ``\\xNN`` / ``\\uNNNN``
escapes. JSON carries the display form in ``path`` and, only when the two differ, the exact
bytes in ``path_b64`` (base64). JSON never holds NaN: a non-finite score is refused here
(:func:`finite`) rather than written as the invalid token ``NaN``.
"""

from __future__ import annotations

import base64
import math
import os
import unicodedata
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Moment", "Hit", "SearchResult", "CaptionHit", "CaptionResult", "SkippedFile", "UpdateReport",
           "display_safe", "fs_path", "finite"]


def fs_path(path: str | bytes | os.PathLike) -> str:
    """A file system name as str (bytes via ``os.fsdecode``: undecodable bytes become surrogate
    escapes, and ``os.fsencode`` restores them)."""
    return os.fsdecode(path)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, carried by os.fsdecode as a lone surrogate
        return f"\\x{code - 0xDC00:02x}"
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_safe(text: str) -> str:
    """``text`` with everything a terminal could act on, or that cannot be printed, escaped
    (module docstring). Clean text comes back unchanged."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def finite(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} is {value}: a damaged index or model produced a non-finite number")
    return value


@dataclass(frozen=True)
class Moment:
    """Where in the video a hit matches: [start, end] seconds, the best instant inside it (the
    frame closest to the query; None when the index keeps no frame features) and its score."""

    start: float
    end: float
    best_time: float | None
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"start": finite(self.start, "start"), "end": finite(self.end, "end"),
                "best_time": finite(self.best_time, "best_time"), "score": finite(self.score, "score")}


@dataclass(frozen=True)
class Hit:
    """One video in a ranking. ``confidence``: the bundle's calibrated probability that the video
    matches (None without a calibrator); ``uncertainty``: the head's raw uncertainty (None for
    deterministic heads); ``moments``: best first, at least one."""

    path: str
    rank: int
    score: float
    confidence: float | None
    uncertainty: float | None
    moments: list[Moment] = field(default_factory=list)

    @property
    def path_bytes(self) -> bytes:
        return os.fsencode(self.path)

    @property
    def display_path(self) -> str:
        return display_safe(self.path)

    @property
    def moment(self) -> Moment:
        return self.moments[0]

    def to_json(self) -> dict[str, Any]:
        shown = self.display_path
        best = self.moments[0] if self.moments else None
        out = {"rank": self.rank, "path": shown, "score": finite(self.score, "score"),
               "confidence": finite(self.confidence, "confidence"),
               "uncertainty": finite(self.uncertainty, "uncertainty"),
               # the best moment's fields at the top level too: what scripts read first
               "start": None if best is None else finite(best.start, "start"),
               "end": None if best is None else finite(best.end, "end"),
               "best_time": None if best is None else finite(best.best_time, "best_time"),
               "moments": [m.to_json() for m in self.moments]}
        if shown != self.path:
            out["path_b64"] = base64.b64encode(self.path_bytes).decode("ascii")
        return out


@dataclass(frozen=True)
class SearchResult:
    """One query's ranking. ``note`` says why ``hits`` may be short or empty (e.g. "no confident
    match" when ``min_confidence`` hides every hit); ``truncated``: the query was cut to the
    model's context; ``ann``: the faiss first stage chose ``candidates`` segments."""

    query: str
    hits: list[Hit]
    note: str | None = None
    truncated: bool = False
    ann: bool = False
    candidates: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "truncated": self.truncated, "ann": self.ann, "candidates": self.candidates,
                "note": self.note, "results": [h.to_json() for h in self.hits]}


@dataclass(frozen=True)
class CaptionHit:
    caption: str
    rank: int
    score: float
    confidence: float | None
    uncertainty: float | None
    moment: Moment

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "caption": self.caption, "score": finite(self.score, "score"),
                "confidence": finite(self.confidence, "confidence"),
                "uncertainty": finite(self.uncertainty, "uncertainty"), **self.moment.to_json()}


@dataclass(frozen=True)
class CaptionResult:
    """Captions ranked for one video; ``source``: "index" or "encoded now (not in the index)";
    ``truncated``: per caption, in the order given."""

    video: str
    source: str
    hits: list[CaptionHit]
    truncated: list[bool] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"video": display_safe(self.video), "source": self.source, "captions": [h.to_json() for h in self.hits]}


@dataclass(frozen=True)
class SkippedFile:
    """A file an update did not index, and why (a decode failure, not a regular file, ...)."""

    path: str
    reason: str

    @property
    def display_path(self) -> str:
        return display_safe(self.path)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.display_path, "error": display_safe(self.reason)}


@dataclass(frozen=True)
class UpdateReport:
    """What one index update did. ``failed``: files that could not be decoded in this run;
    ``failed_before``: unchanged files that failed in an earlier run (not tried again without
    ``retry_failed``); ``skipped``: entries never tried (FIFOs, sockets, devices, broken links);
    ``unlisted``: folders that could not be listed (their videos stay in the index as they were)."""

    added: int
    removed: int
    failed: list[SkippedFile]
    skipped: list[SkippedFile]
    unlisted: list[str] = field(default_factory=list)
    updated: int = 0
    unchanged: int = 0
    failed_before: list[SkippedFile] = field(default_factory=list)
    total_videos: int = 0
    ignored: int = 0
    encoded_videos: int = 0
    encoded_segments: int = 0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    decode: dict[str, int] = field(default_factory=dict)
    compacted: bool = False
    rebuilt: str | None = None  # why the index was rebuilt in this update, if it was
    folder: str = ""
    index: str = ""

    @property
    def videos_per_s(self) -> float:
        return self.encoded_videos / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"folder": display_safe(self.folder), "index": display_safe(self.index), "videos": self.total_videos,
                "added": self.added, "updated": self.updated, "removed": self.removed, "unchanged": self.unchanged,
                "failed": [f.to_json() for f in self.failed],
                "failed_before": [f.to_json() for f in self.failed_before],
                "skipped": [f.to_json() for f in self.skipped],
                "unlisted": [display_safe(p) for p in self.unlisted], "ignored_files": self.ignored,
                "encoded_videos": self.encoded_videos, "encoded_segments": self.encoded_segments,
                "seconds": round(self.seconds, 3), "videos_per_s": round(self.videos_per_s, 3),
                "stage_seconds": {k: round(v, 3) for k, v in self.stages.items()}, "decode": dict(self.decode),
                "compacted": self.compacted, "rebuilt": self.rebuilt}
