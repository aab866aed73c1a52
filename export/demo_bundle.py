"""The shipped demo bundle: ``train/pretrained/demo-spem`` exported by the real exporter, so the
default ``probret search`` runs without torch (export/resolve.py finds it).

    make demo-bundle        # = python -m probret.export.demo_bundle

Every tracked file stays under 8 MB. The demo checkpoint keeps its weights in fp16
(train/demo_model.py), but ONNX graphs hold fp32 initializers, and the text encoder's token
embedding alone is 12.6 MB in fp32. :func:`store_exact_fp16` therefore stores every float32
initializer whose values are all exactly representable in float16 as a float16 initializer
followed by a ``Cast`` to float32. The cast is exact, so the graph computes bit for bit what the
exporter wrote (ONNX Runtime folds the cast once, at session creation); the bundle shrinks by
half. Initializers that are not exactly fp16 (constants the export computed) stay float32.

The bundle carries a confidence calibrator (export/calibrate.py), so a default ``probret search``
shows a calibrated ``confidence`` per hit. It is fitted on the validation split of a world the
demo model never saw: ``CALIBRATION_WORLD`` has the demo world's settings (train/demo_model.py:
resolution, frames, difficulty) but another seed, so none of its videos or captions was used for
training or for choosing the checkpoint (the demo world's own validation split chose it, which
would make the fitted probabilities optimistic). The split is cut into galleries of
``CALIBRATION_GALLERY`` videos, the size of folder the demo is meant for (``probret demo`` makes
40; the engine says so when a folder is more than 4x larger or smaller). The world is generated
in a temporary folder on every build; it is a function of its seed, so a rebuild fits the same
calibrator (tests/export/test_demo_bundle.py compares it).

After the rewrite the manifest's file hashes are recomputed and the bundle is verified with
``engine.bundle.load_bundle``. ``tests/export/test_demo_bundle.py`` rebuilds the bundle from the
shipped checkpoint and compares it with the shipped one (see there for what "matches" means).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from probret.engine.bundle import MANIFEST, load_bundle, sha256_file
from probret.export.resolve import DEMO_NAME, SHIPPED_DEMO_BUNDLE, demo_checkpoint
from probret.train.demo_model import WORLD_SETTINGS

__all__ = ["store_exact_fp16", "build_demo_bundle", "MAX_FILE_BYTES", "CALIBRATION_WORLD", "CALIBRATION_GALLERY"]

#: Every file of the shipped bundle must stay below this (the repository's limit per tracked file).
MAX_FILE_BYTES = 8 << 20
#: The held-out world the calibrator is fitted on (module docstring): the demo world's kind, another
#: seed (the demo model was trained on seed 2024), every video in the validation split.
CALIBRATION_WORLD = {**WORLD_SETTINGS, "videos": 500, "seed": 2025, "splits": (0.0, 1.0, 0.0)}
#: Videos per calibration gallery (and the gallery size the stored domain records).
CALIBRATION_GALLERY = 100
#: Initializers smaller than this many elements are left alone (a Cast node costs more than it saves).
MIN_ELEMENTS = 1024


def _exact_fp16(array: np.ndarray) -> np.ndarray | None:
    if array.dtype != np.float32 or array.size < MIN_ELEMENTS:
        return None
    half = array.astype(np.float16)
    if not np.array_equal(half.astype(np.float32), array) or not np.isfinite(half).all():
        return None
    return half


def store_exact_fp16(graph_file: Path) -> int:
    """Rewrite one ONNX file in place (module docstring); returns how many initializers changed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(graph_file))
    graph = model.graph
    kept, casts, changed = [], [], 0
    for init in graph.initializer:
        half = _exact_fp16(numpy_helper.to_array(init))
        if half is None:
            kept.append(init)
            continue
        stored = f"{init.name}__fp16"
        kept.append(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_fp32"))
        changed += 1
    if not changed:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    tmp = graph_file.with_name(f".{graph_file.name}.tmp-{os.getpid()}")
    onnx.save(model, str(tmp))
    os.replace(tmp, graph_file)
    return changed


def _rehash(bundle: Path) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    for rel in manifest["files"]:
        f = bundle / rel
        manifest["files"][rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _portable_source(bundle: Path) -> None:
    """The exporter records the checkpoint's absolute path; the shipped bundle names the package
    path instead, so it says nothing about the machine it was built on."""
    mf = bundle / MANIFEST
    manifest = json.loads(mf.read_text())
    manifest.setdefault("source", {})["checkpoint"] = f"probret.train/pretrained/{DEMO_NAME}"
    mf.write_text(json.dumps(manifest, indent=2) + "\n")


def build_demo_bundle(dest: Path = SHIPPED_DEMO_BUNDLE, *, checkpoint: Path | None = None,
                      progress=None) -> Path:
    """Export the demo checkpoint into ``dest`` (replacing it) with its calibrator, fp16-compact its
    graphs and check the size limit. ``dest`` gets only what this function writes."""
    from probret.export.exporter import ExportOptions, export_checkpoint
    from probret.train.world import generate_world

    ckpt = Path(checkpoint) if checkpoint else demo_checkpoint()
    if ckpt is None or not (ckpt / "model.safetensors").is_file():
        raise SystemExit(f"no demo checkpoint at {ckpt}; train it first with `make demo-model`")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.build-", dir=dest.parent) as tmp, \
            tempfile.TemporaryDirectory(prefix="probret-calibration-world-") as world:
        out = Path(tmp) / "bundle"
        if progress:
            progress(f"generating the calibration world (seed {CALIBRATION_WORLD['seed']}, "
                     f"{CALIBRATION_WORLD['videos']} videos)")
        generate_world(world, **CALIBRATION_WORLD)
        export_checkpoint(ckpt, out, ExportOptions(benchmark_videos=8, calibrate=world,
                                                   calibrate_gallery=CALIBRATION_GALLERY), progress=progress)
        bundle = load_bundle(out)
        for spec in bundle.graphs.values():
            store_exact_fp16(spec.file)
        _portable_source(out)
        _rehash(out)
        load_bundle(out)  # verifies every hash
        too_big = [f"{p.relative_to(out)} ({p.stat().st_size} bytes)" for p in out.rglob("*")
                   if p.is_file() and p.stat().st_size >= MAX_FILE_BYTES]
        if too_big:
            raise SystemExit(f"demo bundle files over {MAX_FILE_BYTES} bytes: {', '.join(too_big)}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    return dest


def main() -> None:
    """``make demo-bundle``: rebuild the shipped bundle in place (a maintainer step, no options)."""
    out = build_demo_bundle(progress=lambda m: print(f"export: {m}", flush=True))
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    print(json.dumps({"bundle": str(out), "bytes": sizes}, indent=2))


if __name__ == "__main__":
    main()
