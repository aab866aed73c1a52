"""export/exporter.py ``quantize="int8"``: int8 encoders, their gate and what the manifest records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from probret.engine.bundle import load_bundle
from probret.engine.errors import ModelError

BENCH_VIDEOS = 8  # as in conftest.py


def demo_checkpoint():
    """The shipped demo model: trained, so its rankings have margins that int8 rounding must keep
    (a random model ranks near chance, where one flipped query of 32 is a 3 pt R@1 change)."""
    import probret.train

    return Path(probret.train.__file__).parent / "pretrained" / "demo-spem"


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    from probret.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("int8") / "bundle"
    return export_checkpoint(demo_checkpoint(), out, ExportOptions(quantize="int8", benchmark_videos=BENCH_VIDEOS))


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
        # the fp32 encoder stays beside it: the fallback where the int8 probe fails on a CPU
        assert g["fp32_file"] == f"{name}.onnx" and (out / g["fp32_file"]).is_file() and g["fp32_file"] in m["files"]
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


def test_int8_features_close_to_fp32(int8_bundle):
    """The int8 runtime's features are int8-rounded fp32 features: close, not identical."""
    from probret.engine.runtime import OrtGraph, BundleRuntime

    q = BundleRuntime(int8_bundle.out, device="cpu")
    fp32 = {n: OrtGraph(int8_bundle.out / f"{n}.onnx", ["CPUExecutionProvider"]) for n in ("text_encoder", "frame_encoder")}
    size = q.bundle.preprocessing["image_size"]
    px = np.random.default_rng(3).standard_normal((6, 3, size, size), dtype=np.float32)
    a, b = q.encode_frames(px), fp32["frame_encoder"].run({"pixels": px})["frame_features"]
    err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
    assert 0 < err < 0.1
    ids = q.tokenize(["a red circle moves left"])[0]
    ta, tb = q.encode_text(ids), fp32["text_encoder"].run({"input_ids": ids})
    assert np.abs(ta["text_sentence"] - tb["text_sentence"]).max() > 0


def test_int8_gate_failure_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    from probret.export import parity
    from probret.export.exporter import ExportOptions, ParityError, export_checkpoint

    monkeypatch.setitem(parity.RETRIEVAL_GATES, "int8_min_overlap", 1.01)  # unreachable: the gate must fail
    out = tmp_path / "b"
    with pytest.raises(ParityError, match="int8: retrieval gate failed"):
        export_checkpoint(checkpoints("meanp"), out, ExportOptions(quantize="int8", benchmark_videos=4))
    # nothing beside the cache (this module's own, _own_cache: the tokenizer's merge rules may be there)
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name != "cache"] == []


@pytest.mark.parametrize("kwargs,match", [
    ({"quantize": "int4"}, "--quantize"),
    ({"quantize": "int8", "trt": True}, "TensorRT"),
])
def test_bad_quantize_options(checkpoints, tmp_path, kwargs, match):
    from probret.export.exporter import ExportOptions, export_checkpoint

    with pytest.raises(ModelError, match=match):
        export_checkpoint(checkpoints("meanp"), tmp_path / "b", ExportOptions(**kwargs))
    assert not (tmp_path / "b").exists()


