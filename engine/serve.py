"""``probret serve``: a warm local search server with a web page (docs/serve.md).

    app = create_app(ServeConfig(folder="videos/", bundle=bundle, model=resolved.to_meta()))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Torch-free and thin: the model, the index and the ranking are engine/facade.py's ``VideoFolder``;
this module adds the web layer (Starlette, served by uvicorn) and a background indexer.

* **Warm.** One ``BundleRuntime`` for the life of the server, shared by the indexer (frame and
  video-side graphs) and the searches (text and pair graphs); ONNX Runtime sessions are
  thread-safe. The index reader is reopened only when the indexer has committed new videos.
* **Background indexing.** A thread walks FOLDER at start and every ``rescan`` seconds and indexes
  new or changed files through ``VideoFolder.update``. Progress (files indexed of files found) is
  read from the index while it works and served at ``GET /api/status``; the page polls it.
* **Search.** ``GET /api/search?q=...&k=...&moments=...&min_confidence=...`` answers in the shape
  of ``probret search --json`` (one query). Parameters go through engine/options.py's
  ``SearchOptions``, so a bad value gets the CLI's message (HTTP 400, ``{"error": ...}``).
  Searches run one at a time (a lock): the ranking of one query takes milliseconds, and the reader
  may be swapped between two of them.
* **Files.** ``GET /media/PATH`` serves a video with HTTP range requests (seeking), ``GET
  /thumb/PATH?t=S`` a PNG of the frame at S seconds. PATH must be a video the index holds, and its
  real path (symlinks resolved) must lie inside FOLDER: a traversal (``..``, encoded or not), an
  absolute path, or a symlink out of the folder is a 404. The check is made on the opened file
  (engine/fsutil.py ``open_inside``) and the response reads that descriptor, so a symlink swapped
  in between the check and the read cannot redirect what is served.
* **Who may ask.** The server checks the ``Host`` header against the names it is bound to (a DNS
  rebinding page cannot reach a localhost server). Binding to anything but loopback is the
  command's decision (``--public``); then an access token is required on every request (``?token=``
  once, which sets a cookie for the page, its API calls and its media, or ``Authorization: Bearer``).
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probret.engine.errors import ProbretError, UsageError
from probret.engine.fsutil import OpenedFile, open_inside

__all__ = ["ServeConfig", "Server", "create_app", "LOOPBACK_HOSTS", "TOKEN_COOKIE"]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "probret_token"
_INDEXER = "probret-indexer"
_PAGE = Path(__file__).resolve().parent / "assets" / "serve.html"


@dataclass
class ServeConfig:
    """What ``probret serve`` was asked for. ``bundle``: an engine Bundle (or its path); ``model``:
    what the index records about it (export/resolve.py's ``to_meta()``); ``host``: the bound
    address, whose names the Host check accepts besides loopback's; ``token``: required on every
    request when set; ``rescan``: seconds between walks of the folder (0: only at start)."""

    folder: str | os.PathLike
    bundle: Any
    model: dict | None = None
    index: str | os.PathLike | None = None
    device: str = "auto"
    host: str = "127.0.0.1"
    token: str | None = None
    rescan: float = 10.0
    allowed_hosts: list[str] = field(default_factory=list)


class Server:
    """The state behind the app: the runtime, a VideoFolder for searching, the indexer thread."""

    def __init__(self, config: ServeConfig):
        from probret.engine.bundle import Bundle, load_bundle
        from probret.engine.index import INDEX_DIRNAME
        from probret.engine.runtime import BundleRuntime

        self.config = config
        self.folder = Path(config.folder)
        if not self.folder.is_dir():
            raise UsageError(f"{self.folder}: not a folder of videos")
        self.root = self.folder.resolve()
        self.bundle = config.bundle if isinstance(config.bundle, Bundle) else load_bundle(config.bundle)
        self.index_dir = Path(config.index) if config.index is not None else self.folder / INDEX_DIRNAME
        self.runtime = BundleRuntime(self.bundle, device=config.device)
        # every use of the index reader runs on this one thread: SQLite connections belong to the
        # thread that opened them, and one query at a time takes milliseconds
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="probret-search")
        self._search_lock = threading.Lock()
        self._vf = None  # the searching VideoFolder, opened once the index holds a video
        self._stale = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status: dict[str, Any] = {"state": "starting", "indexed": 0, "total": None, "searchable": 0,
                                       "message": "starting", "error": None, "updates": 0}
        self.last_update = None

    # -- background indexing -------------------------------------------------------------------
    def start(self) -> None:
        logging.getLogger("probret.notes").addFilter(self._quiet_rescans)
        self._thread = threading.Thread(target=self._index_loop, name=_INDEXER, daemon=True)
        self._thread.start()

    def _quiet_rescans(self, record: logging.LogRecord) -> bool:
        """After the first update, a rescan that finds nothing to do says nothing (the facade
        names the model on every update)."""
        return not (threading.current_thread().name == _INDEXER and self.status["updates"] > 0
                    and str(record.msg).startswith("model: "))

    def stop(self) -> None:
        logging.getLogger("probret.notes").removeFilter(self._quiet_rescans)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.pool.shutdown(wait=True)

    async def run(self, fn, *args):
        """``fn(*args)`` on the search thread (the one that owns the index reader)."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _index_loop(self) -> None:
        while not self._stop.is_set():
            self._update_once()
            if not self.config.rescan:
                break
            self._stop.wait(self.config.rescan)

    def _update_once(self) -> None:
        from probret.engine.facade import VideoFolder
        from probret.engine.index import scan_folder

        try:
            files, _ = scan_folder(self.folder, exclude=[self.index_dir])
        except OSError as exc:
            self._set_status("error", error=f"cannot read {self.folder}: {exc}")
            return
        self.status["total"] = len(files)
        done = threading.Event()
        watcher = threading.Thread(target=self._watch_progress, args=(done,), daemon=True)
        self._set_status("indexing", message=f"checking {len(files)} file(s)")
        watcher.start()
        try:
            writer = VideoFolder(self.folder, self.bundle, index=self.index_dir, model=self.config.model,
                                 runtime=self.runtime, wait=True)
            self.last_update = writer.update(progress=False)
            writer.close()
        except ProbretError as exc:
            self._set_status("error", error=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the server stays up and says what went wrong
            log.exception("indexing failed")
            self._set_status("error", error=f"indexing failed: {type(exc).__name__}: {exc}")
            return
        finally:
            done.set()
            watcher.join()
        self._stale = True
        self.status["updates"] += 1
        self._refresh_counts()
        self._set_status("ready", message=f"{self.status['searchable']} video(s) searchable")

    def _watch_progress(self, done: threading.Event) -> None:
        """While an update runs: count the index's videos every half second; reopen the reader
        when new ones were committed, so searches see them before the update ends."""
        before = None
        while not done.wait(0.5):
            n = self._refresh_counts()
            if before is not None and n != before:
                self._stale = True
            before = n
            total = self.status.get("total")
            self.status["message"] = f"indexed {self.status['indexed']} of {total} file(s)"

    def _refresh_counts(self) -> int:
        import sqlite3

        from probret.engine.index.schema import DB_NAME

        try:
            con = sqlite3.connect(f"file:{self.index_dir / DB_NAME}?mode=ro", uri=True, timeout=5.0)
            try:
                ok, total = con.execute("SELECT SUM(status = 'ok'), COUNT(*) FROM videos").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return 0
        self.status["searchable"], self.status["indexed"] = int(ok or 0), int(total or 0)
        return self.status["indexed"]

    def _set_status(self, state: str, *, message: str | None = None, error: str | None = None) -> None:
        self.status.update(state=state, message=message or error or state, error=error)

    # -- searching -----------------------------------------------------------------------------
    def _folder_for_search(self):
        from probret.engine.facade import VideoFolder

        if self._stale or self._vf is None:
            if self._vf is not None:
                self._vf.close()
                self._vf = None
            if not self.status.get("searchable"):
                self._refresh_counts()
            if not self.status.get("searchable"):
                return None
            self._vf = VideoFolder(self.folder, self.bundle, index=self.index_dir, model=self.config.model,
                                   runtime=self.runtime)
            self._stale = False
        return self._vf

    def search(self, query: str, options) -> dict:
        """``probret search --json``'s document for one query (engine/options.py's SearchOptions)."""
        t0 = time.perf_counter()
        with self._search_lock:
            vf = self._folder_for_search()
            if vf is None:
                raise _NotReady(f"no video is searchable yet ({self.status['message']})")
            (result,) = vf.search(query, top_k=options.top_k, min_confidence=options.min_confidence,
                                  moments=options.moments, ann=options.ann, ann_candidates=options.ann_candidates)
        return {"folder": str(self.folder), "index": str(self.index_dir), "model": self.config.model,
                "indexing": self.last_update.to_json() if self.last_update else None,
                "seconds": round(time.perf_counter() - t0, 4), "queries": [result.to_json()]}

    # -- files ---------------------------------------------------------------------------------
    def open_video(self, rel: str) -> OpenedFile | None:
        """Indexed video ``rel``, opened, when the file opened lies inside the folder, else None.

        The check is made on the open descriptor (engine/fsutil.py ``open_inside``), so a symlink
        swapped in after the check cannot redirect what is served. The caller closes it.
        """
        if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
            return None
        with self._search_lock:
            vf = self._folder_for_search()
            known = vf is not None and vf.reader.video_index(rel) is not None
        if not known:
            return None
        return open_inside(self.root, rel)


class _NotReady(ProbretError):
    exit_code = 3


class _ThumbnailCache:
    """The last ``size`` thumbnails, keyed by the file's identity (device, inode, mtime) and time."""

    def __init__(self, size: int = 512):
        self.size, self._items, self._lock = size, {}, threading.Lock()

    def png(self, video: OpenedFile, t: float) -> bytes:
        from probret.engine.thumbnails import png_bytes, thumbnail

        key = (video.stat.st_dev, video.stat.st_ino, video.stat.st_mtime_ns, t)
        with self._lock:
            if key in self._items:
                self._items[key] = self._items.pop(key)  # most recent last
                return self._items[key]
        png = png_bytes(thumbnail(video.source, t))
        with self._lock:
            self._items[key] = png
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))
        return png


