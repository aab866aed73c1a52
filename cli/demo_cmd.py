"""``probret demo`` (the README's main command): the real search path on a fresh folder.

1. generate a procedural folder of videos with known captions (train/world.py, numpy + PyAV);
2. index it with the shipped demo model (exported to an ONNX bundle once, then cached);
3. search it with a few of its own captions, the most specific ones (each truly describes
   exactly one video of the folder), and print the hits, marking the right video.

Everything after step 1 is what ``probret search FOLDER QUERY`` does (the engine facade,
``probret.engine.open_folder``); the commands to repeat it
by hand are printed at the end. A second run reuses the folder and the index (nothing is
encoded again).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from probret.cli.options import BoundType
from probret.engine import DEVICES, TOP_K


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
@click.option("--videos", default=40, show_default=True, type=click.IntRange(min=2), help="Videos in the demo folder.")
@click.option("--seed", default=7, show_default=True,
              help="World seed (the demo model was trained on seed 2024, so these videos are new to it).")
@click.option("--queries", "n_queries", default=4, show_default=True, type=click.IntRange(min=1),
              help="Captions to search for.")
@click.option("--top-k", default=3, show_default=True, type=BoundType(TOP_K), help="Hits shown per query.")
@click.option("--model", default=None, help="Another model (bundle, checkpoint, NAME:TAG) instead of the demo model.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
def demo(out, videos, seed, n_queries, top_k, model, device):
    """Generate a folder of procedural videos, index it, search it with its own captions."""
    from probret.cli.logs import setup_logging
    from probret.engine import open_folder
    from probret.export.resolve import resolve_model

    setup_logging()
    started = time.time()
    world = out / "world"
    folder = world / "videos"
    _ensure_world(world, videos, seed, started)
    resolved = resolve_model(model)
    t = time.time()
    with open_folder(folder, bundle=resolved.bundle, index=out / "index", device=device, model=resolved.to_meta(),
                     progress=None) as vf:
        report = vf.last_update
        if report.encoded_videos:
            click.echo(f"2. indexed {report.encoded_videos} videos with the {resolved.description} in "
                       f"{time.time() - t:.1f} s ({report.videos_per_s:.1f} videos/s) -> {vf.index_dir}")
        else:
            click.echo(f"2. index {vf.index_dir} is up to date ({report.unchanged} videos, nothing to encode)")
        queries = _pick_queries(world, n_queries, seed)
        t = time.time()
        results = vf.search([q for q, _ in queries], top_k=top_k)
        ms = (time.time() - t) * 1000
        click.echo(f"3. searched {len(vf)} videos for {len(queries)} of their captions ({ms:.0f} ms):")
    right = sum(_show(query, truth, r, top_k) for (query, truth), r in zip(queries, results))
    click.echo(f"\nright video first for {right} of {len(queries)} queries; done in {time.time() - started:.1f} s")
    model_arg = f" --model {model}" if model else ""
    click.echo(f"try it yourself:  probret search {folder} \"a red circle\" --index {out / 'index'}{model_arg}")


def _ensure_world(world: Path, videos: int, seed: int, started: float) -> None:
    from tqdm.auto import tqdm

    from probret.train.demo_model import WORLD_SETTINGS
    from probret.train.world import generate_world

    folder = world / "videos"
    if _world_ok(world, videos, seed):
        click.echo(f"1. reusing the {videos} videos in {folder}")
        return
    with tqdm(total=videos, desc="synth", unit="video", file=sys.stderr) as bar:
        # Same kind of world as the demo model was trained on (train/demo_model.WORLD_SETTINGS),
        # but another seed: every video shown here is unseen.
        generate_world(world, videos=videos, seed=seed, resolution=(64, 64), splits=(0.0, 0.0, 1.0),
                       difficulty=WORLD_SETTINGS["difficulty"],
                       overwrite=True, progress=lambda done, total: bar.update(done - bar.n))
    click.echo(f"1. generated {videos} videos with known captions in {folder} ({time.time() - started:.1f} s)")


def _show(query: str, truth: str, result, top_k: int) -> bool:
    """Print one query's hits, marking the right video; True when it is first."""
    from probret.cli.output import moment_text, table

    click.echo(f"\nquery: {query}")
    conf = bool(result.hits) and result.hits[0].confidence is not None  # the model carries a calibrator
    rows = [[str(h.rank), f"{h.score:.4f}"] + ([f"{h.confidence:.2f}"] if conf else [])
            + ["-" if h.uncertainty is None else f"{h.uncertainty:.4f}", h.display_path, moment_text(h.moment),
               "<- the right video" if h.path == truth else ""] for h in result.hits]
    table(["rank", "score"] + (["confidence"] if conf else []) + ["uncertainty", "path", "moment", ""], rows,
          right=(0, 1, 2, 3) if conf else (0, 1, 2))
    if all(h.path != truth for h in result.hits):
        click.echo(f"  (the right video, {truth}, is not in the top {top_k})")
    return bool(result.hits and result.hits[0].path == truth)
