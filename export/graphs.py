"""The four ONNX graphs of a bundle, as torch modules, and their export.

    text_encoder   input_ids int32 (N_t, L)          -> text_sentence (N_t, D) float32
                                                        [+ text_tokens (N_t, L, D), text_mask (N_t, L) bool]
    frame_encoder  pixels float32 (N, 3, S, S)       -> frame_features (N, D)
    video_side     frames float32 (N_v, T', D)       -> video_<name> (N_v, ...) per stored tensor
    pair_score     text_* + video_* [+ noise_*]      -> scores (N_t, N_v) [+ uncertainty (N_t, N_v)]

Input and output names are the contract with ``engine/runtime.py``: the text graph's outputs are
the pair graph's ``text_*`` inputs, the video-side graph's outputs its ``video_*`` inputs.
Token ids enter as int32 (TensorRT's index type) and are widened inside the graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from probret.engine.bundle import TensorSpec
from probret.engine.errors import ModelError
from probret.train.methods.base import TextFeatures

__all__ = ["TextEncoderGraph", "FrameEncoderGraph", "VideoSideGraph", "PairGraph", "export_onnx", "onnx_io",
           "vit_supported", "vit_tokens_forward", "quantize_int8", "int8_pair_sum_bound", "INT8_GRAPHS",
           "INT8_SCHEME", "INT8_WEIGHT_LIMIT", "INT16_MAX"]


class TextEncoderGraph(nn.Module):
    def __init__(self, backbone, with_tokens: bool):
        super().__init__()
        self.backbone = backbone
        self.with_tokens = with_tokens
        self.output_names = ["text_sentence"] + (["text_tokens", "text_mask"] if with_tokens else [])

    def forward(self, input_ids: Tensor):
        # int32 ids straight in: Gather / ArgMax / Equal take int32, so no int64 tensors in the graph
        f = self.backbone.encode_text(input_ids)
        if self.with_tokens:
            return f.sentence, f.tokens, f.mask
        return f.sentence


class FrameEncoderGraph(nn.Module):
    """``Backbone.encode_frames`` on its (B*T, 3, H, W) batch, i.e. ``clip.encode_image``.

    For open_clip's ``VisionTransformer`` (every ViT CLIP: ViT-B/32, ViT-B/16, ...) the tower is
    traced through :func:`vit_tokens_forward` instead: the same arithmetic, written so the graph is
    small and fast under ONNX Runtime (``bench/encoder.py`` measures it, docs/benchmarks_encoder.md):

    * tokens stay a 2-D (N*L, W) matrix between blocks, so every linear layer exports as one
      ``Gemm`` with its bias (no MatMul + Add over a 3-D tensor);
    * q, k and v come from three ``Gemm``s (slices of the packed input projection, folded to
      constants), each split into heads with one ``Reshape`` + ``Transpose`` using the static
      sequence length L and head count (python ints at trace time); one ``Transpose`` merges the
      heads. Chosen over one packed ``Gemm`` + a 5-D transpose + three ``Gather``s, which copies
      q, k, v twice instead of once (a quick timing of the two was within this machine's
      noise). ``nn.MultiheadAttention``'s traced decomposition instead computes every shape at
      run time (602 Shape / Gather / Concat / Unsqueeze nodes for ViT-B/32, 2,085 nodes in all
      against 564 here);
    * the 1/sqrt(E) attention scale is folded into the q weights (constant folding at export),
      saving one Mul over (N, H, L, E) per block.

    Measured (bench/encoder.py, docs/benchmarks_encoder.md): 4-5% more frames/s than the traced
    ``encode_image`` under ONNX Runtime CPU; the graph then spends ~91% of its time in ``Gemm``.
    Outputs match ``encode_image`` to ~1e-6 (float rounding order only; the export's
    ``frame_features`` gate, 1e-4 absolute, checks every bundle). Any other visual tower (or a
    ViT option this path does not implement: attentional pooler, cross-attention, masks) is
    traced through ``encode_image`` as it is; :func:`vit_supported` decides.
    """

    output_names = ["frame_features"]

    def __init__(self, backbone, *, fast_vit: bool = True):
        super().__init__()
        self.backbone = backbone
        self.fast_vit = bool(fast_vit) and vit_supported(backbone.clip.visual)

    def forward(self, pixels: Tensor) -> Tensor:
        if self.fast_vit:
            return vit_tokens_forward(self.backbone.clip.visual, pixels)
        return self.backbone.clip.encode_image(pixels, normalize=False)


def vit_supported(visual) -> bool:
    """True when ``visual`` is an open_clip VisionTransformer that :func:`vit_tokens_forward`
    reproduces exactly: self-attention blocks of ``nn.MultiheadAttention`` with a packed,
    biased input projection, no attentional pooler."""
    try:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    except ImportError:
        return False
    if type(visual) is not VisionTransformer or getattr(visual, "attn_pool", None) is not None:
        return False
    if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        return False
    tr = visual.transformer
    for blk in tr.resblocks:
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            return False
        a = blk.attn
        if (not isinstance(a, nn.MultiheadAttention) or not a._qkv_same_embed_dim or a.in_proj_bias is None
                or a.bias_k is not None or a.add_zero_attn or a.embed_dim % a.num_heads):
            return False
    return True


def _attention_2d(attn: nn.MultiheadAttention, x: Tensor, seq: int) -> Tensor:
    """Self-attention of (N*seq, W) tokens, ``nn.MultiheadAttention`` in eval mode, no mask."""
    w, h = attn.embed_dim, attn.num_heads
    e = w // h
    wt, b, s = attn.in_proj_weight, attn.in_proj_bias, float(e) ** -0.5

    def heads(i: int, scale: float = 1.0) -> Tensor:  # (N, H, L, E); weight slices fold to constants
        y = nn.functional.linear(x, wt[i * w:(i + 1) * w] * scale, b[i * w:(i + 1) * w] * scale)
        return y.reshape(-1, seq, h, e).transpose(1, 2)

    q, k, v = heads(0, s), heads(1), heads(2)
    a = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v  # (N, H, L, E)
    a = a.transpose(1, 2).reshape(-1, w)  # (N*L, W)
    return nn.functional.linear(a, attn.out_proj.weight, attn.out_proj.bias)


def vit_tokens_forward(visual, pixels: Tensor) -> Tensor:
    """open_clip ``VisionTransformer.forward`` (pooled output) with 2-D token matrices and static
    attention shapes (FrameEncoderGraph docstring). ``visual`` must pass :func:`vit_supported`."""
    x = visual._embeds(pixels)  # (N, L, W): patch conv, class token, positions, ln_pre
    seq, width = int(visual.positional_embedding.shape[0]), int(x.shape[-1])
    x = x.reshape(-1, width)  # batch-first or not, the blocks act per token except attention (below)
    for blk in visual.transformer.resblocks:
        x = x + blk.ls_1(_attention_2d(blk.attn, blk.ln_1(x), seq))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    pooled, _ = visual._pool(x.reshape(-1, seq, width))
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


class VideoSideGraph(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.output_names = [f"video_{k}" for k in form.video_names]

    def forward(self, frames: Tensor):
        out = self.form.video_side(frames)
        return tuple(out[k] for k in self.form.video_names)


def sentence_features(sentence: Tensor) -> TextFeatures:
    """TextFeatures for sentence-only methods: the sentence, with placeholder token features
    (one token, unmasked) that their pair sides never read."""
    return TextFeatures(sentence, sentence[:, None], torch.ones_like(sentence[:, :1], dtype=torch.bool))


class PairGraph(nn.Module):
    """Inputs: text_sentence [, text_tokens, text_mask], video_* (form.video_names order),
    then noise_* (noise-input mode). In fixed-seed mode the banks are buffers: constants of the graph."""

    def __init__(self, form, *, fixed_noise: dict[str, Tensor] | None):
        super().__init__()
        self.form = form
        self.fixed = fixed_noise is not None
        self.noise_keys = [s.key for s in form.noise_specs]
        if self.fixed:
            for key in self.noise_keys:
                self.register_buffer(f"bank_{key}", fixed_noise[key].detach().clone().float())
        self.text_names = ["text_sentence"] + (["text_tokens", "text_mask"] if form.needs_tokens else [])
        self.video_input_names = [f"video_{k}" for k in form.video_names]
        self.noise_input_names = [] if self.fixed else [s.name for s in form.noise_specs]
        self.input_names = self.text_names + self.video_input_names + self.noise_input_names
        self.output_names = ["scores"] + (["uncertainty"] if form.has_uncertainty else [])

    def forward(self, *args: Tensor):
        n_text = len(self.text_names)
        n_video = len(self.video_input_names)
        t = args[:n_text]
        if len(t) == 3:
            text = TextFeatures(t[0], t[1], t[2])
        else:
            text = sentence_features(t[0])
        video = dict(zip(self.form.video_names, args[n_text:n_text + n_video]))
        if self.fixed:
            noise = {k: getattr(self, f"bank_{k}") for k in self.noise_keys}
        else:
            noise = dict(zip(self.noise_keys, args[n_text + n_video:]))
        scores, uncertainty = self.form.pair(text, video, noise)
        if self.form.has_uncertainty:
            return scores, uncertainty
        return scores


_DTYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64", 9: "bool", 11: "float64"}


def onnx_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX file as TensorSpecs (dynamic dims by their names)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}

    def spec(v) -> TensorSpec:
        tt = v.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
        return TensorSpec(v.name, _DTYPES.get(tt.elem_type, str(tt.elem_type)), dims)

    return ([spec(v) for v in model.graph.input if v.name not in init], [spec(v) for v in model.graph.output])


def export_onnx(module: nn.Module, args: tuple, path: str | Path, *, input_names: list[str],
                output_names: list[str], dynamic_axes: dict[str, dict[int, str]], opset: int) -> None:
    """torch.onnx.export (TorchScript-based exporter: no onnxscript needed), then onnx.checker."""
    import onnx

    module.eval()
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX
    # symbolic: switch it off while tracing.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
                              external_data=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(str(path))


#: The graphs ``--quantize int8`` quantises: the encoders hold almost all the FLOPs and weights;
#: the head graphs are small and stay fp32 (their ranking arithmetic is what the fp32 gates pin).
INT8_GRAPHS = ("text_encoder", "frame_encoder")
#: Largest magnitude of a quantised weight. ``reduce_range`` (7-bit weights, [-64, 64]) makes the
#: scheme correct by construction on every x86 CPU: without VNNI, ONNX Runtime's MLAS multiplies
#: u8 activations by s8 weights with VPMADDUBSW, which adds two products into a *saturating*
#: int16; 255 * (64 + 64) = 32,640 <= 32,767, so that sum can never clip, whereas full-range
#: weights (+-127: up to 64,770) did clip on AVX2-only EPYCs (int8 feature errors 0.16-0.27
#: against the 0.1 gate). VNNI / AMX (32-bit accumulation) and ARM never saturate either way.
INT8_WEIGHT_LIMIT = 64
#: The int16 accumulator VPMADDUBSW saturates at.
INT16_MAX = 32767
#: How (recorded in the manifest's ``quantization``). Measured on this repository's models
#: (docs/export.md, "int8 scheme"): 7-bit int8 weights keep the VNNI speed of full-range int8
#: (demo model frame encoder, 1 thread: 6,565 frames/s against 6,074 full range, 4,256 fp32)
#: at a scaled feature error of 0.023 (full range 0.017); u8 weights (U8U8, also saturation-free)
#: were as accurate (0.015) but slower than fp32 (3,936 frames/s): MLAS has no VNNI kernel for
#: them. Per-channel weight scales cost nothing in speed and keep the demo model's R@1 within
#: 0.25 pt of fp32 (per-tensor: 1 pt v2t). Dynamic (run-time) activation ranges need no
#: calibration set, so any checkpoint can be quantised at export.
INT8_SCHEME = {"name": "u8s8-reduce-range", "tool": "onnxruntime.quantization.quantize_dynamic",
               "ops": ["MatMul", "Gemm"],
               "weights": f"int8 in [-{INT8_WEIGHT_LIMIT}, {INT8_WEIGHT_LIMIT}] (reduce_range: 7 bits), symmetric, "
                          "per output channel",
               "activations": "uint8, per tensor, ranges computed at run time (DynamicQuantizeLinear)",
               "saturation": f"255 * 2 * {INT8_WEIGHT_LIMIT} = {255 * 2 * INT8_WEIGHT_LIMIT} <= {INT16_MAX}: "
                             "no int16 overflow in AVX2's VPMADDUBSW pair sums",
               "runs_on": "ONNX Runtime CPU (MatMulInteger / DynamicQuantizeMatMul); not TensorRT"}


class _DropLogRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """Write the int8 version of the fp32 graph ``src`` to ``dst`` (INT8_SCHEME), checked by onnx
    and by :func:`int8_pair_sum_bound` (a graph whose pair sums could saturate is an error)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    quiet = _DropLogRecords()  # quantize_dynamic logs a pre-processing hint on the root logger
    root.addFilter(quiet)
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         reduce_range=True, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(quiet)
    onnx.checker.check_model(str(dst))
    bound = int8_pair_sum_bound(dst)
    if bound > INT16_MAX:
        raise ModelError(f"{dst}: an int8 pair sum can reach {bound} > {INT16_MAX}, which saturates int16 on AVX2 "
                         "CPUs without VNNI; this onnxruntime's quantizer ignored reduce_range (report it)")


