"""How many pre-training steps the shared backbone of quality protocol v2 needs to pass the
encoder gate: train the protocol's backbone (meanP, from scratch) on the protocol's world and,
after each stage, probe its frame features and score meanP against the model-free floor.

    python bench/quality_gate_steps.py --stages 200,400,800 [--backbone test-vit-small] [--out DIR]

Uses the protocol file's world and pre-training settings (only ``steps`` is replaced by the last
stage), one thread, and the trainer's own ``stop_after`` / ``resume`` so every stage continues
the same run (one cosine schedule over the last stage's steps). Prints one line per stage and
writes gate_steps.json. A measurement for choosing the protocol's steps, never a result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_stats as qs  # noqa: E402
import quality_v2 as q2  # noqa: E402
from common import machine, say  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="200,400,800")
    p.add_argument("--backbone", default=None, help="override the protocol's backbone name")
    p.add_argument("--frames", type=int, default=None, help="override the protocol's num_frames")
    p.add_argument("--lr", type=float, default=None, help="override the pre-training learning rates")
    p.add_argument("--out", type=Path, default=Path("/tmp/probret-gate-steps"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from probret.train.checkpoint import load_checkpoint
    from probret.train.config import ExperimentConfig, apply_overrides
    from probret.train.datasets import load_split
    from probret.train.evaluate import evaluate
    from probret.train.trainer import train

    protocol, _ = q2.load_protocol(q2.PROTOCOL, quick=False)
    if args.backbone:
        protocol["backbone"]["name"] = args.backbone
    if args.frames:
        protocol["backbone"]["num_frames"] = args.frames
    if args.lr:
        protocol["pretrain"].update(lr_backbone=args.lr, lr_head=args.lr)
    stages = [int(s) for s in args.stages.split(",")]
    protocol["pretrain"]["steps"] = stages[-1]
    args.out.mkdir(parents=True, exist_ok=True)
    world = q2.ensure_world(protocol, args.out)
    queries = q2.test_queries(world)
    voc = queries["vocabulary"]
    floor = qs.per_query(qs.floor_scores(queries["texts"], queries["records"], list(voc["colors"]),
                                         voc["backgrounds"]), queries["relevant"])["hit1"]
    job = {"method": "meanp", "seed": 0, "world": str(world), "dir": str(args.out / "run")}
    config = apply_overrides(ExperimentConfig(), q2._overrides(protocol, job, protocol["pretrain"]))
    test = load_split("procedural", str(world), "test")
    rows, cpu0 = [], time.process_time()
    for k, stage in enumerate(stages):
        t = time.process_time()
        train(config, resume=k > 0, progress=False, stop_after=stage)
        train_cpu = time.process_time() - t
        model, _ = load_checkpoint(Path(job["dir"]) / "train" / "last")
        probes = q2.encoder_probes(model, world, protocol["gate"]["probe"])
        with torch.no_grad():
            ev = evaluate(model, test, block=256, seed=0)
        hit = qs.per_query(ev.sims, test.relevant)["hit1"]
        kinds = queries["kinds"]
        row = {"steps": stage, "train_cpu_s": round(train_cpu, 1), "probes": probes,
               "meanp_R1": {kd: float(100 * hit[qs.kind_mask(kinds, kd)].mean()) for kd in ("all",) + qs.KINDS},
               "floor_R1": {kd: float(100 * floor[qs.kind_mask(kinds, kd)].mean()) for kd in ("all",) + qs.KINDS}}
        rows.append(row)
        say(f"steps {stage}: train {train_cpu:.0f} CPU s; probes " + ", ".join(
            f"{a} {100 * v['accuracy']:.0f}/{100 * v['majority']:.0f}" for a, v in probes.items())
            + f"; meanP R@1 {row['meanp_R1']['all']:.1f} (full {row['meanp_R1']['full']:.1f}, partial "
              f"{row['meanp_R1']['partial']:.1f}, short {row['meanp_R1']['short']:.1f}) vs floor {row['floor_R1']['all']:.1f}")
    res = {"machine": machine(), "backbone": protocol["backbone"], "pretrain": protocol["pretrain"],
           "world": protocol["world"], "stages": rows, "cpu_s_total": round(time.process_time() - cpu0, 1)}
    (args.out / "gate_steps.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
