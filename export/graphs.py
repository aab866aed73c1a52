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
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from probret.engine.bundle import TensorSpec
from probret.train.methods.base import TextFeatures

__all__ = ["TextEncoderGraph", "FrameEncoderGraph", "VideoSideGraph", "PairGraph", "export_onnx", "onnx_io"]


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
    output_names = ["frame_features"]

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: Tensor) -> Tensor:
        # what Backbone.encode_frames runs on its (B*T, 3, H, W) batch
        return self.backbone.clip.encode_image(pixels, normalize=False)


class VideoSideGraph(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.output_names = [f"video_{k}" for k in form.video_names]

    def forward(self, frames: Tensor):
        out = self.form.video_side(frames)
        return tuple(out[k] for k in self.form.video_names)


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
        else:  # sentence-only methods: empty token features (never read)
            text = TextFeatures(t[0], t[0][:, None], torch.ones_like(t[0][:, :1], dtype=torch.bool))
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
