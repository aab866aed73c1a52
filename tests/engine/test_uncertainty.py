"""engine/uncertainty.py against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from probret.engine.uncertainty import (abstention_gain, auroc, aurc, ece, rank_correlation, reliability_bins,
                                        risk_coverage, top1_correct, uncertainty_report)


def test_auroc_equals_pairwise_probability():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    wrong = rng.random(200) < 0.3 + 0.1 * s
    pairs = [(a > b) + 0.5 * (a == b) for a in s[wrong] for b in s[~wrong]]
    assert auroc(s, wrong) == pytest.approx(np.mean(pairs))
    assert auroc(np.zeros(50), np.arange(50) % 2 == 0) == pytest.approx(0.5)
    assert np.isnan(auroc([1.0, 2.0], [True, True]))


def test_risk_coverage_and_aurc():
    s = np.array([0.1, 0.2, 0.3, 0.4])
    wrong = np.array([False, True, False, True])
    cov, risk = risk_coverage(s, wrong)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.5])
    r = aurc(s, wrong)
    assert r["aurc"] == pytest.approx(np.mean([0.0, 0.5, 1 / 3, 0.5]))
    assert r["oracle"] == pytest.approx(np.mean([0, 0, 1 / 3, 0.5]))
    assert r["random"] == 0.5
    # a constant signal is the random ordering exactly (ties averaged, not broken by position)
    assert aurc(np.zeros(4), wrong)["aurc"] == pytest.approx(0.5)


def test_abstention_gain():
    correct = np.array([True, True, True, False, False])
    unc = np.array([0.1, 0.2, 0.3, 0.9, 0.8])
    g = abstention_gain(unc, correct, 0.4)
    assert g["kept_R1"] == pytest.approx(100.0) and g["all_R1"] == pytest.approx(60.0)
    assert g["gain"] == pytest.approx(40.0)


def test_ece_and_reliability_bins():
    rng = np.random.default_rng(1)
    p = rng.random(100000)
    calibrated = rng.random(100000) < p
    assert ece(p, calibrated) < 0.01
    assert ece(np.full(1000, 0.9), np.zeros(1000, bool)) == pytest.approx(0.9)
    bins = reliability_bins([0.05, 0.95, 1.0], [False, True, True], n_bins=10)
    assert [(b["lo"], b["count"]) for b in bins] == [(0.0, 1), (0.9, 2)]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ece([1.2], [True])


def test_top1_correct_with_match_sets_and_ties():
    sims = np.array([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.1, 0.2, 0.7]])
    assert top1_correct(sims, relevant=[[0], [0], [0, 2]]).tolist() == [True, False, True]
    assert top1_correct(sims, relevant=[[0], [0, 1], [1]]).tolist() == [True, True, False]
    assert top1_correct(sims, text_video_index=[1, 1, 2]).tolist() == [False, False, True]


def test_rank_correlation_and_report():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    rep = uncertainty_report({"u": np.array([0.1, 0.9, 0.2, 0.8])}, np.array([True, False, True, False]),
                             match_set_size=np.array([1, 3, 1, 2]))
    assert rep["u"]["auroc"] == 1.0 and rep["u"]["spearman_match_set_size"] > 0.9
