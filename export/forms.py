"""Export forms: each retrieval head rewritten for deployment, split into a video side and a pair side.

A head in ``train/methods`` already has ``video_side(frames) -> dict`` and
``pair_side(text, video, noise=...) -> ScoreOutput``. An *export form* is a second, equivalent
implementation of the same two halves, written for an inference graph:

* **video side** (``video_side(frames (N_v, T', D)) -> dict``): every text-independent tensor,
  each with N_v as its first axis, computed once per video at index time and stored;
* **pair side** (``pair(text, video, noise) -> (scores (N_t, N_v), uncertainty or None)``): the
  query-time work. Its cost per (query, video) pair is O(T'·d) (plus O(M·d) for M samples):
  no d x d matrix is applied per pair. Only matrix products, elementwise ops, reductions,
  softmax and TopK: no Einsum, no random ops, no data-dependent shapes (TensorRT friendly);
* **noise** enters as *banks*: one (M, D)-like tensor per noise key, shared by every query and
  every video (common random numbers). The PyTorch reference receives exactly the same numbers,
  broadcast to the head's own noise layout (``NoiseSpec.expand``), so the two agree to rounding.

The X-Pool fusion (xpool, tmass, spem, duq) is the part that needed restructuring: its
``LN2 -> linear_proj -> residual -> LN3`` tail applies a d x d matrix to every pair. Because
everything between the attention weights and LN3 is affine in the weights w (J = H·T' of them),
the tail folds into per-video matrices (``FusedXPool``; the derivation is in docs/export.md):

    x   = sum_j w_j V_j + b_o                       V_j: out_proj-folded values (J rows)
    LN2 : s   = rsqrt(c2^T G2 c2 / D + eps2),        c2 = [w, 1],  G2 = Xc Xc^T, X = [V; b_o]
    y   = c3^T Y,                                     c3 = [s·w, s, 1], Y = [(A + A W_L^T); e]
          A = gamma2 * Xc, e = beta2 + beta2 W_L^T + b_L
    LN3 : rho = rsqrt(c3^T G3 c3 / D + eps3),        G3 = Yc Yc^T
    z   = rho · c3^T (gamma3 * Yc) + beta3          the fused video embedding v_{t,v}

so per pair: attention logits (T'·d), two (J+2)-dim quadratic forms (J^2), and either one
(J+2)-dim combination of stored rows (J·d, when z itself is needed: tmass, spem) or, for a
cosine with t alone (xpool, duq), ``t·z`` and ``|z|^2`` from (J+2)-dim products (J·d + J^2).

Forms: meanp, xpool, tmass, spem, duq are restructured (``optimized = True``). dvtr and prota
use ``GenericForm``, which calls the head's own ``video_side`` / ``pair_side``; their pair sides
already cost O(d) resp. O(L·T'·d) per pair, so nothing is lost. Any other head falls back to
``GenericForm`` as well (correct, but its pair graph may be O(d^2) per pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probret.engine.errors import ModelError
from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures

__all__ = ["NoiseSpec", "ExportForm", "FusedXPool", "GenericForm", "create_form", "FORMS", "NEEDS_TOKENS",
           "NOISE_DISTRIBUTIONS", "probe_noise_specs", "set_num_samples"]

#: Heads whose pair side reads the text's token features and mask (others need only the sentence).
NEEDS_TOKENS = {"duq", "dvtr", "prota"}


# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseSpec:
    """One noise input of a pair graph.

    key:   the key in the head's noise dict (``draw_noise``), e.g. "eps", "eps_t".
    name:  graph input name, ``noise_<key>``.
    distribution: "uniform" (U[0, 1)) or "gaussian" (N(0, 1)), then multiplied by ``scale``.
    shape: the bank's shape: the head's noise shape without its text / video axis.
    side:  "text" or "video": which count the head's tensor has at ``axis``.
    axis:  where the head's tensor has its N_text / N_video axis.
    """

    key: str
    distribution: str
    scale: float
    shape: tuple[int, ...]
    side: str
    axis: int

    @property
    def name(self) -> str:
        return f"noise_{self.key}"

    def expand(self, bank: Tensor, n_text: int, n_video: int) -> Tensor:
        """The head's layout: the bank broadcast along the text / video axis (a view)."""
        n = n_text if self.side == "text" else n_video
        x = bank.unsqueeze(self.axis)
        shape = list(x.shape)
        shape[self.axis] = n
        return x.expand(*shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "distribution": self.distribution, "scale": self.scale,
                "shape": list(self.shape), "side": self.side, "axis": self.axis}


