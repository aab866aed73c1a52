"""Quality-benchmark knobs (protocol v2, issue 11): put SPEM's phenomenon into the data.

``generate_world(..., benchmark=BenchmarkKnobs())`` changes three things and records the knobs
in world.json ``settings.benchmark`` (without it, a world is exactly what it was):

* **dominant, recurring backgrounds that captions rarely name.** Every background kind recurs in
  ~1/5 of the videos; its texture amplitude is raised (``background_contrast``) and striped /
  checkered / dotted textures scroll (``background_motion``), so the background dominates the
  pixels and moves. Training captions name the background with probability
  ``train_background_mention`` only (the other captions drop it), so a model cannot lean on
  background words;
* **shape that must be learned** (``train_color_mention``, default 1: off). Training captions
  keep their colour words with this probability only (the others say "a small square slides
  right"), so matching them needs the shape. Without it a contrastive encoder trained from scratch
  on 64 px frames learns colour and motion and leaves shape at chance (quality protocol v2,
  settings 2 and 3: colour and motion tell a batch's videos apart, shape is rarely needed); val
  and test captions keep their colours;
* **test and validation queries never name the background** (no val/test caption does);
* **a fixed mix of evaluation query kinds** (``eval_mix``: full / partial / short). The kinds
  are dealt out by quota over each val/test split: partial queries (one event of a two-event
  video) go to two-event videos, short / ambiguous ones ("a circle moving", "something red
  moves left", "a blue cross") anywhere; ``two_event_fraction`` is raised so there are enough
  two-event videos. Full and partial queries take the candidate with the fewest true matches
  (then naming a distractor when that singles the video out); short queries keep their
  ambiguity. Every query is scored against its match set (world.json ``matches``);
* **each actor on screen only around its own event** (``actor_visibility="own_event"``; default
  ``"clip"``: off). In a video whose two events are done by two different objects, the first
  actor is on screen from the clip's start to the end of its event and the second from the start
  of its event to the clip's end, as if the clip cut from one shot to the next; distractors and a
  one-actor video's actor stay for the whole clip. Without it (quality protocol v2 up to setting
  7) both actors hold still outside their events and stay visible, so what a partial query names
  (shape, colour, size) is in every frame and only its motion is confined to half the clip: the
  mean of the frames keeps all of it and query-guided frame selection has nothing to win (setting
  7 measured X-Pool - meanP = -8.3 points on partial queries). With it a partial query describes
  what half the frames show, as in MSRVTT clips whose captions are about one shot. A cut, not a
  fade: the actor is there at full strength in every frame of its span, and no random number is
  drawn, so the rest of the world (scenes, captions, match sets) is what it was. A cut-in looks a
  little like ``appear``; the match sets do not count it as one, as a caption writer would not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from probret.engine.errors import DataError

from .difficulty import Difficulty
from .specs import VideoSpec

EVAL_KINDS = ("full", "partial", "short")
#: ``BenchmarkKnobs.actor_visibility``: every object for the whole clip, or each actor of a
#: two-actor video only around its own event (module docstring)
ACTOR_VISIBILITY = ("clip", "own_event")


@dataclass(frozen=True)
class BenchmarkKnobs:
    """The protocol-v2 knobs (see the module docstring); serialised into world.json."""

    train_background_mention: float = 0.1
    eval_mix: tuple[float, float, float] = (0.4, 0.3, 0.3)
    background_contrast: float = 1.6
    background_motion: float = 1.0
    two_event_fraction: float = 0.6
    short_candidates: int = 3
    train_color_mention: float = 1.0
    actor_visibility: str = "clip"

    def check(self) -> None:
        if not 0.0 <= self.train_background_mention <= 1.0:
            raise DataError(f"train_background_mention must be in [0, 1], got {self.train_background_mention}")
        if not 0.0 <= self.train_color_mention <= 1.0:
            raise DataError(f"train_color_mention must be in [0, 1], got {self.train_color_mention}")
        if self.actor_visibility not in ACTOR_VISIBILITY:
            raise DataError(f"actor_visibility must be one of {', '.join(ACTOR_VISIBILITY)}, got {self.actor_visibility!r}")
        if len(self.eval_mix) != 3 or min(self.eval_mix) < 0 or sum(self.eval_mix) <= 0:
            raise DataError(f"eval_mix must be three non-negative weights (full, partial, short), got {self.eval_mix}")
        if self.eval_mix[1] > self.two_event_fraction:
            raise DataError("eval_mix asks for more partial queries than there are two-event videos: "
                            f"raise two_event_fraction ({self.two_event_fraction}) above {self.eval_mix[1]}")

    def difficulty(self, d: Difficulty) -> Difficulty:
        """The difficulty with the backgrounds made dominant and enough two-event videos."""
        return dataclasses.replace(d, background_contrast=self.background_contrast,
                                   background_motion=self.background_motion,
                                   two_event_fraction=self.two_event_fraction)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def confine_actors(specs: list[VideoSpec], frames: int) -> None:
    """``actor_visibility="own_event"``: in each video with two events by two different actors, the
    first actor is visible on frames [0, end of its event) and the second on [start of its event,
    frames). The two spans meet where the events do (``sample_timing``), so each frame shows one actor."""
    for v in specs:
        if len(v.events) != 2 or v.events[0].actor == v.events[1].actor:
            continue
        first, second = sorted(v.events, key=lambda e: e.start_frame)
        v.objects[first.actor].visible = (0, first.end_frame)
        v.objects[second.actor].visible = (second.start_frame, frames)


def deal_eval_kinds(rng: np.random.Generator, members: list[VideoSpec], mix: tuple[float, float, float]) -> dict[str, str]:
    """video_id -> evaluation query kind for one val/test split, by quota: round(mix * N)
    partial queries on two-event videos (fewer if there are not enough), round(mix * N) short
    ones, the rest full; which video gets which kind is a random draw."""
    n = len(members)
    weights = np.asarray(mix, dtype=np.float64) / float(sum(mix))
    two = [v.video_id for v in members if len(v.events) == 2]
    n_partial = min(int(round(weights[1] * n)), len(two))
    n_short = min(int(round(weights[2] * n)), n - n_partial)
    kinds = {v.video_id: "full" for v in members}
    partial = set(two[i] for i in rng.permutation(len(two))[:n_partial])
    rest = [v.video_id for v in members if v.video_id not in partial]
    short = set(rest[i] for i in rng.permutation(len(rest))[:n_short])
    for vid in partial:
        kinds[vid] = "partial"
    for vid in short:
        kinds[vid] = "short"
    return kinds


def drop_background(rng: np.random.Generator, sem: dict, split: str, knobs: BenchmarkKnobs) -> dict:
    """Training captions keep the background with probability ``train_background_mention``;
    val/test captions never name it. Then the colour, as ``drop_color`` says."""
    if sem.get("background") is not None:
        if split != "train" or rng.random() >= knobs.train_background_mention:
            sem["background"] = None
    return drop_color(rng, sem, split, knobs)


def drop_color(rng: np.random.Generator, sem: dict, split: str, knobs: BenchmarkKnobs) -> dict:
    """A training caption loses every colour word (its events' and the distractor it mentions)
    with probability ``1 - train_color_mention``. At the default 1 no random number is drawn, so
    worlds made without the knob are byte for byte what they were."""
    if split != "train" or knobs.train_color_mention >= 1.0:
        return sem
    if rng.random() >= knobs.train_color_mention:
        for part in sem["events"] + sem["mentions"]:
            if part.get("shape") is not None:  # "something red grows" would say nothing at all
                part["color"] = None
    return sem
