"""The procedural video world: the training and test universe of probret.

Why it exists: no real dataset (MSRVTT, DiDeMo, ...) and no pretrained CLIP weights can be
downloaded where probret is developed and tested, so every model is a tiny CLIP trained from
scratch on a CPU in minutes. That needs a data set that is (a) generated in seconds, (b) learnable
at 64-112 px from ~12 sampled frames, (c) exactly reproducible from a seed, and (d) hard in the
*same ways* real text-video retrieval is hard, so that the probabilistic methods (SPEM, T-MASS,
DUQ, DVTR, ProTA) have something to fix:

* **visually dominant, recurring backgrounds** (stripes, checkers, gradients, noise, dots) cover
  most pixels of every video and recur across ~1/5 of the data set each -- the "semantic
  over-clustering" SPEM's abstract names: a mean-pooled video embedding is pulled toward its
  background, not toward what the caption talks about;
* **only part of a video matches its caption**: two events in sequence ("a red circle moves left,
  then a blue square grows") with captions that describe only one of them, and static distractor
  objects no caption mentions -- what query-guided fusion (X-Pool, T-MASS, SPEM) addresses;
* **short / ambiguous queries** ("a circle moving") that truly match many videos, and
  **near-duplicate videos** (same objects and events, new positions / background / distractors)
  that are soft positives -- what DVTR's soft-positive calibration and the uncertainty of DUQ /
  SPEM address.

Every caption's meaning is kept as a small structured record (``semantics``), so the generator
knows, for every caption, exactly which videos of its split it truly describes (``world.json``);
metrics can therefore report semantic recall next to the usual one-positive recall.

Output (``generate_world``), mirroring MSRVTT so the same loader reads both::

    OUT/videos/video<i>.mp4        H.264 (libx264, yuv420p), fixed settings, single thread
    OUT/<name>_data.json           MSRVTT_data.json format: {"info", "videos", "sentences"}
    OUT/train.csv                  column video_id (as MSRVTT_train.9k.csv)
    OUT/val.csv, OUT/test.csv      key,vid_key,video_id,sentence (as MSRVTT_JSFUSION_test.csv);
                                   one evaluation caption per video
    OUT/world.json                 settings, every video's attributes, every caption's semantics
                                   and the list of video_ids it truly describes in its split

This module imports numpy and PyAV only (never torch): generating a world must not need the
training extra, and ``probret synth`` stays fast to start.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from probret.engine._version import __version__ as PROBRET_VERSION
from probret.engine.errors import DataError

WORLD_FORMAT = "probret-world"
#: Bumped whenever the same seed and settings would give different videos or captions.
WORLD_VERSION = 1

# --------------------------------------------------------------------------------------------
# Vocabulary. Colours are saturated and far apart in RGB and in hue so they survive x264 chroma
# subsampling and a resize to 64 px; backgrounds use muted, desaturated palettes so an object's
# colour is never confused with the texture behind it (at 'hard' the textures get stronger).
# --------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 195, 60),
    "blue": (40, 85, 240),
    "yellow": (245, 215, 30),
    "white": (245, 245, 245),
    "purple": (165, 45, 215),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large", "varying")  # 'varying': the object grows or shrinks
MOTIONS: tuple[str, ...] = (
    "left", "right", "up", "down", "grow", "shrink", "rotate", "blink", "appear", "disappear",
)
TRANSLATIONS: tuple[str, ...] = ("left", "right", "up", "down")
RESIZES: tuple[str, ...] = ("grow", "shrink")
#: Generic motion words a short caption may use instead of an exact motion.
GENERIC_MOTIONS: dict[str, tuple[str, ...]] = {"move": TRANSLATIONS, "resize": RESIZES}
BACKGROUNDS: tuple[str, ...] = ("striped", "checkered", "gradient", "noisy", "dotted")

# Muted two-colour palettes per background kind (each kind keeps its own look, so "striped"
# is a recurring visual pattern, not just a word).
_BG_PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "striped": ((70, 74, 86), (122, 126, 138)),
    "checkered": ((92, 72, 54), (142, 118, 90)),
    "gradient": ((34, 40, 62), (92, 120, 112)),
    "noisy": ((64, 70, 52), (132, 136, 112)),
    "dotted": ((46, 46, 50), (150, 150, 150)),
}

# Shape radii are in units of the object's nominal radius r; chosen so all shapes have a
# similar visible area (a star with circumradius 1 would look much smaller than a circle).
_SIZE_RADIUS = {"small": 0.09, "large": 0.16}  # fraction of min(W, H), before object_scale
_TRANSLATE_DISTANCE = 0.40  # fraction of min(W, H) travelled by a 'moves left/right/up/down'
_ROTATE_TOTAL = math.pi  # radians turned during one 'rotates' event
_BLINK_HALF_PERIOD = 3  # frames on, then frames off: visible with ~12 frames sampled from 32


# --------------------------------------------------------------------------------------------
# Difficulty
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difficulty:
    """Every knob that makes the world harder, explicit and serialised into world.json.

    The presets ``easy`` / ``medium`` / ``hard`` are points in this space; a float in [0, 1]
    interpolates linearly (0 = easy, 0.5 = medium, 1 = hard), and a custom ``Difficulty`` can be
    passed directly (``dataclasses.replace(DIFFICULTIES["medium"], pixel_noise=0)``). The field
    defaults are the 'medium' preset.

    two_event_fraction     fraction of videos with two events in sequence ("..., then ...")
    same_actor_fraction    of those, fraction where one object does both ("..., then it grows")
    distractor_probs       probabilities of 0 / 1 / 2 static distractor objects (capped so a
                           video has at most ``max_objects`` objects)
    near_duplicate_rate    fraction of videos that copy an earlier video of their split (same
                           objects and events; new positions, timing, distractors, and a new
                           background half of the time): soft positives
    caption_mix            weights of (full, partial, short) for a video's captions after the
                           first one (the first is always full)
    eval_partial_fraction  fraction of two-event val/test videos whose evaluation caption
                           describes only one of the two events
    mention_distractor     probability a full caption also names a distractor ("with a yellow
                           star nearby")
    paraphrase             probability of a synonym / alternative sentence template instead of
                           the canonical one (0 = a fixed, tiny grammar)
    object_scale           multiplies object radii (small 0.09, large 0.16 of the frame side)
    color_jitter           +- per-channel jitter of object colours (0..255)
    pixel_noise            std of per-frame pixel noise (0..255; triangular, Gaussian-like)
    background_contrast    multiplies the texture amplitude of the backgrounds
    background_motion      background scroll speed in px/frame (a motion no caption is about)
    """

    name: str = "custom"
    two_event_fraction: float = 0.45
    same_actor_fraction: float = 0.3
    distractor_probs: tuple[float, float, float] = (0.45, 0.4, 0.15)
    near_duplicate_rate: float = 0.12
    caption_mix: tuple[float, float, float] = (0.45, 0.35, 0.2)
    eval_partial_fraction: float = 0.4
    mention_distractor: float = 0.25
    paraphrase: float = 0.3
    object_scale: float = 1.0
    color_jitter: float = 12.0
    pixel_noise: float = 3.0
    background_contrast: float = 1.0
    background_motion: float = 0.0
    max_objects: int = 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(
        name="easy",
        two_event_fraction=0.15,
        same_actor_fraction=0.2,
        distractor_probs=(0.8, 0.2, 0.0),
        near_duplicate_rate=0.0,
        caption_mix=(0.7, 0.25, 0.05),
        eval_partial_fraction=0.0,
        mention_distractor=0.3,
        paraphrase=0.0,
        object_scale=1.15,
        color_jitter=6.0,
        pixel_noise=0.0,
        background_contrast=0.7,
        background_motion=0.0,
    ),
    "medium": Difficulty(name="medium"),
    "hard": Difficulty(
        name="hard",
        two_event_fraction=0.7,
        same_actor_fraction=0.4,
        distractor_probs=(0.15, 0.45, 0.4),
        near_duplicate_rate=0.25,
        caption_mix=(0.25, 0.4, 0.35),
        eval_partial_fraction=0.7,
        mention_distractor=0.2,
        paraphrase=0.6,
        object_scale=0.85,
        color_jitter=20.0,
        pixel_noise=8.0,
        background_contrast=1.35,
        background_motion=1.0,
    ),
}


def parse_difficulty(value: str | float | Difficulty) -> Difficulty:
    """'easy' | 'medium' | 'hard' | a number in [0, 1] (also as a string) | a Difficulty."""
    if isinstance(value, Difficulty):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in DIFFICULTIES:
            return DIFFICULTIES[key]
        try:
            value = float(key)
        except ValueError:
            raise DataError(
                f"unknown difficulty {value!r}: use easy, medium, hard or a number in [0, 1]"
            ) from None
    x = float(value)
    if not 0.0 <= x <= 1.0 or math.isnan(x):
        raise DataError(f"difficulty {value!r} is out of range: a number must be in [0, 1]")
    lo, hi, t = (DIFFICULTIES["easy"], DIFFICULTIES["medium"], x / 0.5) if x <= 0.5 else (
        DIFFICULTIES["medium"], DIFFICULTIES["hard"], (x - 0.5) / 0.5)
    kwargs = {}
    for f in dataclasses.fields(Difficulty):
        a, b = getattr(lo, f.name), getattr(hi, f.name)
        if f.name == "name":
            kwargs[f.name] = f"{x:g}"
        elif f.name == "max_objects":
            kwargs[f.name] = a if t < 0.5 else b
        elif isinstance(a, tuple):
            kwargs[f.name] = tuple(float((1 - t) * u + t * v) for u, v in zip(a, b))
        else:
            kwargs[f.name] = float((1 - t) * a + t * b)
    return Difficulty(**kwargs)


# --------------------------------------------------------------------------------------------
# Scene description (what world.json stores per video)
# --------------------------------------------------------------------------------------------


@dataclass
class ObjectSpec:
    """One foreground object. x, y: initial centre as fractions of width / height; size is
    'small' | 'large' | 'varying' (the object grows or shrinks, so no caption states a size)."""

    shape: str
    color: str
    size: str
    role: str  # 'actor' (does an event) or 'distractor' (static, never the subject of an event)
    x: float
    y: float
    angle: float
    rgb: tuple[int, int, int]


@dataclass
class EventSpec:
    """One event: object ``actor`` (index into the video's objects) does ``motion`` during
    frames [start_frame, end_frame)."""

    actor: int
    motion: str
    start_frame: int
    end_frame: int
    direction: int = 1  # rotation sense (+1 / -1)
    phase: int = 0  # blink phase in frames


@dataclass
class VideoSpec:
    video_id: str
    index: int
    split: str  # 'train' | 'val' | 'test'
    background: str
    bg_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    bg_angle: float  # stripes / gradient direction, radians
    bg_period: float  # texture period in pixels
    bg_phase: tuple[float, float]
    objects: list[ObjectSpec]
    events: list[EventSpec]
    near_duplicate_of: str | None = None
    captions: list["Caption"] = field(default_factory=list)
    eval_sen_id: int | None = None

    def record(self) -> dict:
        """JSON description of the video (world.json ``videos`` entry)."""
        return {
            "video_id": self.video_id,
            "split": self.split,
            "background": self.background,
            "objects": [
                {
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "role": o.role,
                    "x": round(o.x, 4),
                    "y": round(o.y, 4),
                    "rgb": list(o.rgb),
                }
                for o in self.objects
            ],
            "events": [
                {"actor": e.actor, "motion": e.motion, "start_frame": e.start_frame, "end_frame": e.end_frame}
                for e in self.events
            ],
            "near_duplicate_of": self.near_duplicate_of,
            "sen_ids": [c.sen_id for c in self.captions],
            "eval_sen_id": self.eval_sen_id,
        }


@dataclass
class Caption:
    """A caption and what it means. ``semantics``:
    {"events": [{"shape", "color", "size", "motion"}...] (in temporal order, None = not said),
     "same_actor": bool, "background": str | None, "mentions": [{"shape", "color", "size"}...]}.
    motion may be exact (MOTIONS) or generic ('move' = any translation, 'resize' = grow/shrink)."""

    text: str
    kind: str  # 'full' | 'partial' | 'short'
    semantics: dict
    sen_id: int = -1
    matches: list[str] = field(default_factory=list)


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


# --------------------------------------------------------------------------------------------
# Caption semantics checker (reference, pure Python) and the vectorised one used at scale
# --------------------------------------------------------------------------------------------


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


class _SplitIndex:
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


# --------------------------------------------------------------------------------------------
# Caption grammar
# --------------------------------------------------------------------------------------------

# motion -> list of (simple present, gerund); index 0 is the canonical phrase.
_VERBS: dict[str, list[tuple[str, str]]] = {
    "left": [("moves left", "moving left"), ("moves to the left", "moving to the left"),
             ("slides left", "sliding left"), ("goes left", "going left")],
    "right": [("moves right", "moving right"), ("moves to the right", "moving to the right"),
              ("slides right", "sliding right"), ("goes right", "going right")],
    "up": [("moves up", "moving up"), ("rises", "rising"), ("goes up", "going up"),
           ("slides upward", "sliding upward")],
    "down": [("moves down", "moving down"), ("falls", "falling"), ("goes down", "going down"),
             ("drops", "dropping")],
    "grow": [("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding")],
    "shrink": [("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting")],
    "rotate": [("rotates", "rotating"), ("spins", "spinning"), ("turns around", "turning around")],
    "blink": [("blinks", "blinking"), ("flashes", "flashing"), ("flickers", "flickering")],
    "appear": [("appears", "appearing"), ("shows up", "showing up"), ("pops up", "popping up")],
    "disappear": [("disappears", "disappearing"), ("vanishes", "vanishing"), ("fades away", "fading away")],
    "move": [("moves", "moving"), ("is moving", "moving around")],
    "resize": [("changes size", "changing size"), ("changes its size", "changing its size")],
}
_BG_PREPOSITIONS = ["on", "over", "in front of"]
_THEN = ["{a}, then {b}", "{a} and then {b}", "first {a}, then {b}", "{a}, after that {b}"]
_MENTION = [", with a {o} nearby", " next to a {o}", ", and a {o} is also there"]


class _Grammar:
    """Turns semantics into English. Canonical phrasing unless ``paraphrase`` fires, so 'easy'
    has a fixed, tiny grammar and 'hard' forces the text tower to learn synonyms."""

    def __init__(self, rng: np.random.Generator, paraphrase: float):
        self.rng = rng
        self.p = paraphrase

    def _pick(self, options: list):
        if len(options) > 1 and self.rng.random() < self.p:
            return options[int(self.rng.integers(1, len(options)))]
        return options[0]

    def noun(self, spec: dict) -> str:
        words = [w for w in (spec.get("size"), spec.get("color")) if w is not None and w != "varying"]
        if spec.get("shape") is None:
            if spec.get("color") is not None and spec.get("size") is None and self.rng.random() < self.p:
                return f"something {spec['color']}"
            words.append("shape")
        else:
            words.append(spec["shape"])
        return "a " + " ".join(words)

    def background(self, bg: str) -> str:
        return f"{self._pick(_BG_PREPOSITIONS)} a {bg} background"

    def clause(self, spec: dict, *, bg: str | None, subject: str | None = None, gerund_ok: bool = True) -> str:
        """One event as a clause. Templates: 0 "S V [on a B background]" (canonical),
        1 "S V-ing [...]" (a noun phrase, as many MSRVTT captions are), 2 "on a B background, S V"."""
        present, gerund = self._pick(_VERBS[spec["motion"]])
        subj = subject or self.noun(spec)
        allowed = [t for t, ok in ((1, gerund_ok), (2, bg is not None)) if ok]
        template = 0
        if allowed and self.rng.random() < self.p:
            template = allowed[int(self.rng.integers(len(allowed)))]
        text = f"{subj} {gerund if template == 1 else present}"
        if bg is None:
            return text
        if template == 2:
            return f"{self.background(bg)}, {text}"
        return f"{text} {self.background(bg)}"

    def sentence(self, semantics: dict) -> str:
        events, bg = semantics["events"], semantics.get("background")
        if not events:  # presence only: "a red circle (on a striped background)"
            text = " and a ".join(self.noun(m)[2:] if i else self.noun(m) for i, m in enumerate(semantics["mentions"]))
            return f"{text} {self.background(bg)}" if bg else text
        if len(events) == 1:
            text = self.clause(events[0], bg=bg)
        else:
            a = self.clause(events[0], bg=bg, gerund_ok=False)
            subj = "it" if semantics.get("same_actor") else None
            b = self.clause(events[1], bg=None, subject=subj, gerund_ok=False)
            text = self._pick(_THEN).format(a=a, b=b)
        for m in semantics["mentions"]:
            text += self._pick(_MENTION).format(o=self.noun(m)[2:])
        return text


def _full_spec(obj: ObjectSpec, motion: str | None) -> dict:
    return {
        "shape": obj.shape,
        "color": obj.color,
        "size": None if obj.size == "varying" else obj.size,
        "motion": motion,
    }


def _caption_semantics(rng: np.random.Generator, v: VideoSpec, kind: str, d: Difficulty, *,
                       event: int | None = None, force_background: bool = False) -> dict:
    """Draw the meaning of one caption of kind full / partial / short for video v."""
    sem = {"events": [], "same_actor": False, "background": None, "mentions": []}
    objs, evs = v.objects, v.events
    if kind == "full":
        sem["events"] = [_full_spec(objs[e.actor], e.motion) for e in evs]
        sem["same_actor"] = len(evs) == 2 and evs[0].actor == evs[1].actor
        sem["background"] = v.background
        distractors = [o for o in objs if o.role == "distractor"]
        if distractors and rng.random() < d.mention_distractor:
            o = distractors[int(rng.integers(len(distractors)))]
            sem["mentions"] = [{"shape": o.shape, "color": o.color, "size": None}]
        return sem
    if kind == "partial":
        k = int(rng.integers(len(evs))) if event is None else event
        e = evs[k]
        spec = _full_spec(objs[e.actor], e.motion)
        if len(evs) == 2:  # one of two events, fully described: only part of the video matches
            sem["events"] = [spec]
            sem["background"] = v.background if (force_background or rng.random() < 0.5) else None
        else:  # one-event video: fairly specific, one detail left out
            drop = ["background", "size", "motion"] if spec["size"] is not None else ["background", "motion"]
            what = drop[int(rng.integers(len(drop)))]
            if what == "size":
                spec["size"] = None
            if what == "motion":
                spec["motion"] = next((g for g, ms in GENERIC_MOTIONS.items() if e.motion in ms), e.motion)
                if spec["motion"] == e.motion:  # no generic word for it: drop the size instead
                    spec["size"] = None
            sem["events"] = [spec]
            sem["background"] = None if what == "background" else v.background
        return sem
    # short / ambiguous: two of {shape, colour, motion}, or a bare presence ("a red circle"),
    # possibly of a distractor no other caption talks about.
    choice = int(rng.integers(4))
    if choice == 3:
        o = objs[int(rng.integers(len(objs)))]
        sem["mentions"] = [{"shape": o.shape, "color": o.color, "size": None}]
        return sem
    e = evs[int(rng.integers(len(evs)))]
    o = objs[e.actor]
    generic = next((g for g, ms in GENERIC_MOTIONS.items() if e.motion in ms), None)
    if choice == 0:  # "a circle moving"
        sem["events"] = [{"shape": o.shape, "color": None, "size": None, "motion": generic or e.motion}]
    elif choice == 1:  # "a circle moves left"
        sem["events"] = [{"shape": o.shape, "color": None, "size": None, "motion": e.motion}]
    else:  # "something red moves left" / "a red shape grows"
        sem["events"] = [{"shape": None, "color": o.color, "size": None, "motion": e.motion}]
    return sem


# --------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------

# Pairs (first motion, second motion) one object can do in sequence without contradiction:
# nothing after 'disappear', no 'appear' after having been visible.
_SAME_ACTOR_FIRST = tuple(m for m in MOTIONS if m != "disappear")
_SAME_ACTOR_SECOND = tuple(m for m in MOTIONS if m != "appear")


def _radius_px(size: str, scale: float, side: int) -> float:
    return _SIZE_RADIUS[size] * scale * side


def _object_track(obj: ObjectSpec, events: list[EventSpec], frames: int, width: int, height: int,
                  scale: float) -> np.ndarray:
    """Per-frame state (x_px, y_px, radius_px, angle, alpha) of one object, shape (F, 5).

    Outside its events an object holds still: before its first event it shows its initial
    state (invisible if that event is 'appear'), after an event it keeps the final state
    (invisible after 'disappear')."""
    side = min(width, height)
    r_small, r_large = _radius_px("small", scale, side), _radius_px("large", scale, side)
    if obj.size == "varying":
        first = next(e.motion for e in events if e.motion in RESIZES)
        r = r_small if first == "grow" else r_large
    else:
        r = _radius_px(obj.size, scale, side)
    x, y, ang = obj.x * width, obj.y * height, obj.angle
    alpha = 0.0 if events and events[0].motion == "appear" else 1.0
    dist = _TRANSLATE_DISTANCE * side
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
        ang += e.direction * _ROTATE_TOTAL * p
    elif m == "blink":
        if p < 1.0:
            alpha = 1.0 if ((f - e.start_frame + e.phase) // _BLINK_HALF_PERIOD) % 2 == 0 else 0.0
        else:
            alpha = 1.0
    elif m == "appear":
        alpha = float(np.clip((p - 0.3) / 0.15, 0.0, 1.0))
    elif m == "disappear":
        alpha = 1.0 - float(np.clip((p - 0.55) / 0.15, 0.0, 1.0))
    return (x, y, r, ang, alpha)


def _fits(track: np.ndarray, width: int, height: int) -> bool:
    x, y, r = track[:, 0], track[:, 1], track[:, 2] * 1.15  # stars/triangles reach 1.25 r
    return bool(np.all(x - r >= 0) and np.all(x + r <= width) and np.all(y - r >= 0) and np.all(y + r <= height))


def _jitter_rgb(rng, color: str, amount: float) -> tuple[int, int, int]:
    base = np.array(COLORS[color], dtype=np.float64)
    return tuple(int(v) for v in np.clip(np.round(base + rng.uniform(-amount, amount, 3)), 0, 255))


def _sample_timing(rng, n_events: int, frames: int) -> list[tuple[int, int]]:
    lead = int(round(rng.uniform(0.0, 0.08) * frames))
    tail = frames - int(round(rng.uniform(0.0, 0.08) * frames))
    if n_events == 1:
        return [(lead, tail)]
    mid = int(round(frames * rng.uniform(0.44, 0.56)))
    return [(lead, mid), (mid, tail)]


def _sample_video(rng: np.random.Generator, index: int, split: str, d: Difficulty, frames: int,
                  width: int, height: int, template: VideoSpec | None) -> VideoSpec:
    """Draw one scene. With ``template`` (near-duplicate) the actors and their events are copied
    and everything else (positions, timing, distractors, often the background) is redrawn."""
    if template is not None:
        background = template.background if rng.random() < 0.5 else BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        actor_defs = [(o.shape, o.color, o.size) for o in template.objects if o.role == "actor"]
        remap = {old: new for new, old in enumerate(i for i, o in enumerate(template.objects) if o.role == "actor")}
        motions = [(remap[e.actor], e.motion) for e in template.events]
    else:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        two = rng.random() < d.two_event_fraction
        if two and rng.random() < d.same_actor_fraction:
            m1 = _SAME_ACTOR_FIRST[int(rng.integers(len(_SAME_ACTOR_FIRST)))]
            options = [m for m in _SAME_ACTOR_SECOND if m != m1 and not (m in RESIZES and m1 in RESIZES)]
            m2 = options[int(rng.integers(len(options)))]
            motions = [(0, m1), (0, m2)]
            n_actors = 1
        elif two:
            m1 = MOTIONS[int(rng.integers(len(MOTIONS)))]
            m2 = MOTIONS[int(rng.integers(len(MOTIONS)))]
            motions = [(0, m1), (1, m2)]
            n_actors = 2
        else:
            motions = [(0, MOTIONS[int(rng.integers(len(MOTIONS)))])]
            n_actors = 1
        actor_defs = []
        for a in range(n_actors):
            own = [m for k, m in motions if k == a]
            while True:
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
                # a rotating circle looks still: rotation is only given to shapes where it shows
                if "rotate" in own and shape == "circle":
                    continue
                # two actors must be tellable apart, or "the red circle" would be ambiguous
                if any(shape == s and color == c for s, c, _ in actor_defs):
                    continue
                break
            size = "varying" if any(m in RESIZES for m in own) else SIZES[int(rng.integers(2))]
            actor_defs.append((shape, color, size))

    timing = _sample_timing(rng, len(motions), frames)
    events = [
        EventSpec(actor=a, motion=m, start_frame=s, end_frame=t, direction=1 if rng.random() < 0.5 else -1,
                  # blink starts in its 'on' half so the event's first frames show the object
                  phase=int(rng.integers(_BLINK_HALF_PERIOD)) if m == "blink" else 0)
        for (a, m), (s, t) in zip(motions, timing)
    ]

    objects: list[ObjectSpec] = []
    for a, (shape, color, size) in enumerate(actor_defs):
        own = [e for e in events if e.actor == a]
        for attempt in range(60):
            obj = ObjectSpec(shape, color, size, "actor", float(rng.uniform(0.12, 0.88)),
                             float(rng.uniform(0.12, 0.88)), float(rng.uniform(0, 2 * math.pi)),
                             _jitter_rgb(rng, color, d.color_jitter))
            track = _object_track(obj, own, frames, width, height, d.object_scale)
            if not _fits(track, width, height):
                continue
            # keep actors apart at their start so neither hides the other
            if any(math.hypot((obj.x - o.x) * width, (obj.y - o.y) * height) < 0.22 * min(width, height)
                   for o in objects) and attempt < 59:
                continue
            break
        objects.append(obj)

    room = max(d.max_objects - len(objects), 0)
    probs = np.array(d.distractor_probs, dtype=np.float64)
    n_distractors = min(int(rng.choice(len(probs), p=probs / probs.sum())), room)
    for _ in range(n_distractors):
        for attempt in range(40):
            obj = ObjectSpec(SHAPES[int(rng.integers(len(SHAPES)))], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))],
                             SIZES[int(rng.integers(2))], "distractor", float(rng.uniform(0.15, 0.85)),
                             float(rng.uniform(0.15, 0.85)), float(rng.uniform(0, 2 * math.pi)),
                             (0, 0, 0))
            if any(math.hypot((obj.x - o.x) * width, (obj.y - o.y) * height) < 0.18 * min(width, height)
                   for o in objects) and attempt < 39:
                continue
            break
        obj.rgb = _jitter_rgb(rng, obj.color, d.color_jitter)
        objects.append(obj)

    c0, c1 = _BG_PALETTES[background]
    jit = rng.uniform(-10, 10, 3)
    bg_colors = (tuple(int(v) for v in np.clip(np.array(c0) + jit, 0, 255)),
                 tuple(int(v) for v in np.clip(np.array(c1) + jit, 0, 255)))
    side = min(width, height)
    return VideoSpec(
        video_id=f"video{index}", index=index, split=split, background=background, bg_colors=bg_colors,
        bg_angle=float(rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])),
        bg_period=float(side * rng.uniform(0.13, 0.2)),
        bg_phase=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
        objects=objects, events=events,
        near_duplicate_of=template.video_id if template is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_SUB = np.array([-0.25, 0.25])  # 2x2 supersampling offsets: anti-aliased edges survive resizing


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u, v: coordinates in the object's frame, in units of its radius, v pointing up."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.86
    if shape == "triangle":  # equilateral, circumradius 1.25, apex up
        rho = 0.625
        return (v >= -rho) & (0.8660254 * u + 0.5 * v <= rho) & (-0.8660254 * u + 0.5 * v <= rho)
    if shape == "star":  # five points, outer radius 1.25, inner 0.55
        ro, ri, half = 1.25, 0.55, math.pi / 5
        theta = np.arctan2(v, u) - math.pi / 2
        t = np.mod(theta, 2 * half)
        phi = np.abs(t - half)  # 0 at an outer point, half at an inner point
        phi = half - phi
        bound = ri * ro * math.sin(half) / (ri * np.sin(phi) + ro * np.sin(half - phi))
        return u * u + v * v <= bound * bound
    if shape == "cross":
        au, av_ = np.abs(u), np.abs(v)
        return ((au <= 1.05) & (av_ <= 0.36)) | ((av_ <= 1.05) & (au <= 0.36))
    raise ValueError(shape)


def _coverage(shape: str, cx: float, cy: float, r: float, angle: float, width: int, height: int):
    """Anti-aliased coverage of a shape: (y0, y1, x0, x1, mask float32) or None if off-screen."""
    ext = 1.3 * r + 1
    x0, x1 = max(int(math.floor(cx - ext)), 0), min(int(math.ceil(cx + ext)), width)
    y0, y1 = max(int(math.floor(cy - ext)), 0), min(int(math.ceil(cy + ext)), height)
    if x1 <= x0 or y1 <= y0 or r <= 0:
        return None
    xs = np.arange(x0, x1) + 0.5
    ys = np.arange(y0, y1) + 0.5
    # sub-samples on the leading axes, so averaging them adds contiguous planes (fast)
    px = (xs[None, None, None, :] + _SUB[None, :, None, None]) - cx  # (1, 2, 1, W)
    py = (ys[None, None, :, None] + _SUB[:, None, None, None]) - cy  # (2, 1, H, 1)
    c, s = math.cos(angle), math.sin(angle)
    u = (c * px + s * py) / r
    v = (s * px - c * py) / r  # image y points down; v points up
    inside = _shape_inside(shape, u, v).reshape(4, y1 - y0, x1 - x0)  # (2, 2, H, W) -> (4, H, W)
    mask = (inside[0].astype(np.float32) + inside[1] + inside[2] + inside[3]) * np.float32(0.25)
    return y0, y1, x0, x1, mask


def _background(v: VideoSpec, width: int, height: int, contrast: float, rng: np.random.Generator,
                shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Background (H, W, 3) float32. ``shift`` moves the periodic textures (background_motion)
    by recomputing them on shifted coordinates, which wraps seamlessly at any angle."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx += np.float32(shift[0])
    yy += np.float32(shift[1])
    c0 = np.array(v.bg_colors[0], dtype=np.float32)
    c1 = np.array(v.bg_colors[1], dtype=np.float32)
    period = v.bg_period
    ca, sa = math.cos(v.bg_angle), math.sin(v.bg_angle)
    if v.background == "striped":
        t = ((xx * ca + yy * sa) / period + v.bg_phase[0]) % 1.0
        w = (t < 0.5).astype(np.float32)
    elif v.background == "checkered":
        w = (((np.floor(xx / period + v.bg_phase[0]) + np.floor(yy / period + v.bg_phase[1])) % 2) == 0).astype(np.float32)
    elif v.background == "gradient":
        t = xx * ca + yy * sa
        w = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif v.background == "noisy":  # smooth value noise (bilinear upsampling of a coarse grid) + grain
        cell = max(period / 2.0, 2.0)
        gh, gw = int(height / cell) + 2, int(width / cell) + 2
        grid = rng.random((gh, gw)).astype(np.float32)
        fy, fx = yy / cell, xx / cell
        iy, ix = fy.astype(int), fx.astype(int)
        ty, tx = fy - iy, fx - ix
        w = (grid[iy, ix] * (1 - tx) * (1 - ty) + grid[iy, ix + 1] * tx * (1 - ty)
             + grid[iy + 1, ix] * (1 - tx) * ty + grid[iy + 1, ix + 1] * tx * ty)
        w = 0.75 * w + 0.25 * rng.random((height, width)).astype(np.float32)
    elif v.background == "dotted":
        gx = ((xx / period + v.bg_phase[0]) % 1.0) - 0.5
        gy = ((yy / period + v.bg_phase[1]) % 1.0) - 0.5
        w = np.clip((0.22 - np.sqrt(gx * gx + gy * gy)) * period, 0.0, 1.0).astype(np.float32)
    else:  # pragma: no cover - guarded by BACKGROUNDS
        raise ValueError(v.background)
    mid = (c0 + c1) / 2
    lo = mid + (c0 - mid) * contrast
    hi = mid + (c1 - mid) * contrast
    out = lo[None, None, :] * (1 - w[..., None]) + hi[None, None, :] * w[..., None]
    return np.clip(out, 0, 255).astype(np.float32)


def render_video(v: VideoSpec, *, width: int, height: int, frames: int, difficulty: Difficulty,
                 seed: int) -> np.ndarray:
    """Pixels of one video, uint8 (F, H, W, 3) RGB. Deterministic in (spec, seed): the pixel
    noise has its own generator seeded by (seed, video index), independent of the scene draw."""
    rng = np.random.default_rng([seed, v.index, 1])
    d = difficulty
    scrolling = d.background_motion > 0 and v.background in ("striped", "checkered", "dotted")
    canvas = _background(v, width, height, d.background_contrast, rng)
    dx, dy = math.cos(v.bg_angle + 0.6), math.sin(v.bg_angle + 0.6)
    tracks = [
        _object_track(o, [e for e in v.events if e.actor == k], frames, width, height, d.object_scale)
        for k, o in enumerate(v.objects)
    ]
    order = sorted(range(len(v.objects)), key=lambda k: v.objects[k].role == "actor")  # distractors behind
    cache: dict[int, tuple] = {}

    def paint_distractors(layer):
        for k in order:
            if v.objects[k].role == "distractor":
                _paint(layer, v.objects[k], tracks[k][0], width, height, cache, k)

    if not scrolling:
        paint_distractors(canvas)  # static: painted once into the background
    video = np.empty((frames, height, width, 3), dtype=np.float32)
    for f in range(frames):
        frame = video[f]
        if scrolling:
            step = f * d.background_motion
            frame[...] = _background(v, width, height, d.background_contrast, rng, (step * dx, step * dy))
            paint_distractors(frame)
        else:
            frame[...] = canvas
        for k in order:
            if v.objects[k].role == "actor":
                _paint(frame, v.objects[k], tracks[k][f], width, height, cache, k)
    if d.pixel_noise > 0:
        # triangular noise (difference of two uniform bytes) with std pixel_noise: it looks the
        # same as Gaussian grain after x264 and costs a fifth of rng.standard_normal
        a = rng.integers(0, 256, video.shape, dtype=np.uint8).astype(np.float32)
        a -= rng.integers(0, 256, video.shape, dtype=np.uint8)
        video += a * np.float32(d.pixel_noise / 104.5)
    video += np.float32(0.5)
    np.clip(video, 0, 255, out=video)
    return video.astype(np.uint8)


def _paint(frame: np.ndarray, o: ObjectSpec, state: np.ndarray, width: int, height: int,
           cache: dict | None = None, key: int = -1) -> None:
    x, y, r, ang, alpha = (float(s) for s in state)
    if alpha <= 0:
        return
    sig = (round(x, 2), round(y, 2), round(r, 2), round(ang, 3))
    cov = None
    if cache is not None and key in cache and cache[key][0] == sig:
        cov = cache[key][1]
    if cov is None:
        cov = _coverage(o.shape, x, y, r, ang, width, height)
        if cache is not None:
            cache[key] = (sig, cov)
    if cov is None:
        return
    y0, y1, x0, x1, mask = cov
    a = (mask * np.float32(alpha))[..., None]
    col = np.asarray(o.rgb, dtype=np.float32)
    region = frame[y0:y1, x0:x1]
    region *= 1 - a
    region += a * col


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range conversion done in numpy (not swscale) so the encoder input -- and
    with single-threaded x264, the file -- is bit-identical on every machine. Chroma is the
    2x2 average. rgb: uint8 (F, H, W, 3); returns uint8 (F, H*3/2, W), the planar layout
    PyAV's ``VideoFrame.from_ndarray(..., format="yuv420p")`` expects for each frame."""
    f = rgb.astype(np.float32)
    n, h, w = rgb.shape[:3]
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16.5 + (65.481 / 255) * r + (128.553 / 255) * g + (24.966 / 255) * b
    sub = (f[:, 0::2, 0::2] + f[:, 1::2, 0::2] + f[:, 0::2, 1::2] + f[:, 1::2, 1::2]) * np.float32(0.25)
    rs, gs, bs = sub[..., 0], sub[..., 1], sub[..., 2]
    u = 128.5 + (-37.797 / 255) * rs + (-74.203 / 255) * gs + (112.0 / 255) * bs
    v = 128.5 + (112.0 / 255) * rs + (-93.786 / 255) * gs + (-18.214 / 255) * bs
    out = np.empty((n, h * 3 // 2, w), dtype=np.uint8)
    q = h // 4
    out[:, :h] = np.clip(y, 0, 255)
    out[:, h:h + q] = np.clip(u, 0, 255).reshape(n, q, w)
    out[:, h + q:] = np.clip(v, 0, 255).reshape(n, q, w)
    return out


#: Fixed encoder settings (recorded in world.json). CRF 18 keeps the colours and edges of
#: 10-px objects intact; a keyframe every 16 frames keeps seeking cheap. Determinism: one
#: thread, and mbtree=0 -- with macroblock-tree rate control on, x264 (as linked by PyAV 18)
#: gave different bytes *and different decoded pixels* for the same input from one encode to
#: the next, measured on 64x64 clips; without it the output is a pure function of the input.
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
GOP_SIZE = 16


def encode_mp4(path: str | Path, frames_rgb: np.ndarray, fps: int) -> None:
    """Write uint8 (F, H, W, 3) RGB frames as an H.264 yuv420p mp4 (atomically: tmp + rename)."""
    import av  # deferred: importing PyAV costs ~0.1 s and workers import it themselves

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    f_count, h, w, _ = frames_rgb.shape
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        cc = stream.codec_context
        cc.thread_count = 1
        cc.gop_size = GOP_SIZE
        stream.options = dict(X264_OPTIONS)
        planes = _rgb_to_yuv420p(frames_rgb)
        for i in range(f_count):
            frame = av.VideoFrame.from_ndarray(planes[i], format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")
#: MSRVTT_data.json spells the validation split 'validate'.
MSRVTT_SPLIT_NAMES = {"train": "train", "val": "validate", "test": "test"}
OUTPUT_FILES = ("world.json", "train.csv", "val.csv", "test.csv")


@dataclass(frozen=True)
class WorldSummary:
    """What ``generate_world`` wrote. captions: number of sentences per split (all captions of
    the split's videos); eval_unique: per val/test split, the fraction of evaluation captions
    that match exactly one video of their split."""

    out_dir: Path
    videos: dict[str, int]
    captions: dict[str, int]
    eval_unique: dict[str, float]
    disk_bytes: int
    seconds: float
    seed: int
    difficulty: str

    @property
    def total_videos(self) -> int:
        return sum(self.videos.values())


def split_counts(videos: int, fractions: Sequence[float]) -> dict[str, int]:
    """Contiguous id ranges as MSRVTT (train first, then val, then test). Every split with a
    positive fraction gets at least one video when there are enough videos."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DataError(f"splits must be three non-negative fractions (train, val, test), got {tuple(fractions)}")
    total = float(sum(fractions))
    fr = [f / total for f in fractions]
    n_val = int(round(videos * fr[1]))
    n_test = int(round(videos * fr[2]))
    if videos >= 3:
        n_val = max(n_val, 1 if fr[1] > 0 else 0)
        n_test = max(n_test, 1 if fr[2] > 0 else 0)
    n_train = videos - n_val - n_test
    if fr[0] > 0 and n_train < 1 and videos >= 3:
        n_train, n_test = 1, n_test - 1
    if n_train < 0:
        raise DataError(f"{videos} videos are too few for splits {tuple(fractions)}")
    return {"train": n_train, "val": n_val, "test": n_test}


def _render_job(args) -> int:
    spec, out_path, width, height, frames, fps, difficulty, seed = args
    pixels = render_video(spec, width=width, height=height, frames=frames, difficulty=difficulty, seed=seed)
    encode_mp4(out_path, pixels, fps)
    return os.path.getsize(out_path)


def _check_out_dir(out: Path, overwrite: bool, name: str) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(f"{out} is not empty; pass --overwrite (overwrite=True) to replace a world there")
    # Remove only what a world consists of; anything else the user keeps there stays.
    videos_dir = out / "videos"
    if videos_dir.is_dir():
        for p in videos_dir.iterdir():
            if p.is_file() and (p.suffix == ".mp4" or p.name.endswith(".mp4.part")):
                p.unlink()
            elif p.is_dir():
                raise DataError(f"{videos_dir} holds a folder ({p.name}); it does not look like a world, refusing to overwrite")
    for fname in OUTPUT_FILES + (f"{name}_data.json",):
        for path in (out / fname, out / (fname + ".part")):
            if path.is_file():
                path.unlink()


def generate_world(
    out_dir: str | Path,
    *,
    videos: int,
    seed: int,
    resolution: tuple[int, int] = (112, 112),
    frames: int = 32,
    fps: int = 8,
    difficulty: str | float | Difficulty = "medium",
    splits: Sequence[float] = (0.7, 0.1, 0.2),
    captions_per_video: tuple[int, int] = (3, 5),
    name: str = "procedural",
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> WorldSummary:
    """Generate a procedural world in ``out_dir`` (see the module docstring for the layout).

    videos: number of videos (ids video0..video{N-1}; train, val, test are contiguous id ranges).
    seed: everything (scenes, captions, pixels) is a function of (seed, settings): the same call
        writes byte-identical files.
    resolution: (width, height), even numbers (yuv420p) >= 32. frames / fps: length of each clip.
    difficulty: 'easy' | 'medium' | 'hard' | float in [0, 1] | Difficulty (see ``Difficulty``).
    captions_per_video: inclusive range of captions drawn per video (the first is always full).
    workers: processes rendering videos in parallel (output identical for any number).
    progress: called as progress(done, total) after every video.
    overwrite: a non-empty ``out_dir`` is refused (DataError) unless set; then only the files a
        world consists of (videos/*.mp4, the annotation files) are deleted, nothing else.

    Videos are written first, the annotations last and world.json at the very end, so a folder
    with a world.json holds a complete world. Bad settings raise DataError before anything is
    written.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    d = parse_difficulty(difficulty)
    width, height = (int(resolution[0]), int(resolution[1]))
    if videos < 1:
        raise DataError(f"videos must be at least 1, got {videos}")
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise DataError(f"resolution must be even and at least 32x32 (yuv420p), got {width}x{height}")
    if frames < 4:
        raise DataError(f"frames must be at least 4, got {frames}")
    if fps < 1:
        raise DataError(f"fps must be at least 1, got {fps}")
    lo_c, hi_c = captions_per_video
    if lo_c < 1 or hi_c < lo_c:
        raise DataError(f"captions_per_video must be a range (lo, hi) with 1 <= lo <= hi, got {captions_per_video}")
    counts = split_counts(videos, splits)
    _check_out_dir(out, overwrite, name)
    (out / "videos").mkdir(parents=True, exist_ok=True)

    specs = build_specs(videos=videos, seed=seed, width=width, height=height, frames=frames,
                        difficulty=d, counts=counts, captions_per_video=(lo_c, hi_c))

    jobs = [(v, out / "videos" / f"{v.video_id}.mp4", width, height, frames, fps, d, seed) for v in specs]
    disk = 0
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
        with ctx.Pool(workers) as pool:
            for i, size in enumerate(pool.imap(_render_job, jobs, chunksize=4)):
                disk += size
                if progress:
                    progress(i + 1, len(jobs))
    else:
        for i, job in enumerate(jobs):
            disk += _render_job(job)
            if progress:
                progress(i + 1, len(jobs))

    settings = {
        "seed": seed, "videos": videos, "resolution": [width, height], "frames": frames, "fps": fps,
        "difficulty": d.to_dict(), "splits": counts, "split_fractions": list(map(float, splits)),
        "captions_per_video": [lo_c, hi_c], "name": name,
        "encoder": {"codec": "libx264", "pix_fmt": "yuv420p", "gop_size": GOP_SIZE, "threads": 1, **X264_OPTIONS},
    }
    disk += write_annotations(out, specs, settings, name=name, fps=fps, frames=frames)
    summary = WorldSummary(
        out_dir=out,
        videos=dict(counts),
        captions={s: sum(len(v.captions) for v in specs if v.split == s) for s in SPLITS},
        eval_unique={
            s: float(np.mean([len(_eval_caption(v).matches) == 1 for v in specs if v.split == s]))
            for s in ("val", "test") if counts[s] > 0
        },
        disk_bytes=disk,
        seconds=time.perf_counter() - t0,
        seed=seed,
        difficulty=d.name,
    )
    return summary


def _eval_caption(v: VideoSpec) -> Caption:
    return next(c for c in v.captions if c.sen_id == v.eval_sen_id)


def build_specs(*, videos: int, seed: int, width: int, height: int, frames: int, difficulty: Difficulty,
                counts: dict[str, int], captions_per_video: tuple[int, int] = (3, 5)) -> list[VideoSpec]:
    """Scenes and captions of the whole world (no pixels): fast, and what world.json records.

    Scenes come from one generator seeded by ``seed`` in id order (near-duplicates copy an
    earlier video of their own split, so they matter for that split's evaluation); caption
    match sets are computed per split; each val/test video then gets its evaluation caption."""
    d = difficulty
    rng = np.random.default_rng([seed, 0])
    specs: list[VideoSpec] = []
    index = 0
    for split in SPLITS:
        first = len(specs)
        for _ in range(counts[split]):
            template = None
            if index > first and rng.random() < d.near_duplicate_rate:
                template = specs[int(rng.integers(first, index))]
            specs.append(_sample_video(rng, index, split, d, frames, width, height, template))
            index += 1

    grammar = _Grammar(rng, d.paraphrase)
    mix = np.array(d.caption_mix, dtype=np.float64)
    mix = mix / mix.sum()
    kinds = ("full", "partial", "short")
    want_partial: dict[str, bool] = {}
    lo_c, hi_c = captions_per_video
    for v in specs:
        n = int(rng.integers(lo_c, hi_c + 1))
        v.captions = []
        seen: set[str] = set()

        def add(kind: str, draw: Callable[[], dict], tries: int = 6, fallback: bool = False) -> None:
            # A video's captions are distinct sentences: redraw (meaning and wording) a few
            # times; identical text means identical meaning. With little paraphrasing ('easy')
            # a kind can run out of new sentences: then a less specific kind fills the slot.
            for _ in range(tries):
                sem = draw()
                text = grammar.sentence(sem)
                if text not in seen:
                    seen.add(text)
                    v.captions.append(Caption(text=text, kind=kind, semantics=sem))
                    return
            if fallback and kind != "short":
                nxt = "partial" if kind == "full" else "short"
                add(nxt, lambda: _caption_semantics(rng, v, nxt, d), tries, fallback)

        add("full", lambda: _caption_semantics(rng, v, "full", d))
        n_random = n - 1
        partial = False
        if v.split != "train":
            partial = len(v.events) == 2 and rng.random() < d.eval_partial_fraction
            want_partial[v.video_id] = partial
            if partial:  # make room for the two evaluation candidates added below
                n_random = max(n - 3, 0)
        for _ in range(n_random):
            kind = kinds[int(rng.choice(3, p=mix))]
            add(kind, lambda kind=kind: _caption_semantics(rng, v, kind, d), fallback=True)
        if partial:
            # candidates for a one-event evaluation caption of a two-event video
            for k in range(2):
                add("partial", lambda k=k: _caption_semantics(rng, v, "partial", d, event=k, force_background=True))

    chosen: dict[str, Caption] = {}
    for split in SPLITS:
        members = [v for v in specs if v.split == split]
        if not members:
            continue
        index_ = _SplitIndex(members, d.max_objects)
        for v in members:
            for c in v.captions:
                c.matches = index_.match(c.semantics)
        if split == "train":
            continue
        for v in members:
            kind = "partial" if want_partial.get(v.video_id) else "full"
            cands = [c for c in v.captions if c.kind == kind] or v.captions
            best = min(cands, key=lambda c: (len(c.matches), -specificity(c.semantics)))
            if len(best.matches) > 1 and not best.semantics["mentions"]:
                # Not unique (typically a near-duplicate): naming one of the video's static
                # distractors may single it out. Swap such a caption in if it does.
                best = _try_mention(rng, grammar, v, best, index_) or best
            chosen[v.video_id] = best

    # sen_ids: consecutive over the whole world in video order, as MSRVTT_data.json
    sen_id = 0
    for v in specs:
        for c in v.captions:
            c.sen_id = sen_id
            if chosen.get(v.video_id) is c:
                v.eval_sen_id = sen_id
            sen_id += 1
    return specs


def _try_mention(rng, grammar: _Grammar, v: VideoSpec, best: Caption, index_: _SplitIndex) -> Caption | None:
    for o in v.objects:
        if o.role != "distractor":
            continue
        sem = json.loads(json.dumps(best.semantics))
        sem["mentions"] = [{"shape": o.shape, "color": o.color, "size": None}]
        matches = index_.match(sem)
        if len(matches) < len(best.matches):
            cap = Caption(text=grammar.sentence(sem), kind=best.kind, semantics=sem, matches=matches)
            # replace the last caption that is neither the first (full) one nor ``best``
            slot = next((i for i in range(len(v.captions) - 1, 0, -1) if v.captions[i] is not best), None)
            if slot is None:
                v.captions.append(cap)
            else:
                v.captions[slot] = cap
            return cap
    return None


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _atomic_write(path: Path, data: bytes) -> int:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def write_annotations(out: Path, specs: list[VideoSpec], settings: dict, *, name: str, fps: int,
                      frames: int) -> int:
    """Write <name>_data.json, train/val/test.csv and world.json; returns bytes written."""
    duration = round(frames / fps, 3)
    msrvtt = {
        "info": {
            "contributor": "probret procedural world",
            "data_created": "deterministic",
            "description": f"procedural text-video world, seed {settings['seed']}, "
                           f"difficulty {settings['difficulty']['name']}",
            "version": f"{WORLD_VERSION}",
            "year": "",
        },
        "videos": [
            {
                "category": MOTIONS.index(v.events[0].motion),
                "url": f"procedural://seed{settings['seed']}/{v.video_id}",
                "video_id": v.video_id,
                "start time": 0.0,
                "end time": duration,
                "split": MSRVTT_SPLIT_NAMES[v.split],
                "id": v.index,
            }
            for v in specs
        ],
        "sentences": [
            {"caption": c.text, "video_id": v.video_id, "sen_id": c.sen_id}
            for v in specs for c in v.captions
        ],
    }
    written = _atomic_write(out / f"{name}_data.json", _json_bytes(msrvtt))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id"])
    for v in specs:
        if v.split == "train":
            w.writerow([v.video_id])
    written += _atomic_write(out / "train.csv", buf.getvalue().encode())
    for split in ("val", "test"):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        for k, v in enumerate(x for x in specs if x.split == split):
            w.writerow([f"ret{k}", f"msr{v.index}", v.video_id, _eval_caption(v).text])
        written += _atomic_write(out / f"{split}.csv", buf.getvalue().encode())

    world = {
        "format": WORLD_FORMAT,
        "version": WORLD_VERSION,
        "probret_version": PROBRET_VERSION,
        "settings": settings,
        "vocabulary": {
            "shapes": list(SHAPES), "colors": {k: list(c) for k, c in COLORS.items()}, "sizes": list(SIZES),
            "motions": list(MOTIONS), "generic_motions": {k: list(v) for k, v in GENERIC_MOTIONS.items()},
            "backgrounds": list(BACKGROUNDS),
        },
        "videos": {v.video_id: v.record() for v in specs},
        "captions": {
            str(c.sen_id): {
                "video_id": v.video_id,
                "split": v.split,
                "caption": c.text,
                "kind": c.kind,
                "eval": c.sen_id == v.eval_sen_id,
                "semantics": c.semantics,
                "matches": c.matches,
            }
            for v in specs for c in v.captions
        },
    }
    written += _atomic_write(out / "world.json", _json_bytes(world))
    return written


def load_world(out_dir: str | Path) -> dict:
    """Read world.json (raises DataError with the reason if it is missing or not a world)."""
    path = Path(out_dir) / "world.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: not a procedural world (run probret synth)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if data.get("format") != WORLD_FORMAT:
        raise DataError(f"{path}: not a probret world file")
    return data


def eval_match_sets(world: dict, split: str) -> dict[str, list[str]]:
    """video_id -> every video_id of ``split`` its evaluation caption truly describes (the video
    itself included): the positives for semantic recall."""
    out = {}
    for rec in world["captions"].values():
        if rec["split"] == split and rec["eval"]:
            out[rec["video_id"]] = list(rec["matches"])
    return out


__all__ = [
    "BACKGROUNDS", "COLORS", "DIFFICULTIES", "Difficulty", "MOTIONS", "SHAPES", "SIZES", "WORLD_VERSION",
    "WorldSummary", "build_specs", "caption_matches", "encode_mp4", "eval_match_sets", "generate_world",
    "load_world", "parse_difficulty", "render_video", "split_counts", "specificity",
]
