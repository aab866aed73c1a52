"""``probret serve FOLDER``: a warm local search server with a web page (docs/serve.md).

Thin: options, the model resolved above the engine (export/resolve.py), the app from
engine/serve.py, uvicorn. Needs the ``serve`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from pathlib import Path

import click

from probret.cli.logs import setup_logging
from probret.engine.errors import UsageError

notes = logging.getLogger("probret.notes")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _need_serve_extra() -> None:
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"'probret serve' needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                                   "not installed; pip install 'probret[serve]'")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model", default=None, metavar="M",
              help="Bundle dir, checkpoint dir, or open_clip NAME:TAG. Default: the index's model, else the shipped demo model.")
@click.option("--index", "index_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Index directory (default: FOLDER/.probret-index).")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda", "tensorrt")), default="auto", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --public and gets an access token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--public", is_flag=True, help="Allow binding to a non-loopback address (LAN access, with a token).")
@click.option("--token", default=None, metavar="TOKEN",
              help="Access token required on every request (default with --public: a random one, printed).")
@click.option("--rescan", type=click.FloatRange(0, 86400), default=10.0, show_default=True,
              help="Seconds between walks of FOLDER for new or changed files (0: only at start).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Details (providers, timings) on stderr.")
def serve(folder, model, index_dir, device, host, port, public, token, rescan, quiet, verbose):
    """Serve a search page and a JSON API for FOLDER, keeping the model and index warm and indexing
    new files in the background (GET /api/search?q=...&k=..., same JSON as `probret search --json`)."""
    _need_serve_extra()
    setup_logging(quiet=quiet, verbose=verbose)
    if not _is_loopback(host):
        if not public:
            raise UsageError(f"--host {host} is not a loopback address: add --public to serve other machines "
                             "(every request then needs the access token)")
        token = token or secrets.token_urlsafe(18)
        click.echo(f"warning: serving {folder} to the network on {host}:{port}; anyone who can reach it needs the "
                   "token below", err=True)
    import uvicorn

    from probret.engine import recorded_model
    from probret.engine.serve import ServeConfig, create_app
    from probret.export.resolve import resolve_model

    resolved = resolve_model(model, previous=recorded_model(folder, index_dir))
    config = ServeConfig(folder=folder, bundle=resolved.bundle, model=resolved.to_meta(), index=index_dir,
                         device=device, host=host, token=token, rescan=rescan)
    app = create_app(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    notes.info(f"model: {resolved.description}")
    click.echo(f"serving {folder} at {url} (Ctrl-C to stop)", err=True)
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning" if not verbose else "info",
                access_log=verbose)
