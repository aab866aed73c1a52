"""``probret index FOLDER`` and ``probret search FOLDER QUERY...`` (docs/search.md).

Thin: options, progress and messages on stderr, results on stdout, exit codes. The work is in
engine/ (models.py, index.py, pipeline.py, search.py); no torch is imported here unless
``--model`` names a checkpoint or an open_clip model that has to be exported once.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from probret.engine.errors import DataError, IndexError_

log = logging.getLogger("probret.cli.search")

DEVICES = ("auto", "cpu", "cuda", "tensorrt")


# --------------------------------------------------------------------------------------------
# shared plumbing
# --------------------------------------------------------------------------------------------
class _Say:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg, err=True)

    @staticmethod
    def warn(msg: str) -> None:
        click.echo(f"warning: {msg}", err=True)


class _WarningFormatter(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("probret")
    if getattr(logger, "_probret_cli", False):
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WarningFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    logger._probret_cli = True  # type: ignore[attr-defined]


def common_options(fn):
    opts = [
        click.option("--model", "model", default=None, metavar="M",
                     help="Bundle dir, checkpoint dir, or open_clip NAME:TAG (zero-shot). Default: the index's model, "
                          "else the shipped demo model."),
        click.option("--index", "index_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
                     help="Index directory (default: FOLDER/.probret-index)."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where the model runs (auto: TensorRT > CUDA > CPU, what is installed and present)."),
        click.option("--window", type=float, default=30.0, show_default=True,
                     help="Seconds per segment of long videos (0: one segment per video); a change rebuilds the index."),
        click.option("--resize", type=click.Choice(("auto", "exact", "decoder")), default="auto", show_default=True,
                     help="Frame resizing: exact (as in training), decoder (FFmpeg, fast), auto (decoder for large frames)."),
        click.option("--half/--full", default=True, show_default=True,
                     help="Store features as float16 (--half: half the disk, page cache and scan bytes; "
                          "rankings measured unchanged, docs/benchmarks_memory.md) or float32 (--full). "
                          "Changing it rebuilds the index."),
        click.option("--workers", type=int, default=0, help="Decoding threads (0: one per core, at most 8)."),
        click.option("--batch", type=int, default=16, show_default=True, help="Segments per encoder call."),
        click.option("--rebuild", is_flag=True, help="Discard the index and build it again."),
        click.option("--wait", is_flag=True, help="If another process is writing the index, wait for it instead of failing."),
        click.option("--retry-failed", is_flag=True, help="Try again files that failed to decode before."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar or progress messages (warnings still shown)."),
        click.option("--verbose", "-v", is_flag=True, help="Log details (providers, decoding warnings)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@dataclass
class _Session:
    folder: Path
    index_dir: Path
    model: object  # ResolvedModel
    runtime: object  # BundleRuntime
    report: object | None  # IndexReport
    say: _Say


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise DataError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; give the directory that holds the videos")


def _open(folder: Path, *, model, index_dir, device, window, resize, half, workers, batch, rebuild, wait,
          retry_failed, quiet, verbose, update: bool = True, ray_address: str | None = None) -> _Session:
    from probret.engine.index import INDEX_DIRNAME, IndexSettings, IndexWriter, VIDEO_EXTENSIONS, read_header, scan_folder
    from probret.engine.models import resolve_model
    from probret.engine.pipeline import PipelineOptions, update_index
    from probret.engine.runtime import BundleRuntime

    _setup_logging(verbose)
    say = _Say(quiet)
    _check_folder(folder)
    if window < 0:
        raise click.BadParameter("must be >= 0", param_hint="--window")
    if batch < 1:
        raise click.BadParameter("must be >= 1", param_hint="--batch")
    index_dir = Path(index_dir) if index_dir is not None else folder / INDEX_DIRNAME
    if update:
        files, _ = scan_folder(folder, exclude=[index_dir])
        if not files:
            raise DataError(f"{folder}: no videos found (looked for {', '.join(sorted(VIDEO_EXTENSIONS))}; hidden "
                            "files and folders are skipped)")
    header = read_header(index_dir)
    resolved = resolve_model(model, say=say, previous=(header or {}).get("model"))
    say(f"model: {resolved.description}")
    runtime = BundleRuntime(resolved.bundle, device=device)
    b = resolved.bundle
    settings = IndexSettings.for_bundle(b, window=float(window), resize=resize,
                                        dtype="float16" if half else "float32")
    report = None
    if update:
        with IndexWriter(index_dir, settings, model=resolved.to_meta(), wait=wait, rebuild=rebuild, say=say) as writer:
            scan = writer.scan(folder, retry_failed=retry_failed)
            if scan.todo or scan.removed:
                say(f"index {index_dir}: {len(scan.new)} new, {len(scan.changed)} changed, {len(scan.removed)} removed, "
                    f"{scan.unchanged} unchanged")
            opts = PipelineOptions(workers=workers, batch_segments=batch, retry_failed=retry_failed, progress=not quiet)
            if ray_address is None:
                report = update_index(folder, runtime, writer, opts, say=say, scan=scan)
            else:  # probret index FOLDER --ray [ADDRESS]: docs/scaling.md
                from probret.engine.distributed import update_index_ray
                report = update_index_ray(folder, runtime, writer, opts, say=say, scan=scan, address=ray_address)
        _report_index(report, say, runtime)
    else:
        if header is None:
            raise IndexError_(f"{index_dir}: no index here; run `probret index {folder}` (or search without --no-update)")
        if (header.get("settings") or {}).get("bundle_sha256") != settings.bundle_sha256:
            raise IndexError_(f"{index_dir} was built with another model ({(header.get('model') or {}).get('description')}); "
                              "search without --no-update to rebuild it for this model")
    return _Session(folder, index_dir, resolved, runtime, report, say)


def _providers(runtime) -> str:
    names = sorted(set(getattr(runtime, "providers", {}).values()))
    return ", ".join(n.replace("ExecutionProvider", "") for n in names) or "?"


def _report_index(report, say: _Say, runtime=None) -> None:
    if report.encoded_videos:
        st, dec = report.stages, report.decode
        how = ""
        if dec.get("files_linear", 0) or dec.get("files_seek", 0):
            how = f"; {dec.get('files_linear', 0)} file(s) decoded in one pass, {dec.get('files_seek', 0)} with seeks"
        say(f"indexed {report.encoded_videos} video(s) ({report.encoded_segments} segment(s)) in {report.seconds:.1f} s, "
            f"{report.videos_per_s:.1f} videos/s on {_providers(runtime)} (decode {st.get('decode', 0):.1f} s and "
            f"preprocess {st.get('preprocess', 0):.1f} s over threads; encode {st.get('encode', 0):.1f} s, "
            f"head {st.get('head', 0):.1f} s, write {st.get('write', 0):.1f} s, waiting for frames "
            f"{st.get('wait', 0):.1f} s{how})")
    if report.removed:
        say(f"dropped {report.removed} removed file(s) from the index")
    if report.failed:
        _Say.warn(f"skipped {len(report.failed)} file(s) that could not be decoded:")
        for path, reason in report.failed:
            click.echo(f"  {path}: {reason}", err=True)
    if report.failed_before:
        say(f"{len(report.failed_before)} file(s) failed earlier and are unchanged (--retry-failed to try again)")


def _none_decodable(session: _Session, reader) -> DataError:
    n = len(reader.failed)
    if n == 0:
        return DataError(f"{session.index_dir}: the index holds no searchable video yet (run `probret index "
                         f"{session.folder}`, or search without --no-update)")
    first = "; ".join(f"{p}: {e}" for p, e in reader.failed[:3])
    return DataError(f"{session.folder}: none of the {n} video file(s) could be decoded ({first}{'; ...' if n > 3 else ''})")


# --------------------------------------------------------------------------------------------
# probret index
# --------------------------------------------------------------------------------------------
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path))
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the indexing report as JSON on stdout.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Decode and encode on a Ray cluster (ADDRESS, or the one `ray start` / $RAY_ADDRESS names, else a "
                   "local one); put it after FOLDER. Needs probret[ray]; see docs/scaling.md.")
def index(folder, as_json, ray_address, **kw):
    """Build or update the index of FOLDER (only new or changed files are encoded)."""
    from probret.engine.index import IndexReader

    s = _open(folder, ray_address=ray_address, **kw)
    with IndexReader(s.index_dir) as reader:
        n_ok, n_bad = len(reader.videos), len(reader.failed)
        if n_ok == 0:
            raise _none_decodable(s, reader)
    if as_json:
        click.echo(json.dumps({**s.report.to_dict(), "model": s.model.to_meta(), "indexed": n_ok, "failed_total": n_bad}))
    else:
        s.say(f"index {s.index_dir}: {n_ok} video(s) searchable" + (f", {n_bad} failed" if n_bad else ""))


# --------------------------------------------------------------------------------------------
# probret search
# --------------------------------------------------------------------------------------------
def _read_lines(path: str, what: str) -> list[str]:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path}: unreadable ({exc})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{what} {path}: no non-empty line")
    return lines


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    m, s = divmod(max(0.0, float(t)), 60.0)
    if m >= 60:
        h, m = divmod(m, 60)
        return f"{int(h)}:{int(m):02d}:{s:04.1f}"
    return f"{int(m)}:{s:04.1f}"


def _moment(start: float, end: float) -> str:
    return f"{_fmt_time(start)}-{_fmt_time(end)}"


def _warn_truncated(runtime, queries: list[str], truncated, *, what: str = "query") -> None:
    L = runtime.bundle.context_length
    eot = int(runtime.bundle.manifest["tokenizer"].get("eot_token_id", 49407))
    for i, (q, cut) in enumerate(zip(queries, truncated)):
        if cut:
            ids = runtime.tokenize([q])[0][0]
            kept = runtime.tokenizer.decode([int(t) for t in ids[1:] if int(t) not in (0, eot)])
            _Say.warn(f"{what} {i + 1} is longer than the model's {L}-token context; it was cut to: {kept!r}")


def _display_path(folder: Path, rel: str) -> str:
    return os.path.join(str(folder), rel)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("queries", nargs=-1, metavar="[QUERY]...")
@common_options
@click.option("--top-k", "-k", type=int, default=10, show_default=True, help="Results per query.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout.")
@click.option("--paths-only", is_flag=True, help="Only the paths of the hits, one per line (for shell pipes).")
@click.option("--queries", "queries_file", default=None, metavar="FILE",
              help="More queries, one per line ('-' reads stdin); all scored in one batch.")
@click.option("--html", "html_out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write a results page with thumbnails of the best moments.")
@click.option("--ann", "ann", flag_value=True, default=None,
              help="Two-stage search: faiss candidates, then the full head (automatic above 100k videos).")
@click.option("--exact", "ann", flag_value=False, help="Score every video exactly, whatever the size.")
@click.option("--ann-candidates", type=int, default=1000, show_default=True, help="Segments kept by the ANN stage.")
@click.option("--no-update", is_flag=True, help="Search the index as it is, without indexing new or changed files.")
@click.option("--video", "video", default=None, type=click.Path(path_type=Path),
              help="Video-to-text: rank the captions of --captions for this video.")
@click.option("--captions", "captions_file", default=None, metavar="FILE", help="Captions to rank (one per line) with --video.")
def search(folder, queries, top_k, as_json, paths_only, queries_file, html_out, ann, ann_candidates, no_update, video,
           captions_file, **kw):
    """Rank the videos of FOLDER for each QUERY (indexing new or changed files first).

    Each QUERY argument is one query: quote multi-word queries, e.g.
    probret search ./videos "a man playing guitar".
    """
    from probret.engine.index import IndexReader
    from probret.engine.search import Searcher

    if top_k < 1:
        raise click.BadParameter("must be >= 1", param_hint="--top-k")
    if as_json and paths_only:
        raise click.UsageError("--json and --paths-only exclude each other")
    if (video is None) != (captions_file is None):
        raise click.UsageError("video-to-text needs both --video PATH and --captions FILE")
    qs = list(queries)
    for i, q in enumerate(qs):
        if not q.strip():
            raise click.UsageError(f"query {i + 1} is empty")
    if video is not None:
        if qs or queries_file:
            raise click.UsageError("--video ranks captions; give them with --captions, not as QUERY or --queries")
        if html_out is not None:
            raise click.UsageError("--html shows text-to-video results; it does not apply to --video")
    else:
        if queries_file:
            qs += _read_lines(queries_file, "--queries")
        if not qs:
            raise click.UsageError("give at least one QUERY (or --queries FILE, or --video with --captions)")

    s = _open(folder, update=not no_update, **kw)
    with IndexReader(s.index_dir) as reader:
        if not reader.videos and video is None:
            raise _none_decodable(s, reader)
        searcher = Searcher(s.runtime, reader, say=s.say)
        if video is not None:
            _video_to_text(s, reader, searcher, video, captions_file, top_k, as_json, paths_only)
            return
        t0 = time.perf_counter()
        results = searcher.search(qs, top_k=top_k, ann=ann, ann_candidates=ann_candidates)
        seconds = time.perf_counter() - t0
        _warn_truncated(s.runtime, qs, [r.truncated for r in results])
        s.say(f"searched {len(reader.videos)} video(s) ({reader.num_segments} segment(s)) for {len(qs)} "
              f"quer{'y' if len(qs) == 1 else 'ies'} in {seconds * 1000:.0f} ms on {_providers(s.runtime)}"
              + (" (ANN first stage)" if results and results[0].ann else ""))
        if html_out is not None:
            write_html(html_out, s.folder, results, model=s.model.description)
            s.say(f"results page: {html_out}")
    if as_json:
        click.echo(json.dumps({"folder": str(s.folder), "index": str(s.index_dir), "model": s.model.to_meta(),
                               "indexing": s.report.to_dict() if s.report else None, "seconds": round(seconds, 4),
                               "queries": [r.to_dict() for r in results]}, indent=None))
    elif paths_only:
        for r in results:
            for h in r.hits:
                click.echo(_display_path(s.folder, h.path))
    else:
        has_unc = s.runtime.bundle.has_uncertainty
        for qi, r in enumerate(results):
            if qi:
                click.echo("")
            click.echo(f"query: {r.query}")
            _table(["rank", "score", "uncertainty", "path", "moment"],
                   [[str(h.rank), f"{h.score:.4f}", f"{h.uncertainty:.4f}" if has_unc and h.uncertainty is not None else "-",
                     _display_path(s.folder, h.path), _moment(h.start, h.end)] for h in r.hits],
                   right=(0, 1, 2))


def _table(header: list[str], rows: list[list[str]], right=()) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    click.echo(line(header))
    for r in rows:
        click.echo(line(r))


def _video_to_text(s: _Session, reader, searcher, video: Path, captions_file: str, top_k: int, as_json: bool,
                   paths_only: bool) -> None:
    from probret.engine.pipeline import decode_windows, encode_segments

    captions = _read_lines(captions_file, "--captions")
    vid = None
    try:
        rel = Path(os.path.relpath(video.resolve(), s.folder.resolve())).as_posix()
        if not rel.startswith("../"):
            vid = reader.video_index(rel)
    except ValueError:
        vid = None
    if vid is not None:
        hits, truncated = searcher.rank_captions(captions, video=vid, top_k=top_k)
        source = "index"
    else:
        if not video.is_file():
            raise DataError(f"--video {video}: no such file")
        b = s.runtime.bundle
        size = b.preprocessing["image_size"]
        d = decode_windows(video, float(reader.settings.get("window", 30.0)), num_frames=b.num_frames,
                           image_size=size if isinstance(size, int) else int(size[0]),
                           mean=b.preprocessing["mean"], std=b.preprocessing["std"],
                           resize=reader.settings.get("resize", "auto"))
        segments = d.segments
        tensors = encode_segments(s.runtime, d.pixels)
        hits, truncated = searcher.rank_captions(captions, tensors=tensors, segments=segments, top_k=top_k)
        source = "encoded now (not in the index)"
    _warn_truncated(s.runtime, captions, truncated, what="caption")
    s.say(f"ranked {len(captions)} caption(s) for {video} ({source})")
    if as_json:
        click.echo(json.dumps({"video": str(video), "source": source, "model": s.model.to_meta(),
                               "captions": [h.to_dict() for h in hits]}))
    elif paths_only:
        for h in hits:
            click.echo(h.caption)
    else:
        has_unc = s.runtime.bundle.has_uncertainty
        _table(["rank", "score", "uncertainty", "moment", "caption"],
               [[str(h.rank), f"{h.score:.4f}", f"{h.uncertainty:.4f}" if has_unc and h.uncertainty is not None else "-",
                 _moment(h.start, h.end), h.caption] for h in hits], right=(0, 1, 2))


# --------------------------------------------------------------------------------------------
# --html
# --------------------------------------------------------------------------------------------
def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 (H, W, 3) RGB -> a PNG file (8-bit truecolour, zlib), no imaging library needed."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # filter byte 0 (None) per row
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def thumbnail(path: Path, t: float, *, size: int = 160) -> np.ndarray:
    """The frame on screen at ``t`` seconds, short side ``size`` at most (decoder resize; small
    videos are not enlarged)."""
    from probret.engine.video import probe_video, sample_frames

    info = probe_video(path)
    size = min(size, info.width, info.height)
    t = max(0.0, float(t))
    return sample_frames(path, 1, start=max(0.0, t - 1e-3) or None, end=t + 1e-3, size=size).frames[0]


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;background:#fafafa;color:#222}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:2em}
.hits{display:flex;flex-wrap:wrap;gap:1em}
.hit{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;width:200px;font-size:.85em}
.hit img{display:block;max-width:100%;height:auto;margin-bottom:.4em}
.hit .path{word-break:break-all} .noimg{height:100px;background:#eee;display:flex;align-items:center;justify-content:center}
"""


