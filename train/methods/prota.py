"""ProTA: Probabilistic Token Aggregation (Fang, Zang et al., 2024; shared/papers/002).

Every text token and every frame is a diagonal Gaussian; tokens are compared by the negative
2-Wasserstein distance and aggregated into one score per (text, video) pair:

  Gaussians    mu = W_mean(f), sigma^2 = exp(W_var(f)), per token / frame               (Eq. 9)
  token sim    s_ij = -sqrt(||mu_t^i - mu_v^j||^2 + ||sigma_t^i - sigma_v^j||^2)        (Eq. 10)
  low-dim agg  l_{t_i->v} = sum_j s_ij softmax_j(lambda s_ij)   (soft max over frames)  (Eq. 2)
               l_{v_j->t} = the same over the text tokens
  pair score   S = (sum_i w_t^i l_{t_i->v} + sum_j w_v^j l_{v_j->t}) / 2                (Eqs. 8, 11)
  KL           L_kl = 1/2 [KL(N_t || N(0, I)) + KL(N_v || N(0, I))]                     (Eq. 12)
  margin       m_t2v = exp(-KL(N_t || N_v)), m_v2t = exp(-KL(N_v || N_t))                (Eq. 14)
  loss         L_t2v = CE over rows of logit_scale * S with S_ii - eta m_t2v on the positive,
               L_contra = (L_t2v + L_v2t) / 2,  L = L_contra + beta L_kl                (Eqs. 13, 15, 16)

Defaults (Sec. 4.1): lambda = 100, eta = beta = 5e-4; tau of Eq. 13 is the trainer's logit_scale.

Choices where the paper is vague:
  * Eq. 10 prints the difference of the VARIANCES sigma^2; the 2-Wasserstein distance between
    diagonal Gaussians (the paper's stated metric) uses the standard deviations, so we use those.
    A 1e-8 inside the square root keeps the gradient finite at zero distance.
  * Dual partial-related aggregation, simplified: the low-dimension aggregation (Eq. 2) is exact,
    on the probabilistic token similarity (Eq. 11). The high-dimension aggregation (RBF Gram
    matrix, Eqs. 3-7) is replaced by learned token weights w_t = softmax_i(MLP_t(mu_t^i)) over the
    real tokens and w_v = softmax_j(MLP_v(mu_v^j)) over frames (the intra-modality MLP W_t of
    Eq. 5 without the Gram re-weighting, and without the inter-modality factor of Eq. 6). The
    MLPs' last layers start at zero, so at initialisation S is the plain average of the soft-max
    token scores in both directions. Weights are text-only / video-only, so `video_side`
    precomputes everything of the video.
  * No temporal transformer on the frames (the paper uses CLIP4Clip's): frames are the video tokens.
  * Inputs are unit-normalised; mu = f + MLP_mean(f) with the last layer at zero (mu = f at init);
    log sigma^2 = Linear(f) with PyTorch's default init, i.e. sigma^2 ~ 1 (the KL prior) with small
    token-to-token differences (a zero init would be a stationary point of both losses).
  * Eq. 13's denominator reads S^d: taken as S^p with the margin on the positive (the usual
    additive-margin softmax). The pair KL of Eq. 14 is between the pooled Gaussians of the text and
    the video (w-weighted means of the token means and variances), summed over dims; m is a
    stop-gradient "indicator" (minimising through m would push positive pairs apart).
  * Eq. 12: KL summed over dims, averaged over real tokens (resp. frames) and the batch.
  * `score` returns uncertainty = (u_t + u_v) / 2 with u = w-weighted mean variance of the tokens
    (frames): the paper's "representation uncertainty". Deterministic: no noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures, l2n, register_method


def token_similarity(mu_t: Tensor, std_t: Tensor, mu_v: Tensor, std_v: Tensor) -> Tensor:
    """Eq. 10 for every text token and frame of every pair: (N_t, L, D), (N_v, T, D) -> (N_t, N_v, L, T).

    Minus the 2-Wasserstein distance of diagonal Gaussians, sqrt(|mu_a - mu_b|^2 + |std_a - std_b|^2)
    (closed form), expanded so no (N_t, N_v, L, T, D) tensor is built."""
    def sqdist(x, y):
        return ((x**2).sum(-1)[:, None, :, None] + (y**2).sum(-1)[None, :, None, :]
                - 2 * torch.einsum("ild,jtd->ijlt", x, y)).clamp_min(0)
    return -(sqdist(mu_t, mu_v) + sqdist(std_t, std_v) + 1e-8).sqrt()


def soft_max_pool(s: Tensor, lam: float, dim: int, mask: Tensor | None = None) -> Tensor:
    """Eq. 2: sum_j s_j softmax_j(lambda s_j) along `dim`, ignoring positions where mask is False."""
    logits = lam * s
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return (s * logits.softmax(dim)).sum(dim)


def kl_diag(mu_a: Tensor, var_a: Tensor, mu_b: Tensor, var_b: Tensor) -> Tensor:
    """KL(N(mu_a, var_a) || N(mu_b, var_b)) for diagonal Gaussians, summed over the last dim."""
    return 0.5 * (torch.log(var_b / var_a) + (var_a + (mu_a - mu_b) ** 2) / var_b - 1).sum(-1)


def margined_ce(logits: Tensor, margin: Tensor) -> Tensor:
    """Cross-entropy over rows with the diagonal target lowered by margin (B,)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits - torch.diag(margin), target)


