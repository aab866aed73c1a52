"""GPU targets of issue 6, measured in ONE call on a lent GPU machine (GPU time is scarce).

    python bench/gpu.py --out DIR            # everything; ~8 minutes on an H100
    python bench/gpu.py --quick --out DIR    # seconds; also runs on a CPU (--device cpu) as a smoke test

Sections (``--sections``, comma separated; each is independent and a failure in one is recorded
in the JSON and does not stop the others):

* ``env``      device, driver, torch / CUDA versions, which inference back ends exist (TensorRT,
               ONNX Runtime's CUDA provider, PyAV's hardware decoders).
* ``peaks``    the two ceilings, measured here: a bf16 and an fp16 8192^3 matrix product
               (TFLOP/s) and a device-to-device copy (GB/s, bytes read + written).
* ``encoders`` the ViT-B/32 and ViT-B/16 image towers (open_clip configs, random weights) in fp16:
               PyTorch eager (nn.MultiheadAttention's fused inference path), ``torch.compile``,
               and TensorRT fp16 / ONNX Runtime CUDA through the project's own ONNX export when
               those back ends are installed. Frames/s, and TFLOP/s as a fraction of the measured
               fp16 peak (FLOPs counted by ``torch.utils.flop_counter``: a multiply-add = 2).
* ``scoring``  exact scoring of 1M distinct videos per query with the SPEM and T-MASS export forms
               (export/forms.py: the same math the ONNX pair graphs run; d=512, T'=12, M=20,
               random weights) and with meanP (a dot product), features stored in fp16 on the
               GPU. Batches of 1 / 16 / 256 queries; eager and ``torch.compile`` (fuses the
               elementwise chain over the (videos, queries, D) intermediates); the floor is
               reading the stored tensors once. Rankings: fp16 storage vs an fp32 reference on
               the first 64k videos (top-10 overlap, max |score| error), and compiled vs eager
               on the same storage (must be identical up to rounding).
* ``indexing`` end-to-end indexing of real H.264 clips (``probret synth``: 320x240, 20 s at
               25 fps): a process pool decodes with ``engine.video.sample_frames`` (PyAV,
               seek-or-linear per file) while the GPU encodes with the ViT-B/32 tower in fp16.
               Preprocessing either on the CPU (``engine.preprocess``, Pillow-exact) in the
               workers, or on the GPU (bicubic antialiased resize + crop + normalise in torch:
               not bit-equal to Pillow; the max pixel difference is reported). Videos/s of
               decode alone, encoder alone and end to end.

Why PyTorch numbers appear next to TensorRT ones: the lent machine's image has PyTorch but (so
far) neither TensorRT nor onnxruntime-gpu, and nothing can be installed there beyond 64 MiB of
wheels; the script reports what each back end measured and says which were missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

RESULTS: dict = {}
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def save(out: Path) -> None:
    (out / "gpu.json").write_text(json.dumps(RESULTS, indent=2, default=str))


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_ms(fn, dev, *, warmup: int = 2, reps: int = 10, min_s: float = 0.0) -> dict:
    """Median and min of ``reps`` timed calls (device synchronised around each call)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start) < min_s:
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append((time.perf_counter() - t) * 1e3)
        if len(times) >= 200:
            break
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "reps": len(times)}


# --------------------------------------------------------------------------------------------
# env
# --------------------------------------------------------------------------------------------
def section_env(args, dev) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "platform": platform.platform(), "cpus": os.cpu_count(), "device": str(dev)}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(gpu=p.name, sms=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1))
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:  # noqa: BLE001
            env["nvidia_smi"] = f"unavailable: {e}"
    for mod in ("tensorrt", "onnxruntime", "av", "open_clip", "onnx"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "present")
        except Exception as e:  # noqa: BLE001
            env[mod] = f"missing ({type(e).__name__}: {e})"
    try:
        import onnxruntime as ort

        env["ort_providers"] = ort.get_available_providers()
    except Exception:  # noqa: BLE001
        env["ort_providers"] = []
    try:
        import av

        env["av_hw_decoders"] = sorted(c for c in av.codecs_available if "cuvid" in c or "nvdec" in c)
    except Exception:  # noqa: BLE001
        pass
    return env