def write_html(out: Path, folder: Path, results, *, model: str = "") -> Path:
    """A self-contained results page: per query, each hit's thumbnail at its best instant (PNG
    data URI), rank, score, uncertainty, moment and a link to the file at that moment."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>probret search</title><style>{_CSS}</style>"
             "</head><body>", f"<h1>probret search: {html.escape(str(folder))}</h1>",
             f"<p>model: {html.escape(model)}</p>"]
    cache: dict[tuple[str, float], str | None] = {}
    for r in results:
        parts.append(f"<section class='query'><h2>{html.escape(r.query)}</h2><div class='hits'>")
        for h in r.hits:
            full = folder / h.path
            t = h.best_time if h.best_time is not None else (h.start + h.end) / 2
            key = (h.path, round(t, 3))
            if key not in cache:
                try:
                    cache[key] = "data:image/png;base64," + base64.b64encode(png_bytes(thumbnail(full, t))).decode()
                except Exception as exc:  # noqa: BLE001 - a thumbnail must never fail the page
                    log.warning("no thumbnail for %s at %.2f s: %s", full, t, exc)
                    cache[key] = None
            src = cache[key]
            img = (f"<img class='thumb' src='{src}' alt='{html.escape(h.path)} at {t:.1f} s'>" if src
                   else "<div class='noimg'>no thumbnail</div>")
            uri = full.resolve().as_uri() + f"#t={h.start:.2f},{h.end:.2f}"
            unc = "" if h.uncertainty is None else f" &middot; uncertainty {h.uncertainty:.4f}"
            parts.append(f"<div class='hit' data-rank='{h.rank}' data-path='{html.escape(h.path)}'>{img}"
                         f"<div><b>#{h.rank}</b> score {h.score:.4f}{unc}</div>"
                         f"<div class='path'><a href='{html.escape(uri)}'>{html.escape(h.path)}</a></div>"
                         f"<div>moment {_moment(h.start, h.end)} (best {_fmt_time(t)})</div></div>")
        parts.append("</div></section>")
    parts.append("</body></html>\n")
    out = Path(out)
    try:
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(parts), encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise DataError(f"--html {out}: cannot write ({exc.strerror})") from None
    return out
