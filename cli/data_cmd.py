"""``probret data``: dataset utilities (check a layout, convert MSVD's caption pickle to JSON)."""

from __future__ import annotations

import json
import warnings

import click

from probret.train.datasets import DATASETS  # numpy only: `probret --help` stays torch-free


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data():
    """Dataset utilities: check that a dataset folder is laid out as probret expects, convert
    CLIP4Clip's MSVD caption pickle. Layouts and sources: docs/datasets.md."""


@data.command("convert-msvd")
@click.argument("pickle_path", metavar="PICKLE", type=click.Path(dir_okay=False))
@click.argument("json_path", metavar="[JSON]", required=False, type=click.Path(dir_okay=False))
def convert_msvd(pickle_path, json_path):
    """Convert CLIP4Clip's raw-captions.pkl to raw-captions.json (beside it unless JSON is given).

    The pickle is read with an unpickler that can build only plain containers and strings, so a
    pickle that would run code is refused (exit 3)."""
    from probret.train.datasets import convert_msvd_pickle

    out = convert_msvd_pickle(pickle_path, json_path)
    n = len(json.loads(out.read_text(encoding="utf-8")))
    click.echo(f"wrote {out} ({n} videos)")


@data.command("check")
@click.argument("dataset", type=click.Choice(DATASETS))
@click.argument("root", type=click.Path(file_okay=False))
@click.argument("split")
@click.option("--video-dir", default=None, help="Video folder, when it is not the dataset's default.")
def check(dataset, root, split, video_dir):
    """Load a split and print what was found (texts, videos, missing files)."""
    from probret.train.datasets import DatasetWarning, load_split

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        s = load_split(dataset, root, split, video_dir=video_dir)
    click.echo(f"{s.name}/{s.split}: {len(s.texts)} texts, {len(s.videos)} videos, {len(s.missing)} missing")
    for path in s.missing[:10]:
        click.echo(f"  missing: {path}")
