"""Long videos (1-5 minutes) made of several events at known times: the world for moment search.

A long video keeps one background for its whole length and holds K events (3-6 by default),
each done by its own actor (shapes and colours distinct within the video). An actor is on screen
only around its event: it appears, holds still for a lead of a few seconds, does its motion,
holds still again, and leaves; between events only the background (and maybe one static
distractor) is visible. So a moment can be found only by *what happens*: the actor's presence
alone spans the lead and tail as well, and IoU >= 0.5 with the event needs the motion itself.

Every event gets one query (``kind`` "moment") naming its actor and motion and never the
background, with its match set (every long video with a matching event) and, per matching
video, the time span of each matching event (``Caption.moment``; world.json
``captions[sen_id]["moment"]``). ``moment_queries(world)`` reads them back.

Rendering stays cheap: 64x64 at 2 fps by default (a 5-minute video is 600 frames, ~0.5 s to
render and encode). All long videos are in the "test" split: they are a gallery for evaluating
a model trained on a short world, not training data.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from probret.engine.errors import DataError

from .annotations import write_annotations
from .captions import full_spec
from .difficulty import Difficulty, parse_difficulty
from .encoding import GOP_SIZE, X264_OPTIONS
from .generate import WorldSummary, check_out_dir, check_settings, render_all
from .grammar import Grammar
from .matching import SplitIndex, caption_matches
from .motion import fits_frame, object_track
from .scenes import add_distractors, draw_actors, draw_texture, jitter_rgb
from .specs import Caption, EventSpec, ObjectSpec, VideoSpec
from .vocabulary import BACKGROUNDS, BLINK_HALF_PERIOD, RESIZES, TRANSLATIONS

#: Motions of long-video events: the ones that do not change visibility (an actor's arrival and
#: departure around its event would otherwise be indistinguishable from 'appears' / 'disappears').
LONG_MOTIONS: tuple[str, ...] = TRANSLATIONS + RESIZES + ("rotate", "blink")


@dataclass(frozen=True)
class LongVideos:
    """The long-video knobs (all times in seconds; ranges are inclusive and drawn uniformly).

    duration         length of each video
    fps              frame rate (2 keeps a 5-minute video at 600 frames)
    events           number of events per video (fewer when the video is too short to hold them)
    event_seconds    length of one event
    still_seconds    how long the actor is on screen, still, before and after its event
    distractor_prob  probability of one static distractor visible for the whole video
    """

    duration: tuple[float, float] = (60.0, 300.0)
    fps: int = 2
    events: tuple[int, int] = (3, 6)
    event_seconds: tuple[float, float] = (4.0, 10.0)
    still_seconds: tuple[float, float] = (2.0, 6.0)
    distractor_prob: float = 0.5

    def check(self) -> None:
        for name in ("duration", "event_seconds", "still_seconds", "events"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise DataError(f"long videos: {name} must be a range (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if self.events[0] < 1 or self.fps < 1 or self.event_seconds[0] * self.fps < 2:
            raise DataError("long videos need at least one event, fps >= 1 and events of at least 2 frames")
        longest = self.event_seconds[1] + 2 * self.still_seconds[1]
        if self.duration[0] < longest:
            raise DataError(f"long videos: duration {self.duration[0]} s is shorter than one event with its "
                            f"still time ({longest} s); raise duration or lower event_seconds / still_seconds")


def sample_long_video(rng: np.random.Generator, index: int, d: Difficulty, cfg: LongVideos, width: int,
                      height: int) -> VideoSpec:
    """One long video: background, K events at non-overlapping times, one actor per event."""
    fps = cfg.fps
    frames = int(round(rng.uniform(*cfg.duration) * fps))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    spans = _event_spans(rng, cfg, frames)
    motions = [LONG_MOTIONS[int(rng.integers(len(LONG_MOTIONS)))] for _ in spans]
    actor_defs = draw_actors(rng, list(enumerate(motions)), len(motions))
    events = [EventSpec(actor=k, motion=m, start_frame=s, end_frame=e, direction=1 if rng.random() < 0.5 else -1,
                        phase=int(rng.integers(BLINK_HALF_PERIOD)) if m == "blink" else 0)
              for k, (m, (_, s, e, _)) in enumerate(zip(motions, spans))]
    objects = []
    for (shape, color, size), event, (first, _, _, last) in zip(actor_defs, events, spans):
        objects.append(_place_alone(rng, ObjectSpec(shape, color, size, "actor", 0.5, 0.5, 0.0, (0, 0, 0),
                                                    visible=(first, last)), event, d, frames, width, height))
    if rng.random() < cfg.distractor_prob:
        add_distractors(rng, objects, dataclasses.replace(d, distractor_probs=(0.0, 1.0, 0.0),
                                                          max_objects=len(objects) + 1), width, height)
    bg_colors, bg_angle, bg_period, bg_phase = draw_texture(rng, background, min(width, height))
    return VideoSpec(video_id=f"video{index}", index=index, split="test", background=background,
                     bg_colors=bg_colors, bg_angle=bg_angle, bg_period=bg_period, bg_phase=bg_phase,
                     objects=objects, events=events, frames=frames, fps=fps)


def _event_spans(rng, cfg: LongVideos, frames: int) -> list[tuple[int, int, int, int]]:
    """(on screen from, event start, event end, off screen from) per event, in frames, in
    temporal order and never overlapping: the free time is split at random into K+1 gaps."""
    fps = cfg.fps
    wanted = int(rng.integers(cfg.events[0], cfg.events[1] + 1))
    blocks = []
    for _ in range(wanted):
        lead, tail = (max(int(round(rng.uniform(*cfg.still_seconds) * fps)), 1) for _ in range(2))
        blocks.append((lead, max(int(round(rng.uniform(*cfg.event_seconds) * fps)), 2), tail))
    while len(blocks) > 1 and sum(map(sum, blocks)) > frames:
        blocks.pop()  # a short video holds fewer events
    free = max(frames - sum(map(sum, blocks)), 0)
    cuts = np.sort(rng.integers(0, free + 1, len(blocks)))
    gaps = np.diff(np.concatenate([[0], cuts]))
    spans, t = [], 0
    for gap, (lead, length, tail) in zip(gaps, blocks):
        t += int(gap)
        spans.append((t, t + lead, t + lead + length, min(t + lead + length + tail, frames)))
        t = spans[-1][3]
    return spans


def _place_alone(rng, obj: ObjectSpec, event: EventSpec, d: Difficulty, frames: int, width: int,
                 height: int) -> ObjectSpec:
    """A start position where the actor's whole track stays in the frame (it is alone on
    screen but for a distractor, so no distance check), and its colour."""
    own = [event]
    for _ in range(60):
        obj.x, obj.y = float(rng.uniform(0.12, 0.88)), float(rng.uniform(0.12, 0.88))
        obj.angle = float(rng.uniform(0, 2 * math.pi))
        if fits_frame(object_track(obj, own, frames, width, height, d.object_scale), width, height):
            break
    obj.rgb = jitter_rgb(rng, obj.color, d.color_jitter)
    return obj


def moment_captions(rng, specs: list[VideoSpec], d: Difficulty) -> None:
    """One query per event ("a large red circle moves left"; never the background), its match
    set over all long videos, and the time spans of every matching event."""
    grammar = Grammar(rng, d.paraphrase)
    index_ = SplitIndex(specs, max(len(v.objects) for v in specs))
    records = {v.video_id: v.record() for v in specs}
    by_id = {v.video_id: v for v in specs}
    for v in specs:
        v.captions = []
        for k, e in enumerate(v.events):
            sem = {"events": [full_spec(v.objects[e.actor], e.motion)], "same_actor": False, "background": None,
                   "mentions": []}
            matches = index_.match(sem)
            moments = {vid: [_seconds(by_id[vid], ev) for ev in by_id[vid].events
                             if caption_matches(sem, {**records[vid], "events": [_record_event(ev)]})]
                       for vid in matches}
            v.captions.append(Caption(text=grammar.sentence(sem), kind="moment", semantics=sem, matches=matches,
                                      moment={"event": k, **dict(zip(("start", "end"), _seconds(v, e))),
                                              "moments": moments}))


def _record_event(e: EventSpec) -> dict:
    return {"actor": e.actor, "motion": e.motion}


def _seconds(v: VideoSpec, e: EventSpec) -> list[float]:
    return [round(e.start_frame / v.fps, 3), round(e.end_frame / v.fps, 3)]


def build_long_specs(*, videos: int, seed: int, width: int, height: int, difficulty: Difficulty,
                     long: LongVideos) -> list[VideoSpec]:
    """Scenes and moment queries of a long-video world (no pixels)."""
    rng = np.random.default_rng([seed, 2])
    specs = [sample_long_video(rng, i, difficulty, long, width, height) for i in range(videos)]
    moment_captions(rng, specs, difficulty)
    sen_id = 0
    for v in specs:
        v.eval_sen_id = sen_id  # test.csv lists each video's first event query
        for c in v.captions:
            c.sen_id = sen_id
            sen_id += 1
    return specs


def generate_long_world(out_dir: str | Path, *, videos: int, seed: int, resolution: tuple[int, int] = (64, 64),
                        difficulty: str | float | Difficulty = "medium", long: LongVideos = LongVideos(),
                        name: str = "procedural", overwrite: bool = False, workers: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> WorldSummary:
    """Write a world of ``videos`` long videos (all in the test split) to ``out_dir``: the same
    files as ``generate_world`` (test.csv holds each video's first event query; every event
    query is in procedural_data.json and world.json with its times). Deterministic in the seed."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    d = parse_difficulty(difficulty)
    long.check()
    width, height = check_settings(videos, resolution, 4, long.fps, (1, 1))
    check_out_dir(out, overwrite, name)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    specs = build_long_specs(videos=videos, seed=seed, width=width, height=height, difficulty=d, long=long)
    jobs = [(v, out / "videos" / f"{v.video_id}.mp4", width, height, v.frames, v.fps, d, seed) for v in specs]
    disk = render_all(jobs, workers, progress)
    counts = {"train": 0, "val": 0, "test": videos}
    settings = {
        "seed": seed, "videos": videos, "resolution": [width, height], "frames": None, "fps": long.fps,
        "difficulty": d.to_dict(), "splits": counts, "split_fractions": [0.0, 0.0, 1.0], "name": name,
        "long_videos": dataclasses.asdict(long),
        "encoder": {"codec": "libx264", "pix_fmt": "yuv420p", "gop_size": GOP_SIZE, "threads": 1, **X264_OPTIONS},
    }
    disk += write_annotations(out, specs, settings, name=name, fps=long.fps, frames=1)
    captions = {"train": 0, "val": 0, "test": sum(len(v.captions) for v in specs)}
    return WorldSummary(out_dir=out, videos=counts, captions=captions, eval_unique={}, disk_bytes=disk,
                        seconds=time.perf_counter() - t0, seed=seed, difficulty=d.name)


def moment_queries(world: dict) -> list[dict]:
    """Every moment query of a long-video world (``load_world(OUT)``), in sen_id order:
    {"sen_id", "text", "video_id", "event", "start", "end", "matches": [video_id, ...],
    "moments": {video_id: [[start, end], ...]}} -- seconds, end exclusive; ``moments`` holds
    every matching event of every matching video (the queried one included)."""
    out = []
    for sid, rec in sorted(world["captions"].items(), key=lambda kv: int(kv[0])):
        m = rec.get("moment")
        if m is None:
            continue
        out.append({"sen_id": int(sid), "text": rec["caption"], "video_id": rec["video_id"], "event": m["event"],
                    "start": m["start"], "end": m["end"], "matches": list(rec["matches"]),
                    "moments": {k: [list(s) for s in v] for k, v in m["moments"].items()}})
    return out
