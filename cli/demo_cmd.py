"""``probret demo`` (the README's main command): the real search path on a fresh folder.

1. generate a procedural folder of videos with known captions (train/world.py, numpy + PyAV);
2. index it with the shipped demo model (exported to an ONNX bundle once, then cached);
3. search it with a few of its own captions, the most specific ones (each truly describes
   exactly one video of the folder), and print the hits, marking the right video.

Everything after step 1 is what ``probret search FOLDER QUERY`` does; the commands to repeat it
by hand are printed at the end. A second run reuses the folder and the index (nothing is
encoded again).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click


def _world_ok(world: Path, videos: int, seed: int) -> bool:
    try:
        settings = json.loads((world / "world.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return False
    return settings.get("videos") == videos and settings.get("seed") == seed


def _pick_queries(world: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """(caption, its only true video's file name) for ``n`` captions that match exactly one video,
    the evaluation captions first, drawn reproducibly from ``seed``."""
    import numpy as np

    data = json.loads((world / "world.json").read_text())
    caps = [(c["caption"], c["matches"][0], c.get("eval", False)) for c in data["captions"].values()
            if len(c.get("matches", [])) == 1]
    caps.sort(key=lambda c: (not c[2], c[0]))
    rng = np.random.default_rng(seed)
    evals = [c for c in caps if c[2]] or caps
    picks = rng.choice(len(evals), size=min(n, len(evals)), replace=False) if evals else []
    return [(evals[i][0], f"{evals[i][1]}.mp4") for i in sorted(picks)]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo folder and its index are written.")
@click.option("--videos", default=40, show_default=True, help="Videos in the demo folder.")
@click.option("--seed", default=7, show_default=True,
              help="World seed (the demo model was trained on seed 2024, so these videos are new to it).")
@click.option("--queries", "n_queries", default=4, show_default=True, help="Captions to search for.")
@click.option("--top-k", default=3, show_default=True, help="Hits shown per query.")
@click.option("--model", default=None, help="Another model (bundle, checkpoint, NAME:TAG) instead of the demo model.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda", "tensorrt")), default="auto", show_default=True)
def demo(out, videos, seed, n_queries, top_k, model, device):
    """Generate a folder of procedural videos, index it, search it with its own captions."""
    from tqdm.auto import tqdm

    from probret.cli.search_cmd import _moment, _setup_logging, _table
    from probret.engine.errors import DataError
    from probret.engine.index import IndexReader, IndexSettings, IndexWriter
    from probret.engine.models import resolve_model
    from probret.engine.pipeline import PipelineOptions, update_index
    from probret.engine.runtime import BundleRuntime
    from probret.engine.search import Searcher
    from probret.train.demo_model import WORLD_SETTINGS
    from probret.train.world import generate_world

    _setup_logging(False)
    if videos < 2:
        raise DataError("--videos must be at least 2")
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    started = time.time()
    world = out / "world"
    folder = world / "videos"
    if not _world_ok(world, videos, seed):
        with tqdm(total=videos, desc="synth", unit="video", file=sys.stderr) as bar:
            # Same kind of world as the demo model was trained on (train/demo_model.WORLD_SETTINGS),
            # but another seed: every video shown here is unseen.
            generate_world(world, videos=videos, seed=seed, resolution=(64, 64), splits=(0.0, 0.0, 1.0),
                           difficulty=WORLD_SETTINGS["difficulty"],
                           overwrite=True, progress=lambda done, total: bar.update(done - bar.n))
        click.echo(f"1. generated {videos} videos with known captions in {folder} ({time.time() - started:.1f} s)")
    else:
        click.echo(f"1. reusing the {videos} videos in {folder}")

    resolved = resolve_model(model, say=say)
    rt = BundleRuntime(resolved.bundle, device=device)
    t = time.time()
    b = resolved.bundle
    settings = IndexSettings.for_bundle(b)
    index_dir = out / "index"
    with IndexWriter(index_dir, settings, model=resolved.to_meta(), say=say) as writer:
        report = update_index(folder, rt, writer, PipelineOptions(), say=say)
    if report.encoded_videos:
        click.echo(f"2. indexed {report.encoded_videos} videos with the {resolved.description} in "
                   f"{time.time() - t:.1f} s ({report.videos_per_s:.1f} videos/s) -> {index_dir}")
    else:
        click.echo(f"2. index {index_dir} is up to date ({report.unchanged} videos, nothing to encode)")

    queries = _pick_queries(world, n_queries, seed)
    with IndexReader(index_dir) as reader:
        searcher = Searcher(rt, reader, say=say)
        t = time.time()
        results = searcher.search([q for q, _ in queries], top_k=top_k)
        ms = (time.time() - t) * 1000
    click.echo(f"3. searched {len(reader.videos)} videos for {len(queries)} of their captions ({ms:.0f} ms):")
    right = 0
    for (query, truth), r in zip(queries, results):
        click.echo(f"\nquery: {query}")
        rows = []
        for h in r.hits:
            mark = "<- the right video" if h.path == truth else ""
            rows.append([str(h.rank), f"{h.score:.4f}", "-" if h.uncertainty is None else f"{h.uncertainty:.4f}",
                         h.path, _moment(h.start, h.end), mark])
        right += bool(r.hits and r.hits[0].path == truth)
        _table(["rank", "score", "uncertainty", "path", "moment", ""], rows, right=(0, 1, 2))
        if all(h.path != truth for h in r.hits):
            click.echo(f"  (the right video, {truth}, is not in the top {top_k})")
    click.echo(f"\nright video first for {right} of {len(queries)} queries; done in {time.time() - started:.1f} s")
    model_arg = f" --model {model}" if model else ""
    click.echo(f"try it yourself:  probret search {folder} \"a red circle\" --index {index_dir}{model_arg}")