def int8_pair_sum_bound(path: str | Path) -> int:
    """The largest |a_k w_k + a_k+1 w_k+1| any MatMulInteger of the int8 graph ``path`` can form
    for uint8 activations a (0..255) and its stored int8 weights w: the int16 sum AVX2's
    VPMADDUBSW makes of each pair of adjacent products along the reduction axis K (MLAS packs B
    so that rows 2i and 2i+1 of every column meet in one lane). Raises ModelError for a graph
    outside the scheme (activations that are not uint8, weights that are not symmetric int8)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    worst = 0
    for node in (n for n in model.graph.node if n.op_type == "MatMulInteger"):
        src = producer.get(node.input[0])
        if src is None or src.op_type != "DynamicQuantizeLinear":
            raise ModelError(f"{path}: MatMulInteger {node.name} does not take uint8 DynamicQuantizeLinear activations")
        if node.input[1] not in init:
            raise ModelError(f"{path}: MatMulInteger {node.name} has no constant weight")
        w = numpy_helper.to_array(init[node.input[1]])
        zero = numpy_helper.to_array(init[node.input[3]]) if len(node.input) > 3 and node.input[3] else np.zeros(1)
        if w.dtype != np.int8 or np.any(zero != 0):
            raise ModelError(f"{path}: MatMulInteger {node.name} weights are not symmetric int8")
        w = w.astype(np.int64).reshape(w.shape[0], -1)  # (K, N)
        if w.shape[0] % 2:
            w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int64)])  # MLAS pads K with zeros
        # a >= 0, so a pair's sum is largest with a = 255 on its positive weights (or its negative ones)
        pos, neg = np.maximum(w, 0), np.maximum(-w, 0)
        pairs = np.maximum(pos[0::2] + pos[1::2], neg[0::2] + neg[1::2])
        worst = max(worst, int(255 * pairs.max(initial=0)))
    return worst