_THUMBNAILS = _ThumbnailCache()


def _media_type(path: Path) -> str:
    """By the real file's name: the name served (/proc/self/fd/N) has no extension."""
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


# --------------------------------------------------------------------------------------------
# the web app
# --------------------------------------------------------------------------------------------
def create_app(config: ServeConfig, *, server: Server | None = None):
    """The Starlette app of ``config`` (module docstring); starts the indexer on startup."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.routing import Route

    server = server or Server(config)

    @asynccontextmanager
    async def lifespan(app):
        server.start()
        try:
            yield
        finally:
            server.stop()

    hosts = _allowed_hosts(config)
    routes = [Route("/", _page(server)), Route("/api/search", _search(server)), Route("/api/status", _status(server)),
              Route("/media/{path:path}", _media(server)), Route("/thumb/{path:path}", _thumb(server))]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(_TokenGate, token=config.token)])
    app.state.server = server
    return app


def _allowed_hosts(config: ServeConfig) -> list[str]:
    """Host header names the server answers: loopback's, the bound address (a wildcard address
    accepts any name: the token guards it), and any the caller adds."""
    names = ["127.0.0.1", "localhost", "[::1]", "::1", *config.allowed_hosts]
    host = config.host.strip("[]")
    if host in ("0.0.0.0", "::"):
        return ["*"]
    if host not in names:
        names += [host, f"[{host}]"] if ":" in host else [host]
    return names


class _TokenGate:
    """ASGI middleware: with a token set, every request must carry it (query ``token``, the
    cookie it sets, or ``Authorization: Bearer``); a page load with ``?token=`` sets the cookie."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.token:
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        req = Request(scope)
        given = req.query_params.get("token")
        candidates = [given, req.cookies.get(TOKEN_COOKIE),
                      req.headers.get("authorization", "").removeprefix("Bearer ").strip() or None]
        if not any(c and hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates):
            return await JSONResponse({"error": "an access token is required (open the URL the server printed)"},
                                      status_code=401)(scope, receive, send)
        if given is None:
            return await self.app(scope, receive, send)

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode("latin-1")))
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