class TokenGaussians(nn.Module):
    """Eq. 9 plus the token weights of the simplified aggregation, for one modality."""

    def __init__(self, dim: int):
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.log_var = nn.Linear(dim, dim)
        self.weight = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, 1))
        for last in (self.mean[-1], self.weight[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """x (N, L, D) raw tokens -> mu, var (N, L, D), w (N, L) summing to 1 over real tokens,
        pooled mu / var (N, D)."""
        f = l2n(x)
        mu, var = f + self.mean(f), self.log_var(f).exp()
        logits = self.weight(mu).squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        w = logits.softmax(-1)
        return {"mu": mu, "var": var, "w": w,
                "mu_pool": torch.einsum("nl,nld->nd", w, mu), "var_pool": torch.einsum("nl,nld->nd", w, var)}


@register_method("prota")
class ProTAHead(RetrievalHead):
    needs_tokens = True

    @dataclass
    class Config:
        agg_temperature: float = 100.0  # lambda of Eq. 2
        margin_weight: float = 5e-4  # eta of Eq. 13
        kl_weight: float = 5e-4  # beta of Eq. 16

    def __init__(self, embed_dim: int, num_frames: int, config=None):
        super().__init__(embed_dim, num_frames, config)
        self.text_gauss, self.video_gauss = TokenGaussians(embed_dim), TokenGaussians(embed_dim)

    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        return self.video_gauss(frames)

    def _text_side(self, text: TextFeatures) -> dict[str, Tensor]:
        return {**self.text_gauss(text.tokens, text.mask), "mask": text.mask}

    def _scores(self, ts: dict[str, Tensor], vs: dict[str, Tensor]) -> Tensor:
        """Eq. 11 (simplified aggregation): (N_t, N_v)."""
        lam = self.config.agg_temperature
        sim = token_similarity(ts["mu"], ts["var"].sqrt(), vs["mu"], vs["var"].sqrt())  # (N_t, N_v, L, T)
        t2v = soft_max_pool(sim, lam, -1)  # (N_t, N_v, L): each token's soft max over frames
        v2t = soft_max_pool(sim, lam, -2, ts["mask"][:, None, :, None])  # (N_t, N_v, T)
        t2v = torch.einsum("ijl,il->ij", t2v.masked_fill(~ts["mask"][:, None], 0), ts["w"])
        return 0.5 * (t2v + torch.einsum("ijt,jt->ij", v2t, vs["w"]))

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        ts = self._text_side(text)
        u_t = (ts["w"][..., None] * ts["var"]).sum(1).mean(-1)
        u_v = (video["w"][..., None] * video["var"]).sum(1).mean(-1)
        return ScoreOutput(self._scores(ts, video), 0.5 * (u_t[:, None] + u_v[None, :]))

    def adaptive_margins(self, ts: dict[str, Tensor], vs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Eq. 14 for aligned pairs (text i, video i): m_t2v, m_v2t (B,), stop-gradient."""
        with torch.no_grad():
            kl_tv = kl_diag(ts["mu_pool"], ts["var_pool"], vs["mu_pool"], vs["var_pool"])
            kl_vt = kl_diag(vs["mu_pool"], vs["var_pool"], ts["mu_pool"], ts["var_pool"])
        return torch.exp(-kl_tv), torch.exp(-kl_vt)

    def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
        ts, vs = self._text_side(text), self.video_side(frames)
        logits = logit_scale * self._scores(ts, vs)
        m_t2v, m_v2t = self.adaptive_margins(ts, vs)
        eta = self.config.margin_weight
        contra = 0.5 * (margined_ce(logits, logit_scale * eta * m_t2v)
                        + margined_ce(logits.t(), logit_scale * eta * m_v2t))  # Eqs. 13, 15
        kl_t = kl_diag(ts["mu"], ts["var"], torch.zeros_like(ts["mu"]), torch.ones_like(ts["var"]))
        kl = 0.5 * (kl_t[text.mask].mean()
                    + kl_diag(vs["mu"], vs["var"], torch.zeros_like(vs["mu"]), torch.ones_like(vs["var"])).mean())
        return {"loss": contra + self.config.kl_weight * kl, "contrastive": contra, "kl": kl,
                "margin": 0.5 * (m_t2v + m_v2t).mean()}
