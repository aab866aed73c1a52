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

Each head names its form (``RetrievalHead.export_form``, the name of a class here), declares
whether its pair side reads token features (``needs_tokens``) and its inference noise
(``inference_noise``); nothing here lists methods. meanp, xpool, tmass, spem, duq have
restructured forms (``optimized = True``). dvtr and prota use ``GenericForm``, which calls the
head's own ``video_side`` / ``pair_side``; their pair sides already cost O(d) resp. O(L·T'·d) per
pair, so nothing is lost. A new head starts with ``GenericForm`` (correct, but its pair graph may
be O(d^2) per pair) and gets a form of its own here when that matters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probret.engine.errors import ModelError
from probret.train.methods.base import NoiseSpec, RetrievalHead, ScoreOutput, TextFeatures
from probret.train.methods.spem import video_content

__all__ = ["NoiseSpec", "ExportForm", "FusedXPool", "GenericForm", "create_form", "form_class", "declared_noise_specs",
           "set_num_samples"]


# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------
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


def declared_noise_specs(head: RetrievalHead) -> list[NoiseSpec]:
    """The head's declared inference noise (``inference_noise``, sorted by key: the order the
    banks are drawn in), checked against what ``draw_noise`` really draws: the same keys, and each
    declared text / video axis follows that count when ``draw_noise`` is called with two different
    (n_text, n_video)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        a = head.draw_noise(5, 7, generator=g, training=False)
        b = head.draw_noise(6, 9, generator=g, training=False)
    specs = sorted(head.inference_noise(), key=lambda s: s.key)
    declared = [s.key for s in specs]
    if declared != sorted(a):
        raise ModelError(f"method {head.name!r} draws inference noise {sorted(a)} but declares {declared} in "
                         "inference_noise(); make the two agree")
    for spec in specs:
        for (n_t, n_v), drawn in (((5, 7), a), ((6, 9), b)):
            n = n_t if spec.side == "text" else n_v
            expected = spec.shape[:spec.axis] + (n,) + spec.shape[spec.axis:]
            if tuple(drawn[spec.key].shape) != expected:
                raise ModelError(f"{head.name}: noise {spec.key!r} is drawn with shape {tuple(drawn[spec.key].shape)} "
                                 f"for {n_t} texts x {n_v} videos but declared as {expected}")
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
        self.needs_tokens = bool(head.needs_tokens)
        self.noise_specs: list[NoiseSpec] = declared_noise_specs(head)

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
        # rho folded into the (N_v, N_t, J+2) coefficients: one fewer pass over (N_v, N_t, D)
        return torch.matmul(rho * c3, video["yg"]) + self.beta3

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


class _FusedZAndFramesForm(ExportForm):
    """Video side of the heads whose pair side needs the fused embedding z itself and the frame
    cosines (tmass, spem): the fused X-Pool tensors plus the L2-normalised frames."""

    video_names = ("keys", "g2", "g3", "yg", "frames")
    has_uncertainty = True

    def __init__(self, head):
        super().__init__(head)
        self.xpool = FusedXPool(head.fusion)

    def video_side(self, frames):
        return {**self.xpool.video_side(frames, gram=False), "frames": _l2n(frames)}


class TMassForm(_FusedZAndFramesForm):
    def __init__(self, head):
        super().__init__(head)
        c = head.config
        self.linear_radius = c.radius == "linear"
        self.mean_inference = c.inference == "mean"
        with torch.no_grad():
            if self.linear_radius:
                self.register_buffer("wr_t", head.radius_proj.weight.detach().t().clone())  # (T, D)
                self.register_buffer("br", head.radius_proj.bias.detach().clone())
            else:
                self.register_buffer("theta", head.theta.detach().clone().reshape(()))

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


class SPEMForm(_FusedZAndFramesForm):
    """SPEM's pair side, written to make as few passes over (pair, D) tensors as the algebra allows.

    Per pair (m = 1..M; a = mu_t, z the fused video embedding, b = mu_v = z / |z|, p = sigma_t,
    q = sigma_v, E_t / E_v the (M, D) noise banks), the m-th sample pair's cosine is
    ab_m / sqrt(aa_m bb_m) with

        ab_m = a.b + (p*b).E_t,m + (q*a).E_v,m + (p*q).(E_t*E_v)_m
        aa_m = a.a + 2 (p*a).E_t,m + (p*p).E_t,m^2
        bb_m = b.b + 2 (q*b).E_v,m + (q*q).E_v,m^2

    The seven bank products are the irreducible FLOPs (~143 k of ~200 k per pair at D=512, M=20);
    the rest is arranged around them (docs/export.md, "SPEM", has the derivation and numbers):

    * each modulator is ``scale * exp(bias - s.slope)``, s = [sorted frame cosines, a.b]. With
      s1 = [s, 1] and W = [-slope; bias] ((T'+2, D)), one small-K GEMM and one Exp give
      e = [p / scale_t, q / scale_v] and another gives p*q / (scale_t scale_v) = exp(s1 (W_t + W_v));
      the scales move into the banks, which every pair shares;
    * b is never formed: terms with b use z and their (pairs, M) results are scaled by 1 / |z|;
    * text-major layout (N_t, N_v, .) (one Transpose of z), so the per-query factors go into
      (N_t, 2, D, M) banks a*E and p*a, q*a are never formed;
    * four MatMuls do the seven products: e.[2a*E_t, a*E_v], (e*z).[E_t, 2E_v],
      (e*e).[E_t^2, E_v^2] and (p*q).(E_t*E_v). The third has one more column (scale^2 ones): it
      yields |p|^2 and |q|^2 for the uncertainty from the GEMM kernel's padding (M=20 of 32 lanes).

    Same numbers as the head up to float32 rounding (exp(2x) for exp(x)^2, scales applied to the
    banks); exp(2x) overflows float32 slightly earlier than (scale exp(x))^2 would (x > 44), far
    outside the modulators' range (|s| <= 1, slopes ~ 2 / (T'+1)).
    """

    def __init__(self, head):
        super().__init__(head)
        c = head.config
        self.inference = c.inference
        self.sort = bool(c.sort_frame_sims)
        self.item = getattr(c, "variance", "pair") == "item"
        if self.item:  # one radius per clip, computed at index time and stored
            self.video_names = (*self.video_names, "radius")
            return
        # content=True: exp(content offsets) multiply p (per text) and q (per video); see spem.py
        self.content = bool(getattr(c, "content", False))
        if self.content:
            self.video_names = (*self.video_names, "content")
        with torch.no_grad():
            w = {}
            for side, mod in (("t", head.sigma_t), ("v", head.sigma_v)):
                slope = F.softplus(mod.a.detach()).t()  # (F, D), F = T' + 1
                w[side] = torch.cat([-slope, mod.b.detach().reshape(1, -1)], 0)  # (T'+2, D): s1 @ w = b - s.slope
                setattr(self, f"scale_{side}", float(mod.scale))
            self.register_buffer("w_pq", torch.stack([w["t"], w["v"]]).contiguous())  # (2, T'+2, D)
            self.register_buffer("w_t_plus_v", (w["t"] + w["v"]).contiguous())  # (T'+2, D)
            st, sv = self.scale_t, self.scale_v
            # per-block bank factors, (2, 1, 1): block 0 = E_t / p, block 1 = E_v / q
            for name, (x, y) in {"c_a": (2 * st, sv), "c_z": (st, 2 * sv), "c_sq": (st * st, sv * sv)}.items():
                self.register_buffer(name, torch.tensor([x, y]).reshape(2, 1, 1))
            self.register_buffer("c_abs", torch.tensor([abs(st), abs(sv)]).reshape(2, 1))
            # the column of g_sq that sums p^2 (q^2): |p|^2 = scale_t^2 sum (p / scale_t)^2
            self.register_buffer("sq_norm", self.c_sq.expand(2, head.embed_dim, 1).contiguous())

    def video_side(self, frames):
        out = super().video_side(frames)
        if self.item:
            out["radius"] = self.head.radius_v(video_content(out["frames"])) * math.sqrt(self.embed_dim)
        elif self.content:
            out["content"] = video_content(out["frames"])
        return out

    def _pair_item(self, text, video, noise):
        """variance="item": p = r_t / sqrt(D) per query, q = r_v / sqrt(D) per clip (isotropic), so the
        m-th sample pair's cosine needs only z's products with the two banks:
        ab_m = a.b + p b.E_t,m + q a.E_v,m + p q E_t,m.E_v,m, aa_m = 1 + 2p a.E_t,m + p^2 |E_t,m|^2,
        bb_m = 1 + 2q b.E_v,m + q^2 |E_v,m|^2 (a, b unit)."""
        a = _l2n(text.sentence)
        z = self.xpool.fused(text.sentence, video).transpose(0, 1)  # (N_t, N_v, D)
        zn = 1 / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        ab0 = torch.matmul(z, a.unsqueeze(-1)) * zn  # (N_t, N_v, 1) = cos(mu_t, mu_v)
        r_t = self.head.radius_t(a) * math.sqrt(self.embed_dim)  # (N_t, 1)
        r_v = video["radius"].t()  # (1, N_v)
        uncertainty = r_t + r_v
        if self.inference == "mean":
            return ab0.squeeze(-1), uncertainty
        if self.inference == "expected":
            return ab0.squeeze(-1) / ((1 + r_t * r_t) * (1 + r_v * r_v)).sqrt(), uncertainty
        p, q = (r / math.sqrt(self.embed_dim) for r in (r_t[:, :, None], r_v[:, :, None]))  # (N_t,1,1), (1,N_v,1)
        e_t, e_v = noise["eps_t"], noise["eps_v"]  # (M, D) banks
        b_e = torch.matmul(z, torch.stack([e_t.t(), e_v.t()], -1).reshape(self.embed_dim, -1)) * zn  # (N_t, N_v, 2M)
        b_et, b_ev = b_e[..., 0::2], b_e[..., 1::2]
        a_et, a_ev = (torch.matmul(a, e.t())[:, None] for e in (e_t, e_v))  # (N_t, 1, M)
        ab = ab0 + p * b_et + q * a_ev + p * q * (e_t * e_v).sum(-1)
        aa = 1 + 2 * p * a_et + p * p * (e_t * e_t).sum(-1)
        bb = 1 + 2 * q * b_ev + q * q * (e_v * e_v).sum(-1)
        cos = ab / (aa.clamp_min(0).sqrt().clamp_min(1e-6) * bb.clamp_min(0).sqrt().clamp_min(1e-6))
        return cos.amax(-1), uncertainty

    def pair(self, text, video, noise):
        if self.item:
            return self._pair_item(text, video, noise)
        t = text.sentence
        a = _l2n(t)  # (N_t, D) = mu_t
        # text-major (N_t, N_v, .) from here: the per-query factors then fold into (N_t, D, M) banks
        z = self.xpool.fused(t, video).transpose(0, 1)  # (N_t, N_v, D), mu_v = z / |z|
        z_len = z.norm(dim=-1, keepdim=True)
        zn = 1 / z_len.clamp_min(1e-6)  # (N_t, N_v, 1)
        ab0 = torch.matmul(z, a.unsqueeze(-1)) * zn  # mu_t . mu_v, one GEMV per query
        s_f = _rows_times(video["frames"], _l2n_t(t)).permute(2, 0, 1)  # (N_t, N_v, T)
        if self.sort:
            # K is a constant (T'), not read from the shape: TensorRT wants a build-time K
            s_f = torch.topk(s_f, self.num_frames, dim=-1, largest=True, sorted=True).values
        s1 = torch.cat([s_f, ab0, torch.ones_like(ab0)], -1)  # (N_t, N_v, T'+2)
        e = torch.exp(torch.matmul(s1.unsqueeze(1), self.w_pq))  # (N_t, 2, N_v, D): [p / scale_t, q / scale_v]
        if self.content:
            f_t = torch.exp(self.head.content_t(a))[:, None]  # (N_t, 1, D)
            f_v = torch.exp(self.head.content_v(video["content"]))[None]  # (1, N_v, D)
            e = e * torch.stack([f_t.expand_as(e[:, 0]), f_v.expand_as(e[:, 1])], 1)
        if self.inference == "mean":
            uncertainty = (e.norm(dim=-1) * self.c_abs).sum(1)  # |p| + |q|
            b_len = (z_len * zn).squeeze(-1)
            cos = ab0.squeeze(-1) / (a.norm(dim=-1, keepdim=True).clamp_min(1e-6) * b_len.clamp_min(1e-6))
            return cos, uncertainty
        eps = torch.stack([noise["eps_t"], noise["eps_v"]]).transpose(1, 2)  # (2, D, M): [E_t^T, E_v^T]
        m = eps.shape[-1]
        g_a = torch.matmul(e, a[:, None, :, None] * (eps * self.c_a))  # (N_t, 2, N_v, M), per-query banks
        g_z = torch.matmul(e * z.unsqueeze(1), eps * self.c_z)  # (N_t, 2, N_v, M), times 1/|z| below
        g_sq = torch.matmul(e * e, torch.cat([eps * eps * self.c_sq, self.sq_norm], -1))  # (N_t, 2, N_v, M+1)
        pq = torch.exp(torch.matmul(s1, self.w_t_plus_v))  # (N_t, N_v, D) = p q / (scale_t scale_v)
        if self.content:
            pq = pq * f_t * f_v
        g_pq = torch.matmul(pq, eps[0] * eps[1] * (self.scale_t * self.scale_v))  # (N_t, N_v, M)
        uncertainty = g_sq[..., m].sqrt().sum(1)  # |p| + |q| (N_t, N_v)
        ab = ab0 + zn * g_z[:, 0] + g_a[:, 1] + g_pq
        aa = (a * a).sum(-1)[:, None, None] + g_a[:, 0] + g_sq[:, 0, :, :m]
        b_len = z_len * zn
        bb = b_len * b_len + zn * g_z[:, 1] + g_sq[:, 1, :, :m]
        cos = ab / (aa.clamp_min(0).sqrt().clamp_min(1e-6) * bb.clamp_min(0).sqrt().clamp_min(1e-6))
        scores = cos.amax(-1) if self.inference == "best_of_m" else cos.mean(-1)
        return scores, uncertainty


class DUQForm(ExportForm):
    video_names = ("keys", "g2", "g3", "yg", "gg", "yb", "mu", "log_sigma")
    has_uncertainty = True

    def __init__(self, head):
        super().__init__(head)
        self.xpool = FusedXPool(head.fusion)
        self.gamma1, self.gamma2 = float(head.config.gamma1), float(head.config.gamma2)
        self.shifted = getattr(head.config, "rerank", "paper") == "shifted"

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
        closeness, sim = ((1 - dist / 2), (1 + s) / 2) if self.shifted else ((1 - dist), s)  # duq.rerank
        scores = torch.exp(-self.gamma1 * u_d) * closeness * torch.exp(-self.gamma2 * u_s) * sim
        return scores, u_s.expand_as(s)


class GenericForm(ExportForm):
    """The head's own ``video_side`` / ``pair_side`` (noise banks broadcast to its layout)."""

    optimized = False

    def __init__(self, head):
        super().__init__(head)
        if not (hasattr(head, "video_side") and hasattr(head, "pair_side")):
            raise ModelError(f"method {head.name!r} has no video_side / pair_side split; it cannot be exported")
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


def form_class(head: RetrievalHead) -> type[ExportForm]:
    """The form class the head declares (``RetrievalHead.export_form``, a class of this module)."""
    cls = globals().get(head.export_form)
    if not (isinstance(cls, type) and issubclass(cls, ExportForm)):
        raise ModelError(f"method {head.name!r} declares export_form={head.export_form!r}, which is not a form in "
                         "probret.export.forms; use 'GenericForm' or add the form there")
    return cls


def create_form(head: RetrievalHead, *, generic: bool = False) -> ExportForm:
    """The export form of ``head`` (eval mode); ``generic=True`` forces ``GenericForm``."""
    head.eval()
    form = (GenericForm if generic else form_class(head))(head)
    form.eval()
    return form
