"""meanP (CLIP4Clip): video = normalize(mean of normalized frames), cosine score, symmetric InfoNCE."""

import torch
import torch.nn.functional as F

from probret.train.methods import TextFeatures, create_head
from probret.train.methods.meanp import MeanPHead


def _text(n, d, g):
    sentence, tokens = torch.randn(n, d, generator=g), torch.randn(n, 3, d, generator=g)
    return TextFeatures(sentence, tokens, torch.ones(n, 3, dtype=torch.bool))


def test_score_equals_manual_computation_with_unequal_counts():
    g = torch.Generator().manual_seed(0)
    head = create_head("meanp", embed_dim=8, num_frames=3)
    assert isinstance(head, MeanPHead) and head.name == "meanp" and head.config_dict() == {"objective": "video"}
    text, frames = _text(3, 8, g), torch.randn(5, 3, 8, generator=g) * 7
    out = head.score(text, frames)
    assert out.scores.shape == (3, 5) and out.uncertainty is None
    for i in range(3):
        for j in range(5):
            v = sum(frames[j, k] / frames[j, k].norm() for k in range(3)) / 3
            expected = torch.dot(text.sentence[i], v) / (text.sentence[i].norm() * v.norm())
            torch.testing.assert_close(out.scores[i, j], expected, atol=1e-6, rtol=1e-5)
    split = head.pair_side(text, head.video_side(frames)).scores
    torch.testing.assert_close(split, out.scores)


def test_loss_is_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(1)
    head = MeanPHead(8, 3)
    text, frames = _text(4, 8, g), torch.randn(4, 3, 8, generator=g)
    scale = torch.tensor(30.0)
    logits = scale * head.score(text, frames).scores
    target = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    torch.testing.assert_close(head.loss(text, frames, logit_scale=scale)["loss"], expected)


def test_loss_decreases_in_30_steps():
    g = torch.Generator().manual_seed(2)
    head = MeanPHead(16, 4)
    sent = torch.randn(8, 16, generator=g).requires_grad_()
    frames = torch.randn(8, 4, 16, generator=g).requires_grad_()
    opt = torch.optim.Adam([sent, frames], lr=5e-2)
    loss = lambda: head.loss(TextFeatures(sent, sent[:, None], torch.ones(8, 1, dtype=torch.bool)), frames,
                             logit_scale=torch.tensor(10.0))["loss"]
    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first


def test_frames_objective_is_clip_on_each_frame_and_leaves_scoring_alone():
    g = torch.Generator().manual_seed(3)
    video, frames_head = MeanPHead(8, 3), create_head("meanp", embed_dim=8, num_frames=3, objective="frames")
    text, frames = _text(4, 8, g), torch.randn(4, 3, 8, generator=g)
    scale = torch.tensor(20.0)
    torch.testing.assert_close(frames_head.score(text, frames).scores, video.score(text, frames).scores)
    target, per_frame = torch.arange(4), []
    for k in range(3):
        logits = scale * F.normalize(text.sentence, dim=-1) @ F.normalize(frames[:, k], dim=-1).t()
        per_frame.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)))
    got = frames_head.loss(text, frames, logit_scale=scale)["loss"]
    torch.testing.assert_close(got, torch.stack(per_frame).mean())
    assert not torch.isclose(got, video.loss(text, frames, logit_scale=scale)["loss"])


def test_unknown_objective_is_refused():
    import pytest

    with pytest.raises(ValueError, match="objective 'clip'"):
        create_head("meanp", embed_dim=8, num_frames=3, objective="clip")
