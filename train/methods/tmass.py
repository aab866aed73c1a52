"""T-MASS: text is modelled as a stochastic embedding, a "text mass" around t (Wang et al., CVPR 2024;
paper 001), on top of X-Pool fusion (xpool.py, Eq. 4).

    S_i    = cos(t, f_i), i = 1..T'                        Eq. 6  raw frame features, before fusion
    R      = exp(S W + b)          radius="linear"         Eq. 7  W: T' -> D, one radius per dimension
    R      = exp(theta/T' sum_i S_i) radius="scalar"       Sec. 3.3, broadcast to D
    t_s    = t + R * eps,  eps ~ P                         Eq. 5
    t_sup  = t + R * (v - t) / |v - t|                     Eq. 8  on the mass's surface, toward v
    L      = L_s + alpha * L_sup                           Eq. 9  both symmetric InfoNCE (Eq. 2) with
                                                                  t replaced by t_s, resp. t_sup
    score  = max_m cos(t_s^m, v),  m = 1..M                Eq. 10 best of M samples, per pair

v = v_{t,v} is X-Pool's text-conditioned video embedding, and S uses the video's frames, so R, t_s
and t_sup all belong to a (text, video) pair: tensors are (N_t, N_v, D).

Choices, where the paper leaves room (official code: Jiamian-Wang/T-MASS-text-video-retrieval):
  * prior="uniform" is the default: eps ~ U[0, 1)^D, the official code's `stochastic_prior=
    'uniform01'`. The paper writes e.g. N(0, 1); prior="gaussian" gives N(0, prior_std^2).
    U[0, 1) is not centred: the mass is a box from t to t + R, centre t + R/2.
  * Linear radius: nn.Linear with bias, initialised as the official LinearCosRadius: identity
    weight (log R_d = S_d for d < T', 0 beyond), zero bias. Scalar radius: theta starts at 1,
    i.e. the paper's unlearnable exp(mean S) of Table 5.
  * t is the raw (not normalised) sentence feature, as in the official code; S is a cosine.
  * train_radius="positive" (default, the official trainer): in training text i's radius and
    support vector come from its own video i, and that one t_s_i (one sample per text and step)
    is compared with every video of the batch. train_radius="pair": R_ij for every pair, exactly
    as at inference (train/test consistent; an ablation the paper does not run).
  * Support anchor: v = psi(frames_i, t_i), the pair's fused video (Eq. 8 with Eq. 4). The
    official code anchors on the mean over the batch's texts of psi(frames_i, t_k); that depends on
    the batch and has no inference counterpart, so it is not followed.
  * No L_ce on t itself (Table 6a: it hurts). alpha = 1.2, the paper's best (Fig. 6). The official
    README trains MSRVTT with 0.8 and LSMDC / DiDeMo with 0 (the CLI default), and LSMDC with
    prior="gaussian", prior_std=3e-3: set these per dataset to reproduce the released runs.
  * Inference noise is (M, N_t, D): one set of M samples per text, shared by all videos (common
    random numbers; the official evaluation redraws per video). It makes the noise a text-side
    export input and rankings of one text's videos compare like with like.
  * Best of M is computed without building the (M, N_t, N_v, D) samples (`sample_cos`).
  * inference="mean" scores cos(t, v) (Table 6b, "w/o sampling"): then T-MASS ranks like X-Pool.
  * uncertainty = mean_d R_ij (|R|_1 / D, the quantity of Fig. 3: smallest for relevant pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probret.train.methods.base import (NoiseSpec, RetrievalHead, ScoreOutput, TextFeatures, l2n, register_method,
                                        symmetric_infonce)
from probret.train.methods.xpool import XPoolFusion, draw, pair_cos


def support_vector(t: Tensor, r: Tensor, v: Tensor) -> Tensor:
    """Eq. 8: t + r * (v - t) / |v - t| (broadcasting; r per dimension, so |t_sup - t| = |r * u|)."""
    return t + r * l2n(v - t)


def sample_cos(t: Tensor, r: Tensor, eps: Tensor, v: Tensor) -> Tensor:
    """cos(t_i + r_ij * eps_mi, v_ij) for every m, i, j -> (M, N_t, N_v).

    t (N_t, D), r and v (N_t, N_v, D), eps (M, N_t, D). Uses (t + r e).v = t.v + e.(r v) and
    |t + r e|^2 = |t|^2 + 2 e.(r t) + e^2.r^2, so memory is O(N_t N_v (M + D)), not O(M N_t N_v D)."""
    dot = (t[:, None] * v).sum(-1) + torch.einsum("mad,and->man", eps, r * v)
    sq = ((t * t).sum(-1)[:, None] + 2 * torch.einsum("mad,and->man", eps, r * t[:, None])
          + torch.einsum("mad,and->man", eps * eps, r * r))
    return dot / (sq.clamp_min(1e-12).sqrt() * v.norm(dim=-1).clamp_min(1e-6))


@register_method("tmass")
class TMassHead(RetrievalHead):
    export_form = "TMassForm"

    @dataclass
    class Config:
        radius: str = "linear"  # "linear": exp(S W) (Eq. 7) | "scalar": exp(theta * mean S)
        prior: str = "uniform"  # "uniform": U[0,1) (official default) | "gaussian": N(0, prior_std^2)
        prior_std: float = 1.0
        alpha: float = 1.2  # weight of the support loss (Eq. 9)
        num_samples: int = 20  # M at inference (Eq. 10)
        inference: str = "best_of_m"  # "best_of_m" | "mean" (score with t itself)
        train_radius: str = "positive"  # "positive" (official) | "pair" (as at inference)
        num_heads: int = 1  # X-Pool fusion
        dropout: float = 0.3

    def __init__(self, embed_dim: int, num_frames: int, config=None):
        super().__init__(embed_dim, num_frames, config)
        c = self.config
        for key, allowed in (("radius", ("linear", "scalar")), ("prior", ("uniform", "gaussian")),
                             ("inference", ("best_of_m", "mean")), ("train_radius", ("positive", "pair"))):
            if getattr(c, key) not in allowed:
                raise ValueError(f"tmass: {key} must be one of {allowed}, got {getattr(c, key)!r}")
        if c.num_samples < 1:
            raise ValueError(f"tmass: num_samples must be >= 1, got {c.num_samples}")
        self.fusion = XPoolFusion(embed_dim, c.num_heads, c.dropout)
        if c.radius == "linear":
            self.radius_proj = nn.Linear(num_frames, embed_dim)
            nn.init.eye_(self.radius_proj.weight)
            nn.init.zeros_(self.radius_proj.bias)
        else:
            self.theta = nn.Parameter(torch.ones(()))

    # -- pieces --------------------------------------------------------------------------------
    def radius(self, text: Tensor, frames_n: Tensor) -> Tensor:
        """text (N_t, D) raw, frames_n (N_v, T', D) unit-norm -> R (N_t, N_v, D) (Eqs. 6-7)."""
        s = torch.einsum("ad,ntd->ant", l2n(text), frames_n)
        if self.config.radius == "linear":
            return self.radius_proj(s).exp()
        return (self.theta * s.mean(-1, keepdim=True)).exp().expand(*s.shape[:2], self.embed_dim)

    def draw_noise(self, n_text, n_video, *, generator=None, training=False):
        like = self.fusion.q_proj.weight
        if not training and self.config.inference == "mean":
            return {}
        m = 1 if training else self.config.num_samples
        eps = draw(self.config.prior, (m, n_text, self.embed_dim), generator, like)
        noise = {"eps": eps if self.config.prior == "uniform" else eps * self.config.prior_std}
        if training:
            noise.update(self.fusion.draw_dropout(n_text, n_video, generator, like))
        return noise

    def inference_noise(self):
        c = self.config
        if c.inference == "mean":
            return []
        scale = 1.0 if c.prior == "uniform" else float(c.prior_std)
        return [NoiseSpec("eps", c.prior, scale, (c.num_samples, self.embed_dim), side="text", axis=1)]

    # -- scoring -------------------------------------------------------------------------------
    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        return {**self.fusion.video_side(frames), "frames": l2n(frames)}

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        t = text.sentence
        v = self.fusion.pair_side(t, video)
        r = self.radius(t, video["frames"])
        if self.config.inference == "mean":
            return ScoreOutput(pair_cos(t[:, None], v), r.mean(-1))
        eps = self._noise(noise, t.shape[0], v.shape[1], generator, False)["eps"]
        return ScoreOutput(sample_cos(t, r, eps, v).amax(0), r.mean(-1))

    # -- training ------------------------------------------------------------------------------
    def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
        b = frames.shape[0]
        noise = self._noise(noise, b, b, generator, True)
        t, video = text.sentence, self.video_side(frames)
        v = self.fusion.pair_side(t, video, noise.get("dropout"))  # (B, B, D): video j fused for text i
        r = self.radius(t, video["frames"])  # (B, B, D)
        i = torch.arange(b, device=t.device)
        r_pos = r[i, i]
        anchor = v
        if self.config.train_radius == "positive":  # text i's mass is shaped by its own video only
            r, anchor = r_pos[:, None], v[i, i][:, None]
        t = t[:, None]
        t_s = t + r * noise["eps"][0][:, None]  # Eq. 5, one sample per text
        t_sup = support_vector(t, r, anchor)  # Eq. 8
        l_s = symmetric_infonce(logit_scale * pair_cos(t_s, v))
        l_sup = symmetric_infonce(logit_scale * pair_cos(t_sup, v))
        return {"loss": l_s + self.config.alpha * l_sup, "loss_sample": l_s.detach(),
                "loss_support": l_sup.detach(), "radius_pos": r_pos.detach().mean()}
