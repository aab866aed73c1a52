"""Quality protocol v2 (issue 11): every registered method, five seeds, >= 1,000 test queries of
three kinds scored against match sets, paired bootstrap intervals, an encoder gate, resumable.

    python bench/quality_v2.py --quick                      # smoke run, about a minute (CI)
    python bench/quality_v2.py --gate-only                  # world + shared backbone + encoder gate
    python bench/quality_v2.py                              # the full protocol (resumable, hours)
    python bench/quality_v2.py --max-runs 4                 # do at most 4 more fine-tuning runs, then report
    python bench/quality_v2.py --seeds 0,1 --max-runs 0     # report the finished runs of seeds 0 and 1 only (partial)
    python bench/quality_v2.py --finetune-from B.safetensors --parallel 1   # runs ahead of the pre-training, no report

Everything the protocol fixes is in bench/protocols/quality_v2.json, committed before any full
run: the world (protocol-v2 knobs, docs/world.md), the gallery, the shared backbone and its
pre-training, the fine-tuning schedule (fixed: no checkpoint selection), methods, seeds, the
statistics, the gate and the pre-registered comparisons with their thresholds and correction.

Flow: (1) generate the world once; (2) pre-train ONE shared video-text backbone (meanP
contrastive, from scratch) on the world's training split and run the encoder gate on it
(linear probes of its frame features for background / colour / shape / motion against the
majority class, and the model-free "background + colour words" floor ranker on the test
queries); (3) fine-tune every method from that backbone for each seed, briefly, and evaluate
once on the validation and the test split, keeping per-query results (bench/quality_finetune.py);
(4) report R@1 per method and query kind (mean and sample std over seeds, ddof=1), the gate, and
every pre-registered comparison as a paired per-query difference with a two-level (seeds x
queries) bootstrap interval; (5) the pre-registered uncertainty analysis (the protocol's
``uncertainty`` section, bench/quality_uncertainty.py): calibrators fitted on the calibration
gallery (section ``calibration``: 1,000 videos of a second world; before setting 10 the
validation split), AUROC /
AURC / ECE / abstention on test against the score and margin baselines, with their plots.

Resumable and keyed: a run is stored under runs/<what>-<key>/ with key = sha256 of (protocol
file bytes, the code that trains and evaluates it (``CODE_FILES``: quality_finetune.py, not this
report), what it is). A finished run (result.json) with
the same key is reused; runs of other keys are never read, so editing the protocol or the code
starts afresh without mixing stale numbers in. One thread per run (torch.set_num_threads(1)),
``--parallel`` runs at a time (default 2, the cores of the development machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_finetune as qf  # noqa: E402
import quality_pretrain as qp  # noqa: E402
import quality_stats as qs  # noqa: E402
import quality_uncertainty as qu  # noqa: E402
from common import REPO, machine, say  # noqa: E402

PROTOCOL = REPO / "bench" / "protocols" / "quality_v2.json"
#: The code a fine-tuning run's numbers depend on; its hash is part of every fine-tuning run key.
#: Not this file: the report (and quality_uncertainty.py's analysis) only reads finished runs, so
#: it may change without retraining. quality_pretrain.py is here for ``overrides`` (the trainer
#: settings of every run). Whole folders, so a file added or renamed there is covered too. The
#: pre-training is keyed apart (quality_pretrain.pretrain_key).
CODE_FILES = ["bench/quality_finetune.py", "bench/quality_pretrain.py", "bench/quality_stats.py",
              "engine/metrics.py", "engine/video.py"]
CODE_GLOBS = ["train/*.py", "train/methods/*.py", "train/world/*.py", "train/backbone_configs/*.json"]
MARKER = "probret-quality-run.json"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_sha() -> str:
    return qp.hash_code(hashlib.sha256(), CODE_FILES, CODE_GLOBS).hexdigest()


def run_key(protocol_sha: str, code: str, what: dict) -> str:
    blob = json.dumps({"protocol": protocol_sha, "code": code, **what}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_protocol(path: Path, quick: bool) -> tuple[dict, str]:
    """The protocol (with its ``quick`` overrides applied when asked) and the file's sha256."""
    raw = json.loads(path.read_text())
    protocol = json.loads(json.dumps(raw))
    if quick:
        for section, values in raw["quick"].items():
            if isinstance(values, dict):
                protocol[section].update(values)
            else:
                protocol[section] = values
    protocol.pop("quick", None)
    return protocol, sha256_file(path) + ("-quick" if quick else "")


