"""The shared backbone of quality protocol v2: pre-train it once, in stages, and measure at each
stage how far the encoder has come (the issue's "measure the steps this needs").

Used by bench/quality_v2.py; not a command of its own. One cosine schedule over
``pretrain.steps``; the trainer stops (``stop_after``) at every entry of ``pretrain.stages`` and
saves a resumable state there, so a pre-training killed by the end of a session resumes from its
last stage instead of starting over (it costs about an hour of one core). At each stage:

- the encoder gate's linear probes of the frame features (background, colour, shape, motion,
  fitted on train videos, scored on test videos, against the majority class; motion over the
  first event's own frames, quality_stats.probe_inputs). Attribute labels
  only: no retrieval number of the test split is read here;
- meanP t2v R@1 of the backbone on the **validation** split against the model-free
  "background + colour words" floor on the same validation queries.

Key. A pre-training run is keyed by what decides its weights, not by the whole protocol file: the
protocol's ``world``, ``backbone``, ``pretrain`` and ``gate`` sections and the code that trains it
(``PRETRAIN_CODE``: the trainer, model, data, world, the meanP head and this file). So fine-tuning
methods' code (train/methods/<other>.py), evaluation (train/evaluate.py) and the report can
change without throwing an hour of pre-training away, while anything that changes the backbone
changes the key and starts afresh. Fine-tuning runs are keyed by the whole protocol file, the
whole training code and the backbone file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import quality_stats as qs
from common import REPO, say

#: Everything that decides the shared backbone's weights (see the module docstring).
PRETRAIN_CODE = ["bench/quality_pretrain.py", "bench/quality_stats.py", "bench/vision_warmstart.py", "engine/video.py",
                 "train/trainer.py", "train/model.py", "train/backbone.py", "train/loaders.py",
                 "train/datasets.py", "train/config.py", "train/vision_towers.py", "train/weights.py", "train/checkpoint.py",
                 "train/interrupt.py", "train/negatives.py", "train/methods/__init__.py", "train/methods/base.py",
                 "train/methods/meanp.py"]
PRETRAIN_GLOBS = ["train/world/*.py", "train/backbone_configs/*.json"]
SECTIONS = ("world", "backbone", "pretrain", "gate")
STAGES_FILE = "stages.json"


def hash_code(h, files: list[str], globs: list[str]):
    """Feed every file of ``files`` and of ``globs`` (relative to the repo; path and bytes) into
    the hash ``h``; the code part of every run key of the protocol."""
    paths = [REPO / f for f in files] + sorted(p for g in globs for p in REPO.glob(g))
    for p in paths:
        if p.is_file():
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h


def pretrain_key(protocol: dict) -> str:
    h = hashlib.sha256(json.dumps({s: protocol[s] for s in SECTIONS}, sort_keys=True).encode())
    return hash_code(h, PRETRAIN_CODE, PRETRAIN_GLOBS).hexdigest()[:16]


def overrides(protocol: dict, job: dict, schedule: dict) -> list[str]:
    """Trainer overrides for one run (pre-training or fine-tuning) of the protocol.

    Head hyperparameters come from ``protocol["head"][method]`` (every run of that method) and then
    from ``schedule["head"]`` (this schedule only: the pre-training's objective, setting 7)."""
    b = protocol["backbone"]
    pretrained = job.get("backbone_file")
    head = {**protocol.get("head", {}).get(job["method"], {}), **schedule.get("head", {})}
    return [
        f"model.backbone={b['name']}", f"model.pretrained={pretrained or 'null'}", f"model.method={job['method']}",
        f"model.num_frames={b['num_frames']}", "data.dataset=procedural", f"data.root={job['world']}",
        "data.num_workers=0", f"train.out={job['dir']}/train", f"train.seed={job['seed']}",
        f"train.batch_size={schedule['batch_size']}", f"train.max_steps={schedule['steps']}", "train.epochs=100000",
        f"train.eval_every={schedule['steps']}", f"train.lr_backbone={schedule['lr_backbone']}",
        f"train.lr_head={schedule['lr_head']}", f"train.weight_decay={schedule['weight_decay']}",
        f"train.warmup_ratio={schedule['warmup_ratio']}", "train.log_every=50", "train.eval_batch_size=64",
        "train.device=cpu",
    ] + [f"train.{k}={json.dumps(schedule[k])}" for k in ("negative_swaps", "negative_weight") if k in schedule] \
      + [f"model.head.{k}={json.dumps(v)}" for k, v in head.items()]


def encoder_probes(model, world_dir: Path, probe: dict) -> dict:
    """Linear probes of the backbone's frame features: fit on train videos, test on test videos."""
    import torch

    from probret.train.datasets import load_split
    from probret.train.evaluate import encode_videos
    from probret.train.world import load_world

    world = load_world(world_dir)
    feats = {}
    for split in ("train", "test"):
        data = load_split("procedural", str(world_dir), split)
        frames, _ = encode_videos(model, data, batch_size=64, num_workers=0, device=torch.device("cpu"),
                                  progress=False)
        records = [world["videos"][vid] for vid in data.video_ids]
        frames = frames.numpy()
        shown = qs.shown_video_frames(frames.shape[1], int(world["settings"]["frames"]), float(world["settings"]["fps"]))
        feats[split] = (qs.probe_inputs(frames, records, shown), qs.probe_labels(records))
    out = {}
    for attr in ("background", "color", "shape", "motion"):
        (x_tr, y_tr), (x_te, y_te) = ((f[0][attr], f[1][attr]) for f in (feats["train"], feats["test"]))
        out[attr] = qs.linear_probe(x_tr, y_tr, x_te, y_te, l2=probe["l2"], steps=probe["steps"])
    return out


def validation_gap(model, world_dir: Path) -> dict:
    """meanP R@1 of ``model`` and the floor ranker's on the validation queries, per kind."""
    import torch

    from probret.train.datasets import load_split
    from probret.train.evaluate import evaluate
    from probret.train.world import load_world

    world = load_world(world_dir)
    val = load_split("procedural", str(world_dir), "val")
    with torch.no_grad():
        ev = evaluate(model, val, block=256, seed=0)
    hit = qs.per_query(ev.sims, val.relevant)["hit1"]
    voc = world["vocabulary"]
    records = [world["videos"][v] for v in val.video_ids]
    floor = qs.per_query(qs.floor_scores(val.texts, records, list(voc["colors"]), voc["backgrounds"]),
                         val.relevant)["hit1"]
    kinds = qs.query_kinds(world, val)
    return {"meanp_R1": {k: float(100 * hit[qs.kind_mask(kinds, k)].mean()) for k in ("all",) + qs.KINDS},
            "floor_R1": {k: float(100 * floor[qs.kind_mask(kinds, k)].mean()) for k in ("all",) + qs.KINDS}}


def swap_check(model, world_dir: Path, *, videos: int = 300) -> dict:
    """On the validation split's first ``videos`` videos: how often a video scores its own caption
    above the same caption with one shape word (or colour word, direction, or canonical motion verb)
    swapped (train/negatives.py; 50% = the attribute plays no part), and the text tower's mean
    cosine between the two captions. Reported beside the gate, not part of it."""
    import random

    import torch

    from probret.train.datasets import RetrievalSplit, load_split
    from probret.train.evaluate import encode_videos
    from probret.train.negatives import swap_negatives
    from probret.train.world.grammar import canonical_verb
    from probret.train.world.vocabulary import COLOR_NAMES, MOTIONS, SHAPES, TRANSLATIONS

    data = load_split("procedural", str(world_dir), "val")
    keep = [i for i, v in enumerate(data.text_video_index) if v < videos]
    sub = RetrievalSplit(data.name, data.split, data.videos[:videos], [data.texts[i] for i in keep],
                         data.text_video_index[keep])
    out = {}
    with torch.no_grad():
        frames, _ = encode_videos(model, sub, batch_size=64, num_workers=0, device=torch.device("cpu"), progress=False)
        video = model.head.video_side(frames)
        verbs = [canonical_verb(m) for m in MOTIONS if m not in TRANSLATIONS]
        for name, group in (("shape", list(SHAPES)), ("color", list(COLOR_NAMES)),
                            ("direction", list(TRANSLATIONS)), ("motion_verb", verbs)):
            rng = random.Random(0)
            pairs = [(i, swap_negatives([t], [group], rng)) for i, t in enumerate(sub.texts)]
            idx = [i for i, s in pairs if s]
            true = model.encode_text(model.backbone.tokenize([sub.texts[i] for i in idx]))
            swapped = model.encode_text(model.backbone.tokenize([s[0] for _, s in pairs if s]))
            own = torch.as_tensor(sub.text_video_index[idx])
            rows = torch.arange(len(idx))
            a = model.head.pair_side(true, video).scores[rows, own]
            b = model.head.pair_side(swapped, video).scores[rows, own]
            out[name] = {"prefers_own": round(float((a > b).float().mean()), 3), "captions": len(idx),
                         "text_cos": round(float(torch.nn.functional.cosine_similarity(
                             true.sentence, swapped.sentence).mean()), 4)}
    return out


def _stages(pretrain: dict) -> list[int]:
    return sorted({int(s) for s in pretrain.get("stages", []) if 0 < int(s) < pretrain["steps"]} | {pretrain["steps"]})


def pretrain_job(protocol: dict, job: dict) -> dict:
    """Train the shared backbone stage by stage (resuming a killed run), save it as open_clip
    weights, and record the probes and the validation gap at every stage."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    from probret.train.checkpoint import load_checkpoint
    from probret.train.config import ExperimentConfig, apply_overrides
    from probret.train.trainer import train

    d = Path(job["dir"])
    if "vision_warmstart" in protocol["pretrain"]:
        from vision_warmstart import warm_start_file

        d.mkdir(parents=True, exist_ok=True)
        job = {**job, "backbone_file": str(warm_start_file(protocol, Path(job["world"]),
                                                           d / "vision-warmstart.safetensors", report=say))}
    config = apply_overrides(ExperimentConfig(), overrides(protocol, job, protocol["pretrain"]))
    log = d / STAGES_FILE
    rows = json.loads(log.read_text()) if log.is_file() else []
    for stage in _stages(protocol["pretrain"]):
        if any(r["steps"] == stage for r in rows):
            continue
        started = time.process_time()
        result = train(config, resume=(d / "train" / "state").exists(), progress=False, stop_after=stage)
        if result.steps < stage:  # stopped by a signal: keep the state, report nothing for this stage
            raise SystemExit(f"pre-training stopped at step {result.steps}; run again to resume")
        model, _ = load_checkpoint(d / "train" / "last")
        model.eval()
        train_cpu = time.process_time() - started
        started = time.process_time()
        row = {"steps": stage, "train_cpu_s": round(train_cpu, 1),
               "probes": encoder_probes(model, Path(job["world"]), protocol["gate"]["probe"]),
               **validation_gap(model, Path(job["world"])), "swap": swap_check(model, Path(job["world"]))}
        row["probe_cpu_s"] = round(time.process_time() - started, 1)
        rows.append(row)
        (d / (STAGES_FILE + ".part")).write_text(json.dumps(rows, indent=1) + "\n")
        os.replace(d / (STAGES_FILE + ".part"), log)
        say(f"pre-training step {stage}: " + ", ".join(
            f"{a} {100 * v['accuracy']:.0f}/{100 * v['majority']:.0f}" for a, v in row["probes"].items())
            + f"; val meanP R@1 {row['meanp_R1']['all']:.1f} vs floor {row['floor_R1']['all']:.1f}"
            + "; swap check " + ", ".join(f"{a} {100 * v['prefers_own']:.0f}%" for a, v in row["swap"].items())
            + f" ({train_cpu:.0f} CPU s)")
    model, _ = load_checkpoint(d / "train" / "last")
    state = {k: v.detach().contiguous() for k, v in model.backbone.clip.state_dict().items()}
    save_file(state, str(d / "backbone.safetensors"))
    last = rows[-1]
    return {"cpu_seconds": round(sum(r["train_cpu_s"] for r in rows), 1),
            "probe_cpu_seconds": round(sum(r["probe_cpu_s"] for r in rows), 1),
            "steps": last["steps"], "stages": rows, "probes": last["probes"]}
