"""Frame-encoder benchmark (issue #6, target 2): the exported path against PyTorch eager and the
CPU's FP32 matmul peak, plus the int8 path's speed and R@1 change.

    python bench/encoder.py --out bench/results/encoder.json          # full run (~6 min, 2 cores)
    python bench/encoder.py --quick --out /tmp/encoder-quick.json      # smoke run (~30 s, tiny ViT)

Everything is measured in ONE run, with the variants *interleaved* (each round times every
variant once, in turn), so load from other processes hits all of them alike; best-of-rounds
(the least disturbed call) gives the headline, the median is printed too.

**Model.** ``--model`` (default ``ViT-B-32:random``: ViT-B/32 size with random weights) is
resolved by ``export.resolve.resolve_model`` exactly as ``probret index --model`` does: a zero-shot
meanP checkpoint, exported once by ``probret.export`` to a bundle. The bench's model cache is
keyed by a hash of the exporter's sources, so a changed exporter is measured, not a stale bundle.

**PyTorch eager** (the baseline): the checkpoint's ``clip.encode_image`` (what
``Backbone.encode_frames`` runs) in fp32 under ``torch.inference_mode()``, with
``torch.set_num_threads`` = the ONNX Runtime thread count, on the same batches.

**The exported path** (``engine``): ``BundleRuntime(bundle, device="cpu").encode_frames``, i.e.
the bundle's ``frame_encoder`` graph in ONNX Runtime with the engine's session options. Variants
of the same graph, to show what each setting buys (``--variants``):

* ``threads=P``: ``intra_op_num_threads`` = physical cores, set explicitly (ORT's default is the
  physical core count already);
* ``no-spin``: ``session.intra_op.allow_spinning = 0`` (threads sleep between ops);
* ``basic`` / ``extended`` / ``no-opt``: graph optimisation level below ORT_ENABLE_ALL (the default);
* ``saved-opt``: the ORT_ENABLE_EXTENDED-optimised model saved to a file and reloaded (what
  ``optimized_model_filepath`` would give: faster session start, same kernels);
* ``tf-optimizer``: ``onnxruntime.transformers.optimizer`` (model type ``vit``) applied to the graph;
* ``legacy-graph``: the frame graph as the exporter wrote it before ``graphs.vit_tokens_forward``
  (``encode_image`` traced through ``nn.MultiheadAttention``);
* ``opset20``: the current graph exported at opset 20 (native ``Gelu``);
* ``int8``: ``graphs.quantize_int8`` of the bundle's graph (what ``--quantize int8`` ships).

**FLOPs**: counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image through
``graphs.vit_tokens_forward`` (the graph's arithmetic), a multiply-add = 2 FLOPs (matmuls, the
patch convolution, attention; LayerNorm / softmax / GELU / adds are not counted), cross-checked
against the analytic ViT count. GFLOP/s = FLOPs per frame x frames/s.

**Peak**: the best FP32 matmul GFLOP/s of numpy's BLAS, PyTorch (``torch.mm``) and ONNX Runtime
(a MatMul graph) on all cores, square n x n (n = 4096; 1024 with --quick), best of a few reps,
measured at the start of the same run (bench/search.py's ``sgemm_peak`` is the numpy part at
n = 2048; at 2048 numpy gave 236-321 GFLOP/s on this machine across runs, below what ORT and
PyTorch reach on the encoder itself, hence the max over libraries at 4096).

**int8 quality** (``--quality``, on by default): the shipped demo model
(``train/pretrained/demo-spem``) exported with ``--quantize int8`` against the procedural
benchmark ``--quality-world`` (default bench/results/quality/world, its held-out test split,
``--quality-videos`` 100): the export's own gate measures R@1 of the int8 bundle against the
fp32 graphs, on the same decoded videos and captions (docs/export.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, export_source_sha, finish, machine, say, sgemm_peak  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ALL_VARIANTS = ("engine", "threads=P", "no-spin", "basic", "extended", "no-opt", "saved-opt", "tf-optimizer",
                "legacy-graph", "opset20", "int8")


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs among the CPUs this process may use."""
    allowed = os.sched_getaffinity(0)
    cores, cpu, phys = set(), None, "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "processor":
                cpu = int(val)
            elif key == "physical id":
                phys = val
            elif key == "core id" and cpu in allowed:
                cores.add((phys, val))
    except OSError:
        pass
    return len(cores) or len(allowed)


