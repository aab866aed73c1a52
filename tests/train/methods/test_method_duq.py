"""DUQ head (paper 003): equations on hand-made tensors, noise contract, split, training."""

import math

import pytest
import torch

from probret.train.methods import create_head
from probret.train.methods.base import TextFeatures
from probret.train.methods.duq import (
    DUQHead,
    distance_loss_paper,
    duq_distance,
    evidential_loss,
    evidential_uncertainty,
    kl_to_standard_normal,
    rerank,
    sample_distances,
)

from method_features import D, T, features, losses_over_adam


def test_evidential_loss_hand_computed_2x2():
    s = torch.tensor([[0.8, 0.2], [-0.1, 0.5]])

    # Eq. 5 written out with Dirichlet moments, row by row (and column by column).
    def row_loss(alphas, y):
        total = sum(alphas)
        out = 0.0
        for a, yy in zip(alphas, y):
            mean = a / total
            var = a * (total - a) / (total**2 * (total + 1))
            out += yy**2 - 2 * yy * mean + var + mean**2
        return out

    alpha = [[1.8, 1.2], [1.0, 1.5]]  # ReLU(s) + 1
    rows = row_loss(alpha[0], [1, 0]) + row_loss(alpha[1], [0, 1])
    cols = row_loss([1.8, 1.0], [1, 0]) + row_loss([1.2, 1.5], [0, 1])
    expected = (rows + cols) / 2  # Eq. 7: 1/B (sum_i L_i + sum_j L_j)
    assert expected == pytest.approx(0.9008062, abs=1e-6)  # by hand: (0.44 + 0.457143 + 0.375940 + 0.528529) / 2
    assert evidential_loss(s, torch.eye(2)).item() == pytest.approx(expected, abs=1e-6)
    # Eq. 13: same machinery on a distance matrix with labels 1 - I
    dd = torch.tensor([[0.1, 1.5], [0.9, 0.0]])
    exp_d = (row_loss([1.1, 2.5], [0, 1]) + row_loss([1.9, 1.0], [1, 0])
             + row_loss([1.1, 1.9], [0, 1]) + row_loss([2.5, 1.0], [1, 0])) / 2
    assert evidential_loss(dd, 1 - torch.eye(2)).item() == pytest.approx(exp_d, abs=1e-6)


def test_evidential_uncertainty_is_classes_over_strength():
    u = evidential_uncertainty(torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]))
    assert u.tolist() == pytest.approx([3 / 5.5, 1.0])


def test_min_for_positives_max_for_negatives_from_each_candidates_own_samples():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    zt = torch.stack([torch.stack([e0, e1]), torch.stack([e1, -e0])])  # (2 texts, K=2, D=2)
    zv = torch.stack([torch.stack([e0, e0]), torch.stack([-e0, e1])])  # (2 videos, K=2, D=2)
    dist = sample_distances(zt, zv)  # 1 - cos
    assert dist[0, 1].tolist() == [[2.0, 1.0], [1.0, 0.0]]
    d = duq_distance(dist, torch.eye(2, dtype=torch.bool))
    assert d[0, 0] == 0.0  # text 0 vs video 0: min (e0 . e0)
    assert d[1, 1] == 0.0  # text 1 vs video 1: min (e1 . e1)
    assert d[0, 1] == 2.0  # text 0 vs video 1's OWN samples: max (e0 vs -e0)
    assert d[1, 0] == 2.0  # text 1 (-e0) vs video 0's samples (e0)
    # comparing text 0 with video 0's samples instead would give max 1.0, not 2.0
    assert dist[0, 0].max() == 1.0
    assert torch.equal(duq_distance(dist), dist.flatten(2).amin(-1))  # inference: min everywhere


