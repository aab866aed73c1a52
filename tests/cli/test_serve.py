"""``probret serve`` over HTTP: a real server process (installed entry point, uvicorn, the shipped
demo model) on a procedural folder. Background indexing with progress, the search API against
``probret search --json``, option validation, the Host check, the token, path safety (traversal,
encoded ``..``, symlinks out of the folder), range requests, and concurrent queries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from serve_helpers import PROBRET, ServerProcess, make_world, server_env, skip_without_serve

pytestmark = [skip_without_serve, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, folder, world, env) with the folder indexed in the background by the server, and
    a video outside the folder reachable through a symlink inside it."""
    root = tmp_path_factory.mktemp("serve")
    folder, world = make_world(root)
    outside = root / "outside"
    outside.mkdir()
    shutil.move(str(folder / "video5.mp4"), outside / "secret.mp4")
    (folder / "escape.mp4").symlink_to(outside / "secret.mp4")
    (folder / "notes.txt").write_text("not a video\n")
    env = server_env(root)
    server = ServerProcess(folder, env, "--rescan", "1", wait_ready=False)
    try:
        yield server, folder, world, env
    finally:
        server.stop()


def _captions(world: dict) -> list[tuple[str, list[str]]]:
    return [(c["caption"], c["matches"]) for c in world["captions"].values()]


def test_background_indexing_reports_progress_then_ready(served):
    server, folder, *_ = served
    seen = []
    status = server.wait_status(lambda s: seen.append(dict(s)) or s["state"] == "ready")
    assert status["total"] == 6 and status["indexed"] == 6 and status["searchable"] == 6, status
    assert all(s["state"] in ("starting", "indexing", "ready") for s in seen), seen
    assert status["model"] == "shipped demo model (spem)"


def test_search_api_matches_the_cli_json(served):
    server, folder, world, env = served
    server.wait_status(lambda s: s["state"] == "ready")
    query = _captions(world)[0][0]
    status, body = server.json(f"/api/search?q={quote(query)}&k=4&moments=2")
    assert status == 200, body
    cli = subprocess.run([str(PROBRET), "search", str(folder), query, "-k", "4", "--moments", "2", "--json",
                          "--no-update"], capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 0, cli.stderr
    ref = json.loads(cli.stdout)
    assert set(body) == set(ref)
    assert body["model"] == ref["model"] and body["index"] == ref["index"]
    (ours,), (theirs,) = body["queries"], ref["queries"]
    assert ours["query"] == theirs["query"] == query
    assert [h["path"] for h in ours["results"]] == [h["path"] for h in theirs["results"]]
    for a, b in zip(ours["results"], theirs["results"]):
        assert set(a) == set(b)
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert [(m["start"], m["end"], m["best_time"]) for m in a["moments"]] == \
               [(m["start"], m["end"], m["best_time"]) for m in b["moments"]]


@pytest.mark.parametrize("query, fragment", [
    ("k=0&q=x", "k: --top-k must be an integer from 1 to 100000, got '0'"),
    ("k=ten&q=x", "k: --top-k must be an integer"),
    ("moments=1000&q=x", "moments: --moments must be an integer from 1 to 100"),
    ("min_confidence=2&q=x", "min_confidence: --min-confidence must be a number from 0 to 1"),
    ("q=", "q: give a query"),
    ("k=5", "q: give a query"),
])
def test_bad_parameters_get_the_cli_message(served, query, fragment):
    server, *_ = served
    status, body = server.json(f"/api/search?{query}")
    assert status == 400 and fragment in body["error"], body


def test_host_header_is_checked(served):
    server, *_ = served
    for host in ("evil.example", "evil.example:80", f"127.0.0.1.evil.example:{server.port}", "attacker"):
        status, _, body = server.request("/api/status", headers={"Host": host})
        assert status == 400, (host, body)
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "localhost"):
        assert server.request("/api/status", headers={"Host": host})[0] == 200, host


@pytest.mark.parametrize("path", [
    "/media/../world/world.json", "/media/%2e%2e/world/world.json", "/media/..%2fworld%2fworld.json",
    "/media/%2E%2E%2Fworld%2Fworld.json", "/media//etc/passwd", "/media/%2Fetc%2Fpasswd", "/media/notes.txt",
    "/media/escape.mp4", "/media/..%5cworld%5cworld.json", "/media/video0.mp4%00.txt", "/media/./video0.mp4",
    "/media/nothing.mp4", "/thumb/escape.mp4?t=1", "/thumb/..%2fworld%2fworld.json?t=0",
    "/media/.probret-index/index.db",
])
def test_only_indexed_files_inside_the_folder_are_served(served, path):
    server, *_ = served
    server.wait_status(lambda s: s["state"] == "ready")
    status, _, body = server.request(path)
    assert status == 404, (path, status, body[:200])
    assert b"root:" not in body and b"procedural" not in body


