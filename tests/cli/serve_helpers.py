"""Shared by the ``probret serve`` tests: a procedural folder, a real server process on a free
port (the installed entry point, uvicorn, the shipped demo model), and raw HTTP requests
(http.client: the path and Host header go out exactly as written, unlike urllib)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROBRET = Path(sys.executable).with_name("probret")


def serve_available() -> bool:
    import importlib.util

    return PROBRET.exists() and all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn"))


def make_world(root: Path, videos: int = 6, seed: int = 21) -> tuple[Path, dict]:
    """(a folder of procedural mp4s, world.json): 6 s clips, two events each, so moments matter."""
    from probret.train.world import generate_world

    world = root / "world"
    generate_world(world, videos=videos, seed=seed, resolution=(160, 120), frames=48, fps=8, splits=(0.0, 0.0, 1.0))
    folder = root / "videos"
    shutil.copytree(world / "videos", folder)
    return folder, json.loads((world / "world.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``probret serve FOLDER --port P ...`` until ``stop()``; stderr goes to a file."""

    def __init__(self, folder: Path, env: dict, *args: str, host: str = "127.0.0.1", wait_ready: bool = True):
        self.port = free_port()
        self.host = host
        self.log = folder.parent / f"serve-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(PROBRET), "serve", str(folder), "--host", host, "--port", str(self.port),
                                          *args], env=env, stdout=log, stderr=log, start_new_session=True)
        self._wait_listening()
        if wait_ready:
            self.wait_status(lambda s: s["state"] == "ready")

    def _wait_listening(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"probret serve exited {self.proc.returncode}:\n{self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"probret serve did not listen within {timeout:.0f} s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def request(self, path: str, *, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders()
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, path: str, **kw) -> tuple[int, dict]:
        status, _, body = self.request(path, **kw)
        return status, json.loads(body)

    def wait_status(self, ok, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"probret serve exited {self.proc.returncode}:\n{self.stderr()}")
            status, last = self.json("/api/status")
            if status == 200 and ok(last):
                return last
            time.sleep(0.3)
        raise AssertionError(f"status never got there; last {last}\n{self.stderr()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # our own session: uvicorn shuts down on SIGINT
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        assert "Traceback" not in self.stderr(), self.stderr()


def server_env(root: Path) -> dict:
    return {**os.environ, "PROBRET_CACHE": str(root / "cache"), "COLUMNS": "200"}


skip_without_serve = pytest.mark.skipif(not serve_available(),
                                        reason="probret serve needs starlette and uvicorn (pip install 'probret[serve]')")
