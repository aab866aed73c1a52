"""export/exporter.py ``quantize="int8"``: int8 encoders, their gate and what the manifest records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probret.engine.bundle import load_bundle
from probret.engine.errors import ModelError

BENCH_VIDEOS = 8  # as in conftest.py


@pytest.fixture(scope="module")
def int8_bundle(checkpoints, tmp_path_factory):
    from probret.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("int8") / "bundle"
    return export_checkpoint(checkpoints("meanp"), out, ExportOptions(quantize="int8", benchmark_videos=BENCH_VIDEOS))


def test_int8_bundle_contents(int8_bundle):
    import onnx

    out = int8_bundle.out
    m = json.loads((out / "manifest.json").read_text())
    q = m["quantization"]
    assert q["mode"] == "int8" and q["graphs"] == ["text_encoder", "frame_encoder"]
    for name in ("text_encoder", "frame_encoder"):
        g = m["graphs"][name]
        assert g["file"] == f"{name}.int8.onnx" and g["precision"] == "int8"
        ops = {n.op_type for n in onnx.load(str(out / g["file"])).graph.node}
        assert "DynamicQuantizeLinear" in ops
        assert not (out / f"{name}.onnx").exists() and f"{name}.onnx" not in m["files"]
    for name in ("video_side", "pair_score"):  # the heads stay fp32
        assert m["graphs"][name]["file"] == f"{name}.onnx" and "precision" not in m["graphs"][name]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["int8"]["passed"] and parity["onnxruntime"]["passed"]
    ret = parity["int8"]["retrieval"]
    measured = q["measured"]
    assert measured["delta_R1_t2v"] == ret["delta_R1_t2v"] and measured["delta_R1_v2t"] == ret["delta_R1_v2t"]
    assert measured["R1_t2v_fp32"] == parity["onnxruntime"]["retrieval"]["R1_t2v"]
    assert ret["delta_R1_t2v"] >= -1.0 and ret["delta_R1_v2t"] >= -1.0
    assert int8_bundle.summary["int8"]["delta_R1_t2v"] == ret["delta_R1_t2v"]
    load_bundle(out)


def test_int8_features_close_to_fp32(int8_bundle, bundles):
    """The int8 runtime's features are int8-rounded fp32 features: close, not identical."""
    from probret.engine.runtime import BundleRuntime

    q = BundleRuntime(int8_bundle.out, device="cpu")
    f = BundleRuntime(bundles("meanp").out, device="cpu")
    size = q.bundle.preprocessing["image_size"]
    px = np.random.default_rng(3).standard_normal((6, 3, size, size), dtype=np.float32)
    a, b = q.encode_frames(px), f.encode_frames(px)
    err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
    assert 0 < err < 0.1
    ta, tb = q.encode_text(["a red circle moves left"]), f.encode_text(["a red circle moves left"])
    assert np.abs(ta["text_sentence"] - tb["text_sentence"]).max() > 0


def test_int8_gate_failure_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    from probret.export import parity
    from probret.export.exporter import ExportOptions, ParityError, export_checkpoint

    monkeypatch.setitem(parity.RETRIEVAL_GATES, "int8_min_overlap", 1.01)  # unreachable: the gate must fail
    out = tmp_path / "b"
    with pytest.raises(ParityError, match="int8: retrieval gate failed"):
        export_checkpoint(checkpoints("meanp"), out, ExportOptions(quantize="int8", benchmark_videos=4))
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"quantize": "int4"}, "--quantize"),
    ({"quantize": "int8", "trt": True}, "TensorRT"),
])
def test_bad_quantize_options(checkpoints, tmp_path, kwargs, match):
    from probret.export.exporter import ExportOptions, export_checkpoint

    with pytest.raises(ModelError, match=match):
        export_checkpoint(checkpoints("meanp"), tmp_path / "b", ExportOptions(**kwargs))
    assert not (tmp_path / "b").exists()