def test_the_symlinked_video_is_indexed_but_not_served(served):
    server, *_ = served
    server.wait_status(lambda s: s["state"] == "ready")
    status, body = server.json("/api/search?q=a+circle&k=10")
    assert status == 200 and "escape.mp4" in [h["path"] for h in body["queries"][0]["results"]]


def test_range_requests_and_thumbnails(served):
    server, folder, *_ = served
    server.wait_status(lambda s: s["state"] == "ready")
    data = (folder / "video0.mp4").read_bytes()
    status, headers, body = server.request("/media/video0.mp4")
    assert status == 200 and body == data and headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "video/mp4"
    status, headers, body = server.request("/media/video0.mp4", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and headers["content-range"] == f"bytes 100-199/{len(data)}"
    status, headers, body = server.request("/media/video0.mp4", headers={"Range": f"bytes={len(data) - 50}-"})
    assert status == 206 and body == data[-50:]
    status, headers, body = server.request("/thumb/video0.mp4?t=2.5")
    assert status == 200 and headers["content-type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.request("/thumb/video0.mp4?t=abc")[0] == 400


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts the server's descriptors in /proc")
def test_served_files_do_not_leak_descriptors(served):
    """Each media or thumbnail response holds the checked file open (engine/fsutil.py open_inside)
    and must close it, whether the client reads all of it, a range, or nothing but the headers."""
    server, *_ = served
    server.wait_status(lambda s: s["state"] == "ready")

    def open_fds() -> int:
        return len(os.listdir(f"/proc/{server.proc.pid}/fd"))

    for _ in range(3):  # warm up: thread pools, the decoder, the thumbnail cache
        server.request("/media/video0.mp4")
        server.request("/thumb/video1.mp4?t=1")
    before = open_fds()
    for i in range(30):
        server.request("/media/video0.mp4", headers={"Range": f"bytes={i}-{i + 99}"})
        server.request("/media/video1.mp4", method="HEAD")
        server.request(f"/thumb/video2.mp4?t={i / 10}")
    assert open_fds() <= before + 2  # a little slack for a pool thread's own descriptors


def test_concurrent_queries_equal_sequential_ones(served):
    server, _, world, _ = served
    server.wait_status(lambda s: s["state"] == "ready")
    queries = [c for c, _ in _captions(world)[:12]]

    def ask(q):
        status, body = server.json(f"/api/search?q={quote(q)}&k=5")
        assert status == 200, body
        return [(h["path"], round(h["score"], 6)) for h in body["queries"][0]["results"]]

    sequential = [ask(q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(ask, queries * 3))
    assert concurrent == sequential * 3


def test_new_files_are_indexed_in_the_background(served):
    server, folder, *_ = served
    before = server.wait_status(lambda s: s["state"] == "ready")
    shutil.copy(folder / "video0.mp4", folder / "added copy.mp4")
    status = server.wait_status(lambda s: s["searchable"] == before["searchable"] + 1 and s["state"] == "ready")
    assert status["total"] == before["total"] + 1
    code, body = server.json("/api/search?q=a+circle&k=10")
    assert code == 200 and "added copy.mp4" in [h["path"] for h in body["queries"][0]["results"]]
    assert server.request("/media/" + quote("added copy.mp4"))[0] == 200


def test_page_is_served(served):
    server, *_ = served
    status, headers, body = server.request("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="q"' in body and b"/api/search" in body


def test_other_addresses_need_public_and_a_token(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    env = server_env(tmp_path)
    p = subprocess.run([str(PROBRET), "serve", str(folder), "--host", "0.0.0.0"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2 and "--public" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_public_server_requires_the_token(served, tmp_path):
    _, folder, _, env = served
    server = ServerProcess(folder, env, "--public", "--token", "s3cret-token", "--rescan", "0", host="0.0.0.0",
                           wait_ready=False)
    try:
        assert "warning: serving" in server.stderr() and "?token=s3cret-token" in server.stderr()
        for path in ("/", "/api/status", "/api/search?q=x", "/media/video0.mp4", "/api/status?token=wrong"):
            status, _, body = server.request(path)
            assert status == 401, (path, status)
        status, headers, _ = server.request("/?token=s3cret-token")
        assert status == 200 and "probret_token=s3cret-token" in headers["set-cookie"]
        assert "httponly" in headers["set-cookie"].lower()
        assert server.request("/api/status", headers={"Cookie": "probret_token=s3cret-token"})[0] == 200
        assert server.request("/api/status", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        # a wildcard bind answers any Host name (the token guards it)
        assert server.request("/api/status?token=s3cret-token", headers={"Host": "my-laptop.lan:1"})[0] == 200
    finally:
        server.stop()