# --------------------------------------------------------------------------------------------
# peak
# --------------------------------------------------------------------------------------------
def _best(fn, reps: int) -> float:
    return best_time(fn, reps, warmup=True)


def matmul_peak(n: int, threads: int, reps: int = 3) -> dict:
    """FP32 n x n matmul GFLOP/s of numpy, torch and ONNX Runtime; ``peak`` is the best."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    out = {"n": n, "numpy": flops / _best(lambda: a @ b, reps) / 1e9}
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out["torch"] = flops / _best(lambda: torch.mm(ta, tb), reps) / 1e9
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
                          [numpy_helper.from_array(b, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out["onnxruntime"] = flops / _best(lambda: s.run(None, {"x": a}), reps) / 1e9
    out["peak"] = max(out["numpy"], out["torch"], out["onnxruntime"])
    out["numpy_sgemm_peak_2048"] = sgemm_peak()  # bench/search.py's figure, for reference
    return out


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
def frame_flops(visual, size: int) -> dict:
    """FLOPs of one frame: FlopCounterMode on ``vit_tokens_forward`` and the analytic ViT count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from probret.export.graphs import vit_supported, vit_tokens_forward

    x = torch.zeros(1, 3, size, size)
    fn = (lambda v: vit_tokens_forward(visual, v)) if vit_supported(visual) else visual
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn(x)
    counted = int(fc.get_total_flops())
    out = {"counted": counted, "convention": "multiply-add = 2 FLOPs; matmul, conv, attention only"}
    if vit_supported(visual):
        w = int(visual.positional_embedding.shape[-1])
        seq = int(visual.positional_embedding.shape[0])
        patch = int(visual.conv1.kernel_size[0])
        grid = seq - 1
        blocks = visual.transformer.resblocks
        mlp = int(blocks[0].mlp.c_fc.out_features)
        d = int(visual.proj.shape[1]) if visual.proj is not None else 0
        analytic = (2 * grid * 3 * patch * patch * w  # patch conv
                    + len(blocks) * (2 * seq * w * 3 * w + 2 * seq * w * w  # qkv, out projection
                                     + 2 * 2 * seq * seq * w  # q k^T and attention @ v
                                     + 2 * 2 * seq * w * mlp)  # MLP
                    + 2 * w * d)  # final projection
        out["analytic"] = analytic
        out["counted_vs_analytic"] = counted / analytic
    return out


# --------------------------------------------------------------------------------------------
# models and graphs
# --------------------------------------------------------------------------------------------
def build(spec: str, workdir: Path):
    """(resolved model, torch model) of ``spec`` through export.resolve.resolve_model."""
    os.environ["PROBRET_CACHE"] = str(workdir / f"cache-{export_source_sha()[:12]}")
    from probret.export.resolve import resolve_model
    from probret.train.checkpoint import load_checkpoint

    t = time.perf_counter()
    resolved = resolve_model(spec, say=say)
    say(f"model {spec}: bundle {resolved.bundle.path} ({time.perf_counter() - t:.0f} s)")
    model, _ = load_checkpoint(resolved.bundle.manifest["source"]["checkpoint"])
    model.eval()
    return resolved, model


