"""``probret demo-model``: rebuild the shipped demo model (``make demo-model`` runs it)."""

from __future__ import annotations

import json

import click

from probret.train.demo_model import DEMO_CHECKPOINT, REPO_ROOT


@click.command("demo-model", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", default=str(REPO_ROOT / "data" / "procedural"), show_default=True,
              help="Procedural world to train on (generated there unless it exists).")
@click.option("--out", default=str(REPO_ROOT / "runs" / "demo-spem"), show_default=True,
              help="Run directory; must not exist yet.")
@click.option("--dest", default=str(DEMO_CHECKPOINT), show_default=True, help="Where the fp16 checkpoint is shipped.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_model(data, out, dest, quiet):
    """Train the tiny SPEM demo model on the procedural world (about 10 minutes on 2 CPU cores)
    with configs/demo-spem.json and ship its best checkpoint with fp16 weights."""
    from probret.cli.logs import setup_logging
    from probret.train.demo_model import build

    setup_logging(verbose=False, quiet=quiet)
    click.echo(json.dumps(build(data, out, dest, progress=not quiet), indent=2))
