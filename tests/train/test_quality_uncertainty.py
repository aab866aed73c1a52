"""The uncertainty analysis of quality protocol v2 (bench/quality_uncertainty.py) on synthetic
per-query records whose answer is known; the quick run's tables are checked in
test_quality_protocol.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import quality_uncertainty as qu  # noqa: E402

PROTOCOL = json.loads((BENCH / "protocols" / "quality_v2.json").read_text())


def _record(n: int, rng, *, offset: float = 0.0, has_uncertainty: bool = True, k: int = 10) -> dict:
    """Half the queries right; the head's uncertainty separates them perfectly and equals the
    match-set size; score and margin are noise. ``offset`` shifts every score (and uncertainty), so
    values of two records never coincide."""
    ok = np.arange(n) % 2 == 0
    top1 = offset + rng.uniform(0.4, 0.6, n)
    margin = rng.uniform(0.0, 0.05, n)
    size = np.where(ok, 1, 3)
    rest = top1[:, None] - margin[:, None] - np.sort(rng.uniform(0, 0.1, (n, k - 1)), 1)
    scores = np.concatenate([top1[:, None], rest], 1)
    unc = offset + size.astype(float)
    return {"hit1": ok.astype(float).tolist(), "top1": top1.tolist(), "margin": margin.tolist(),
            "uncertainty_top1": unc.tolist() if has_uncertainty else None, "match_set_size": size.tolist(),
            "topk_scores": scores.tolist(),
            "topk_uncertainty": np.repeat(unc[:, None], k, 1).tolist() if has_uncertainty else None,
            "topk_relevant": [[bool(o) and j == 0 for j in range(k)] for o in ok]}


def _analyse(rng, **kw):
    spec = PROTOCOL["uncertainty"]
    val, test = _record(60, rng), _record(80, rng, offset=10.0)
    meanp = _record(80, rng, offset=10.0, has_uncertainty=False)
    return val, test, qu.run_analysis(val, test, meanp_test=meanp, bins=spec["ece_bins"],
                                      fraction=spec["abstain_fraction"], **kw)


def test_a_perfect_uncertainty_scores_auroc_one_and_tracks_match_set_size():
    _, _, row = _analyse(np.random.default_rng(0))
    sig = row["signals"]
    assert sig["uncertainty"]["auroc"] == 1.0
    assert sig["uncertainty"]["aurc"] == pytest.approx(sig["uncertainty"]["oracle"])
    assert sig["uncertainty"]["spearman_match_set_size"] == pytest.approx(1.0)
    assert abs(sig["score"]["auroc"] - 0.5) < 0.25  # noise: far from 1
    # abstaining on the 20% most uncertain (all wrong) of a 50% R@1 split: 50 / 80 kept right
    assert sig["uncertainty"]["abstain_gain"] == pytest.approx(100 * 0.5 / 0.8 - 50)
    assert set(row["ece"]) == set(qu.CALIBRATED) and all(0 <= e <= 1 for e in row["ece"].values())
    assert set(sig) == set(qu.SIGNALS)


def test_calibrators_are_fitted_on_validation_only(monkeypatch):
    """Every fit of the analysis sees validation values only: the test record's scores and
    uncertainties are shifted by 10, so any test value reaching a fit would be >= 10."""
    seen = []
    fit, fit_scores = qu.Calibrator.fit.__func__, qu.fit_on_scores

    def spy_fit(cls, kind, signals, labels, names, **kw):
        seen.extend(np.asarray(signals[n]) for n in names)
        return fit(cls, kind, signals, labels, names, **kw)

    def spy_fit_on_scores(sims, relevant, uncertainty=None, **kw):
        seen.extend(np.asarray(x) for x in (sims, uncertainty) if x is not None)
        return fit_scores(sims, relevant, uncertainty, **kw)

    monkeypatch.setattr(qu.Calibrator, "fit", classmethod(spy_fit))
    monkeypatch.setattr(qu, "fit_on_scores", spy_fit_on_scores)
    val, test, row = _analyse(np.random.default_rng(1))
    assert len(seen) >= 5  # the three Platt fits, the cross-fitted choice and the product fit were seen
    assert all(np.max(a) < 10 for a in seen)
    # and the test confidences really are the validation calibrators applied to test
    assert row["calibrators"]["confidence"]["domain"]["split"] == "val"
    assert row["arrays"]["confidence"]["confidence"].shape == (len(test["hit1"]),)


def test_the_calibration_gallery_is_fitted_on_when_a_run_has_one():
    val, cal = {"hit1": [1.0]}, {"hit1": [0.0, 1.0]}
    assert qu.fit_record({"val": val, "test": {}, "calibration": cal}) == ("calibration", cal)
    assert qu.fit_record({"val": val, "test": {}}) == ("val", val)  # settings 6-9: no calibration gallery


def test_auroc_difference_of_perfect_against_constant_is_one_half():
    wrong = np.tile(np.arange(40) % 2 == 1, (3, 1))
    perfect, constant = wrong.astype(float), np.zeros_like(wrong, dtype=float)
    d = qu.auroc_difference(perfect, wrong, constant, wrong, reps=50, level=0.95, seed=0)
    assert d["mean"] == pytest.approx(0.5) and d["lo"] == pytest.approx(0.5) and d["hi"] == pytest.approx(0.5)
    noise = np.random.default_rng(2).normal(size=wrong.shape)
    d = qu.auroc_difference(noise, wrong, constant, wrong, reps=200, level=0.95, seed=0)
    assert d["lo"] < 0 < d["hi"]  # no information either side: the interval covers 0


def test_auroc_difference_without_a_wrong_query_is_nan_and_quiet():
    import warnings

    never_wrong = np.zeros((2, 20), dtype=bool)
    signal = np.random.default_rng(4).normal(size=never_wrong.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = qu.auroc_difference(signal, never_wrong, signal, never_wrong, reps=20, level=0.95, seed=0)
    assert np.isnan(d["mean"]) and np.isnan(d["lo"]) and d["seed_std"] is None


def test_method_summary_targets_met_and_not_met():
    rng = np.random.default_rng(3)
    rows = [_analyse(rng)[2] for _ in range(3)]
    spec, stats = PROTOCOL["uncertainty"], {"reps": 50, "level": 0.95, "seed": 0}
    s = qu.method_summary(rows, spec, stats)
    assert s["seeds"] == 3 and s["signals"]["uncertainty"]["auroc"]["mean"] == 1.0
    t = s["targets"]
    assert t["auroc_over_margin"]["met"] is True and t["auroc_over_margin"]["value"] > 0.3
    assert t["abstention_gain_min"]["met"] is True  # 12.5 points >= 10
    strict = {**spec, "targets": {**spec["targets"], "abstention_gain_min": 50.0, "confidence_ece_max": -1.0}}
    t = qu.method_summary(rows, strict, stats)["targets"]
    assert t["abstention_gain_min"]["met"] is False and t["confidence_ece_max"]["met"] is False
    md = qu.markdown({"spec": spec, "methods": {"spem": s}})
    assert "15 equal-width bins" in md and "| spem |" in md and ": met" in md
