"""What each caption says: drawing full / partial / short semantics per video, and choosing the
evaluation caption of every val/test video (the one with the fewest true matches)."""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from .benchmark import BenchmarkKnobs, drop_background
from .difficulty import Difficulty
from .grammar import Grammar
from .matching import SplitIndex, specificity
from .specs import Caption, ObjectSpec, VideoSpec
from .vocabulary import GENERIC_MOTIONS


def full_spec(obj: ObjectSpec, motion: str | None) -> dict:
    return {
        "shape": obj.shape,
        "color": obj.color,
        "size": None if obj.size == "varying" else obj.size,
        "motion": motion,
    }


def caption_semantics(rng: np.random.Generator, v: VideoSpec, kind: str, d: Difficulty, *,
                       event: int | None = None, force_background: bool = False) -> dict:
    """Draw the meaning of one caption of kind full / partial / short for video v."""
    sem = {"events": [], "same_actor": False, "background": None, "mentions": []}
    objs, evs = v.objects, v.events
    if kind == "full":
        sem["events"] = [full_spec(objs[e.actor], e.motion) for e in evs]
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
        spec = full_spec(objs[e.actor], e.motion)
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


def eval_caption(v: VideoSpec) -> Caption:
    return next(c for c in v.captions if c.sen_id == v.eval_sen_id)


CAPTION_KINDS = ("full", "partial", "short")


def draw_captions(rng, grammar: Grammar, v: VideoSpec, d: Difficulty, n: int,
                  knobs: BenchmarkKnobs | None = None, eval_kind: str | None = None) -> str:
    """Fill ``v.captions`` with n distinct sentences (the first full, the rest drawn from
    ``d.caption_mix``). Returns the kind a val/test video's evaluation caption should have:
    'partial' adds two one-event candidates (one per event), 'short' adds short candidates.
    Without benchmark ``knobs`` a fraction ``eval_partial_fraction`` of two-event videos gets
    'partial', the rest 'full'; with them ``eval_kind`` (dealt by quota) decides, and captions
    drop the background as ``drop_background`` says."""
    mix = np.array(d.caption_mix, dtype=np.float64)
    mix = mix / mix.sum()
    v.captions = []
    seen: set[str] = set()

    def add(kind: str, draw: Callable[[], dict], tries: int = 6, fallback: bool = False) -> None:
        # A video's captions are distinct sentences: redraw (meaning and wording) a few
        # times; identical text means identical meaning. With little paraphrasing ('easy')
        # a kind can run out of new sentences: then a less specific kind fills the slot.
        for _ in range(tries):
            sem = draw() if knobs is None else drop_background(rng, draw(), v.split, knobs)
            text = grammar.sentence(sem)
            if text not in seen:
                seen.add(text)
                v.captions.append(Caption(text=text, kind=kind, semantics=sem))
                return
        if fallback and kind != "short":
            nxt = "partial" if kind == "full" else "short"
            add(nxt, lambda: caption_semantics(rng, v, nxt, d), tries, fallback)

    add("full", lambda: caption_semantics(rng, v, "full", d))
    n_random = n - 1
    want = "full"
    if v.split != "train":
        if knobs is None:
            want = "partial" if len(v.events) == 2 and rng.random() < d.eval_partial_fraction else "full"
        else:
            want = eval_kind or "full"
        extra = {"full": 0, "partial": 2, "short": knobs.short_candidates if knobs else 0}[want]
        n_random = max(n - 1 - extra, 0)  # make room for the evaluation candidates added below
    for _ in range(n_random):
        kind = CAPTION_KINDS[int(rng.choice(3, p=mix))]
        add(kind, lambda kind=kind: caption_semantics(rng, v, kind, d), fallback=True)
    if want == "partial":
        # candidates for a one-event evaluation caption of a two-event video
        for k in range(2):
            add("partial", lambda k=k: caption_semantics(rng, v, "partial", d, event=k, force_background=True))
    elif want == "short":
        for _ in range(knobs.short_candidates):
            add("short", lambda: caption_semantics(rng, v, "short", d))
    return want


def match_and_choose(rng, grammar: Grammar, members: list[VideoSpec], d: Difficulty,
                     want_kind: dict[str, str]) -> dict[str, Caption]:
    """Compute every caption's match set within its split (``members``) and, for val/test,
    choose each video's evaluation caption: the candidate of the wanted kind with the fewest
    matches, ties broken by specificity. Returns video_id -> chosen caption."""
    index_ = SplitIndex(members, d.max_objects)
    for v in members:
        for c in v.captions:
            c.matches = index_.match(c.semantics)
    chosen: dict[str, Caption] = {}
    if members[0].split == "train":
        return chosen
    for v in members:
        kind = want_kind.get(v.video_id, "full")
        cands = [c for c in v.captions if c.kind == kind] or v.captions
        best = min(cands, key=lambda c: (len(c.matches), -specificity(c.semantics)))
        if kind != "short" and len(best.matches) > 1 and not best.semantics["mentions"]:
            # Not unique (typically a near-duplicate): naming one of the video's static
            # distractors may single it out. Swap such a caption in if it does.
            best = _try_mention(rng, grammar, v, best, index_) or best
        chosen[v.video_id] = best
    return chosen


def number_sentences(specs: list[VideoSpec], chosen: dict[str, Caption]) -> None:
    """sen_ids consecutive over the whole world in video order, as MSRVTT_data.json."""
    sen_id = 0
    for v in specs:
        for c in v.captions:
            c.sen_id = sen_id
            if chosen.get(v.video_id) is c:
                v.eval_sen_id = sen_id
            sen_id += 1


def _try_mention(rng, grammar: Grammar, v: VideoSpec, best: Caption, index_: SplitIndex) -> Caption | None:
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


