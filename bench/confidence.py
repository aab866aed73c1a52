"""The demo bundle's confidence on held-out data: is the shipped calibrator calibrated where it was not fitted?

    OMP_NUM_THREADS=1 python bench/confidence.py               # 10 test galleries of 100 + the demo world's test
    OMP_NUM_THREADS=1 python bench/confidence.py --quick       # smoke run (2 galleries of 50)

Everything is scored the way ``probret search`` scores it: each gallery is a folder indexed by the
real pipeline (engine.open_folder) with the model resolved as the CLI resolves it (default: the
shipped demo bundle), and every query is a real search with top-k 10. The confidence is what the
search returns (the bundle's stored calibrator, applied by the torch-free engine).

Data (procedural worlds with the demo world's settings, train/demo_model.WORLD_SETTINGS):
  * fit:  the calibration world (export/demo_bundle.CALIBRATION_WORLD, seed 2025), validation split,
          cut into galleries of CALIBRATION_GALLERY videos, exactly what the stored calibrator was
          fitted on. The baselines are fitted here (Platt on the top-1 score alone, Platt on the
          top1-top2 margin alone, on every top-k hit as the stored one); the stored confidence's
          ECE here is an in-sample number, shown as a check that engine scores match the fit's.
  * test: a fresh world (``--seed``, default 2026) whose test split is cut into galleries of the
          same size: neither the model nor any calibrator saw it. Also, unless ``--no-demo-world``,
          the demo world's own test split (seed 2024, one gallery of its 120 videos): the model
          was trained on that world's train split and selected on its val split, never its test.

Reported per data set, for the stored confidence and the two baselines: top-1 ECE (10 equal-width
bins; engine/uncertainty.ece), ECE over all top-k hits, AUROC for "top-1 is not in the match set"
(confidence oriented as certainty), AURC, and R@1 after abstaining on the 20% least confident
queries; the raw signals' AUROC (score, margin, the head's uncertainty) for reference; 95%
bootstrap intervals (2000 resamples of queries) for the stored confidence's top-1 ECE and AUROC;
and its reliability diagram's bins.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_flags, finish, machine, say  # noqa: E402

TOP_K = 10
BOOTSTRAP = 2000


def galleries(root: Path, split: str, size: int | None, work: Path) -> list[dict]:
    """The split cut into galleries of ``size`` consecutive videos (None: one gallery), each a
    folder of hard links (copies where links fail) with its queries and match sets (file names
    inside the gallery)."""
    from probret.train.datasets import load_split

    data = load_split("procedural", root, split)
    n = len(data.videos)
    size = n if size is None else size
    out = []
    for g, lo in enumerate(range(0, n - size + 1, size)):
        folder = work / f"{root.name}-{split}-{g}"
        folder.mkdir(parents=True, exist_ok=True)
        for v in data.videos[lo:lo + size]:
            dst = folder / Path(v.path).name
            if not dst.exists():
                try:
                    os.link(v.path, dst)
                except OSError:
                    shutil.copy(v.path, dst)
        rows = [i for i, j in enumerate(data.text_video_index) if lo <= j < lo + size]
        names = [Path(v.path).name for v in data.videos]
        out.append({"folder": folder, "queries": [data.texts[i] for i in rows],
                    "relevant": [{names[j] for j in data.relevant[i] if lo <= j < lo + size} for i in rows]})
    return out


def search_all(bundle, gals: list[dict], work: Path) -> dict:
    """Every gallery's queries searched; (N_q, K) arrays of score, confidence, uncertainty, label."""
    from probret.engine import open_folder

    rows = {"score": [], "confidence": [], "uncertainty": [], "label": []}
    for g in gals:
        with open_folder(g["folder"], bundle=bundle, index=work / "index" / g["folder"].name, progress=False) as vf:
            results = vf.search(g["queries"], top_k=TOP_K)
        for r, rel in zip(results, g["relevant"]):
            rows["score"].append([h.score for h in r.hits])
            rows["confidence"].append([h.confidence for h in r.hits])
            rows["uncertainty"].append([h.uncertainty if h.uncertainty is not None else 0.0 for h in r.hits])
            rows["label"].append([h.path in rel for h in r.hits])
    return {k: np.array(v, dtype=bool if k == "label" else np.float64) for k, v in rows.items()}


def fit_baselines(val: dict) -> dict:
    """Platt on the score alone and on the margin alone, fitted on every top-k hit of the validation
    galleries (what the stored calibrator was fitted on)."""
    from probret.engine.calibration import Calibrator, hit_signals

    sig = {k: v.reshape(-1) for k, v in hit_signals(val["score"]).items()}
    return {f"platt:{n}": Calibrator.fit("platt", sig, val["label"].reshape(-1), [n]) for n in ("score", "margin")}


def _ci(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def evaluate(data: dict, baselines: dict) -> dict:
    """The metrics of the module docstring for one data set."""
    from probret.engine.calibration import hit_signals
    from probret.engine.uncertainty import abstention_gain, auroc, aurc, ece, reliability_bins

    sig = hit_signals(data["score"], data["uncertainty"])
    confs = {"confidence (stored)": data["confidence"],
             **{f"{name} (baseline)": cal.confidence(sig) for name, cal in baselines.items()}}
    correct = data["label"][:, 0]
    rows = {}
    for name, c in confs.items():
        rows[name] = {"ece_top1": ece(c[:, 0], correct), "ece_all": ece(c.reshape(-1), data["label"].reshape(-1)),
                      "auroc": auroc(-c[:, 0], ~correct), "aurc": aurc(-c[:, 0], ~correct)["aurc"],
                      **{f"abstain20_{k}": v for k, v in abstention_gain(-c[:, 0], correct, 0.2).items()},
                      "mean_conf_top1": float(c[:, 0].mean())}
    raw = {"score": -sig["score"][:, 0], "margin": -sig["margin"][:, 0], "uncertainty": sig["uncertainty"][:, 0]}
    rng = np.random.default_rng(0)
    c0, n = data["confidence"][:, 0], len(correct)
    boot_ece, boot_auc = [], []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, n, n)
        boot_ece.append(ece(c0[i], correct[i]))
        if 0 < correct[i].sum() < n:
            boot_auc.append(auroc(-c0[i], ~correct[i]))
    return {"queries": n, "R1": float(100 * correct.mean()), "calibrators": rows,
            "raw_auroc": {k: auroc(v, ~correct) for k, v in raw.items()},
            "ci95": {"ece_top1": _ci(np.array(boot_ece)), "auroc": _ci(np.array(boot_auc))},
            "reliability": reliability_bins(c0, correct)}


