"""Checkpoints: a directory with ``config.json`` and ``model.safetensors``; nothing is pickled.

    runs/NAME/best/config.json        everything needed to rebuild the model (+ versions, metrics)
    runs/NAME/best/model.safetensors  the weights (backbone + head)
    runs/NAME/last/...                same layout, the latest step
    runs/NAME/state/                  resume-only training state, kept apart from the model:
        state.json                    step, epoch, best metric, scheduler, optimizer hyperparams, RNGs
        state.safetensors             optimizer moments and torch RNG state as tensors

Every directory is written to a temporary sibling and renamed into place, so a crash while
saving leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from probret.engine import __version__ as probret_version
from probret.engine.errors import ModelError
from probret.train.config import ModelConfig, check_model, check_section

FORMAT = "probret-checkpoint"
FORMAT_VERSION = 1


def _library_versions() -> dict[str, str]:
    import open_clip

    return {"probret": probret_version, "torch": torch.__version__, "open_clip": open_clip.__version__}


def _atomic_dir(target: Path, write) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        # mkdtemp makes a private (0700) directory; a checkpoint is meant to be shared.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for child in tmp.iterdir():
            os.chmod(child, 0o666 & ~umask)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(path: str | Path, model, *, extra: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (a RetrievalModel) to the checkpoint directory ``path``.

    ``dtype=torch.float16`` stores floating-point weights in half precision (the shipped demo
    model uses it to stay a few MB); loading casts them back to the model's dtype."""
    model_config = asdict(model.config)
    model_config["head"] = model.head.config_dict()  # resolved: defaults written out explicitly
    backbone = model.backbone
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _library_versions(),
        "model": model_config,
        "backbone": {
            "embed_dim": backbone.embed_dim,
            "image_size": backbone.image_size,
            "image_mean": list(backbone.image_mean),
            "image_std": list(backbone.image_std),
            "context_length": backbone.context_length,
        },
        **(extra or {}),
    }

    def write(tmp: Path):
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        if dtype is None:
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        else:
            state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
                     for k, v in model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT, "dtype": str(dtype)})

    _atomic_dir(Path(path), write)
    return Path(path)


def read_checkpoint_config(path: str | Path) -> dict:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: not a probret checkpoint (no config.json); pass the directory written by probret-train, e.g. runs/NAME/best")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config_file}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ModelError(f"{config_file}: not a probret checkpoint config (format={found!r})")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ModelError(f"{config_file}: format_version must be a non-negative integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelError(f"{config_file}: written by a newer probret (format {version}); upgrade probret")
    check_checkpoint_config(config, source=str(config_file))
    return config


#: The ``backbone`` section: what export and the runtime's preprocessing read (key: (low, high)).
BACKBONE_LIMITS = {"embed_dim": (1, 65536), "context_length": (1, 100_000)}
IMAGE_SIZE_LIMITS = (1, 16384)


def check_checkpoint_config(config: dict, *, source: str) -> None:
    """The ``model`` and ``backbone`` sections of a checkpoint's config.json, as strictly as a
    training config (train/config.py), every mistake a ModelError naming the key. Other top-level
    keys are free-form metadata (metrics, the experiment, ``zero_shot``) and are not read to
    rebuild the model."""
    if not isinstance(config.get("model"), dict):
        raise ModelError(f"{source}: 'model' must be an object (the model settings)")
    check_section(config["model"], ModelConfig, f"{source}: model", ModelError)
    check_model(ModelConfig(**config["model"]), source=source, error=ModelError)
    section = config.get("backbone")
    if section is None:
        return
    if not isinstance(section, dict):
        raise ModelError(f"{source}: 'backbone' must be an object")
    known = {"embed_dim", "image_size", "image_mean", "image_std", "context_length"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ModelError(f"{source}: backbone: unknown key(s) {unknown}; known: {sorted(known)}")
    for key, (low, high) in BACKBONE_LIMITS.items():
        value = section.get(key)
        if key in section and not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise ModelError(f"{source}: backbone.{key}: must be an integer in [{low}, {high}], got {value!r}")
    if "image_size" in section:
        _check_image_size(section["image_size"], source)
    for key in ("image_mean", "image_std"):
        value = section.get(key)
        if key in section and not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise ModelError(f"{source}: backbone.{key}: must be a list of 3 finite numbers, got {value!r}")
    if "image_std" in section and min(section["image_std"]) <= 0:
        raise ModelError(f"{source}: backbone.image_std: must be positive, got {section['image_std']}")


def _check_image_size(value, source: str) -> None:
    sizes = value if isinstance(value, list) else [value]
    low, high = IMAGE_SIZE_LIMITS
    if not (1 <= len(sizes) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
                                         for v in sizes)):
        raise ModelError(f"{source}: backbone.image_size: must be an integer (or [height, width]) in "
                         f"[{low}, {high}], got {value!r}")


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu"):
    """Rebuild a RetrievalModel from a checkpoint directory (weights via safetensors only)."""
    from probret.train.model import RetrievalModel

    path = Path(path)
    config = read_checkpoint_config(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path}: model.safetensors is missing")
    model_config = ModelConfig(**config["model"])
    model = RetrievalModel.from_config(model_config, load_pretrained=False)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelError(f"{weights}: cannot be read ({exc})") from exc
    if missing or unexpected:
        raise ModelError(
            f"{weights}: does not match the model in config.json (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.to(device).eval()
    return model, config


# -- training state (resume) ------------------------------------------------------------------------

def save_train_state(path: str | Path, *, optimizer, scheduler, step: int, epoch: int, step_in_epoch: int,
                     best: dict, extra: dict | None = None) -> None:
    opt_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "best": best,
        "scheduler": scheduler.state_dict(),
        "optimizer_param_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        **(extra or {}),
    }

    def write(tmp: Path):
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, default=_json_default) + "\n")

    _atomic_dir(Path(path), write)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if torch.is_tensor(value):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def load_train_state(path: str | Path, *, optimizer, scheduler) -> dict:
    path = Path(path)
    meta_file, tensor_file = path / "state.json", path / "state.safetensors"
    if not (meta_file.is_file() and tensor_file.is_file()):
        raise ModelError(f"{path}: no training state to resume from (state.json / state.safetensors missing)")
    meta = json.loads(meta_file.read_text())
    tensors = load_file(str(tensor_file))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("optimizer_scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    py = meta["rng_python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = meta["rng_numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    return meta
