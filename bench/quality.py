"""Quality benchmark: every method on the same procedural world, same budget, several seeds.

    python bench/quality.py                        # every registered method (~30 min on 2 CPU cores for five)
    python bench/quality.py --quick                # smoke run (a minute)

Protocol (written so that no number is tuned on the split it is reported on):
  * one procedural world (fixed world seed) with train / val / test splits;
  * each method is trained from scratch on the same tiny CLIP for the same number of optimizer
    steps, for each seed; the checkpoint with the best validation t2v R@1 is selected;
  * that checkpoint is evaluated once on the test split: R@1/5/10, MdR, MnR in both directions,
    reported as mean +- std over seeds;
  * uncertainty vs error: test queries are split into equal-count bins by the uncertainty the
    model predicts for its own top-1 answer (what a deployed system can see; the ground truth is
    never used to pick the pair), and t2v R@1 is reported per bin.

Outputs in --out: results.json (every run), summary.md (tables), quality_methods.png and
quality_uncertainty.png. Runs go through ``probret.train.trainer.train`` exactly like
``probret-train``; two runs share the machine at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

def run_one(job: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(job["threads"])
    from probret.train.checkpoint import load_checkpoint
    from probret.train.config import ExperimentConfig, apply_overrides
    from probret.train.datasets import load_split
    from probret.train.evaluate import evaluate
    from probret.train.trainer import train

    overrides = [
        f"model.backbone={job['backbone']}", "model.pretrained=null", f"model.method={job['method']}",
        f"model.num_frames={job['frames']}", "data.dataset=procedural", f"data.root={job['world']}",
        "data.num_workers=0", f"train.out={job['out']}", f"train.seed={job['seed']}",
        f"train.batch_size={job['batch_size']}", f"train.max_steps={job['steps']}", "train.epochs=1000",
        f"train.eval_every={job['eval_every']}", f"train.lr_backbone={job['lr_backbone']}",
        f"train.lr_head={job['lr_head']}", "train.weight_decay=0.2", "train.warmup_ratio=0.1",
        "train.log_every=25", "train.eval_batch_size=64",
    ] + [f"model.head.{k}={json.dumps(v)}" for k, v in job.get("head", {}).items()]
    config = apply_overrides(ExperimentConfig(), overrides)
    started = time.time()
    result = train(config, progress=False)
    train_seconds = time.time() - started
    model, ckpt = load_checkpoint(Path(job["out"]) / "best")
    test = load_split("procedural", job["world"], "test")
    evaluation = evaluate(model, test, block=256, seed=0)
    bins = uncertainty_bins(evaluation, job["bins"])
    return {"method": job["method"], "seed": job["seed"], "steps": result.steps, "best_val_step": ckpt.get("step"),
            "val": result.best.get("metrics"), "test": evaluation.metrics, "uncertainty_bins": bins,
            "train_seconds": round(train_seconds, 1)}


def uncertainty_bins(evaluation, n_bins: int) -> list[dict] | None:
    if evaluation.uncertainty is None:
        return None
    sims, unc, index = evaluation.sims, evaluation.uncertainty, evaluation.text_video_index
    top1 = sims.argmax(1)
    query_unc = unc[np.arange(len(top1)), top1]
    hit = top1 == index
    order = np.argsort(query_unc, kind="stable")
    out = []
    for b, chunk in enumerate(np.array_split(order, n_bins)):
        out.append({"bin": b, "queries": int(len(chunk)), "uncertainty_mean": float(query_unc[chunk].mean()),
                    "R1": float(100.0 * hit[chunk].mean())})
    return out


def summarise(runs: list[dict]) -> dict:
    table = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        entry = {"seeds": [r["seed"] for r in rs]}
        for split in ("test", "val"):
            for direction in ("t2v", "v2t"):
                for key in ("R1", "R5", "R10", "MdR", "MnR"):
                    vals = [r[split][direction][key] for r in rs if r.get(split)]
                    if vals:
                        entry[f"{split}.{direction}.{key}"] = (float(np.mean(vals)), float(np.std(vals)))
        bins = [r["uncertainty_bins"] for r in rs if r["uncertainty_bins"]]
        if bins:
            entry["uncertainty_R1_per_bin"] = [float(np.mean([b[i]["R1"] for b in bins])) for i in range(len(bins[0]))]
        table[method] = entry
    return table


def markdown(summary: dict, args) -> str:
    lines = [f"Test split, best-on-validation checkpoint, mean ± std over seeds {args.seeds}.", "",
             "| method | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | t2v MnR | v2t R@1 | v2t R@5 | v2t R@10 | v2t MdR | v2t MnR | val t2v R@1 |",
             "|---|" + "---|" * 11]
    for method, e in summary.items():
        cells = [f"{e[f'test.{d}.{k}'][0]:.1f} ± {e[f'test.{d}.{k}'][1]:.1f}" for d in ("t2v", "v2t")
                 for k in ("R1", "R5", "R10", "MdR", "MnR")]
        cells.append(f"{e['val.t2v.R1'][0]:.1f}" if "val.t2v.R1" in e else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Uncertainty vs error: test queries in {args.bins} equal-count bins by the predicted uncertainty "
              "of their top-1 pair (low -> high); t2v R@1 per bin, mean over seeds.", "",
              "| method | " + " | ".join(f"bin {i}" for i in range(args.bins)) + " |", "|---|" + "---|" * args.bins]
    for method, e in summary.items():
        if "uncertainty_R1_per_bin" in e:
            lines.append(f"| {method} | " + " | ".join(f"{v:.1f}" for v in e["uncertainty_R1_per_bin"]) + " |")
    return "\n".join(lines) + "\n"


def plots(summary: dict, out: Path, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, direction in zip(axes, ("t2v", "v2t")):
        x = np.arange(len(methods))
        for offset, key in zip((-0.25, 0, 0.25), ("R1", "R5", "R10")):
            means = [summary[m][f"test.{direction}.{key}"][0] for m in methods]
            stds = [summary[m][f"test.{direction}.{key}"][1] for m in methods]
            ax.bar(x + offset, means, 0.25, yerr=stds, capsize=2, label=key.replace("R", "R@"))
        ax.set_xticks(x, methods)
        ax.set_ylabel("recall (%)")
        ax.set_title(f"{'text→video' if direction == 't2v' else 'video→text'} (test, mean ± std)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality_methods.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m in methods:
        if "uncertainty_R1_per_bin" in summary[m]:
            ax.plot(range(bins), summary[m]["uncertainty_R1_per_bin"], marker="o", label=m)
    ax.set_xlabel("uncertainty bin of the top-1 pair (low → high)")
    ax.set_ylabel("t2v R@1 (%)")
    ax.set_title("R@1 per predicted-uncertainty bin (test)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality_uncertainty.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/quality")
    p.add_argument("--world", default=None, help="existing procedural world (default: generate into OUT/world)")
    p.add_argument("--videos", type=int, default=500)
    p.add_argument("--world-seed", type=int, default=2025)
    p.add_argument("--difficulty", default="0.25")
    p.add_argument("--resolution", default="64x64")
    from probret.train.methods import list_methods

    p.add_argument("--methods", nargs="+", default=list_methods(), choices=list_methods(),
                   help="registered methods to train and compare (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--backbone", default="test-vit-mini")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr-backbone", type=float, default=3e-4)
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--head", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="head hyperparameter for one method, e.g. spem.video_scale=0.5 (for ablations)")
    p.add_argument("--bins", type=int, default=4)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.steps, args.eval_every, args.seeds, args.backbone = 60, 20, 10, [0], "test-vit-tiny"
        args.resolution, args.frames, args.batch_size = "32x32", 4, 8

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = Path(args.world) if args.world else out / "world"
    if not (world / "world.json").exists():
        from probret.train.world import generate_world

        w, h = (int(v) for v in args.resolution.split("x"))
        print(f"generating world: {args.videos} videos ({args.difficulty}) in {world}", file=sys.stderr)
        generate_world(world, videos=args.videos, seed=args.world_seed, resolution=(w, h), difficulty=args.difficulty)

    head_overrides: dict[str, dict] = {}
    for item in args.head:
        key, value = item.split("=", 1)
        method, name = key.split(".", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        head_overrides.setdefault(method, {})[name] = value

    jobs = [dict(method=m, seed=s, world=str(world), out=str(out / "runs" / f"{m}-seed{s}"), backbone=args.backbone,
                 frames=args.frames, steps=args.steps, eval_every=args.eval_every, batch_size=args.batch_size,
                 lr_backbone=args.lr_backbone, lr_head=args.lr_head, head=head_overrides.get(m, {}),
                 bins=args.bins, threads=max(1, (os.cpu_count() or 2) // args.parallel))
            for s in args.seeds for m in args.methods]
    for job in jobs:
        if Path(job["out"]).exists():
            import shutil

            shutil.rmtree(job["out"])
    started = time.time()
    runs = []
    with ProcessPoolExecutor(max_workers=args.parallel) as pool:
        for run in pool.map(run_one, jobs):
            runs.append(run)
            print(f"{run['method']:6s} seed {run['seed']}: test t2v R@1 {run['test']['t2v']['R1']:.1f}  "
                  f"v2t R@1 {run['test']['v2t']['R1']:.1f}  ({run['train_seconds']:.0f} s)", file=sys.stderr)
    summary = summarise(runs)
    settings = {k: v for k, v in vars(args).items()}
    (out / "results.json").write_text(json.dumps({"settings": settings, "runs": runs, "summary": summary,
                                                  "seconds": round(time.time() - started, 1)}, indent=2) + "\n")
    md = markdown(summary, args)
    (out / "summary.md").write_text(md)
    plots(summary, out, args.bins)
    print(md)
    print(f"total {time.time() - started:.0f} s; results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