# --------------------------------------------------------------------------------------------
# peaks
# --------------------------------------------------------------------------------------------
def section_peaks(args, dev) -> dict:
    import torch

    n = 8192 if dev.type == "cuda" and not args.quick else 512
    out = {"matmul_n": n}
    g = torch.Generator(device=dev).manual_seed(0)
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dev.type != "cuda" and dt is torch.float16:
            continue
        a = torch.randn(n, n, device=dev, generator=g).to(dt)  # random, never zeros (zeros run faster)
        b = torch.randn(n, n, device=dev, generator=g).to(dt)
        r = bench_ms(lambda: a @ b, dev, warmup=3, reps=10)
        out[f"{name}_tflops"] = 2 * n**3 / (r["median_ms"] * 1e-3) / 1e12
        del a, b
    nbytes = (4 << 30) if dev.type == "cuda" and not args.quick else (64 << 20)
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=dev).normal_(generator=g)
    dst = torch.empty_like(src)
    r = bench_ms(lambda: dst.copy_(src), dev, warmup=2, reps=10)
    out["copy_gbs_read_plus_write"] = 2 * nbytes / (r["median_ms"] * 1e-3) / 1e9
    r = bench_ms(lambda: src.sum(dtype=torch.float32), dev, warmup=2, reps=10)
    out["read_gbs_sum"] = nbytes / (r["median_ms"] * 1e-3) / 1e9
    del src, dst
    return out


# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------
def count_flops(module, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # nn.MultiheadAttention's fused inference path (aten::_native_multi_head_attention) is invisible
    # to FlopCounterMode: with it on, the q/k/v/out projections (a third of a ViT's FLOPs) go
    # uncounted. Count with the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            module(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(fc.get_total_flops())


def _trt_frames_per_s(visual, name: str, batch: int, dev, workdir: Path) -> dict:
    """Export the tower with the project's exporter helper, build a TensorRT fp16 engine with
    export/trt.py and time it through engine/runtime.py's TensorRT session."""
    import torch

    from probret.engine.runtime import tensorrt_status

    ok, why = tensorrt_status()
    if not ok:
        return {"skipped": why}
    from probret.export.graphs import export_onnx
    from probret.export.trt import build_engine

    onnx_path, plan = workdir / f"{name}.onnx", workdir / f"{name}.plan"
    v32 = visual.float().cpu()
    export_onnx(v32, (torch.randn(2, 3, 224, 224),), onnx_path, input_names=["pixels"], output_names=["features"],
                dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}}, opset=17)
    t = time.perf_counter()
    info = build_engine(onnx_path, plan, profiles={"pixels": [[1, 3, 224, 224], [batch, 3, 224, 224],
                                                              [batch, 3, 224, 224]]}, fp16=True)
    build_s = time.perf_counter() - t
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
    ctx = engine.create_execution_context()
    x = torch.randn(batch, 3, 224, 224, device=dev)
    ctx.set_input_shape("pixels", tuple(x.shape))
    y = torch.empty(tuple(ctx.get_tensor_shape("features")), device=dev,
                    dtype=torch.float16 if engine.get_tensor_dtype("features") == trt.float16 else torch.float32)
    ctx.set_tensor_address("pixels", x.data_ptr())
    ctx.set_tensor_address("features", y.data_ptr())
    stream = torch.cuda.current_stream(dev)
    r = bench_ms(lambda: ctx.execute_async_v3(stream.cuda_stream), dev, warmup=5, reps=30)
    ref = visual.float().to(dev)(x).float()
    err = float((y.float() - ref).norm() / ref.norm())
    visual.to(dev)
    return {"build_s": build_s, "frames_per_s": batch / (r["median_ms"] * 1e-3), "rel_err_vs_fp32": err,
            **{k: v for k, v in info.items() if k in ("fp32_layers", "seconds")}}


def _ort_cuda_frames_per_s(visual, name: str, batch: int, dev, workdir: Path) -> dict:
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider"}
    from probret.export.graphs import export_onnx

    onnx_path = workdir / f"{name}-ort.onnx"
    export_onnx(visual.float().cpu(), (torch.randn(2, 3, 224, 224),), onnx_path, input_names=["pixels"],
                output_names=["features"], dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}}, opset=17)
    visual.to(dev)
    sess = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    r = bench_ms(lambda: sess.run(None, {"pixels": x}), dev, warmup=2, reps=5)
    return {"frames_per_s_fp32_incl_copies": batch / (r["median_ms"] * 1e-3)}


