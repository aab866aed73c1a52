"""``probret eval CKPT --data DIR --split test``: the standard metrics table, JSON, saved sims."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(file_okay=False))
@click.option("--data", "data_root", required=True, help="Dataset root folder.")
@click.option("--dataset", default=None, help="Dataset reader (default: the one the checkpoint was trained on).")
@click.option("--split", default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout instead of a table.")
@click.option("--out", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the metrics JSON here.")
@click.option("--save-sims", type=click.Path(file_okay=False), default=None,
              help="Write sims.npy, text_video_index.npy (and uncertainty.npy) to this folder.")
@click.option("--dsl", is_flag=True, help="Also report metrics after dual-softmax post-processing (separately).")
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=64, show_default=True)
@click.option("--block", type=click.IntRange(1, 1 << 20), default=256, show_default=True,
              help="Texts x videos scored at once (memory only: the scores do not depend on it).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the sampling noise banks (the same numbers as a bundle exported with --seed).")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(0, 256), default=2, show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("-v", "--verbose", is_flag=True, help="Also show libraries' INFO lines (open_clip).")
def eval_cmd(checkpoint, data_root, dataset, split, as_json, json_out, save_sims, dsl, batch_size, block, seed,
             device, workers, quiet, verbose):
    """Evaluate a checkpoint: R@1/5/10, MdR, MnR in both directions.

    The JSON records every video that could not be used (missing or undecodable); they stay in
    the gallery as candidates ranked last, so the protocol keeps its size."""
    from probret.engine.metrics import format_metrics_table
    from probret.train.checkpoint import load_checkpoint
    from probret.train.datasets import load_split
    from probret.train.evaluate import evaluate, save_similarities
    from probret.train.trainer import resolve_device

    from probret.cli.logs import setup_logging

    setup_logging(quiet=quiet, verbose=verbose, stamped=True, details=True)
    dev = resolve_device(device)
    model, config = load_checkpoint(checkpoint, device=dev)
    dataset = dataset or config.get("experiment", {}).get("data", {}).get("dataset", "msrvtt")
    data = load_split(dataset, data_root, split)
    if data.missing:
        click.echo(f"warning: {len(data.missing)} video file(s) missing, e.g. {data.missing[:3]}", err=True)
    result = evaluate(model, data, batch_size=batch_size, block=block, seed=seed, num_workers=workers, device=dev,
                      progress=not quiet, dsl=dsl)
    for video in result.unusable_videos:
        if video["reason"] == "undecodable":
            click.echo(f"warning: could not decode {video['error']}", err=True)
    payload = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "texts": int(result.sims.shape[0]),
               "videos": int(result.sims.shape[1]), "method": config["model"]["method"], "seed": seed,
               "metrics": result.metrics, "unusable_videos": result.unusable_videos}
    if result.dsl_metrics is not None:
        payload["metrics_dsl"] = result.dsl_metrics
    if save_sims:
        save_similarities(result, save_sims, meta={k: payload[k] for k in ("checkpoint", "dataset", "split", "method", "seed")})
    if json_out:
        Path(json_out).write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"{payload['method']} on {dataset}/{split}: {payload['texts']} texts x {payload['videos']} videos")
        click.echo(format_metrics_table(result.metrics))
        if result.dsl_metrics is not None:
            click.echo("\nwith dual-softmax (DSL) post-processing:")
            click.echo(format_metrics_table(result.dsl_metrics))