def test_int8_pair_sums_cannot_saturate_int16(int8_bundle, tmp_path):
    """Correct by construction on AVX2 without VNNI: no pair of adjacent u8 x s8 products that
    VPMADDUBSW adds into an int16 can pass 32,767, for any activations. The same check flags the
    old full-range scheme on the same fp32 graph, so it is not vacuous."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from probret.export.graphs import INT16_MAX, int8_pair_sum_bound

    m = json.loads((int8_bundle.out / "manifest.json").read_text())
    assert m["quantization"]["name"] == "u8s8-reduce-range"
    for name in ("text_encoder", "frame_encoder"):
        assert 0 < int8_pair_sum_bound(int8_bundle.out / m["graphs"][name]["file"]) <= INT16_MAX
    full = tmp_path / "full-range.onnx"
    quantize_dynamic(str(int8_bundle.out / "frame_encoder.onnx"), str(full), op_types_to_quantize=["MatMul", "Gemm"],
                     per_channel=True, weight_type=QuantType.QInt8)
    assert int8_pair_sum_bound(full) > INT16_MAX


# --------------------------------------------------------------------------------------------
# the load-time probe: int8 where it is accurate on this CPU, fp32 where it is not
# --------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _rewrite_probe(bundle, change) -> None:
    """Alter the stored probe and re-hash it in the manifest, as a bundle whose probe says the
    int8 graph is wrong would be: the real mechanism, not a CPU flag."""
    from probret.engine.bundle import sha256_file

    path = bundle / "int8_probe.npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(path, **arrays)
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"]["int8_probe.npz"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


def _verdict_files(cache):
    return sorted((cache / "int8-probe").glob("*.json")) if (cache / "int8-probe").is_dir() else []


def test_int8_probe_passes_and_is_cached(int8_bundle, _own_cache):
    from probret.engine.int8_probe import VERDICT_VERSION
    from probret.engine.runtime import BundleRuntime

    m = json.loads((int8_bundle.out / "manifest.json").read_text())
    probe = m["quantization"]["probe"]
    assert probe["file"] == "int8_probe.npz" and probe["tolerance"] == 0.1 and "int8_probe.npz" in m["files"]
    assert json.loads((int8_bundle.out / "parity.json").read_text())["int8"]["probe"]["passed"]
    rt = BundleRuntime(int8_bundle.out, device="cpu")
    rt.encode_text(["a red circle"])
    size = rt.bundle.preprocessing["image_size"]
    rt.encode_frames(np.zeros((1, 3, size, size), np.float32))
    assert rt.precisions == {"text_encoder": "int8", "frame_encoder": "int8"}
    [record] = _verdict_files(_own_cache)
    data = json.loads(record.read_text())
    assert data["format_version"] == VERDICT_VERSION and data["bundle_sha256"] == rt.bundle.sha256
    assert all(g["ok"] and max(g["errors"].values()) <= 0.1 for g in data["graphs"].values())
    assert set(data["graphs"]) == {"text_encoder", "frame_encoder"}


def test_int8_probe_failure_falls_back_to_fp32_and_warns_once(int8_bundle, tmp_path, _own_cache, caplog):
    import logging
    import shutil

    from probret.engine.runtime import BundleRuntime, OrtGraph

    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle.out, bundle)
    _rewrite_probe(bundle, lambda a: a.update({"frame_encoder.frame_features": a["frame_encoder.frame_features"] + 1.0}))
    size = int8_bundle.manifest["preprocessing"]["image_size"]
    px = np.random.default_rng(5).standard_normal((3, 3, size, size), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="probret.engine.int8_probe"):
        for _ in range(2):  # two runtimes in one process: one warning
            rt = BundleRuntime(bundle, device="cpu")
            got = rt.encode_frames(px)
            rt.encode_text(["a red circle"])
    warnings = [r for r in caplog.records if "not accurate on this CPU" in r.getMessage()]
    assert len(warnings) == 1 and "frame_encoder" in warnings[0].getMessage()
    assert rt.precisions == {"frame_encoder": "fp32", "text_encoder": "int8"}  # per graph
    fp32 = OrtGraph(bundle / "frame_encoder.onnx", ["CPUExecutionProvider"]).run({"pixels": px})["frame_features"]
    assert np.array_equal(got, fp32)  # the fp32 graph itself, not the int8 one
    [record] = _verdict_files(_own_cache)
    verdict = json.loads(record.read_text())["graphs"]
    assert verdict["frame_encoder"]["ok"] is False and verdict["text_encoder"]["ok"] is True


def test_cached_verdict_is_used_and_an_older_one_is_recomputed(int8_bundle, _own_cache):
    """The verdict costs nothing on the next query: a cached one decides without the probe (a
    cached 'not ok' sends an intact bundle to fp32); one of another format version is ignored."""
    from probret.engine.int8_probe import verdict_path
    from probret.engine.runtime import BundleRuntime

    rt = BundleRuntime(int8_bundle.out, device="cpu")
    rt.encode_text(["a red circle"])
    [record] = _verdict_files(_own_cache)
    assert record == verdict_path(rt.bundle.sha256, "CPUExecutionProvider")
    data = json.loads(record.read_text())
    data["graphs"]["text_encoder"]["ok"] = False
    record.write_text(json.dumps(data))
    rt = BundleRuntime(int8_bundle.out, device="cpu")
    rt.encode_text(["a red circle"])
    assert rt.precisions["text_encoder"] == "fp32"
    data["format_version"] = 0  # an older probret's record: recomputed, never trusted
    record.write_text(json.dumps(data))
    rt = BundleRuntime(int8_bundle.out, device="cpu")
    rt.encode_text(["a red circle"])
    assert rt.precisions["text_encoder"] == "int8"
    assert json.loads(record.read_text())["format_version"] == 1


def test_unreadable_probe_is_a_model_error(int8_bundle, tmp_path):
    import shutil

    from probret.engine.runtime import BundleRuntime

    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle.out, bundle)
    _rewrite_probe(bundle, lambda a: a.pop("text_encoder.input_ids"))
    with pytest.raises(ModelError, match="int8 probe of text_encoder is unreadable"):
        BundleRuntime(bundle, device="cpu").encode_text(["a red circle"])
