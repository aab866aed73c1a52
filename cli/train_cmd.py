"""``probret-train`` / ``probret train``: parse, apply overrides, run the trainer, print a summary.

The config is loaded and completely validated (train/config.py) before any data is read or any
directory is made, so a mistake costs one line and exit code 3 (config / data) or 4 (method,
backbone, head setting). Ctrl-C or SIGTERM saves a resumable state and prints the command that
continues the run (exit 130 / 143, the shells' convention for those signals)."""

from __future__ import annotations

import json
import sys

import click

from probret.cli.logs import setup_logging

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="JSON config (see configs/).")
@click.option("--data", "data_root", default=None, help="Dataset root folder (overrides data.root).")
@click.option("--dataset", default=None, help="Dataset reader: msrvtt, didemo, msvd, lsmdc, vatex, charades, procedural.")
@click.option("--method", default=None,
              help="Retrieval method, a registered name (spem, tmass, ...; an unknown one lists them all).")
@click.option("--out", default=None, help="Run directory (overrides train.out).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last saved state.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Save and exit after this many steps of the full schedule (resume later with --resume).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.lr_head=3e-5 --set model.head.alpha=1.0 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bars and no per-evaluation lines.")
@click.option("-v", "--verbose", is_flag=True, help="Also show libraries' INFO lines (open_clip).")
def train(config_path, data_root, dataset, method, out, max_steps, resume, stop_after, overrides, quiet, verbose):
    """Fine-tune a probabilistic text-video retrieval model."""
    from probret.train.config import apply_overrides, load_config
    from probret.train.trainer import train as run_training

    # train's --quiet hides progress and per-evaluation lines; -v still asks for libraries' lines
    setup_logging(verbose=verbose, quiet=quiet and not verbose, stamped=True, details=True)
    config = load_config(config_path)
    shortcuts = [f"data.root={json.dumps(data_root)}" if data_root else None,
                 f"data.dataset={json.dumps(dataset)}" if dataset else None,
                 f"model.method={json.dumps(method)}" if method else None,
                 f"train.out={json.dumps(out)}" if out else None,
                 f"train.max_steps={max_steps}" if max_steps is not None else None]
    config = apply_overrides(config, [s for s in shortcuts if s] + list(overrides))
    result = run_training(config, resume=resume, progress=not quiet, stop_after=stop_after)
    if not result.is_main:
        return  # rank 0 reports for the whole job
    best = result.best
    summary = {"out": str(result.out), "steps": result.steps, "best_step": best.get("step"),
               "selection_metric": best.get("metric"), "best_value": best.get("value"),
               "best_checkpoint": str(result.out / "best")}
    if result.stopped_by:
        summary.update(stopped_by=result.stopped_by, resume_command=result.resume_command)
    click.echo(json.dumps(summary, indent=2))
    if result.stopped_by:
        click.echo(f"stopped ({result.stopped_by}) at step {result.steps}; resume with:\n  {result.resume_command}",
                   err=True)
        if result.stopped_by in SIGNAL_EXIT_CODES:
            sys.exit(SIGNAL_EXIT_CODES[result.stopped_by])


def main() -> None:
    """Console entry point of ``probret-train``."""
    from probret.cli.main import run_guarded

    run_guarded(train, prog_name="probret-train")


if __name__ == "__main__":
    main()
