"""ANN first-stage benchmark: recall of the candidates against exact scoring, latency, memory.

    python bench/ann.py --n 1000000 --d 64 --factories "HNSW32;IVF1024,PQ16" --ef-search 128,1024 --nprobe 16,64,256 --train 50000 --threads 2 --out bench/results/ann/ann-1M.json
    python bench/ann.py --n 10000000 --d 64 --factories "IVF4096,PQ16" --nprobe 16,64,256 --train 100000 --threads 2 --out bench/results/ann/ann-10M.json

Vectors: unit-norm samples of a Gaussian mixture (``--clusters`` random unit centres, isotropic
noise of norm about ``--spread`` around each, then normalised), the shape of real CLIP video
embeddings (clustered, not uniform on the sphere); ``--clusters 0`` gives pure isotropic
vectors (the worst case for every ANN index: no structure to exploit). Queries are fresh samples
of the same mixture. Everything is generated in chunks of ``--chunk`` vectors from seeded
generators, so 10M vectors never sit in RAM as float32 unless the index itself stores them.

Measured per factory (``auto`` = engine/ann.py's choice for n and d):
* recall ``R@k in C``: the fraction of the exact top-``k`` (by inner product, computed exactly
  in chunks) found among the ``C`` candidates of a search for C results, for C in
  ``--candidates`` (the search re-ranks the candidates with the full head, so C = 1000 is what
  matters there); HNSW's efSearch is the swept value, not raised to C (faiss does not either:
  its recall is set by efSearch, whatever k);
* latency: one query at a time (median / p95 ms over ``--latency-queries``) and a batch of all
  queries (ms per query), with ``--threads`` OpenMP threads, at C = max(candidates), for each
  search parameter of ``--ef-search`` (HNSW) / ``--nprobe`` (IVF) (comma lists sweep);
* build seconds (training + adding), serialized index size, peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np



def rss_gib() -> float:
    """Current resident set size (GiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Data:
    def __init__(self, n: int, d: int, clusters: int, spread: float, chunk: int, seed: int):
        self.n, self.d, self.chunk, self.seed, self.spread = n, d, chunk, seed, spread
        rng = np.random.default_rng(seed)
        self.centres = None
        if clusters:
            c = rng.standard_normal((clusters, d)).astype(np.float32)
            self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)

    def _sample(self, rng, m: int) -> np.ndarray:
        x = rng.standard_normal((m, self.d), dtype=np.float32)
        if self.centres is not None:
            x *= self.spread / np.sqrt(self.d)
            x += self.centres[rng.integers(0, len(self.centres), m)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self):
        for k, start in enumerate(range(0, self.n, self.chunk)):
            m = min(self.chunk, self.n - start)
            yield start, self._sample(np.random.default_rng([self.seed, 1, k]), m)

    def queries(self, q: int) -> np.ndarray:
        return self._sample(np.random.default_rng([self.seed, 2]), q)

    def train_sample(self, m: int) -> np.ndarray:
        return self._sample(np.random.default_rng([self.seed, 3]), m)


def exact_topk(data: Data, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k ids by inner product over all chunks, and the seconds it took (batched)."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    secs = 0.0
    for start, x in data.chunks():
        t = time.perf_counter()
        s = q @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, 1)
        cs = np.concatenate([best_s, ps], 1)
        ci = np.concatenate([best_i, part + start], 1)
        o = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
        secs += time.perf_counter() - t
    return best_i, secs


