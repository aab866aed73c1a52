"""The shipped demo bundle (export/pretrained/demo-spem) is what the real exporter makes of the
shipped checkpoint (train/pretrained/demo-spem).

"Matches" means: the same manifest apart from what records the build (creation time, tool
versions, file hashes and sizes, parity numbers), the same graph inputs and outputs, and the same
outputs of all four graphs on fixed inputs within 1e-5. Hashes are not compared on purpose: the
ONNX bytes depend on the torch / onnx versions that trace the graphs, so a rebuild on another
machine is equal in function, not in bytes. The fp16 storage (export/demo_bundle.py) is exact,
so the rebuilt and shipped graphs differ only by what a different tracer may reorder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from probret.engine.bundle import load_bundle
from probret.export.demo_bundle import MAX_FILE_BYTES, build_demo_bundle, store_exact_fp16
from probret.export.resolve import SHIPPED_DEMO_BUNDLE, demo_checkpoint

BUILD_KEYS = {"created", "versions", "files", "parity", "source"}


def _outputs(bundle_dir) -> dict[str, np.ndarray]:
    from probret.engine.runtime import BundleRuntime

    rt = BundleRuntime(bundle_dir, device="cpu")
    b = rt.bundle
    rng = np.random.default_rng(0)
    text = rt.encode_text(["a red circle moves left", "a green square on stripes", "something else entirely"])
    size = b.preprocessing["image_size"]
    size = size if isinstance(size, int) else size[0]
    pixels = rng.standard_normal((2 * b.num_frames, 3, size, size)).astype(np.float32)
    frames = rt.encode_frames(pixels).reshape(2, b.num_frames, -1)
    video = rt.video_side(frames)
    scores, unc = rt.score(text, video)
    return {**{f"text.{k}": v for k, v in text.items()}, "frames": frames,
            **{f"video.{k}": v for k, v in video.items()}, "scores": scores,
            **({} if unc is None else {"uncertainty": unc})}


def test_shipped_files_stay_small():
    files = [p for p in SHIPPED_DEMO_BUNDLE.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_size < MAX_FILE_BYTES for p in files)
    load_bundle(SHIPPED_DEMO_BUNDLE)  # every hash verifies


def test_rebuilt_demo_bundle_matches_the_shipped_one(tmp_path):
    ckpt = demo_checkpoint()
    if ckpt is None or not (ckpt / "model.safetensors").is_file():
        pytest.skip("the shipped demo checkpoint is not built (make demo-model)")
    rebuilt = build_demo_bundle(tmp_path / "demo-spem", checkpoint=ckpt)
    shipped, fresh = (json.loads((d / "manifest.json").read_text()) for d in (SHIPPED_DEMO_BUNDLE, rebuilt))
    assert {k: v for k, v in shipped.items() if k not in BUILD_KEYS} == \
        {k: v for k, v in fresh.items() if k not in BUILD_KEYS}, "rebuild the shipped bundle: make demo-bundle"
    assert sorted(shipped["files"]) == sorted(fresh["files"])
    a, b = _outputs(SHIPPED_DEMO_BUNDLE), _outputs(rebuilt)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)


def test_exact_fp16_storage_changes_no_output(tmp_path):
    """The rewrite is exact: a graph with fp16-representable weights gives the same bits."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 32)).astype(np.float16).astype(np.float32)  # exactly fp16
    odd = np.full((64, 32), 0.1, np.float32)  # 0.1 is not an fp16 value: must stay float32
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["odd"], ["odd_sum"], keepdims=0),
         helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "odd_sum"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(odd, "odd")])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    x = rng.standard_normal((5, 64)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    size = path.stat().st_size
    assert store_exact_fp16(path) == 1
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(before, after) and path.stat().st_size < size
    kinds = {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert kinds == {"w__fp16": TensorProto.FLOAT16, "odd": TensorProto.FLOAT}
