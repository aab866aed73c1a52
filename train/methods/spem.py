"""SPEM: similarity-aware probabilistic embeddings, video AND text as Gaussians (Huang et al., poster;
paper 000). The poster gives the four modules but no equations; the equations below are ours, built
from T-MASS (paper 001), whose numbers we cite, and every gap is resolved in the list that follows.

Cross-modal attentive fusion ("query-guided transformer"): X-Pool (xpool.py), v = v_{t,v}.
Distribution projection (means anchored to the deterministic features), per (text, video) pair:
    mu_t = t / |t|,   mu_v = v_{t,v} / |v_{t,v}|
Similarity-guided variance adaptation (cf. T-MASS Eqs. 6-7), separately for each modality m:
    s      = [sort_desc(S_1..S_T'), s_v],  S_i = cos(t, f_i) (frame level), s_v = cos(t, v) (video level)
    sigma_m = scale_m / sqrt(D) * exp(b_m - softplus(A_m) s)        A_m: D x (T'+1), b_m: D
Sampled and boundary embeddings (cf. T-MASS Eqs. 5, 8), u = (mu_v - mu_t) / |mu_v - mu_t|:
    t_s = mu_t + sigma_t * eps_t,      v_s = mu_v + sigma_v * eps_v,      eps ~ N(0, I)
    t_b = mu_t + sigma_t * u,          v_b = mu_v - sigma_v * u           (each toward the other mean)
Semantic distribution contrastive loss (cf. T-MASS Eq. 9):
    L = InfoNCE_sym(logit_scale * cos(t_s, v_s)) + alpha * InfoNCE_sym(logit_scale * cos(t_b, v_b))
Inference (cf. T-MASS Eq. 10), M samples per side, the m-th text sample paired with the m-th video one:
    best_of_m: max_m cos(t_s^m, v_s^m)   |   mean: cos(mu_t, mu_v)   |   expected: mean_m cos(t_s^m, v_s^m)
    uncertainty = |sigma_t| + |sigma_v|  (expected noise radii relative to the unit-norm means)

Options for issue 11's hypotheses (off by default; validation ablations in
docs/methods_uncertainty.md, "Ablations": none beat the poster's defaults beyond noise, so the
defaults stay the poster's):
  * boundary="toward_full" / "margin": boundary points at the full radius |sigma| along u (stopping
    where they meet); "margin" takes positives' farthest and negatives' nearest points, so the
    required gap grows with the radii; pair it with width_weight > 0 (``radius_prior``).
  * content=True: log sigma_t += C_t mu_t, log sigma_v += C_v [g/|g|, 1 - |g|], g = mean unit frame;
    C zero-initialised; monotonicity in s is kept.
  * loss(positives=...): multi-positive InfoNCE over the match sets (``multi_positive_infonce``).
  * variance="item" (issue 11's "variances that depend on content ... with a per-query
    uncertainty"): one isotropic radius per caption and one per clip, from the item alone,
        r_t = scale_t exp(MLP_t(mu_t)),   r_v = scale_v exp(MLP_v([g/|g|, 1 - |g|])),   sigma = r / sqrt(D)
    (last layers zero, so r = scale at start). Why: with pair variances every sigma is a function
    of the pair's own T'+1 cosines, so the uncertainty restates the similarity (Pearson ~ -0.9 on
    the benchmark); an item radius cannot, by construction. The sample term is trained through
    its expectation, ``expected_cos`` = cos(mu_t, mu_v) / sqrt((1 + r_t^2)(1 + r_v^2)) (the
    large-D mean of the sampled cosine): the radius is then a per-item temperature, and the
    InfoNCE gradient widens it exactly where the item's positive cannot be ranked first and
    narrows it where it can (heteroscedastic attenuation, cf. Kendall & Gal 2017, Eq. 12, here on a
    contrastive softmax), without the sampling variance that would otherwise dominate the
    radius' gradient. The uncertainty of a hit is r_t + r_v: the caption's predicted difficulty
    plus the clip's. inference="expected" is then closed form (no noise inputs in an export).

Choices:
  * Means are unit-normalised so that scale_m has a meaning: with eps ~ N(0, I_D), |sigma * eps|
    is about scale_m * exp(b - softplus(A) s), i.e. scale_m is the sample's distance from its mean,
    relative to the mean's norm, at zero similarity. Scores are cosines, so this loses nothing.
  * Defaults scale_v = 0.5, scale_t = 0.1: the poster's "moderate video uncertainty ... controlled
    text variance" (Discussion). A sample then keeps cos ~0.89 (video) / ~0.995 (text) with its mean.
  * "Wide when alignment is poor, narrow when good" is enforced, not hoped for: the weights
    softplus(A) are >= 0 and the sorted frame similarities are non-decreasing in every S_i, so
    every sigma_{m,d} is non-increasing in every similarity feature. Initialisation: b = 0 and
    softplus(A) = 2 / (T'+1), i.e. sigma = scale * exp(-2 * mean(s)) at start. No clamp; the
    similarities are not detached (as T-MASS).
  * Frame similarities are sorted (descending) before the modulator: the variance should depend on
    how many frames match and how well, not on where in the clip the match is (T-MASS's W uses the
    raw temporal order; sort_frame_sims=False restores it).
  * Variances are per pair (the similarities are), so the text Gaussian is pair-conditioned, as
    T-MASS's radius. Training uses every pair of the B x B batch with its own sigmas (train = test).
  * Boundary point = the reparameterisation with eps := u. It lies on the Mahalanobis-1 contour
    (|(x - mu) / sigma| = 1), T-MASS's "surface" (Eq. 8 with R = sigma); typical samples lie
    further out (|eps| ~ sqrt(D)). Both sides, toward each other: (t_b, v_b) is the pair's closest
    approach, so the boundary loss pushes uncertain negatives apart by a margin that grows with
    their sigmas, and pulls positives together.
  * Noise: text-only eps_t (M, N_t, D) and video-only eps_v (M, N_v, D), so each can be an export
    input on its own side. Training draws M = 1 (one sample per text and per video per step, as
    T-MASS). Pairing m with m costs M cosines per pair; max over all M^2 combinations would add more
    optimism (see below) for M times the cost.
  * Best of M is the default (T-MASS Eq. 10, DESIGN.md), but a caveat: max_m of a noisy cosine is
    biased upward by about 1.9 std (M = 20), the std grows with sigma, and sigma is largest for poorly
    aligned pairs, so the bonus goes to uncertain pairs, while the shrink |mu|/|mu + sigma eps| takes
    from them. The single-sample training loss sees the shrink (and, through log-sum-exp over
    negatives, a soft version of the bonus), never the hard max. "expected" is the Monte-Carlo
    mean of what the loss trains on, "mean" ignores sigma at inference (ranks like X-Pool with
    SPEM-trained features). Which ranks best is an empirical question: benchmark all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probret.train.methods.base import (NoiseSpec, RetrievalHead, ScoreOutput, TextFeatures, l2n, register_method,
                                        symmetric_infonce)
from probret.train.methods.xpool import XPoolFusion, draw, pair_cos

INIT_SLOPE = 2.0  # total weight softplus(A).sum(-1) at initialisation
BOUNDARIES = ("toward", "toward_full", "margin")
VARIANCES = ("pair", "item")


def sample_cos(mu_a, sig_a, eps_a, mu_b, sig_b, eps_b) -> Tensor:
    """cos(mu_a + sig_a * eps_a, mu_b + sig_b * eps_b), broadcast over leading axes; symmetric in a <-> b."""
    return pair_cos(mu_a + sig_a * eps_a, mu_b + sig_b * eps_b)


def expected_cos(mu_a, sig_a, mu_b, sig_b) -> Tensor:
    """E[cos(mu_a + sig_a eps_a, mu_b + sig_b eps_b)] for unit means and isotropic sigmas, to first
    order in 1/D: the noise leaves the dot product's mean at mu_a . mu_b and grows each norm to
    sqrt(1 + |sig|^2) (|sig * eps|^2 concentrates at |sig|^2), so the radii act as a per-item
    temperature, cos(mu_a, mu_b) / sqrt((1 + r_a^2)(1 + r_b^2))."""
    r2 = (1 + sig_a.square().sum(-1)) * (1 + sig_b.square().sum(-1))
    return pair_cos(mu_a, mu_b) / r2.sqrt()


def boundary_cos(mu_a, sig_a, mu_b, sig_b, *, spread: str = "dimension", side=None) -> Tensor:
    """cos of the two boundary points, one per Gaussian, on the line u = (mu_b - mu_a)/|mu_b - mu_a|;
    symmetric in a <-> b.

    spread="dimension": a_b = mu_a + sig_a * u (elementwise; the Mahalanobis-1 point, which moves
    |sig_a * u| ~ |sig_a| / sqrt(D) for a roughly isotropic sigma). spread="full": a_b = mu_a + |sig_a| u,
    the typical sample radius (|sig * eps| ~ |sig| for eps ~ N(0, I)) along u; points moving toward
    each other stop where they meet (both steps scaled by min(1, |mu_b - mu_a| / (|sig_a| + |sig_b|))).
    side: None or +1 = both points toward each other (the pair's closest approach); -1 = away from
    each other (the farthest); a tensor of +-1 broadcast over the pair axes chooses per pair."""
    diff = mu_b - mu_a
    u = l2n(diff)
    sign = torch.ones((), dtype=u.dtype, device=u.device) if side is None else \
        torch.as_tensor(side, dtype=u.dtype, device=u.device)
    sign = sign[..., None] if sign.dim() else sign  # broadcast over D
    if spread == "dimension":
        return pair_cos(mu_a + sign * sig_a * u, mu_b - sign * sig_b * u)
    r_a, r_b = sig_a.norm(dim=-1, keepdim=True), sig_b.norm(dim=-1, keepdim=True)
    # points moving toward each other stop where they meet: radii that overlap the gap give the
    # closest approach, never points that cross and turn apart again
    meet = (diff.norm(dim=-1, keepdim=True) / (r_a + r_b).clamp_min(1e-12)).clamp(max=1.0)
    step = sign * torch.where(sign > 0, meet, torch.ones_like(meet))
    return pair_cos(mu_a + step * r_a * u, mu_b - step * r_b * u)


class SimilarityModulator(nn.Module):
    """sigma = scale / sqrt(D) * exp(b + c - softplus(A) s): positive, per dimension, non-increasing in s.
    c is an optional content offset (N, 1 or N_v, D) added to the log-variance (``content_v`` /
    ``content_t`` of the head); it does not depend on s, so the monotonicity in s is kept."""

    def __init__(self, n_features: int, dim: int, scale: float):
        super().__init__()
        self.scale = scale / math.sqrt(dim)
        self.a = nn.Parameter(torch.full((dim, n_features), math.log(math.expm1(INIT_SLOPE / n_features))))
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, s: Tensor, content: Tensor | None = None) -> Tensor:  # (..., F) -> (..., D)
        log = self.b - s @ F.softplus(self.a).t()
        return self.scale * torch.exp(log if content is None else log + content)


class ItemRadius(nn.Module):
    """variance="item": one noise radius per caption (or clip) from its own content,
    r = scale * exp(mlp(x)), with the MLP's last layer zero so that r = scale at initialisation.
    Returned as the per-dimension sigma r / sqrt(D), shape (..., 1) (the head expands it to D
    equal entries), so |sigma * eps| ~ r."""

    def __init__(self, n_in: int, dim: int, scale: float):
        super().__init__()
        self.scale, self.dim = scale, dim
        self.mlp = nn.Sequential(nn.Linear(n_in, dim // 2), nn.GELU(), nn.Linear(dim // 2, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale / math.sqrt(self.dim) * torch.exp(self.mlp(x))


def video_content(frames_unit: Tensor) -> Tensor:
    """(N_v, T', D) unit frames -> (N_v, D + 1): [direction of the mean frame, 1 - its norm]. The norm
    is 1 when every frame looks alike and shrinks as the clip changes (two events, camera motion)."""
    g = frames_unit.mean(1)
    return torch.cat([l2n(g), 1 - g.norm(dim=-1, keepdim=True)], -1)


def zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """A bias-free linear layer that starts at zero: a content term that is off at initialisation."""
    layer = nn.Linear(n_in, n_out, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


@register_method("spem")
class SPEMHead(RetrievalHead):
    export_form = "SPEMForm"

    @dataclass
    class Config:
        scale_v: float = 0.5  # relative noise radius of the video Gaussian at zero similarity
        scale_t: float = 0.1  # same for the text Gaussian
        alpha: float = 1.2  # weight of the boundary loss (T-MASS's support weight)
        num_samples: int = 20  # M at inference
        inference: str = "best_of_m"  # "best_of_m" | "mean" | "expected"
        sort_frame_sims: bool = True
        boundary: str = "toward"  # "toward" | "toward_full" | "margin" (see the module docstring)
        content: bool = False  # log-variances also read the text feature / the frames
        variance: str = "pair"  # "pair": from the pair's similarities (poster) | "item": per caption / clip
        width_weight: float = 0.0  # weight of the radius prior that holds the mean radius at scale
        num_heads: int = 1  # X-Pool fusion
        dropout: float = 0.3

    def __init__(self, embed_dim: int, num_frames: int, config=None):
        super().__init__(embed_dim, num_frames, config)
        c = self.config
        if c.inference not in ("best_of_m", "mean", "expected"):
            raise ValueError(f"spem: inference must be best_of_m, mean or expected, got {c.inference!r}")
        if c.boundary not in BOUNDARIES:
            raise ValueError(f"spem: boundary must be one of {BOUNDARIES}, got {c.boundary!r}")
        if c.variance not in VARIANCES:
            raise ValueError(f"spem: variance must be one of {VARIANCES}, got {c.variance!r}")
        if c.variance == "item" and c.content:
            raise ValueError("spem: content=True adds to the pair variance; variance='item' is content only")
        if c.scale_v < 0 or c.scale_t < 0 or c.num_samples < 1 or c.width_weight < 0:
            raise ValueError("spem: scale_v, scale_t and width_weight must be >= 0 and num_samples >= 1")
        self.fusion = XPoolFusion(embed_dim, c.num_heads, c.dropout)
        if c.variance == "item":
            self.radius_t = ItemRadius(embed_dim, embed_dim, c.scale_t)  # unit text feature -> radius
            self.radius_v = ItemRadius(embed_dim + 1, embed_dim, c.scale_v)  # [mean unit frame, spread]
        else:
            self.sigma_t = SimilarityModulator(num_frames + 1, embed_dim, c.scale_t)
            self.sigma_v = SimilarityModulator(num_frames + 1, embed_dim, c.scale_v)
        if c.content:
            self.content_t = zero_linear(embed_dim, embed_dim)  # unit text feature -> log-sigma offset
            self.content_v = zero_linear(embed_dim + 1, embed_dim)  # [mean unit frame, frame spread] -> offset

    # -- pieces --------------------------------------------------------------------------------
    def distributions(self, text: Tensor, video: dict[str, Tensor], dropout: Tensor | None = None):
        """text (N_t, D) raw -> mu_t (N_t, 1, D), mu_v, sigma_t, sigma_v (N_t, N_v, D); with
        variance="item", sigma_t is (N_t, 1, D) and sigma_v (1, N_v, D), isotropic, one per item."""
        mu_t = l2n(text)[:, None]
        mu_v = l2n(self.fusion.pair_side(text, video, dropout))
        if self.config.variance == "item":
            d = mu_t.shape[-1]
            return mu_t, mu_v, self.radius_t(mu_t).expand(-1, -1, d), self.radius_v(video["content"])[None].expand(-1, -1, d)
        s_f = torch.einsum("ad,ntd->ant", mu_t[:, 0], video["frames"])  # frame level (N_t, N_v, T')
        if self.config.sort_frame_sims:
            s_f = s_f.sort(-1, descending=True).values
        s = torch.cat([s_f, (mu_t * mu_v).sum(-1, keepdim=True)], -1)  # + video level
        c_t = c_v = None
        if self.config.content:
            c_t = self.content_t(mu_t)  # (N_t, 1, D): the caption's own ambiguity
            c_v = self.content_v(video["content"])[None]  # (1, N_v, D): the clip's own diversity
        return mu_t, mu_v, self.sigma_t(s, c_t), self.sigma_v(s, c_v)

    def draw_noise(self, n_text, n_video, *, generator=None, training=False):
        like = self.fusion.q_proj.weight
        if not training and (self.config.inference == "mean" or self._closed_form()):
            return {}
        if training and self.config.variance == "item":  # expected_cos: no embedding noise
            return self.fusion.draw_dropout(n_text, n_video, generator, like)
        m = 1 if training else self.config.num_samples
        noise = {"eps_t": draw("gaussian", (m, n_text, self.embed_dim), generator, like),
                 "eps_v": draw("gaussian", (m, n_video, self.embed_dim), generator, like)}
        if training:
            noise.update(self.fusion.draw_dropout(n_text, n_video, generator, like))
        return noise

    def _closed_form(self) -> bool:
        return self.config.variance == "item" and self.config.inference == "expected"

    def inference_noise(self):
        if self.config.inference == "mean" or self._closed_form():
            return []
        shape = (self.config.num_samples, self.embed_dim)
        return [NoiseSpec("eps_t", "gaussian", 1.0, shape, side="text", axis=1),
                NoiseSpec("eps_v", "gaussian", 1.0, shape, side="video", axis=1)]

    # -- scoring -------------------------------------------------------------------------------
    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        f = l2n(frames)
        out = {**self.fusion.video_side(frames), "frames": f}
        if self.config.content or self.config.variance == "item":
            out["content"] = video_content(f)
        return out

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        mu_t, mu_v, sig_t, sig_v = self.distributions(text.sentence, video)
        uncertainty = sig_t.norm(dim=-1) + sig_v.norm(dim=-1)
        if self.config.inference == "mean":
            return ScoreOutput(pair_cos(mu_t, mu_v), uncertainty)
        if self.config.inference == "expected" and self.config.variance == "item":
            return ScoreOutput(expected_cos(mu_t, sig_t, mu_v, sig_v), uncertainty)
        noise = self._noise(noise, mu_v.shape[0], mu_v.shape[1], generator, False)
        eps_t, eps_v = noise["eps_t"], noise["eps_v"]
        # one (N_t, N_v, D) temporary at a time, never (M, N_t, N_v, D)
        sims = torch.stack([sample_cos(mu_t, sig_t, eps_t[m][:, None], mu_v, sig_v, eps_v[m][None])
                            for m in range(eps_t.shape[0])])
        scores = sims.amax(0) if self.config.inference == "best_of_m" else sims.mean(0)
        return ScoreOutput(scores, uncertainty)

    # -- training ------------------------------------------------------------------------------
    def loss(self, text, frames, *, logit_scale, noise=None, generator=None, positives: Tensor | None = None):
        """positives: optional (B, B) bool, True where caption i truly describes video j (the diagonal
        always): the contrastive terms then count every true match as a positive (multi-positive
        InfoNCE) instead of pushing an ambiguous caption away from the other clips it describes."""
        b = frames.shape[0]
        noise = self._noise(noise, b, b, generator, True)
        mu_t, mu_v, sig_t, sig_v = self.distributions(text.sentence, self.video_side(frames), noise.get("dropout"))
        if self.config.variance == "item":  # the sample's expectation: attenuation without sampling noise
            s_s = expected_cos(mu_t, sig_t, mu_v, sig_v)
        else:
            s_s = sample_cos(mu_t, sig_t, noise["eps_t"][0][:, None], mu_v, sig_v, noise["eps_v"][0][None])
        pos = torch.eye(b, dtype=torch.bool, device=mu_v.device)
        if positives is not None:
            pos = pos | positives.to(device=pos.device, dtype=torch.bool)
        s_b = self.boundary(mu_t, sig_t, mu_v, sig_v, pos)
        contrast = symmetric_infonce if positives is None else (lambda z: multi_positive_infonce(z, pos))
        l_s = contrast(logit_scale * s_s)
        l_b = contrast(logit_scale * s_b)
        r_t, r_v = (sig.norm(dim=-1).expand(b, b) for sig in (sig_t, sig_v))
        total = l_s + self.config.alpha * l_b
        if self.config.width_weight:
            total = total + self.config.width_weight * (radius_prior(r_t, self.config.scale_t)
                                                        + radius_prior(r_v, self.config.scale_v))
        with torch.no_grad():  # logged: relative noise radii of positive and negative pairs
            neg = ~pos if b > 1 else pos
            logs = {"radius_t_pos": r_t[pos].mean(), "radius_v_pos": r_v[pos].mean(),
                    "radius_t_neg": r_t[neg].mean(), "radius_v_neg": r_v[neg].mean()}
        return {"loss": total, "loss_sample": l_s.detach(), "loss_boundary": l_b.detach(), **logs}

    def boundary(self, mu_t, sig_t, mu_v, sig_v, positive: Tensor) -> Tensor:
        """(B, B) boundary cosines by ``config.boundary``: toward = Mahalanobis-1 points facing each
        other; toward_full = full radius facing each other; margin = full radius, apart for positives
        (the farthest points), toward for negatives (the nearest)."""
        kind = self.config.boundary
        if kind == "toward":
            return boundary_cos(mu_t, sig_t, mu_v, sig_v)
        side = None if kind == "toward_full" else 1.0 - 2.0 * positive.to(mu_v.dtype)
        return boundary_cos(mu_t, sig_t, mu_v, sig_v, spread="full", side=side)


def multi_positive_infonce(logits: Tensor, positive: Tensor) -> Tensor:
    """Symmetric InfoNCE with a set of positives per row and column: -log(sum_{j in P_i} e^{l_ij} /
    sum_j e^{l_ij}), averaged over rows, and the same over columns. With positive = I it is
    ``symmetric_infonce``."""
    masked = logits.masked_fill(~positive, float("-inf"))
    rows = torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)
    cols = torch.logsumexp(logits, 0) - torch.logsumexp(masked, 0)
    return 0.5 * (rows.mean() + cols.mean())


def radius_prior(r: Tensor, scale: float) -> Tensor:
    """Mean over pairs of (r/scale)^2 / 2 - log(r/scale): smallest at r = scale, infinite at r -> 0.
    The "margin" boundary makes every radius costly; this holds the typical radius near its scale so
    the loss can only move width between pairs, not remove it (cf. the log-variance terms of a
    Gaussian KL, as in PCME / DUQ Eq. 14, on the radius alone)."""
    if scale == 0:
        return r.new_zeros(())
    x = r / scale
    return (0.5 * x * x - torch.log(x.clamp_min(1e-12))).mean() - 0.5
