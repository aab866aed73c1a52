"""X-Pool: text-conditioned attention over frames; video_side / pair_side split; explicit dropout noise."""

import math

import torch
import torch.nn.functional as F

from probret.train.methods import create_head
from probret.train.methods.xpool import XPoolFusion, XPoolHead

from method_features import losses_over_adam, perturb, sentence_text


def reference_xpool(fusion, text, frames, dropout=None):
    """X-Pool's modules/transformer.py, written out pair by pair (no folding, no einsum)."""
    d, h = fusion.dim, fusion.num_heads
    e = d // h
    out = torch.empty(text.shape[0], frames.shape[0], d)
    for i in range(text.shape[0]):
        q = fusion.q_proj(fusion.ln1(text[i])).view(h, e)
        for j in range(frames.shape[0]):
            f = fusion.ln1(frames[j])
            k, v = fusion.k_proj(f).view(-1, h, e), fusion.v_proj(f).view(-1, h, e)
            heads = []
            for hh in range(h):
                w = torch.softmax(k[:, hh] @ q[hh] / math.sqrt(e), dim=0)
                heads.append(w @ v[:, hh])
            a = fusion.ln2(fusion.out_proj(torch.cat(heads)))
            lin = fusion.linear_proj(a)
            if dropout is not None:
                lin = lin * dropout[i, j]
            out[i, j] = fusion.ln3(a + lin)
    return out


def test_fusion_matches_reference_multihead():
    g = torch.Generator().manual_seed(0)
    fusion = XPoolFusion(8, num_heads=2, dropout=0.3)
    perturb(fusion, g, 0.3)
    text, frames = torch.randn(3, 8, generator=g), torch.randn(4, 5, 8, generator=g) * 3
    mask = fusion.draw_dropout(3, 4, g, fusion.q_proj.weight)["dropout"]
    got = fusion.pair_side(text, fusion.video_side(frames), mask)
    assert got.shape == (3, 4, 8)
    torch.testing.assert_close(got, reference_xpool(fusion, text, frames, mask), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fusion.pair_side(text, fusion.video_side(frames)),
                               reference_xpool(fusion, text, frames), atol=1e-5, rtol=1e-4)


def test_identity_init_and_single_frame():
    fusion = XPoolFusion(8)
    for layer in (fusion.q_proj, fusion.k_proj, fusion.v_proj, fusion.out_proj, fusion.linear_proj):
        assert torch.equal(layer.weight, torch.eye(8)) and torch.equal(layer.bias, torch.zeros(8))
    g = torch.Generator().manual_seed(1)
    text, frames = torch.randn(3, 8, generator=g), torch.randn(2, 1, 8, generator=g)
    out = fusion.pair_side(text, fusion.video_side(frames))
    # one frame: attention weight 1, so every text gets LN3(2 LN2(LN1(f))) for that video
    ln = lambda x: F.layer_norm(x, (8,))
    expected = ln(2 * ln(ln(frames[:, 0])))
    for i in range(3):
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-4)


def test_attention_sums_to_one_and_text_conditions_the_video():
    g = torch.Generator().manual_seed(2)
    fusion = XPoolFusion(8, num_heads=2)
    text, frames = torch.randn(3, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    video = fusion.video_side(frames)
    w = fusion.attention(text, video["keys"])
    assert w.shape == (3, 4, 2, 6) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 2))
    # one head, identity init: LN'd vectors all have norm sqrt(D), so a text equal to frame 0 of
    # video 0 attends most to that frame (Cauchy-Schwarz); different texts -> different v
    single = XPoolFusion(8)
    w0 = single.attention(frames[0, :1], single.video_side(frames)["keys"])
    assert w0[0, 0, 0].argmax() == 0
    out = fusion.pair_side(text, video)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_head_score_split_shapes_and_dropout_noise():
    g = torch.Generator().manual_seed(3)
    head = create_head("xpool", embed_dim=8, num_frames=4, num_heads=2)
    perturb(head, g, 0.3)
    text, frames = sentence_text(3, 8, g), torch.randn(5, 4, 8, generator=g)
    out = head.score(text, frames)
    assert out.scores.shape == (3, 5) and out.uncertainty is None
    torch.testing.assert_close(head.pair_side(text, head.video_side(frames)).scores, out.scores)
    v = reference_xpool(head.fusion, text.sentence, frames)
    torch.testing.assert_close(out.scores, F.cosine_similarity(text.sentence[:, None], v, dim=-1), atol=1e-5, rtol=1e-4)
    head.train()  # score never applies dropout, whatever the mode
    torch.testing.assert_close(head.score(text, frames).scores, out.scores)
    assert head.draw_noise(3, 5, training=False) == {}
    noise = head.draw_noise(4, 4, generator=torch.Generator().manual_seed(7), training=True)
    assert set(noise) == {"dropout"} and noise["dropout"].shape == (4, 4, 8)
    values = noise["dropout"].unique()
    assert len(values) == 2 and values[0] == 0 and torch.isclose(values[1], torch.tensor(1 / 0.7))
    tb, fb, scale = text.select(slice(0, 3)), frames[:3], torch.tensor(20.0)
    noise = head.draw_noise(3, 3, generator=torch.Generator().manual_seed(5), training=True)
    explicit = head.loss(tb, fb, logit_scale=scale, noise=noise)
    drawn = head.loss(tb, fb, logit_scale=scale, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(explicit["loss"], drawn["loss"])
    no_dropout = head.loss(tb, fb, logit_scale=scale, noise={})["loss"]
    sims = F.cosine_similarity(tb.sentence[:, None], reference_xpool(head.fusion, tb.sentence, fb), dim=-1)
    target = torch.arange(3)
    expected = 0.5 * (F.cross_entropy(scale * sims, target) + F.cross_entropy(scale * sims.t(), target))
    torch.testing.assert_close(no_dropout, expected, atol=1e-5, rtol=1e-4)


def test_loss_decreases_in_30_steps():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    head = XPoolHead(16, 4)
    text, frames = sentence_text(8, 16, g), torch.randn(8, 4, 16, generator=g)
    fixed = head.draw_noise(8, 8, generator=torch.Generator().manual_seed(9), training=True)
    scale = torch.tensor(10.0)
    first, last = losses_over_adam(head.parameters(), lambda: head.loss(text, frames, logit_scale=scale, noise=fixed)["loss"],
                                   train_loss=lambda: head.loss(text, frames, logit_scale=scale, generator=g)["loss"],
                                   lr=1e-2)
    assert last < 0.7 * first
