"""The training loop behind ``probret-train``.

- AdamW with two learning rates (CLIP backbone vs. heads, T-MASS Sec. 4) and no weight decay on
  biases, norms and the temperature (CLIP4Clip's "no_decay" rule).
- Linear warm-up for ``warmup_ratio`` of the optimizer steps, then cosine decay to zero.
- Gradient clipping, gradient accumulation (each micro-batch has its own contrastive loss:
  accumulation saves memory but does not enlarge the set of in-batch negatives), bf16 autocast
  on CUDA, a seeded run.
- Several processes through torchrun / DDP (``nccl`` on GPUs, ``gloo`` on CPUs). Each rank
  takes its share of one seeded permutation; the contrastive loss uses each rank's local batch
  (no cross-rank feature gathering), so the effective negative set is the per-rank batch.
  Rank 0 alone evaluates and writes checkpoints.
- Evaluation every ``eval_every`` steps (default: each epoch) on the **validation** split; the
  checkpoint with the best ``selection_metric`` is kept in ``best/``, the latest in ``last/``,
  resume state in ``state/``. ``--resume`` continues from ``state/`` and ``last/`` and replays
  the same batch order and noise as an uninterrupted run would have seen.
- Logs: console (stderr) and ``log.jsonl`` in the run directory, one JSON object per event.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from probret.engine.errors import DataError, ModelError
from probret.train.checkpoint import load_train_state, save_checkpoint, save_train_state
from probret.train.config import ExperimentConfig
from probret.train.data import EpochSampler, TrainPairs
from probret.train.datasets import load_split
from probret.train.evaluate import evaluate
from probret.train.model import RetrievalModel

log = logging.getLogger("probret.train")


@dataclass
class TrainResult:
    out: Path
    steps: int
    best: dict
    last_metrics: dict | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def build_optimizer(model: RetrievalModel, config: ExperimentConfig) -> torch.optim.Optimizer:
    t = config.train
    groups = {("backbone", True): [], ("backbone", False): [], ("head", True): [], ("head", False): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") and "logit_scale" not in name else "head"
        decay = param.ndim >= 2
        groups[(part, decay)].append(param)
    param_groups = []
    for (part, decay), params in groups.items():
        if params:
            param_groups.append({
                "params": params,
                "lr": t.lr_backbone if part == "backbone" else t.lr_head,
                "weight_decay": t.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            })
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)


def cosine_with_warmup(optimizer, total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _metric(metrics: dict, key: str) -> float:
    node = metrics
    for part in key.split("."):
        node = node[part]
    return float(node)


class _JsonlLog:
    def __init__(self, path: Path | None):
        self.path = path

    def write(self, **event):
        if self.path is None:
            return
        event = {"time": round(time.time(), 3), **event}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event, default=float) + "\n")


def train(config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Run (or, with ``resume``, continue) training.

    ``stop_after``: save everything and return once this many optimizer steps are done, as if the
    job had been pre-empted there; the schedule is still the one of the full run, so a later
    ``resume=True`` finishes exactly as an uninterrupted run would (used for time-limited
    cluster jobs and by the resume test)."""
    rank, world, local_rank = _dist_info()
    t = config.train
    device = resolve_device(t.device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    is_main = rank == 0

    out = Path(t.out)
    if is_main:
        if not resume and (out / "state").exists():
            raise DataError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    jsonl = _JsonlLog(out / "log.jsonl" if is_main else None)

    random.seed(t.seed + rank)
    np.random.seed((t.seed + rank) % 2**32)
    torch.manual_seed(t.seed + rank)

    d = config.data
    train_split = load_split(d.dataset, d.root, d.train_split, video_dir=d.video_dir, strict_missing=d.strict_missing)
    val_split = load_split(d.dataset, d.root, d.val_split, video_dir=d.video_dir, strict_missing=d.strict_missing)
    for split in (train_split, val_split):
        if split.missing and is_main:
            log.warning("%s/%s: %d video file(s) missing, e.g. %s", d.dataset, split.split, len(split.missing), split.missing[:3])
    if not train_split.texts:
        raise DataError(f"{d.root}: the {d.train_split!r} split of {d.dataset!r} has no captions")

    model = RetrievalModel.from_config(config.model).to(device)
    backbone = model.backbone
    dataset = TrainPairs(train_split, num_frames=config.model.num_frames, image_size=backbone.image_size,
                         mean=backbone.image_mean, std=backbone.image_std, sampling=d.train_sampling, seed=t.seed)
    sampler = EpochSampler(len(dataset), seed=t.seed, rank=rank, world_size=world)
    micro_per_epoch = len(sampler) // t.batch_size  # drop_last: contrastive batches must be full
    if micro_per_epoch == 0:
        raise DataError(f"batch_size {t.batch_size} is larger than the training split ({len(dataset)} captions per rank)")
    steps_per_epoch = max(1, micro_per_epoch // t.grad_accum)
    total_steps = steps_per_epoch * t.epochs
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    eval_every = t.eval_every or steps_per_epoch

    optimizer = build_optimizer(model, config)
    scheduler = cosine_with_warmup(optimizer, total_steps, t.warmup_ratio)

    step, epoch, micro_in_epoch = 0, 0, 0
    best = {"metric": t.selection_metric, "value": None, "step": None}
    if resume:
        from safetensors.torch import load_model

        if not (out / "state").exists() or not (out / "last").exists():
            raise ModelError(f"{out}: nothing to resume (no state/ and last/); start without --resume")
        load_model(model, str(out / "last" / "model.safetensors"), device=str(device))
        meta = load_train_state(out / "state", optimizer=optimizer, scheduler=scheduler)
        step, epoch, micro_in_epoch, best = meta["step"], meta["epoch"], meta["step_in_epoch"], meta["best"]
        if is_main:
            log.info("resumed %s at step %d (epoch %d)", out, step, epoch)
            jsonl.write(event="resume", step=step, epoch=epoch)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    use_amp = t.amp and device.type == "cuda"

    def save_all(metrics: dict | None):
        extra = {"experiment": config.to_dict(), "step": step, "metrics": metrics}
        save_checkpoint(out / "last", model, extra=extra)
        save_train_state(out / "state", optimizer=optimizer, scheduler=scheduler, step=step, epoch=epoch,
                         step_in_epoch=micro_in_epoch, best=best)

    def run_eval() -> dict:
        result = evaluate(model, val_split, batch_size=t.eval_batch_size, block=t.eval_chunk, seed=t.eval_seed,
                          num_workers=d.num_workers, device=device, progress=progress,
                          max_texts=t.max_eval_texts)
        value = _metric(result.metrics, t.selection_metric)
        improved = best["value"] is None or value > best["value"]
        jsonl.write(event="eval", split=d.val_split, step=step, epoch=epoch, metrics=result.metrics, improved=improved)
        log.info("step %d  val %s=%.2f  t2v R@1 %.1f R@5 %.1f  v2t R@1 %.1f%s", step, t.selection_metric, value,
                 result.metrics["t2v"]["R1"], result.metrics["t2v"]["R5"], result.metrics["v2t"]["R1"],
                 "  (best)" if improved else "")
        if improved:
            best.update(value=value, step=step, metrics=result.metrics)
            save_checkpoint(out / "best", model, extra={"experiment": config.to_dict(), "step": step,
                                                        "metrics": result.metrics, "selected_on": d.val_split})
        return result.metrics

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not (progress and is_main), dynamic_ncols=True)
    last_metrics, evaluated_at, stopped = None, None, False
    started = time.time()
    while step < total_steps:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, start=micro_in_epoch * t.batch_size)
        loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, num_workers=d.num_workers,
                            drop_last=True, persistent_workers=False)
        optimizer.zero_grad(set_to_none=True)
        for texts, pixels in loader:
            tokens = backbone.tokenize(list(texts)).to(device)
            pixels = pixels.to(device, non_blocking=True)
            generator = torch.Generator(device=device).manual_seed((t.seed * 1_000_003 + step * 131 + rank) % 2**63)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = train_model(tokens, pixels, generator=generator)
            (losses["loss"] / t.grad_accum).backward()
            micro_in_epoch += 1
            if micro_in_epoch % t.grad_accum:
                continue
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                parts = {k: float(v.detach()) for k, v in losses.items()}
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
                jsonl.write(event="train", step=step, epoch=epoch, lr=scheduler.get_last_lr(), **parts,
                            elapsed=round(time.time() - started, 2))
            if step % eval_every == 0 or step == total_steps:
                if is_main:
                    last_metrics = run_eval()
                    evaluated_at = step
                    save_all(last_metrics)
                if world > 1:
                    dist.barrier()
            if stop_after is not None and step >= stop_after:
                break
            if step >= total_steps or micro_in_epoch >= micro_per_epoch:
                break
        if micro_in_epoch >= micro_per_epoch:
            epoch += 1
            micro_in_epoch = 0
        stopped = stop_after is not None and stop_after <= step < total_steps
        if stopped:
            break
    bar.close()
    if is_main and stopped:
        if evaluated_at != step:
            save_all(last_metrics)
        log.info("stopped after step %d of %d; continue with --resume", step, total_steps)
        jsonl.write(event="stopped", step=step)
    elif is_main and evaluated_at != step:
        last_metrics = run_eval()
        save_all(last_metrics)
    if not stopped:
        jsonl.write(event="done", step=step, best=best)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(out, step, best, last_metrics)
