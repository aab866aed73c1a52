"""``probret shards merge|manifest|compact``: indexes written independently (one per machine or
folder, docs/scaling.md) merged into one, the manifest of which shard file holds which video,
and compaction. Options -> engine/shards.py -> JSON on stdout, messages on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def shards():
    """Merge, describe and compact indexes."""


@shards.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prefix", "prefixes", multiple=True, help="Path prefix for each source, in order (one per source).")
def merge(dest, sources, prefixes):
    """Copy the committed videos of SOURCES into the index DEST (resumable, no re-encoding)."""
    from probret.engine.shards import merge_indexes

    if prefixes and len(prefixes) != len(sources):
        raise click.BadParameter(f"give one --prefix per source ({len(sources)}), got {len(prefixes)}",
                                 param_hint="--prefix")
    click.echo(json.dumps(merge_indexes(dest, sources, prefixes=list(prefixes) or None, say=_say)))


@shards.command()
@click.argument("index", type=click.Path(path_type=Path))
def manifest(index):
    """Write and print INDEX/manifest.json: which shard file holds which video."""
    from probret.engine.shards import write_manifest

    click.echo(json.dumps(write_manifest(index), indent=1))


@shards.command()
@click.argument("index", type=click.Path(path_type=Path))
def compact(index):
    """Rewrite the live rows of INDEX into fresh shard files, dropping dead space (crash-safe)."""
    from probret.engine.shards import compact as compact_index

    click.echo(json.dumps({"compacted": compact_index(index, say=_say)}))