#: Distribution and scale of every inference noise key, per method (the head's draw_noise).
def _tmass_noise(head) -> dict:
    c = head.config
    return {"eps": ("uniform", 1.0) if c.prior == "uniform" else ("gaussian", float(c.prior_std))}


NOISE_DISTRIBUTIONS = {
    "tmass": _tmass_noise,
    "spem": lambda head: {"eps_t": ("gaussian", 1.0), "eps_v": ("gaussian", 1.0)},
    "duq": lambda head: {"text": ("gaussian", 1.0), "video": ("gaussian", 1.0)},
}


def set_num_samples(head: RetrievalHead, samples: int | None) -> int | None:
    """Override the head's number of inference samples M (``--samples``); returns the M in use
    (None for heads that do not sample)."""
    has = hasattr(head.config, "num_samples")
    if samples is not None:
        if samples < 1:
            raise ModelError(f"--samples must be >= 1, got {samples}")
        if not has:
            raise ModelError(f"method {head.name!r} does not sample at inference; --samples does not apply")
        head.config.num_samples = int(samples)
    return int(head.config.num_samples) if has else None


def probe_noise_specs(head: RetrievalHead) -> list[NoiseSpec]:
    """Find the head's inference noise keys and their text / video axes by calling ``draw_noise``
    with two different (n_text, n_video) and seeing which axis follows which count."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        a = head.draw_noise(5, 7, generator=g, training=False)
        b = head.draw_noise(6, 9, generator=g, training=False)
    if not a:
        return []
    table = NOISE_DISTRIBUTIONS.get(head.name)
    if table is None:
        raise ModelError(
            f"method {head.name!r} draws noise at inference ({sorted(a)}) but export does not know its "
            "distribution; add it to probret.export.forms.NOISE_DISTRIBUTIONS")
    dists = table(head)
    specs = []
    for key in sorted(a):
        sa, sb = tuple(a[key].shape), tuple(b[key].shape)
        diff = [i for i, (x, y) in enumerate(zip(sa, sb)) if x != y]
        if len(sa) != len(sb) or len(diff) != 1:
            raise ModelError(f"{head.name}: noise {key!r} must have exactly one text or video axis (shapes {sa}, {sb})")
        axis = diff[0]
        side = {(5, 6): "text", (7, 9): "video"}.get((sa[axis], sb[axis]))
        if side is None:
            raise ModelError(f"{head.name}: noise {key!r} axis {axis} follows neither n_text nor n_video")
        if key not in dists:
            raise ModelError(f"{head.name}: no distribution known for noise {key!r}")
        dist, scale = dists[key]
        specs.append(NoiseSpec(key, dist, float(scale), sa[:axis] + sa[axis + 1:], side, axis))
    return specs


def _l2n(x: Tensor) -> Tensor:
    """F.normalize(x, dim=-1, eps=1e-6) written as x / max(|x|, eps) (same numbers)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _l2n_t(x: Tensor) -> Tensor:
    """_l2n(x).t() (same numbers), normalised after the transpose: the pair graphs multiply stored
    features by it, and a Transpose feeding a MatMul directly becomes ONNX Runtime's
    FusedMatMul(transB), measured ~1.6x slower than a plain MatMul on (N_v*T', D) @ (D, 1)."""
    return x.t() / x.norm(dim=-1).clamp_min(1e-6)


