"""``probret demo`` (the README's main command): a fresh procedural world, the shipped demo
model, the standard metrics on the world's test split, and a few example queries."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, help="Where the demo world is written.")
@click.option("--videos", default=200, show_default=True, help="Videos in the demo world.")
@click.option("--seed", default=7, show_default=True,
              help="World seed (the demo model was trained on seed 2024, so this is unseen data).")
@click.option("--examples", default=3, show_default=True, help="Example queries to show.")
def demo(out, videos, seed, examples):
    """Generate a procedural world and evaluate the shipped demo model on it."""
    import numpy as np
    from tqdm.auto import tqdm

    from probret.engine.errors import ModelError
    from probret.engine.metrics import format_metrics_table
    from probret.train.checkpoint import load_checkpoint
    from probret.train.datasets import load_split
    from probret.train.demo_model import DEMO_CHECKPOINT
    from probret.train.evaluate import evaluate
    from probret.train.world import generate_world

    world = Path(out) / "world"
    started = time.time()
    if not (world / "world.json").exists():
        with tqdm(total=videos, desc="synth", unit="video", file=sys.stderr) as bar:
            generate_world(world, videos=videos, seed=seed, resolution=(64, 64), overwrite=True,
                           progress=lambda done, total: bar.update(done - bar.n))
    click.echo(f"world: {world} ({videos} videos, seed {seed}, {time.time() - started:.1f} s)")
    if not (DEMO_CHECKPOINT / "model.safetensors").exists():
        raise ModelError(f"{DEMO_CHECKPOINT}: the shipped demo model is missing; rebuild it with `make demo-model`")
    model, config = load_checkpoint(DEMO_CHECKPOINT)
    split = load_split("procedural", world, "test")
    result = evaluate(model, split, progress=True)
    click.echo(f"\nmodel: shipped demo ({config['model']['method']} on {config['model']['backbone']}), "
               f"test split: {len(split.texts)} captions x {len(split.videos)} videos")
    click.echo(format_metrics_table(result.metrics))
    for i in range(min(examples, len(split.texts))):
        order = np.argsort(-result.sims[i])[:3]
        click.echo(f"\nquery: {split.texts[i]!r}")
        for rank, j in enumerate(order, 1):
            mark = "<- correct" if j == result.text_video_index[i] else ""
            unc = f"  uncertainty {result.uncertainty[i, j]:.3f}" if result.uncertainty is not None else ""
            click.echo(f"  {rank}. {split.videos[j].video_id:10s} score {result.sims[i, j]:.3f}{unc} {mark}")
    click.echo(f"\ndone in {time.time() - started:.1f} s")