def print_tables(res: dict) -> None:
    m = res["machine"]
    print(f"CPU: {m['cpu']} ({m['nproc']} cores usable); flags: {' '.join(res['cpu_flags'])}")
    print(f"model: {res['model']}; calibrator: {res['calibrator']}")
    for name, d in res["sets"].items():
        print(f"\n{name}: {d['queries']} queries, {d['galleries']} galler{'y' if d['galleries'] == 1 else 'ies'} of {d['gallery_size']}, "
              f"R@1 {d['R1']:.1f}")
        print(f"  {'':28s} {'ECE top1':>9s} {'ECE all':>8s} {'AUROC':>6s} {'AURC':>6s} {'R@1 kept80%':>11s} "
              f"{'gain':>6s} {'mean conf':>9s}")
        for cname, r in d["calibrators"].items():
            print(f"  {cname:28s} {r['ece_top1']:9.4f} {r['ece_all']:8.4f} {r['auroc']:6.3f} {r['aurc']:6.3f} "
                  f"{r['abstain20_kept_R1']:11.1f} {r['abstain20_gain']:+6.1f} {r['mean_conf_top1']:9.3f}")
        ci = d["ci95"]
        print(f"  stored confidence 95% bootstrap: ECE top1 [{ci['ece_top1'][0]:.4f}, {ci['ece_top1'][1]:.4f}], "
              f"AUROC [{ci['auroc'][0]:.3f}, {ci['auroc'][1]:.3f}]")
        print("  raw signal AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in d["raw_auroc"].items()))
        print("  reliability (stored, top-1): " + "; ".join(
            f"[{b['lo']:.1f},{b['hi']:.1f}) n={b['count']} conf {b['confidence']:.2f} acc {b['accuracy']:.2f}"
            for b in d["reliability"]))


def _worlds(args, work: Path) -> dict:
    """{name: (world root, split, gallery size)}, generating each world once under ``work``."""
    from probret.export.demo_bundle import CALIBRATION_GALLERY, CALIBRATION_WORLD
    from probret.train.demo_model import WORLD_SETTINGS
    from probret.train.world import generate_world

    size = args.gallery or CALIBRATION_GALLERY
    specs = {"fit: calibration world val": ("calibration", {**CALIBRATION_WORLD}, "val", CALIBRATION_GALLERY),
             f"test: fresh world seed {args.seed}": (
                 f"test{args.seed}", {**WORLD_SETTINGS, "seed": args.seed, "videos": args.galleries * size,
                                      "splits": (0.0, 0.0, 1.0)}, "test", size)}
    if args.quick:
        specs["fit: calibration world val"][1]["videos"] = 2 * CALIBRATION_GALLERY
    if not args.no_demo_world:
        specs["test: demo world seed 2024 test"] = ("demo", dict(WORLD_SETTINGS), "test", None)
    out = {}
    for name, (dirname, settings, split, gsize) in specs.items():
        root = work / dirname
        if not (root / "world.json").exists():
            say(f"generating {dirname} ({settings['videos']} videos, seed {settings['seed']})")
            generate_world(root, overwrite=True, **settings)
        out[name] = (root, split, gsize)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="as probret search --model (default: the shipped demo bundle)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the fresh test world")
    p.add_argument("--galleries", type=int, default=10, help="test galleries")
    p.add_argument("--gallery", type=int, default=None, help="test gallery size (default: the calibrator's)")
    p.add_argument("--no-demo-world", action="store_true", help="skip the demo world's test split")
    p.add_argument("--work", default=None, help="keep worlds and indexes here (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 test galleries of 50, no demo world")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.galleries, args.gallery, args.no_demo_world = 2, 50, True
    from probret.engine.calibration import Calibrator
    from probret.export.resolve import resolve_model

    t0 = time.perf_counter()
    resolved = resolve_model(args.model, say=say)
    if not resolved.bundle.calibration:
        raise SystemExit(f"{resolved.description} carries no calibrator")
    res = {"machine": machine(), "cpu_flags": cpu_flags(), "model": resolved.description,
           "calibrator": Calibrator.from_dict(resolved.bundle.calibration).describe(), "sets": {}}
    with tempfile.TemporaryDirectory(prefix="probret-bench-confidence-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        baselines = None
        for name, (root, split, size) in _worlds(args, work).items():
            gals = galleries(root, split, size, work / "galleries")
            say(f"searching {name}: {len(gals)} galler{'y' if len(gals) == 1 else 'ies'}")
            data = search_all(resolved.bundle, gals, work)
            baselines = baselines or fit_baselines(data)  # the first set is the fitting data
            res["sets"][name] = {"galleries": len(gals), "gallery_size": size or len(list(gals[0]["folder"].glob("*.mp4"))),
                                 **evaluate(data, baselines)}
    finish(res, t0, args.out, print_tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
