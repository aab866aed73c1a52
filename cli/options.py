"""Click parameter types derived from engine/options.py, so that the CLI, the Python API and
``probret serve`` refuse a bad value with the same message (the flag and its allowed range)."""

from __future__ import annotations

import click

from probret.engine.errors import UsageError
from probret.engine.options import Bound

__all__ = ["BoundType"]


class BoundType(click.ParamType):
    """A number checked by an engine :class:`~probret.engine.options.Bound`."""

    def __init__(self, bound: Bound):
        self.bound = bound
        self.name = "integer" if bound.integer else "number"

    def convert(self, value, param, ctx):
        try:
            return self.bound.check(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "N" if self.bound.integer else "X"


def read_lines(path: str, what: str) -> list[str]:
    """The non-empty lines of ``path`` ('-': stdin), for --queries / --captions."""
    import sys
    from pathlib import Path

    from probret.engine import DataError

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path}: unreadable ({exc})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{what} {path}: no non-empty line")
    return lines


def _apply(options):
    def decorate(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return decorate


def index_options(fn):
    """The options ``probret index`` and ``probret search`` share (what to index, and how)."""
    from pathlib import Path

    from probret.engine import BATCH, DEFAULT_WINDOW, DEVICES, RESIZE_MODES, WINDOW, WORKERS

    return _apply([
        click.option("--model", "model", default=None, metavar="M",
                     help="Bundle dir, checkpoint dir, or open_clip NAME:TAG (zero-shot). Default: the index's model, "
                          "else the shipped demo model."),
        click.option("--index", "index_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
                     help="Index directory (default: FOLDER/.probret-index)."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where the model runs (auto: TensorRT > CUDA > CPU, what is installed and present)."),
        click.option("--window", type=BoundType(WINDOW), default=None,
                     help=f"Seconds per segment of long videos, {WINDOW.describe()}. Default: the index's window, "
                          f"else {DEFAULT_WINDOW:g}; a change rebuilds the index."),
        click.option("--resize", type=click.Choice(RESIZE_MODES), default=None,
                     help="Frame resizing: exact (as in training), decoder (FFmpeg, fast), auto (decoder for large "
                          "frames). Default: the index's, else auto."),
        click.option("--half/--full", default=None,
                     help="Store features as float16 (--half, the default for a new index: half the disk, rankings "
                          "measured unchanged, docs/benchmarks_memory.md) or float32 (--full). Default: the "
                          "index's; a change rebuilds the index."),
        click.option("--workers", type=BoundType(WORKERS), default=None,
                     help=f"Decoding threads, {WORKERS.describe()} (the default)."),
        click.option("--batch", type=BoundType(BATCH), default=None, help="Segments per encoder call (default 16)."),
        click.option("--rebuild", is_flag=True, help="Discard the index and build it again."),
        click.option("--wait", is_flag=True, help="If another process is writing the index, wait for it instead of failing."),
        click.option("--retry-failed", is_flag=True, help="Try again files that failed to decode before."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages, the library's included "
                                                         "(warnings still shown)."),
        click.option("--verbose", "-v", is_flag=True, help="Log details (providers, decoding warnings)."),
    ])(fn)


def search_options(fn):
    """The options of ``probret search`` beyond :func:`index_options`."""
    from pathlib import Path

    from probret.engine import ANN_CANDIDATES, MIN_CONFIDENCE, MOMENTS, TOP_K

    return _apply([
        click.option("--top-k", "-k", type=BoundType(TOP_K), default=10, show_default=True, help="Results per query."),
        click.option("--moments", type=BoundType(MOMENTS), default=1, show_default=True,
                     help="Moments shown per video (its best matching stretches, best first)."),
        click.option("--min-confidence", type=BoundType(MIN_CONFIDENCE), default=None,
                     help="Hide hits below this calibrated confidence (models that carry a calibrator)."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout."),
        click.option("--paths-only", is_flag=True, help="Only the paths of the hits, one per line (for shell pipes)."),
        click.option("-0", "--null", "nul", is_flag=True,
                     help="With --paths-only: end each path with NUL and print it as raw bytes (for xargs -0)."),
        click.option("--queries", "queries_file", default=None, metavar="FILE",
                     help="More queries, one per line ('-' reads stdin); all scored in one batch."),
        click.option("--html", "html_out", default=None, type=click.Path(dir_okay=False, path_type=Path),
                     help="Write a results page with thumbnails of the best moments."),
        click.option("--ann", "ann", flag_value=True, default=None,
                     help="Two-stage search: faiss candidates, then the full head (automatic above 100k videos)."),
        click.option("--exact", "ann", flag_value=False, help="Score every video exactly, whatever the size."),
        click.option("--ann-candidates", type=BoundType(ANN_CANDIDATES), default=1000, show_default=True,
                     help="Segments kept by the ANN stage."),
        click.option("--no-update", is_flag=True,
                     help="Search the index as it is: no folder walk, no indexing of new or changed files."),
        click.option("--video", "video", default=None, type=click.Path(path_type=Path),
                     help="Video-to-text: rank the captions of --captions for this video."),
        click.option("--captions", "captions_file", default=None, metavar="FILE",
                     help="Captions to rank (one per line) with --video."),
    ])(fn)


class ResolutionType(click.ParamType):
    """``WIDTHxHEIGHT``, checked by engine/options.py's ``parse_resolution``."""

    name = "WIDTHxHEIGHT"

    def convert(self, value, param, ctx):
        from probret.engine.options import parse_resolution

        if isinstance(value, tuple):
            return value
        try:
            return parse_resolution(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)
