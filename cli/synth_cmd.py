"""``probret synth OUT``: generate a procedural video world (see docs/world.md).

Thin by design: parse and validate options, show a tqdm bar on stderr, print a short summary on
stdout. Everything else is ``probret.train.world.generate_world`` (numpy + PyAV, no torch, so
this command starts fast and works without the training extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from probret.cli.options import ResolutionType

from probret.engine.errors import DataError


def _parse_splits(value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise DataError(f"--splits must be three comma-separated fractions train,val,test (e.g. 0.7,0.1,0.2), got {value!r}")
    return parts  # type: ignore[return-value]


def _parse_range(option: str, value: str, kind=float):
    try:
        lo, hi = (kind(x) for x in value.split(","))
    except ValueError:
        raise DataError(f"{option} must be MIN,MAX (e.g. {'60,300' if kind is float else '3,6'}), got {value!r}") from None
    return lo, hi


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--videos", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of videos.")
@click.option("--seed", type=int, default=0, show_default=True, help="Everything is a function of the seed.")
@click.option("--resolution", type=ResolutionType(), default="112x112", show_default=True,
              help="WIDTHxHEIGHT, even numbers from 32 to 4096.")
@click.option("--frames", type=click.IntRange(min=4), default=32, show_default=True, help="Frames per video.")
@click.option("--fps", type=click.IntRange(min=1), default=None, help="Frames per second.  [default: 8; 2 with --long]")
@click.option("--difficulty", default="medium", show_default=True,
              help="easy, medium, hard, or a number in [0, 1] (0 = easy, 0.5 = medium, 1 = hard).")
@click.option("--splits", default="0.7,0.1,0.2", show_default=True, help="train,val,test fractions.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes rendering videos (the output does not depend on it).")
@click.option("--benchmark", is_flag=True,
              help="Quality-benchmark knobs (protocol v2, docs/world.md): dominant backgrounds rarely named in "
                   "training captions, val/test queries that never name them, a fixed full/partial/short mix.")
@click.option("--long", "long_videos", is_flag=True,
              help="Long videos (all in the test split) with several events at known times and one query per "
                   "event, for moment search (docs/world.md); --frames is then ignored.")
@click.option("--duration", default="60,300", show_default=True, help="With --long: MIN,MAX seconds per video.")
@click.option("--events", default="3,6", show_default=True, help="With --long: MIN,MAX events per video.")
@click.option("--overwrite", is_flag=True, help="Replace a world already in OUT (other files there are kept).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def synth(out: Path, videos: int, seed: int, resolution: tuple[int, int], frames: int, fps: int | None,
          difficulty: str, splits: str, workers: int, benchmark: bool, long_videos: bool, duration: str, events: str,
          overwrite: bool, quiet: bool) -> None:
    """Generate a procedural video world in OUT: real H.264 mp4 files plus MSRVTT-format
    annotations (OUT/procedural_data.json, train/val/test.csv) and OUT/world.json (every
    video's attributes and, for every caption, the videos it truly describes)."""
    from tqdm import tqdm

    from probret.train.world import BenchmarkKnobs, LongVideos, generate_long_world, generate_world, parse_difficulty

    size = resolution
    fractions = _parse_splits(splits)
    level = parse_difficulty(difficulty)  # fail on a bad value before touching OUT
    long = None
    if long_videos:
        fps = fps or 2
        long = LongVideos(duration=_parse_range("--duration", duration), fps=fps,
                          events=_parse_range("--events", events, int))
        long.check()
    fps = fps or 8
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty; pass --overwrite to replace the world in it")

    bar = tqdm(total=videos, unit="video", desc="synth", disable=quiet, file=sys.stderr,
               dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        if long is not None:
            summary = generate_long_world(out, videos=videos, seed=seed, resolution=size, difficulty=level,
                                          long=long, overwrite=overwrite, workers=workers, progress=progress)
        else:
            summary = generate_world(out, videos=videos, seed=seed, resolution=size, frames=frames, fps=fps,
                                     difficulty=level, splits=fractions, overwrite=overwrite, workers=workers,
                                     progress=progress, benchmark=BenchmarkKnobs() if benchmark else None)
    finally:
        bar.close()

    rate = summary.total_videos / summary.seconds if summary.seconds > 0 else float("inf")
    length = f"{duration.replace(',', '-')} s" if long is not None else f"{frames} frames"
    click.echo(f"world: {summary.out_dir}  (seed {summary.seed}, difficulty {summary.difficulty}, "
               f"{size[0]}x{size[1]}, {length} @ {fps} fps)")
    click.echo("videos: " + ", ".join(f"{k} {n}" for k, n in summary.videos.items())
               + f"  (total {summary.total_videos})")
    click.echo("captions: " + ", ".join(f"{k} {n}" for k, n in summary.captions.items()))
    if summary.eval_unique:
        click.echo("eval captions unique in their split: "
                   + ", ".join(f"{k} {100 * f:.0f}%" for k, f in summary.eval_unique.items()))
    click.echo(f"disk: {_human_bytes(summary.disk_bytes)}  time: {summary.seconds:.1f} s ({rate:.0f} videos/s)")
