"""``probret-train`` / ``probret train``: parse, apply overrides, run the trainer, print a summary."""

from __future__ import annotations

import json
import logging
import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="JSON config (see configs/).")
@click.option("--data", "data_root", default=None, help="Dataset root folder (overrides data.root).")
@click.option("--dataset", default=None, help="Dataset reader: msrvtt, didemo, msvd, lsmdc, vatex, charades, procedural.")
@click.option("--method", default=None, help="Retrieval method, a registered name (spem, tmass, ...; an unknown one lists them all).")
@click.option("--out", default=None, help="Run directory (overrides train.out).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last saved state.")
@click.option("--stop-after", type=int, default=None,
              help="Save and exit after this many steps of the full schedule (resume later with --resume).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.lr_head=3e-5 --set model.head.alpha=1.0 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(config_path, data_root, dataset, method, out, max_steps, resume, stop_after, overrides, quiet):
    """Fine-tune a probabilistic text-video retrieval model."""
    from probret.train.config import apply_overrides, load_config
    from probret.train.trainer import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    config = load_config(config_path)
    shortcuts = [f"data.root={json.dumps(data_root)}" if data_root else None,
                 f"data.dataset={json.dumps(dataset)}" if dataset else None,
                 f"model.method={json.dumps(method)}" if method else None,
                 f"train.out={json.dumps(out)}" if out else None,
                 f"train.max_steps={max_steps}" if max_steps is not None else None]
    config = apply_overrides(config, [s for s in shortcuts if s] + list(overrides))
    result = run_training(config, resume=resume, progress=not quiet, stop_after=stop_after)
    best = result.best
    summary = {"out": str(result.out), "steps": result.steps, "best_step": best.get("step"),
               "selection_metric": best.get("metric"), "best_value": best.get("value"),
               "best_checkpoint": str(result.out / "best")}
    click.echo(json.dumps(summary, indent=2))


def main() -> None:
    """Console entry point of ``probret-train``."""
    from probret.cli.main import run_guarded

    run_guarded(train, prog_name="probret-train")


if __name__ == "__main__":
    main()