def variant_graphs(bundle, model, variants: list[str], workdir: Path) -> dict[str, Path]:
    """Extra ONNX files some variants need, written once per bundle under ``workdir``."""
    import torch

    from probret.export.graphs import FrameEncoderGraph, export_onnx, quantize_int8

    src = bundle.graph_path("frame_encoder")
    size = int(bundle.preprocessing["image_size"])
    d = workdir / f"graphs-{bundle.sha256[:12]}"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    dyn = {"pixels": {0: "N"}, "frame_features": {0: "N"}}

    def export(path: Path, module, opset: int):
        export_onnx(module, (torch.randn(2, 3, size, size),), path, input_names=["pixels"],
                    output_names=["frame_features"], dynamic_axes=dyn, opset=opset)

    for v in variants:
        path = d / f"{v}.onnx"
        if v not in ("saved-opt", "tf-optimizer", "legacy-graph", "opset20", "int8"):
            continue
        if not path.is_file():
            say(f"[graphs] writing the {v} graph")
            tmp = path.with_suffix(".tmp.onnx")
            try:
                if v == "saved-opt":
                    import onnxruntime as ort

                    so = ort.SessionOptions()
                    so.log_severity_level = 3
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
                    so.optimized_model_filepath = str(tmp)
                    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
                elif v == "tf-optimizer":
                    from onnxruntime.transformers import optimizer

                    visual = model.backbone.clip.visual
                    heads = visual.transformer.resblocks[0].attn.num_heads
                    m = optimizer.optimize_model(str(src), model_type="vit", num_heads=heads,
                                                 hidden_size=int(visual.positional_embedding.shape[-1]),
                                                 opt_level=0, use_gpu=False)
                    (d / "tf-optimizer.json").write_text(json.dumps(
                        {k: n for k, n in m.get_fused_operator_statistics().items() if n}))
                    m.save_model_to_file(str(tmp))
                elif v == "legacy-graph":
                    export(tmp, FrameEncoderGraph(model.backbone, fast_vit=False), int(bundle.manifest["opset"]))
                elif v == "opset20":
                    export(tmp, FrameEncoderGraph(model.backbone), 20)
                elif v == "int8":
                    quantize_int8(src, tmp)
                os.replace(tmp, path)
            except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is reported, not fatal
                say(f"[graphs] {v}: {type(exc).__name__}: {exc}")
                tmp.unlink(missing_ok=True)
                continue
        out[v] = path
    return out


def ort_session(path: Path, *, threads: int | None = None, spin: bool = True, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def runners(resolved, model, variants: list[str], graphs: dict[str, Path], threads: int) -> tuple[dict, dict]:
    """{name: fn(pixels) -> features}, {name: session start seconds}."""
    import torch

    from probret.engine.runtime import BundleRuntime

    torch.set_num_threads(threads)
    clip = model.backbone.clip

    def eager(x):
        with torch.inference_mode():
            return clip.encode_image(torch.from_numpy(x), normalize=False).numpy()

    fns, start = {"pytorch-eager": eager}, {}
    src = resolved.bundle.graph_path("frame_encoder")
    for v in variants:
        t = time.perf_counter()
        if v == "engine":
            rt = BundleRuntime(resolved.bundle, device="cpu", frame_batch=1 << 20)
            rt.session("frame_encoder")
            fns[v] = rt.encode_frames
        else:
            kw: dict = {}
            path = src
            if v == "threads=P":
                kw["threads"] = threads
            elif v == "no-spin":
                kw["spin"] = False
            elif v in ("basic", "extended"):
                kw["level"] = v
            elif v == "no-opt":
                kw["level"] = "none"
            elif v in graphs:
                path = graphs[v]
            else:
                continue
            s = ort_session(path, **kw)
            fns[v] = lambda x, s=s: s.run(None, {"pixels": x})[0]
        start[v] = time.perf_counter() - t
    return fns, start


def time_batch(fns: dict, n: int, size: int, rounds: int, gap: float) -> dict:
    """Interleaved rounds: each round times every runner once on the same (n, 3, S, S) batch,
    ``gap`` seconds of sleep before each call: ONNX Runtime's pool threads spin after a run and
    PyTorch's OpenMP threads wait actively too, and without the gap they steal the cores from
    whichever runner comes next (measured: PyTorch eager at batch 12 fell from 37 to 8 frames/s
    right after an ORT session, the first version of this bench)."""
    x = np.random.default_rng(n).standard_normal((n, 3, size, size), dtype=np.float32)
    outs = {name: fn(x) for name, fn in fns.items()}  # warm-up (and the outputs, for the check)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(gap)
            t = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t)
    ref = outs["pytorch-eager"]
    scale = max(1.0, float(np.abs(ref).max()))
    res = {}
    for name, ts in times.items():
        res[name] = {"best_s": min(ts), "median_s": statistics.median(ts), "fps": n / min(ts),
                     "fps_median": n / statistics.median(ts),
                     "max_scaled_err_vs_eager": float(np.abs(outs[name] - ref).max()) / scale}
    return res


