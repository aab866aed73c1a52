"""Moments inside a video: where a query matches, finer than the index's window (torch-free).

The index stores, per segment (window) of a video, the features of T' frames and their
timestamps. The head scores whole segments; the frames say *where* inside them the query is:
:func:`find_moments` turns one video's per-frame text-frame similarities into its top few
moments, each ``(start, end, best_time, score)``.

1. The anchor is the video's frame closest to the query (cosine; among equals, one in the best
   segment, the one the head ranked the video by): the first moment's ``best_time``. Looking in
   the whole video rather than only inside the best segment measured better on bench/moments.py's
   tuning world (mean |best_time - event centre| 20 s against 27 s; a segment's score mixes every
   event it holds) and the same within noise on the world it reports on.
2. A frame belongs to a moment when its similarity is above the video's background level (the
   :data:`BACKGROUND_QUANTILE` of its frames' similarities) by at least
   :data:`RELATIVE_THRESHOLD` of the anchor's height above it: the query's event stands out from
   the rest of the video, whatever the model's similarity scale. (The constants were chosen on
   one long world, seed 3, and are reported on another, docs/benchmarks.md "Moments".)
   Consecutive such frames form one moment; a single frame below the threshold between two
   above does not split it (:data:`MAX_GAP_FRAMES`).
3. A moment spans from half-way between its first frame and the previous frame to half-way
   between its last frame and the next (each frame stands for the time around it; the video's
   start and end bound the first and last).
4. The moment holding the anchor comes first; the others follow by the head score of the
   segment holding their best frame, then by that frame's similarity. Each moment's ``score``
   is that segment score (the hit's own score stays its best segment's). Moments never overlap
   (they are disjoint runs of frames).

A video whose frames all match about equally is one moment: the whole video. A video of one
segment (up to 1.5 windows long) is not cut at all: engine/search.py gives it one moment, the
clip, with its best frame. Precision is bounded by the frame spacing (window / T'; 2.5 s with
the default 30 s window and 12 frames): a smaller ``--window`` stores denser frames.
bench/moments.py measures it (docs/benchmarks.md, "Moments").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Moment", "find_moments", "RELATIVE_THRESHOLD", "BACKGROUND_QUANTILE", "MAX_GAP_FRAMES"]

#: How far above the background a frame must be, as a fraction of the anchor's height above it.
RELATIVE_THRESHOLD = 0.5
#: The background level: this quantile of a video's frame similarities (most of a long video
#: does not show the queried event; a short clip's frames all do, and then it is the whole clip).
BACKGROUND_QUANTILE = 0.5
#: Frames below the threshold that may sit inside a moment without splitting it.
MAX_GAP_FRAMES = 1


@dataclass(frozen=True)
class Moment:
    """A time span of a video that matches a query (seconds from the video's first frame)."""

    start: float
    end: float
    best_time: float | None  # the frame closest to the query inside the span
    score: float  # the head score of the segment holding best_time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_moments(times: np.ndarray, sims: np.ndarray, frame_segment: np.ndarray, segment_scores: np.ndarray,
                 span: tuple[float, float], best_segment: int, n: int = 1) -> list[Moment]:
    """The top ``n`` moments of one video (module docstring).

    times, sims, frame_segment: per stored frame (any order): its time, its cosine with the
        query, and the (local) segment it belongs to.
    segment_scores: the head's score of each segment; ``best_segment`` the video's best.
    span: (start, end) of the video (its first segment's start, its last segment's end).
    """
    times, sims, seg = _unique_frames(times, sims, frame_segment)
    # the best frame of the whole video; among equals, one in the best segment
    anchor = int(np.lexsort((seg != best_segment, -sims))[0])
    runs = _runs(sims, anchor)
    first = next(k for k, (a, b) in enumerate(runs) if a <= anchor <= b)
    peaks = [anchor if k == first else a + int(np.argmax(sims[a:b + 1])) for k, (a, b) in enumerate(runs)]
    order = sorted(range(len(runs)), key=lambda k: (k != first, -float(segment_scores[seg[peaks[k]]]),
                                                     -float(sims[peaks[k]]), k))
    out = []
    for k in order[:max(1, int(n))]:
        a, b = runs[k]
        start = span[0] if a == 0 else 0.5 * (times[a - 1] + times[a])
        end = span[1] if b == len(times) - 1 else 0.5 * (times[b] + times[b + 1])
        out.append(Moment(start=float(start), end=float(max(end, start)), best_time=float(times[peaks[k]]),
                          score=float(segment_scores[seg[peaks[k]]])))
    return out


def _unique_frames(times, sims, frame_segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames in time order, one per distinct time (a short clip repeats frames: same time,
    same features, same similarity)."""
    times = np.asarray(times, dtype=np.float64)
    sims = np.asarray(sims, dtype=np.float64)
    seg = np.asarray(frame_segment)
    order = np.lexsort((-sims, times))
    times, sims, seg = times[order], sims[order], seg[order]
    keep = np.concatenate([[True], np.diff(times) > 1e-9])
    return times[keep], sims[keep], seg[keep]


def _runs(sims: np.ndarray, anchor: int) -> list[tuple[int, int]]:
    """Maximal runs [a, b] of frames above the threshold, gaps of MAX_GAP_FRAMES closed; the
    anchor is always in one."""
    background = float(np.quantile(sims, BACKGROUND_QUANTILE))
    height = float(sims[anchor]) - background
    above = sims >= background + RELATIVE_THRESHOLD * height if height > 0 else np.ones(len(sims), bool)
    above[anchor] = True
    idx = np.nonzero(above)[0]
    runs, a = [], int(idx[0])
    for prev, cur in zip(idx[:-1], idx[1:]):
        if cur - prev > MAX_GAP_FRAMES + 1:
            runs.append((a, int(prev)))
            a = int(cur)
    runs.append((a, int(idx[-1])))
    return runs
