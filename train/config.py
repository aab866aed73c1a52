"""Experiment configuration: one JSON file, loaded into dataclasses (open_clip style).

A config has three sections, ``model``, ``data`` and ``train``, plus a ``name``. Every key can be
overridden from the command line with ``--set section.key=value`` (the value is parsed as JSON
when it parses, else taken as a string), e.g. ``--set train.lr_head=3e-5 --set model.head.alpha=1.0``.

The whole config is checked when it is loaded (``from_dict``, so also after ``--set``), before any
data is read or any directory is made: unknown keys, values of the wrong type or out of range
(each with its allowed range in the message), an unknown dataset, method, backbone or selection
metric, and the method's own hyperparameters (built once on the backbone's embedding size).
Mistakes in the file or the overrides are ``DataError`` (exit 3); a method, backbone or head
setting that cannot be built is ``ModelError`` (exit 4). A checkpoint's config.json goes
through the same checks of its ``model`` section (``check_model_section``), all as ``ModelError``.

Defaults follow the T-MASS / X-Pool protocol that SPEM also reports (T-MASS Sec. 4,
"Implementation Details"): 12 uniformly sampled frames, batch 32, AdamW with weight decay 0.2,
lr 1e-6 for CLIP and 1e-5 for the heads (3e-5 on MSRVTT), 5 epochs, cosine schedule with a
0.1 warm-up, M = 20 samples at inference, alpha = 1.2 for the support loss.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probret.engine.errors import DataError, ModelError, ProbretError


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
    eval_seed: int = 0  # seed of the inference noise banks at evaluation (same numbers as a bundle's --seed)
    max_eval_texts: int | None = None
    selection_metric: str = "t2v.R1"
    # NegCLIP-style hard negatives (train/negatives.py): groups of interchangeable words; every
    # training caption with one of them also gets a word-swapped negative caption. [] = off.
    negative_swaps: list[list[str]] = field(default_factory=list)
    negative_weight: float = 1.0
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
        """Build and completely check a config (module docstring); raises DataError / ModelError."""
        if not isinstance(raw, dict):
            raise DataError(f"{source}: a config is a JSON object with sections model, data, train")
        raw = copy.deepcopy(raw)
        unknown = set(raw) - {"name", "model", "data", "train"}
        if unknown:
            raise DataError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected name, model, data, train")
        if not isinstance(raw.get("name", ""), str):
            raise DataError(f"{source}: 'name' must be a string")
        sections = {}
        for key, sub in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            values = raw.get(key, {})
            check_section(values, sub, f"{source}: {key}", DataError)
            sections[key] = sub(**values)
        config = cls(name=raw.get("name", "experiment"), **sections)
        config.validate(source=source)
        return config

    def validate(self, *, source: str = "config") -> None:
        """The value checks of ``from_dict`` on a config built in Python (the trainer calls it)."""
        for key, sub in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            check_section(asdict(getattr(self, key)), sub, f"{source}: {key}", DataError)
        check_model(self.model, source=source, error=ModelError)
        check_data(self.data, source=source)
        check_train(self.train, source=source)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
_INT_MAX = 2**63 - 1
#: Allowed [low, high] of numeric keys (None: unbounded); "absurd" sizes are errors, not OOMs.
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "model.num_frames": (1, 1024),
    "data.num_workers": (0, 256),
    "train.seed": (0, _INT_MAX), "train.epochs": (1, 1_000_000), "train.max_steps": (1, _INT_MAX),
    "train.batch_size": (1, 1 << 20), "train.grad_accum": (1, 1 << 16),
    "train.lr_backbone": (0.0, 1.0), "train.lr_head": (0.0, 1.0), "train.weight_decay": (0.0, 10.0),
    "train.warmup_ratio": (0.0, 1.0), "train.grad_clip": (0.0, None),
    "train.eval_every": (1, _INT_MAX), "train.eval_batch_size": (1, 1 << 20), "train.eval_chunk": (1, 1 << 20),
    "train.eval_seed": (0, _INT_MAX), "train.max_eval_texts": (1, _INT_MAX), "train.log_every": (1, _INT_MAX),
    "train.negative_weight": (0.0, 100.0),
}
#: Metrics a checkpoint can be selected on (higher is better: the trainer keeps the maximum).
SELECTION_METRICS = tuple(f"{d}.R{k}" for d in ("t2v", "v2t") for k in (1, 5, 10))
TRAIN_SAMPLING = ("random", "uniform")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _type_ok(value, annotation: str) -> bool:
    """``value`` fits a field annotation written as a string (``int | None``, ``dict[str, Any]``)."""
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None" and value is None:
            return True
        if part == "bool" and isinstance(value, bool):
            return True
        if part == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if part == "str" and isinstance(value, str):
            return True
        if part.startswith("dict") and isinstance(value, dict):
            return True
        if part.startswith("list") and isinstance(value, list):
            return True
        if part in ("Any", "object"):
            return True
    return False


def check_section(values, cls, where: str, error: type[ProbretError]) -> None:
    """``values`` as keyword arguments of dataclass ``cls``: no unknown keys, every value of its
    field's type, finite numbers; raises ``error`` naming the key."""
    if not isinstance(values, dict):
        raise error(f"{where}: must be an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - set(fields))
    if bad:
        raise error(f"{where}: unknown key(s) {bad}; known: {sorted(fields)}")
    for key, value in values.items():
        kind = fields[key].type  # a string under `from __future__ import annotations`, else a type
        annotation = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind)).replace("NoneType", "None")
        if not _type_ok(value, annotation):
            raise error(f"{where}.{key}: expected {annotation}, got {json.dumps(value, default=str)} "
                        f"({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{where}.{key}: must be a finite number, got {value}")


