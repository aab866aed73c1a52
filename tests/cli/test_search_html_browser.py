"""The ``probret search --html`` page in a real headless browser (Debian's chromium).

A tiny random SPEM bundle (test-vit-tiny) searches a small procedural folder through the
installed entry point with ``--html`` and ``--json``; the page is then loaded, unmodified, in
headless chromium, driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-terminated JSON on fds 3 and 4, so no websocket library and no network port). A script run
inside the page, after its load event, reports what the browser actually shows:

* every query's section, and in it the hits in order: rank, path, score text, the link to the file
  at the hit's moment;
* every thumbnail ``<img>``: loaded (``complete``, ``decode()`` resolved), its natural size, its
  laid-out box (visible), and the mean colour of the pixels the browser decoded (drawn to a
  canvas), which must equal the mean of the video frame at the hit's best instant.

Skipped when chromium is not installed (``.ci/run`` installs it best-effort); set
``PROBRET_CHROMIUM`` to use another Chromium binary.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

PROBRET = Path(sys.executable).with_name("probret")


def _chromium() -> str | None:
    env = os.environ.get("PROBRET_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
pytestmark = [pytest.mark.skipif(not PROBRET.exists(), reason="the probret entry point is not installed"),
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars", "--window-size=1280,2000"]

# Runs inside the page: waits for the load event, then reports sections, hits and thumbnails.
PAGE_REPORT = r"""
(async () => {
  if (document.readyState !== 'complete') {
    await new Promise(r => window.addEventListener('load', r, {once: true}));
  }
  const out = {title: document.title, queries: [], errors: []};
  for (const sec of document.querySelectorAll('section.query')) {
    const q = {query: sec.querySelector('h2') ? sec.querySelector('h2').textContent : null, hits: []};
    for (const hit of sec.querySelectorAll('.hit')) {
      const a = hit.querySelector('.path a');
      const h = {rank: hit.dataset.rank, path: hit.dataset.path, text: hit.innerText,
                 href: a ? a.getAttribute('href') : null, resolved: a ? a.href : null, linkText: a ? a.textContent : null, img: null};
      const img = hit.querySelector('img');
      if (img) {
        let decoded = true;
        try { await img.decode(); } catch (e) { decoded = false; out.errors.push('decode: ' + e); }
        const box = img.getBoundingClientRect();
        let mean = null;
        try {
          const c = document.createElement('canvas');
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext('2d');
          ctx.drawImage(img, 0, 0);
          const d = ctx.getImageData(0, 0, c.width, c.height).data;
          const s = [0, 0, 0];
          for (let i = 0; i < d.length; i += 4) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; }
          const n = d.length / 4;
          mean = s.map(v => v / n);
        } catch (e) { out.errors.push('canvas: ' + e); }
        h.img = {complete: img.complete, decoded, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
                 width: box.width, height: box.height, top: box.top + window.scrollY, mean,
                 scheme: img.src.slice(0, img.src.indexOf(',') + 1)};
      }
      q.hits.push(h);
    }
    out.queries.push(q);
  }
  return out;
})()
"""


class DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, binary: str, profile: Path, *, timeout: float = 30.0):
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()

        def child_fds():  # runs in the child before exec: the pipe ends become fds 3 and 4
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(resp_w, fcntl.F_DUPFD, 10)  # out of the way
            os.dup2(a, 3)
            os.dup2(b, 4)

        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"  # a file, not a pipe: chromium logs a lot (dbus) and must never block
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile / 'data'}",
                                          "--remote-debugging-pipe", "about:blank"], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, pass_fds=(3, 4), preexec_fn=child_fds,
                                         start_new_session=True)
        os.close(cmd_r)
        os.close(resp_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._id, method)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, session: str) -> dict:
        """The first event ``method`` of ``session`` (already received or still to come)."""
        def match(m):
            return m.get("method") == method and m.get("sessionId") == session
        for i, m in enumerate(self.events):
            if match(m):
                return self.events.pop(i)
        return self._until(match, method)

    def _until(self, match, what: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if match(msg):
                    return msg
                if "method" in msg:
                    self.events.append(msg)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium: no {what} within {self.timeout:.0f} s; its log ends with:\n"
                                   + self.log.read_text(errors="replace")[-2000:])
            ready, _, _ = select.select([self._resp_r], [], [], left)
            if ready:
                chunk = os.read(self._resp_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe while waiting for {what}; its log ends with:\n"
                                       + self.log.read_text(errors="replace")[-2000:])
                self._buf += chunk

    def open(self, url: str) -> str:
        """A new tab showing ``url``, after its load event; returns the tab's session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=session)
        nav = self.send("Page.navigate", {"url": url}, session)
        if nav.get("errorText"):
            raise RuntimeError(f"chromium cannot open {url}: {nav['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                      session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"script failed in the page: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except (OSError, RuntimeError, TimeoutError):
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: chromium and its children
                    self.proc.wait(timeout=5)
        finally:
            for fd in (self._cmd_w, self._resp_r):
                try:
                    os.close(fd)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def page(tmp_path_factory, make_spem_bundle):
    """(results page, --json output, folder): 6 procedural 64x64 videos, 3 queries (two captions and one
    full of HTML markup characters), top 3."""
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("html-browser")
    make_spem_bundle(root, seed=3, benchmark_videos=6)
    world = root / "world"
    generate_world(world, videos=6, seed=11, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    folder = root / "my videos"  # a space: the page's file links must be proper URIs
    shutil.copytree(world / "videos", folder)
    caps = json.loads((world / "world.json").read_text())["captions"]
    queries = [c["caption"] for c in caps.values()][:2] + ["a <b>bold</b> & 'quoted' query"]
    out = root / "out" / "results.html"
    env = {**os.environ, "PROBRET_CACHE": str(root / "cache")}
    proc = subprocess.run([str(PROBRET), "search", str(folder), *queries, "--model", str(root / "bundle"), "-k", "3",
                           "--json", "--html", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return out, json.loads(proc.stdout), folder


def test_results_page_in_headless_chromium(page, tmp_path):
    from probret.engine.thumbnails import thumbnail

    out, results, folder = page
    browser = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        session = browser.open(out.resolve().as_uri())
        seen = browser.evaluate(session, PAGE_REPORT)
    finally:
        browser.close()

    assert seen["errors"] == [], seen["errors"]
    assert seen["title"] == "probret search"
    expected = results["queries"]
    assert [q["query"] for q in seen["queries"]] == [q["query"] for q in expected]  # shown as text, not markup
    tops = []
    for q, want in zip(seen["queries"], expected):
        assert len(q["hits"]) == len(want["results"]) == 3
        for h, w in zip(q["hits"], want["results"]):
            assert int(h["rank"]) == w["rank"] and h["path"] == w["path"] and h["linkText"] == w["path"]
            assert f"#{w['rank']}" in h["text"] and f"score {w['score']:.4f}" in h["text"]
            assert f"uncertainty {w['uncertainty']:.4f}" in h["text"]
            # the link is relative to the page (it keeps working when both move) and the browser
            # resolves it to the file at the hit's moment
            target = (folder / w["path"]).resolve().as_uri() + f"#t={w['start']:.2f},{w['end']:.2f}"
            assert not h["href"].startswith(("/", "file:")) and h["href"].startswith("../")
            assert h["resolved"] == target
            img = h["img"]
            assert img is not None, f"no thumbnail for {w['path']}"
            assert img["scheme"] == "data:image/png;base64,"
            assert img["complete"] and img["decoded"]
            assert (img["naturalWidth"], img["naturalHeight"]) == (64, 64)  # small videos are not enlarged
            assert img["width"] > 0 and img["height"] > 0  # laid out, visible
            # the browser decoded the frame at the hit's best instant, not an empty or wrong image
            frame = thumbnail(folder / w["path"], w["best_time"])
            np.testing.assert_allclose(img["mean"], frame.reshape(-1, 3).mean(0), atol=1.5)
            assert max(img["mean"]) > 5  # not black
        tops.append(q["hits"][0]["img"]["top"])
    assert tops == sorted(tops) and len(set(tops)) == len(tops)  # one section per query, in order, stacked