# --------------------------------------------------------------------------------------------
# int8 quality on the demo model
# --------------------------------------------------------------------------------------------
def int8_quality(world: Path, videos: int, workdir: Path) -> dict:
    from probret.export.resolve import demo_checkpoint
    from probret.export.exporter import ExportOptions, ParityError, export_checkpoint

    ckpt = demo_checkpoint()
    out = workdir / "demo-int8"
    t = time.perf_counter()
    try:
        r = export_checkpoint(ckpt, out, ExportOptions(quantize="int8", benchmark=world, benchmark_videos=videos),
                              progress=lambda m: say(f"[int8 export] {m}"))
    except ParityError as exc:  # the gate failed: report it (no bundle is written)
        return {"passed": False, "error": str(exc), "checkpoint": str(ckpt)}
    q = r.parity["int8"]
    fp32 = r.parity["onnxruntime"]["retrieval"]
    ret = q["retrieval"]
    res = {"checkpoint": str(ckpt), "benchmark": str(world), "queries": ret["queries"], "videos": ret["videos"],
           "R1_t2v_pytorch": fp32["R1_t2v_ref"], "R1_t2v_fp32": ret["R1_t2v_ref"], "R1_t2v_int8": ret["R1_t2v"],
           "R1_v2t_fp32": ret["R1_v2t_ref"], "R1_v2t_int8": ret["R1_v2t"], "delta_R1_t2v": ret["delta_R1_t2v"],
           "delta_R1_v2t": ret["delta_R1_v2t"], "topk_overlap": ret["topk_overlap"], "gate": ret["gate"],
           "max_feature_err": r.manifest["quantization"]["measured"]["max_feature_err"], "passed": q["passed"],
           "export_s": time.perf_counter() - t}
    shutil.rmtree(out, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def targets(res: dict) -> list[dict]:
    out = []
    peak = res["peak"]["peak"]
    for b, cells in res["batches"].items():
        eager = cells["pytorch-eager"]["fps"]
        eng = cells.get("engine")
        if eng:
            out.append({"target": f"frame encoder, exported path >= 1.5x PyTorch eager (batch {b})",
                        "value": eng["fps"] / eager, "met": eng["fps"] / eager >= 1.5,
                        "fraction_of_peak": eng["gflop_s"] / peak})
        q = cells.get("int8")
        if q:
            out.append({"target": f"int8 exported path vs PyTorch eager fp32 (batch {b}; informational)",
                        "value": q["fps"] / eager, "met": q["fps"] / eager >= 1.5})
        if q and eng:
            out.append({"target": f"int8 >= 1.5x fp32 exported path (batch {b})", "value": q["fps"] / eng["fps"],
                        "met": q["fps"] / eng["fps"] >= 1.5})
    qual = res.get("int8_quality")
    if qual and "delta_R1_t2v" in qual:
        loss = -min(qual["delta_R1_t2v"], qual["delta_R1_v2t"])
        out.append({"target": "int8 R@1 loss <= 1 pt (demo model, procedural test split)", "value": loss,
                    "met": loss <= 1.0})
    return out


def print_tables(res: dict) -> None:
    p = res["peak"]
    m = res["machine"]
    print(f"\nmachine: {m['cpu']}, {m['nproc']} CPUs ({res['settings']['threads']} threads used), "
          f"{m['mem_gib']} GiB; load {m['loadavg_start']} -> {m.get('loadavg_end')}")
    print(f"FP32 matmul peak (n={p['n']}): numpy {p['numpy']:.0f}, torch {p['torch']:.0f}, onnxruntime "
          f"{p['onnxruntime']:.0f} -> peak {p['peak']:.0f} GFLOP/s")
    f = res["flops"]
    print(f"model {res['model']}: {f['counted'] / 1e9:.3f} GFLOP per frame ({f['convention']}; analytic "
          f"{f.get('analytic', 0) / 1e9:.3f})")
    for b, cells in res["batches"].items():
        eager = cells["pytorch-eager"]["fps"]
        print(f"\nbatch {b} frames | frames/s best (median) | x eager | GFLOP/s | of peak | max err vs eager")
        for name, c in cells.items():
            frac = "  int8" if name == "int8" else f"{c['gflop_s'] / p['peak']:6.1%}"  # int8 ops: no FP32 peak
            print(f"  {name:14s} | {c['fps']:7.1f} ({c['fps_median']:7.1f}) | {c['fps'] / eager:5.2f} | "
                  f"{c['gflop_s']:6.0f} | {frac} | {c['max_scaled_err_vs_eager']:.1e}")
    if res.get("session_start_s"):
        print("\nsession start (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res["session_start_s"].items()))
    q = res.get("int8_quality")
    if q:
        if "delta_R1_t2v" in q:
            print(f"\nint8 quality (demo model, {q['queries']} captions x {q['videos']} videos): R@1 t2v "
                  f"{q['R1_t2v_int8']:.2f} vs fp32 {q['R1_t2v_fp32']:.2f} (delta {q['delta_R1_t2v']:+.2f}), "
                  f"v2t {q['R1_v2t_int8']:.1f} vs {q['R1_v2t_fp32']:.1f} (delta {q['delta_R1_v2t']:+.2f}), "
                  f"top-10 overlap {q['topk_overlap']:.3f}, gate {'passed' if q['passed'] else 'FAILED'}")
        else:
            print(f"\nint8 quality: gate FAILED: {q.get('error')}")
    print("\ntargets:")
    for t in res["targets"]:
        extra = f", {t['fraction_of_peak']:.0%} of FP32 peak" if "fraction_of_peak" in t else ""
        print(f"  [{'met' if t['met'] else 'SHORT'}] {t['target']}: {t['value']:.2f}{extra}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny ViT, small batch, 2 rounds, no int8 quality")
    p.add_argument("--model", default=None, help="--model spec (default ViT-B-32:random; quick: test-vit-tiny:random)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="frames per call, comma-separated (default 12,64: one 12-frame video, and 64 frames)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads for both sides (default: physical cores)")
    p.add_argument("--gap", type=float, default=0.3, help="seconds of idle before each timed call (time_batch)")
    p.add_argument("--variants", type=lambda s: s.split(","), default=None,
                   help=f"ORT variants (default all: {','.join(ALL_VARIANTS)})")
    p.add_argument("--quality", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the int8 R@1 change on the demo model (default on, off with --quick)")
    p.add_argument("--quality-world", default=str(REPO / "bench" / "results" / "quality" / "world"))
    p.add_argument("--quality-videos", type=int, default=100)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "probret-bench-encoder"))
    a = p.parse_args(argv)
    a.model = a.model or ("test-vit-tiny:random" if a.quick else "ViT-B-32:random")
    a.batches = a.batches or ([4] if a.quick else [12, 64])
    a.rounds = a.rounds or (2 if a.quick else 5)
    a.threads = a.threads or physical_cores()
    a.variants = a.variants or (["engine", "no-spin", "int8"] if a.quick else list(ALL_VARIANTS))
    a.quality = (not a.quick) if a.quality is None else a.quality
    unknown = set(a.variants) - set(ALL_VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    res = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "machine": machine(), "model": a.model,
           "settings": {"batches": a.batches, "rounds": a.rounds, "threads": a.threads, "variants": a.variants,
                        "quick": a.quick, "physical_cores": physical_cores(), "gap_s": a.gap}}
    say(f"FP32 matmul peak ({a.threads} threads)")
    res["peak"] = matmul_peak(1024 if a.quick else 4096, a.threads)
    resolved, model = build(a.model, workdir)
    size = int(resolved.bundle.preprocessing["image_size"])
    res["bundle"] = {"path": str(resolved.bundle.path), "sha256": resolved.bundle.sha256,
                     "opset": resolved.bundle.manifest.get("opset"), "image_size": size}
    res["flops"] = frame_flops(model.backbone.clip.visual, size)
    graphs = variant_graphs(resolved.bundle, model, a.variants, workdir)
    tf_stats = Path(workdir / f"graphs-{resolved.bundle.sha256[:12]}" / "tf-optimizer.json")
    if "tf-optimizer" in graphs and tf_stats.is_file():
        res["tf_optimizer_fusions"] = json.loads(tf_stats.read_text())
    fns, res["session_start_s"] = runners(resolved, model, a.variants, graphs, a.threads)
    res["batches"] = {}
    for n in a.batches:
        say(f"[time] batch {n}: {len(fns)} runners x {a.rounds} interleaved rounds")
        cells = time_batch(fns, n, size, a.rounds, a.gap)
        for c in cells.values():
            c["gflop_s"] = c["fps"] * res["flops"]["counted"] / 1e9
            c["fraction_of_peak"] = c["gflop_s"] / res["peak"]["peak"]  # for int8: FP32-equivalent rate
            c["x_eager"] = c["fps"] / cells["pytorch-eager"]["fps"]
        res["batches"][str(n)] = cells
    del fns
    if a.quality:
        say("[int8] demo model: export with --quantize int8 and the retrieval gate")
        res["int8_quality"] = int8_quality(Path(a.quality_world), a.quality_videos, workdir)
    finish(res, t0, a.out, print_tables, targets)


if __name__ == "__main__":
    main()
