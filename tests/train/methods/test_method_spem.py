"""SPEM (paper 000, equations in spem.py): both sides Gaussian, means anchored, variance decreasing
in similarity, sampled + boundary symmetric contrastive loss, best-of-M / mean / expected scoring."""

import pytest
import torch
import torch.nn.functional as F

from probret.train.methods import DEFAULT_METHOD, TextFeatures, create_head
from probret.train.methods.base import l2n, symmetric_infonce
from probret.train.methods.spem import (SimilarityModulator, SPEMHead, boundary_cos, multi_positive_infonce,
                                        radius_prior, sample_cos)
from probret.train.methods.xpool import XPoolHead

from method_features import losses_over_adam, perturb, sentence_text


D, T = 8, 4


def _text(n, g):
    return sentence_text(n, D, g)


def _head(g, **kw):
    return perturb(create_head("spem", embed_dim=D, num_frames=T, **kw), g, 0.3)


def test_default_method_and_config():
    assert DEFAULT_METHOD == "spem"
    head = create_head("spem", embed_dim=D, num_frames=T)
    assert head.config_dict()["inference"] == "best_of_m" and head.config_dict()["alpha"] == 1.2
    assert head.config.scale_v > head.config.scale_t  # moderate video, controlled text
    with pytest.raises(ValueError):
        create_head("spem", embed_dim=D, num_frames=T, inference="median")


def test_variance_is_non_increasing_in_every_similarity():
    g = torch.Generator().manual_seed(0)
    mod = SimilarityModulator(T + 1, D, scale=0.5)
    with torch.no_grad():
        mod.a.copy_(3 * torch.randn(mod.a.shape, generator=g))  # any weights, even negative raw a
        mod.b.copy_(torch.randn(D, generator=g))
    s = 2 * torch.rand(200, T + 1, generator=g) - 1
    higher = s + torch.rand(200, T + 1, generator=g) * (torch.rand(200, T + 1, generator=g) < 0.5)
    assert (mod(higher) <= mod(s) + 1e-7).all() and (mod(s) > 0).all()
    # sorting preserves the order: S <= S' elementwise -> sort(S) <= sort(S') elementwise
    sf = torch.randn(200, T, generator=g)
    sf2 = sf + torch.rand(200, T, generator=g)
    assert (sf.sort(-1, descending=True).values <= sf2.sort(-1, descending=True).values).all()
    # scale is the relative radius at zero similarity with b = 0
    fresh = SimilarityModulator(T + 1, D, scale=0.5)
    torch.testing.assert_close(fresh(torch.zeros(1, T + 1)).norm(dim=-1), torch.tensor([0.5]))


def test_variance_grows_as_frames_turn_away_from_the_text():
    head = SPEMHead(D, T)  # fresh init: identity fusion, positive slopes
    t = torch.zeros(1, D)
    t[0, 0] = 1.0
    other = torch.zeros(D)
    other[1] = 1.0
    sigmas = []
    for angle in (0.1, 0.6, 1.2):  # frames at growing angle from the text
        f = torch.cos(torch.tensor(angle)) * t[0] + torch.sin(torch.tensor(angle)) * other
        frames = (f + 0.01 * torch.arange(D)).expand(1, T, D)
        _, _, sig_t, sig_v = head.distributions(t, head.video_side(frames))
        sigmas.append((sig_t.norm(), sig_v.norm()))
    assert sigmas[0][0] < sigmas[1][0] < sigmas[2][0] and sigmas[0][1] < sigmas[1][1] < sigmas[2][1]


def test_means_anchored_zero_noise_gives_the_means():
    g = torch.Generator().manual_seed(1)
    head = _head(g, num_samples=3)
    text, frames = _text(3, g), torch.randn(5, T, D, generator=g)
    video = head.video_side(frames)
    mu_t, mu_v, sig_t, sig_v = head.distributions(text.sentence, video)
    torch.testing.assert_close(mu_t[:, 0], l2n(text.sentence))
    torch.testing.assert_close(mu_v, l2n(head.fusion.pair_side(text.sentence, video)))
    zero = {"eps_t": torch.zeros(3, 3, D), "eps_v": torch.zeros(3, 5, D)}
    best = head.score(text, frames, noise=zero)
    head.config.inference = "mean"
    mean = head.score(text, frames)
    v = head.fusion.pair_side(text.sentence, video)
    torch.testing.assert_close(mean.scores, F.cosine_similarity(text.sentence[:, None], v, dim=-1))  # = X-Pool's
    torch.testing.assert_close(best.scores, mean.scores)
    torch.testing.assert_close(best.uncertainty, sig_t.norm(dim=-1) + sig_v.norm(dim=-1))


