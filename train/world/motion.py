"""How objects move: the per-frame state (position, radius, angle, visibility) of each object."""

from __future__ import annotations

import numpy as np

from .specs import EventSpec, ObjectSpec
from .vocabulary import BLINK_HALF_PERIOD, RESIZES, ROTATE_TOTAL, SIZE_RADIUS, TRANSLATE_DISTANCE


def radius_px(size: str, scale: float, side: int) -> float:
    return SIZE_RADIUS[size] * scale * side


def object_track(obj: ObjectSpec, events: list[EventSpec], frames: int, width: int, height: int,
                 scale: float) -> np.ndarray:
    """Per-frame state (x_px, y_px, radius_px, angle, alpha) of one object, shape (F, 5).

    Outside its events an object holds still: before its first event it shows its initial
    state (invisible if that event is 'appear'), after an event it keeps the final state
    (invisible after 'disappear')."""
    side = min(width, height)
    r_small, r_large = radius_px("small", scale, side), radius_px("large", scale, side)
    if obj.size == "varying":
        first = next(e.motion for e in events if e.motion in RESIZES)
        r = r_small if first == "grow" else r_large
    else:
        r = radius_px(obj.size, scale, side)
    x, y, ang = obj.x * width, obj.y * height, obj.angle
    alpha = 0.0 if events and events[0].motion == "appear" else 1.0
    dist = TRANSLATE_DISTANCE * side
    out = np.empty((frames, 5), dtype=np.float64)
    ev_iter = iter(sorted(events, key=lambda e: e.start_frame))
    cur = next(ev_iter, None)
    base = (x, y, r, ang, alpha)
    for f in range(frames):
        while cur is not None and f >= cur.end_frame:
            base = _apply(cur, base, 1.0, f, dist, r_small, r_large)
            cur = next(ev_iter, None)
        if cur is not None and f >= cur.start_frame:
            span = max(cur.end_frame - cur.start_frame - 1, 1)
            p = (f - cur.start_frame) / span
            out[f] = _apply(cur, base, p, f, dist, r_small, r_large)
        else:
            out[f] = base
    return out


def _apply(e: EventSpec, state, p: float, f: int, dist: float, r_small: float, r_large: float):
    x, y, r, ang, alpha = state
    m = e.motion
    if m == "left":
        x -= dist * p
    elif m == "right":
        x += dist * p
    elif m == "up":
        y -= dist * p
    elif m == "down":
        y += dist * p
    elif m == "grow":
        r = r_small + (r_large - r_small) * p
    elif m == "shrink":
        r = r_large + (r_small - r_large) * p
    elif m == "rotate":
        ang += e.direction * ROTATE_TOTAL * p
    elif m == "blink":
        if p < 1.0:
            alpha = 1.0 if ((f - e.start_frame + e.phase) // BLINK_HALF_PERIOD) % 2 == 0 else 0.0
        else:
            alpha = 1.0
    elif m == "appear":
        alpha = float(np.clip((p - 0.3) / 0.15, 0.0, 1.0))
    elif m == "disappear":
        alpha = 1.0 - float(np.clip((p - 0.55) / 0.15, 0.0, 1.0))
    return (x, y, r, ang, alpha)


def fits_frame(track: np.ndarray, width: int, height: int) -> bool:
    x, y, r = track[:, 0], track[:, 1], track[:, 2] * 1.15  # stars/triangles reach 1.25 r
    return bool(np.all(x - r >= 0) and np.all(x + r <= width) and np.all(y - r >= 0) and np.all(y + r <= height))