def _rows_times(x: Tensor, w: Tensor) -> Tensor:
    """x (N, R, K) @ w (K, C) -> (N, R, C) as ONE (N*R, K) @ (K, C) matmul.

    A stored per-video tensor times a matrix shared by every video: flattening the video axis
    into the rows makes the graph read the stored features in one large GEMM instead of N tiny
    batched products (same sums, same order per output element)."""
    n, r, k = x.shape
    return torch.matmul(x.reshape(n * r, k), w).reshape(n, r, w.shape[-1])


# --------------------------------------------------------------------------------------------
# base
# --------------------------------------------------------------------------------------------
class ExportForm(nn.Module):
    """Base class. Subclasses set ``video_names`` (ordered keys of ``video_side``'s dict),
    ``has_uncertainty`` and implement ``video_side`` and ``pair``."""

    optimized = True  # pair-side cost per pair is O(T' d) (+ O(M d))
    video_names: tuple[str, ...] = ()
    has_uncertainty = False

    def __init__(self, head: RetrievalHead):
        super().__init__()
        self.head = head
        self.method = head.name
        self.embed_dim = head.embed_dim
        self.num_frames = head.num_frames
        self.needs_tokens = head.name in NEEDS_TOKENS
        self.noise_specs: list[NoiseSpec] = probe_noise_specs(head)

    # -- to implement ----------------------------------------------------------------------
    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def pair(self, text: TextFeatures, video: dict[str, Tensor], noise: dict[str, Tensor]
             ) -> tuple[Tensor, Tensor | None]:
        """noise: bank per key (``NoiseSpec.key``). Returns scores and uncertainty (N_t, N_v)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def score(self, text: TextFeatures, frames: Tensor, noise: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        return self.pair(text, self.video_side(frames), noise)

    def head_noise(self, noise: dict[str, Tensor], n_text: int, n_video: int) -> dict[str, Tensor] | None:
        """Banks -> the head's own noise dict (broadcast views)."""
        if not self.noise_specs:
            return None
        return {s.key: s.expand(noise[s.key], n_text, n_video) for s in self.noise_specs}

    @torch.no_grad()
    def reference(self, text: TextFeatures, frames: Tensor, noise: dict[str, Tensor]) -> ScoreOutput:
        """The PyTorch head itself on the same inputs and the same noise numbers."""
        n_t, n_v = text.sentence.shape[0], frames.shape[0]
        return self.head.score(text, frames, noise=self.head_noise(noise, n_t, n_v))