def test_boundary_points_lie_at_sigma_toward_the_other_mean():
    g = torch.Generator().manual_seed(2)
    mu_t, mu_v = l2n(torch.randn(3, 1, D, generator=g)), l2n(torch.randn(3, 4, D, generator=g))
    sig_t, sig_v = 0.1 * torch.rand(3, 4, D, generator=g), 0.3 * torch.rand(3, 4, D, generator=g)
    u = l2n(mu_v - mu_t)
    t_b, v_b = mu_t + sig_t * u, mu_v - sig_v * u
    torch.testing.assert_close(boundary_cos(mu_t, sig_t, mu_v, sig_v), F.cosine_similarity(t_b, v_b, dim=-1))
    torch.testing.assert_close(((t_b - mu_t) / sig_t).norm(dim=-1), torch.ones(3, 4))  # Mahalanobis 1
    iso = torch.full((3, 4, 1), 0.2)  # isotropic sigma: Euclidean distance sigma, along u
    torch.testing.assert_close((iso * u).norm(dim=-1), torch.full((3, 4), 0.2))
    assert (F.cosine_similarity(v_b - mu_v, mu_t - mu_v, dim=-1) > 0).all()


def test_losses_are_symmetric_in_the_modalities():
    g = torch.Generator().manual_seed(3)
    mu_a, mu_b = l2n(torch.randn(4, 4, D, generator=g)), l2n(torch.randn(4, 4, D, generator=g))
    s_a, s_b = torch.rand(4, 4, D, generator=g), torch.rand(4, 4, D, generator=g)
    e_a, e_b = torch.randn(4, 1, D, generator=g), torch.randn(1, 4, D, generator=g)
    sims = sample_cos(mu_a, s_a, e_a, mu_b, s_b, e_b)
    torch.testing.assert_close(sims, sample_cos(mu_b, s_b, e_b, mu_a, s_a, e_a))
    torch.testing.assert_close(boundary_cos(mu_a, s_a, mu_b, s_b), boundary_cos(mu_b, s_b, mu_a, s_a))
    # video as "text" and text as "video": the pair axes swap, the symmetric loss does not change
    tr = lambda x: x.transpose(0, 1)
    swapped = sample_cos(tr(mu_b), tr(s_b), tr(e_b), tr(mu_a), tr(s_a), tr(e_a))
    torch.testing.assert_close(swapped, sims.t())
    torch.testing.assert_close(symmetric_infonce(10 * swapped), symmetric_infonce(10 * sims))
    bnd = boundary_cos(mu_a, s_a, mu_b, s_b)
    torch.testing.assert_close(symmetric_infonce(10 * tr(boundary_cos(tr(mu_b), tr(s_b), tr(mu_a), tr(s_a)))),
                               symmetric_infonce(10 * bnd))


def test_loss_matches_equations_and_reduces_to_xpool_without_variance():
    g = torch.Generator().manual_seed(4)
    head = _head(g, alpha=1.2)
    b, scale = 3, torch.tensor(12.0)
    text, frames = _text(b, g), torch.randn(b, T, D, generator=g)
    noise = head.draw_noise(b, b, generator=g, training=True)
    assert noise["eps_t"].shape == noise["eps_v"].shape == (1, b, D) and noise["dropout"].shape == (b, b, D)
    out = head.loss(text, frames, logit_scale=scale, noise=noise)
    mu_t, mu_v, sig_t, sig_v = head.distributions(text.sentence, head.video_side(frames), noise["dropout"])
    s_s, s_b = torch.empty(b, b), torch.empty(b, b)
    for i in range(b):
        for j in range(b):
            t_s = mu_t[i, 0] + sig_t[i, j] * noise["eps_t"][0, i]
            v_s = mu_v[i, j] + sig_v[i, j] * noise["eps_v"][0, j]
            s_s[i, j] = F.cosine_similarity(t_s, v_s, dim=0)
            u = (mu_v[i, j] - mu_t[i, 0]) / (mu_v[i, j] - mu_t[i, 0]).norm()
            s_b[i, j] = F.cosine_similarity(mu_t[i, 0] + sig_t[i, j] * u, mu_v[i, j] - sig_v[i, j] * u, dim=0)
    ce = lambda s: 0.5 * (F.cross_entropy(scale * s, torch.arange(b)) + F.cross_entropy(scale * s.t(), torch.arange(b)))
    torch.testing.assert_close(out["loss_sample"], ce(s_s), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["loss_boundary"], ce(s_b), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["loss"], ce(s_s) + 1.2 * ce(s_b), atol=1e-5, rtol=1e-4)
    # zero variance: both terms are X-Pool's loss, so L = (1 + alpha) * L_xpool
    flat = SPEMHead(D, T, SPEMHead.Config(scale_t=0.0, scale_v=0.0))
    xpool = XPoolHead(D, T)
    xpool.fusion.load_state_dict(head.fusion.state_dict())
    flat.fusion.load_state_dict(head.fusion.state_dict())
    l_xpool = xpool.loss(text, frames, logit_scale=scale, noise={"dropout": noise["dropout"]})["loss"]
    torch.testing.assert_close(flat.loss(text, frames, logit_scale=scale, noise=noise)["loss"], 2.2 * l_xpool)


