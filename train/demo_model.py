"""The shipped demo model (importing this module does not import torch): a tiny SPEM trained from scratch on the procedural world.

It is what ``probret demo`` evaluates and what later ``probret search`` uses by default, so
probret works offline out of the box. One command rebuilds it (about 10 minutes on 2 CPU cores):

    make demo-model          # = python -m probret.train.demo_model

which (1) generates the procedural world ``data/procedural`` (``probret synth`` with the world
settings below) unless it exists, (2) trains with ``configs/demo-spem.json`` (selection on the
validation split), and (3) re-saves the best checkpoint with fp16 weights into
``train/pretrained/demo-spem/`` (a few MB; loading casts back to fp32).

The model only knows the procedural world's vocabulary (shapes, colours, motions,
backgrounds); it is a demonstration and a test fixture, not a general video model.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT / "data" / "procedural"))
    parser.add_argument("--out", default=str(REPO_ROOT / "runs" / "demo-spem"))
    parser.add_argument("--dest", default=str(DEMO_CHECKPOINT))
    args = parser.parse_args(argv)

    from probret.train.config import apply_overrides, load_config
    from probret.train.trainer import train
    from probret.train.world import generate_world

    data = Path(args.data)
    if not (data / "world.json").exists():
        generate_world(data, **WORLD_SETTINGS)
    config = apply_overrides(load_config(DEMO_CONFIG), [f"data.root={json.dumps(str(data))}",
                                                        f"train.out={json.dumps(args.out)}"])
    if Path(args.out).exists():
        shutil.rmtree(args.out)
    result = train(config, progress=True)
    dest = ship(Path(args.out) / "best", args.dest)
    print(json.dumps({"shipped": str(dest), "best_step": result.best.get("step"),
                      "val_t2v_R1": result.best.get("value")}, indent=2))


if __name__ == "__main__":
    main()
