"""The shipped demo model (importing this module does not import torch): a tiny SPEM trained from scratch on the procedural world.

It is what ``probret demo`` evaluates and what later ``probret search`` uses by default, so
probret works offline out of the box. One command rebuilds it (about 10 minutes on 2 CPU cores):

    make demo-model          # = probret demo-model (cli/demo_model_cmd.py)

which (1) generates the procedural world ``data/procedural`` (``probret synth`` with the world
settings below) unless it exists, (2) trains with ``configs/demo-spem.json`` (selection on the
validation split), and (3) re-saves the best checkpoint with fp16 weights into
``train/pretrained/demo-spem/`` (a few MB; loading casts back to fp32).

The model only knows the procedural world's vocabulary (shapes, colours, motions,
backgrounds); it is a demonstration and a test fixture, not a general video model.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "pretrained" / "demo-spem"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "configs" / "demo-spem.json"
# The world the demo model is trained on; `probret demo` generates a fresh, smaller world of the
# same kind with another seed, so what it shows is held-out data.
WORLD_SETTINGS = {"videos": 600, "seed": 2024, "resolution": (64, 64), "difficulty": 0.25}


def ship(checkpoint: str | Path, dest: str | Path = DEMO_CHECKPOINT) -> Path:
    """Re-save a trained checkpoint with fp16 weights at ``dest``."""
    import torch

    from probret.train.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(checkpoint)
    extra = {k: v for k, v in config.items() if k in ("experiment", "step", "metrics", "selected_on")}
    extra["shipped_from"] = str(checkpoint)
    save_checkpoint(dest, model, extra=extra, dtype=torch.float16)
    return Path(dest)


def build(data: str | Path, out: str | Path, dest: str | Path = DEMO_CHECKPOINT, *, progress: bool = True) -> dict:
    """Generate the world at ``data`` unless it exists, train into the run directory ``out`` and
    ship its best checkpoint to ``dest``. ``out`` must not exist yet: probret removes nothing it
    did not make in this call (delete an old run yourself, or pick another ``out``)."""
    from probret.engine.errors import DataError
    from probret.train.config import apply_overrides, load_config
    from probret.train.trainer import train
    from probret.train.world import generate_world

    data, out = Path(data), Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists (an earlier demo-model run?); remove it or pass another --out")
    config = apply_overrides(load_config(DEMO_CONFIG), [f"data.root={json.dumps(str(data))}",
                                                        f"train.out={json.dumps(str(out))}"])
    if not (data / "world.json").exists():
        generate_world(data, **WORLD_SETTINGS)
    result = train(config, progress=progress)
    shipped = ship(out / "best", dest)
    return {"shipped": str(shipped), "best_step": result.best.get("step"), "val_t2v_R1": result.best.get("value")}