def _page(server: Server):
    from starlette.responses import HTMLResponse

    async def page(request):
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    return page


def _search(server: Server):
    from starlette.responses import JSONResponse

    async def search(request):
        p = request.query_params
        query = p.get("q", "")
        try:
            if not query.strip():
                raise UsageError("q: give a query, e.g. /api/search?q=a+red+circle")
            options = _search_options(p)
            body = await server.run(server.search, query, options)
        except _NotReady as exc:
            return JSONResponse({"error": str(exc), "status": server.status}, status_code=503)
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ProbretError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        return JSONResponse(body)

    return search


def _search_options(params):
    """engine/options.py's SearchOptions from the query string; a bad value's message names the
    parameter and the CLI flag it stands for (the same bounds)."""
    from probret.engine.options import SearchOptions

    values = {"k": ("top_k", "10"), "moments": ("moments", "1"), "min_confidence": ("min_confidence", None)}
    kwargs = {}
    for param, (name, default) in values.items():
        value = params.get(param) or default
        try:
            SearchOptions(**{name: value})
        except UsageError as exc:
            raise UsageError(f"{param}: {exc}") from None
        kwargs[name] = value
    return SearchOptions(**kwargs)


def _status(server: Server):
    from starlette.responses import JSONResponse

    async def status(request):
        return JSONResponse({**server.status, "folder": str(server.folder),
                             "model": (server.config.model or {}).get("description")})

    return status


def _media(server: Server):
    from starlette.responses import FileResponse, JSONResponse

    async def media(request):
        video = await server.run(server.open_video, request.path_params["path"])
        if video is None:
            return JSONResponse({"error": "no such video in this folder's index"}, status_code=404)
        # the response reads the checked descriptor by name; the descriptor closes with the response
        response = FileResponse(video.source, stat_result=video.stat, media_type=_media_type(video.path))
        weakref.finalize(response, video.close)
        return response  # answers Range requests (206) itself

    return media


def _thumb(server: Server):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response

    async def thumb(request):
        try:
            t = max(0.0, float(request.query_params.get("t", "0")))
        except ValueError:
            return JSONResponse({"error": "t: a time in seconds"}, status_code=400)
        video = await server.run(server.open_video, request.path_params["path"])
        if video is None:
            return JSONResponse({"error": "no such video in this folder's index"}, status_code=404)
        try:
            png = await run_in_threadpool(_THUMBNAILS.png, video, round(t, 2))
        except Exception as exc:  # noqa: BLE001 - an undecodable frame is a missing picture, not a crash
            return JSONResponse({"error": f"no thumbnail: {exc}"}, status_code=404)
        finally:
            video.close()
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    return thumb
