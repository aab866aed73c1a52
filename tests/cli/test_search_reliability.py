"""``probret search`` next to other processes and on indexes it cannot write (issue 12 §2-§3),
end to end through the installed entry point with the shipped demo model: concurrent searches
while a writer holds the lock, a read-only index, a full disk, entries that are not regular
files and folders that cannot be listed."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.cli.test_search_inputs import PROBRET, run, world  # noqa: F401 - world is a fixture
from tests.engine.test_facade import _hold_lock, _release

pytestmark = pytest.mark.skipif(not PROBRET.exists(), reason="the probret entry point is not installed")
QUERY = "a red circle"


def _copy_videos(world, dest: Path, n: int) -> Path:
    root, _ = world
    dest.mkdir(parents=True)
    for name in sorted(os.listdir(root / "world" / "videos"))[:n]:
        shutil.copy(root / "world" / "videos" / name, dest / name)
    return dest


def _paths(stdout: str) -> list[str]:
    return [h["path"] for h in json.loads(stdout)["queries"][0]["results"]]


def test_concurrent_searches_succeed_while_a_writer_holds_the_lock(world, tmp_path):
    _, env = world
    folder = _copy_videos(world, tmp_path / "videos", 3)
    run(["index", folder], env)
    holder = _hold_lock(folder / ".probret-index")
    try:
        procs = [subprocess.Popen([str(PROBRET), "search", str(folder), QUERY, "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for _ in range(6)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outs]
        assert len({tuple(_paths(o)) for o, _ in outs}) == 1 and len(_paths(outs[0][0])) == 3
        shutil.copy(folder / "video0.mp4", folder / "new.mp4")  # now a search has work: it needs the lock
        p = run(["search", folder, QUERY, "-q"], env, code=5)
        assert "being written by another probret process" in p.stderr and len(p.stderr.splitlines()) == 1
        assert len(_paths(run(["search", folder, QUERY, "--json", "--no-update"], env).stdout)) == 3
    finally:
        _release(holder)
    assert len(_paths(run(["search", folder, QUERY, "--json"], env).stdout)) == 4


def _as_other_user(args, env) -> subprocess.CompletedProcess:
    """``probret ARGS`` subject to file permissions (as root: without CAP_DAC_OVERRIDE, see
    tests/engine/test_index_scan.py's run_without_permission_override)."""
    prefix = []
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and setpriv (util-linux) is missing to drop root's permission override")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    return subprocess.run([*prefix, str(PROBRET), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_read_only_index_is_searched(world):
    _, env = world
    base = Path(tempfile.mkdtemp(prefix="probret-ro-cli-"))
    folder = _copy_videos(world, base / "videos", 2)
    run(["index", folder], env)
    for dirpath, _, filenames in os.walk(base, topdown=False):
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o444)
        os.chmod(dirpath, 0o555)
    try:
        no_update = _as_other_user(["search", folder, QUERY, "--json", "--no-update"], env)
        plain = _as_other_user(["search", folder, QUERY, "--json"], env)  # up to date: no writer needed either
        shutil.copy(base / "videos" / "video0.mp4", tempfile.gettempdir())  # (reading is all it may do)
        os.chmod(folder, 0o755)
        shutil.copy(folder / "video0.mp4", folder / "new.mp4")
        os.chmod(folder, 0o555)
        work = _as_other_user(["search", folder, QUERY, "-q"], env)  # now an update is needed, and impossible
    finally:
        for dirpath, _, _ in os.walk(base):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(base)
    for p in (no_update, plain):
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert len(_paths(p.stdout)) == 2
    assert work.returncode == 5 and "read-only" in work.stderr and "--no-update" in work.stderr, work.stderr
    assert len(work.stderr.splitlines()) == 1


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_names_the_index_and_leaves_it_usable(world, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG) as a full disk refuses
    them (ENOSPC): a real failing write in the real command."""
    root, env = world
    folder = _copy_videos(world, tmp_path / "videos", 1)
    idx = folder / ".probret-index"
    run(["index", folder, "--window", "0"], env)
    for name in sorted(os.listdir(root / "world" / "videos"))[1:]:
        shutil.copy(root / "world" / "videos" / name, folder / name)
    limit = max(p.stat().st_size for p in idx.rglob("*") if p.is_file()) + 1
    said = []
    for _ in range(2):  # retrying on a still-full disk says the same thing
        p = subprocess.run([str(PROBRET), "search", str(folder), QUERY, "-q"], capture_output=True, text=True,
                           env=env, timeout=300, preexec_fn=_limit_file_size(limit))
        assert p.returncode == 5 and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith(f"error: cannot write the index {idx}: ")
        # whichever write is refused first: SQLite's (it reports EFBIG as an I/O error, a real full
        # disk as "database or disk is full", which gets the free-space hint) or a shard's
        assert any(w in p.stderr for w in ("disk I/O error", "File too large", "full")), p.stderr
        assert "the index is unchanged" in p.stderr
        said.append(p.stderr)
    assert said[0] == said[1]
    kept = _paths(run(["search", folder, QUERY, "--json", "--no-update"], env).stdout)  # usable: what was committed
    assert "video0.mp4" in kept and len(kept) < 4
    assert len(_paths(run(["search", folder, QUERY, "--json"], env).stdout)) == 4  # with space again it carries on


def test_fifos_sockets_and_unlisted_folders_are_warned_about(world):
    _, env = world
    base = Path(tempfile.mkdtemp(prefix="probret-skip-cli-"))
    folder = _copy_videos(world, base / "videos", 2)
    _copy_videos(world, folder / "locked", 1)
    run(["index", folder], env)
    os.mkfifo(folder / "pipe.mp4")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.mp4"))
    os.chmod(folder / "locked", 0)
    try:
        text = _as_other_user(["search", folder, QUERY], env)
        as_json = _as_other_user(["search", folder, QUERY, "--json"], env)
    finally:
        sock.close()
        os.chmod(folder / "locked", 0o755)
        shutil.rmtree(base)
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    err = text.stderr
    assert "warning: skipped 2 file(s) that are not regular files:" in err
    assert "  pipe.mp4: a FIFO" in err and "  sock.mp4: a socket" in err, err
    assert "folder(s); their videos stay in the index as they were:" in err and "\n  locked\n" in err + "\n", err
    assert err.count("locked") == 1 and err.count("stay in the index as they were") == 1, err  # once, not per walk
    out = json.loads(as_json.stdout)
    assert {s["path"] for s in out["indexing"]["skipped"]} == {"pipe.mp4", "sock.mp4"}
    assert out["indexing"]["unlisted"] == ["locked"]
    assert "locked/video0.mp4" in _paths(as_json.stdout)  # its entries are kept and still searched
