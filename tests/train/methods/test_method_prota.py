"""ProTA head (paper 002): equations on hand-made tensors, split, masking, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from probret.train.methods import create_head
from probret.train.methods.base import TextFeatures
from probret.train.methods.prota import ProTAHead, kl_diag, margined_ce, soft_max_pool, token_similarity

from method_features import D, T, features, losses_over_adam


def w2_diag(mu_a, std_a, mu_b, std_b):
    """The reference: 2-Wasserstein distance of N(mu_a, diag std_a^2) and N(mu_b, diag std_b^2),
    elementwise over leading dims (closed form), written plainly."""
    return ((mu_a - mu_b) ** 2 + (std_a - std_b) ** 2).sum(-1).sqrt()


def test_w2_identical_zero_closed_form_and_quantile_coupling():
    mu, std = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])
    assert w2_diag(mu, std, mu, std).item() == 0.0
    # N((0,0), diag(1,1)) vs N((3,0), diag(1,9)): sqrt(3^2 + (3 - 1)^2) = sqrt(13)
    assert w2_diag(torch.zeros(2), torch.ones(2), torch.tensor([3.0, 0.0]), torch.tensor([1.0, 3.0])).item() \
        == pytest.approx(math.sqrt(13))
    # 1-D check from the definition: W2^2 = int_0^1 (F_a^-1(q) - F_b^-1(q))^2 dq (monotone coupling)
    q = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    z = torch.special.ndtri(q)
    numeric = ((0.0 + 1.0 * z) - (3.0 + 3.0 * z)).pow(2).mean().sqrt().item()
    closed = w2_diag(torch.zeros(1), torch.ones(1), torch.tensor([3.0]), torch.tensor([3.0])).item()
    assert numeric == pytest.approx(closed, rel=1e-3)


def test_token_similarity_is_negative_w2_for_every_token_pair():
    g = torch.Generator().manual_seed(0)
    mu_t, mu_v = torch.randn(2, 3, 4, generator=g), torch.randn(5, 2, 4, generator=g)
    sd_t, sd_v = torch.rand(2, 3, 4, generator=g) + 0.1, torch.rand(5, 2, 4, generator=g) + 0.1
    sim = token_similarity(mu_t, sd_t, mu_v, sd_v)
    assert sim.shape == (2, 5, 3, 2)
    ref = -w2_diag(mu_t[:, None, :, None], sd_t[:, None, :, None], mu_v[None, :, None], sd_v[None, :, None])
    assert torch.allclose(sim, ref, atol=1e-5)
    assert token_similarity(mu_t, sd_t, mu_t, sd_t)[0, 0].diagonal().abs().max() < 1e-3  # identical: ~0


def test_soft_max_pool_eq2():
    s = torch.tensor([[-1.0, -0.2, -0.5, 7.0]])
    mask = torch.tensor([[True, True, True, False]])
    lam = 2.0
    w = [math.exp(lam * x) for x in (-1.0, -0.2, -0.5)]
    expected = sum(x * wi for x, wi in zip((-1.0, -0.2, -0.5), w)) / sum(w)
    assert soft_max_pool(s, lam, -1, mask).item() == pytest.approx(expected, rel=1e-6)  # padding ignored
    assert soft_max_pool(s[:, :3], 1e4, -1).item() == pytest.approx(-0.2)  # lambda -> inf: max
    assert soft_max_pool(s[:, :3], 0.0, -1).item() == pytest.approx(-1.7 / 3)  # lambda = 0: mean


def test_kl_zero_at_standard_normal_and_known_value():
    z, o = torch.zeros(3, 4), torch.ones(3, 4)
    assert torch.equal(kl_diag(z, o, z, o), torch.zeros(3))
    # KL(N(1, 4) || N(0, 1)) per dim = 0.5 (4 + 1 - 1 - log 4)
    assert kl_diag(torch.ones(1), torch.full((1,), 4.0), torch.zeros(1), torch.ones(1)).item() \
        == pytest.approx(0.5 * (4 - math.log(4)))


def test_adaptive_margin_definition_and_effect():
    head = create_head("prota", embed_dim=D, num_frames=T)
    mu, var = torch.randn(2, D), torch.rand(2, D) + 0.5
    same = {"mu_pool": mu, "var_pool": var}
    m_tv, m_vt = head.adaptive_margins(same, same)
    assert torch.allclose(m_tv, torch.ones(2)) and torch.allclose(m_vt, torch.ones(2))  # KL = 0 -> m = 1
    other = {"mu_pool": mu + 1.0, "var_pool": var * 2}
    m_tv, m_vt = head.adaptive_margins(same, other)
    assert torch.allclose(m_tv, torch.exp(-kl_diag(mu, var, mu + 1.0, var * 2)))  # Eq. 14, t || v
    assert torch.allclose(m_vt, torch.exp(-kl_diag(mu + 1.0, var * 2, mu, var)))  # v || t
    assert torch.all(m_tv < 1) and not torch.allclose(m_tv, m_vt)
    # Eq. 13: the positive logit is lowered by eta * m / tau, so the loss grows with the margin
    logits = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    margin = torch.tensor([0.4, 0.1])
    manual = -0.5 * (math.log(math.exp(2.6) / (math.exp(2.6) + math.exp(1.0)))
                     + math.log(math.exp(1.9) / (math.exp(0.5) + math.exp(1.9))))
    assert margined_ce(logits, margin).item() == pytest.approx(manual, rel=1e-6)
    assert margined_ce(logits, margin) > F.cross_entropy(logits, torch.arange(2))


def test_margin_weight_increases_training_loss():
    text, frames = features(4, 4)
    scale = torch.tensor(20.0)
    torch.manual_seed(0)
    a = create_head("prota", embed_dim=D, num_frames=T, margin_weight=0.0)
    b = create_head("prota", embed_dim=D, num_frames=T, margin_weight=0.5)
    b.load_state_dict(a.state_dict())
    la, lb = a.loss(text, frames, logit_scale=scale), b.loss(text, frames, logit_scale=scale)
    assert lb["contrastive"] > la["contrastive"] and torch.equal(la["kl"], lb["kl"])


def test_registry_split_rectangular_masking_and_determinism():
    head = create_head("prota", embed_dim=D, num_frames=T)
    assert isinstance(head, ProTAHead) and head.config.agg_temperature == 100.0
    assert head.draw_noise(3, 5, generator=torch.Generator().manual_seed(0)) == {}
    text, frames = features(3, 5)
    out = head.score(text, frames)
    assert out.scores.shape == (3, 5) and out.uncertainty.shape == (3, 5)
    split = head.pair_side(text, head.video_side(frames))
    assert torch.equal(out.scores, split.scores) and torch.equal(out.uncertainty, split.uncertainty)
    assert torch.equal(out.scores, head.score(text, frames).scores)
    padded = TextFeatures(text.sentence, text.tokens.clone(), text.mask)
    padded.tokens[:, 3:] = 100.0  # padding content must not matter
    assert torch.allclose(head.score(padded, frames).scores, out.scores, atol=1e-6)
    # chunking over videos gives the same scores (no gallery dependence)
    assert torch.allclose(torch.cat([head.score(text, frames[:2]).scores, head.score(text, frames[2:]).scores], 1),
                          out.scores, atol=1e-6)


def test_loss_decreases():
    torch.manual_seed(0)
    head = create_head("prota", embed_dim=D, num_frames=T)
    text, frames = features(8, 8, seed=2)
    params = [torch.nn.Parameter(x.clone()) for x in (text.sentence, text.tokens, frames)]

    def step():
        out = head.loss(TextFeatures(params[0], params[1], text.mask), params[2], logit_scale=torch.tensor(20.0))
        assert set(out) == {"loss", "contrastive", "kl", "margin"}
        return out["loss"]

    first, last = losses_over_adam(list(head.parameters()) + params, step, lr=2e-2)
    assert last < first - 0.5
