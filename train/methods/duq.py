"""DUQ: Dual Uncertainty Quantification (Liu et al., 2025; shared/papers/003).

Two modules on top of an X-Pool baseline, and a re-ranking at inference:

  similarity  s_ij = cos(t_i, v_ij), v_ij = X-Pool(t_i, frames_j)                       (Sec. 3.1)
  L_S         symmetric InfoNCE over logit_scale * s                                    (Eq. 1)
  ISUM        alpha_ij = ReLU(s_ij) + 1, S_i = sum_j alpha_ij, p_ij = alpha_ij / S_i,
              u_i = N / S_i                                                              (Eqs. 2-3)
              L_i = sum_j (y_ij - p_ij)^2 + p_ij (1 - p_ij) / (S_i + 1),  y = I        (Eqs. 5-6)
              L_S^U = (sum_i L_i(rows) + sum_j L_j(columns)) / B                         (Eq. 7)
  IDUM        Gaussians N(h_mu(z), diag(exp(h_sigma(z))^2)) for text and video,          (Eq. 8)
              K samples z^k = mu + exp(h_sigma) * eps_k                                  (Eq. 9)
              d(z^{i,m}, z^{j,n}) = 1 - cos                                              (Eq. 10)
              D_ij = min_{m,n} d for i = j, max_{m,n} d for i != j                       (Eq. 11)
              L_D (Eq. 12, see below), L_D^U = Eq. 7 on D with y = 1 - I                  (Eq. 13)
  L_KL        KL(N_t || N(0, I)) + KL(N_v || N(0, I))                                     (Eq. 14)
  total       L_S + L_S^U + alpha (L_D + L_D^U) + beta L_KL                              (Eq. 15)
  inference   s' = exp(-g1 u_d) (1 - d) * exp(-g2 u_s) s                                 (Eq. 16)

Defaults (Sec. 4.1): K = 7, alpha = 0.1, beta = 1e-4, gamma1 = gamma2 = 0.1; X-Pool: 1 head,
dropout 0.3 (X-Pool's defaults, as our xpool head).

Choices where the paper is vague (the released code was read for reference only):
  * Eq. 11, negatives: D_ij (i != j) is the max over text i's K samples against video j's OWN K
    samples. (The released Distance_Module compares text i with video i's samples for every j.)
  * Eq. 11 at inference: which pair is "positive" is unknown, so every candidate is scored as a
    would-be positive: d_ij = min_{m,n}. (Using the training case split at test time would read
    the ground truth off the diagonal.)
  * Eq. 12 is implemented as printed, L_D = +1/2 (mean_i log softmax_j(lambda D)_ii + columns):
    minimising it lowers D_ii and raises D_ij, but its gradient weights the FARTHEST negatives.
    `distance_loss="infonce"` uses -log softmax(-lambda D) instead. lambda = logit_scale in
    Eqs. 1 and 12 (the paper's "temperature hyperparameter").
  * Eq. 7 is normalised as printed (1/B, not the released code's mean of the two directions / 2),
    applied to the cosine matrix s (not scaled by logit_scale). No min-max rescaling of D (the
    released code rescales D to [0, 1]; the paper does not).
  * Eq. 3 / 16 at inference: u of query text i is N_v / sum_j (ReLU(m_ij) + 1) over the N_v
    candidates in the call (m = s for u_s, m = D for u_d), broadcast along the row. A positive
    per-row factor never reorders a text's videos; it does reorder texts for a video (v2t), and
    (1 - d) reorders videos. u therefore depends on the candidate set of the call: score the whole
    gallery at once (or accumulate S_i chunk-wise) for u to be exact. `uncertainty` returned by
    `score` is u_s (the similarity uncertainty mass) broadcast to (N_t, N_v).
  * Eq. 8-9: exp(h_sigma) is the standard deviation (Eq. 9 samples with it), so the KL of Eq. 14
    is 0.5 sum_d (mu^2 + sigma^2 - 1 - 2 log sigma), summed over dims, averaged over the batch.
  * Local feature aggregation (Sec. 3.3, "multi-head attention + concatenation"): one attention-
    pooling head (a = softmax(w2 tanh(w1 x)), as the released code) over text tokens (masked) or
    frames, concatenated with the global feature and projected to D; the projection starts as
    [I, 0] and h_mu as I, so mu = global feature at initialisation. h_sigma starts at a constant
    with noise norm sigma_init relative to the unit-norm mean (ours; paper silent).
  * The video Gaussian is built from the text-independent global feature (mean of unit frames) and
    the frames, so `video_side` precomputes it at index time; only s uses X-Pool.
  * Noise: {"text": (N_t, K, D), "video": (N_v, K, D)} standard normals for loss and score, plus
    X-Pool's dropout keep-mask when training.
  * Eq. 16, a bug when taken literally (fixed by default, rerank="shifted"): s' multiplies two
    signed cosines, s and 1 - d. Ranking by a product is only monotone while both are positive,
    which holds for CLIP's pre-trained cosines (~0.2-0.4) but not here: Eqs. 5-7 with evidence
    ReLU(s) reach their optimum only when every negative has s <= 0, so training drives negatives
    below zero, and a hard negative with s = -0.5 and 1 - d = -0.5 then scores +0.25, above a true
    match at s = 0.3, 1 - d = 0.6 (0.18). rerank="shifted" uses (1 + s)/2 and 1 - d/2, both in
    [0, 1] for cosines, which keeps the paper's multiplicative form and its uncertainty factors and
    is increasing in s and decreasing in d everywhere. rerank="paper" keeps Eq. 16 as printed.
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


# -- Eqs. 3-7: evidential (Dirichlet) similarity uncertainty ------------------------------------
def evidential_uncertainty(m: Tensor) -> Tensor:
    """Eq. 3 per row of m (N, C) with evidence ReLU(m): u = C / sum_j (ReLU(m_ij) + 1), shape (N,)."""
    return m.shape[1] / (F.relu(m) + 1).sum(1)


def evidential_rows(m: Tensor, y: Tensor) -> Tensor:
    """Eq. 6 for every row: sum_j (y_ij - p_ij)^2 + p_ij (1 - p_ij) / (S_i + 1), shape (N,)."""
    alpha = F.relu(m) + 1
    s = alpha.sum(1, keepdim=True)
    p = alpha / s
    return ((y - p) ** 2 + p * (1 - p) / (s + 1)).sum(1)


def evidential_loss(m: Tensor, y: Tensor) -> Tensor:
    """Eq. 7 (and Eq. 13 with y = 1 - I): (sum over rows + sum over columns) / B."""
    return (evidential_rows(m, y).sum() + evidential_rows(m.t(), y.t()).sum()) / m.shape[0]


# -- Eqs. 10-11: K-sample distances ----------------------------------------------------------------
def sample_distances(zt: Tensor, zv: Tensor) -> Tensor:
    """Eq. 10: d = 1 - cos for every text sample m and video sample n: (N_t, K, D), (N_v, K, D) ->
    (N_t, N_v, K, K)."""
    return 1 - torch.einsum("imd,jnd->ijmn", l2n(zt), l2n(zv))


def duq_distance(dist: Tensor, positive: Tensor | None = None) -> Tensor:
    """Eq. 11: min over the K x K sample pairs where positive[i, j], max elsewhere.
    positive=None (inference) takes the min everywhere."""
    flat = dist.flatten(2)
    if positive is None:
        return flat.amin(-1)
    return torch.where(positive, flat.amin(-1), flat.amax(-1))


def rerank(s: Tensor, d: Tensor, gamma1: float, gamma2: float, *, shifted: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 16: s' = exp(-gamma1 u_d) (1 - d) * exp(-gamma2 u_s) s, u per query row (Eq. 3).
    shifted=True (default) multiplies (1 - d/2) and (1 + s)/2 instead of (1 - d) and s: both in
    [0, 1], so s' increases in s and decreases in d everywhere. As printed, the product of two
    cosines ranks a candidate with s < 0 and 1 - d < 0 above every candidate with s > 0 > 1 - d
    and close to ones with both small and positive (see the module docstring).
    Returns s', u_s and u_d, each (N_t, N_v)."""
    u_s = evidential_uncertainty(s)[:, None].expand_as(s)
    u_d = evidential_uncertainty(d)[:, None].expand_as(s)
    closeness, sim = ((1 - d / 2), (1 + s) / 2) if shifted else ((1 - d), s)
    return torch.exp(-gamma1 * u_d) * closeness * torch.exp(-gamma2 * u_s) * sim, u_s, u_d


