"""How ``probret search`` / ``probret index`` show results: a table, JSON, paths (``-0``:
NUL-separated raw bytes) and the ``--html`` page. Inputs are engine/results.py's types.

Display safety: every path and caption printed to the terminal goes through
``display_safe`` (escapes for undecodable bytes, control and format characters); only
``--paths-only -0`` writes raw bytes, which is what ``xargs -0`` expects. JSON is written with
``allow_nan=False``: a NaN can never reach it silently.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Sequence

import click

from probret.engine import CaptionResult, DataError, SearchResult, UpdateReport, display_safe, png_bytes, thumbnail

__all__ = ["fmt_time", "moment_text", "table", "print_results", "print_paths", "print_captions", "print_json",
           "report_update", "write_html"]

notes = logging.getLogger("probret.notes")
log = logging.getLogger("probret.cli")


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    m, s = divmod(max(0.0, float(t)), 60.0)
    if m >= 60:
        h, m = divmod(m, 60)
        return f"{int(h)}:{int(m):02d}:{s:04.1f}"
    return f"{int(m)}:{s:04.1f}"


def moment_text(m) -> str:
    text = f"{fmt_time(m.start)}-{fmt_time(m.end)}"
    return text if m.best_time is None else f"{text} @{fmt_time(m.best_time)}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def table(header: list[str], rows: list[list[str]], right: Sequence[int] = ()) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    click.echo(line(header))
    for r in rows:
        click.echo(line(r))


def _full(folder: Path, rel: str) -> str:
    return os.path.join(os.fsdecode(folder), rel)


def print_results(results: list[SearchResult], folder: Path, *, confidence: bool) -> None:
    """One table per query: rank, score, confidence (with a calibrator), uncertainty, path, moments."""
    for qi, r in enumerate(results):
        if qi:
            click.echo("")
        click.echo(f"query: {display_safe(r.query)}")
        if r.note:
            click.echo(f"({r.note})")
        if not r.hits:  # the note says why; a header over no rows says nothing
            continue
        header = ["rank", "score"] + (["confidence"] if confidence else []) + ["uncertainty", "path", "moment"]
        rows = [[str(h.rank), f"{h.score:.4f}"] + ([_num(h.confidence)] if confidence else [])
                + [_num(h.uncertainty), display_safe(_full(folder, h.path)), ", ".join(moment_text(m) for m in h.moments)]
                for h in r.hits]
        table(header, rows, right=(0, 1, 2, 3) if confidence else (0, 1, 2))


def print_paths(results: list[SearchResult], folder: Path, *, nul: bool) -> None:
    """The hits' full paths, one per line (escaped for display), or NUL-terminated raw bytes. A
    query's note (e.g. "no confident match") goes to stderr, so stdout stays a list of paths."""
    for r in results:
        if r.note:
            notes.info(f"query {display_safe(r.query)!r}: {r.note}")
    if nul:
        out = click.get_binary_stream("stdout")
        for r in results:
            for h in r.hits:
                out.write(os.path.join(os.fsencode(folder), h.path_bytes) + b"\0")
        out.flush()
        return
    for r in results:
        for h in r.hits:
            click.echo(display_safe(_full(folder, h.path)))


def print_captions(result: CaptionResult, *, paths_only: bool, nul: bool = False) -> None:
    if paths_only and nul:
        out = click.get_binary_stream("stdout")
        for h in result.hits:
            out.write(h.caption.encode("utf-8", "surrogateescape") + b"\0")
        out.flush()
        return
    if paths_only:
        for h in result.hits:
            click.echo(display_safe(h.caption))
        return
    table(["rank", "score", "uncertainty", "moment", "caption"],
          [[str(h.rank), f"{h.score:.4f}", _num(h.uncertainty), moment_text(h.moment), display_safe(h.caption)]
           for h in result.hits], right=(0, 1, 2))


def print_json(payload: dict) -> None:
    try:
        click.echo(json.dumps(payload, allow_nan=False))
    except ValueError as exc:
        raise DataError(f"a result holds a non-finite number ({exc}); the index may be damaged: run with --rebuild") from None


