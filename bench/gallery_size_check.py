"""Does the gallery's size decide the world check? Heads scored on galleries of growing size drawn
from a *diagnostic* world, never from the protocol's test split (issue 11 diagnostic).

    python bench/gallery_size_check.py                       # heads at init, quality v2's backbone
    python bench/gallery_size_check.py --finetune --methods meanp,xpool,spem --seed 0 --out results.json
    python bench/gallery_size_check.py --finished-report bench/results/quality/v2/setting9/results.json

Why: in quality protocol v2 setting 9 the world check (X-Pool - meanP R@1 on partial queries)
read +17.8 points on the 300 validation queries (mean of the five seeds' fine-tuned runs) but
+4.3 [-1.9, 11.0] on the 1,000 test queries. Validation and test are dealt out by the same rule
(train/world/benchmark.py), so they differ in their size, which is also the gallery's size, and
by chance. This script separates the two without reading the test split:

* it generates a second world from the protocol's world settings with another seed and almost
  every video in its validation split (``--videos``, default 2,000: 1,800 validation videos), so
  galleries of 100 to 1,800 videos come from one distribution the protocol's own world never
  drew (quality_v2.ensure_world; from setting 10 on, the same world holds the protocol's
  calibration gallery, which is fitted on, never tested on);
* it scores each method on the whole split once, either freshly built (at init) or fine-tuned
  with the protocol's own fine-tuning schedule from the shared backbone (``--finetune``), and
* for each gallery size it draws ``--draws`` random galleries (videos with their own query,
  match sets restricted to the gallery, as the protocol computes them over a whole split) and
  reports every method's R@1 per query kind and the paired X-Pool - meanP difference;
* at gallery 1,000 it sorts each method's top-1 of the partial queries: a match, a look-alike
  (an actor with the query's shape and colour) that differs in motion or size, or other.

It reads no test query of the protocol's world, so it may guide a new setting. The diagnostic
world lives under bench/results/quality/v2/diag-world-<key>/ (regenerated from its key, not
committed, like the protocol's world).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_stats as qs  # noqa: E402
from common import cpu_flags, machine, say, write_results  # noqa: E402

V2 = Path(__file__).resolve().parent / "results" / "quality" / "v2"
DEFAULT_OUT = V2 / "diagnostics" / "gallery_size_at_init.json"  # pass --out per setting
SIZES = (100, 300, 1000)
#: almost every video in the validation split, so one world gives galleries of up to 1,800 videos
DIAGNOSTIC_SPLITS = (0.05, 0.9, 0.05)


def _models(protocol: dict, backbone_file: Path, methods: list[str], finetune: bool, seed: int, world: Path):
    """(method, model) pairs: heads freshly built on the backbone, or fine-tuned by the protocol."""
    import torch

    from probret.train.config import ModelConfig
    from probret.train.methods import create_head
    from probret.train.model import RetrievalModel

    b = protocol["backbone"]
    if finetune:
        import quality_finetune as qf

        scratch = Path(tempfile.mkdtemp(prefix="probret-gallery-check-"))
        for m in methods:
            job = {"method": m, "seed": seed, "world": str(world), "dir": str(scratch / m),
                   "backbone_file": str(backbone_file)}
            say(f"fine-tuning {m} (seed {seed}) with the protocol's schedule")
            model, _, _ = qf._train(protocol, job, protocol["finetune"])
            yield m, model.eval()
        return
    model = RetrievalModel.from_config(ModelConfig(backbone=b["name"], pretrained=str(backbone_file),
                                                   method="meanp", num_frames=b["num_frames"])).eval()
    for m in methods:
        torch.manual_seed(seed)
        model.head = create_head(m, embed_dim=model.backbone.embed_dim, num_frames=b["num_frames"]).eval()
        yield m, model


def score_all(protocol: dict, backbone_file: Path, methods: list[str], finetune: bool, seed: int,
              train_world: Path, diag_world: Path):
    """Each method's (queries, videos) scores on the diagnostic world's validation split."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from probret.train.datasets import load_split
    from probret.train.evaluate import encode_texts, encode_videos
    from probret.train.world import load_world

    split = load_split("procedural", str(diag_world), "val")
    kinds = qs.query_kinds(load_world(diag_world), split)
    sims, cpu, encoded = {}, torch.device("cpu"), None
    for m, model in _models(protocol, backbone_file, methods, finetune, seed, train_world):
        with torch.no_grad():
            if finetune or encoded is None:  # heads at init share one backbone: encode it once
                encoded = (encode_texts(model, split.texts, batch_size=64, device=cpu),
                           encode_videos(model, split, batch_size=64, num_workers=0, device=cpu, progress=False)[0])
            sims[m] = model.score_blocks(*encoded, block=256, seed=0).scores.numpy()
        say(f"{m}: scored {sims[m].shape[0]} queries x {sims[m].shape[1]} videos")
    return sims, split, kinds


