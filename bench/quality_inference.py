"""Inference-time ablation of the probabilistic heads on the checkpoints of bench/quality.py.

    python bench/quality_inference.py [--runs bench/results/quality/runs] [--split val]

For every SPEM and T-MASS run (best-on-validation checkpoint), re-evaluates the VALIDATION split
(the default; a scoring rule is a choice, and choices are made on validation) with the scoring
rule and the number of samples M changed -- no retraining, so the only difference between rows is
how the trained distributions are turned into a score:

  best_of_m  max over M paired samples (the papers' rule, our default)
  expected   mean of the M sample similarities (SPEM only)
  mean       the distribution means alone (no sampling; T-MASS then ranks like X-Pool)

Prints a table (mean +- std over seeds, ddof=1) with t2v R@1 against the match sets and the AUROC
of the head's top-1 uncertainty for "top-1 not in the match set", and writes
inference_ablation_<split>.json next to the runs.
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
    p.add_argument("--split", default="val", choices=["val", "test"],
                   help="val to choose a rule; test only to report the rule chosen on val")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    from probret.train.checkpoint import load_checkpoint
    from probret.train.datasets import load_split
    from probret.engine.uncertainty import auroc, top1_correct
    from probret.train.evaluate import evaluate

    data = load_split("procedural", args.world, args.split)
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
            res = evaluate(model, data, seed=0)
            metrics = res.metrics
            r1 = metrics.get("t2v_semantic", metrics["t2v"])["R1"]
            wrong = ~top1_correct(res.sims, relevant=data.relevant, text_video_index=res.text_video_index)
            top = res.sims.argmax(1)
            unc = res.uncertainty[np.arange(len(top)), top] if res.uncertainty is not None else None
            rows.setdefault((method, rule, m), []).append(
                (r1, metrics["v2t"]["R1"], auroc(unc, wrong) if unc is not None else float("nan")))
    out = {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in rows.items()}
    Path(args.runs, "..", f"inference_ablation_{args.split}.json").resolve().write_text(json.dumps(out, indent=2) + "\n")
    print(f"{args.split} split\n| method | scoring | M | t2v R@1 | v2t R@1 | AUROC(unc) | seeds |\n|---|---|---|---|---|---|---|")
    for (method, rule, m), vals in rows.items():
        a = np.array(vals)
        sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(3)
        print(f"| {method} | {rule} | {m if rule != 'mean' else '-'} | {a[:, 0].mean():.1f} ± {sd[0]:.1f} "
              f"| {a[:, 1].mean():.1f} ± {sd[1]:.1f} | {a[:, 2].mean():.3f} | {len(vals)} |")


if __name__ == "__main__":
    main()
