"""The difficulty knobs (``Difficulty``), the easy / medium / hard presets, and parsing them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from probret.engine.errors import DataError


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

