"""TensorRT 10 engines from the bundle's ONNX graphs (``probret-export --trt [--fp16]``).

* Parsed with ``trt.OnnxParser``; explicit batch (the only mode in TensorRT 10); I/O tensors are
  addressed by name (``engine.get_tensor_name`` / ``context.set_tensor_address``), never by
  binding index.
* One optimisation profile per engine, covering the dynamic axes with the (min, opt, max)
  ranges in ``PROFILE_RANGES`` (recorded in the manifest; the runtime keeps its batches inside).
* TF32 is switched off so that an fp32 engine is fp32.
* ``--fp16`` applies to the two encoders only (where the FLOPs are). Inside them, every
  LayerNorm (``INormalizationLayer``, with ``compute_precision`` fp32), softmax, reduction, and
  exp / log / sqrt / pow / div layer is pinned to fp32 (``layer.precision`` and
  ``set_output_type``, enforced by ``OBEY_PRECISION_CONSTRAINTS``). The head graphs (video side,
  pair scoring) are always built in fp32: their Gram matrices and quadratic forms
  (docs/export.md) lose too much in fp16 and cost little.
* Engines are specific to the GPU model and the TensorRT version that built them: the manifest
  records both, and the runtime falls back to ONNX Runtime (``device="auto"``) when an engine
  cannot be deserialized.

Without TensorRT or a GPU, ``require_tensorrt`` fails at once, before anything is exported.
"""

from __future__ import annotations

import time
from pathlib import Path

from probret.engine.errors import ModelError
from probret.engine.runtime import _cudart, tensorrt_status

__all__ = ["PROFILE_RANGES", "require_tensorrt", "build_engine", "profiles_for", "gpu_name"]

#: (min, opt, max) per dynamic axis name, per graph.
PROFILE_RANGES = {
    "text_encoder": {"N_t": (1, 32, 256)},
    "frame_encoder": {"N": (1, 64, 512)},
    "video_side": {"N_v": (1, 64, 512)},
    "pair_score": {"N_t": (1, 16, 64), "N_v": (1, 256, 2048)},
}
FP16_GRAPHS = ("text_encoder", "frame_encoder")


def require_tensorrt() -> str:
    """Fail at once (ModelError) when TensorRT >= 10, the CUDA runtime bindings or a GPU is missing."""
    ok, reason = tensorrt_status()
    if not ok:
        raise ModelError(f"--trt: {reason}. Export without --trt for an ONNX-only bundle; ONNX Runtime runs it on "
                         "CPU or CUDA, and --trt can be run later on a GPU machine.")
    return reason


def gpu_name(device: int = 0) -> str:
    try:
        cudart = _cudart()
        err, prop = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return f"{name.strip(chr(0))} (sm_{prop.major}{prop.minor})"
    except Exception:  # noqa: BLE001 - informative only
        pass
    return "unknown GPU"


def profiles_for(graph: str, inputs) -> dict[str, list[list[int]]]:
    """[min, opt, max] shapes of every input of ``graph`` (TensorSpecs from the ONNX file)."""
    ranges = PROFILE_RANGES[graph]
    out = {}
    for spec in inputs:
        shapes = []
        for which in range(3):
            dims = []
            for d in spec.shape:
                if isinstance(d, int):
                    dims.append(d)
                elif d in ranges:
                    dims.append(ranges[d][which])
                else:
                    raise ModelError(f"{graph}: input {spec.name} has a dynamic axis {d!r} with no profile range")
            shapes.append(dims)
        out[spec.name] = shapes
    return out


def _keep_fp32(network, trt) -> int:
    """Pin the numerically sensitive layers of an fp16 build to fp32; returns how many."""
    floats = (trt.float32, trt.float16)
    unary = {trt.UnaryOperation.EXP, trt.UnaryOperation.LOG, trt.UnaryOperation.SQRT, trt.UnaryOperation.RECIP}
    binary = {trt.ElementWiseOperation.POW, trt.ElementWiseOperation.DIV}
    kept = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if any(layer.get_input(j) is not None and layer.get_input(j).dtype not in floats
               for j in range(layer.num_inputs)):
            continue
        t = layer.type
        keep = t in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE)
        if t == trt.LayerType.NORMALIZATION:
            layer.__class__ = trt.INormalizationLayer
            if hasattr(layer, "compute_precision"):
                layer.compute_precision = trt.float32
        elif t == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            keep = layer.op in unary
        elif t == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            keep = layer.op in binary
        if keep:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in floats:
                    layer.set_output_type(j, trt.float32)
            kept += 1
    return kept


def build_engine(onnx_path: str | Path, plan_path: str | Path, *, profiles: dict[str, list[list[int]]],
                 fp16: bool, workspace_gib: float = 4.0) -> dict:
    """Build and serialize one engine; returns what the manifest records about it."""
    require_tensorrt()
    import tensorrt as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)
    kept = 0
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ModelError(f"TensorRT {trt.__version__} has no weakly-typed fp16 builder flag; --fp16 needs "
                             "TensorRT 10.x (or export without --fp16)")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        kept = _keep_fp32(network, trt)
    profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in profiles.items():
        profile.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"TensorRT failed to build an engine for {Path(onnx_path).name} (see the TensorRT log above)")
    Path(plan_path).write_bytes(bytes(memoryview(plan)))
    return {"precision": "fp16" if fp16 else "fp32", "layers_kept_fp32": kept, "profiles": profiles,
            "tensorrt": trt.__version__, "gpu": gpu_name(), "build_seconds": round(time.perf_counter() - t0, 2)}