def sub_gallery(split, keep: np.ndarray):
    """Query rows of the videos in ``keep`` and their match sets restricted to ``keep``, renumbered."""
    remap = np.full(len(split.videos), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    rows = np.flatnonzero(remap[split.text_video_index] >= 0)
    relevant = [[int(remap[j]) for j in split.relevant[i] if remap[j] >= 0] for i in rows]
    return rows, relevant


def by_gallery_size(sims: dict, split, kinds: np.ndarray, sizes, draws: int, seed: int) -> dict:
    """Mean (and spread over draws) R@1 per method and kind, and X-Pool - meanP, per gallery size."""
    rng = np.random.default_rng(seed)
    n = len(split.videos)
    out = {}
    for size in [s for s in sizes if s < n] + [n]:
        per = {m: {k: [] for k in ("all",) + qs.KINDS} for m in sims}
        for _ in range(draws if size < n else 1):
            keep = np.sort(rng.choice(n, size=size, replace=False))
            rows, relevant = sub_gallery(split, keep)
            for m, s in sims.items():
                hit = qs.per_query(s[np.ix_(rows, keep)], relevant)["hit1"]
                for k in per[m]:
                    per[m][k].append(100 * hit[qs.kind_mask(kinds[rows], k)].mean())
        row = {m: {k: round(float(np.mean(v)), 1) for k, v in d.items()} for m, d in per.items()}
        if "xpool" in per and "meanp" in per:
            diff = {k: np.asarray(per["xpool"][k]) - np.asarray(per["meanp"][k]) for k in per["meanp"]}
            row["xpool - meanp"] = {k: round(float(v.mean()), 1) for k, v in diff.items()}
            row["xpool - meanp, std over draws"] = {k: round(float(v.std()), 1) for k, v in diff.items()}
        out[str(size)] = row
        say(f"gallery {size}: " + "; ".join(f"{m} {r['partial']}" for m, r in row.items()) + " (partial R@1)")
    return out


def _look_alike(video: dict, event: dict) -> str | None:
    """How ``video`` differs from a partial query's ``event`` when one of its acting objects has the
    event's shape and colour: "motion", "size", "size and motion", "nothing"; None if none does."""
    for e in video["events"]:
        o = video["objects"][e["actor"]]
        if o["shape"] == event["shape"] and o["color"] == event.get("color", o["color"]):
            size = event.get("size") in (None, o["size"])
            motion = e["motion"] == event.get("motion")
            return {(True, True): "nothing", (True, False): "motion", (False, True): "size"}.get((size, motion),
                                                                                                 "size and motion")
    return None


def partial_failures(sims: dict, split, kinds: np.ndarray, world: dict, size: int, draws: int, seed: int) -> dict:
    """For partial queries in galleries of ``size``: how often each method's top-1 is a match, a
    look-alike (an actor of the query's shape and colour) differing in motion / size, or other;
    and how many look-alikes outside the match set a gallery holds per query."""
    rng = np.random.default_rng(seed)
    vids = split.video_ids
    counts = {m: {} for m in sims}
    crowd = []
    for _ in range(draws):
        keep = np.sort(rng.choice(len(vids), size=min(size, len(vids)), replace=False))
        rows, relevant = sub_gallery(split, keep)
        for qi, (r, rel) in enumerate(zip(rows, relevant)):
            if kinds[r] != "partial":
                continue
            query = world["videos"][vids[split.text_video_index[r]]]
            event = world["captions"][str(query["eval_sen_id"])]["semantics"]["events"][0]
            inside = set(rel)
            crowd.append(sum(1 for j, c in enumerate(keep) if j not in inside
                             and _look_alike(world["videos"][vids[c]], event) is not None))
            for m, s in sims.items():
                top = int(s[r, keep].argmax())
                differs = None if top in inside else _look_alike(world["videos"][vids[keep[top]]], event)
                what = ("match" if top in inside else "other" if differs is None
                        else f"look-alike, differs in {differs}")
                counts[m][what] = counts[m].get(what, 0) + 1
    n = max(1, len(crowd))
    return {"gallery": size, "draws": draws, "partial_queries": len(crowd),
            "look_alikes_per_query": round(float(np.mean(crowd)), 1) if crowd else None,
            "top1": {m: {k: round(v / n, 3) for k, v in sorted(c.items())} for m, c in counts.items()}}


def finished_runs_gap(results_file: Path, world_dir: Path, pairs=(("xpool", "meanp"), ("spem", "meanp"),
                                                               ("tmass", "meanp"))) -> dict:
    """The protocol's finished runs, read back from its report (results.json): paired R@1
    differences per kind on validation and on test, and how often a partial query's match set
    holds a one-event video. Descriptive: these numbers are already reported and decide nothing."""
    from probret.train.datasets import load_split
    from probret.train.world import load_world

    if not results_file.is_file():
        raise SystemExit(f"--finished-report {results_file}: no such report (bench/quality_v2.py writes results.json)")
    runs = json.loads(results_file.read_text())["runs"]
    pairs = [(a, b) for a, b in pairs if any(r["method"] == a for r in runs.values())
             and any(r["method"] == b for r in runs.values())]
    world = load_world(world_dir)
    out = {}
    for split_name in ("val", "test"):
        split = load_split("procedural", str(world_dir), split_name)
        kinds = qs.query_kinds(world, split)
        vids = split.video_ids
        single = np.asarray([any(len(world["videos"][vids[j]]["events"]) == 1 for j in rel) for rel in split.relevant])
        part = kinds == "partial"
        row = {"partial_with_one_event_match": round(float(single[part].mean()), 3),
               "partial_mean_match_set": round(float(np.mean([len(split.relevant[i]) for i in np.flatnonzero(part)])), 2)}
        for a, b in pairs:
            seeds = sorted({r["seed"] for r in runs.values() if r["method"] == a})
            diff = {}
            for k in ("all",) + qs.KINDS:
                m = qs.kind_mask(kinds, k)
                d = [100 * (np.asarray(runs[f"{a}-s{s}"]["queries"][split_name]["hit1"])[m].mean()
                            - np.asarray(runs[f"{b}-s{s}"]["queries"][split_name]["hit1"])[m].mean()) for s in seeds]
                diff[k] = {"mean": round(float(np.mean(d)), 1), "per_seed": [round(float(x), 1) for x in d]}
            row[f"{a} - {b}"] = diff
        out[split_name] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", type=Path, default=None, help="default: bench/protocols/quality_v2.json")
    p.add_argument("--backbone-file", type=Path, default=None, help="default: the protocol's shared backbone")
    p.add_argument("--methods", default="meanp,xpool,spem,tmass", help="comma-separated (default: %(default)s)")
    p.add_argument("--finetune", action="store_true", help="fine-tune each method with the protocol's schedule "
                   "(about 8 CPU-min each) instead of scoring its head at init")
    p.add_argument("--seed", type=int, default=0, help="head init / fine-tuning seed (default: 0)")
    p.add_argument("--videos", type=int, default=2000, help="diagnostic world size (default: %(default)s, the "
                   "protocol's calibration world)")
    p.add_argument("--world-seed", type=int, default=2027, help="diagnostic world seed (default: %(default)s)")
    p.add_argument("--draws", type=int, default=20, help="random galleries per size (default: %(default)s)")
    p.add_argument("--finished-report", type=Path, default=None, help="a finished protocol report (results.json) "
                   "whose validation and test paired differences to add (descriptive; they decide nothing)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    import quality_v2 as q2

    from probret.train.world import load_world

    protocol = json.loads((a.protocol or q2.PROTOCOL).read_text())
    out_dir = q2.REPO / protocol["out"]
    train_world = q2.ensure_world(protocol, out_dir)
    diag = q2.ensure_world(protocol, out_dir, prefix="diag-world", videos=a.videos, seed=a.world_seed,
                           splits=list(DIAGNOSTIC_SPLITS))
    backbone_file = a.backbone_file or q2.shared_backbone_file(protocol, out_dir)
    methods = [m for m in a.methods.split(",") if m]
    sims, split, kinds = score_all(protocol, backbone_file, methods, a.finetune, a.seed, train_world, diag)
    res = {"machine": machine(), "cpu_flags": cpu_flags(), "backbone_file": str(backbone_file),
           "diagnostic_world": str(diag), "world_seed": a.world_seed, "split": "val", "queries": len(split.texts),
           "queries_by_kind": {k: int((kinds == k).sum()) for k in qs.KINDS},
           "models": "fine-tuned (protocol schedule)" if a.finetune else "heads at init", "seed": a.seed,
           "draws": a.draws, "r1_by_gallery_size": by_gallery_size(sims, split, kinds, SIZES, a.draws, 0),
           "partial_top1_at_1000": partial_failures(sims, split, kinds, load_world(diag), 1000, 5, 1),
           **({"finished_runs_val_vs_test": finished_runs_gap(a.finished_report, train_world)}
              if a.finished_report else {})}
    write_results(res, a.out)
    say(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