def section_encoders(args, dev, peaks: dict) -> dict:
    import open_clip
    import torch

    out = {}
    half = torch.float16 if dev.type == "cuda" else torch.float32
    peak = peaks.get("fp16_tflops") or peaks.get("bf16_tflops")
    specs = [("ViT-B-32", 1024), ("ViT-B-16", 512)] if not args.quick else [("ViT-B-32", 8)]
    workdir = Path(tempfile.mkdtemp(prefix="probret-gpu-enc-"))
    for name, batch in specs:
        r = out[name] = {"batch": batch}
        try:
            torch.manual_seed(0)
            visual = open_clip.create_model(name, pretrained=None).visual.eval()
            r["gflop_per_frame"] = count_flops(visual, torch.randn(1, 3, 224, 224)) / 1e9
            visual = visual.to(dev, half)
            x = torch.randn(batch, 3, 224, 224, device=dev, dtype=half)
            with torch.inference_mode():
                e = bench_ms(lambda: visual(x), dev, warmup=3, reps=20)
                r["eager_fp16_frames_per_s"] = batch / (e["median_ms"] * 1e-3)
                for extra in args.encoder_batches:  # the same weights at other batch sizes
                    xb = torch.randn(extra, 3, 224, 224, device=dev, dtype=half)
                    e = bench_ms(lambda: visual(xb), dev, warmup=2, reps=10)
                    r[f"eager_fp16_b{extra}_frames_per_s"] = extra / (e["median_ms"] * 1e-3)
                    del xb
                if args.bf16 and dev.type == "cuda":
                    vb = visual.to(torch.bfloat16)
                    xb = x.to(torch.bfloat16)
                    e = bench_ms(lambda: vb(xb), dev, warmup=3, reps=20)
                    r["eager_bf16_frames_per_s"] = batch / (e["median_ms"] * 1e-3)
                    visual = vb.to(half)
                    del xb
                if not args.no_compile:
                    t = time.perf_counter()
                    comp = torch.compile(visual, mode=args.compile_mode or None)
                    comp(x)
                    sync(dev)
                    r["compile_s"] = time.perf_counter() - t
                    r["compile_mode"] = args.compile_mode or "default"
                    c = bench_ms(lambda: comp(x), dev, warmup=3, reps=20)
                    r["compiled_fp16_frames_per_s"] = batch / (c["median_ms"] * 1e-3)
                    a, b = visual(x).float(), comp(x).float()
                    r["compiled_rel_diff"] = float((a - b).norm() / a.norm())
            best = max(v for k, v in r.items() if k.endswith("frames_per_s"))
            r["best_frames_per_s"] = best
            if peak:
                r["best_tflops"] = best * r["gflop_per_frame"] / 1e3
                r["fraction_of_fp16_peak"] = r["best_tflops"] / peak
            say(f"{name}: {r}")
            if dev.type == "cuda":
                for key, fn in (("tensorrt_fp16", _trt_frames_per_s), ("ort_cuda", _ort_cuda_frames_per_s)):
                    try:
                        r[key] = fn(visual, name, batch, dev, workdir)
                    except Exception as exc:  # noqa: BLE001
                        r[key] = {"error": f"{type(exc).__name__}: {exc}"}
            del visual, x
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001
            r["error"] = traceback.format_exc(limit=3)
            say(f"{name} failed: {exc}")
    return out


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def build_form(method: str, dev):
    import torch

    from search import BENCH_BACKBONE, M, T, register_bench_backbone

    from probret.export.forms import create_form
    from probret.train.config import ModelConfig
    from probret.train.model import RetrievalModel

    register_bench_backbone(Path(tempfile.mkdtemp(prefix="probret-gpu-cfg-")))
    torch.manual_seed(0)
    model = RetrievalModel.from_config(ModelConfig(backbone=BENCH_BACKBONE, pretrained=None, method=method,
                                                   num_frames=T, head={"num_samples": M}))
    form = create_form(model.head).eval().to(dev)
    g = torch.Generator(device=dev).manual_seed(1)
    noise = {}
    for s in form.noise_specs:
        bank = (torch.rand if s.distribution == "uniform" else torch.randn)(*s.shape, device=dev, generator=g)
        noise[s.key] = bank * s.scale
    return form, noise


