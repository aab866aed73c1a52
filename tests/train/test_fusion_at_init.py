"""bench/fusion_at_init.py: the parameter-free frame rules score what their names say."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fusion_at_init as fi  # noqa: E402


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_frame_rules_match_their_definitions():
    rng = np.random.default_rng(0)
    text, frames = _unit(rng.normal(size=(5, 16))), _unit(rng.normal(size=(7, 4, 16)))
    rules = fi.frame_rules(text, frames)
    mean = _unit(frames.mean(1))
    per = np.einsum("qd,vtd->qvt", text, frames)
    np.testing.assert_allclose(rules["mean frame (meanP)"], text @ mean.T, atol=1e-6)
    np.testing.assert_allclose(rules["best frame"], per.max(-1), atol=1e-6)
    np.testing.assert_allclose(rules["mean of frame cosines"], per.mean(-1), atol=1e-6)
    np.testing.assert_allclose(rules["frame 2 alone"], per[..., 2], atol=1e-6)
    # a softmax over frames lies between the mean and the best frame, nearer the best when sharper
    sharp, soft = rules["softmax over frames, tau 0.02"], rules["softmax over frames, tau 0.05"]
    assert np.all(sharp <= per.max(-1) + 1e-6) and np.all(soft >= per.mean(-1) - 1e-6)
    assert np.all(sharp >= soft - 1e-6)


def test_mean_pooling_wins_when_only_the_mean_is_aligned():
    """The case the script looks for: frames that match the text only on average."""
    rng = np.random.default_rng(1)
    text = _unit(rng.normal(size=(6, 32)))
    noise = rng.normal(size=(6, 8, 32)) * 3.0
    noise -= noise.mean(1, keepdims=True)  # zero-mean across frames: the mean frame is the text itself
    frames = _unit(text[:, None, :] + noise)
    rules = fi.frame_rules(text, frames)
    assert (rules["mean frame (meanP)"].argmax(1) == np.arange(6)).all()
    assert np.diag(rules["mean frame (meanP)"]).mean() > np.diag(rules["best frame"]).mean()
