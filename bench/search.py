"""Search benchmark: query latency against its floors (indexing throughput: bench/indexing.py).

    python bench/search.py --out bench/results/search.json           # full run (~8-10 min, 2 cores)
    python bench/search.py --quick --out /tmp/search-quick.json       # CI-sized smoke run (~15 s)

Everything is measured in ONE run and printed as ratios, so a noisy shared machine moves both
sides of each ratio together (docs/benchmarks_search.md holds the table and the notes).

**Query latency.** For the SPEM and T-MASS heads at d=512, T'=12 frames, M=20 samples, indexes
of 1k / 10k / 100k videos (``--sizes``) are written with the real ``IndexWriter`` (one segment
per video, every tensor the pipeline stores: frame features, the head's video-side outputs, the
ANN embedding). The stored tensors are *real outputs of the head's exported video-side graph* on
random frame features (a pool of ``--pool`` random videos, repeated to fill the index: random
features are what the issue allows at these sizes, and they keep the values in range). The two
models are random-weight SPEM / T-MASS checkpoints on a tiny open_clip config whose embedding
width is 512 (``bench-d512``: 1-layer towers, the smallest path to real d=512 pair and
video-side graphs), exported with ``probret.export`` exactly like ``probret-export`` does.
Each query batch (1, 16, 256 distinct captions, ``--batches``) goes through
``Searcher.search(..., ann=False)``: text encoding, exact scoring of every video by the
bundle's pair graph (ONNX Runtime, CPU), ranking, top-10 with best instants. Timed warm (the
index in the page cache, sessions open), median of repeats for short cells. A cell whose
predicted time exceeds ``--budget`` seconds is *extrapolated* linearly in the number of videos
from the same batch size at the largest smaller size (marked ``extrapolated`` everywhere).

Against:
  (a) **read floor**: the time to read every stored tensor the pair graph needs, once, through
      fresh ``np.memmap``s of the shard files (a multi-threaded ``sum``; the fastest full read we
      found): *cold* (pages evicted with ``posix_fadvise(DONTNEED)``, so from the disk) and
      *warm* (page cache: the memory-bandwidth floor). Also printed: an analytic FLOP count of
      the pair graph per (query, video) pair and the time that takes at this CPU's FP32 matmul
      peak measured in the same run (the compute floor);
  (b) **per-pair loop**: the PyTorch head's own ``score`` called once per (query, video) pair
      (noise drawn per call, video side recomputed per call: the straightforward loop), timed
      on ``--pair-sample`` pairs and *extrapolated* to queries x videos. Also the bundle's
      pair graph called per pair (1 x 1 ONNX Runtime calls), the same way.

Work files (bundles, exports) go to ``--workdir``; indexes are deleted after use unless
``--keep``, and ``--reuse`` reuses indexes kept by an earlier run with the same bundle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import export_source_sha, finish, machine, print_targets, say, sgemm_peak  # noqa: E402

D, T, M = 512, 12, 20
BENCH_BACKBONE = "bench-d512"
#: A tiny open_clip config whose embedding width is 512: the heads are the real d=512 heads,
#: the towers (which these measurements never time) cost next to nothing to build and export.
BENCH_CONFIG = {"embed_dim": D,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
                "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]
MOTIONS = ["moves left", "moves right", "moves up", "moves down", "spins", "bounces", "grows", "shrinks"]
BACKS = ["striped", "dark", "bright", "checkered"]


def queries(n: int) -> list[str]:
    out = []
    for c in COLOURS:
        for s in SHAPES:
            for m in MOTIONS:
                for b in BACKS:
                    out.append(f"a {c} {s} {m} over a {b} background")
    rng = np.random.default_rng(0)
    rng.shuffle(out)
    return out[:n]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def pair_flops(method: str, d: int = D, t: int = T, m: int = M, heads: int = 1) -> int:
    """Approximate FLOPs of the export form's pair side per (query, video) pair (export/forms.py):
    a multiply-add counts 2, an elementwise op 1; per-query work (the query projection) excluded."""
    j = heads * t
    xpool = 2 * t * d + 2 * (j + 1) ** 2 + 2 * (j + 2) ** 2 + 2 * (j + 2) * d + 2 * d  # logits, LN quads, fused z
    if method == "spem":
        # |z| and z.mu_t, frame sims, the modulators [p, q] and p*q as (T'+2)->D GEMMs + exp,
        # e*z and e*e, 7 (D x M) noise products (SPEMForm docstring) + the (M)-sized tail
        return xpool + 4 * d + 2 * t * d + 3 * 2 * (t + 2) * d + 3 * d + 4 * d + 7 * 2 * d * m + 2 * d + 15 * m
    if method == "tmass":
        # frame sims, linear radius + exp, 3 (D x M) noise products + operands
        return xpool + 2 * t * d + 2 * t * d + 2 * d + 3 * 2 * d * m + 5 * d + 10 * m
    raise ValueError(method)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def register_bench_backbone(workdir: Path) -> None:
    import open_clip

    import probret.train.backbone  # noqa: F401  (registers probret's own configs first)

    cfg_dir = workdir / "model_configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{BENCH_BACKBONE}.json").write_text(json.dumps(BENCH_CONFIG, indent=2))
    open_clip.add_model_config(cfg_dir)


def head_bundle(workdir: Path, method: str) -> dict:
    """A random-weight d=512 ``method`` checkpoint and its bundle (cached in the work dir); heads
    that sample at inference get M samples."""
    import torch

    from probret.engine.bundle import is_bundle, load_bundle
    from probret.export.exporter import ExportOptions, export_checkpoint
    from probret.train.checkpoint import load_checkpoint, save_checkpoint
    from probret.train.config import ModelConfig
    from probret.train.methods import get_head_class
    from probret.train.model import RetrievalModel

    ckpt, out = workdir / f"ckpt-{method}-d{D}", workdir / f"bundle-{method}-d{D}"
    stamp = workdir / f"bundle-{method}-d{D}.source-sha256"  # the export code the cached bundle came from
    exported = None
    if not (is_bundle(out) and (ckpt / "model.safetensors").is_file()
            and stamp.is_file() and stamp.read_text().strip() == export_source_sha()):
        shutil.rmtree(out, ignore_errors=True)
        known = {f.name for f in dataclasses.fields(get_head_class(method).Config)}
        torch.manual_seed(0)
        model = RetrievalModel.from_config(ModelConfig(backbone=BENCH_BACKBONE, pretrained=None, method=method,
                                                       num_frames=T,
                                                       head={"num_samples": M} if "num_samples" in known else {}))
        save_checkpoint(ckpt, model)
        t = time.perf_counter()
        export_checkpoint(ckpt, out, ExportOptions(benchmark_videos=4))
        exported = time.perf_counter() - t
        stamp.write_text(export_source_sha() + "\n")
    model, _ = load_checkpoint(ckpt)
    model.eval()
    bundle = load_bundle(out)
    assert bundle.num_frames == T and bundle.manifest["embed_dim"] == D, bundle.manifest
    assert bundle.sampling.get("samples") in (M, None), bundle.sampling
    return {"method": method, "ckpt": ckpt, "bundle": bundle, "model": model, "export_seconds": exported}


# --------------------------------------------------------------------------------------------
# indexes
# --------------------------------------------------------------------------------------------
def video_pool(rt, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random videos: frame features and every tensor the pipeline would store for them."""
    from probret.engine.pipeline import ann_embedding

    frames = np.random.default_rng(seed).standard_normal((n, T, D), dtype=np.float32)
    return {"frame_features": frames, **rt.video_side(frames), "ann": ann_embedding(frames)}