def section_scoring(args, dev) -> dict:
    import torch

    from search import D, T

    n = args.videos
    n_ref = min(n, 65536 if not args.quick else n)
    out = {"videos": n, "d": D, "frames": T, "pairs_per_chunk": args.pairs_per_chunk}
    g = torch.Generator(device=dev).manual_seed(2)
    queries = torch.randn(max(args.batches), D, device=dev, generator=g)
    out["meanp"] = score_meanp(args, dev, queries, g)
    for method in args.heads:
        res = out[method] = {}
        store = ref = None
        try:
            form, noise = build_form(method, dev)
            store, ref, res["video_side_s"] = store_video_sides(form, n, n_ref, dev, g)
            per_video = sum(int(np.prod(x.shape[1:])) * x.element_size() for x in store.values())
            res["bytes_per_video_fp16"] = per_video
            res["stored_shapes"] = {k: list(x.shape[1:]) for k, x in store.items()}
            rd = bench_ms(lambda: [x.sum(dtype=torch.float32) for x in store.values()], dev, reps=10)
            res["read_floor_ms"] = rd["median_ms"]
            res["read_floor_gbs"] = per_video * n / (rd["median_ms"] * 1e-3) / 1e9
            variants = score_variants(args, form, noise, dev)
            with torch.inference_mode():
                ranking_checks(res, args, form, noise, variants, queries[:16], store, ref, n_ref)
                time_variants(res, args, method, variants, queries, store, n, dev, rd["median_ms"])
        except Exception as exc:  # noqa: BLE001
            res["error"] = traceback.format_exc(limit=4)
            say(f"{method} failed: {exc}")
        finally:
            store = ref = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return out


def score_meanp(args, dev, queries, g) -> dict:
    """meanP: one (N_v, D) fp16 matrix; the floor is reading it once."""
    import torch

    from search import D

    v = torch.nn.functional.normalize(torch.randn(args.videos, D, device=dev, generator=g), dim=-1).to(torch.float16)
    mp = {"bytes_per_video": D * 2}
    rd = bench_ms(lambda: v.sum(dtype=torch.float32), dev, reps=20)
    mp["read_floor_ms"] = rd["median_ms"]
    for b in args.batches:
        q = torch.nn.functional.normalize(queries[:b], dim=-1).to(torch.float16)
        r = bench_ms(lambda: torch.topk(q @ v.t(), 10, dim=1), dev, reps=20)
        mp[f"batch{b}"] = {"ms_per_batch": r["median_ms"], "queries_per_s": b / (r["median_ms"] * 1e-3),
                           "x_read_floor": r["median_ms"] / rd["median_ms"]}
    say(f"meanp: {mp}")
    return mp


def store_video_sides(form, n: int, n_ref: int, dev, g):
    """Distinct random videos: frame features -> the form's video side (fp32) -> fp16 storage of
    all ``n``, and an fp32 copy of the first ``n_ref`` for the ranking checks. Returns (store,
    ref, seconds)."""
    import torch

    from search import D, T

    store, ref = {}, {}
    chunk = 32768 if dev.type == "cuda" else 1024
    with torch.inference_mode():
        t = time.perf_counter()
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            side = form.video_side(torch.randn(b - a, T, D, device=dev, generator=g))
            for k in form.video_names:
                if a == 0:
                    store[k] = torch.empty((n, *side[k].shape[1:]), device=dev, dtype=torch.float16)
                    ref[k] = torch.empty((n_ref, *side[k].shape[1:]), device=dev, dtype=torch.float32)
                store[k][a:b] = side[k]
                if a < n_ref:
                    ref[k][a:min(b, n_ref)] = side[k][: min(b, n_ref) - a]
        sync(dev)
    return store, ref, time.perf_counter() - t


def score_variants(args, form, noise, dev) -> dict:
    """The pair function on fp16 storage, eager and (unless --no-compile) ``torch.compile``d."""
    import torch
    import torch._dynamo

    from probret.export.graphs import sentence_features

    def pair_fn(text_sentence, video):
        # fp16 storage: matmuls in fp16 with fp32 accumulation, norms / exp in fp32 (autocast)
        with torch.autocast(dev.type, dtype=torch.float16):
            s, _ = form.pair(sentence_features(text_sentence), video, noise)
        return s.float()

    # one graph per (queries, chunk) shape: 3 batch sizes x (full chunk, last chunk) x 16k/64k
    # reference slices need more than dynamo's default of 8 recompiles
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    variants = {"eager": pair_fn}
    if not args.no_compile:
        variants["compiled"] = torch.compile(pair_fn, dynamic=False)
    return variants