def test_eq16_rerank_values_and_t2v_order_flip():
    s = torch.tensor([[0.6, 0.5]])
    d = torch.tensor([[0.9, 0.1]])
    out, u_s, u_d = rerank(s, d, 0.1, 0.1, shifted=False)
    us, ud = 2 / (1.6 + 1.5), 2 / (1.9 + 1.1)
    expected = [math.exp(-0.1 * ud) * (1 - dd) * math.exp(-0.1 * us) * ss for ss, dd in ((0.6, 0.9), (0.5, 0.1))]
    assert out[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert u_s[0].tolist() == pytest.approx([us, us]) and u_d[0].tolist() == pytest.approx([ud, ud])
    assert s.argmax() == 0 and out.argmax() == 1  # the near distance wins


def test_eq16_similarity_uncertainty_reorders_texts_for_a_video():
    # text 0 has strong evidence overall (low u_s), text 1 weak (high u_s); same distances
    s = torch.tensor([[0.50, 0.9], [0.51, -1.0]])
    d = torch.full((2, 2), 0.2)
    out, u_s, _ = rerank(s, d, 0.1, 0.1, shifted=False)
    assert u_s[0, 0] < u_s[1, 0]
    assert s[:, 0].argmax() == 1 and out[:, 0].argmax() == 0  # v2t order flips
    assert out[0].argmax() == s[0].argmax() and out[1].argmax() == s[1].argmax()  # t2v per row unchanged


def test_eq16_as_printed_ranks_a_double_negative_first_and_the_shifted_form_does_not():
    # one query: a true match (s = 0.3, 1 - d = 0.6) and a hard negative the evidential loss pushed
    # below zero on both signals (s = -0.5, 1 - d = -0.5)
    s = torch.tensor([[0.3, -0.5]])
    d = torch.tensor([[0.4, 1.5]])
    printed, _, _ = rerank(s, d, 0.1, 0.1, shifted=False)
    assert printed.argmax() == 1  # the bug: (-0.5) * (-0.5) > 0.3 * 0.6
    fixed, _, _ = rerank(s, d, 0.1, 0.1)
    assert fixed.argmax() == 0
    # the shifted form is increasing in s and decreasing in d over the whole cosine range
    g = torch.Generator().manual_seed(0)
    s = 2 * torch.rand(1, 400, generator=g) - 1
    d = 2 * torch.rand(1, 400, generator=g)
    base, _, _ = rerank(s, d, 0.1, 0.1)
    u = lambda m: (m.shape[1] / (torch.relu(m) + 1).sum()).item()  # Eq. 3 of the row, held fixed below
    f = lambda ss, dd: math.exp(-0.1 * u(d)) * (1 - dd / 2) * math.exp(-0.1 * u(s)) * (1 + ss) / 2
    torch.testing.assert_close(base, f(s, d))
    assert (f(s + 0.1, d) >= f(s, d)).all() and (f(s, d + 0.1) <= f(s, d)).all()
    with pytest.raises(ValueError, match="rerank"):
        DUQHead(8, 4, DUQHead.Config(rerank="median"))


def test_distance_loss_as_printed_and_kl_zero_at_prior():
    d = torch.tensor([[0.0, 1.0], [2.0, 0.5]])
    lam = 2.0
    r0 = math.log(1 / (1 + math.exp(2.0)))  # row 0: log e^0 / (e^0 + e^2)
    r1 = math.log(math.exp(1.0) / (math.exp(4.0) + math.exp(1.0)))
    c0 = math.log(1 / (1 + math.exp(4.0)))
    c1 = math.log(math.exp(1.0) / (math.exp(2.0) + math.exp(1.0)))
    assert distance_loss_paper(d, lam).item() == pytest.approx(0.5 * ((r0 + r1) / 2 + (c0 + c1) / 2), rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    assert kl_to_standard_normal(torch.ones(1, 4), torch.zeros(1, 4)).item() == pytest.approx(2.0)


def test_registry_and_split_equals_score_and_rectangular():
    head = create_head("duq", embed_dim=D, num_frames=T)
    assert isinstance(head, DUQHead) and head.config.num_samples == 7
    text, frames = features(3, 5)
    noise = head.draw_noise(3, 5, generator=torch.Generator().manual_seed(1))
    assert noise["text"].shape == (3, 7, D) and noise["video"].shape == (5, 7, D) and "dropout" not in noise
    out = head.score(text, frames, noise=noise)
    assert out.scores.shape == (3, 5) and out.uncertainty.shape == (3, 5)
    split = head.pair_side(text, head.video_side(frames), noise=noise)
    assert torch.allclose(out.scores, split.scores) and torch.allclose(out.uncertainty, split.uncertainty)


def test_noise_determinism():
    head = create_head("duq", embed_dim=D, num_frames=T)
    text, frames = features(4, 4)
    a = head.score(text, frames, generator=torch.Generator().manual_seed(7)).scores
    b = head.score(text, frames, generator=torch.Generator().manual_seed(7)).scores
    c = head.score(text, frames, noise=head.draw_noise(4, 4, generator=torch.Generator().manual_seed(7))).scores
    assert torch.equal(a, b) and torch.equal(a, c)
    scale = torch.tensor(100.0)
    la = head.loss(text, frames, logit_scale=scale, generator=torch.Generator().manual_seed(3))
    nz = head.draw_noise(4, 4, generator=torch.Generator().manual_seed(3), training=True)
    assert "dropout" in nz
    lb = head.loss(text, frames, logit_scale=scale, noise=nz)
    assert torch.equal(la["loss"], lb["loss"])


@pytest.mark.parametrize("distance_loss", ["paper", "infonce"])
def test_loss_decreases(distance_loss):
    torch.manual_seed(0)
    head = create_head("duq", embed_dim=D, num_frames=T, distance_loss=distance_loss)
    text, frames = features(8, 8, seed=2)
    params = [torch.nn.Parameter(x.clone()) for x in (text.sentence, text.tokens, frames)]
    noise = head.draw_noise(8, 8, generator=torch.Generator().manual_seed(0), training=True)
    scale = torch.tensor(20.0)

    def step():
        out = head.loss(TextFeatures(params[0], params[1], text.mask), params[2], logit_scale=scale, noise=noise)
        assert set(out) == {"loss", "sim", "sim_evidential", "dist", "dist_evidential", "kl"}
        return out["loss"]

    first, last = losses_over_adam(list(head.parameters()) + params, step, lr=2e-2)
    assert last < first - 0.5
