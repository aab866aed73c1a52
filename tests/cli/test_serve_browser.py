"""``probret serve``'s page in a real headless browser (Debian's chromium, driven over the DevTools
pipe exactly as tests/cli/test_search_html_browser.py does; its ``DevTools`` class is reused).

A user's path through the page: it loads while the server indexes in the background and shows
the progress; the user types a caption into the search box and presses Enter; the first card is
the video the caption describes (ground truth from the procedural world); its thumbnail is a
decoded image; a click on the card opens the HTML5 player, which seeks to the hit's best
instant: ``currentTime`` equals the moment's ``best_time``. A screenshot of that state is saved
(``PROBRET_SCREENSHOT_DIR``, else the test's tmp dir) for a person to look at.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from serve_helpers import ServerProcess, make_world, server_env, skip_without_serve
from test_search_html_browser import CHROMIUM, DevTools

pytestmark = [skip_without_serve, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")]


def _wait(dev: DevTools, session: str, expression: str, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = dev.evaluate(session, expression)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what} (last: {value!r})")


def _pick_query(server: ServerProcess, world: dict) -> tuple[str, dict]:
    """A caption whose first hit is a video it truly describes, with a best instant: what the
    page must then show first. The demo model is small, so not every caption qualifies."""
    for c in list(world["captions"].values())[:40]:
        status, body = server.json(f"/api/search?q={quote(c['caption'])}&k=6")
        assert status == 200, body
        hits = body["queries"][0]["results"]
        if hits and Path(hits[0]["path"]).stem in c["matches"] and hits[0]["best_time"] is not None \
                and hits[0]["best_time"] > 0.5:
            return c["caption"], hits[0]
    raise AssertionError("the demo model ranks no caption's own video first in this world")


def _key(dev: DevTools, session: str, key: str, code: int, text: str = "") -> None:
    for kind in ("keyDown", "keyUp"):
        dev.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code,
                                            "nativeVirtualKeyCode": code, **({"text": text} if kind == "keyDown" and text else {})},
                 session)


def _click(dev: DevTools, session: str, selector: str) -> None:
    box = dev.evaluate(session, f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect(); "
                                "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        dev.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                              "clickCount": 1}, session)


def test_type_a_query_see_the_video_click_and_play_at_the_moment(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-browser")
    folder, world = make_world(root, videos=8, seed=33)
    server = ServerProcess(folder, server_env(root), "--rescan", "0", wait_ready=False)
    dev = DevTools(CHROMIUM, root / "chromium")
    try:
        session = dev.open(f"http://127.0.0.1:{server.port}/")
        _wait(dev, session, "document.body.dataset.state === 'ready'", "the index ready")
        status = dev.evaluate(session, "[document.getElementById('status').textContent, "
                                       "document.getElementById('progress').value, document.getElementById('progress').max]")
        assert status == ["8 video(s) searchable", 8, 8], status
        query, expected = _pick_query(server, world)

        dev.evaluate(session, "document.getElementById('q').focus()")
        dev.send("Input.insertText", {"text": query}, session)
        _key(dev, session, "Enter", 13, "\r")
        _wait(dev, session, f"document.body.dataset.searched === {query!r} && document.querySelectorAll('.hit').length",
              "the results")
        cards = dev.evaluate(session, "[...document.querySelectorAll('.hit')].map(c => ({path: c.dataset.path, "
                                      "rank: c.dataset.rank, text: c.innerText}))")
        assert cards[0]["path"] == expected["path"] and cards[0]["rank"] == "1", (query, cards)
        assert len(cards) == 8 and "score " + f"{expected['score']:.3f}" in cards[0]["text"], cards[0]
        assert "uncertainty" in cards[0]["text"] and "moment 0:" in cards[0]["text"]
        thumbs = _wait(dev, session, "(async () => { const imgs = [...document.querySelectorAll('.hit img')]; "
                                     "await Promise.all(imgs.map(i => i.decode().catch(() => null))); "
                                     "return imgs.every(i => i.complete && i.naturalWidth > 0) && "
                                     "imgs.map(i => [i.naturalWidth, i.naturalHeight]); })()", "decoded thumbnails")
        assert all(w >= 100 and h >= 75 for w, h in thumbs), thumbs

        _click(dev, session, ".hit")
        player = _wait(dev, session, "(() => { const v = document.getElementById('player'); "
                                     "return v.readyState >= 1 && v.dataset.seeked === '1' && !v.seeking && "
                                     "{t: v.currentTime, d: v.duration, src: v.currentSrc, target: v.dataset.target, "
                                     "error: v.error && v.error.message}; })()", "the player at the moment")
        assert player["error"] is None, player
        assert player["src"].endswith("/media/" + quote(expected["path"]) + f"#t={expected['best_time']}"), player
        assert player["t"] == pytest.approx(expected["best_time"], abs=0.05), (player, expected)
        assert player["d"] == pytest.approx(6.0, abs=0.3)
        assert dev.evaluate(session, "document.querySelector('.hit').classList.contains('playing')")

        shot = dev.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        out = Path(os.environ.get("PROBRET_SCREENSHOT_DIR") or root)
        out.mkdir(parents=True, exist_ok=True)
        png = base64.b64decode(shot)
        (out / "probret-serve.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    finally:
        dev.close()
        server.stop()
