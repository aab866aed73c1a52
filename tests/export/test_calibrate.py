"""export/calibrate.py: a checkpoint scores a real procedural world's validation split and the fitted
calibrator comes back as a manifest dict the torch-free engine can load; the test split is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probret.engine.calibration import Calibrator, hit_signals
from probret.engine.errors import DataError
from probret.export.calibrate import fit_calibration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("calworld")
    generate_world(root, videos=40, seed=3, resolution=(32, 32), frames=8, fps=4, splits=(0.3, 0.5, 0.2))
    return root


def test_fit_on_validation_gives_a_loadable_monotone_calibrator(checkpoints, world):
    d = fit_calibration(checkpoints("spem"), world, dataset="procedural", split="val", top_k=5)
    d = json.loads(json.dumps(d))  # what the manifest stores
    assert d["domain"] == {"dataset": "procedural", "split": "val", "gallery_size": 20, "queries": 20}
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