# --------------------------------------------------------------------------------------------
# X-Pool fusion, restructured
# --------------------------------------------------------------------------------------------
class FusedXPool(nn.Module):
    """``XPoolFusion`` with its per-pair tail folded into per-video matrices (module docstring).

    video_side(frames) -> keys (N_v, H, T', E), g2 (N_v, J+1, J+1), g3 (N_v, J+2, J+2),
    yg (N_v, J+2, D) and, with ``gram=True``, gg (N_v, J+2, J+2) and yb (N_v, J+2).
    """

    def __init__(self, fusion):
        super().__init__()
        d, h = fusion.dim, fusion.num_heads
        self.dim, self.num_heads, self.head_dim = d, h, d // h
        self.ln1, self.k_proj, self.v_proj = fusion.ln1, fusion.k_proj, fusion.v_proj
        with torch.no_grad():
            scale = 1.0 / math.sqrt(d // h)
            self.register_buffer("wq", fusion.q_proj.weight.detach().clone() * scale)
            self.register_buffer("bq", fusion.q_proj.bias.detach().clone() * scale)
            self.register_buffer("w_out", fusion.out_proj.weight.detach().clone())
            self.register_buffer("b_out", fusion.out_proj.bias.detach().clone())
            g2, b2 = fusion.ln2.weight.detach().clone(), fusion.ln2.bias.detach().clone()
            wl, bl = fusion.linear_proj.weight.detach().clone(), fusion.linear_proj.bias.detach().clone()
            self.register_buffer("gamma2", g2)
            self.register_buffer("wl_t", wl.t().contiguous())
            self.register_buffer("e_row", b2 + b2 @ wl.t() + bl)
            self.register_buffer("gamma3", fusion.ln3.weight.detach().clone())
            self.register_buffer("beta3", fusion.ln3.bias.detach().clone())
        self.eps2, self.eps3 = float(fusion.ln2.eps), float(fusion.ln3.eps)
        if fusion.ln2.weight is None or fusion.ln3.weight is None:
            raise ModelError("X-Pool LayerNorms without affine parameters are not supported by the export form")

    def video_side(self, frames: Tensor, *, gram: bool) -> dict[str, Tensor]:
        n, t, d = frames.shape
        h, e = self.num_heads, self.head_dim
        f = self.ln1(frames)
        keys = self.k_proj(f).reshape(n, t, h, e).permute(0, 2, 1, 3)  # (N, H, T, E)
        vals = self.v_proj(f).reshape(n, t, h, e).permute(0, 2, 1, 3)  # (N, H, T, E)
        w_out = self.w_out.reshape(d, h, e).permute(1, 2, 0)  # (H, E, D): block h of out_proj
        v_rows = torch.matmul(vals, w_out.unsqueeze(0)).reshape(n, h * t, d)  # (N, J, D), j = h*T + t
        x = torch.cat([v_rows, self.b_out.expand(n, 1, d)], 1)  # (N, J+1, D)
        xc = x - x.mean(-1, keepdim=True)
        g2 = torch.matmul(xc, xc.transpose(1, 2))
        a = xc * self.gamma2
        b = a + torch.matmul(a, self.wl_t)
        y = torch.cat([b, self.e_row.expand(n, 1, d)], 1)  # (N, J+2, D)
        yc = y - y.mean(-1, keepdim=True)
        g3 = torch.matmul(yc, yc.transpose(1, 2))
        yg = yc * self.gamma3
        out = {"keys": keys, "g2": g2, "g3": g3, "yg": yg}
        if gram:
            out["gg"] = torch.matmul(yg, yg.transpose(1, 2))
            out["yb"] = torch.matmul(yg, self.beta3.unsqueeze(-1)).squeeze(-1)
        return out

    def coefficients(self, text: Tensor, video: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """text (N_t, D) raw -> c3 (N_v, N_t, J+2), rho (N_v, N_t, 1)."""
        keys = video["keys"]
        n_v, h, t, e = keys.shape
        n_t = text.shape[0]
        # q^T (D, N_t) computed as wq @ ln1(text)^T: reshaped straight to (H, E, N_t), no Transpose
        # in front of the key products (see _l2n_t); 1/sqrt(E) folded in
        q = (torch.matmul(self.wq, self.ln1(text).t()) + self.bq.unsqueeze(-1)).reshape(h, e, n_t)
        if h == 1:  # (N_v, 1, T, E) is (N_v*T, E) in memory: one large matmul over every video
            logits = torch.matmul(keys.reshape(n_v * t, e), q[0]).reshape(n_v, 1, t, n_t)
        else:  # one large matmul per head, (H, N_v*T, E) @ (H, E, N_t)
            kh = keys.transpose(0, 1).reshape(h, n_v * t, e)
            logits = torch.matmul(kh, q).reshape(h, n_v, t, n_t).transpose(0, 1)  # (N_v, H, T, N_t)
        w = logits.softmax(2).permute(0, 3, 1, 2).reshape(n_v, n_t, h * t)  # (N_v, N_t, J)
        ones = torch.ones_like(w[..., :1])
        c2 = torch.cat([w, ones], -1)
        var2 = (torch.matmul(c2, video["g2"]) * c2).sum(-1, keepdim=True) / self.dim
        s = torch.rsqrt(var2 + self.eps2)
        c3 = torch.cat([s * w, s, ones], -1)
        var3 = (torch.matmul(c3, video["g3"]) * c3).sum(-1, keepdim=True) / self.dim
        return c3, torch.rsqrt(var3 + self.eps3)

    def fused(self, text: Tensor, video: dict[str, Tensor]) -> Tensor:
        """v_{t,v} itself, (N_v, N_t, D): O(J d) per pair."""
        c3, rho = self.coefficients(text, video)
        return rho * torch.matmul(c3, video["yg"]) + self.beta3

    def cosine(self, text: Tensor, video: dict[str, Tensor]) -> Tensor:
        """cos(t, v_{t,v}) (N_v, N_t) without forming v_{t,v} (needs ``gram=True`` outputs)."""
        c3, rho = self.coefficients(text, video)
        rho = rho.squeeze(-1)
        yt = _rows_times(video["yg"], text.t()).transpose(1, 2)  # (N_v, N_t, J+2)
        tz = rho * (c3 * yt).sum(-1) + torch.matmul(text, self.beta3)  # (N_v, N_t)
        quad = (torch.matmul(c3, video["gg"]) * c3).sum(-1)
        lin = (c3 * video["yb"].unsqueeze(1)).sum(-1)
        zz = rho * rho * quad + 2 * rho * lin + (self.beta3 * self.beta3).sum()
        z_norm = zz.clamp_min(0).sqrt().clamp_min(1e-6)
        t_norm = text.norm(dim=-1).clamp_min(1e-6)
        return tz / (z_norm * t_norm)


# --------------------------------------------------------------------------------------------
# per-method forms
# --------------------------------------------------------------------------------------------
class MeanPForm(ExportForm):
    video_names = ("video",)

    def video_side(self, frames):
        return {"video": _l2n(_l2n(frames).mean(1))}

    def pair(self, text, video, noise):
        return torch.matmul(_l2n(text.sentence), video["video"].t()), None


class XPoolForm(ExportForm):
    video_names = ("keys", "g2", "g3", "yg", "gg", "yb")

    def __init__(self, head):
        super().__init__(head)
        self.xpool = FusedXPool(head.fusion)

    def video_side(self, frames):
        return self.xpool.video_side(frames, gram=True)

    def pair(self, text, video, noise):
        return self.xpool.cosine(text.sentence, video).t(), None


class TMassForm(ExportForm):
    video_names = ("keys", "g2", "g3", "yg", "frames")
    has_uncertainty = True

    def __init__(self, head):
        super().__init__(head)
        self.xpool = FusedXPool(head.fusion)
        c = head.config
        self.linear_radius = c.radius == "linear"
        self.mean_inference = c.inference == "mean"
        with torch.no_grad():
            if self.linear_radius:
                self.register_buffer("wr_t", head.radius_proj.weight.detach().t().clone())  # (T, D)
                self.register_buffer("br", head.radius_proj.bias.detach().clone())
            else:
                self.register_buffer("theta", head.theta.detach().clone().reshape(()))

    def video_side(self, frames):
        return {**self.xpool.video_side(frames, gram=False), "frames": _l2n(frames)}

    def pair(self, text, video, noise):
        t = text.sentence  # (N_t, D) raw
        z = self.xpool.fused(t, video)  # (N_v, N_t, D)
        s = _rows_times(video["frames"], _l2n_t(t)).transpose(1, 2)  # (N_v, N_t, T)
        if self.linear_radius:
            r = torch.exp(torch.matmul(s, self.wr_t) + self.br)
        else:
            r = torch.exp(self.theta * s.mean(-1, keepdim=True)).expand(-1, -1, self.embed_dim)
        uncertainty = r.mean(-1).t()
        z_norm = z.norm(dim=-1)
        if self.mean_inference:
            cos = (t * z).sum(-1) / (t.norm(dim=-1).clamp_min(1e-6) * z_norm.clamp_min(1e-6))
            return cos.t(), uncertainty
        eps = noise["eps"]  # (M, D), shared by every text
        tz = (t * z).sum(-1, keepdim=True)
        dot = tz + torch.matmul(r * z, eps.t())  # (N_v, N_t, M)
        sq = ((t * t).sum(-1, keepdim=True) + 2 * torch.matmul(r * t, eps.t())
              + torch.matmul(r * r, (eps * eps).t()))
        cos = dot / (sq.clamp_min(1e-12).sqrt() * z_norm.clamp_min(1e-6).unsqueeze(-1))
        return cos.amax(-1).t(), uncertainty


class SPEMForm(ExportForm):
    video_names = ("keys", "g2", "g3", "yg", "frames")
    has_uncertainty = True

    def __init__(self, head):
        super().__init__(head)
        self.xpool = FusedXPool(head.fusion)
        c = head.config
        self.inference = c.inference
        self.sort = bool(c.sort_frame_sims)
        with torch.no_grad():
            for side, mod in (("t", head.sigma_t), ("v", head.sigma_v)):
                self.register_buffer(f"slope_{side}", F.softplus(mod.a.detach()).t().contiguous())  # (F, D)
                self.register_buffer(f"bias_{side}", mod.b.detach().clone())
                setattr(self, f"scale_{side}", float(mod.scale))

    def video_side(self, frames):
        return {**self.xpool.video_side(frames, gram=False), "frames": _l2n(frames)}

    def pair(self, text, video, noise):
        t = text.sentence
        mu_t = _l2n(t)  # (N_t, D)
        mu_v = _l2n(self.xpool.fused(t, video))  # (N_v, N_t, D)
        s_f = _rows_times(video["frames"], _l2n_t(t)).transpose(1, 2)  # (N_v, N_t, T)
        if self.sort:
            # K is a constant (T'), not read from the shape: TensorRT wants a build-time K
            s_f = torch.topk(s_f, self.num_frames, dim=-1, largest=True, sorted=True).values
        s = torch.cat([s_f, (mu_t * mu_v).sum(-1, keepdim=True)], -1)
        sig_t = self.scale_t * torch.exp(self.bias_t - torch.matmul(s, self.slope_t))
        sig_v = self.scale_v * torch.exp(self.bias_v - torch.matmul(s, self.slope_v))
        uncertainty = (sig_t.norm(dim=-1) + sig_v.norm(dim=-1)).t()
        if self.inference == "mean":
            cos = (mu_t * mu_v).sum(-1) / (mu_t.norm(dim=-1).clamp_min(1e-6) * mu_v.norm(dim=-1).clamp_min(1e-6))
            return cos.t(), uncertainty
        et, ev = noise["eps_t"], noise["eps_v"]  # (M, D) each
        ab = ((mu_t * mu_v).sum(-1, keepdim=True) + torch.matmul(sig_t * mu_v, et.t())
              + torch.matmul(sig_v * mu_t, ev.t()) + torch.matmul(sig_t * sig_v, (et * ev).t()))
        aa = ((mu_t * mu_t).sum(-1, keepdim=True) + 2 * torch.matmul(sig_t * mu_t, et.t())
              + torch.matmul(sig_t * sig_t, (et * et).t()))
        bb = ((mu_v * mu_v).sum(-1, keepdim=True) + 2 * torch.matmul(sig_v * mu_v, ev.t())
              + torch.matmul(sig_v * sig_v, (ev * ev).t()))
        cos = ab / (aa.clamp_min(0).sqrt().clamp_min(1e-6) * bb.clamp_min(0).sqrt().clamp_min(1e-6))
        scores = cos.amax(-1) if self.inference == "best_of_m" else cos.mean(-1)
        return scores.t(), uncertainty


class DUQForm(ExportForm):
    video_names = ("keys", "g2", "g3", "yg", "gg", "yb", "mu", "log_sigma")
    has_uncertainty = True

    def __init__(self, head):
        super().__init__(head)
        self.xpool = FusedXPool(head.fusion)
        self.gamma1, self.gamma2 = float(head.config.gamma1), float(head.config.gamma2)

    def video_side(self, frames):
        f = _l2n(frames)
        mu, log_sigma = self.head.prob_video(_l2n(f.mean(1)), f)
        return {**self.xpool.video_side(frames, gram=True), "mu": mu, "log_sigma": log_sigma}

    def pair(self, text, video, noise):
        s = self.xpool.cosine(text.sentence, video).t()  # (N_t, N_v)
        mu_t, ls_t = self.head.prob_text(_l2n(text.sentence), _l2n(text.tokens), text.mask)
        et, ev = noise["text"], noise["video"]  # (K, D) each
        k, d = et.shape
        zt = _l2n(mu_t.unsqueeze(1) + ls_t.exp().unsqueeze(1) * et)  # (N_t, K, D)
        zv = _l2n(video["mu"].unsqueeze(1) + video["log_sigma"].exp().unsqueeze(1) * ev)  # (N_v, K, D)
        n_t, n_v = zt.shape[0], zv.shape[0]
        cos = torch.matmul(zt.reshape(n_t * k, d), zv.reshape(n_v * k, d).t())  # (N_t K, N_v K)
        cos = cos.reshape(n_t, k, n_v, k).permute(0, 2, 1, 3).reshape(n_t, n_v, k * k)
        dist = 1 - cos.amax(-1)
        count = torch.ones_like(s).sum(1, keepdim=True)  # N_v of this call
        u_s = count / (F.relu(s) + 1).sum(1, keepdim=True)
        u_d = count / (F.relu(dist) + 1).sum(1, keepdim=True)
        scores = torch.exp(-self.gamma1 * u_d) * (1 - dist) * torch.exp(-self.gamma2 * u_s) * s
        return scores, u_s.expand_as(s)


class GenericForm(ExportForm):
    """The head's own ``video_side`` / ``pair_side`` (noise banks broadcast to its layout)."""

    optimized = False

    def __init__(self, head):
        super().__init__(head)
        if not (hasattr(head, "video_side") and hasattr(head, "pair_side")):
            raise ModelError(f"method {head.name!r} has no video_side / pair_side split; it cannot be exported")
        self.needs_tokens = True if head.name not in FORMS else head.name in NEEDS_TOKENS
        with torch.no_grad():
            probe = head.video_side(torch.zeros(2, head.num_frames, head.embed_dim))
            probe3 = head.video_side(torch.zeros(3, head.num_frames, head.embed_dim))
        for key in probe:
            if probe[key].shape[0] != 2 or probe3[key].shape[0] != 3:
                raise ModelError(f"{head.name}: video_side output {key!r} does not have N_v as its first axis")
        self.video_names = tuple(sorted(probe))
        text = TextFeatures(torch.zeros(2, head.embed_dim), torch.zeros(2, 3, head.embed_dim),
                            torch.ones(2, 3, dtype=torch.bool))
        with torch.no_grad():
            noise = {s.key: torch.zeros(s.shape) for s in self.noise_specs}
            out = head.pair_side(text, probe, noise=self.head_noise(noise, 2, 2))
        self.has_uncertainty = out.uncertainty is not None

    def video_side(self, frames):
        return self.head.video_side(frames)

    def pair(self, text, video, noise):
        # sizes from .shape (traced as dynamic dims), never len(): that would bake the tracing size in
        n_t, n_v = text.sentence.shape[0], video[self.video_names[0]].shape[0]
        out = self.head.pair_side(text, video, noise=self.head_noise(noise, n_t, n_v))
        return out.scores, out.uncertainty


FORMS: dict[str, type[ExportForm]] = {
    "meanp": MeanPForm,
    "xpool": XPoolForm,
    "tmass": TMassForm,
    "spem": SPEMForm,
    "duq": DUQForm,
    "dvtr": GenericForm,
    "prota": GenericForm,
}


def create_form(head: RetrievalHead, *, generic: bool = False) -> ExportForm:
    """The export form of ``head`` (eval mode); ``generic=True`` forces ``GenericForm``."""
    head.eval()
    cls = GenericForm if generic else FORMS.get(head.name, GenericForm)
    form = cls(head)
    form.eval()
    return form