def build_index(path: Path, rt, pool: dict[str, np.ndarray], n: int, *, batch: int = 1024) -> float:
    from probret.engine.index import EncodedVideo, IndexSettings, IndexWriter

    b = rt.bundle
    settings = IndexSettings.for_bundle(b)
    p = len(pool["frame_features"])
    ts = np.linspace(0.0, 10.0, 2 * T + 1)[1::2][None]
    t0 = time.perf_counter()
    with IndexWriter(path, settings, model={"kind": "bundle", "spec": str(b.path), "bundle_sha256": b.sha256,
                                            "method": b.method}, rebuild=True) as w:
        for lo in range(0, n, batch):
            vids = []
            for i in range(lo, min(n, lo + batch)):
                k = i % p
                vids.append(EncodedVideo(path=f"v{i:07d}.mp4", size=1000 + i, mtime_ns=i, duration=10.0, fps=30.0,
                                         width=320, height=240, segments=[(0.0, 10.0)], timestamps=ts,
                                         tensors={name: a[k:k + 1] for name, a in pool.items()}))
            w.add(vids)
    return time.perf_counter() - t0


def index_ok(path: Path, bundle, n: int) -> bool:
    from probret.engine.index import read_header

    h = read_header(path)
    if not h or (h.get("settings") or {}).get("bundle_sha256") != bundle.sha256:
        return False
    from probret.engine.index import IndexReader

    try:
        with IndexReader(path) as r:
            return len(r.videos) == n
    except Exception:  # noqa: BLE001
        return False