def report_update(report: UpdateReport, providers: str) -> None:
    """What an update did, on stderr: notes (quiet with -q) and warnings for failed files."""
    if report.encoded_videos:
        st, dec = report.stages, report.decode
        how = ""
        if dec.get("files_linear", 0) or dec.get("files_seek", 0):
            how = f"; {dec.get('files_linear', 0)} file(s) decoded in one pass, {dec.get('files_seek', 0)} with seeks"
        notes.info(f"indexed {report.encoded_videos} video(s) ({report.encoded_segments} segment(s)) in "
                   f"{report.seconds:.1f} s, {report.videos_per_s:.1f} videos/s on {providers} (decode "
                   f"{st.get('decode', 0):.1f} s and preprocess {st.get('preprocess', 0):.1f} s over threads; encode "
                   f"{st.get('encode', 0):.1f} s, head {st.get('head', 0):.1f} s, write {st.get('write', 0):.1f} s, "
                   f"waiting for frames {st.get('wait', 0):.1f} s{how})")
    if report.removed:
        notes.info(f"dropped {report.removed} removed file(s) from the index")
    for what, files in (("could not be decoded", report.failed), ("are not regular files", report.skipped)):
        if files:
            log.warning(f"skipped {len(files)} file(s) that {what}:")
            for f in files:
                click.echo(f"  {f.display_path}: {display_safe(f.reason)}", err=True)
    if report.unlisted:
        log.warning(f"could not list {len(report.unlisted)} folder(s); their videos stay in the index as they were:")
        for folder in report.unlisted:
            click.echo(f"  {display_safe(folder)}", err=True)
    if report.failed_before:
        notes.info(f"{len(report.failed_before)} file(s) failed earlier and are unchanged (--retry-failed to try again)")


# --------------------------------------------------------------------------------------------
# --html
# --------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;background:#fafafa;color:#222}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:2em}
.hits{display:flex;flex-wrap:wrap;gap:1em}
.hit{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;width:200px;font-size:.85em}
.hit img{display:block;max-width:100%;height:auto;margin-bottom:.4em}
.hit .path{word-break:break-all} .noimg{height:100px;background:#eee;display:flex;align-items:center;justify-content:center}
"""


def _thumb_uri(path: str, t: float) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(png_bytes(thumbnail(path, t))).decode()
    except Exception as exc:  # noqa: BLE001 - a thumbnail must never fail the page
        log.warning("no thumbnail for %s at %.2f s: %s", display_safe(path), t, exc)
        return None


def _link(page_dir: Path, full: str, start: float, end: float) -> str:
    """The file at the moment, relative to the page (the page keeps working when the page and
    the videos move together, and names no absolute path)."""
    rel = os.path.relpath(os.path.abspath(full), os.path.abspath(page_dir))
    quoted = urllib.parse.quote(os.fsencode(rel).replace(os.sep.encode(), b"/"), safe="/")
    return f"{quoted}#t={start:.2f},{end:.2f}"


def _hit_html(h, folder: Path, page_dir: Path, cache: dict) -> str:
    import html  # here and in write_html: only --html pages need it (~1.5 ms of every search)

    full = _full(folder, h.path)
    m = h.moment
    t = m.best_time if m.best_time is not None else (m.start + m.end) / 2
    key = (h.path, round(t, 3))
    if key not in cache:
        cache[key] = _thumb_uri(full, t)
    src, shown = cache[key], html.escape(h.display_path)
    img = (f"<img class='thumb' src='{src}' alt='{shown} at {t:.1f} s'>" if src
           else "<div class='noimg'>no thumbnail</div>")
    extra = "" if h.uncertainty is None else f" &middot; uncertainty {h.uncertainty:.4f}"
    extra += "" if h.confidence is None else f" &middot; confidence {h.confidence:.2f}"
    return (f"<div class='hit' data-rank='{h.rank}' data-path='{shown}'>{img}"
            f"<div><b>#{h.rank}</b> score {h.score:.4f}{extra}</div>"
            f"<div class='path'><a href='{html.escape(_link(page_dir, full, m.start, m.end))}'>{shown}</a></div>"
            f"<div>moment {fmt_time(m.start)}-{fmt_time(m.end)} (best {fmt_time(t)})</div></div>")


def write_html(out: Path, folder: Path, results: list[SearchResult], *, model: str = "") -> Path:
    """A self-contained results page: per query, each hit's thumbnail at its best instant (PNG
    data URI), rank, score, confidence, uncertainty, moment and a link (relative to the page) to the
    file at that moment, and the query's note (e.g. "no confident match"). Written atomically."""
    import html

    out = Path(out)
    page_dir = out.parent if str(out.parent) else Path(".")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>probret search</title><style>{_CSS}</style>"
             "</head><body>", f"<h1>probret search: {html.escape(display_safe(Path(folder).resolve().name))}</h1>",
             f"<p>model: {html.escape(model)}</p>"]
    cache: dict = {}
    for r in results:
        parts.append(f"<section class='query'><h2>{html.escape(r.query)}</h2>")
        if r.note:
            parts.append(f"<p class='note'>{html.escape(r.note)}</p>")
        parts.append("<div class='hits'>")
        parts.extend(_hit_html(h, folder, page_dir, cache) for h in r.hits)
        parts.append("</div></section>")
    parts.append("</body></html>\n")
    try:
        page_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(parts), encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise DataError(f"--html {out}: cannot write ({exc.strerror})") from None
    return out

