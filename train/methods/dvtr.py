"""DVTR: Debiased Video-Text Retrieval via soft positive sample calibration (Zhang et al., TCSVT
2023; shared/papers/004).

A plain retrieval similarity, plus an uncertainty module that finds "soft positives" (negatives
that actually match) and scales down their push in the ranking loss:

  similarity   S_ij = cos(t_i, v_j), v_j = mean of unit-norm frames (C2V/HiT "global average
               pooling", Sec. IV-B); the only thing used to rank (Sec. IV-E)
  encoders     mu    = LN(g + sigmoid(MLP_mu(Attn_mu(l))))                            (Eqs. 3, 5)
               Sigma = MLP_Sigma(g + Attn_Sigma(l))                                   (Eqs. 4, 6)
               g = global feature, l = local features (frames / text tokens)
  L_U          -1/K^2 sum_{m,n} cos(v_m, t_n) + W(z_v, z_t) over positive pairs       (Eq. 8)
  W            ||v_mu - t_mu||^2 + ||v_Sigma^1/2 - t_Sigma^1/2||^2 (squared 2-Wasserstein) (Eq. 9)
  eta_ij       sigma(-MLP_eta(W_ij)): probability that text i / video j do NOT match    (Eq. 10)
  L_CL^U       -log e^{S_ii/tau} / (e^{S_ii/tau} + sum_{k!=i} eta_ik e^{S_ik/tau})      (Eq. 13)
  L_TL^U       [eta_ij S_ij - S_ii + lambda]_+                                          (Eq. 12)

Defaults (Sec. V-A): K = 7, lambda = 0.5, contrastive objective (better in Tab. X). The paper's
tau = 0.07 is the trainer's logit_scale (1 / tau ~ 14.3), not a head hyperparameter.

Choices where the paper is vague or inconsistent:
  * Meaning of eta. Sec. III / IV-D / Fig. 4 need eta ~ 1 for true negatives and small for soft
    positives (that is what makes Eqs. 12-13 debias); Table I and Eq. 11 (maximise sigma(-MLP(W))
    on positives) say the opposite. We follow Eqs. 12-13: eta is the mismatch probability,
    increasing in W: MLP_eta(W) = a (b - W) with a = exp(log_a) > 0 (the smallest monotone "MLP"),
    so eta = sigmoid(a (W - b)). Trained with positives only (Eq. 11) it would collapse to a
    constant, so L_eta is a balanced logistic calibration: BCE(eta_ii, 0) averaged with
    BCE(eta_ij, 1), i != j, on W detached (it only fits a and b).
  * Alg. 1 alternates two phases (uncertainty module, then debiased retrieval); we optimise one
    sum, L = L_CL^U (or L_TL^U) + uncertainty_weight (L_U + L_eta), with eta detached inside the
    ranking loss, so the ranking loss cannot lower its own weights.
  * Eq. 8: samples are unit-normalised before the dot product (cosine; an unnormalised dot product
    is unbounded), the log of Eq. 8's first line is dropped as in its last line, and W replaces
    the KL term (as the paper says after Eq. 8).
  * Sigma is diagonal; MLP_Sigma outputs log-variance. Attn(l) is attention pooling (PCME-style,
    a = softmax(w2 tanh(w1 l)), masked on padding). MLPs are Linear-GELU-Linear. MLP_mu's last
    layer starts at zero (so mu = LN(g) at init) and LN's gain starts at 1/sqrt(D) so mu has about
    unit norm, like g; MLP_Sigma starts at a constant with noise norm sigma_init relative to mu.
  * Eq. 12: j is averaged over the in-batch negatives (= expectation over a random negative); both
    Eqs. 12 and 13 are applied in both directions (t2v rows, v2t columns) and averaged, with the
    same eta_ij for the pair. Note Eq. 12 as printed multiplies S_ij by eta: for S_ij < 0 this
    raises the loss term; kept as printed.
  * Noise: {"text": (B, K, D), "video": (B, K, D)} for training only; scoring is deterministic.
    `score` returns uncertainty = eta (N_t, N_v).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures, l2n, register_method, symmetric_infonce
from probret.train.methods.xpool import draw


def wasserstein2_sq(mu_a: Tensor, var_a: Tensor, mu_b: Tensor, var_b: Tensor) -> Tensor:
    """Eq. 9 for every pair: ||mu_a - mu_b||^2 + ||var_a^1/2 - var_b^1/2||^2 for diagonal Gaussians.
    (N_a, D) x (N_b, D) -> (N_a, N_b)."""
    def sqdist(x, y):
        return ((x**2).sum(-1)[:, None] + (y**2).sum(-1)[None, :] - 2 * x @ y.t()).clamp_min(0)
    return sqdist(mu_a, mu_b) + sqdist(var_a.sqrt(), var_b.sqrt())


def debiased_contrastive(s: Tensor, eta: Tensor, logit_scale: Tensor) -> Tensor:
    """Eq. 13, both directions: negatives' exp(S/tau) weighted by eta, positives by 1."""
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return symmetric_infonce(logit_scale * s + torch.where(eye, 0.0, eta.clamp_min(1e-6).log()))


def debiased_triplet(s: Tensor, eta: Tensor, margin: float) -> Tensor:
    """Eq. 12, both directions, averaged over the negatives j != i."""
    pos = s.diagonal()
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    t2v = (eta * s - pos[:, None] + margin).clamp_min(0)[off]  # query text i, negative video j
    v2t = (eta * s - pos[None, :] + margin).clamp_min(0)[off]  # query video j, negative text i
    return 0.5 * (t2v.mean() + v2t.mean())


def mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))


class AttnPool(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Sequential(nn.Linear(dim, dim // 2, bias=False), nn.Tanh(), nn.Linear(dim // 2, 1, bias=False))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        a = self.w(x).squeeze(-1)
        if mask is not None:
            a = a.masked_fill(~mask, float("-inf"))
        return torch.einsum("nl,nld->nd", a.softmax(-1), x)


class ProbabilisticEncoder(nn.Module):
    """Eqs. 3-6: (g (N, D), l (N, L, D), mask) -> mu (N, D), variance (N, D)."""

    def __init__(self, dim: int, sigma_init: float):
        super().__init__()
        self.attn_mu, self.attn_var = AttnPool(dim), AttnPool(dim)
        self.mlp_mu, self.mlp_var = mlp(dim), mlp(dim)
        self.ln = nn.LayerNorm(dim)
        with torch.no_grad():
            self.ln.weight.fill_(1 / math.sqrt(dim))
            self.mlp_mu[-1].weight.zero_()
            self.mlp_mu[-1].bias.zero_()
            self.mlp_var[-1].weight.zero_()
            self.mlp_var[-1].bias.fill_(math.log(sigma_init**2 / dim))

    def forward(self, g: Tensor, l: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = self.ln(g + torch.sigmoid(self.mlp_mu(self.attn_mu(l, mask))))
        return mu, self.mlp_var(g + self.attn_var(l, mask)).exp()


@register_method("dvtr")
class DVTRHead(RetrievalHead):
    needs_tokens = True

    @dataclass
    class Config:
        objective: str = "contrastive"  # "contrastive" (Eq. 13) or "triplet" (Eq. 12)
        margin: float = 0.5  # lambda of Eq. 12
        num_samples: int = 7  # K Monte-Carlo samples of Eq. 8
        uncertainty_weight: float = 1.0  # weight of L_U + L_eta (paper: separate phase, no weight)
        sigma_init: float = 0.1  # initial noise norm relative to mu (ours)

    def __init__(self, embed_dim: int, num_frames: int, config=None):
        super().__init__(embed_dim, num_frames, config)
        if self.config.objective not in ("contrastive", "triplet"):
            raise ValueError(f"objective must be 'contrastive' or 'triplet', got {self.config.objective!r}")
        self.prob_text = ProbabilisticEncoder(embed_dim, self.config.sigma_init)
        self.prob_video = ProbabilisticEncoder(embed_dim, self.config.sigma_init)
        self.log_a = nn.Parameter(torch.zeros(()))  # MLP_eta(W) = exp(log_a) (b - W), Eq. 10
        self.b = nn.Parameter(torch.zeros(()))

    def draw_noise(self, n_text, n_video, *, generator=None, training=False):
        if not training:
            return {}
        like, k, d = self.b, self.config.num_samples, self.embed_dim
        return {"text": draw("gaussian", (n_text, k, d), generator, like),
                "video": draw("gaussian", (n_video, k, d), generator, like)}

    def eta_logits(self, w: Tensor) -> Tensor:
        """logit of eta = -MLP_eta(W) = exp(log_a) (W - b)  (Eq. 10)."""
        return self.log_a.exp() * (w - self.b)

    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        f = l2n(frames)
        v = l2n(f.mean(1))
        mu, var = self.prob_video(v, f)
        return {"video": v, "mu": mu, "var": var}

    def _text_side(self, text: TextFeatures) -> dict[str, Tensor]:
        t = l2n(text.sentence)
        mu, var = self.prob_text(t, l2n(text.tokens), text.mask)
        return {"text": t, "mu": mu, "var": var}

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        ts = self._text_side(text)
        w = wasserstein2_sq(ts["mu"], ts["var"], video["mu"], video["var"])
        return ScoreOutput(ts["text"] @ video["video"].t(), torch.sigmoid(self.eta_logits(w)))

    def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
        b = frames.shape[0]
        noise = self._noise(noise, b, b, generator, True)
        ts, vs = self._text_side(text), self.video_side(frames)
        s = ts["text"] @ vs["video"].t()
        w = wasserstein2_sq(ts["mu"], ts["var"], vs["mu"], vs["var"])  # (B, B), Eq. 9
        eye = torch.eye(b, dtype=torch.bool, device=s.device)
        # Eq. 8 on positive pairs: Monte-Carlo cosine of K x K samples, plus W
        zt = ts["mu"][:, None] + ts["var"].sqrt()[:, None] * noise["text"]
        zv = vs["mu"][:, None] + vs["var"].sqrt()[:, None] * noise["video"]
        l_u = (-torch.einsum("bmd,bnd->bmn", l2n(zt), l2n(zv)).mean((1, 2)) + w.diagonal()).mean()
        # Eqs. 10-11 (calibration, see docstring): BCE with target 0 on positives, 1 on negatives
        logits = self.eta_logits(w.detach())
        bce = F.binary_cross_entropy_with_logits(logits, (~eye).to(logits.dtype), reduction="none")
        l_eta = 0.5 * (bce[eye].mean() + bce[~eye].mean())
        eta = torch.sigmoid(self.eta_logits(w)).detach()
        if self.config.objective == "contrastive":
            rank = debiased_contrastive(s, eta, logit_scale)
        else:
            rank = debiased_triplet(s, eta, self.config.margin)
        return {"loss": rank + self.config.uncertainty_weight * (l_u + l_eta), "rank": rank,
                "uncertainty": l_u, "eta_calibration": l_eta, "eta_negatives": eta[~eye].mean()}
