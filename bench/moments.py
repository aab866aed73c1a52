"""Moment benchmark: where in a long video does the query happen?

    OMP_NUM_THREADS=1 python bench/moments.py              # ~50 long videos, >= 200 queries
    OMP_NUM_THREADS=1 python bench/moments.py --quick      # smoke run (8 videos)

The world: ``generate_long_world`` (train/world/long.py): 1-5 minute videos at 2 fps, each with
3-6 events at recorded times (an actor appears, holds still 2-6 s, does its motion for 4-10 s,
holds still, leaves), one query per event that names the actor and its motion and never the
background. The model: ``--model`` (default: the shipped demo model, resolved by
export/resolve.py exactly as ``probret search`` does), trained on short procedural clips,
never on these long videos. The folder is indexed by the real pipeline with the index's
``--window`` and searched by the real ``Searcher`` (exact scoring, every video ranked).

Reported, over every event query:
  * video-level R@1 (the top hit is a video that holds a matching event) and R@5;
  * on the right video (the one the query was written for, wherever it ranks): moment R@1 at
    IoU 0.5 and 0.7 (the first moment against the nearest matching event of that video), mean
    IoU, mean |best_time - true centre| (seconds) and how often best_time falls inside a
    matching event;
  * R@N at IoU 0.5: any of the first ``--moments`` moments;
  * the same for the query-free baselines: the whole video, and the middle of the video (a span
    of the world's mean event length centred on the video's middle, best_time = the middle);
  * and for the moment as it was before moments were localised: the best segment's window.
Target (issue 14 §2): moment R@1 at IoU 0.5 beats the better baseline by >= 20 points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, machine, say  # noqa: E402


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def best_iou(span, truths) -> float:
    return max(iou(span, t) for t in truths)


def centre_error(t: float | None, truths) -> float:
    """|t - centre| of the nearest matching event (the middle of the video when ``t`` is None)."""
    return min(abs(t - 0.5 * (a + b)) for a, b in truths)


def inside(t: float | None, truths) -> bool:
    return t is not None and any(a <= t < b for a, b in truths)


def build(args, work: Path):
    """(world dict, queries, searcher, durations): the long world, indexed by the pipeline."""
    from probret.engine.index import IndexReader, IndexSettings, IndexWriter
    from probret.export.resolve import resolve_model
    from probret.engine.pipeline import PipelineOptions, update_index
    from probret.engine.runtime import BundleRuntime
    from probret.engine.search import Searcher
    from probret.train.world import generate_long_world, load_world, moment_queries

    world_dir = work / f"long-world-{args.videos}-s{args.seed}"
    if not (world_dir / "world.json").exists():
        t = time.perf_counter()
        generate_long_world(world_dir, videos=args.videos, seed=args.seed, overwrite=True)
        say(f"world: {args.videos} long videos in {time.perf_counter() - t:.0f} s")
    world = load_world(world_dir)
    queries = moment_queries(world)
    rt = BundleRuntime(resolve_model(args.model, say=say).bundle, device="cpu")
    idx = work / f"index-{rt.bundle.sha256[:12]}-w{args.window:g}-{args.videos}-s{args.seed}"
    with IndexWriter(idx, IndexSettings.for_bundle(rt.bundle, window=args.window)) as w:
        t = time.perf_counter()
        rep = update_index(world_dir / "videos", rt, w, PipelineOptions(progress=False))
        if rep.encoded_videos:
            say(f"indexed {rep.encoded_videos} videos ({rep.encoded_segments} segments) in "
                f"{time.perf_counter() - t:.0f} s")
    reader = IndexReader(idx)
    durations = {v.path: v.duration for v in reader.videos}
    return world, queries, Searcher(rt, reader), durations, rt


def evaluate(queries, results, durations, mean_event: float, n_moments: int) -> dict:
    """Every metric of the module docstring, per method (``moments``, ``window``, baselines)."""
    per: dict[str, dict[str, list]] = {m: {"iou": [], "err": [], "inside": []}
                                       for m in ("moments", "window", "whole_video", "middle")}
    r1, r5, rn = [], [], []
    for q, res in zip(queries, results):
        matches = {m + ".mp4" for m in q["matches"]}
        r1.append(res.hits[0].path in matches)
        r5.append(any(h.path in matches for h in res.hits[:5]))
        path = q["video_id"] + ".mp4"
        truths = [tuple(s) for s in q["moments"][q["video_id"]]]
        hit = next(h for h in res.hits if h.path == path)
        d = durations[path]
        m0 = hit.moments[0]
        spans = {"moments": ((m0.start, m0.end), m0.best_time),
                 "window": ((hit.window_start, hit.window_end), hit.window_best_time),
                 "whole_video": ((0.0, d), 0.5 * d),
                 "middle": ((max(0.0, 0.5 * (d - mean_event)), min(d, 0.5 * (d + mean_event))), 0.5 * d)}
        for name, (span, t) in spans.items():
            per[name]["iou"].append(best_iou(span, truths))
            per[name]["err"].append(centre_error(t, truths))
            per[name]["inside"].append(inside(t, truths))
        rn.append(max(best_iou((m.start, m.end), truths) for m in hit.moments) >= 0.5)
    out = {"queries": len(queries), "video_R@1": 100 * float(np.mean(r1)), "video_R@5": 100 * float(np.mean(r5)),
           f"moment_R@{n_moments}_iou0.5": 100 * float(np.mean(rn))}
    for name, v in per.items():
        ious = np.array(v["iou"])
        out[name] = {"R@1_iou0.5": 100 * float(np.mean(ious >= 0.5)), "R@1_iou0.7": 100 * float(np.mean(ious >= 0.7)),
                     "mean_iou": float(ious.mean()), "mean_abs_best_time_minus_centre_s": float(np.mean(v["err"])),
                     "best_time_inside_%": 100 * float(np.mean(v["inside"]))}
    return out


def with_windows(searcher, results):
    """The moment as it was before moments were localised, on every hit: the best segment's
    window, and its frame closest to the query as best_time."""
    from probret.engine.search import l2_normalize

    r = searcher.reader
    units = searcher.encode_queries([res.query for res in results]).unit
    for res, unit in zip(results, units):
        for h in res.hits:
            pos = int(r.video_offsets[r.video_index(h.path)]) + h.segment
            h.window_start, h.window_end = float(r.seg_start[pos]), float(r.seg_end[pos])
            f = r.gather(["frame_features"], np.array([pos]))["frame_features"][0]
            h.window_best_time = float(r.timestamps(pos)[int(np.argmax(l2_normalize(f) @ unit))])
    return results


def print_tables(res: dict) -> None:
    e = res["eval"]
    print(f"\nmoments: {e['queries']} event queries over {res['videos']} long videos "
          f"(window {res['window']:g} s, model {res['model']})")
    print(f"video-level R@1 {e['video_R@1']:.1f}   R@5 {e['video_R@5']:.1f}")
    print(f"{'on the right video':22s} {'R@1 IoU.5':>10s} {'R@1 IoU.7':>10s} {'mean IoU':>9s} "
          f"{'|best-centre| s':>16s} {'best in event %':>16s}")
    for name in ("moments", "window", "whole_video", "middle"):
        m = e[name]
        print(f"{name:22s} {m['R@1_iou0.5']:10.1f} {m['R@1_iou0.7']:10.1f} {m['mean_iou']:9.3f} "
              f"{m['mean_abs_best_time_minus_centre_s']:16.1f} {m['best_time_inside_%']:16.1f}")
    k = res["moments"]
    print(f"moments: R@{k} at IoU 0.5 (any of the first {k}) {e[f'moment_R@{k}_iou0.5']:.1f}")
    print(f"machine: {res['machine']['cpu']} ({res['machine']['nproc']} cores)")


def targets(res: dict) -> list[dict]:
    e = res["eval"]
    base = max(e["whole_video"]["R@1_iou0.5"], e["middle"]["R@1_iou0.5"])
    gain = e["moments"]["R@1_iou0.5"] - base
    return [{"target": "moment R@1 at IoU 0.5 beats the query-free baseline by >= 20 points",
             "measured": f"{e['moments']['R@1_iou0.5']:.1f} vs {base:.1f} (+{gain:.1f})",
             "status": "met" if gain >= 20 else "NOT met"}]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=50)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--window", type=float, default=30.0, help="the index's segment window (s)")
    p.add_argument("--moments", type=int, default=3, help="moments per hit (R@N at IoU 0.5)")
    p.add_argument("--model", default=None, help="bundle / checkpoint / NAME:TAG (default: the demo model)")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "probret-bench" / "moments"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="results JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.videos = 8
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    world, queries, searcher, durations, rt = build(args, work)
    t = time.perf_counter()
    results = searcher.search([q["text"] for q in queries], top_k=len(durations), moments=args.moments)
    search_s = time.perf_counter() - t
    lengths = [e - s for q in queries for s, e in [(q["start"], q["end"])]]
    res = {"machine": machine(), "videos": len(durations), "window": args.window, "moments": args.moments,
           "model": str(rt.bundle.path), "search_seconds": search_s,
           "eval": evaluate(queries, with_windows(searcher, results), durations, float(np.mean(lengths)),
                            args.moments),
           "command": " ".join(["python", "bench/moments.py", *(argv if argv is not None else sys.argv[1:])])}
    finish(res, t0, args.out, print_tables, targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