def _check_limits(section: str, values: dict, source: str, error: type[ProbretError]) -> None:
    for key, value in values.items():
        low, high = LIMITS.get(f"{section}.{key}", (None, None))
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise error(f"{source}: {section}.{key}: must be {span}, got {value}")


def check_model(model: "ModelConfig", *, source: str, error: type[ProbretError] = ModelError) -> None:
    """Backbone name, freeze mode, method and head hyperparameters (the head is built once)."""
    _check_limits("model", asdict(model), source, error)
    from probret.train.backbone import parse_freeze
    from probret.train.methods import check_hparams
    from probret.train.weights import check_architecture

    try:
        parse_freeze(model.freeze)
        embed_dim = None
        if not model.backbone.startswith(("hf-hub:", "local-dir:")):
            import open_clip

            embed_dim = open_clip.get_model_config(check_architecture(model.backbone)).get("embed_dim")
        cls = check_hparams(model.method, model.head)
        check_section(model.head, cls.Config, f"model.head ({model.method})", error)
        if embed_dim is not None:
            cls(int(embed_dim), model.num_frames, cls.Config(**model.head))  # the head's own value checks
    except ProbretError as exc:
        raise error(f"{source}: model: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise error(f"{source}: model: {exc}") from exc


def check_data(data: "DataConfig", *, source: str) -> None:
    from probret.train.datasets import DATASETS

    _check_limits("data", asdict(data), source, DataError)
    if data.dataset not in DATASETS:
        raise DataError(f"{source}: data.dataset: unknown dataset {data.dataset!r}; choose one of {', '.join(DATASETS)}")
    if data.train_sampling not in TRAIN_SAMPLING:
        raise DataError(f"{source}: data.train_sampling: must be one of {', '.join(TRAIN_SAMPLING)}, "
                        f"got {data.train_sampling!r}")
    for key in ("root", "train_split", "val_split", "test_split"):
        if not getattr(data, key):
            raise DataError(f"{source}: data.{key}: must not be empty")


def check_train(train: "TrainConfig", *, source: str) -> None:
    _check_limits("train", asdict(train), source, DataError)
    if train.selection_metric not in SELECTION_METRICS:
        raise DataError(f"{source}: train.selection_metric: unknown metric {train.selection_metric!r}; choose one of "
                        f"{', '.join(SELECTION_METRICS)}")
    if not _DEVICE.match(train.device):
        raise DataError(f"{source}: train.device: expected auto, cpu, cuda, cuda:N or mps, got {train.device!r}")
    if not train.out:
        raise DataError(f"{source}: train.out: must not be empty")
    from probret.train.negatives import check_swaps

    why = check_swaps(train.negative_swaps)
    if why:
        raise DataError(f"{source}: train.negative_swaps: {why}")


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