def run_factory(faiss, factory: str, data: Data, q: np.ndarray, gt: np.ndarray, args) -> dict:
    from probret.engine.ann import build_index, choose_factory, set_search_params

    want = choose_factory(data.n, data.d, memory_budget=int(args.memory_budget * 2**30)) if factory == "auto" else factory
    rss0 = rss_gib()
    t0 = time.perf_counter()
    probe = faiss.index_factory(data.d, want, faiss.METRIC_INNER_PRODUCT)
    sample = None if probe.is_trained else data.train_sample(args.train)
    del probe
    index = build_index(want, sample, data.d, train_size=args.train)
    t_train = time.perf_counter() - t0
    for start, x in data.chunks():
        index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
    t_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, f"{tmp}/i.faiss")
        size = os.path.getsize(f"{tmp}/i.faiss")
    out = {"factory": want, "asked": factory, "build_s": round(t_build, 1), "train_s": round(t_train, 1),
           "index_bytes": size, "index_gib": round(size / 2**30, 3), "rss_growth_gib": round(rss_gib() - rss0, 2),
           "search": []}
    sweep = args.ef_search if "HNSW" in want else args.nprobe if "IVF" in want else [0]
    for p in sweep:
        set_search_params(index, nprobe=p, ef_search=p)
        r = search_stats(index, q, gt, args)
        r["param"] = ("efSearch" if "HNSW" in want else "nprobe" if "IVF" in want else None, p)
        out["search"].append(r)
        print(json.dumps({"factory": want, **r}), flush=True)
    print(json.dumps({k: v for k, v in out.items() if k != "search"}), flush=True)
    del index
    return out


def search_stats(index, q: np.ndarray, gt: np.ndarray, args) -> dict:
    """Recall of the exact top-k among the first C results of a search for C results, for each C;
    latency of searches for max(C) results."""
    cmax = max(args.candidates)
    rec = {}
    for c in args.candidates:
        t = time.perf_counter()
        _, ids = index.search(q, c)
        batch_ms = (time.perf_counter() - t) * 1e3 / len(q)
        hits = [len(set(gt[i, :args.k]) & set(ids[i])) for i in range(len(q))]
        rec[f"R@{args.k} in {c}"] = round(float(np.mean(hits)) / args.k, 4)
    lat = []
    for i in range(min(args.latency_queries, len(q))):
        t = time.perf_counter()
        index.search(q[i:i + 1], cmax)
        lat.append((time.perf_counter() - t) * 1e3)
    return {"recall": rec, "latency_ms_p50": round(float(np.median(lat)), 3),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 3), "batch_ms_per_query": round(batch_ms, 4)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--factories", default="auto", help="';'-separated faiss factory strings; 'auto' = engine/ann.py's "
                    "choice for n and d")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", default="10,100,1000")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=250_000)
    ap.add_argument("--train", type=int, default=200_000, help="training vectors for IVF / PQ")
    ap.add_argument("--nprobe", default="64", help="IVF cells probed; a comma list sweeps")
    ap.add_argument("--ef-search", default="128", help="HNSW efSearch; a comma list sweeps")
    ap.add_argument("--memory-budget", type=float, default=8.0, help="GiB: the auto choice's limit for raw vectors")
    ap.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: faiss's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.candidates = [int(c) for c in args.candidates.split(",")]
    args.nprobe = [int(c) for c in args.nprobe.split(",")]
    args.ef_search = [int(c) for c in args.ef_search.split(",")]
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    data = Data(args.n, args.d, args.clusters, args.spread, args.chunk, args.seed)
    q = data.queries(args.queries)
    gt, exact_s = exact_topk(data, q, args.k)
    print(f"exact top-{args.k} of {len(q)} queries over {args.n} x {args.d}: {exact_s:.1f} s "
          f"({exact_s * 1e3 / len(q):.2f} ms/query batched, numpy)", flush=True)
    result = {"n": args.n, "d": args.d, "clusters": args.clusters, "spread": args.spread, "queries": len(q), "k": args.k,
              "threads": faiss.omp_get_max_threads(), "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "faiss": faiss.__version__, "exact_ms_per_query_batched": round(exact_s * 1e3 / len(q), 3),
              "exact_float32_gib": round(args.n * args.d * 4 / 2**30, 2), "results": []}
    for f in factories:
        result["results"].append(run_factory(faiss, f, data, q, gt, args))
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    print(f"peak RSS {result['peak_rss_gib']} GiB", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