def score_all(fn, q, src: dict, pairs_per_chunk: int, lo: int, hi: int):
    """Scores of queries ``q`` against videos ``lo:hi`` of ``src``, in chunks of about
    ``pairs_per_chunk`` pairs (the (videos, queries, D) intermediates must fit)."""
    import torch

    cv = max(1, pairs_per_chunk // q.shape[0])
    parts = [fn(q, {k: x[a:min(hi, a + cv)] for k, x in src.items()}) for a in range(lo, hi, cv)]
    return torch.cat(parts, dim=1)


def _top10_overlap(a, b) -> float:
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / 10 for x, y in zip(a, b)]))


def ranking_checks(res: dict, args, form, noise, variants: dict, qc, store, ref, n_ref: int) -> None:
    """Rankings on the first ``n_ref`` videos: fp32 reference vs fp16 storage, and compiled vs
    eager on the same storage (must be identical up to rounding)."""
    import torch

    from probret.export.graphs import sentence_features

    chunk = args.pairs_per_chunk
    s_ref = score_all(lambda q, vv: form.pair(sentence_features(q), vv, noise)[0].float(), qc, ref, chunk, 0, n_ref)
    s_eag = score_all(variants["eager"], qc, store, chunk, 0, n_ref)
    top_ref = torch.topk(s_ref, 10, dim=1).indices
    top_eag = torch.topk(s_eag, 10, dim=1).indices
    res["fp16_vs_fp32_top10_overlap"] = _top10_overlap(top_ref, top_eag)
    res["fp16_vs_fp32_top1_same"] = float((top_ref[:, 0] == top_eag[:, 0]).float().mean())
    res["fp16_vs_fp32_max_abs_err"] = float((s_ref - s_eag).abs().max())
    del s_ref
    if "compiled" in variants:
        t = time.perf_counter()
        s_cmp = score_all(variants["compiled"], qc, store, chunk, 0, n_ref)
        res["compile_s"] = time.perf_counter() - t
        res["compiled_vs_eager_max_abs_err"] = float((s_cmp - s_eag).abs().max())
        res["compiled_vs_eager_top10_overlap"] = _top10_overlap(torch.topk(s_cmp, 10, dim=1).indices, top_eag)


def time_variants(res: dict, args, method: str, variants: dict, queries, store, n: int, dev, floor_ms: float) -> None:
    """Top-10 over all ``n`` videos per batch size and variant, against the read floor."""
    import torch

    for vname, fn in variants.items():
        for b in args.batches:
            q = queries[:b]
            reps = 5 if b <= 16 else 2
            r = bench_ms(lambda: torch.topk(score_all(fn, q, store, args.pairs_per_chunk, 0, n), 10, dim=1), dev,
                         warmup=1, reps=reps)
            res[f"{vname}_batch{b}"] = {
                "ms_per_batch": r["median_ms"], "ms_per_query": r["median_ms"] / b,
                "queries_per_s": b / (r["median_ms"] * 1e-3),
                "batch_x_read_floor": r["median_ms"] / floor_ms,
                "query_x_read_floor": r["median_ms"] / b / floor_ms}
            say(f"{method} {vname} batch {b}: {res[f'{vname}_batch{b}']}")
            if time.perf_counter() - T0 > args.budget_s:
                raise TimeoutError("time budget reached")


# --------------------------------------------------------------------------------------------
# indexing
# --------------------------------------------------------------------------------------------
def _decode_cpu_pre(path: str):
    from probret.engine.preprocess import preprocess_frames
    from probret.engine.video import sample_frames

    t = time.perf_counter()
    s = sample_frames(path, 12, decode="auto", thread_type=_WORKER_THREADS)
    t1 = time.perf_counter()
    x = preprocess_frames(s.frames, size=224).astype(np.float16)
    return x, t1 - t, time.perf_counter() - t1


def _decode_only(path: str):
    from probret.engine.video import sample_frames

    t = time.perf_counter()
    s = sample_frames(path, 12, decode="auto", thread_type=_WORKER_THREADS)
    return s.frames, time.perf_counter() - t, 0.0


#: FFmpeg's decoder threading in this worker process (``_worker_init``), passed to every decode.
_WORKER_THREADS = "AUTO"


def _worker_init(threading: str) -> None:
    """FFmpeg's decoder threads per worker process: "AUTO" (slice + frame threads, one per core:
    with one worker per core that is cores^2 threads) or "NONE" (one thread per worker)."""
    global _WORKER_THREADS
    if threading:
        _WORKER_THREADS = threading