def test_gradients_reach_the_modulators_and_the_fusion():
    g = torch.Generator().manual_seed(5)
    head = _head(g)
    text, frames = _text(4, g), torch.randn(4, T, D, generator=g)
    head.loss(text, frames, logit_scale=torch.tensor(10.0), generator=g)["loss"].backward()
    for name in ("sigma_t.a", "sigma_t.b", "sigma_v.a", "sigma_v.b", "fusion.q_proj.weight", "fusion.k_proj.weight"):
        grad = dict(head.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_score_best_of_m_expected_split_and_determinism():
    g = torch.Generator().manual_seed(6)
    head = _head(g, num_samples=6)
    text, frames = _text(3, g), torch.randn(5, T, D, generator=g)  # N_t != N_v
    noise = head.draw_noise(3, 5, generator=torch.Generator().manual_seed(8))
    assert noise["eps_t"].shape == (6, 3, D) and noise["eps_v"].shape == (6, 5, D)
    assert "dropout" not in noise
    out = head.score(text, frames, generator=torch.Generator().manual_seed(8))
    assert out.scores.shape == (3, 5) and out.uncertainty.shape == (3, 5) and (out.uncertainty > 0).all()
    torch.testing.assert_close(head.score(text, frames, noise=noise).scores, out.scores)  # explicit == drawn
    torch.testing.assert_close(head.pair_side(text, head.video_side(frames), noise=noise).scores, out.scores)
    head.train()  # no dropout at scoring
    torch.testing.assert_close(head.score(text, frames, noise=noise).scores, out.scores)
    # reference: materialise every sample, pair the m-th text sample with the m-th video sample
    mu_t, mu_v, sig_t, sig_v = head.distributions(text.sentence, head.video_side(frames))
    t_s = mu_t[None] + sig_t[None] * noise["eps_t"][:, :, None]  # (M, N_t, N_v, D)
    v_s = mu_v[None] + sig_v[None] * noise["eps_v"][:, None]
    ref = F.cosine_similarity(t_s, v_s, dim=-1)
    torch.testing.assert_close(out.scores, ref.amax(0), atol=1e-5, rtol=1e-4)
    single = head.score(text, frames, noise={k: v[:1] for k, v in noise.items()}).scores
    assert (out.scores >= single - 1e-6).all()  # best of M >= one sample
    head.config.inference = "expected"
    expected = head.score(text, frames, noise=noise).scores
    torch.testing.assert_close(expected, ref.mean(0), atol=1e-5, rtol=1e-4)
    assert (out.scores >= expected - 1e-6).all()


def test_loss_decreases_in_30_steps():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    head = SPEMHead(16, T)
    text = TextFeatures(torch.randn(8, 16, generator=g), torch.zeros(8, 1, 16), torch.ones(8, 1, dtype=torch.bool))
    frames = torch.randn(8, T, 16, generator=g)
    fixed = head.draw_noise(8, 8, generator=torch.Generator().manual_seed(9), training=True)
    scale = torch.tensor(10.0)
    first, last = losses_over_adam(head.parameters(), lambda: head.loss(text, frames, logit_scale=scale, noise=fixed)["loss"],
                                   train_loss=lambda: head.loss(text, frames, logit_scale=scale, generator=g)["loss"],
                                   lr=1e-2)
    assert last < 0.7 * first


# -- the hypotheses of issue 11 section 2, as options ------------------------------------------------

def test_full_spread_boundary_moves_the_sample_radius_far_for_positives_near_for_negatives():
    g = torch.Generator().manual_seed(20)
    mu_t, mu_v = l2n(torch.randn(3, 1, D, generator=g)), l2n(torch.randn(3, 3, D, generator=g))
    sig_t, sig_v = 0.2 * torch.rand(3, 3, D, generator=g), 0.5 * torch.rand(3, 3, D, generator=g)
    u = l2n(mu_v - mu_t)
    r_t, r_v = sig_t.norm(dim=-1, keepdim=True), sig_v.norm(dim=-1, keepdim=True)
    meet = ((mu_v - mu_t).norm(dim=-1, keepdim=True) / (r_t + r_v)).clamp(max=1)  # stop where they meet
    near = F.cosine_similarity(mu_t + meet * r_t * u, mu_v - meet * r_v * u, dim=-1)
    far = F.cosine_similarity(mu_t - r_t * u, mu_v + r_v * u, dim=-1)
    torch.testing.assert_close(boundary_cos(mu_t, sig_t, mu_v, sig_v, spread="full"), near)
    side = 1.0 - 2.0 * torch.eye(3)  # -1 (apart) on the diagonal
    mixed = boundary_cos(mu_t, sig_t, mu_v, sig_v, spread="full", side=side)
    torch.testing.assert_close(mixed, torch.where(torch.eye(3, dtype=torch.bool), far, near))
    # the full radius moves sqrt(D) times further than the per-dimension point of an isotropic sigma
    iso = torch.full((3, 3, D), 0.05)
    step_dim = ((mu_t + iso * u) - mu_t).norm(dim=-1)
    torch.testing.assert_close(step_dim * D ** 0.5, iso.norm(dim=-1))
    # the margin grows with uncertainty: wider sigmas, lower far cosine, higher near cosine
    wide = boundary_cos(mu_t, 2 * sig_t, mu_v, 2 * sig_v, spread="full", side=side)
    diag = torch.eye(3, dtype=torch.bool)
    assert (wide[diag] < mixed[diag]).all() and (wide[~diag] >= mixed[~diag] - 1e-6).all()
    # overlapping radii meet: the near points coincide up to the means' norms (cos 1)
    huge = boundary_cos(mu_t, 10 * sig_t, mu_v, 10 * sig_v, spread="full")
    torch.testing.assert_close(huge, torch.ones(3, 3))


def test_margin_boundary_loss_uses_far_positives_and_near_negatives():
    g = torch.Generator().manual_seed(21)
    head = _head(g, boundary="margin")
    b, scale = 4, torch.tensor(10.0)
    text, frames = _text(b, g), torch.randn(b, T, D, generator=g)
    noise = head.draw_noise(b, b, generator=g, training=True)
    out = head.loss(text, frames, logit_scale=scale, noise=noise)
    mu_t, mu_v, sig_t, sig_v = head.distributions(text.sentence, head.video_side(frames), noise["dropout"])
    side = 1.0 - 2.0 * torch.eye(b)
    ref = symmetric_infonce(scale * boundary_cos(mu_t, sig_t, mu_v, sig_v, spread="full", side=side))
    torch.testing.assert_close(out["loss_boundary"], ref)
    with pytest.raises(ValueError, match="boundary"):
        create_head("spem", embed_dim=D, num_frames=T, boundary="sideways")


def test_content_terms_start_off_and_make_the_variance_depend_on_the_caption():
    g = torch.Generator().manual_seed(22)
    torch.manual_seed(0)
    plain = SPEMHead(D, T)
    torch.manual_seed(0)
    content = SPEMHead(D, T, SPEMHead.Config(content=True))
    text, frames = _text(3, g), torch.randn(5, T, D, generator=g)
    noise = plain.draw_noise(3, 5, generator=torch.Generator().manual_seed(1))
    a, b = plain.score(text, frames, noise=noise), content.score(text, frames, noise=noise)
    torch.testing.assert_close(a.scores, b.scores)  # zero-initialised: the poster's model at start
    torch.testing.assert_close(a.uncertainty, b.uncertainty)
    with torch.no_grad():
        content.content_t.weight.normal_(generator=g)
        content.content_v.weight.normal_(generator=g)
    # two captions with the same direction cosines to every frame but different content get
    # different text variances: the text feature itself now moves sigma_t
    _, _, sig_t, sig_v = content.distributions(text.sentence, content.video_side(frames))
    _, _, sig_t0, _ = plain.distributions(text.sentence, plain.video_side(frames))
    ratio = (sig_t / sig_t0)[:, 0]  # exp(content_t(mu_t)): one factor per caption, whatever the video
    torch.testing.assert_close((sig_t / sig_t0), ratio[:, None].expand_as(sig_t))
    assert not torch.allclose(ratio[0], ratio[1])
    # still non-increasing in every similarity with the content offset held fixed
    mod = content.sigma_v
    s = torch.rand(50, T + 1, generator=g)
    c = torch.randn(50, D, generator=g)
    assert (mod(s + 0.1, c) <= mod(s, c)).all()


def test_multi_positive_infonce_and_radius_prior():
    g = torch.Generator().manual_seed(23)
    logits = 5 * torch.randn(4, 4, generator=g)
    eye = torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(multi_positive_infonce(logits, eye), symmetric_infonce(logits))
    both = eye.clone()
    both[0, 1] = True  # caption 0 also describes video 1
    row0 = torch.logsumexp(logits[0], 0) - torch.logsumexp(logits[0, :2], 0)
    col1 = torch.logsumexp(logits[:, 1], 0) - torch.logsumexp(logits[:2, 1], 0)
    rows = torch.stack([row0] + [torch.logsumexp(logits[i], 0) - logits[i, i] for i in (1, 2, 3)])
    cols = torch.stack([torch.logsumexp(logits[:, 0], 0) - logits[0, 0], col1]
                       + [torch.logsumexp(logits[:, j], 0) - logits[j, j] for j in (2, 3)])
    torch.testing.assert_close(multi_positive_infonce(logits, both), 0.5 * (rows.mean() + cols.mean()))
    head = _head(g)
    text, frames = _text(4, g), torch.randn(4, T, D, generator=g)
    noise = head.draw_noise(4, 4, generator=g, training=True)
    assert head.loss(text, frames, logit_scale=torch.tensor(10.0), noise=noise, positives=both)["loss"].isfinite()
    r = torch.tensor([0.05, 0.1, 0.2])
    torch.testing.assert_close(radius_prior(r[1:2], 0.1), torch.tensor(0.0))  # minimum at the scale
    assert radius_prior(r[:1], 0.1) > 0 and radius_prior(r[2:], 0.1) > 0


def test_item_variance_is_one_radius_per_caption_and_per_clip():
    g = torch.Generator().manual_seed(31)
    torch.manual_seed(0)
    head = SPEMHead(D, T, SPEMHead.Config(variance="item", scale_t=0.4, scale_v=0.3))
    text, frames = _text(3, g), torch.randn(5, T, D, generator=g)
    out = head.score(text, frames, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.uncertainty, torch.full((3, 5), 0.7))  # zero last layer: r = scale
    with torch.no_grad():
        for mod in (head.radius_t, head.radius_v):
            mod.mlp[-1].weight.normal_(generator=g)
    unc = head.score(text, frames, generator=torch.Generator().manual_seed(1)).uncertainty
    # additive: u_ij = r_t(i) + r_v(j), whatever the pair's similarity
    r_t, r_v = unc[:, :1] - unc[:1, :1] / 2, unc[:1, :] - unc[:1, :1] / 2
    torch.testing.assert_close(unc, r_t + r_v)
    assert unc.std() > 0
    with pytest.raises(ValueError, match="variance"):
        SPEMHead(D, T, SPEMHead.Config(variance="per-pixel"))
    with pytest.raises(ValueError, match="content"):
        SPEMHead(D, T, SPEMHead.Config(variance="item", content=True))


def test_item_text_radius_learns_which_captions_are_hard():
    """The expected-cosine loss is heteroscedastic in the caption's radius: a wider text Gaussian
    shrinks every logit of that caption (cos(mu_t, mu_v) / sqrt(1 + r_t^2)), which pays where the
    caption's positive cannot be ranked first and costs where it can. Half of each batch's captions
    are fresh noise around one direction (a recognisable "kind" of caption that describes nothing,
    so it cannot be memorised); their radii must end up wider than the describing captions'."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    n, d, b = 64, 16, 32
    frames = torch.randn(n, T, d, generator=g)
    kind = torch.randn(1, d, generator=g)
    hard = torch.arange(b) % 2 == 1
    head = SPEMHead(d, T, SPEMHead.Config(variance="item", scale_t=0.5, dropout=0.0, alpha=0.0))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)

    def captions(idx):
        describing = l2n(frames[idx].mean(1)) + 0.05 * torch.randn(b, d, generator=g)
        return torch.where(hard[:, None], kind + 0.3 * torch.randn(b, d, generator=g), describing)

    for _ in range(200):
        idx = torch.randperm(n, generator=g)[:b]
        text = TextFeatures(captions(idx), torch.zeros(b, 1, d), torch.ones(b, 1, dtype=torch.bool))
        loss = head.loss(text, frames[idx], logit_scale=torch.tensor(20.0), generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        r_t = head.radius_t(l2n(captions(torch.arange(b)))[:, None])[:, 0, 0] * d ** 0.5
    assert r_t[hard].mean() > 1.5 * r_t[~hard].mean()