def distance_loss_paper(d: Tensor, scale: Tensor) -> Tensor:
    """Eq. 12 as printed: 1/2 (mean_i log softmax_j(scale d)_ii + mean_i log softmax_i(scale d)_ii)."""
    logits = scale * d
    return 0.5 * (logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean())


def kl_to_standard_normal(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """Eq. 14 for one modality: KL(N(mu, sigma^2) || N(0, I)), summed over dims, batch mean."""
    return 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(-1).mean()


# -- Sec. 3.3: local feature aggregation + probabilistic embedding (Eq. 8) ---------------------
class ProbabilisticEmbedding(nn.Module):
    def __init__(self, dim: int, sigma_init: float):
        super().__init__()
        self.attn = nn.Sequential(nn.Linear(dim, dim // 2, bias=False), nn.Tanh(), nn.Linear(dim // 2, 1, bias=False))
        self.fuse = nn.Linear(2 * dim, dim)  # concat(global, local) -> z
        self.h_mu, self.h_sigma = nn.Linear(dim, dim), nn.Linear(dim, dim)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, :dim].copy_(torch.eye(dim))
            self.fuse.bias.zero_()
            nn.init.eye_(self.h_mu.weight)
            self.h_mu.bias.zero_()
            self.h_sigma.weight.zero_()
            self.h_sigma.bias.fill_(math.log(sigma_init / math.sqrt(dim)))

    def forward(self, glob: Tensor, local: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """glob (N, D), local (N, L, D), mask (N, L) -> mu (N, D), log_sigma (N, D)."""
        a = self.attn(local).squeeze(-1)
        if mask is not None:
            a = a.masked_fill(~mask, float("-inf"))
        pooled = torch.einsum("nl,nld->nd", a.softmax(-1), local)
        z = self.fuse(torch.cat([glob, pooled], -1))
        return self.h_mu(z), self.h_sigma(z)


@register_method("duq")
class DUQHead(RetrievalHead):
    export_form = "DUQForm"
    needs_tokens = True

    @dataclass
    class Config:
        num_samples: int = 7  # K (Sec. 4.1)
        alpha: float = 0.1  # weight of L_D + L_D^U (Eq. 15)
        beta: float = 1e-4  # weight of L_KL (Eq. 15)
        gamma1: float = 0.1  # distance-uncertainty re-ranking (Eq. 16)
        gamma2: float = 0.1  # similarity-uncertainty re-ranking (Eq. 16)
        sigma_init: float = 0.1  # initial noise norm relative to the mean (ours)
        distance_loss: str = "paper"  # Eq. 12 as printed, or "infonce"
        rerank: str = "shifted"  # Eq. 16 on (1 + s)/2 and 1 - d/2 (monotone), or "paper" (as printed)
        num_heads: int = 1  # X-Pool
        dropout: float = 0.3  # X-Pool, training only

    def __init__(self, embed_dim: int, num_frames: int, config=None):
        super().__init__(embed_dim, num_frames, config)
        if self.config.distance_loss not in ("paper", "infonce"):
            raise ValueError(f"distance_loss must be 'paper' or 'infonce', got {self.config.distance_loss!r}")
        if self.config.rerank not in ("shifted", "paper"):
            raise ValueError(f"rerank must be 'shifted' or 'paper', got {self.config.rerank!r}")
        self.fusion = XPoolFusion(embed_dim, self.config.num_heads, self.config.dropout)
        self.prob_text = ProbabilisticEmbedding(embed_dim, self.config.sigma_init)
        self.prob_video = ProbabilisticEmbedding(embed_dim, self.config.sigma_init)

    def draw_noise(self, n_text, n_video, *, generator=None, training=False):
        like, k, d = self.fusion.q_proj.weight, self.config.num_samples, self.embed_dim
        noise = {"text": draw("gaussian", (n_text, k, d), generator, like),
                 "video": draw("gaussian", (n_video, k, d), generator, like)}
        if training:
            noise.update(self.fusion.draw_dropout(n_text, n_video, generator, like))
        return noise

    def inference_noise(self):
        shape = (self.config.num_samples, self.embed_dim)
        return [NoiseSpec("text", "gaussian", 1.0, shape, side="text", axis=0),
                NoiseSpec("video", "gaussian", 1.0, shape, side="video", axis=0)]

    # -- text-independent / text-dependent halves ---------------------------------------------
    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        """frames (N_v, T, D) raw -> X-Pool keys/values and the video Gaussian (mu, log_sigma)."""
        f = l2n(frames)
        mu, log_sigma = self.prob_video(l2n(f.mean(1)), f)
        return {**self.fusion.video_side(frames), "mu": mu, "log_sigma": log_sigma}

    def _parts(self, text: TextFeatures, video: dict[str, Tensor], noise: dict[str, Tensor]):
        s = pair_cos(text.sentence[:, None], self.fusion.pair_side(text.sentence, video, noise.get("dropout")))
        mu_t, ls_t = self.prob_text(l2n(text.sentence), l2n(text.tokens), text.mask)
        zt = mu_t[:, None] + ls_t.exp()[:, None] * noise["text"]  # Eq. 9
        zv = video["mu"][:, None] + video["log_sigma"].exp()[:, None] * noise["video"]
        return s, sample_distances(zt, zv), (mu_t, ls_t)

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        noise = self._noise(noise, len(text), video["mu"].shape[0], generator, False)
        s, dist, _ = self._parts(text, video, noise)
        scores, u_s, _ = rerank(s, duq_distance(dist), self.config.gamma1, self.config.gamma2,
                                shifted=self.config.rerank == "shifted")
        return ScoreOutput(scores, u_s)

    def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
        b = frames.shape[0]
        noise = self._noise(noise, b, b, generator, True)
        video = self.video_side(frames)
        s, dist, (mu_t, ls_t) = self._parts(text, video, noise)
        eye = torch.eye(b, dtype=s.dtype, device=s.device)
        d = duq_distance(dist, eye.bool())  # Eq. 11
        if self.config.distance_loss == "paper":
            l_d = distance_loss_paper(d, logit_scale)
        else:
            l_d = symmetric_infonce(-logit_scale * d)
        parts = {
            "sim": symmetric_infonce(logit_scale * s),  # Eq. 1
            "sim_evidential": evidential_loss(s, eye),  # Eq. 7
            "dist": l_d,  # Eq. 12
            "dist_evidential": evidential_loss(d, 1 - eye),  # Eq. 13
            "kl": kl_to_standard_normal(mu_t, ls_t) + kl_to_standard_normal(video["mu"], video["log_sigma"]),
        }
        c = self.config
        total = parts["sim"] + parts["sim_evidential"] + c.alpha * (parts["dist"] + parts["dist_evidential"]) \
            + c.beta * parts["kl"]  # Eq. 15
        return {"loss": total, **parts}
