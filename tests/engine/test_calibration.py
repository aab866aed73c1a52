"""engine/calibration.py: hit signals, Platt and isotonic fitting, the manifest dict, and a held-out
check that a fitted calibrator is monotone, bounded and calibrated on data it never saw."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from probret.engine.calibration import (Calibrator, calibration_examples, fit_isotonic, fit_on_scores, fit_platt,
                                        hit_signals, ranked_hits)
from probret.engine.errors import ModelError
from probret.engine.uncertainty import ece


def synthetic_split(rng, n_queries=400, n_videos=60, ambiguous=0.3):
    """A scored split with a known structure: each query's match set holds its own video and, for a
    fraction of queries, two more; the true video's score is lifted by a random amount, so some
    queries are confidently right and others are wrong."""
    sims = rng.normal(scale=0.1, size=(n_queries, n_videos))
    own = rng.integers(0, n_videos, n_queries)
    sims[np.arange(n_queries), own] += rng.uniform(0.0, 0.45, n_queries)
    relevant = []
    for i, j in enumerate(own):
        extra = rng.choice(n_videos, 2, replace=False).tolist() if rng.random() < ambiguous else []
        relevant.append(sorted({int(j), *extra}))
    return sims, relevant


# -- signals -------------------------------------------------------------------------------------

def test_hit_signals_margin_is_gap_to_best_other_hit():
    s = hit_signals([0.9, 0.7, 0.4], uncertainty=[0.1, 0.2, 0.3])
    np.testing.assert_allclose(s["score"], [0.9, 0.7, 0.4])
    np.testing.assert_allclose(s["margin"], [0.2, -0.2, -0.5])
    np.testing.assert_allclose(s["uncertainty"], [0.1, 0.2, 0.3])
    batch = hit_signals([[0.9, 0.7], [0.5, 0.5]])
    np.testing.assert_allclose(batch["margin"], [[0.2, -0.2], [0.0, 0.0]])
    assert "uncertainty" not in batch
    np.testing.assert_allclose(hit_signals([0.3])["margin"], [0.0])


@pytest.mark.parametrize("scores, unc, match", [([0.1, 0.5], None, "sorted best first"), ([], None, "K >= 1"),
                                                ([0.5, 0.1], [0.1], "uncertainty has shape")])
def test_hit_signals_rejects_bad_input(scores, unc, match):
    with pytest.raises(ValueError, match=match):
        hit_signals(scores, unc)


def test_calibration_examples_label_hits_by_match_set():
    sims = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
    cols, scores, _ = ranked_hits(sims, top_k=2)
    assert cols.tolist() == [[1, 2], [0, 2]]
    signals, labels = calibration_examples(sims, [[2], [0, 2]], top_k=2)
    assert labels.tolist() == [False, True, True, True]
    np.testing.assert_allclose(signals["margin"], [0.4, -0.4, 0.5, -0.5])


# -- fitting --------------------------------------------------------------------------------------

def brute_force_isotonic(x, y):
    """Least-squares non-decreasing fit over the sorted unique x, by exhaustive PAV reference:
    minimum over all partitions into contiguous blocks whose means increase (tiny inputs only)."""
    ux = np.unique(x)
    pts = [y[x == v] for v in ux]
    best, best_fit = np.inf, None
    for cuts in itertools.product([0, 1], repeat=len(ux) - 1):
        blocks, cur = [], [0]
        for i, c in enumerate(cuts, start=1):
            if c:
                blocks.append(cur)
                cur = []
            cur.append(i)
        blocks.append(cur)
        means = [np.concatenate([pts[i] for i in b]).mean() for b in blocks]
        if any(a > b for a, b in zip(means, means[1:])):
            continue
        fit = np.concatenate([[m] * len(b) for m, b in zip(means, blocks)])
        err = sum(((pts[i] - fit[i]) ** 2).sum() for i in range(len(ux)))
        if err < best - 1e-12:
            best, best_fit = err, fit
    return ux, best_fit


def test_isotonic_matches_exhaustive_least_squares():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 7, 40).astype(float)
    y = (rng.random(40) < 0.2 + 0.1 * x).astype(float)
    tx, ty = fit_isotonic(x, y)
    ux, ref = brute_force_isotonic(x, y)
    lo, hi = 1 / 42, 41 / 42
    np.testing.assert_allclose(np.interp(ux, tx, ty), np.clip(ref, lo, hi), atol=1e-12)
    assert np.all(np.diff(tx) > 0) and np.all(np.diff(ty) >= 0)


def test_isotonic_decreasing_direction():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([1, 1, 0, 1, 0, 0])
    tx, ty = fit_isotonic(x, y, increasing=False)
    assert np.all(np.diff(ty) <= 0)
    assert ty[0] > ty[-1]


def test_platt_recovers_a_logistic_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(3.0 * x - 1.0)))
    w, b = fit_platt(x, y)
    assert w[0] == pytest.approx(3.0, abs=0.15) and b == pytest.approx(-1.0, abs=0.1)


def test_platt_converges_on_separable_data():
    w, b = fit_platt(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    p = Calibrator("platt", ["score"], weights=w, bias=b).confidence({"score": np.array([-2.0, 2.0])})
    assert np.all(np.isfinite(w)) and 0.0 < p[0] < 0.5 < p[1] < 1.0


# -- the held-out check -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, names", [("isotonic", ["margin"]), ("platt", ["score", "margin"]),
                                         ("isotonic", ["uncertainty"])])
def test_fitted_calibrator_is_monotone_bounded_and_calibrated_on_held_out_data(kind, names):
    rng = np.random.default_rng(11)
    fit_sims, fit_rel = synthetic_split(rng)
    held_sims, held_rel = synthetic_split(rng)  # a fresh draw: never seen by the fit
    unc_of = lambda sims: -np.abs(sims) + 0.01 * rng.normal(size=sims.shape)  # noisy, higher = less sure
    signals, labels = calibration_examples(fit_sims, fit_rel, unc_of(fit_sims))
    cal = Calibrator.from_dict(json.loads(json.dumps(Calibrator.fit(kind, signals, labels, names).to_dict())))

    grid = np.linspace(-1.5, 1.5, 2001)
    p = cal.confidence({n: grid for n in ["score", "margin", "uncertainty"]})
    assert np.all((p >= 0) & (p <= 1))
    steps = np.diff(p)
    assert np.all(steps >= -1e-12) if cal.increasing else np.all(steps <= 1e-12)

    h_signals, h_labels = calibration_examples(held_sims, held_rel, unc_of(held_sims))
    conf = cal.confidence(h_signals)
    assert ece(conf, h_labels) < 0.05
    assert conf[h_labels].mean() > conf[~h_labels].mean() + 0.2


def test_fit_on_scores_picks_a_candidate_and_records_domain():
    rng = np.random.default_rng(5)
    sims, rel = synthetic_split(rng)
    cal, report = fit_on_scores(sims, rel, domain={"dataset": "synthetic", "split": "val"})
    assert f"{cal.kind}:{'+'.join(cal.signals)}" == min(report, key=lambda k: report[k]["log_loss"])
    assert not any("uncertainty" in k for k in report)  # none given, none tried
    assert cal.domain == {"gallery_size": 60, "queries": 400, "dataset": "synthetic", "split": "val"}
    assert 0.0 <= cal.val_ece < 0.1
    assert Calibrator.from_dict(cal.to_dict()).to_dict() == cal.to_dict()


def test_fit_on_galleries_pools_the_examples_of_each():
    from probret.engine.calibration import fit_on_galleries

    rng = np.random.default_rng(6)
    a, b = synthetic_split(rng), synthetic_split(rng)
    cal, report = fit_on_galleries([(a[0], a[1], None), (b[0], b[1], None)], domain={"split": "val"})
    assert cal.domain == {"gallery_size": 60, "galleries": 2, "queries": 800, "split": "val"}
    # the pooled fit is the fit on both galleries' examples together
    sa, la = calibration_examples(*a)
    sb, lb = calibration_examples(*b)
    pooled = {k: np.concatenate([sa[k], sb[k]]) for k in sa}
    refit = Calibrator.fit(cal.kind, pooled, np.concatenate([la, lb]), cal.signals)
    np.testing.assert_allclose(cal.confidence(pooled), refit.confidence(pooled))
    with pytest.raises(ValueError, match="one size"):
        fit_on_galleries([(a[0], a[1], None), (a[0][:, :30], a[1], None)])
    with pytest.raises(ValueError, match="every gallery or for none"):
        fit_on_galleries([(a[0], a[1], None), (b[0], b[1], -np.abs(b[0]))])


# -- the manifest dict ------------------------------------------------------------------------------

GOOD_ISOTONIC = {"kind": "isotonic", "signals": ["margin"], "increasing": True, "table_x": [-0.1, 0.0, 0.2],
                 "table_y": [0.05, 0.3, 0.9], "top_k": 10, "domain": {"dataset": "procedural"}, "val_ece": 0.02}


@pytest.mark.parametrize("change, key", [
    ({"kind": "magic"}, "kind"), ({"signals": ["colour"]}, "colour"), ({"signals": "margin"}, "signals"),
    ({"table_x": [0.0, 0.0, 0.2]}, "table_x"), ({"table_y": [0.5, 0.3, 0.9]}, "table_y"),
    ({"table_y": [0.1, 0.3, 1.5]}, "table_y"), ({"table_y": [0.1, 0.3]}, "table_y"), ({"top_k": 1}, "top_k"),
    ({"table_x": ["a", 0, 1]}, "table_x"), ({"domain": []}, "domain"), ({"signals": ["margin", "score"]}, "one signal"),
])
def test_from_dict_names_the_bad_key(change, key):
    with pytest.raises(ModelError, match=key):
        Calibrator.from_dict({**GOOD_ISOTONIC, **change})


def test_from_dict_platt_and_missing_keys():
    d = {"kind": "platt", "signals": ["score", "margin"], "weights": [2.0, 5.0], "bias": -1.0}
    cal = Calibrator.from_dict(d)
    assert cal.confidence({"score": np.array([0.5]), "margin": np.array([0.1])})[0] == pytest.approx(
        1 / (1 + np.exp(-(1.0 + 0.5 - 1.0))))
    with pytest.raises(ModelError, match="weights"):
        Calibrator.from_dict({**d, "weights": [1.0]})
    with pytest.raises(ModelError, match="bias"):
        Calibrator.from_dict({k: v for k, v in d.items() if k != "bias"})
    with pytest.raises(ModelError, match="JSON object"):
        Calibrator.from_dict([1, 2])


def test_confidence_names_a_missing_signal():
    cal = Calibrator.from_dict({**GOOD_ISOTONIC, "signals": ["uncertainty"], "increasing": False,
                                "table_y": [0.9, 0.3, 0.05]})
    with pytest.raises(ModelError, match="uncertainty"):
        cal.confidence(hit_signals([0.5, 0.2]))
