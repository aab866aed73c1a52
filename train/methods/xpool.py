"""X-Pool: text-conditioned pooling of frames (Gorti et al., CVPR 2022; the fusion psi of T-MASS
Eq. 4, and the "Cross-Modal Attentive Fusion" of SPEM).

The text is the query of a scaled dot-product attention, the frames are keys and values, so every
(text, video) pair gets its own video embedding v_{t,v} (X-Pool Eqs. 2-5). The block follows
X-Pool's public code (modules/transformer.py), written here from its structure:

    t', f'   = LN1(t), LN1(f_1..f_T')                      one LayerNorm shared by both sides
    w        = softmax_f( q(t') . k(f'_f) / sqrt(d_head) )  per head, over the T' frames
    a        = LN2( out_proj( sum_f w_f v(f'_f) ) )
    v_{t,v}  = LN3( a + dropout(linear_proj(a)) )
    score    = cos(t, v_{t,v})                              t is the raw sentence feature
    loss     = symmetric InfoNCE over the B x B matrix of logit_scale * score (X-Pool Eq. 6)

Choices, where the paper or code leaves room:
  * All five linear layers start as the identity with zero bias (as X-Pool's `_init_parameters`),
    so at initialisation the block is a LayerNorm'd attention-weighted mean of the frames.
  * Defaults num_heads=1, dropout=0.3 (X-Pool / T-MASS configs).
  * The split: `video_side(frames)` does everything text-independent once per video (LN1, keys,
    values); `pair_side` does the per-pair rest. out_proj is linear, so it is folded into the
    values on the video side (sum_h W_h sum_f w_hf V_hf = sum_f w_hf (W_h V_hf); exact), which
    saves one D x D matmul per pair. linear_proj sits after LN2 and stays per pair.
  * Dropout is noise like any other: `draw_noise(training=True)` draws the (N_t, N_v, D) keep-mask
    (already divided by 1 - p) from the generator, so training is reproducible and an exported
    graph never hides randomness. `score` never applies dropout, whatever the module's mode.
  * Output layout is (N_t, N_v, D) (the official code uses (N_v, N_t, D)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures, l2n, register_method, symmetric_infonce


def draw(kind: str, shape, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """float32 noise from `generator` (drawn on the generator's device, so a CPU generator gives the
    same numbers whatever device the model is on), moved to `like`'s device and dtype."""
    device = generator.device if generator is not None else like.device
    fn = {"uniform": torch.rand, "gaussian": torch.randn}[kind]
    return fn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def dropout_mask(p: float, shape, generator, like: Tensor) -> Tensor:
    """Inverted-dropout keep-mask: 0 with probability p, 1 / (1 - p) otherwise."""
    return (draw("uniform", shape, generator, like) >= p).to(like.dtype) / (1.0 - p)


def pair_cos(t: Tensor, v: Tensor) -> Tensor:
    """Cosine along the last axis with broadcasting: t (N_t, 1, D) or (N_t, N_v, D), v likewise."""
    return (l2n(t) * l2n(v)).sum(-1)


class XPoolFusion(nn.Module):
    """The text-conditioned attention block; shared by the xpool, tmass and spem heads."""

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.3):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj, self.linear_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.linear_proj):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        """frames (N_v, T, D) raw -> keys (N_v, T, H, D/H), values (N_v, H, T, D) (out_proj folded in)."""
        n, t, d = frames.shape
        h = self.num_heads
        f = self.ln1(frames)
        keys = self.k_proj(f).view(n, t, h, d // h)
        values = self.v_proj(f).view(n, t, h, d // h)
        w_out = self.out_proj.weight.view(d, h, d // h)  # column block h multiplies head h
        return {"keys": keys, "values": torch.einsum("nthe,dhe->nhtd", values, w_out)}

    def attention(self, text: Tensor, keys: Tensor) -> Tensor:
        """text (N_t, D) raw, keys (N_v, T, H, E) -> weights (N_t, N_v, H, T), summing to 1 over T."""
        h, e = keys.shape[2], keys.shape[3]
        q = self.q_proj(self.ln1(text)).view(-1, h, e)
        return (torch.einsum("ahe,nthe->anht", q, keys) / math.sqrt(e)).softmax(-1)

    def pair_side(self, text: Tensor, video: dict[str, Tensor], dropout: Tensor | None = None) -> Tensor:
        """text (N_t, D) raw -> v_{t,v} (N_t, N_v, D). dropout: keep-mask (N_t, N_v, D) or None."""
        w = self.attention(text, video["keys"])
        a = self.ln2(torch.einsum("anht,nhtd->and", w, video["values"]) + self.out_proj.bias)
        lin = self.linear_proj(a)
        if dropout is not None:
            lin = lin * dropout
        return self.ln3(a + lin)

    def draw_dropout(self, n_text: int, n_video: int, generator, like: Tensor) -> dict[str, Tensor]:
        if self.dropout == 0.0:
            return {}
        return {"dropout": dropout_mask(self.dropout, (n_text, n_video, self.dim), generator, like)}


@register_method("xpool")
class XPoolHead(RetrievalHead):
    export_form = "XPoolForm"

    @dataclass
    class Config:
        num_heads: int = 1
        dropout: float = 0.3  # on linear_proj's output, training only

    def __init__(self, embed_dim: int, num_frames: int, config=None):
        super().__init__(embed_dim, num_frames, config)
        self.fusion = XPoolFusion(embed_dim, self.config.num_heads, self.config.dropout)

    def draw_noise(self, n_text, n_video, *, generator=None, training=False):
        if not training:
            return {}
        return self.fusion.draw_dropout(n_text, n_video, generator, self.fusion.q_proj.weight)

    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        return self.fusion.video_side(frames)

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        v = self.fusion.pair_side(text.sentence, video)
        return ScoreOutput(pair_cos(text.sentence[:, None], v))

    def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
        b = frames.shape[0]
        noise = self._noise(noise, b, b, generator, True)
        v = self.fusion.pair_side(text.sentence, self.video_side(frames), noise.get("dropout"))
        return {"loss": symmetric_infonce(logit_scale * pair_cos(text.sentence[:, None], v))}
