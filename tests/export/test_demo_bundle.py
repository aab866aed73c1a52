"""The shipped demo bundle (export/pretrained/demo-spem) is what the real exporter makes of the
shipped checkpoint (train/pretrained/demo-spem).

"Matches" means: the same manifest apart from what records the build (creation time, tool
versions, file hashes and sizes, parity numbers), the same graph inputs and outputs, and the same
outputs of all four graphs on fixed inputs within 1e-5. Hashes are not compared on purpose: the
ONNX bytes depend on the torch / onnx versions that trace the graphs, so a rebuild on another
machine is equal in function, not in bytes. The fp16 storage (export/demo_bundle.py) is exact,
so the rebuilt and shipped graphs differ only by what a different tracer may reorder. The
calibrator is compared the same way: the same kind, signals and domain, and the same confidence
(within 1e-4) on a grid of signals, since its fitted numbers come from PyTorch's scores.

The stored calibrator is also checked on its own: fitted on a world the demo model never saw,
monotone and bounded in [0, 1] over a wide grid, and, applied by the torch-free engine to a
search of another held-out world, bounded and non-increasing down every ranking.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from probret.engine.bundle import load_bundle
from probret.engine.calibration import Calibrator
from probret.export.demo_bundle import (CALIBRATION_GALLERY, CALIBRATION_WORLD, MAX_FILE_BYTES, build_demo_bundle,
                                        store_exact_fp16)
from probret.export.resolve import SHIPPED_DEMO_BUNDLE, demo_checkpoint
from probret.train.demo_model import WORLD_SETTINGS

BUILD_KEYS = {"created", "versions", "files", "parity", "source", "calibration"}
#: (score, margin) pairs spanning what a search produces and beyond
GRID = np.stack(np.meshgrid(np.linspace(-1.5, 1.5, 61), np.linspace(-2.0, 2.0, 81)), -1).reshape(-1, 2)


def _grid_confidence(cal: Calibrator) -> np.ndarray:
    return cal.confidence({"score": GRID[:, 0], "margin": GRID[:, 1], "uncertainty": np.full(len(GRID), 0.5)})


def _same_calibrator(a: dict, b: dict) -> None:
    keep = ("kind", "signals", "top_k", "domain")
    assert {k: a[k] for k in keep} == {k: b[k] for k in keep}
    np.testing.assert_allclose(_grid_confidence(Calibrator.from_dict(a)), _grid_confidence(Calibrator.from_dict(b)),
                               atol=1e-4, rtol=0)


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
    _same_calibrator(shipped["calibration"], fresh["calibration"])
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


def test_the_stored_calibrator_is_held_out_monotone_and_bounded():
    stored = load_bundle(SHIPPED_DEMO_BUNDLE).calibration
    assert stored is not None, "the shipped demo bundle carries no calibrator: make demo-bundle"
    cal = Calibrator.from_dict(stored)
    dom = cal.domain
    assert (dom["dataset"], dom["split"], dom["gallery_size"]) == ("procedural", "val", CALIBRATION_GALLERY)
    assert dom["world"]["seed"] == CALIBRATION_WORLD["seed"] != WORLD_SETTINGS["seed"]  # not the training world
    assert cal.val_ece is not None and 0.0 <= cal.val_ece <= 1.0
    p = _grid_confidence(cal).reshape(81, 61)  # rows: margin, columns: score
    assert np.all((p >= 0) & (p <= 1))
    for name, axis in (("score", 1), ("margin", 0)):
        steps = np.diff(p, axis=axis)
        if name in cal.signals:  # non-decreasing in each signal it uses (both grow with certainty)
            assert np.all(steps >= -1e-12), name
        else:
            assert np.all(steps == 0), name
    if "uncertainty" in cal.signals:  # higher uncertainty, lower confidence
        u = np.linspace(0.0, 5.0, 501)
        pu = cal.confidence({"score": np.full_like(u, 0.3), "margin": np.zeros_like(u), "uncertainty": u})
        assert np.all((pu >= 0) & (pu <= 1)) and np.all(np.diff(pu) <= 1e-12)


def test_the_stored_calibrator_on_a_held_out_search(tmp_path):
    """The torch-free engine applies it to a real search of a world with neither the training seed
    nor the calibration seed: every confidence is a probability, and none rises down a ranking."""
    from probret.engine import open_folder
    from probret.train.world import generate_world

    seed = 41
    assert seed not in (WORLD_SETTINGS["seed"], CALIBRATION_WORLD["seed"])
    world = tmp_path / "world"
    generate_world(world, videos=30, seed=seed, resolution=(64, 64), difficulty=WORLD_SETTINGS["difficulty"],
                   splits=(0.0, 0.0, 1.0))
    captions = [c["caption"] for c in json.loads((world / "world.json").read_text())["captions"].values()][:20]
    with open_folder(world / "videos", bundle=load_bundle(SHIPPED_DEMO_BUNDLE), index=tmp_path / "idx",
                     progress=False) as vf:
        results = vf.search(captions, top_k=10)
    confs = np.array([[h.confidence for h in r.hits] for r in results], dtype=np.float64)
    assert confs.shape == (20, 10) and np.all((confs >= 0) & (confs <= 1))
    if "uncertainty" not in Calibrator.from_dict(vf.bundle.calibration).signals:
        assert np.all(np.diff(confs, axis=1) <= 1e-12)  # score and margin both fall down a ranking
    assert confs[:, 0].std() > 0  # it tells queries apart
