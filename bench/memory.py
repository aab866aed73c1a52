"""Memory benchmark: bytes per indexed video, and a million-video index searched in bounded RAM.

    flock /tmp/probret-bench.lock python bench/memory.py --out bench/results/memory/memory.json  # full (~5 min)
    python bench/memory.py --quick --out /tmp/memory-quick.json                                   # smoke (~15 s)

Everything is measured in ONE run (docs/benchmarks_memory.md holds the table and the notes).

**Bytes per video** (per head: meanP, X-Pool, T-MASS, SPEM, DUQ; at float32 and float16 storage):
read from the *index's own layout*: for each head a random-weight d=512 checkpoint on the tiny
``bench-d512`` backbone (bench/search.py; T'=12 frames, M=20 samples for the heads that sample)
is exported to a bundle, 4 random videos go through its exported video-side graph and the real
``IndexWriter`` at each storage dtype, and the reader's ``row_bytes()`` gives the bytes of every
stored tensor for one segment (one segment per video, as in bench/search.py). "read by search"
is the part the pair graph reads in an exact scan (the bundle's video outputs); the rest is
the frame features (best instants of the top hits) and the ANN embedding. The SQLite bytes per
video (paths, segment table, timestamps) are measured on the big index.

**Ranking change of float16 storage**: (a) the shipped demo model on the procedural test split
(bench/results/quality/world, 100 clips, 100 captions): the clips are indexed once at float32
through the real pipeline, the same rows are written again at float16, and both indexes are
searched with every caption (R@1 / R@5 of each, top-10 overlap, largest score change); (b) the
random d=512 SPEM head on ``--rank-videos`` distinct random videos and 64 queries (top-10
overlap, score change): many videos make near-ties, the hardest case for a lossy store.

**The big index** (``--videos``, default 1M): the head with the largest bytes per video whose
index fits the free disk with ``--reserve`` GB to spare (``--head auto``; SPEM at float16 is
~53 GB a million and does not fit this machine's ~48 GB free disk: its arithmetic is printed),
at ``--dtype`` (float16). The stored tensors are a pool of ``--pool`` random videos through the
head's video-side graph, repeated to fill the index (as bench/search.py does); the ANN embedding
is made distinct per video (pool embedding + noise, re-normalised) so that the faiss first stage
trains and searches on a million different vectors. The same is done at ``--videos / 10`` to show
that peak RSS does not grow with the index. Each index is searched in a *fresh process*
(so its peak resident set is the search's alone), phase by phase with the peak reset between
phases (``/proc/self/clear_refs`` = 5):

* open: the runtime (bundle sessions) and ``IndexReader`` (video and segment tables in RAM);
* exact: ``Searcher.search([q], top_k=10, ann=False)`` = a full scan of every stored row the
  pair graph needs, in 32 MB blocks, pages released behind the scan; timed 3x (the first right
  after the writer, so partly from the page cache);
* ANN: ``Searcher.ann_stage()`` (``AnnStage.open``: builds the faiss first stage the first
  time, IVF-PQ at this size) and
  ``Searcher.search([q], ann=True, ann_candidates=1000)`` (candidates, then exact re-rank);
* exact without release (last): the same scan with ``IndexReader._release`` disabled, to show what the
  release buys (the touched file pages then stay in the process's resident set).

Peak RSS is the kernel's VmHWM (anonymous + file pages mapped by the process), and a 5 ms
sampler gives the peak of the anonymous part alone (RssAnon: what cannot be reclaimed) and of
the file part (RssFile: page-cache pages the process maps, reclaimable). Indexes are deleted
at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, machine, say  # noqa: E402
from search import D, M, T, head_bundle, queries, register_bench_backbone, video_pool  # noqa: E402

DTYPES = ["float32", "float16"]
GB = 1e9


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in bytes (Linux /proc)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Sampler:
    """Peaks of RssAnon and RssFile sampled every ``period`` seconds in a thread."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            st = proc_status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], st.get(k, 0))
            self._stop.wait(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        st = proc_status()
        for k in self.peak:
            self.peak[k] = max(self.peak[k], st.get(k, 0))


def phase(fn):
    """Run ``fn()`` with the peak RSS reset before: (result, seconds, memory dict)."""
    reset_peak()
    before = proc_status()
    with Sampler() as s:
        t = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t
    after = proc_status()
    return res, dt, {"rss_before": before.get("VmRSS"), "rss_after": after.get("VmRSS"), "peak_rss": after.get("VmHWM"),
                     "peak_anon": s.peak["RssAnon"], "peak_file": s.peak["RssFile"]}


# --------------------------------------------------------------------------------------------
# bundles and indexes
# --------------------------------------------------------------------------------------------
def bundle_for(workdir: Path, method: str):
    """bench/search.py's random-weight d=512 ``method`` bundle (cached in the work dir)."""
    return head_bundle(workdir, method)["bundle"]


def write_index(path: Path, bundle, pool: dict[str, np.ndarray], n: int, dtype: str, *, batch: int = 2048,
                ann_noise: float = 0.0, seed: int = 0, progress: bool = False) -> float:
    """``n`` one-segment videos, video i storing pool row i % len(pool), through the real
    IndexWriter at ``dtype``. ``ann_noise`` > 0 makes each video's ANN embedding distinct."""
    from probret.engine.index import EncodedVideo, IndexSettings, IndexWriter

    p = len(pool["ann"])
    ts = np.linspace(0.0, 10.0, 2 * T + 1)[1::2][None]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with IndexWriter(path, IndexSettings.for_bundle(bundle, dtype=dtype), rebuild=True,
                     model={"kind": "bundle", "spec": str(bundle.path), "bundle_sha256": bundle.sha256,
                            "method": bundle.method}) as w:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            k = np.arange(lo, hi) % p
            ann = pool["ann"][k]
            if ann_noise:
                ann = ann + (ann_noise / np.sqrt(ann.shape[1])) * rng.standard_normal(ann.shape, dtype=np.float32)
                ann /= np.linalg.norm(ann, axis=1, keepdims=True)
            vids = [EncodedVideo(path=f"v{i:08d}.mp4", size=1000 + i, mtime_ns=i, duration=10.0, fps=30.0, width=320,
                                 height=240, segments=[(0.0, 10.0)], timestamps=ts,
                                 tensors={**{nm: a[j:j + 1] for nm, a in pool.items() if nm != "ann"},
                                          "ann": ann[i - lo:i - lo + 1]})
                    for i, j in zip(range(lo, hi), k)]
            w.add(vids)
            if progress and (hi // batch) % 64 == 0:
                el = time.perf_counter() - t0
                say(f"  {hi:,} / {n:,} videos written ({el:.0f} s, {hi / el:,.0f} videos/s)")
    return time.perf_counter() - t0


def dir_bytes(path: Path) -> dict[str, int]:
    shards = sum(f.stat().st_size for f in (path / "shards").glob("*.bin"))
    db = sum(f.stat().st_size for f in path.glob("index.db*"))
    ann = sum(f.stat().st_size for f in (path / "ann").glob("*")) if (path / "ann").is_dir() else 0
    return {"shards": shards, "sqlite": db, "ann": ann, "total": shards + db + ann}


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# --------------------------------------------------------------------------------------------
# A. bytes per video
# --------------------------------------------------------------------------------------------
def layout_bench(workdir: Path, heads: list[str]) -> dict:
    from probret.engine.index import IndexReader
    from probret.engine.runtime import BundleRuntime

    out = {}
    for method in heads:
        b = bundle_for(workdir, method)
        rt = BundleRuntime(b, device="cpu")
        pool = video_pool(rt, 4)
        h = {"video_outputs": list(b.video_outputs), "dtypes": {}}
        for dtype in DTYPES:
            path = workdir / f"layout-{method}-{dtype}"
            write_index(path, b, pool, 4, dtype)
            with IndexReader(path) as r:
                rb = r.row_bytes()
                shapes = {n: r.layout[n]["shape"] for n in r.layout}
            disk = dir_bytes(path)["shards"] / 4
            h["dtypes"][dtype] = {"tensors": rb, "bytes_per_video": sum(rb.values()),
                                  "read_by_search": sum(rb[n] for n in b.video_outputs), "shard_bytes_per_video": disk}
            h["shapes"] = shapes
            shutil.rmtree(path)
        out[method] = h
        d32, d16 = h["dtypes"]["float32"], h["dtypes"]["float16"]
        say(f"[{method}] {d32['bytes_per_video']:,} B/video at float32 ({d32['read_by_search']:,} read by search), "
            f"{d16['bytes_per_video']:,} at float16")
    return out


# --------------------------------------------------------------------------------------------
# B. ranking change of float16 storage
# --------------------------------------------------------------------------------------------
def copy_index(src: Path, dst: Path, dtype: str) -> None:
    """Every video of ``src`` written again at ``dtype`` (same metadata, same rows)."""
    from probret.engine.index import EncodedVideo, IndexReader, IndexSettings, IndexWriter

    with IndexReader(src) as r:
        s = IndexSettings(**{**{k: (tuple(v) if isinstance(v, list) else v) for k, v in r.settings.items()
                               if k in {f.name for f in dataclasses.fields(IndexSettings)}}, "dtype": dtype})
        with IndexWriter(dst, s, model=r.meta.get("model"), rebuild=True) as w:
            vids = []
            for i, v in enumerate(r.videos):
                segs = np.arange(r.video_offsets[i], r.video_offsets[i + 1])
                t = r.gather(sorted(r.layout), segs)
                vids.append(EncodedVideo(path=v.path, size=v.size, mtime_ns=v.mtime_ns, duration=v.duration, fps=v.fps,
                                         width=v.width, height=v.height,
                                         segments=[(float(r.seg_start[k]), float(r.seg_end[k])) for k in segs],
                                         timestamps=np.stack([r.timestamps(int(k)) for k in segs]), tensors=t))
            w.add(vids)


def compare_rankings(rt, a: Path, b: Path, qs: list[str], truth: list[str] | None) -> dict:
    from probret.engine.index import IndexReader
    from probret.engine.search import Searcher

    times = {}
    with IndexReader(a) as ra, IndexReader(b) as rb:
        sa, sb = Searcher(rt, ra), Searcher(rt, rb)
        res_a, res_b = sa.search(qs, top_k=10, ann=False), sb.search(qs, top_k=10, ann=False)
        for name, srch in (("float32", sa), ("float16", sb)):  # scan time, same run, warm, best of 3
            for nq in (1, len(qs)):
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    srch.search(qs[:nq], top_k=10, ann=False)
                    best = min(best, time.perf_counter() - t)
                times[f"search_s_{nq}q_{name}"] = best
    overlap = [len({h.path for h in x.hits} & {h.path for h in y.hits}) / len(x.hits) for x, y in zip(res_a, res_b)]
    same_order = np.mean([[h.path for h in x.hits] == [h.path for h in y.hits] for x, y in zip(res_a, res_b)])
    first = np.mean([x.hits[0].path == y.hits[0].path for x, y in zip(res_a, res_b)])
    dscore = max(abs(h.score - g.score) for x, y in zip(res_a, res_b) for h, g in zip(x.hits, y.hits)
                 if h.path == g.path)
    out = {"queries": len(qs), "top10_overlap": float(np.mean(overlap)), "top10_min_overlap": float(np.min(overlap)),
           "same_top10_order": float(same_order), "same_top1": float(first), "max_score_change": float(dscore),
           "score_scale": float(np.mean([abs(x.hits[0].score) for x in res_a])), **times}
    if truth is not None:
        for name, res in (("float32", res_a), ("float16", res_b)):
            out[f"r1_{name}"] = float(np.mean([r.hits[0].path == t for r, t in zip(res, truth)]))
            out[f"r5_{name}"] = float(np.mean([any(h.path == t for h in r.hits[:5]) for r, t in zip(res, truth)]))
    return out


def ranking_demo(workdir: Path, world: Path, limit: int | None) -> dict:
    """The demo model on the procedural test split: R@1 at float32 vs float16 storage."""
    import csv

    from probret.engine import open_folder
    from probret.engine.runtime import BundleRuntime
    from probret.export.resolve import resolve_model

    rows = list(csv.DictReader((world / "test.csv").open()))[:limit]
    folder = workdir / "demo-test-videos"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for r in rows:
        (folder / f"{r['video_id']}.mp4").symlink_to((world / "videos" / f"{r['video_id']}.mp4").resolve())
    model = resolve_model(None, say=say)
    rt = BundleRuntime(model.bundle, device="cpu")
    a, b = workdir / "demo-f32", workdir / "demo-f16"
    t = time.perf_counter()
    open_folder(folder, bundle=model.bundle, runtime=rt, index=a, dtype="float32", rebuild=True, progress=False,
                model=model.to_meta()).close()  # the search path's own indexing (engine facade)
    enc = time.perf_counter() - t
    copy_index(a, b, "float16")
    out = compare_rankings(rt, a, b, [r["sentence"] for r in rows], [f"{r['video_id']}.mp4" for r in rows])
    out.update({"model": model.description, "videos": len(rows), "index_seconds": enc})
    for p in (a, b, folder):
        shutil.rmtree(p, ignore_errors=True)
    return out


def ranking_random(workdir: Path, n: int, nq: int) -> dict:
    """The random d=512 SPEM head, ``n`` distinct random videos: float32 vs float16 rankings."""
    from probret.engine.runtime import BundleRuntime

    b = bundle_for(workdir, "spem")
    rt = BundleRuntime(b, device="cpu")
    pool = video_pool(rt, n, seed=1)
    a, c = workdir / "rank-f32", workdir / "rank-f16"
    write_index(a, b, pool, n, "float32")
    write_index(c, b, pool, n, "float16")
    out = compare_rankings(rt, a, c, queries(nq), None)
    out.update({"head": "spem", "videos": n})
    shutil.rmtree(a)
    shutil.rmtree(c)
    return out


# --------------------------------------------------------------------------------------------
# C. the big index, searched in a fresh process
# --------------------------------------------------------------------------------------------
def search_child(index: Path, bundle_dir: Path, reps: int, ann: bool, candidates: int) -> dict:
    """Runs in its own process: open, exact scans, exact scan without release, ANN (module doc)."""
    from probret.engine.index import IndexReader
    from probret.engine.runtime import BundleRuntime
    from probret.engine.search import Searcher

    out = {"start": proc_status()}
    q = queries(1)
    rt, dt, mem = phase(lambda: BundleRuntime(bundle_dir, device="cpu"))
    out["runtime"] = {"seconds": dt, **mem}
    reader, dt, mem = phase(lambda: IndexReader(index))
    out["open"] = {"seconds": dt, **mem, "videos": len(reader.videos), "segments": reader.num_segments}
    searcher = Searcher(rt, reader)
    searcher.encode_queries(q)  # text session warm: the scans below time the scan
    runs = []
    for i in range(reps):
        res, dt, mem = phase(lambda: searcher.search(q, top_k=10, ann=False))
        assert len(res[0].hits) == 10 and res[0].candidates == reader.num_segments
        runs.append({"seconds": dt, **mem})
        say(f"  exact scan {i + 1}: {dt:.3f} s, peak RSS {mem['peak_rss'] / GB:.2f} GB "
            f"(anonymous {mem['peak_anon'] / GB:.2f} GB)")
    out["exact"] = runs
    if ann:
        searcher.say = say
        stage, dt, mem = phase(searcher.ann_stage)  # AnnStage.open: built on first use, then loaded
        out["ann_open"] = {"seconds": dt, **mem, "factory": stage.factory}
        say(f"  ANN stage {stage.factory}: {dt:.1f} s, peak RSS {mem['peak_rss'] / GB:.2f} GB")
        ann_runs = []
        for _ in range(reps):
            res3, dt, mem = phase(lambda: searcher.search(q, top_k=10, ann=True, ann_candidates=candidates))
            assert res3[0].ann and len(res3[0].hits) == 10
            ann_runs.append({"seconds": dt, **mem, "candidates": res3[0].candidates})
        out["ann"] = ann_runs
        say(f"  ANN + re-rank of {res3[0].candidates} segments: {min(r['seconds'] for r in ann_runs) * 1e3:.1f} ms, "
            f"peak RSS {max(r['peak_rss'] for r in ann_runs) / GB:.2f} GB")
    top = [h.path for h in res[0].hits]
    saved = IndexReader._release
    IndexReader._release = lambda *a, **k: None
    try:
        res2, dt, mem = phase(lambda: searcher.search(q, top_k=10, ann=False))
    finally:
        IndexReader._release = saved
    assert [h.path for h in res2[0].hits] == top
    out["exact_no_release"] = {"seconds": dt, **mem}
    say(f"  exact scan without page release: {dt:.3f} s, peak RSS {mem['peak_rss'] / GB:.2f} GB")
    reader.close()
    out["end"] = proc_status()
    return out


def run_child(index: Path, bundle_dir: Path, reps: int, ann: bool, candidates: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", str(index), "--_bundle", str(bundle_dir),
           "--reps", str(reps), "--candidates", str(candidates)] + ([] if ann else ["--no-ann"])
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def big_bench(args, workdir: Path, layout: dict) -> dict:
    from probret.engine.runtime import BundleRuntime

    per_video = {m: layout[m]["dtypes"][args.dtype]["shard_bytes_per_video"] for m in layout}
    sqlite_est = 400  # bytes a video in index.db (measured below; an upper guess to choose the head)
    free = free_bytes(workdir)
    budget = free - args.reserve * GB - (args.videos // 10) * max(per_video.values())
    projection = {m: {"bytes_per_video": b, "index_gb": args.videos * (b + sqlite_est) / GB,
                      "fits": args.videos * (b + sqlite_est) <= budget} for m, b in per_video.items()}
    if args.head == "auto":
        fitting = [m for m in per_video if projection[m]["fits"]]
        if not fitting:
            raise SystemExit(f"no head fits {args.videos:,} videos in {budget / GB:.1f} GB")
        head = max(fitting, key=lambda m: per_video[m])
    else:
        head = args.head
    for m, p in sorted(projection.items(), key=lambda kv: -kv[1]["bytes_per_video"]):
        say(f"{m} at {args.dtype}: {p['bytes_per_video']:,.0f} B/video -> {p['index_gb']:.1f} GB for {args.videos:,} "
            f"videos: {'fits' if p['fits'] else 'does NOT fit'} {free / GB:.1f} GB free with {args.reserve} GB to spare")
    say(f"big index: {head} at {args.dtype}")
    b = bundle_for(workdir, head)
    rt = BundleRuntime(b, device="cpu")
    pool = video_pool(rt, args.pool)
    out = {"head": head, "dtype": args.dtype, "free_disk_gb_before": free / GB, "projection": projection, "sizes": {}}
    for n in sorted({max(1, args.videos // 10), args.videos}):
        path = workdir / f"big-{head}-{args.dtype}-{n}"
        say(f"[{n:,} videos] writing {path}")
        wt = write_index(path, b, pool, n, args.dtype, ann_noise=0.5, progress=n >= 100_000)
        size = dir_bytes(path)
        say(f"[{n:,} videos] written in {wt:.0f} s ({n / wt:,.0f} videos/s): {size['total'] / GB:.2f} GB on disk, "
            f"free disk now {free_bytes(workdir) / GB:.1f} GB")
        res = run_child(path, b.path, args.reps, not args.no_ann, args.candidates)
        size = dir_bytes(path)  # now with the ANN stage
        out["sizes"][n] = {"videos": n, "write_seconds": wt, "write_videos_s": n / wt, "disk": size,
                           "disk_bytes_per_video": size["total"] / n, "sqlite_bytes_per_video": size["sqlite"] / n,
                           "shard_bytes_per_video": size["shards"] / n, **res}
        if not args.keep:
            shutil.rmtree(path)
    for spec in args.extra:  # e.g. spem:100000: the heaviest head at a size this disk holds
        m, n = spec.split(":")
        n = int(n)
        need = n * (per_video[m] + sqlite_est)
        if need > free_bytes(workdir) - args.reserve * GB:
            say(f"skipping {spec}: {need / GB:.1f} GB would leave less than {args.reserve} GB free")
            continue
        bm = bundle_for(workdir, m)
        rtm = BundleRuntime(bm, device="cpu")
        path = workdir / f"extra-{m}-{args.dtype}-{n}"
        say(f"[{m}, {n:,} videos] writing {path}")
        wt = write_index(path, bm, video_pool(rtm, args.pool), n, args.dtype, ann_noise=0.5, progress=n >= 100_000)
        res = run_child(path, bm.path, args.reps, not args.no_ann, args.candidates)
        size = dir_bytes(path)
        out.setdefault("extra", {})[spec] = {"head": m, "videos": n, "write_seconds": wt, "disk": size,
                                             "disk_bytes_per_video": size["total"] / n, **res}
        if not args.keep:
            shutil.rmtree(path)
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def print_tables(res: dict) -> None:
    lay = res["layout"]
    print("\n## Bytes per indexed video (one segment; d=512, T'=12, M=20)\n")
    print("| head | stored tensors | float32 B | float16 B | read by search f32 | read by search f16 | 1M videos f16 GB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for m, h in lay.items():
        a, b = h["dtypes"]["float32"], h["dtypes"]["float16"]
        names = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in h["shapes"].items())
        print(f"| {m} | {names} | {a['bytes_per_video']:,} | {b['bytes_per_video']:,} | {a['read_by_search']:,} | "
              f"{b['read_by_search']:,} | {b['bytes_per_video'] * 1e6 / GB:.1f} |")
    for key, r in res.get("ranking", {}).items():
        print(f"\nfloat16 vs float32 storage, {key}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                                  for k, v in r.items()))
    big = res.get("big")
    if not big:
        return
    print(f"\n## Searching indexes at {big['dtype']} (fresh process per index)\n")
    print("| head, videos | on disk GB | B/video on disk | SQLite B/video | open s | open RSS GB | exact s (warm) | exact peak RSS GB "
          "| exact peak anon GB | no-release peak RSS GB | ANN build s | ANN+rerank ms | ANN peak RSS GB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [(f"{big['head']} {int(n):,}", s) for n, s in big["sizes"].items()]
    rows += [(f"{s['head']} {s['videos']:,}", s) for s in (big.get("extra") or {}).values()]
    for n, s in rows:
        ex = s["exact"]
        ann = s.get("ann") or []
        print(f"| {n} | {s['disk']['total'] / GB:.2f} | {s['disk_bytes_per_video']:,.0f} | "
              f"{s['disk']['sqlite'] / s['open']['videos']:,.0f} | {s['open']['seconds']:.1f} | {s['open']['rss_after'] / GB:.2f} | "
              f"{min(r['seconds'] for r in ex[1:] or ex):.3f} | {max(r['peak_rss'] for r in ex) / GB:.2f} | "
              f"{max(r['peak_anon'] for r in ex) / GB:.2f} | {s['exact_no_release']['peak_rss'] / GB:.2f} | "
              + (f"{s['ann_open']['seconds']:.0f} | {min(r['seconds'] for r in ann) * 1e3:.0f} | "
                 f"{max(r['peak_rss'] for r in ann) / GB:.2f} |" if ann else "- | - | - |"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run (seconds): 20k videos, small ranking checks")
    p.add_argument("--videos", type=int, default=None, help="videos in the big index (default 1,000,000)")
    p.add_argument("--head", default="auto", help="head of the big index (default: the largest that fits the disk)")
    p.add_argument("--dtype", default="float16", choices=DTYPES)
    from probret.train.methods import get_head_class, list_methods

    # default: the heads whose export form restructures the pair graph (GenericForm ones are not tuned)
    optimized = [m for m in list_methods() if get_head_class(m).export_form != "GenericForm"]
    p.add_argument("--heads", type=lambda s: s.split(","), default=optimized,
                   help=f"comma-separated registered methods (default: {','.join(optimized)})")
    p.add_argument("--reserve", type=float, default=15.0, help="GB of disk left free")
    p.add_argument("--pool", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--no-ann", action="store_true")
    p.add_argument("--extra", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="more indexes HEAD:VIDEOS searched the same way (default spem:100000; quick spem:2000)")
    p.add_argument("--rank-videos", type=int, default=None, help="videos of the random SPEM ranking check (4096)")
    p.add_argument("--world", default=str(Path(__file__).resolve().parent / "results" / "quality" / "world"))
    p.add_argument("--skip-ranking", action="store_true")
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "probret-bench-memory"))
    p.add_argument("--keep", action="store_true", help="keep the big indexes")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_bundle", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        print(json.dumps(search_child(Path(a._child), Path(a._bundle), a.reps, not a.no_ann, a.candidates)))
        return
    if a.quick:
        a.videos = a.videos or 20_000
        a.rank_videos = a.rank_videos or 256
        a.reps = min(a.reps, 2)
        a.extra = a.extra if a.extra is not None else ["spem:2000"]
    a.extra = a.extra if a.extra is not None else ["spem:100000"]
    a.videos = a.videos or 1_000_000
    a.rank_videos = a.rank_videos or 4096
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PROBRET_CACHE", str(workdir / "cache"))
    register_bench_backbone(workdir)

    t0 = time.perf_counter()
    res = {"command": " ".join(["bench/memory.py", *(argv if argv is not None else sys.argv[1:])]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "settings": {"D": D, "frames": T, "samples": M, "videos": a.videos, "dtype": a.dtype, "pool": a.pool,
                        "quick": a.quick}}
    say("bytes per video, from the index layout of each head")
    res["layout"] = layout_bench(workdir, a.heads)
    if not a.skip_ranking:
        res["ranking"] = {}
        world = Path(a.world)
        if (world / "test.csv").is_file():
            say("float16 vs float32: the demo model on the procedural test split")
            res["ranking"]["demo model, procedural test split"] = ranking_demo(workdir, world, 10 if a.quick else None)
        say(f"float16 vs float32: random SPEM d=512, {a.rank_videos} videos")
        res["ranking"][f"random SPEM d=512, {a.rank_videos} videos"] = ranking_random(workdir, a.rank_videos, 64)
    if not a.skip_big:
        res["big"] = big_bench(a, workdir, res["layout"])
    finish(res, t0, a.out, print_tables)


if __name__ == "__main__":
    main()
