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
  Rank 0 alone evaluates, writes checkpoints and logs.
- Evaluation every ``eval_every`` steps (default: each epoch) on the **validation** split; the
  checkpoint with the best ``selection_metric`` is kept in ``best/``, the latest in ``last/``,
  resume state in ``state/``. ``--resume`` continues from ``state/`` and ``last/`` and replays
  the same batch order and noise as an uninterrupted run would have seen.
- Stopping early: ``stop_after`` steps, or SIGINT / SIGTERM (Ctrl-C, a cluster's pre-emption),
  finish the optimizer step in flight, save ``last/`` and ``state/`` and return a result whose
  ``resume_command`` continues the run exactly. A second Ctrl-C kills at once.
- Before anything is written: the config is validated, both splits are read and at least one
  training video is decoded (a split where nothing decodes is a DataError, not a crash mid-run).
- Logs: console (stderr), ``log.jsonl`` in the run directory (one JSON object per event) and, when
  the ``tensorboard`` package is installed, TensorBoard event files in ``RUN/tensorboard/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shlex
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from probret.engine.errors import DataError, ModelError, VideoDecodeError
from probret.train.checkpoint import load_train_state, save_checkpoint, save_train_state
from probret.train.config import ExperimentConfig
from probret.train.loaders import EpochSampler, TrainPairs
from probret.train.datasets import DatasetWarning, RetrievalSplit, load_split
from probret.train.evaluate import evaluate
from probret.train.model import RetrievalModel
from probret.train.negatives import swap_negatives
from probret.train.interrupt import StopSignals, ignore_stop_signals
from probret.train.run_log import RunLog

log = logging.getLogger("probret.train")


@dataclass
class TrainResult:
    out: Path
    steps: int
    best: dict
    last_metrics: dict | None
    #: set when the run stopped before its last step (stop_after, SIGINT, SIGTERM)
    stopped_by: str | None = None
    resume_command: str | None = None
    is_main: bool = True


@dataclass
class _Schedule:
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int


@dataclass
class _Run:
    """Everything one training run holds; the functions below read and advance it."""

    config: ExperimentConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    model: RetrievalModel
    dataset: TrainPairs
    sampler: EpochSampler
    val_split: RetrievalSplit
    schedule: _Schedule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    log: RunLog
    progress: bool
    train_model: torch.nn.Module | None = None
    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    best: dict = field(default_factory=dict)
    last_metrics: dict | None = None
    evaluated_at: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def train(config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Run (or, with ``resume``, continue) training.

    ``stop_after``: save everything and return once this many optimizer steps are done, as if the
    job had been pre-empted there; the schedule is still the one of the full run, so a later
    ``resume=True`` finishes exactly as an uninterrupted run would (used for time-limited
    cluster jobs and by the resume test). SIGINT / SIGTERM stop the same way."""
    config.validate()
    rank, world, local_rank = _dist_info()
    device = _init_distributed(resolve_device(config.train.device), world, local_rank)
    out = Path(config.train.out)
    if rank == 0 and not resume:
        _check_fresh_run_dir(out)
    if resume and not ((out / "state").exists() and (out / "last").exists()):
        raise ModelError(f"{out}: nothing to resume (no state/ and last/); start without --resume")
    train_split, val_split = _load_splits(config, is_main=rank == 0)
    run = _build_run(config, out, device, rank, world, train_split, val_split, progress)
    if resume:
        _restore(run)
    with StopSignals() as signals:
        stopped_by = _loop(run, stop_after, signals)
    return _finish(run, stopped_by)


#: What probret writes in a run directory; anything else there means it is not (only) ours.
RUN_DIR_ENTRIES = {"config.json", "log.jsonl", "best", "last", "state", "tensorboard"}


def _check_fresh_run_dir(out: Path) -> None:
    """A new run goes into a missing or empty directory, or one an earlier run left before its
    first save; never into a finished run (that needs --resume) or a folder of other files."""
    if (out / "state").exists():
        raise DataError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose another --out")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_DIR_ENTRIES and not p.name.startswith(".")) \
        if out.is_dir() else []
    if foreign:
        raise DataError(f"{out}: holds files probret did not write ({', '.join(foreign[:3])}); choose an empty or "
                        "new --out")


def _init_distributed(device: torch.device, world: int, local_rank: int) -> torch.device:
    if world <= 1:
        return device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def _load_splits(config: ExperimentConfig, *, is_main: bool) -> tuple[RetrievalSplit, RetrievalSplit]:
    """Both splits, read and checked before anything is written: captions exist and at least one
    training video decodes."""
    d = config.data
    with warnings.catch_warnings():
        if not is_main:  # the same dataset warnings once per job, not once per rank
            warnings.simplefilter("ignore", DatasetWarning)
        train_split = load_split(d.dataset, d.root, d.train_split, video_dir=d.video_dir,
                                 strict_missing=d.strict_missing)
        val_split = load_split(d.dataset, d.root, d.val_split, video_dir=d.video_dir, strict_missing=d.strict_missing)
    for split in (train_split, val_split):
        if split.missing and is_main:
            log.warning("%s/%s: %d video file(s) missing, e.g. %s", d.dataset, split.split, len(split.missing),
                        split.missing[:3])
    if not train_split.texts:
        raise DataError(f"{d.root}: the {d.train_split!r} split of {d.dataset!r} has no captions")
    check_decodable(train_split, num_frames=config.model.num_frames)
    return train_split, val_split


def check_decodable(split: RetrievalSplit, *, num_frames: int) -> None:
    """DataError unless some video of ``split`` that has a caption decodes (tried in order, so a
    healthy split costs one decode)."""
    from probret.engine.video import sample_frames

    missing = set(split.missing)
    used = sorted(set(int(j) for j in split.text_video_index))
    first_error = None
    for j in used:
        record = split.videos[j]
        if record.path in missing:
            continue
        try:
            sample_frames(record.path, num_frames, mode="uniform", start=record.start, end=record.end)
            return
        except VideoDecodeError as exc:
            first_error = first_error or exc
    why = f"the first error: {first_error}" if first_error else f"all {len(used)} video file(s) are missing"
    raise DataError(f"{split.name}/{split.split}: no training video can be decoded ({why}); "
                    "check the video folder (data.root / data.video_dir)")


def _build_run(config, out, device, rank, world, train_split, val_split, progress) -> _Run:
    t = config.train
    random.seed(t.seed + rank)
    np.random.seed((t.seed + rank) % 2**32)
    torch.manual_seed(t.seed + rank)
    model = RetrievalModel.from_config(config.model).to(device)
    backbone = model.backbone
    dataset = TrainPairs(train_split, num_frames=config.model.num_frames, image_size=backbone.image_size,
                         mean=backbone.image_mean, std=backbone.image_std, sampling=config.data.train_sampling,
                         seed=t.seed)
    sampler = EpochSampler(len(dataset), seed=t.seed, rank=rank, world_size=world)
    schedule = _plan_schedule(config, len(sampler), len(dataset))
    optimizer = build_optimizer(model, config)
    scheduler = cosine_with_warmup(optimizer, schedule.total_steps, t.warmup_ratio)
    if rank == 0:  # the first thing written, after every check
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config_json(config))
    run = _Run(config, out, device, rank, world, model, dataset, sampler, val_split, schedule, optimizer,
               scheduler, RunLog(out if rank == 0 else None), progress,
               best={"metric": t.selection_metric, "value": None, "step": None})
    run.train_model = model
    if world > 1:
        run.train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    return run


def config_json(config: ExperimentConfig) -> str:
    return json.dumps(config.to_dict(), indent=2) + "\n"


def _plan_schedule(config: ExperimentConfig, per_rank: int, captions: int) -> _Schedule:
    t = config.train
    micro_per_epoch = per_rank // t.batch_size  # drop_last: contrastive batches must be full
    if micro_per_epoch == 0:
        raise DataError(f"train.batch_size {t.batch_size} is larger than the training split "
                        f"({captions} captions, {per_rank} per rank)")
    steps_per_epoch = max(1, micro_per_epoch // t.grad_accum)
    total_steps = steps_per_epoch * t.epochs
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    return _Schedule(micro_per_epoch, steps_per_epoch, total_steps, t.eval_every or steps_per_epoch)


def _restore(run: _Run) -> None:
    from safetensors.torch import load_model

    load_model(run.model, str(run.out / "last" / "model.safetensors"), device=str(run.device))
    meta = load_train_state(run.out / "state", optimizer=run.optimizer, scheduler=run.scheduler)
    run.step, run.epoch, run.micro_in_epoch, run.best = meta["step"], meta["epoch"], meta["step_in_epoch"], meta["best"]
    if run.is_main:
        log.info("resumed %s at step %d (epoch %d)", run.out, run.step, run.epoch)
        run.log.event("resume", step=run.step, epoch=run.epoch)


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _loop(run: _Run, stop_after: int | None, signals: StopSignals) -> str | None:
    """Train until the schedule ends; returns why it stopped early (None when it did not)."""
    s, t = run.schedule, run.config.train
    run.model.train()
    bar = tqdm(total=s.total_steps, initial=run.step, desc="train", disable=not (run.progress and run.is_main),
               dynamic_ncols=True)
    started = time.time()
    stopped_by = None
    try:
        while run.step < s.total_steps and stopped_by is None:
            run.dataset.set_epoch(run.epoch)
            run.sampler.set_epoch(run.epoch, start=run.micro_in_epoch * t.batch_size)
            loader = DataLoader(run.dataset, batch_size=t.batch_size, sampler=run.sampler,
                                num_workers=run.config.data.num_workers, drop_last=True, persistent_workers=False,
                                worker_init_fn=ignore_stop_signals)
            run.optimizer.zero_grad(set_to_none=True)
            for texts, pixels in loader:
                if not _micro_step(run, texts, pixels, bar, started):
                    continue  # gradient accumulation: no optimizer step yet
                stopped_by = _stop_reason(run, stop_after, signals)
                if stopped_by or run.step >= s.total_steps or run.micro_in_epoch >= s.micro_per_epoch:
                    break
            if run.micro_in_epoch >= s.micro_per_epoch:
                run.epoch, run.micro_in_epoch = run.epoch + 1, 0
    finally:
        bar.close()
    return stopped_by if run.step < s.total_steps else None


def _micro_step(run: _Run, texts, pixels, bar, started: float) -> bool:
    """Forward and backward of one micro-batch; True when it completed an optimizer step."""
    t = run.config.train
    tokens = run.model.backbone.tokenize(list(texts)).to(run.device)
    pixels = pixels.to(run.device, non_blocking=True)
    generator = torch.Generator(device=run.device).manual_seed(
        (t.seed * 1_000_003 + run.step * 131 + run.rank) % 2**63)
    negatives = _negative_tokens(run, list(texts))
    use_amp = t.amp and run.device.type == "cuda"
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=use_amp):
        losses = run.train_model(tokens, pixels, generator=generator, negative_ids=negatives,
                                 negative_weight=t.negative_weight)
    (losses["loss"] / t.grad_accum).backward()
    run.micro_in_epoch += 1
    if run.micro_in_epoch % t.grad_accum:
        return False
    if t.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    bar.update(1)
    if run.step % t.log_every == 0 or run.step == run.schedule.total_steps:
        parts = {k: float(v.detach()) for k, v in losses.items()}
        bar.set_postfix(loss=f"{parts['loss']:.3f}")
        run.log.train_step(run.step, epoch=run.epoch, lr=run.scheduler.get_last_lr(), losses=parts,
                           elapsed=round(time.time() - started, 2))
    if run.step % run.schedule.eval_every == 0 or run.step == run.schedule.total_steps:
        if run.is_main:
            _evaluate_and_save(run)
        if run.world > 1:
            dist.barrier()
    return True


def _negative_tokens(run: _Run, texts: list[str]):
    """Token ids of this micro-batch's word-swapped negatives (train/negatives.py), or None when
    ``train.negative_swaps`` is off or no caption has a word to swap. Seeded by seed, step,
    micro-batch and rank, so a resumed run draws the same negatives."""
    t = run.config.train
    if not t.negative_swaps:
        return None
    rng = random.Random(f"negatives/{t.seed}/{run.step}/{run.micro_in_epoch}/{run.rank}")
    negatives = swap_negatives(texts, t.negative_swaps, rng)
    return run.model.backbone.tokenize(negatives).to(run.device) if negatives else None


def _stop_reason(run: _Run, stop_after: int | None, signals: StopSignals) -> str | None:
    """'stop-after', the signal's name, or None; every rank agrees (a signal may reach one rank)."""
    reason = signals.received
    if stop_after is not None and run.step >= stop_after:
        reason = reason or "stop-after"
    if run.world > 1:
        flag = torch.tensor([0 if reason is None else 1], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and reason is None:
            reason = "signal on another rank"
    return reason


def _evaluate_and_save(run: _Run) -> None:
    """Validation metrics at this step; ``best/`` when they improved, then ``last/`` and ``state/``."""
    t, d = run.config.train, run.config.data
    result = evaluate(run.model, run.val_split, batch_size=t.eval_batch_size, block=t.eval_chunk, seed=t.eval_seed,
                      num_workers=d.num_workers, device=run.device, progress=run.progress,
                      max_texts=t.max_eval_texts)
    value = _metric(result.metrics, t.selection_metric)
    improved = run.best["value"] is None or value > run.best["value"]
    run.log.evaluation(run.step, epoch=run.epoch, split=d.val_split, metrics=result.metrics, improved=improved)
    log.info("step %d  val %s=%.2f  t2v R@1 %.1f R@5 %.1f  v2t R@1 %.1f%s", run.step, t.selection_metric, value,
             result.metrics["t2v"]["R1"], result.metrics["t2v"]["R5"], result.metrics["v2t"]["R1"],
             "  (best)" if improved else "")
    if improved:
        run.best.update(value=value, step=run.step, metrics=result.metrics)
        save_checkpoint(run.out / "best", run.model, extra={"experiment": run.config.to_dict(), "step": run.step,
                                                            "metrics": result.metrics, "selected_on": d.val_split})
    run.last_metrics, run.evaluated_at = result.metrics, run.step
    _save_state(run)


def _save_state(run: _Run) -> None:
    extra = {"experiment": run.config.to_dict(), "step": run.step, "metrics": run.last_metrics}
    save_checkpoint(run.out / "last", run.model, extra=extra)
    save_train_state(run.out / "state", optimizer=run.optimizer, scheduler=run.scheduler, step=run.step,
                     epoch=run.epoch, step_in_epoch=run.micro_in_epoch, best=run.best)


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out`` (its config.json holds every setting)."""
    return f"probret-train --config {shlex.quote(str(out / 'config.json'))} --resume"


def _finish(run: _Run, stopped_by: str | None) -> TrainResult:
    command = None
    if run.is_main and stopped_by:
        if run.evaluated_at != run.step:
            _save_state(run)
        command = resume_command(run.out)
        log.info("stopped (%s) after step %d of %d; continue with: %s", stopped_by, run.step,
                 run.schedule.total_steps, command)
        run.log.event("stopped", step=run.step, reason=stopped_by, resume=command)
    elif run.is_main and run.evaluated_at != run.step:
        _evaluate_and_save(run)
    if not stopped_by:
        run.log.event("done", step=run.step, best=run.best)
    run.log.close()
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(run.out, run.step, run.best, run.last_metrics, stopped_by, command, run.is_main)
