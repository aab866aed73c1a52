"""T-MASS (paper 001): radius Eqs. 6-7, stochastic text Eq. 5, support vector Eq. 8, loss Eq. 9,
best-of-M inference Eq. 10; priors; noise as an argument."""

import pytest
import torch
import torch.nn.functional as F

from probret.train.methods import TextFeatures, create_head
from probret.train.methods.base import l2n
from probret.train.methods.tmass import TMassHead, sample_cos, support_vector

from method_features import losses_over_adam, perturb, sentence_text


D, T = 8, 4


def _text(n, g):
    return sentence_text(n, D, g)


def _head(g, **kw):
    return perturb(create_head("tmass", embed_dim=D, num_frames=T, **kw), g, 0.2)


def test_radius_shapes_and_identity_init():
    g = torch.Generator().manual_seed(0)
    text, frames = _text(3, g), torch.randn(5, T, D, generator=g)
    fresh = TMassHead(D, T)
    r = fresh.radius(text.sentence, l2n(frames))
    s = torch.einsum("ad,ntd->ant", l2n(text.sentence), l2n(frames))  # Eq. 6
    assert r.shape == (3, 5, D)
    torch.testing.assert_close(r[..., :T].log(), s)  # identity init: log R_d = S_d for d < T'
    torch.testing.assert_close(r[..., T:], torch.ones(3, 5, D - T))
    scalar = TMassHead(D, T, TMassHead.Config(radius="scalar"))
    with torch.no_grad():
        scalar.theta.fill_(1.7)
    rs = scalar.radius(text.sentence, l2n(frames))
    assert rs.shape == (3, 5, D)
    torch.testing.assert_close(rs, (1.7 * s.mean(-1, keepdim=True)).exp().expand(3, 5, D))
    with pytest.raises(ValueError):
        TMassHead(D, T, TMassHead.Config(radius="cubic"))


def test_support_vector_lies_at_distance_r_toward_v():
    g = torch.Generator().manual_seed(1)
    t, v = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g)
    r = torch.rand(4, 1, generator=g) + 0.1  # scalar radius per pair
    sup = support_vector(t, r, v)
    torch.testing.assert_close((sup - t).norm(dim=-1), r[:, 0])
    torch.testing.assert_close(F.cosine_similarity(sup - t, v - t, dim=-1), torch.ones(4))
    rd = torch.rand(4, D, generator=g)  # per-dimension radius: t_sup - t = R * unit(v - t)
    torch.testing.assert_close(support_vector(t, rd, v) - t, rd * (v - t) / (v - t).norm(dim=-1, keepdim=True))


def test_sample_cos_matches_materialised_samples():
    g = torch.Generator().manual_seed(2)
    t, r, v = torch.randn(3, D, generator=g), torch.rand(3, 5, D, generator=g), torch.randn(3, 5, D, generator=g)
    eps = torch.randn(6, 3, D, generator=g)
    samples = t[None, :, None] + r[None] * eps[:, :, None]  # (M, N_t, N_v, D)
    torch.testing.assert_close(sample_cos(t, r, eps, v), F.cosine_similarity(samples, v[None], dim=-1),
                               atol=1e-5, rtol=1e-4)


def test_priors_and_noise_shapes():
    head = TMassHead(D, T)
    g = torch.Generator().manual_seed(3)
    eps = head.draw_noise(2000, 3, generator=g)["eps"]
    assert eps.shape == (20, 2000, D)
    assert eps.min() >= 0 and eps.max() < 1  # official uniform01
    assert abs(eps.mean().item() - 0.5) < 0.01 and abs(eps.var().item() - 1 / 12) < 0.005
    train = head.draw_noise(4, 6, generator=g, training=True)
    assert train["eps"].shape == (1, 4, D) and train["dropout"].shape == (4, 6, D)
    gauss = TMassHead(D, T, TMassHead.Config(prior="gaussian", prior_std=2.0, num_samples=5))
    eps = gauss.draw_noise(4000, 3, generator=g)["eps"]
    assert eps.shape == (5, 4000, D)
    assert abs(eps.mean().item()) < 0.03 and abs(eps.std().item() - 2.0) < 0.03
    assert TMassHead(D, T, TMassHead.Config(inference="mean")).draw_noise(2, 3) == {}