def _decode_cuvid(path: str):
    """All frames through FFmpeg's NVDEC decoder (h264_cuvid, frames copied back to host memory),
    then the 12 segment-midpoint frames: the GPU-decode candidate measured against PyAV's software
    decoder."""
    import av

    t = time.perf_counter()
    with av.open(path) as c:
        stream = c.streams.video[0]
        ctx = av.CodecContext.create("h264_cuvid", "r")
        ctx.extradata = stream.codec_context.extradata
        decoded = []
        for pkt in c.demux(stream):
            decoded.extend(ctx.decode(pkt) if pkt.size else [])
        decoded.extend(ctx.decode(None))
    n = len(decoded)
    idx = ((np.arange(12) + 0.5) * n / 12).astype(int)
    frames = np.stack([decoded[i].to_ndarray(format="rgb24") for i in idx])
    return frames, time.perf_counter() - t, 0.0


def _decode_linear(path: str):
    from probret.engine.video import sample_frames

    t = time.perf_counter()
    s = sample_frames(path, 12, decode="linear", thread_type=_WORKER_THREADS)
    return s.frames, time.perf_counter() - t, 0.0


def gpu_preprocess(frames_u8, size: int = 224):
    """(N, H, W, 3) uint8 on the GPU -> (N, 3, size, size) normalised, open_clip's eval transform
    with torch's antialiased bicubic (close to, not bit-equal with, Pillow's)."""
    import torch
    import torch.nn.functional as F

    from probret.engine.preprocess import CLIP_MEAN, CLIP_STD, _short_side_size, center_crop_box

    x = frames_u8.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    ow, oh = _short_side_size(w, h, size)
    if (oh, ow) != (h, w):
        x = F.interpolate(x, size=(oh, ow), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    left, top = center_crop_box(ow, oh, size)
    x = x[:, :, top:top + size, left:left + size] / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


BATCH_VIDEOS = 64  # videos per encoder batch in the indexing section


def section_indexing(args, dev) -> dict:
    import multiprocessing as mp

    import open_clip
    import torch

    out = {}
    files = indexing_clips(args, out)
    workers = args.workers or os.cpu_count() or 1
    out["workers"] = workers
    half = torch.float16 if dev.type == "cuda" else torch.float32
    visual = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval().to(dev, half)

    def encode(batch_pixels):
        return visual(torch.cat(batch_pixels).to(dev, half, non_blocking=True))

    def encode_raw(frames_list):
        x = torch.cat([gpu_preprocess(torch.from_numpy(f).to(dev, non_blocking=True)) for f in frames_list])
        return visual(x.to(half))

    ctx = mp.get_context("forkserver" if dev.type == "cuda" else "fork")
    out["decoder_threading"] = args.decoder_threading
    with ctx.Pool(workers, initializer=_worker_init, initargs=(args.decoder_threading,)) as pool, \
            torch.inference_mode():
        pixels = decode_rates(pool, files, out)  # the CPU-preprocessed fp16 pixels
        nvdec_rates(args, pool, files, out)
        preprocess_difference(pool, files, dev, out)
        # encoder only, on pre-decoded, pre-processed pixels (host -> device copy included)
        t = time.perf_counter()
        for a in range(0, len(pixels), BATCH_VIDEOS):
            encode(pixels[a:a + BATCH_VIDEOS])
        sync(dev)
        wall = time.perf_counter() - t
        out["encoder_only"] = {"videos_per_s": len(files) / wall, "frames_per_s": 12 * len(files) / wall}
        say(f"encoder_only: {out['encoder_only']}")
        del pixels
        # CPU preprocessing in the workers, then decode in the workers and preprocess on the GPU
        out["end_to_end_cpu_preprocess"] = end_to_end(pool, files, dev, _decode_cpu_pre,
                                                      lambda b: encode([torch.from_numpy(x) for x in b]))
        say(f"e2e cpu pre: {out['end_to_end_cpu_preprocess']}")
        out["end_to_end_gpu_preprocess"] = end_to_end(pool, files, dev, _decode_only, encode_raw)
        say(f"e2e gpu pre: {out['end_to_end_gpu_preprocess']}")
    best = max(out["end_to_end_cpu_preprocess"]["videos_per_s"], out["end_to_end_gpu_preprocess"]["videos_per_s"])
    out["end_to_end_best_videos_per_s"] = best
    out["end_to_end_over_encoder_only"] = best / out["encoder_only"]["videos_per_s"]
    return out


def indexing_clips(args, out: dict) -> list[str]:
    """The real H.264 clips to index (``probret synth`` once per size, kept in the temp dir),
    each listed ``--repeat`` times."""
    from probret.train.world import generate_world

    nvid, frames = (args.clips, args.clip_seconds * 25) if not args.quick else (4, 50)
    root = Path(tempfile.gettempdir()) / f"probret-gpu-clips-{nvid}x{frames}"
    if not (root / "w" / "world.json").is_file():
        t = time.perf_counter()
        generate_world(root / "w", videos=nvid, seed=0, resolution=(320, 240), frames=frames, fps=25,
                       difficulty=0.25, workers=min(16, os.cpu_count() or 1), overwrite=True)
        out["synth_s"] = time.perf_counter() - t
    files = sorted(str(p) for p in (root / "w" / "videos").glob("*.mp4")) * args.repeat
    out.update(videos=len(files), distinct=nvid, seconds_per_clip=frames / 25, resolution="320x240")
    return files


def decode_rates(pool, files: list[str], out: dict) -> list:
    """Decode alone, and decode + CPU preprocessing, in the worker pool; returns the latter's pixels."""
    import torch

    for label, fn in (("decode_only", _decode_only), ("decode_cpu_preprocess", _decode_cpu_pre)):
        t = time.perf_counter()
        res = list(pool.imap(fn, files, chunksize=1))
        wall = time.perf_counter() - t
        out[label] = {"videos_per_s": len(files) / wall, "wall_s": wall,
                      "decode_s_per_video": float(np.mean([r[1] for r in res])),
                      "preprocess_s_per_video": float(np.mean([r[2] for r in res]))}
        say(f"{label}: {out[label]}")
    return [torch.from_numpy(r[0]) for r in res]


def nvdec_rates(args, pool, files: list[str], out: dict) -> None:
    """GPU decode (NVDEC through FFmpeg's h264_cuvid) vs software, one process, then the pool."""
    try:
        if args.no_nvdec:
            raise RuntimeError("skipped (--no-nvdec)")
        one = {}
        for label, fn in (("software_auto", _decode_only), ("software_linear", _decode_linear),
                          ("nvdec_h264_cuvid", _decode_cuvid)):
            fn(files[0])
            one[label] = float(np.median([fn(f)[1] for f in files[:8]]))
        out["decode_one_process_s_per_video"] = one
        t = time.perf_counter()
        n_ok = sum(1 for _ in pool.imap(_decode_cuvid, files, chunksize=1))
        out["decode_only_nvdec"] = {"videos_per_s": n_ok / (time.perf_counter() - t)}
    except Exception as exc:  # noqa: BLE001
        out["nvdec_error"] = f"{type(exc).__name__}: {exc}"
    say(f"nvdec: {out.get('decode_one_process_s_per_video')} {out.get('decode_only_nvdec')} "
        f"{out.get('nvdec_error', '')}")


def preprocess_difference(pool, files: list[str], dev, out: dict) -> None:
    """GPU preprocessing vs Pillow-exact CPU preprocessing, on the same decoded frames."""
    import torch

    from probret.engine.preprocess import preprocess_frames

    raw = [r[0] for r in pool.imap(_decode_only, files[:8], chunksize=1)]
    cpu_x = torch.from_numpy(preprocess_frames(raw[0], size=224))
    gpu_x = gpu_preprocess(torch.from_numpy(raw[0]).to(dev)).float().cpu()
    out["gpu_preprocess_max_abs_diff_normalised"] = float((cpu_x - gpu_x).abs().max())
    out["gpu_preprocess_max_abs_diff_pixels"] = float(((cpu_x - gpu_x).abs().max() * 0.27 * 255))


def end_to_end(pool, files: list[str], dev, worker, encode_batch) -> dict:
    """Workers decode (and maybe preprocess) in any order; the GPU encodes every full batch."""
    t = time.perf_counter()
    buf = []
    for r in pool.imap_unordered(worker, files, chunksize=1):
        buf.append(r[0])
        if len(buf) == BATCH_VIDEOS:
            encode_batch(buf)
            buf = []
    if buf:
        encode_batch(buf)
    sync(dev)
    wall = time.perf_counter() - t
    return {"videos_per_s": len(files) / wall, "wall_s": wall}


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
def summary_rows() -> list[tuple[str, str, str]]:
    rows = []
    enc = RESULTS.get("encoders", {})
    for name, target in (("ViT-B-32", 40000), ("ViT-B-16", 10000)):
        r = enc.get(name)
        if not r or "best_frames_per_s" not in r:
            continue
        trt = r.get("tensorrt_fp16", {})
        best = r["best_frames_per_s"]
        how = "TensorRT fp16" if trt.get("frames_per_s", 0) >= best else "PyTorch"
        best = max(best, trt.get("frames_per_s", 0))
        rows.append((f"{name} frames/s (>= {target})", f"{best:,.0f} ({how}; "
                     f"{r.get('fraction_of_fp16_peak', float('nan')):.0%} of fp16 peak)",
                     "met" if best >= target else "short"))
    sc = RESULTS.get("scoring", {})
    for method in ("meanp", "spem", "tmass"):
        r = sc.get(method, {})
        keys = [k for k in r if k.endswith("batch1") and isinstance(r[k], dict)]
        if not keys:
            continue
        ms = min(r[k]["ms_per_batch"] for k in keys)
        rows.append((f"{method} 1M videos, 1 query (<= 5 ms)", f"{ms:.2f} ms (read floor {r['read_floor_ms']:.2f} ms)",
                     "met" if ms <= 5 else "short"))
    ix = RESULTS.get("indexing", {})
    if "end_to_end_best_videos_per_s" in ix:
        v = ix["end_to_end_best_videos_per_s"]
        rows.append(("indexing videos/s (>= 100)", f"{v:.0f} ({ix['seconds_per_clip']:.0f} s clips)",
                     "met" if v >= 100 else "short"))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--sections", default="env,peaks,encoders,scoring,indexing")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--videos", type=int, default=1_000_000)
    p.add_argument("--heads", default="spem,tmass")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--pairs-per-chunk", type=int, default=1 << 19)
    p.add_argument("--clips", type=int, default=160)
    p.add_argument("--clip-seconds", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3, help="index each clip this many times (more work per run)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--decoder-threading", default="", help="FFmpeg thread_type in the decode workers (NONE, AUTO)")
    p.add_argument("--no-nvdec", action="store_true")
    p.add_argument("--encoder-batches", default="", help="extra batch sizes timed eagerly, e.g. 256,4096")
    p.add_argument("--bf16", action="store_true", help="also time the towers in bf16")
    p.add_argument("--compile-mode", default="", help="torch.compile mode (default, max-autotune-no-cudagraphs)")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting new timings after this")
    a = p.parse_args(argv)
    a.heads = [h for h in a.heads.split(",") if h]
    a.batches = [int(b) for b in a.batches.split(",")]
    a.encoder_batches = [int(b) for b in a.encoder_batches.split(",") if b]
    if a.quick:
        a.videos, a.batches = 2048, [1, 4]
    a.out.mkdir(parents=True, exist_ok=True)
    import torch

    dev = torch.device(a.device if (a.device != "cuda" or torch.cuda.is_available()) else "cpu")
    sections = a.sections.split(",")
    RESULTS["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    RESULTS["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in sections:
        if time.perf_counter() - T0 > a.budget_s and name != "env":
            RESULTS[name] = {"skipped": "time budget"}
            continue
        say(f"== {name}")
        try:
            if name == "env":
                RESULTS[name] = section_env(a, dev)
            elif name == "peaks":
                RESULTS[name] = section_peaks(a, dev)
            elif name == "encoders":
                RESULTS[name] = section_encoders(a, dev, RESULTS.get("peaks", {}))
            elif name == "scoring":
                RESULTS[name] = section_scoring(a, dev)
            elif name == "indexing":
                RESULTS[name] = section_indexing(a, dev)
        except Exception:  # noqa: BLE001
            RESULTS[name] = {"error": traceback.format_exc(limit=6)}
            say(RESULTS[name]["error"])
        save(a.out)
    RESULTS["total_s"] = time.perf_counter() - T0
    save(a.out)
    print(json.dumps({k: RESULTS.get(k) for k in ("env", "peaks")}, indent=1, default=str))
    print(f"\n{'target':45s} {'measured':60s} status")
    for row in summary_rows():
        print(f"{row[0]:45s} {row[1]:60s} {row[2]}")


if __name__ == "__main__":
    main()
