"""Which int8 scheme ``--quantize int8`` ships: accuracy, speed and int16 saturation safety of the
candidates on one model, measured in one run (docs/export.md, "int8").

    python bench/int8_scheme.py [--checkpoint train/pretrained/demo-spem] [--seconds 3] [--out results.json]

For each scheme (dynamic quantisation of the frame and text encoders' MatMul / Gemm weights,
per output channel, u8 activations):

* ``s8-full``: int8 weights in [-127, 127] (the scheme before issue 12);
* ``s8-reduce``: int8 weights in [-64, 64] (``reduce_range``; shipped);
* ``u8u8``: uint8 weights (asymmetric; MLAS's U8U8 kernels),

it prints the scaled feature error against the fp32 graph (max |q - fp32| / max(1, max |fp32|),
the export's int8 gate, tolerance 0.1), the worst VPMADDUBSW pair sum of the s8 graphs
(``graphs.int8_pair_sum_bound``: > 32,767 saturates on AVX2 CPUs without VNNI), and frames/s of
the frame encoder on one thread, as a ratio to fp32. The machine record includes the CPU flags
that pick MLAS's integer kernels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, say, write_results  # noqa: E402

SCHEMES = {"s8-full": {"weight_type": "QInt8"}, "s8-reduce": {"weight_type": "QInt8", "reduce_range": True},
           "u8u8": {"weight_type": "QUInt8"}}
INT_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_int_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                present = set(line.split(":", 1)[1].split())
                return [f for f in INT_FLAGS if f in present]
    except OSError:
        pass
    return []


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def frames_per_second(sess, pixels: np.ndarray, seconds: float) -> float:
    sess.run(None, {"pixels": pixels})
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"pixels": pixels})
        n += 1
    return n * len(pixels) / (time.perf_counter() - t0)


def scaled_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(1.0, float(np.abs(ref).max())))


def measure(bundle: Path, seconds: float) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from probret.engine.bundle import load_bundle
    from probret.engine.runtime import BundleRuntime
    from probret.export.graphs import int8_pair_sum_bound

    b = load_bundle(bundle)
    size = b.preprocessing["image_size"]
    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((48, 3, size, size), dtype=np.float32)
    ids = BundleRuntime(b, device="cpu").tokenize(["a red circle moves left", "a small blue square grows on a "
                                                   "striped background", "a star blinks twice"])[0]
    fp32 = {g: session(bundle / f"{g}.onnx") for g in ("frame_encoder", "text_encoder")}
    ref_f = fp32["frame_encoder"].run(None, {"pixels": pixels})[0]
    ref_t = fp32["text_encoder"].run(None, {"input_ids": ids})[0]
    rows = {"fp32": {"frames_per_s": frames_per_second(fp32["frame_encoder"], pixels, seconds)}}
    for name, kw in SCHEMES.items():
        say(f"quantizing with {name}")
        q = {}
        for g in ("frame_encoder", "text_encoder"):
            dst = bundle.parent / f"{g}.{name}.onnx"
            quantize_dynamic(str(bundle / f"{g}.onnx"), str(dst), op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=True, reduce_range=kw.get("reduce_range", False),
                             weight_type=getattr(QuantType, kw["weight_type"]))
            q[g] = dst
        fs, ts = session(q["frame_encoder"]), session(q["text_encoder"])
        rows[name] = {"frame_err": scaled_error(fs.run(None, {"pixels": pixels})[0], ref_f),
                      "text_err": scaled_error(ts.run(None, {"input_ids": ids})[0], ref_t),
                      "pair_sum_bound": (max(int8_pair_sum_bound(q["frame_encoder"]), int8_pair_sum_bound(q["text_encoder"]))
                                         if kw["weight_type"] == "QInt8" else None),
                      "frames_per_s": frames_per_second(fs, pixels, seconds)}
    for r in rows.values():
        r["speed_vs_fp32"] = r["frames_per_s"] / rows["fp32"]["frames_per_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "train" / "pretrained" / "demo-spem"))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from probret.export.exporter import ExportOptions, export_checkpoint

    with tempfile.TemporaryDirectory(prefix="probret-int8-") as tmp:
        say(f"exporting {a.checkpoint} (fp32)")
        export_checkpoint(a.checkpoint, Path(tmp) / "bundle", ExportOptions(benchmark_videos=4))
        rows = measure(Path(tmp) / "bundle", a.seconds)
    res = {"machine": {**machine(), "int_flags": cpu_int_flags()}, "checkpoint": a.checkpoint, "schemes": rows}
    print(f"CPU {res['machine']['cpu']} flags {' '.join(res['machine']['int_flags'])}, 1 thread")
    print(f"{'scheme':10} {'frame err':>10} {'text err':>10} {'pair sum':>9} {'frames/s':>9} {'x fp32':>7}")
    for name, r in rows.items():
        bound = r.get("pair_sum_bound")
        print(f"{name:10} {r.get('frame_err', 0):10.4f} {r.get('text_err', 0):10.4f} "
              f"{bound if bound is not None else '-':>9} {r['frames_per_s']:9.1f} {r['speed_vs_fp32']:7.2f}")
    write_results(res, a.out)


if __name__ == "__main__":
    main()