def test_score_is_best_of_m_per_pair_and_deterministic():
    g = torch.Generator().manual_seed(4)
    head = _head(g, num_samples=7)
    text, frames = _text(3, g), torch.randn(5, T, D, generator=g)  # N_t != N_v
    out = head.score(text, frames, generator=torch.Generator().manual_seed(11))
    assert out.scores.shape == (3, 5) and out.uncertainty.shape == (3, 5)
    noise = head.draw_noise(3, 5, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(head.score(text, frames, noise=noise).scores, out.scores)  # explicit == drawn
    torch.testing.assert_close(head.score(text, frames, generator=torch.Generator().manual_seed(11)).scores,
                               out.scores)  # same seed, same scores
    video = head.video_side(frames)
    torch.testing.assert_close(head.pair_side(text, video, noise=noise).scores, out.scores)  # split
    # Eq. 10 written out: per pair, t_s^m = t + R * eps^m, keep the most similar to v
    v = head.fusion.pair_side(text.sentence, video)
    r = head.radius(text.sentence, l2n(frames))
    for i in range(3):
        for j in range(5):
            best = max(F.cosine_similarity(text.sentence[i] + r[i, j] * noise["eps"][m, i], v[i, j], dim=0)
                       for m in range(7))
            torch.testing.assert_close(out.scores[i, j], best, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.uncertainty, r.mean(-1))
    single = head.score(text, frames, noise={"eps": noise["eps"][:1]}).scores
    assert (out.scores >= single - 1e-6).all()  # best of M >= one sample


def test_small_radius_gives_deterministic_text():
    g = torch.Generator().manual_seed(5)
    head = _head(g)
    with torch.no_grad():
        head.radius_proj.weight.zero_()
        head.radius_proj.bias.fill_(-20.0)  # R ~ 2e-9
    text, frames = _text(3, g), torch.randn(4, T, D, generator=g)
    best = head.score(text, frames, generator=g).scores
    head.config.inference = "mean"
    mean = head.score(text, frames).scores
    v = head.fusion.pair_side(text.sentence, head.video_side(frames))
    torch.testing.assert_close(mean, F.cosine_similarity(text.sentence[:, None], v, dim=-1))
    torch.testing.assert_close(best, mean, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("train_radius", ["positive", "pair"])
def test_loss_matches_equations(train_radius):
    g = torch.Generator().manual_seed(6)
    head = _head(g, train_radius=train_radius, alpha=1.2)
    b = 3
    text, frames = _text(b, g), torch.randn(b, T, D, generator=g)
    noise = head.draw_noise(b, b, generator=g, training=True)
    scale = torch.tensor(15.0)
    out = head.loss(text, frames, logit_scale=scale, noise=noise)
    t, eps = text.sentence, noise["eps"][0]
    v = head.fusion.pair_side(t, head.video_side(frames), noise["dropout"])
    r = head.radius(t, l2n(frames))
    s_s, s_sup = torch.empty(b, b), torch.empty(b, b)
    for i in range(b):
        for j in range(b):
            k = i if train_radius == "positive" else j  # which pair shapes text i's mass
            t_s = t[i] + r[i, k] * eps[i]
            t_sup = t[i] + r[i, k] * (v[i, k] - t[i]) / (v[i, k] - t[i]).norm()
            s_s[i, j] = F.cosine_similarity(t_s, v[i, j], dim=0)
            s_sup[i, j] = F.cosine_similarity(t_sup, v[i, j], dim=0)
    ce = lambda s: 0.5 * (F.cross_entropy(scale * s, torch.arange(b)) + F.cross_entropy(scale * s.t(), torch.arange(b)))
    torch.testing.assert_close(out["loss_sample"], ce(s_s), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["loss_support"], ce(s_sup), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["loss"], ce(s_s) + 1.2 * ce(s_sup), atol=1e-5, rtol=1e-4)
    noise = head.draw_noise(b, b, generator=torch.Generator().manual_seed(1), training=True)
    again = head.loss(text, frames, logit_scale=scale, noise=noise)
    drawn = head.loss(text, frames, logit_scale=scale, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again["loss"], drawn["loss"])


@pytest.mark.parametrize("radius", ["linear", "scalar"])
def test_loss_decreases_in_30_steps(radius):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    head = TMassHead(16, T, TMassHead.Config(radius=radius))
    text = TextFeatures(torch.randn(8, 16, generator=g), torch.zeros(8, 1, 16), torch.ones(8, 1, dtype=torch.bool))
    frames = torch.randn(8, T, 16, generator=g)
    fixed = head.draw_noise(8, 8, generator=torch.Generator().manual_seed(9), training=True)
    scale = torch.tensor(10.0)
    first, last = losses_over_adam(head.parameters(), lambda: head.loss(text, frames, logit_scale=scale, noise=fixed)["loss"],
                                   train_loss=lambda: head.loss(text, frames, logit_scale=scale, generator=g)["loss"],
                                   lr=1e-2)
    assert last < 0.7 * first
