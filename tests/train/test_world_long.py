"""Long videos of the procedural world (train/world/long.py): events at the recorded times, one
query per event with its match set and moments, deterministic files, one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from probret.engine.errors import DataError
from probret.train import world as W

LONG = W.LongVideos(duration=(25.0, 40.0), fps=2, events=(2, 4))


@pytest.fixture(scope="module")
def long_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("long") / "w"
    W.generate_long_world(out, videos=5, seed=4, resolution=(64, 64), long=LONG)
    return out


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_timeline_is_recorded_and_inside_each_video(long_world):
    world = W.load_world(long_world)
    assert world["settings"]["long_videos"]["duration"] == [25.0, 40.0]
    for vid, rec in world["videos"].items():
        assert rec["split"] == "test" and 25 * 2 <= rec["frames"] <= 40 * 2
        assert rec["duration"] == pytest.approx(rec["frames"] / 2)
        assert 1 <= len(rec["events"]) <= 4
        spans = rec["event_times"]
        assert all(0 <= s < e <= rec["duration"] for s, e in spans)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # in order, never overlapping
        for ev, (s, e) in zip(rec["events"], spans):
            assert (ev["start_frame"] / 2, ev["end_frame"] / 2) == (s, e)
            first, last = rec["visible_times"][ev["actor"]]
            assert first < s and e < last  # the actor is on screen, still, before and after
            assert ev["motion"] in W.LONG_MOTIONS
        assert len(_decode(long_world / "videos" / f"{vid}.mp4")) == rec["frames"]


def test_actor_is_seen_only_around_its_event_and_moves_in_it(long_world):
    world = W.load_world(long_world)
    checked = 0
    for vid, rec in world["videos"].items():
        frames = _decode(long_world / "videos" / f"{vid}.mp4").astype(int)
        for ev, (first, last) in zip(rec["events"], (rec["visible_times"][e["actor"]] for e in rec["events"])):
            actor = rec["objects"][ev["actor"]]
            if ev["motion"] not in W.TRANSLATIONS or any(o["color"] == actor["color"] for o in rec["objects"]
                                                         if o is not actor):
                continue
            mask = np.abs(frames - np.array(W.COLORS[actor["color"]])).max(axis=-1) < 50
            area = mask.sum(axis=(1, 2))
            f0, f1 = int(first * 2), int(last * 2)
            assert area[:max(f0 - 1, 0)].max(initial=0) < 3 and area[f1 + 1:].max(initial=0) < 3
            assert area[f0 + 1:f1 - 1].min() > 10
            centre = [np.nonzero(m)[1 if ev["motion"] in ("left", "right") else 0].mean()
                      for m in mask[ev["start_frame"]:ev["end_frame"]]]
            assert abs(centre[-1] - centre[0]) > 0.3 * 64 * 0.8
            checked += 1
    assert checked >= 1


def test_one_query_per_event_with_matches_and_moments(long_world):
    world = W.load_world(long_world)
    queries = W.moment_queries(world)
    assert len(queries) == sum(len(r["events"]) for r in world["videos"].values())
    for q in queries:
        rec = world["videos"][q["video_id"]]
        assert [q["start"], q["end"]] == rec["event_times"][q["event"]]
        assert q["video_id"] in q["matches"] and set(q["moments"]) == set(q["matches"])
        assert [q["start"], q["end"]] in q["moments"][q["video_id"]]
        sem = world["captions"][str(q["sen_id"])]["semantics"]
        assert sem["background"] is None and len(sem["events"]) == 1  # never names the background
        assert q["matches"] == [v for v, r in world["videos"].items() if W.caption_matches(sem, r)]


def test_same_seed_same_files(tmp_path, long_world):
    out = tmp_path / "again"
    W.generate_long_world(out, videos=5, seed=4, resolution=(64, 64), long=LONG, workers=2)
    for name in ("world.json", "videos/video2.mp4", "test.csv"):
        assert hashlib.sha256((out / name).read_bytes()).digest() == \
            hashlib.sha256((long_world / name).read_bytes()).digest()
    json.loads((out / "procedural_data.json").read_text())  # MSRVTT format, readable


def test_impossible_settings_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="shorter than one event"):
        W.generate_long_world(tmp_path / "w", videos=1, seed=0, long=W.LongVideos(duration=(10.0, 20.0)))
    with pytest.raises(DataError, match="range"):
        W.LongVideos(events=(4, 2)).check()
    assert not (tmp_path / "w").exists()
