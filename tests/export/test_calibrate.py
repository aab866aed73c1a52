"""export/calibrate.py: a checkpoint scores a real procedural world's validation split and the fitted
calibrator comes back as a manifest dict the torch-free engine can load; the test split is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probret.engine.calibration import Calibrator, hit_signals
from probret.engine.errors import DataError
from probret.export.calibrate import fit_calibration, galleries_of


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("calworld")
    generate_world(root, videos=40, seed=3, resolution=(32, 32), frames=8, fps=4, splits=(0.3, 0.5, 0.2))
    return root


def test_fit_on_validation_gives_a_loadable_monotone_calibrator(checkpoints, world):
    d = fit_calibration(checkpoints("spem"), world, dataset="procedural", split="val", top_k=5)
    d = json.loads(json.dumps(d))  # what the manifest stores
    assert d["domain"] == {"dataset": "procedural", "split": "val", "gallery_size": 20, "queries": 20,
                           "world": {"seed": 3, "videos": 40, "resolution": [32, 32], "frames": 8,
                                     "difficulty": "medium"}}
    assert d["candidates"] and f"{d['kind']}:{'+'.join(d['signals'])}" in d["candidates"]
    assert 0.0 <= d["val_ece"] <= 1.0
    cal = Calibrator.from_dict(d)
    scores = np.sort(np.random.default_rng(0).uniform(-1, 1, (50, 5)), 1)[:, ::-1]
    conf = cal.confidence(hit_signals(scores, uncertainty=np.abs(scores)))
    assert conf.shape == (50, 5) and np.all((conf >= 0) & (conf <= 1))


def test_test_split_is_refused(checkpoints, world):
    with pytest.raises(DataError, match="never fitted on the test split"):
        fit_calibration(checkpoints("spem"), world, split="test")


def test_export_stores_the_calibrator_in_the_manifest_and_the_bundle_reads_it(checkpoints, world, tmp_path):
    from probret.engine.bundle import load_bundle
    from probret.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path / "bundle"
    export_checkpoint(checkpoints("spem"), out, ExportOptions(benchmark=world, benchmark_videos=3, calibrate=world))
    stored = load_bundle(out).calibration
    assert stored is not None and stored["domain"]["split"] == "val"
    cal = Calibrator.from_dict(stored)
    conf = cal.confidence(hit_signals(np.array([0.9, 0.5, 0.1]), uncertainty=np.array([0.1, 0.2, 0.3])))
    assert np.all((conf >= 0) & (conf <= 1))


def test_galleries_cut_the_split_and_renumber_match_sets():
    sims = np.arange(5 * 5, dtype=np.float64).reshape(5, 5)  # 5 queries over 5 videos
    index = np.array([0, 1, 2, 3, 4])
    relevant = [[0, 1], [1], [2, 3], [2, 3], [4]]
    unc = -sims
    cut = galleries_of(sims, index, relevant, unc, 2)  # videos 0-1, 2-3; video 4 is the dropped remainder
    assert len(cut) == 2
    (s0, r0, u0), (s1, r1, u1) = cut
    np.testing.assert_array_equal(s0, sims[:2, :2])
    np.testing.assert_array_equal(s1, sims[2:4, 2:4])
    np.testing.assert_array_equal(u1, unc[2:4, 2:4])
    assert r0 == [[0, 1], [1]] and r1 == [[0, 1], [0, 1]]
    assert galleries_of(sims, index, relevant, None, None)[0][0] is sims  # None: the split is one gallery
    with pytest.raises(DataError, match="at least 2"):
        galleries_of(sims, index, relevant, None, 1)


def test_fit_in_galleries_records_them(checkpoints, world):
    d = fit_calibration(checkpoints("spem"), world, split="val", top_k=5, gallery_size=10)
    assert (d["domain"]["gallery_size"], d["domain"]["galleries"], d["domain"]["queries"]) == (10, 2, 20)
    Calibrator.from_dict(d)
