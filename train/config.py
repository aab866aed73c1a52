"""Experiment configuration: one JSON file, loaded into dataclasses (open_clip style).

A config has three sections, ``model``, ``data`` and ``train``, plus a ``name``. Every key can be
overridden from the command line with ``--set section.key=value`` (the value is parsed as JSON
when it parses, else taken as a string), e.g. ``--set train.lr_head=3e-5 --set model.head.alpha=1.0``.

Defaults follow the T-MASS / X-Pool protocol that SPEM also reports (T-MASS Sec. 4,
"Implementation Details"): 12 uniformly sampled frames, batch 32, AdamW with weight decay 0.2,
lr 1e-6 for CLIP and 1e-5 for the heads (3e-5 on MSRVTT), 5 epochs, cosine schedule with a
0.1 warm-up, M = 20 samples at inference, alpha = 1.2 for the support loss.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probret.engine.errors import DataError


@dataclass
class ModelConfig:
    backbone: str = "ViT-B-32"
    # open_clip pretrained tag ("openai"), "hf-hub:org/repo", a local .safetensors file, or None
    # for random initialisation (the tiny test backbones are trained from scratch).
    pretrained: str | None = "openai"
    method: str = "spem"
    num_frames: int = 12
    head: dict[str, Any] = field(default_factory=dict)
    # "none" | "all" | "text" | "vision" | "partial:N" (train only the last N blocks of each tower)
    freeze: str = "none"


@dataclass
class DataConfig:
    dataset: str = "msrvtt"
    root: str = "data/msrvtt"
    video_dir: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    num_workers: int = 2
    # Training frames are drawn at a random time inside each of the T' segments (augmentation);
    # evaluation uses segment midpoints, the X-Pool / T-MASS convention.
    train_sampling: str = "random"
    strict_missing: bool = False


@dataclass
class TrainConfig:
    out: str = "runs/experiment"
    seed: int = 42
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr_backbone: float = 1e-6
    lr_head: float = 1e-5
    weight_decay: float = 0.2
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    amp: bool = True  # only takes effect on CUDA (bf16 autocast)
    eval_every: int | None = None  # steps; None = once per epoch
    eval_batch_size: int = 64
    eval_chunk: int = 256  # texts x videos block scored at once by the head
    eval_seed: int = 0  # noise of best-of-M sampling at evaluation
    max_eval_texts: int | None = None
    selection_metric: str = "t2v.R1"
    log_every: int = 10
    device: str = "auto"


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config") -> "ExperimentConfig":
        raw = copy.deepcopy(raw)
        unknown = set(raw) - {"name", "model", "data", "train"}
        if unknown:
            raise DataError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected name, model, data, train")
        sections = {}
        for key, sub in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            values = raw.get(key, {}) or {}
            if not isinstance(values, dict):
                raise DataError(f"{source}: section {key!r} must be an object")
            known = {f.name for f in dataclasses.fields(sub)}
            bad = set(values) - known
            if bad:
                raise DataError(f"{source}: unknown key(s) in {key!r}: {sorted(bad)}; known: {sorted(known)}")
            sections[key] = sub(**values)
        return cls(name=raw.get("name", "experiment"), **sections)


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: config file not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    return ExperimentConfig.from_dict(raw, source=str(path))


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.key=value`` overrides (nested dict keys allowed, e.g. model.head.alpha=1.0)."""
    raw = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise DataError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr_head=3e-5")
        key, value = item.split("=", 1)
        parts = key.strip().lstrip("-").split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if part not in node:
                if depth == 0:
                    raise DataError(f"override {item!r}: unknown section {part!r}; use model., data. or train.")
                node[part] = {}
            if not isinstance(node[part], dict):
                raise DataError(f"override {item!r}: {part!r} is not a section")
            node = node[part]
        node[parts[-1]] = parse_value(value)
    return ExperimentConfig.from_dict(raw, source="command-line overrides")
