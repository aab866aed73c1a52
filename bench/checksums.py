"""What the per-row checksums of the index cost a search (issue 12 §3 and §5: "must not slow
search measurably").

    OMP_NUM_THREADS=1 python bench/checksums.py --videos 10000 --out bench/results/checksums/checksums.json
    python bench/checksums.py --videos 1000 --reps 3                                  # quick

One run, side by side: a random-weight d=512 SPEM bundle (bench/search.py's ``bench-d512``, T'=12,
M=20), an index of ``--videos`` videos written by the real IndexWriter with the head's real
video-side outputs (bench/search.py's pool, one segment a video, float32), then alternately,
``--reps`` times each:

* **always**: open ``IndexReader(verify="always")`` and search one query: the CLI's case with
  every row the pair graph reads checked against its CRC32 (once per reader: all of them);
* **changed** (the default): rows are checked only in shard files changed since probret wrote
  them (none here: the cost of the stamp check alone);
* **off**: no checks;
* **warm**: a second query on the "always" reader (nothing left to check: ``probret serve``).

Printed: medians and the ratios to "off", with the machine record.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "probret-bench-search"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from common import cpu_flags, finish, machine, say
    from search import build_index, head_bundle, register_bench_backbone, video_pool

    from probret.engine.index import IndexReader
    from probret.engine.runtime import BundleRuntime
    from probret.engine.search import Searcher

    t0 = time.perf_counter()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    register_bench_backbone(work)
    head = head_bundle(work, "spem")
    rt = BundleRuntime(head["bundle"], device="cpu")
    idx = Path(tempfile.mkdtemp(prefix="probret-crc-", dir=work))
    try:
        build_s = build_index(idx / "index", rt, video_pool(rt, 256), a.videos)
        times = {"always": [], "changed": [], "off": [], "warm": []}
        for _ in range(a.reps):
            for verify in ("always", "changed", "off"):
                t = time.perf_counter()
                with IndexReader(idx / "index", verify=verify) as r:
                    s = Searcher(rt, r, say=lambda m: None)
                    s.search(["a red square moving left"], top_k=10, ann=False)
                    times[verify].append(time.perf_counter() - t)
                    if verify == "always":
                        t = time.perf_counter()
                        s.search(["a blue circle"], top_k=10, ann=False)
                        times["warm"].append(time.perf_counter() - t)
        with IndexReader(idx / "index") as r:
            stored = sum(r.row_bytes(s for s in r.layout if s != "frame_features" and s != "ann").values())
    finally:
        shutil.rmtree(idx, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"videos": a.videos, "build_seconds": build_s, "times": times, "median_seconds": med,
           "ratio_always_over_off": med["always"] / med["off"], "ratio_changed_over_off": med["changed"] / med["off"],
           "bytes_read_per_video": stored, "machine": {**machine(), "cpu_flags": cpu_flags()}}

    def tables(r):
        m = r["median_seconds"]
        print(f"{r['videos']} videos (SPEM d=512, float32), fresh reader + 1 query: every row checked "
              f"{m['always']:.3f} s, default (rows of changed files) {m['changed']:.3f} s, unchecked {m['off']:.3f} s "
              f"-> ratios {r['ratio_always_over_off']:.3f} / {r['ratio_changed_over_off']:.3f}; warm query (all "
              f"checked) {m['warm']:.3f} s; CPU {r['machine']['cpu']}")
    say("done")
    finish(res, t0, a.out, tables)


if __name__ == "__main__":
    main()