def method_list(protocol: dict) -> list[str]:
    if protocol["methods"] != "registry":
        return list(protocol["methods"])
    from probret.train.methods import list_methods

    return list_methods()


# -- world ---------------------------------------------------------------------------------------

def ensure_world(protocol: dict, root: Path, *, prefix: str = "world", **changes) -> Path:
    """The protocol's world under ``root`` (generated if missing), or with ``changes`` to its
    settings (``seed``, ``videos``, ``splits``) a second world from the same generator, in its own
    folder ``<prefix>-<key>``: the key hashes every setting, so a world is never reused for another."""
    from probret.train.world import WORLD_VERSION, BenchmarkKnobs, generate_world

    w = {**protocol["world"], **changes}
    if changes and w["seed"] == protocol["world"]["seed"]:
        raise SystemExit(f"a second world with seed {w['seed']} would repeat the protocol's own world; pick another seed")
    key = hashlib.sha256(json.dumps({**w, "world_version": WORLD_VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    out = root / f"{prefix}-{key}"
    if (out / "world.json").is_file():
        return out
    say(f"generating world: {w['videos']} videos in {out}")
    generate_world(out, videos=w["videos"], seed=w["seed"], resolution=tuple(w["resolution"]), frames=w["frames"],
                   fps=w["fps"], difficulty=w["difficulty"], splits=tuple(w["splits"]), overwrite=True,
                   benchmark=BenchmarkKnobs(**{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in w["benchmark"].items()}))
    return out


def calibration_world(protocol: dict, root: Path) -> Path | None:
    """The world of the protocol's calibration gallery (section ``calibration``; None without one)."""
    cal = protocol.get("calibration")
    return None if cal is None else ensure_world(protocol, root, prefix="diag-world", **cal["world"])


# -- the shared backbone in the repository ---------------------------------------------------------

#: Byte parts of the backbone below the repository's 8 MiB limit per tracked file (the demo bundle's
#: MAX_FILE_BYTES), so the backbone is committed with its pre-training record and a later session
#: fine-tunes from the very same bytes: fine-tuning runs are keyed by its sha256, and a backbone
#: retrained on another CPU need not be bit-identical.
PART_BYTES = 7 << 20
BACKBONE = "backbone.safetensors"


def split_backbone(d: Path) -> None:
    """Write d/backbone.safetensors.partNN (and .sha256) unless they are there and match."""
    whole = d / BACKBONE
    sha_file = d / (BACKBONE + ".sha256")
    if not whole.is_file():
        return
    sha = sha256_file(whole)
    if sha_file.is_file() and sha_file.read_text().strip() == sha:
        return
    for old in d.glob(BACKBONE + ".part*"):
        old.unlink()
    data = whole.read_bytes()
    for n, start in enumerate(range(0, len(data), PART_BYTES)):
        (d / f"{BACKBONE}.part{n:02d}").write_bytes(data[start:start + PART_BYTES])
    sha_file.write_text(sha + "\n")


def join_backbone(d: Path) -> None:
    """Rebuild a missing d/backbone.safetensors from its committed parts, checking its sha256."""
    whole = d / BACKBONE
    parts = sorted(d.glob(BACKBONE + ".part*"))
    if whole.is_file() or not parts:
        return
    want = (d / (BACKBONE + ".sha256")).read_text().strip()
    tmp = d / (BACKBONE + ".joining")
    with open(tmp, "wb") as f:
        for part in parts:
            f.write(part.read_bytes())
    if sha256_file(tmp) != want:
        tmp.unlink()
        raise SystemExit(f"{d}: the backbone's parts do not add up to sha256 {want}; check out the folder again")
    os.replace(tmp, whole)


def pretrain_dir(protocol: dict, out: Path) -> Path:
    """The shared backbone's run folder under ``out``, named by its key."""
    return out / "runs" / f"pretrain-{qp.pretrain_key(protocol)}"


def shared_backbone_file(protocol: dict, out: Path) -> Path:
    """The protocol's finished shared backbone under ``out`` (joined from its parts if need be)."""
    d = pretrain_dir(protocol, out)
    join_backbone(d)
    if not (d / BACKBONE).is_file():
        raise SystemExit(f"{d}: no finished shared backbone; run bench/quality_v2.py --gate-only first")
    return d / BACKBONE


# -- runs (each in its own process, one thread; the fine-tuning itself is quality_finetune.py) -----

def run_keyed(job: dict) -> dict:
    """Run ``job`` unless runs/<name>-<key>/result.json exists; a half-finished run of the same
    key (killed) is removed first, but only if it carries our marker."""
    d = Path(job["dir"])
    done = d / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if d.exists() and not (d / MARKER).is_file():
        raise SystemExit(f"{d} exists but was not made by this bench; move it away")
    if d.exists() and job["kind"] != "pretrain":  # pre-training resumes from its last stage instead
        shutil.rmtree(d)
    if not d.exists():
        d.mkdir(parents=True)
        (d / MARKER).write_text(json.dumps({k: v for k, v in job.items() if k != "protocol"}, indent=1) + "\n")
    fn = qp.pretrain_job if job["kind"] == "pretrain" else qf.finetune_job
    result = {"key": job["key"], **fn(job["protocol"], job)}
    shutil.rmtree(d / "train" / "state", ignore_errors=True)  # optimizer state: not needed once done
    tmp = d / "result.json.part"
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, done)
    return result


# -- the report -----------------------------------------------------------------------------------

def test_queries(world_dir: Path) -> dict:
    """Test texts, match sets (indices), query kinds and video records, in evaluation order."""
    from probret.train.datasets import load_split
    from probret.train.world import load_world

    world = load_world(world_dir)
    split = load_split("procedural", str(world_dir), "test")
    vids = split.video_ids
    return {"texts": split.texts, "relevant": split.relevant, "kinds": qs.query_kinds(world, split),
            "records": [world["videos"][v] for v in vids], "vocabulary": world["vocabulary"],
            "text_video_index": split.text_video_index}


def floor_hit1(protocol: dict, queries: dict) -> np.ndarray:
    """The model-free floor ranker's per-query hit@1 on the test queries, in the protocol's
    galleries (the whole split without a ``galleries`` section), as every method is scored."""
    voc = queries["vocabulary"]
    sims = qs.floor_scores(queries["texts"], queries["records"], list(voc["colors"]), voc["backgrounds"])
    relevant = queries["relevant"]
    size = gallery_size(protocol)
    if size is not None:
        sims, relevant, _ = qf.confine_to_galleries(sims, relevant, queries["text_video_index"], size)
    return qs.per_query(sims, relevant)["hit1"]


def gallery_size(protocol: dict) -> int | None:
    """Videos per gallery (protocol section ``galleries``, setting 11 on), None for one gallery per split."""
    section = protocol.get("galleries")
    return None if section is None else int(section["size"])


def gate_report(protocol: dict, pre: dict, queries: dict, hits: dict[str, np.ndarray]) -> dict:
    """Probes against their majority class, the floor ranker, meanP against the floor, and
    whether the comparison counts (all three as the protocol's thresholds say)."""
    g = protocol["gate"]
    floor = floor_hit1(protocol, queries)
    kinds = queries["kinds"]
    floor_r1 = {k: float(100 * floor[qs.kind_mask(kinds, k)].mean()) for k in ("all",) + qs.KINDS}
    probes = pre["probes"]
    checks = {f"{a}_over_majority": probes[a]["accuracy"] - probes[a]["majority"] >= g[f"{a}_over_majority"]
              for a in ("shape", "motion")}
    meanp = None
    if "meanp" in hits:
        diff = 100 * (hits["meanp"] - floor[None, :])
        st = protocol["statistics"]
        meanp = qs.paired_bootstrap(diff, reps=st["reps"], level=st["level"], seed=st["seed"])
        checks["meanp_over_floor"] = meanp["lo"] > 0 and meanp["mean"] >= g["meanp_over_floor"]
    else:
        checks["meanp_over_floor"] = None
    return {"probes": probes, "floor_R1": floor_r1, "meanp_minus_floor": meanp, "checks": checks,
            "passed": all(v is True for v in checks.values()), "floor_hit1": floor.tolist()}


def analyse(protocol: dict, runs: dict, seeds: list[int], methods: list[str], queries: dict, pre: dict) -> dict:
    st = dict(protocol["statistics"])
    primary = [c for c in protocol["comparisons"] if c.get("family") == "primary"]
    st["primary_level"] = 1 - (1 - st["level"]) / max(len(primary), 1)  # Bonferroni over the primary family
    complete = {m: np.stack([np.asarray(runs[(m, s)]["queries"]["test"]["hit1"]) for s in seeds])
                for m in methods if all((m, s) in runs for s in seeds)}
    partial = {m: np.stack([np.asarray(runs[(m, s)]["queries"]["test"]["hit1"]) for s in seeds if (m, s) in runs])
               for m in methods if any((m, s) in runs for s in seeds)}
    kinds = queries["kinds"]
    whole = {m: np.stack([np.asarray(runs[(m, s)]["queries"]["test_whole_split"]["hit1"]) for s in seeds
                          if (m, s) in runs]) for m in partial
             if all("test_whole_split" in runs[(m, s)]["queries"] for s in seeds if (m, s) in runs)}
    return {
        "table": qs.method_table(partial, kinds),
        "gallery_size": gallery_size(protocol),
        "table_whole_split": qs.method_table(whole, kinds) if whole else None,
        "seeds_done": {m: [s for s in seeds if (m, s) in runs] for m in methods},
        "complete_methods": sorted(complete),
        "gate": gate_report(protocol, pre, queries, complete),
        "swap": (pre.get("stages") or [{}])[-1].get("swap"),
        "comparisons": [qs.comparison(c, complete, kinds, st) for c in protocol["comparisons"]],
        "primary_level": st["primary_level"],
        "cpu_seconds": {"pretrain": pre["cpu_seconds"] + pre["probe_cpu_seconds"],
                        "finetune_mean": float(np.mean([r["cpu_seconds"] + r["eval_cpu_seconds"] for r in runs.values()]))
                        if runs else None,
                        "finetune_total": float(sum(r["cpu_seconds"] + r["eval_cpu_seconds"] for r in runs.values()))},
    }


def _fmt(x, nd=1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _partial_line(meta: dict) -> list[str]:
    seeds, everyone = meta.get("seeds"), meta.get("protocol_seeds")
    if seeds is None or seeds == everyone:
        return []
    return [f"**Partial report: seeds {', '.join(map(str, seeds))} of the protocol's "
            f"{', '.join(map(str, everyone))} (--seeds); not a result of the protocol.**", ""]


def _gallery_words(size: int | None) -> str:
    return "one gallery of the whole test split" if size is None else f"test split in galleries of {size} videos"


def _r1_table(table: dict, seeds_done: dict) -> list[str]:
    lines = ["| method | seeds | all | full | partial | short |", "|---|---|---|---|---|---|"]
    for m, row in table.items():
        cells = [f"{_fmt(row[k]['mean'])} ± {_fmt(row[k]['std'])}" for k in ("all",) + qs.KINDS]
        lines.append(f"| {m} | {len(seeds_done[m])} | " + " | ".join(cells) + " |")
    return lines


def markdown(a: dict, meta: dict) -> str:
    lines = [f"Quality protocol v2 - protocol sha256 {meta['protocol_sha'][:16]}, code {meta['code_sha'][:16]}, "
             f"{meta['machine']['cpu']}.", "",
             *_partial_line(meta),
             f"t2v R@1 (%) against match sets, {_gallery_words(a.get('gallery_size'))}; "
             "mean ± std over seeds (ddof=1).", ""]
    lines += _r1_table(a["table"], a["seeds_done"])
    if a.get("table_whole_split"):
        lines += ["", "Secondary (not a pre-registered comparison): the same runs with the whole test split as one "
                  "gallery, as settings 1-10 scored it.", ""]
        lines += _r1_table(a["table_whole_split"], a["seeds_done"])
    g = a["gate"]
    lines += ["", "Encoder gate (shared backbone): linear-probe accuracy vs majority class.", "",
              "| attribute | probe | majority | classes |", "|---|---|---|---|"]
    for attr, p in g["probes"].items():
        lines.append(f"| {attr} | {100 * p['accuracy']:.1f} | {100 * p['majority']:.1f} | {p['classes']} |")
    swap = a.get("swap") or {}
    if swap:  # recorded beside the gate by the pre-training's last stage, not part of it
        lines += ["", "Caption swap check (validation, not part of the gate): a video scores its own caption above "
                  "the same caption with one word swapped: " + ", ".join(
                      f"{attr} {100 * v['prefers_own']:.0f}% of {v['captions']} (text cosine {v['text_cos']:.3f})"
                      for attr, v in swap.items()) + "; 50% = the attribute plays no part."]
    fl = g["floor_R1"]
    lines += ["", "Floor (background + colour words, no model) R@1: " + ", ".join(f"{k} {_fmt(v)}" for k, v in fl.items()),
              f"meanP - floor: {_fmt((g['meanp_minus_floor'] or {}).get('mean'))} "
              f"[{_fmt((g['meanp_minus_floor'] or {}).get('lo'))}, {_fmt((g['meanp_minus_floor'] or {}).get('hi'))}]",
              "Gate checks: " + ", ".join(f"{k}={v}" for k, v in g["checks"].items())
              + f" -> {'PASSED' if g['passed'] else 'NOT PASSED: the comparisons below do not count'}", "",
              f"Pre-registered comparisons (paired per-query difference, points; primary family at "
              f"{100 * a['primary_level']:.1f}% intervals, Bonferroni):", "",
              "| id | A - B | kind | mean | CI | seed std | threshold | status |", "|---|---|---|---|---|---|---|---|"]
    for c in a["comparisons"]:
        b = c.get("b_resolved", c["b"])
        lines.append(f"| {c['id']} | {c['a']} - {b} | {c['kind']} | {_fmt(c.get('mean'))} | "
                     f"[{_fmt(c.get('lo'))}, {_fmt(c.get('hi'))}] | {_fmt(c.get('seed_std'))} | "
                     f">= {c.get('min_diff', 0)}, CI > 0 | {c['status']} |")
    cpu = a["cpu_seconds"]
    lines += ["", f"CPU seconds: shared backbone + probes {_fmt(cpu['pretrain'], 0)}, one fine-tune + eval "
              f"{_fmt(cpu['finetune_mean'], 0)} (mean), all fine-tunes so far {_fmt(cpu['finetune_total'], 0)}."]
    return "\n".join(lines) + "\n"


def uncertainty_section(protocol: dict, runs: dict, seeds: list[int], methods: list[str], out: Path) -> dict:
    """The uncertainty analysis (quality_uncertainty.py) and its two plots, saved beside results.json."""
    report, rows = qu.analyse(runs, seeds, methods, protocol)
    if any(rows.values()):
        report["plots"] = [qu.plot_risk_coverage(rows, out / "risk_coverage.png").name,
                           qu.plot_reliability(rows, out / "reliability.png", protocol["uncertainty"]["ece_bins"]).name]
    return report


def _without_topk(run: dict) -> dict:
    """A run as results.json keeps it: the validation top-k hits (the product calibrator's fitting
    data) stay in the run's own result.json, which is what the analysis reads."""
    q = {split: {k: v for k, v in rec.items() if not k.startswith("topk_")} for split, rec in run["queries"].items()}
    return {**run, "queries": q}


def _jobs(protocol: dict, psha: str, csha: str, world: Path, out: Path, methods: list[str], seeds: list[int],
          backbone: Path) -> list[dict]:
    # keyed by the backbone's bytes, not its run's name: a backbone regenerated in a later session
    # (its run folder is not committed) reuses the finished fine-tuning runs only if bit-identical
    backbone_sha = sha256_file(backbone)
    cal_world = calibration_world(protocol, out)
    calibration = None if cal_world is None else {"world": str(cal_world), "split": protocol["calibration"]["split"],
                                                  "gallery": int(protocol["calibration"]["gallery"])}
    jobs = []
    for seed in seeds:
        for m in methods:
            key = run_key(psha, csha, {"kind": "finetune", "method": m, "seed": seed, "backbone": backbone_sha})
            jobs.append({"kind": "finetune", "method": m, "seed": seed, "key": key, "world": str(world),
                         "dir": str(out / "runs" / f"{m}-s{seed}-{key}"), "backbone_file": str(backbone),
                         "protocol": protocol, "calibration": calibration, "gallery_size": gallery_size(protocol)})
    return jobs


def chosen_seeds(protocol: dict, text: str | None) -> list[int]:
    """The protocol's seeds, or the subset ``text`` ("0,1") names; any other seed is refused, since
    a run outside the protocol would carry the protocol's key without being part of it."""
    seeds = list(protocol["seeds"])
    if text is None:
        return seeds
    try:
        chosen = [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1") from None
    if any(s not in seeds for s in chosen):
        raise SystemExit(f"--seeds {text!r}: the protocol's seeds are {', '.join(map(str, seeds))}")
    return [s for s in seeds if s in chosen]


def finetune_ahead(args, protocol: dict, psha: str, csha: str, world: Path, out: Path) -> None:
    """Fine-tuning runs from ``args.finetune_from`` before the protocol's own pre-training has
    finished: for a setting whose pre-training is expected to reproduce an earlier backbone bit
    for bit (nothing that decides its weights changed), so the runs need not wait for it.

    Safe by the keys alone: every run is keyed by the backbone file's sha256 (``_jobs``), so a
    later report, which fine-tunes from the protocol's own backbone, reuses these runs only if
    that backbone is bit-identical to this file, and never reads them otherwise. Nothing is
    reported and no test number is printed, so nothing of the test split is seen before the
    encoder gate is known."""
    backbone = args.finetune_from.resolve()
    if not backbone.is_file():
        raise SystemExit(f"--finetune-from {args.finetune_from}: no such file")
    jobs = _jobs(protocol, psha, csha, world, out, method_list(protocol), chosen_seeds(protocol, args.seeds), backbone)
    todo = [j for j in jobs if not (Path(j["dir"]) / "result.json").is_file()]
    todo = todo if args.max_runs is None else todo[:args.max_runs]
    say(f"{len(jobs)} fine-tuning runs from {backbone} (sha256 {sha256_file(backbone)[:16]}); starting {len(todo)}")
    with ProcessPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for job, _ in zip(todo, pool.map(run_keyed, todo)):
            say(f"{job['method']:6s} seed {job['seed']}: finished ({job['dir']})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", type=Path, default=PROTOCOL)
    p.add_argument("--out", type=Path, default=None, help="default: the protocol's out (quick: OUT/quick)")
    p.add_argument("--quick", action="store_true", help="the protocol's quick overrides: a ~1 minute smoke run")
    p.add_argument("--gate-only", action="store_true", help="world, shared backbone and encoder gate only")
    p.add_argument("--max-runs", type=int, default=None, help="start at most this many new fine-tuning runs")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--seeds", default=None, metavar="S,S",
                   help="run and report only these of the protocol's seeds: a partial report, labelled so")
    p.add_argument("--finetune-from", type=Path, default=None, metavar="BACKBONE",
                   help="fine-tune from this backbone file while the protocol's own pre-training runs "
                        "elsewhere; no report, no test number printed (see finetune_ahead)")
    args = p.parse_args(argv)
    t0 = time.time()
    protocol, psha = load_protocol(args.protocol, args.quick)
    csha = code_sha()
    out = args.out or (REPO / protocol["out"] / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    world = ensure_world(protocol, out)
    if args.finetune_from is not None:
        return finetune_ahead(args, protocol, psha, csha, world, out)
    pkey = qp.pretrain_key(protocol)
    pre_job = {"kind": "pretrain", "method": protocol["pretrain"]["method"], "seed": protocol["pretrain"]["seed"],
               "key": pkey, "world": str(world), "dir": str(pretrain_dir(protocol, out)), "protocol": protocol}
    join_backbone(Path(pre_job["dir"]))
    with ProcessPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        say("shared backbone: pre-training (or reusing a finished run of the same key)")
        pre = pool.submit(run_keyed, pre_job).result()
        split_backbone(Path(pre_job["dir"]))
        methods, seeds = method_list(protocol), chosen_seeds(protocol, args.seeds)
        jobs = [] if args.gate_only else _jobs(protocol, psha, csha, world, out, methods, seeds,
                                               Path(pre_job["dir"]) / BACKBONE)
        todo = [j for j in jobs if not (Path(j["dir"]) / "result.json").is_file()]
        if args.max_runs is not None:
            skipped = {id(j) for j in todo[args.max_runs:]}
            jobs = [j for j in jobs if id(j) not in skipped]
        say(f"{len(jobs)} fine-tuning runs ({len(todo)} not finished before, starting "
            f"{len(todo) if args.max_runs is None else min(len(todo), args.max_runs)})")
        runs = {}
        for job, res in zip(jobs, pool.map(run_keyed, jobs)):
            runs[(job["method"], job["seed"])] = res
            say(f"{job['method']:6s} seed {job['seed']}: R@1 {100 * np.mean(res['queries']['test']['hit1']):.1f} "
                f"({res['cpu_seconds'] + res['eval_cpu_seconds']:.0f} CPU s)")
    queries = test_queries(world)
    analysis = analyse(protocol, runs, seeds, methods, queries, pre)
    analysis["uncertainty"] = uncertainty_section(protocol, runs, seeds, methods, out)
    meta = {"protocol_sha": psha, "code_sha": csha, "machine": machine(), "seconds": round(time.time() - t0, 1),
            "quick": args.quick, "world": str(world), "seeds": seeds, "protocol_seeds": list(protocol["seeds"]),
            "backbone_sha256": sha256_file(Path(pre_job["dir"]) / BACKBONE)}
    results = {"meta": meta, "protocol": protocol, "analysis": analysis, "kinds": queries["kinds"].tolist(),
               "runs": {f"{m}-s{s}": _without_topk(r) for (m, s), r in runs.items()}, "pretrain": pre}
    (out / "results.json").write_text(json.dumps(results) + "\n")
    md = markdown(analysis, meta) + qu.markdown(analysis["uncertainty"])
    (out / "summary.md").write_text(md)
    print(md)
    say(f"total {time.time() - t0:.0f} s wall; results in {out}")


if __name__ == "__main__":
    main()
