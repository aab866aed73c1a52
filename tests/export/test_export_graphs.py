"""export/graphs.py: the export-friendly ViT path of the frame graph and int8 quantisation."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch


def _backbone(seed: int = 0):
    """test-vit-tiny with every weight perturbed (zero biases / identity-like inits would hide a
    wrong bias slice, a missing scale or a transposed weight)."""
    from probret.train.backbone import create_backbone

    torch.manual_seed(seed)
    bb = create_backbone("test-vit-tiny", pretrained=None)
    bb.eval()
    with torch.no_grad():
        for p in bb.clip.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return bb


def _export(module, path, size: int) -> None:
    from probret.export.graphs import export_onnx

    export_onnx(module, (torch.randn(2, 3, size, size),), path, input_names=["pixels"],
                output_names=["frame_features"], dynamic_axes={"pixels": {0: "N"}, "frame_features": {0: "N"}},
                opset=17)


def _run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"pixels": x})[0]


def _ops(path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_vit_tokens_forward_matches_encode_image():
    from probret.export.graphs import FrameEncoderGraph, vit_supported, vit_tokens_forward

    bb = _backbone()
    visual = bb.clip.visual
    assert vit_supported(visual) and FrameEncoderGraph(bb).fast_vit
    x = torch.randn(3, 3, bb.image_size, bb.image_size)
    with torch.no_grad():
        ref = bb.clip.encode_image(x, normalize=False)
        got = vit_tokens_forward(visual, x)
    assert ref.abs().max() > 0.1  # not a degenerate tower
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_unsupported_visual_falls_back_to_encode_image():
    from probret.export.graphs import FrameEncoderGraph, vit_supported

    bb = _backbone()
    assert not FrameEncoderGraph(bb, fast_vit=False).fast_vit
    visual = bb.clip.visual
    visual.attn_pool = torch.nn.Identity()  # an attentional pooler: not reproduced by the fast path
    assert not vit_supported(visual)
    visual.attn_pool = None
    assert vit_supported(visual)
    assert not vit_supported(torch.nn.Linear(2, 2))
    visual.pool_type = "none"  # every token out: not reproduced either
    g = FrameEncoderGraph(bb)
    assert not g.fast_vit
    x = torch.randn(2, 3, bb.image_size, bb.image_size)
    with torch.no_grad():
        torch.testing.assert_close(g(x), bb.clip.encode_image(x, normalize=False))


def test_exported_frame_graph_is_compact_and_exact(tmp_path):
    """The fast graph has every linear layer as one Gemm and next to no run-time shape arithmetic,
    and ONNX Runtime reproduces PyTorch on a batch size other than the traced one."""
    from probret.export.graphs import FrameEncoderGraph

    bb = _backbone()
    size = bb.image_size
    fast, legacy = tmp_path / "fast.onnx", tmp_path / "legacy.onnx"
    _export(FrameEncoderGraph(bb), fast, size)
    _export(FrameEncoderGraph(bb, fast_vit=False), legacy, size)
    ops_fast, ops_legacy = _ops(fast), _ops(legacy)
    blocks = len(bb.clip.visual.transformer.resblocks)
    assert ops_fast["Gemm"] == 6 * blocks  # q, k, v, out, fc, proj per block
    assert ops_fast["Shape"] + ops_fast["Gather"] < ops_legacy["Shape"] + ops_legacy["Gather"]
    assert sum(ops_fast.values()) < sum(ops_legacy.values())
    x = np.random.default_rng(0).standard_normal((5, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        ref = bb.clip.encode_image(torch.from_numpy(x), normalize=False).numpy()
    np.testing.assert_allclose(_run(fast, x), ref, atol=1e-5)
    np.testing.assert_allclose(_run(legacy, x), ref, atol=1e-5)


def test_quantize_int8(tmp_path):
    from probret.export.graphs import FrameEncoderGraph, quantize_int8

    bb = _backbone()
    size = bb.image_size
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _export(FrameEncoderGraph(bb), src, size)
    quantize_int8(src, dst)
    ops = _ops(dst)
    assert ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"] > 0 and ops["DynamicQuantizeLinear"] > 0
    assert dst.stat().st_size < src.stat().st_size
    x = np.random.default_rng(1).standard_normal((4, 3, size, size), dtype=np.float32)
    ref, got = _run(src, x), _run(dst, x)
    err = np.abs(got - ref).max() / max(1.0, np.abs(ref).max())
    assert 0 < err < 0.1  # int8 rounding, not a broken graph
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("attr", ["in_proj_bias", "out_proj"])
def test_fast_path_is_sensitive_to_attention_weights(attr):
    """Guard against a path that silently skips attention: changing attention weights changes the
    output of both the reference and the fast path, and they still agree."""
    from probret.export.graphs import vit_tokens_forward

    bb = _backbone(1)
    visual = bb.clip.visual
    x = torch.randn(2, 3, bb.image_size, bb.image_size)
    with torch.no_grad():
        before = vit_tokens_forward(visual, x)
        attn = visual.transformer.resblocks[0].attn
        p = attn.in_proj_bias if attr == "in_proj_bias" else attn.out_proj.weight
        p.add_(0.5 * torch.randn_like(p))
        after = vit_tokens_forward(visual, x)
        ref = visual(x)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=1e-5)
