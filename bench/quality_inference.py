"""Inference-time ablation of the probabilistic heads on the checkpoints of bench/quality.py.

    python bench/quality_inference.py [--runs bench/results/quality/runs]

For every SPEM and T-MASS run (best-on-validation checkpoint), re-evaluates the test split with
the scoring rule and the number of samples M changed -- no retraining, so the only difference
between rows is how the trained distributions are turned into a score:

  best_of_m  max over M paired samples (the papers' rule, our default)
  expected   mean of the M sample similarities (SPEM only)
  mean       the distribution means alone (no sampling; T-MASS then ranks like X-Pool)

Prints a table (mean +- std over seeds) and writes inference_ablation.json next to the runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SETTINGS = [("mean", 1), ("best_of_m", 1), ("best_of_m", 5), ("best_of_m", 20), ("best_of_m", 50),
            ("expected", 20)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="bench/results/quality/runs")
    p.add_argument("--world", default="bench/results/quality/world")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    from probret.train.checkpoint import load_checkpoint
    from probret.train.datasets import load_split
    from probret.train.evaluate import evaluate

    test = load_split("procedural", args.world, "test")
    rows = {}
    for run in sorted(Path(args.runs).glob("*-seed*")):
        method = run.name.split("-seed")[0]
        if method not in ("spem", "tmass"):
            continue
        model, _ = load_checkpoint(run / "best")
        for rule, m in SETTINGS:
            if rule == "expected" and method != "spem":
                continue
            model.head.config.inference = rule
            model.head.config.num_samples = m
            metrics = evaluate(model, test, seed=0).metrics
            rows.setdefault((method, rule, m), []).append((metrics["t2v"]["R1"], metrics["v2t"]["R1"]))
    out = {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in rows.items()}
    Path(args.runs, "..", "inference_ablation.json").resolve().write_text(json.dumps(out, indent=2) + "\n")
    print("| method | scoring | M | t2v R@1 | v2t R@1 | seeds |\n|---|---|---|---|---|---|")
    for (method, rule, m), vals in rows.items():
        a = np.array(vals)
        print(f"| {method} | {rule} | {m if rule != 'mean' else '-'} | {a[:, 0].mean():.1f} ± {a[:, 0].std():.1f} "
              f"| {a[:, 1].mean():.1f} ± {a[:, 1].std():.1f} | {len(vals)} |")


if __name__ == "__main__":
    main()