def shard_arrays(reader, names) -> list[np.ndarray]:
    return [reader.tensor(int(sid), name) for sid in sorted(reader.shard_rows) for name in names
            if reader.shard_rows[sid]]


def shard_files(path: Path) -> list[Path]:
    return sorted((path / "shards").glob("*.bin"))


def evict(files) -> bool:
    """Drop the files' pages from the page cache (they are clean: the writer fsynced them)."""
    ok = True
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def read_once(arrays, threads: int, chunk_bytes: int = 64 << 20) -> float:
    """Seconds to read every byte of ``arrays`` once (threaded float32 sums of row chunks)."""
    parts = []
    for a in arrays:
        flat = a.reshape(len(a), -1)
        rows = max(1, chunk_bytes // max(1, flat.strides[0]))
        parts += [flat[i:i + rows] for i in range(0, len(flat), rows)]
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        total = sum(ex.map(lambda x: float(x.sum(dtype=np.float32)), parts))
    dt = time.perf_counter() - t
    if not np.isfinite(total):
        raise RuntimeError("stored features hold non-finite values")
    return dt


def read_floor(path: Path, names, threads: int, cold: bool) -> dict:
    from probret.engine.index import IndexReader

    out = {}
    if cold:
        evicted = evict(shard_files(path))
        with IndexReader(path) as r:
            arrays = shard_arrays(r, names)
            out["cold_s"] = read_once(arrays, threads)
            out["evicted"] = evicted
            del arrays
    warm = []
    for _ in range(3):
        with IndexReader(path) as r:  # a fresh mapping each time, like a new search process
            arrays = shard_arrays(r, names)
            warm.append(read_once(arrays, threads))
            nbytes = sum(a.nbytes for a in arrays)
            del arrays
    out["warm_s"] = min(warm[1:])  # the first pass may still fault pages in after a cold read
    out["bytes"] = int(nbytes)
    out["warm_gb_s"] = nbytes / out["warm_s"] / 1e9
    if "cold_s" in out:
        out["cold_gb_s"] = nbytes / out["cold_s"] / 1e9
    return out


# --------------------------------------------------------------------------------------------
# query timing
# --------------------------------------------------------------------------------------------
def time_search(searcher, qs: list[str], *, min_total: float = 1.0, max_reps: int = 5) -> dict:
    times = []
    while True:
        t = time.perf_counter()
        res = searcher.search(qs, top_k=10, ann=False)
        times.append(time.perf_counter() - t)
        if sum(times) >= min_total or len(times) >= max_reps:
            break
    assert len(res) == len(qs) and all(len(r.hits) == 10 and not r.ann for r in res)
    enc = min(_timed(lambda: searcher.encode_queries(qs)) for _ in range(2))
    return {"seconds": statistics.median(times), "min_s": min(times), "reps": len(times), "encode_s": enc}


def _loop_seconds(fn, sample: int, cap_s: float) -> tuple[float, int]:
    """Seconds per call of ``fn(k)`` over up to ``sample`` calls (fewer when ``cap_s`` runs out)."""
    t = time.perf_counter()
    done = 0
    for k in range(sample):
        fn(k)
        done += 1
        if time.perf_counter() - t > cap_s:
            break
    return (time.perf_counter() - t) / done, done


def pair_loop_reference(head: dict, rt, pool: dict[str, np.ndarray], qs: list[str], sample: int,
                        cap_s: float = 8.0) -> dict:
    """Seconds per (query, video) pair of (1) the PyTorch head's own ``score`` called per pair and
    (2) the bundle's pair graph called per pair (1 x 1), on up to ``sample`` pairs each. Both are
    timed with one thread and with all cores; the faster is the reference (tiny per-pair ops lose
    to threading overhead, badly so on a loaded machine, and the reference should not be slowed
    by a poor setting)."""
    import torch

    from probret.engine.runtime import BundleRuntime
    from probret.train.methods.base import TextFeatures

    model = head["model"]
    rng = np.random.default_rng(1)
    vids = rng.integers(0, len(pool["frame_features"]), sample)
    out = {"pairs": sample, "torch": {}, "ort_1x1": {}}
    default_threads = torch.get_num_threads()
    with torch.no_grad():
        tf = model.encode_text(model.backbone.tokenize(qs))
        frames = torch.from_numpy(pool["frame_features"])
        g = torch.Generator().manual_seed(0)
        texts = [TextFeatures(tf.sentence[i:i + 1], tf.tokens[i:i + 1], tf.mask[i:i + 1]) for i in range(len(qs))]

        def torch_pair(k):
            j = int(vids[k])
            model.head.score(texts[k % len(qs)], frames[j:j + 1], generator=g)

        try:
            for threads in sorted({1, default_threads}):
                torch.set_num_threads(threads)
                for k in range(3):  # warm-up
                    torch_pair(k)
                sec, done = _loop_seconds(torch_pair, sample, cap_s)
                out["torch"][threads] = {"s_per_pair": sec, "pairs": done}
        finally:
            torch.set_num_threads(default_threads)
    names = list(rt.bundle.video_outputs)
    for threads, r in ((None, rt), (1, BundleRuntime(rt.bundle, device="cpu", threads=1))):
        text = r.encode_text(qs)

        def ort_pair(k, r=r, text=text):
            i, j = k % len(qs), int(vids[k])
            r.score({n: a[i:i + 1] for n, a in text.items()}, {n: pool[n][j:j + 1] for n in names})

        ort_pair(0)
        sec, done = _loop_seconds(ort_pair, sample, cap_s)
        out["ort_1x1"][threads or "default"] = {"s_per_pair": sec, "pairs": done}
    out["torch_head_score_s"] = min(v["s_per_pair"] for v in out["torch"].values())
    out["ort_pair_graph_1x1_s"] = min(v["s_per_pair"] for v in out["ort_1x1"].values())
    out["torch_threads_default"] = default_threads
    return out


def query_bench(args, workdir: Path, peak: float) -> dict:
    from probret.engine.runtime import BundleRuntime

    register_bench_backbone(workdir)
    all_q = queries(max(args.batches))
    out = {"heads": {}}
    for method in args.heads:
        say(f"[{method}] checkpoint + bundle (d={D}, T'={T}, M={M})")
        head = head_bundle(workdir, method)
        runtimes = {
            "default": BundleRuntime(head["bundle"], device="cpu"),  # one 1-thread pair run per core at once
            "one_thread": BundleRuntime(head["bundle"], device="cpu", threads=1),  # the 1-thread comparison
            # one pair run at a time on an all-cores session (the runtime's behaviour before pair_workers)
            "sequential": BundleRuntime(head["bundle"], device="cpu", pair_workers=1),
        }
        rt = runtimes["default"]
        t = time.perf_counter()
        pool = video_pool(rt, min(args.pool, max(args.sizes)))
        pool_s = time.perf_counter() - t
        layout_bytes = {n: int(a[0].nbytes) for n, a in pool.items()}
        say(f"[{method}] per-pair loop references on {args.pair_sample} pairs")
        ref = pair_loop_reference(head, rt, pool, all_q, args.pair_sample)
        names = list(rt.bundle.video_outputs)
        h = {"bundle": str(head["bundle"].path), "export_seconds": head["export_seconds"], "pool_videos": len(pool["ann"]),
             "pool_seconds": pool_s, "bytes_per_video": sum(layout_bytes.values()),
             "bytes_per_video_read_by_search": sum(layout_bytes[n] for n in names), "layout_bytes": layout_bytes,
             "pair_flops": pair_flops(method), "reference": ref, "sizes": {}}
        out["heads"][method] = h
        measured: dict[int, dict[int, float]] = {}  # batch -> {size: seconds}
        for n in sorted(args.sizes):
            h["sizes"][n] = size_bench(args, workdir / f"index-{method}-{n}", method, n, head=head, h=h, pool=pool,
                                       runtimes=runtimes, all_q=all_q, peak=peak, measured=measured)
        del pool
    return out


def size_bench(args, path: Path, method: str, n: int, *, head, h, pool, runtimes, all_q, peak, measured) -> dict:
    """One head's cells at one index size: its read floor, then every batch size."""
    from probret.engine.index import IndexReader
    from probret.engine.search import Searcher

    rt = runtimes["default"]
    names = list(rt.bundle.video_outputs)
    threads = len(os.sched_getaffinity(0))
    if args.reuse and index_ok(path, head["bundle"], n):
        build_s = None
        say(f"[{method}] {n} videos: reusing {path}")
    else:
        say(f"[{method}] {n} videos: writing the index ({n * h['bytes_per_video'] / 1e9:.2f} GB)")
        build_s = build_index(path, rt, pool, n)
    floor = read_floor(path, names, threads, cold=not args.no_cold)
    say(f"[{method}] {n} videos: read floor warm {floor['warm_s']:.3f} s"
        + (f", cold {floor['cold_s']:.3f} s" if "cold_s" in floor else ""))
    s = {"index_build_s": build_s, "read": floor,
         "compute_floor_1q_s": h["pair_flops"] * n / (peak * 1e9), "batches": {}}
    with IndexReader(path) as reader:
        searcher = Searcher(rt, reader, say=say)
        searcher.search(all_q[:1], top_k=10, ann=False)  # sessions, mappings, pages
        for b in sorted(args.batches):
            cell = batch_cell(args, searcher, method, n, b, all_q=all_q, measured=measured)
            s["batches"][b] = cell
            cell.update(cell_ratios(cell["seconds"], n, b, flops=h["pair_flops"], floor=floor, ref=h["reference"],
                                    peak=peak))
        if 1 in args.batches:
            one_query_variants(s, reader, method, n, runtimes=runtimes, all_q=all_q, threads=threads)
    if not args.keep:
        evict(shard_files(path))
        shutil.rmtree(path, ignore_errors=True)
    return s


def batch_cell(args, searcher, method: str, n: int, b: int, *, all_q, measured) -> dict:
    """Time ``b`` queries against ``n`` videos, or extrapolate from the closest smaller measured
    size of the same batch when the prediction is over ``--budget``."""
    smaller = [m for m in measured.get(b, {}) if m < n]
    rate = measured[b][max(smaller)] / (max(smaller) * b) if smaller else None  # seconds per pair
    predicted = rate * n * b if rate else None
    if predicted is not None and predicted > args.budget:
        base = max(smaller)
        sec = measured[b][base] * n / base
        say(f"[{method}] {n} videos x {b} queries: ~{sec:.1f} s, extrapolated from {base} videos "
            f"(over the {args.budget:.0f} s budget)")
        return {"seconds": sec, "extrapolated_from": base, "predicted_s": predicted}
    cell = time_search(searcher, all_q[:b])
    measured.setdefault(b, {})[n] = cell["seconds"]
    say(f"[{method}] {n} videos x {b} queries: {cell['seconds']:.3f} s ({cell['reps']} rep(s))")
    return cell


def cell_ratios(sec: float, n: int, b: int, *, flops: int, floor: dict, ref: dict, peak: float) -> dict:
    """A cell's rates and its ratios to the read floor, the compute floor and the per-pair loops."""
    loop_torch = ref["torch_head_score_s"] * n * b
    loop_ort = ref["ort_pair_graph_1x1_s"] * n * b
    return {
        "queries_per_s": b / sec, "ms_per_query": sec / b * 1e3, "us_per_pair": sec / (n * b) * 1e6,
        "gflop_s": flops * n * b / sec / 1e9,
        "vs_read_warm": sec / floor["warm_s"],
        "per_query_vs_read_warm": sec / b / floor["warm_s"],
        "vs_read_cold": sec / floor["cold_s"] if "cold_s" in floor else None,
        "vs_compute_floor": sec / (flops * n * b / (peak * 1e9)),
        "loop_torch_s_extrapolated": loop_torch, "speedup_vs_torch_loop": loop_torch / sec,
        "loop_ort_s_extrapolated": loop_ort, "speedup_vs_ort_1x1_loop": loop_ort / sec}


def one_query_variants(s: dict, reader, method: str, n: int, *, runtimes, all_q, threads: int) -> None:
    """One query again, with one ONNX Runtime thread and with one pair run at a time."""
    from probret.engine.search import Searcher

    one_thread = Searcher(runtimes["one_thread"], reader, say=say)
    one_thread.search(all_q[:1], top_k=10, ann=False)  # its sessions open untimed
    one = time_search(one_thread, all_q[:1])
    s["batch1_ort_1_thread_s"] = one["seconds"]
    s["batches"][1]["ort_1_thread_s"] = one["seconds"]
    say(f"[{method}] {n} videos x 1 query with one ONNX Runtime thread: {one['seconds']:.3f} s")
    seq = Searcher(runtimes["sequential"], reader, say=say)
    seq.search(all_q[:1], top_k=10, ann=False)
    one = time_search(seq, all_q[:1])
    s["batches"][1]["ort_sequential_all_threads_s"] = one["seconds"]
    say(f"[{method}] {n} videos x 1 query, one pair run at a time on a {threads}-thread session: "
        f"{one['seconds']:.3f} s")


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def print_tables(res: dict) -> None:
    m = res["machine"]
    print(f"\nmachine: {m['nproc']} CPU(s), {m['cpu']}, {m['mem_gib']} GiB; load {m['loadavg_start']} -> "
          f"{m.get('loadavg_end')}; FP32 matmul peak {res['sgemm_gflop_s']:.1f} GFLOP/s; {m['date']}")
    q = res.get("query")
    if q:
        print("\nquery latency (exact, warm page cache; 'x' marks cells extrapolated linearly in videos)")
        hdr = ("head", "videos", "batch", "s/batch", "1-thr s", "seq s", "ms/query", "q/s", "read warm s", "read cold s",
               "batch/read", "query/read", "x compute", "loop est s", "x loop", "x 1x1 ORT")
        rows = []
        for method, h in q["heads"].items():
            for n, s in h["sizes"].items():
                r = s["read"]
                for bsz, c in s["batches"].items():
                    rows.append((method, f"{int(n):,}", str(bsz), _fmt(c["seconds"]) + ("x" if "extrapolated_from" in c else ""),
                                 _fmt(c.get("ort_1_thread_s")), _fmt(c.get("ort_sequential_all_threads_s")),
                                 _fmt(c["ms_per_query"]), _fmt(c["queries_per_s"]), _fmt(r["warm_s"]),
                                 _fmt(r.get("cold_s")), _fmt(c["vs_read_warm"]), _fmt(c["per_query_vs_read_warm"]),
                                 _fmt(c["vs_compute_floor"]), _fmt(c["loop_torch_s_extrapolated"]),
                                 _fmt(c["speedup_vs_torch_loop"]), _fmt(c["speedup_vs_ort_1x1_loop"])))
        widths = [max(len(x) for x in col) for col in zip(hdr, *rows)]
        for row in [hdr, *rows]:
            print("  ".join(x.rjust(wd) for x, wd in zip(row, widths)))
        print("\nper head: bytes per video stored / read by a search; pair FLOPs (analytic); per-pair references")
        for method, h in q["heads"].items():
            ref = h["reference"]
            tor = ", ".join(f"{k} thr {v['s_per_pair'] * 1e6:.0f} us ({v['pairs']} pairs)" for k, v in ref["torch"].items())
            ort = ", ".join(f"{k} thr {v['s_per_pair'] * 1e6:.0f} us ({v['pairs']} pairs)" for k, v in ref["ort_1x1"].items())
            print(f"  {method}: {h['bytes_per_video']:,} B stored, {h['bytes_per_video_read_by_search']:,} B read; "
                  f"{h['pair_flops'] / 1e3:.0f} kFLOP/pair; torch head.score per pair: {tor}; "
                  f"ORT pair graph 1x1 per pair: {ort}")
    print_targets(res["targets"])


def targets(res: dict) -> list[dict]:
    out = []
    q = res.get("query")
    if q:
        for method, h in q["heads"].items():
            n = max(h["sizes"], key=int)
            s = h["sizes"][n]
            if 1 in s["batches"]:
                c = s["batches"][1]
                tag = " (extrapolated)" if "extrapolated_from" in c else ""
                out.append({"target": f"{method} exact scoring of {int(n):,} videos, 1 query <= 2x warm read",
                            "measured": f"{c['vs_read_warm']:.2f}x ({c['seconds']:.3f} s vs {s['read']['warm_s']:.3f} s){tag}",
                            "status": "met" if c["vs_read_warm"] <= 2 else "short"})
                out.append({"target": f"{method} {int(n):,} videos, 1 query >= 30x faster than a per-pair loop",
                            "measured": f"{c['speedup_vs_torch_loop']:.1f}x (loop of "
                                        f"{h['reference']['torch_head_score_s'] * 1e3:.2f} ms/pair, timed on a "
                                        "sample, extrapolated)" + tag,
                            "status": "met" if c["speedup_vs_torch_loop"] >= 30 else "short"})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="CI-sized run (seconds): small sizes")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="indexed videos, comma-separated (default 1000,10000,100000)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="queries per batch (default 1,16,256)")
    p.add_argument("--heads", type=lambda s: s.split(","), default=["spem", "tmass"])
    p.add_argument("--budget", type=float, default=None,
                   help="seconds a measured cell may take; longer cells are extrapolated (default 90)")
    p.add_argument("--pool", type=int, default=1024, help="distinct random videos repeated to fill an index")
    p.add_argument("--pair-sample", type=int, default=None, help="pairs timed for the per-pair loops (default 300)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold (evicted page cache) read")
    p.add_argument("--skip-indexing", action="store_true", help=argparse.SUPPRESS)  # indexing moved to bench/indexing.py
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "probret-bench-search"))
    p.add_argument("--keep", action="store_true", help="keep the indexes (large) for --reuse")
    p.add_argument("--reuse", action="store_true", help="reuse indexes kept by an earlier --keep run")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes = a.sizes or [300, 1000]
        a.batches = a.batches or [1, 16]
        a.budget = a.budget if a.budget is not None else 20.0
        a.pair_sample = a.pair_sample or 20
        a.pool = min(a.pool, 256)
    else:
        a.sizes = a.sizes or [1000, 10000, 100000]
        a.batches = a.batches or [1, 16, 256]
        a.budget = a.budget if a.budget is not None else 90.0
        a.pair_sample = a.pair_sample or 300
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PROBRET_CACHE", str(workdir / "cache"))  # exported models stay in the work dir

    t0 = time.perf_counter()
    res = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "machine": machine(), "settings": {"D": D, "frames": T, "samples": M, "sizes": a.sizes,
                                              "batches": a.batches, "heads": a.heads, "budget_s": a.budget,
                                              "pool": a.pool, "pair_sample": a.pair_sample, "quick": a.quick}}
    say("FP32 matmul peak")
    res["sgemm_gflop_s"] = sgemm_peak()
    res["query"] = query_bench(a, workdir, res["sgemm_gflop_s"])
    finish(res, t0, a.out, print_tables, targets)


if __name__ == "__main__":
    main()
