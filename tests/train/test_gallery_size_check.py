"""bench/gallery_size_check.py: sub-galleries keep each query's matches inside the gallery, and
R@1 over galleries of growing size behaves as retrieval does."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gallery_size_check as gs  # noqa: E402


def _split(n: int, relevant: list[list[int]]):
    return SimpleNamespace(videos=list(range(n)), text_video_index=np.arange(n), relevant=relevant)


def test_sub_gallery_renumbers_matches_and_drops_those_outside():
    split = _split(5, [[0, 3], [1], [2, 4], [3, 0], [4, 2]])
    rows, relevant = gs.sub_gallery(split, np.array([0, 2, 3]))
    assert rows.tolist() == [0, 2, 3]
    assert relevant == [[0, 2], [1], [2, 0]]  # video 4 is outside the gallery: query 2 keeps only itself


def test_r1_falls_with_gallery_size_when_scores_are_noisy_and_is_exact_on_the_whole_split():
    rng = np.random.default_rng(0)
    n = 400
    sims = np.eye(n) + rng.normal(scale=0.6, size=(n, n))  # own video a little above chance
    split = _split(n, [[i] for i in range(n)])
    kinds = np.asarray(["full", "partial", "short", "full"] * (n // 4))
    perfect = np.eye(n)
    out = gs.by_gallery_size({"meanp": sims, "xpool": perfect}, split, kinds, (50, 200), draws=5, seed=0)
    assert list(out) == ["50", "200", "400"]
    assert out["50"]["meanp"]["all"] > out["200"]["meanp"]["all"] > out["400"]["meanp"]["all"]
    assert all(out[s]["xpool"]["partial"] == 100.0 for s in out)
    whole = 100 * (sims.argmax(1) == np.arange(n)).mean()
    assert out["400"]["meanp"]["all"] == pytest.approx(round(whole, 1))
    assert out["400"]["xpool - meanp"]["all"] == pytest.approx(round(100 - whole, 1), abs=0.11)
    assert out["400"]["xpool - meanp, std over draws"]["all"] == 0.0  # one gallery: the whole split


def test_partial_failures_sort_a_wrong_top1_by_how_it_differs_from_the_query():
    def video(shape, color, size, motion):
        return {"objects": [{"shape": shape, "color": color, "size": size}], "events": [{"actor": 0, "motion": motion}]}

    world = {"videos": {"q": {**video("circle", "red", "small", "left"), "eval_sen_id": 0},
                        "a": video("circle", "red", "small", "up"), "b": video("star", "red", "small", "left"),
                        "c": video("circle", "red", "large", "left")},
             "captions": {"0": {"semantics": {"events": [{"shape": "circle", "color": "red", "size": "small",
                                                          "motion": "left"}]}}}}
    split = SimpleNamespace(video_ids=["q", "a", "b", "c"], videos=[0, 1, 2, 3], text_video_index=np.arange(4),
                            relevant=[[0], [1], [2], [3]])
    kinds = np.asarray(["partial", "full", "full", "full"])
    sims = {name: np.eye(4) for name in ("right", "motion", "other", "size")}
    for name, col in (("motion", 1), ("other", 2), ("size", 3)):
        sims[name][0] = 0.0
        sims[name][0, col] = 1.0
    out = gs.partial_failures(sims, split, kinds, world, 4, draws=1, seed=0)
    assert out["partial_queries"] == 1 and out["look_alikes_per_query"] == 2  # a and c look like the query
    assert out["top1"] == {"right": {"match": 1.0}, "motion": {"look-alike, differs in motion": 1.0},
                           "other": {"other": 1.0}, "size": {"look-alike, differs in size": 1.0}}
