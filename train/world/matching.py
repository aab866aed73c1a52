"""Which videos a caption truly describes: the reference checker and the vectorised one used at scale."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from .specs import VideoSpec
from .vocabulary import BACKGROUNDS, COLOR_NAMES, GENERIC_MOTIONS, MOTIONS, SHAPES, SIZES


def specificity(semantics: dict) -> int:
    """How much a caption pins down: 2 per stated shape / colour / size / exact motion /
    background, 1 for a generic motion ('moving' narrows less than 'moves left') and 1 for
    'same actor'. Breaks ties between evaluation candidates that match equally many videos."""
    score = 0
    for spec in list(semantics["events"]) + list(semantics["mentions"]):
        for key in ("shape", "color", "size"):
            score += 2 * (spec.get(key) is not None)
        motion = spec.get("motion")
        if motion is not None:
            score += 1 if motion in GENERIC_MOTIONS else 2
    score += 2 * (semantics.get("background") is not None)
    score += 1 * bool(semantics.get("same_actor"))
    return score


def _attr_ok(want, have) -> bool:
    return want is None or want == have


def _motion_ok(want: str | None, have: str) -> bool:
    if want is None:
        return True
    if want in GENERIC_MOTIONS:
        return have in GENERIC_MOTIONS[want]
    return want == have


def caption_matches(semantics: dict, video: dict) -> bool:
    """Does a caption (its ``semantics``) truly describe a video (its world.json record)?

    Rules (the contract docs/world.md states):
    * background, when said, must be the video's background;
    * the caption's events must match video events in the same temporal order (a subsequence),
      each event's said attributes equal to its actor's (a 'varying' size never equals a size
      word), a generic motion matching any motion of its group; 'same_actor' needs one object
      to do both;
    * every mention ("with a yellow star nearby", "a red circle") needs some object of the video
      -- actor or distractor -- with the said attributes.
    """
    if semantics.get("background") is not None and semantics["background"] != video["background"]:
        return False
    objects = video["objects"]
    for m in semantics.get("mentions", []):
        if not any(
            _attr_ok(m.get("shape"), o["shape"]) and _attr_ok(m.get("color"), o["color"])
            and _attr_ok(m.get("size"), o["size"])
            for o in objects
        ):
            return False
    wanted = semantics.get("events", [])
    if not wanted:
        return True

    def event_ok(spec, ev):
        o = objects[ev["actor"]]
        return (
            _attr_ok(spec.get("shape"), o["shape"]) and _attr_ok(spec.get("color"), o["color"])
            and _attr_ok(spec.get("size"), o["size"]) and _motion_ok(spec.get("motion"), ev["motion"])
        )

    events = video["events"]

    def search(k: int, start: int, actor) -> bool:
        if k == len(wanted):
            return True
        for j in range(start, len(events)):
            ev = events[j]
            if semantics.get("same_actor") and actor is not None and ev["actor"] != actor:
                continue
            if event_ok(wanted[k], ev) and search(k + 1, j + 1, ev["actor"]):
                return True
        return False

    return search(0, 0, None)


class SplitIndex:
    """Integer-coded attributes of every video of one split, so one caption is checked against
    thousands of videos with a handful of numpy comparisons (the pure-Python checker would take
    minutes for a 10k-video world). Must agree with :func:`caption_matches` (tested)."""

    def __init__(self, videos: Sequence[VideoSpec], max_objects: int):
        n = len(videos)
        self.ids = [v.video_id for v in videos]
        e_max = max([len(v.events) for v in videos] + [1])
        o_max = max([len(v.objects) for v in videos] + [max_objects])
        self.bg = np.array([BACKGROUNDS.index(v.background) for v in videos], dtype=np.int16)
        self.ev = np.full((n, e_max, 5), -1, dtype=np.int16)  # shape, color, size, motion, actor
        self.obj = np.full((n, o_max, 3), -1, dtype=np.int16)  # shape, color, size
        for i, v in enumerate(videos):
            for k, o in enumerate(v.objects):
                self.obj[i, k] = (SHAPES.index(o.shape), COLOR_NAMES.index(o.color), SIZES.index(o.size))
            for k, e in enumerate(v.events):
                o = v.objects[e.actor]
                self.ev[i, k] = (
                    SHAPES.index(o.shape), COLOR_NAMES.index(o.color), SIZES.index(o.size),
                    MOTIONS.index(e.motion), e.actor,
                )
        self._cache: dict[str, np.ndarray] = {}

    @staticmethod
    def _eq(arr: np.ndarray, value, vocab) -> np.ndarray | bool:
        return True if value is None else arr == vocab.index(value)

    def _event_mask(self, spec: dict) -> np.ndarray:
        e = self.ev
        m = e[..., 3] >= 0
        m = m & self._eq(e[..., 0], spec.get("shape"), SHAPES)
        m = m & self._eq(e[..., 1], spec.get("color"), COLOR_NAMES)
        m = m & self._eq(e[..., 2], spec.get("size"), SIZES)
        motion = spec.get("motion")
        if motion in GENERIC_MOTIONS:
            m = m & np.isin(e[..., 3], [MOTIONS.index(x) for x in GENERIC_MOTIONS[motion]])
        elif motion is not None:
            m = m & (e[..., 3] == MOTIONS.index(motion))
        return m  # (N, E)

    def match(self, semantics: dict) -> list[str]:
        key = json.dumps(semantics, sort_keys=True)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._match(semantics)
            self._cache[key] = hit
        return [self.ids[i] for i in np.flatnonzero(hit)]

    def _match(self, semantics: dict) -> np.ndarray:
        n = len(self.ids)
        ok = np.ones(n, dtype=bool)
        if semantics.get("background") is not None:
            ok &= self.bg == BACKGROUNDS.index(semantics["background"])
        o = self.obj
        for mention in semantics.get("mentions", []):
            m = o[..., 0] >= 0
            m = m & self._eq(o[..., 0], mention.get("shape"), SHAPES)
            m = m & self._eq(o[..., 1], mention.get("color"), COLOR_NAMES)
            m = m & self._eq(o[..., 2], mention.get("size"), SIZES)
            ok &= m.any(axis=1)
        wanted = semantics.get("events", [])
        if not wanted:
            return ok
        masks = [self._event_mask(spec) for spec in wanted]
        e_max = self.ev.shape[1]
        actors = self.ev[..., 4]
        # ordered subsequence search over event slots (E is tiny: 2)
        found = np.zeros(n, dtype=bool)

        def rec(k: int, start: int, sel: np.ndarray, actor: np.ndarray | None):
            nonlocal found
            if k == len(wanted):
                found |= sel
                return
            for j in range(start, e_max):
                s = sel & masks[k][:, j]
                if semantics.get("same_actor") and actor is not None:
                    s = s & (actors[:, j] == actor)
                if s.any():
                    rec(k + 1, j + 1, s, actors[:, j])

        rec(0, 0, ok.copy(), None)
        return ok & found


