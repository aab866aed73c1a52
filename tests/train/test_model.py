"""RetrievalModel (train/model.py): block scoring follows the one sampling convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probret.engine.runtime import draw_noise
from probret.train.config import ModelConfig
from probret.train.methods.base import TextFeatures
from probret.train.model import RetrievalModel


def _model(method, **head):
    torch.manual_seed(0)
    config = ModelConfig(backbone="test-vit-tiny", pretrained=None, method=method, num_frames=4, head=head)
    model = RetrievalModel.from_config(config).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _features(model, n_text=11, n_video=9):
    g = torch.Generator().manual_seed(1)
    d = model.backbone.embed_dim
    text = TextFeatures(torch.randn(n_text, d, generator=g), torch.randn(n_text, 5, d, generator=g),
                        torch.ones(n_text, 5, dtype=torch.bool))
    return text, torch.randn(n_video, 4, d, generator=g)


# not duq: its re-ranking (Eq. 16) normalises by the videos scored in the same call, so its scores
# depend on the video blocking by design (docs/methods.md, "Sampling at inference"), noise or not
@pytest.mark.parametrize("method", ["tmass", "spem", "dvtr", "xpool"])
def test_block_size_does_not_change_the_scores(method):
    model = _model(method, **({"num_samples": 4} if method in ("tmass", "spem") else {}))
    text, frames = _features(model)
    whole = model.score_blocks(text, frames, block=256, seed=5)
    for block in (1, 3, 4):
        part = model.score_blocks(text, frames, block=block, seed=5)
        torch.testing.assert_close(part.scores, whole.scores, rtol=0, atol=1e-6)
    if model.head.inference_noise():  # another seed, other samples
        assert not torch.allclose(model.score_blocks(text, frames, seed=6).scores, whole.scores)


def test_scores_use_the_bundles_noise_banks():
    """The numbers a noise-input bundle exported with --seed S feeds its pair graph (engine's
    draw_noise over the manifest's specs) are the ones evaluation scores with at seed S."""
    model = _model("spem", num_samples=3)
    text, frames = _features(model)
    specs = sorted(model.head.inference_noise(), key=lambda s: s.key)
    banks = draw_noise([s.to_dict() for s in specs], 5)
    noise = {s.key: s.expand(torch.from_numpy(banks[s.name]), len(text), frames.shape[0]) for s in specs}
    with torch.no_grad():
        expected = model.head.score(text, frames, noise=noise).scores
    np.testing.assert_allclose(model.score_blocks(text, frames, block=4, seed=5).scores.numpy(), expected.numpy(),
                               atol=1e-6)
