"""``probret index FOLDER`` and ``probret search FOLDER QUERY...`` (docs/search.md).

Thin: options (cli/options.py), the model resolved above the engine (export/resolve.py), one
call into the engine facade (``probret.engine.open_folder``), output (cli/output.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from probret.cli import output
from probret.cli.logs import setup_logging
from probret.cli.options import index_options, read_lines, search_options
from probret.engine import display_safe, open_folder, recorded_model

notes = logging.getLogger("probret.notes")


def _open(folder: Path, *, model, index_dir, device, window, resize, half, workers, batch, rebuild, wait,
          retry_failed, quiet, verbose, update: bool = True, write: bool = False, ray_address: str | None = None):
    """(VideoFolder, the model's meta) after resolving ``--model`` and, unless ``update`` is
    False, bringing the index up to date (``write``: through the writer even when nothing changed)."""
    from probret.export.resolve import demo_caveat, resolve_model

    setup_logging(quiet=quiet, verbose=verbose)
    resolved = resolve_model(model, previous=recorded_model(folder, index_dir))
    if resolved.kind == "demo" and (caveat := demo_caveat(folder)):
        notes.info(caveat)
    vf = open_folder(folder, bundle=resolved.bundle, index=index_dir, device=device, window=window, resize=resize,
                     dtype=None if half is None else ("float16" if half else "float32"), workers=workers, batch=batch,
                     rebuild=rebuild, update=update, progress=False if quiet else None, model=resolved.to_meta(),
                     wait=wait, retry_failed=retry_failed, ray_address=ray_address, write=write)
    if vf.last_update is not None:
        output.report_update(vf.last_update, vf.providers)
    return vf, resolved.to_meta()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path))
@index_options
@click.option("--json", "as_json", is_flag=True, help="Print the indexing report as JSON on stdout.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Decode and encode on a Ray cluster (ADDRESS, or the one `ray start` / $RAY_ADDRESS names, else a "
                   "local one); put it after FOLDER. Needs probret[ray]; see docs/scaling.md.")
def index(folder, as_json, ray_address, **kw):
    """Build or update the index of FOLDER (only new or changed files are encoded)."""
    vf, meta = _open(folder, ray_address=ray_address, write=True, **kw)  # index repairs too (facade.update)
    with vf:
        vf.require_videos()
        n_ok, n_bad = len(vf), len(vf.failed)
        if as_json:
            output.print_json({**vf.last_update.to_json(), "model": meta, "indexed": n_ok, "failed_total": n_bad})
        else:
            notes.info(f"index {vf.index_dir}: {n_ok} video(s) searchable" + (f", {n_bad} failed" if n_bad else ""))


def _check_search_usage(qs, queries_file, video, captions_file, html_out, as_json, paths_only, nul) -> list[str]:
    if as_json and paths_only:
        raise click.UsageError("--json and --paths-only exclude each other")
    if nul and not paths_only:
        raise click.UsageError("-0 applies to --paths-only")
    if (video is None) != (captions_file is None):
        raise click.UsageError("video-to-text needs both --video PATH and --captions FILE")
    for i, q in enumerate(qs):
        if not q.strip():
            raise click.UsageError(f"query {i + 1} is empty")
    if video is not None:
        if qs or queries_file:
            raise click.UsageError("--video ranks captions; give them with --captions, not as QUERY or --queries")
        if html_out is not None:
            raise click.UsageError("--html shows text-to-video results; it does not apply to --video")
        return qs
    qs = qs + (read_lines(queries_file, "--queries") if queries_file else [])
    if not qs:
        raise click.UsageError("give at least one QUERY (or --queries FILE, or --video with --captions)")
    return qs


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("queries", nargs=-1, metavar="[QUERY]...")
@index_options
@search_options
def search(folder, queries, top_k, moments, min_confidence, as_json, paths_only, nul, queries_file, html_out, ann,
           ann_candidates, no_update, video, captions_file, **kw):
    """Rank the videos of FOLDER for each QUERY (indexing new or changed files first).

    Each QUERY argument is one query: quote multi-word queries, e.g.
    probret search ./videos "a man playing guitar".
    """
    qs = _check_search_usage(list(queries), queries_file, video, captions_file, html_out, as_json, paths_only, nul)
    vf, meta = _open(folder, update=not no_update, **kw)
    with vf:
        if video is not None:
            result = vf.rank_captions(read_lines(captions_file, "--captions"), video=video, top_k=top_k)
            notes.info(f"ranked {len(result.hits)} caption(s) for {result.video} ({result.source})")
            if as_json:
                output.print_json({**result.to_json(), "model": meta})
            else:
                output.print_captions(result, paths_only=paths_only, nul=nul)
            return
        t0 = time.perf_counter()
        results = vf.search(qs, top_k=top_k, moments=moments, min_confidence=min_confidence, ann=ann,
                            ann_candidates=ann_candidates)
        seconds = time.perf_counter() - t0
        notes.info(f"searched {len(vf)} video(s) ({vf.reader.num_segments} segment(s)) for {len(qs)} "
                   f"quer{'y' if len(qs) == 1 else 'ies'} in {seconds * 1000:.0f} ms on {vf.providers}"
                   + (" (ANN first stage)" if results and results[0].ann else ""))
        if html_out is not None:
            output.write_html(html_out, folder, results, model=f"{meta['kind']} model ({meta['method']})")
            notes.info(f"results page: {html_out}")
    if as_json:
        output.print_json({"folder": display_safe(str(folder)), "index": display_safe(str(vf.index_dir)),
                           "model": meta, "indexing": vf.last_update.to_json() if vf.last_update else None,
                           "seconds": round(seconds, 4), "queries": [r.to_json() for r in results]})
    elif paths_only:
        output.print_paths(results, folder, nul=nul)
    else:
        output.print_results(results, folder, confidence=vf.calibrator is not None)
