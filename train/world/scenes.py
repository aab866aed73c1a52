"""Scene sampling: the background, actors, events, timing and distractors of each video."""

from __future__ import annotations

import math

import numpy as np

from .difficulty import Difficulty
from .motion import fits_frame, object_track
from .specs import EventSpec, ObjectSpec, VideoSpec
from .vocabulary import (BACKGROUNDS, BG_PALETTES, BLINK_HALF_PERIOD, COLOR_NAMES, COLORS, MOTIONS, RESIZES,
                         SHAPES, SIZES)


# Pairs (first motion, second motion) one object can do in sequence without contradiction:
# nothing after 'disappear', no 'appear' after having been visible.
SAME_ACTOR_FIRST = tuple(m for m in MOTIONS if m != "disappear")
SAME_ACTOR_SECOND = tuple(m for m in MOTIONS if m != "appear")


def jitter_rgb(rng, color: str, amount: float) -> tuple[int, int, int]:
    base = np.array(COLORS[color], dtype=np.float64)
    return tuple(int(v) for v in np.clip(np.round(base + rng.uniform(-amount, amount, 3)), 0, 255))


def sample_timing(rng, n_events: int, frames: int) -> list[tuple[int, int]]:
    lead = int(round(rng.uniform(0.0, 0.08) * frames))
    tail = frames - int(round(rng.uniform(0.0, 0.08) * frames))
    if n_events == 1:
        return [(lead, tail)]
    mid = int(round(frames * rng.uniform(0.44, 0.56)))
    return [(lead, mid), (mid, tail)]


def sample_scenes(rng: np.random.Generator, counts: dict[str, int], d: Difficulty, frames: int, width: int,
                  height: int, splits: tuple[str, ...] = ("train", "val", "test")) -> list[VideoSpec]:
    """Every video's scene, in id order (train, then val, then test); a near-duplicate copies
    an earlier video of its own split."""
    specs: list[VideoSpec] = []
    index = 0
    for split in splits:
        first = len(specs)
        for _ in range(counts[split]):
            template = None
            if index > first and rng.random() < d.near_duplicate_rate:
                template = specs[int(rng.integers(first, index))]
            specs.append(sample_video(rng, index, split, d, frames, width, height, template))
            index += 1
    return specs


def sample_video(rng: np.random.Generator, index: int, split: str, d: Difficulty, frames: int,
                 width: int, height: int, template: VideoSpec | None) -> VideoSpec:
    """Draw one scene. With ``template`` (near-duplicate) the actors and their events are copied
    and everything else (positions, timing, distractors, often the background) is redrawn.

    The order of the draws from ``rng`` is part of the world's definition (same seed, same
    world): background, plot (events and actors), timing, placement, distractors, texture."""
    if template is not None:
        background, actor_defs, motions = _copy_plot(rng, template)
    else:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        motions, n_actors = _draw_plot(rng, d)
        actor_defs = draw_actors(rng, motions, n_actors)
    timing = sample_timing(rng, len(motions), frames)
    events = [
        EventSpec(actor=a, motion=m, start_frame=s, end_frame=t, direction=1 if rng.random() < 0.5 else -1,
                  # blink starts in its 'on' half so the event's first frames show the object
                  phase=int(rng.integers(BLINK_HALF_PERIOD)) if m == "blink" else 0)
        for (a, m), (s, t) in zip(motions, timing)
    ]
    objects = _place_actors(rng, actor_defs, events, d, frames, width, height)
    add_distractors(rng, objects, d, width, height)
    bg_colors, bg_angle, bg_period, bg_phase = draw_texture(rng, background, min(width, height))
    return VideoSpec(
        video_id=f"video{index}", index=index, split=split, background=background, bg_colors=bg_colors,
        bg_angle=bg_angle, bg_period=bg_period, bg_phase=bg_phase, objects=objects, events=events,
        near_duplicate_of=template.video_id if template is not None else None,
    )


def _copy_plot(rng, template: VideoSpec):
    """A near-duplicate's background (the template's half of the time), actors and motions."""
    background = template.background if rng.random() < 0.5 else BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    actor_defs = [(o.shape, o.color, o.size) for o in template.objects if o.role == "actor"]
    remap = {old: new for new, old in enumerate(i for i, o in enumerate(template.objects) if o.role == "actor")}
    motions = [(remap[e.actor], e.motion) for e in template.events]
    return background, actor_defs, motions


def _draw_plot(rng, d: Difficulty) -> tuple[list[tuple[int, str]], int]:
    """(actor, motion) per event in temporal order, and the number of actors: one event, two
    events by one object (a sequence that does not contradict itself), or two by two objects."""
    two = rng.random() < d.two_event_fraction
    if two and rng.random() < d.same_actor_fraction:
        m1 = SAME_ACTOR_FIRST[int(rng.integers(len(SAME_ACTOR_FIRST)))]
        options = [m for m in SAME_ACTOR_SECOND if m != m1 and not (m in RESIZES and m1 in RESIZES)]
        m2 = options[int(rng.integers(len(options)))]
        return [(0, m1), (0, m2)], 1
    if two:
        m1 = MOTIONS[int(rng.integers(len(MOTIONS)))]
        m2 = MOTIONS[int(rng.integers(len(MOTIONS)))]
        return [(0, m1), (1, m2)], 2
    return [(0, MOTIONS[int(rng.integers(len(MOTIONS)))])], 1


def draw_actors(rng, motions: list[tuple[int, str]], n_actors: int) -> list[tuple[str, str, str]]:
    """(shape, colour, size) of each actor, tellable apart, and able to show its motions."""
    actor_defs: list[tuple[str, str, str]] = []
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
    return actor_defs


def _place_actors(rng, actor_defs, events: list[EventSpec], d: Difficulty, frames: int, width: int,
                  height: int) -> list[ObjectSpec]:
    """Start positions where each actor's whole track stays in the frame, actors apart at the start."""
    objects: list[ObjectSpec] = []
    for a, (shape, color, size) in enumerate(actor_defs):
        own = [e for e in events if e.actor == a]
        for attempt in range(60):
            obj = ObjectSpec(shape, color, size, "actor", float(rng.uniform(0.12, 0.88)),
                             float(rng.uniform(0.12, 0.88)), float(rng.uniform(0, 2 * math.pi)),
                             jitter_rgb(rng, color, d.color_jitter))
            track = object_track(obj, own, frames, width, height, d.object_scale)
            if not fits_frame(track, width, height):
                continue
            # keep actors apart at their start so neither hides the other
            if any(math.hypot((obj.x - o.x) * width, (obj.y - o.y) * height) < 0.22 * min(width, height)
                   for o in objects) and attempt < 59:
                continue
            break
        objects.append(obj)
    return objects


def add_distractors(rng, objects: list[ObjectSpec], d: Difficulty, width: int, height: int) -> None:
    """0-2 static objects no event is about (at most ``max_objects`` objects in all)."""
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
        obj.rgb = jitter_rgb(rng, obj.color, d.color_jitter)
        objects.append(obj)


def draw_texture(rng, background: str, side: int):
    """The background's two colours (its kind's palette, jittered), direction, period and phase."""
    c0, c1 = BG_PALETTES[background]
    jit = rng.uniform(-10, 10, 3)
    bg_colors = (tuple(int(v) for v in np.clip(np.array(c0) + jit, 0, 255)),
                 tuple(int(v) for v in np.clip(np.array(c1) + jit, 0, 255)))
    bg_angle = float(rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]))
    bg_period = float(side * rng.uniform(0.13, 0.2))
    bg_phase = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    return bg_colors, bg_angle, bg_period, bg_phase
