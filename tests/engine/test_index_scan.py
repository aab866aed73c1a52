"""engine/index/scan.py: names that are not UTF-8, things that are not files, folders that cannot
be listed (issue 12 §2, the index's part), and the lock-free plan of an update."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from probret.engine.index import (INDEX_DIRNAME, IndexReader, IndexWriter, diff, list_folder, plan_update,
                                  scan_folder)
from probret.engine.index.scan import FolderListing
from tests.engine.test_index import SETTINGS, assert_stored, video

NOT_UTF8 = os.fsdecode(b"caf\xe9 \xff\xfe.mp4")  # Latin-1 bytes: invalid UTF-8


def _entry_video(folder: Path, rel: str, seed: int = 0):
    st = os.stat(os.path.join(folder, rel))
    return video(rel, 1, seed=seed, size=st.st_size, mtime_ns=st.st_mtime_ns)


def test_names_that_are_not_utf8_index_and_round_trip_as_bytes(tmp_path):
    folder = tmp_path / "videos"
    (folder / "d\udce9").mkdir(parents=True)  # a folder name that is not UTF-8 either
    names = [NOT_UTF8, "d\udce9/x.mp4", "plain.mp4", "é.mp4"]
    for n in names:
        (folder / n).write_bytes(b"x" * 10)
    listing = list_folder(folder)
    assert sorted(os.fsencode(f.path) for f in listing.files) == sorted(os.fsencode(n) for n in names)
    idx = folder / INDEX_DIRNAME
    vids = [_entry_video(folder, n, seed=i) for i, n in enumerate(names)]
    with IndexWriter(idx, SETTINGS) as w:
        w.add(vids)
        scan = w.scan(folder)
        assert scan.todo == [] and scan.removed == [] and scan.unchanged == 4  # nothing re-encoded
    with IndexReader(idx) as r:
        got = [v.path for v in r.videos]
        assert sorted(got, key=os.fsencode) == got  # path order is byte order
        for v in vids:
            assert r.videos[r.video_index(v.path)].path == v.path
            assert os.path.isfile(folder / r.videos[r.video_index(v.path)].path)  # opens the real file
            assert_stored(r, v)
    with IndexWriter(idx, SETTINGS) as w:
        os.unlink(folder / NOT_UTF8)
        scan = w.scan(folder)
        assert scan.removed == [NOT_UTF8]
        w.remove(scan.removed)
        w.add_failed(scan.todo[0] if scan.todo else listing.files[0], "no video stream")
    with IndexReader(idx) as r:
        assert NOT_UTF8 not in [v.path for v in r.videos]


def test_fifos_sockets_and_broken_links_are_reported_as_skipped(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "ok.mp4").write_bytes(b"x")
    os.mkfifo(folder / "pipe.mp4")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / "sock.mp4"))
    (folder / "dangling.mp4").symlink_to(folder / "nowhere")
    (folder / "null.mkv").symlink_to("/dev/null")  # a character device, through a link
    listing = list_folder(folder)  # returns at once: the FIFO is never opened
    s.close()
    assert [f.path for f in listing.files] == ["ok.mp4"]
    assert dict(listing.skipped) == {"pipe.mp4": "a FIFO, not a video file", "sock.mp4": "a socket, not a video file",
                                     "dangling.mp4": "a broken symbolic link",
                                     "null.mkv": "a character device, not a video file"}
    with IndexWriter(folder / INDEX_DIRNAME, SETTINGS) as w:
        scan = w.scan(folder)
    assert len(scan.skipped) == 4 and [f.path for f in scan.new] == ["ok.mp4"]
    assert scan_folder(folder)[0] == listing.files


def test_unlisted_folder_keeps_its_entries_by_rule():
    """The rule on its own: stored videos under a folder that could not be listed are not removed."""
    listing = FolderListing(unlisted=["locked"])
    stored = {"locked/a.mp4": (1, 1, "ok", None), "gone.mp4": (1, 1, "ok", None), "lockedness.mp4": (1, 1, "ok", None)}
    assert diff(listing, stored).removed == ["gone.mp4", "lockedness.mp4"]


AS_OTHER_USER = textwrap.dedent("""
    import json, sys
    from probret.engine.index import IndexReader, IndexWriter, list_folder
    sys.path.insert(0, {tests!r})
    from test_index import SETTINGS
    folder, idx = sys.argv[1], sys.argv[2]
    out = {{"unlisted": list_folder(folder).unlisted}}
    with IndexWriter(idx, SETTINGS) as w:
        scan = w.scan(folder)
        out["removed"] = scan.removed
        w.remove(scan.removed)
    with IndexReader(idx) as r:
        out["videos"] = [v.path for v in r.videos]
    print(json.dumps(out))
""")


def run_without_permission_override(script: str, *args) -> subprocess.CompletedProcess:
    """Run ``script`` in a process that file permissions apply to. Root ignores them, so as root
    the process runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv drops them from
    its bounding set before exec); any other user is subject to them anyway."""
    prefix = []
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and setpriv (util-linux) is missing to drop root's permission override")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    return subprocess.run([*prefix, sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_a_folder_that_cannot_be_listed_keeps_its_index_entries():
    base = Path(tempfile.mkdtemp(prefix="probret-unlisted-"))
    folder, idx = base / "videos", base / "idx"
    (folder / "locked").mkdir(parents=True)
    for n in ("a.mp4", "locked/b.mp4"):
        (folder / n).write_bytes(b"x")
    with IndexWriter(idx, SETTINGS) as w:
        w.add([_entry_video(folder, "a.mp4"), _entry_video(folder, "locked/b.mp4", seed=1)])
    os.chmod(folder / "locked", 0)
    try:
        res = run_without_permission_override(AS_OTHER_USER.format(tests=str(Path(__file__).parent)), folder, idx)
    finally:
        os.chmod(folder / "locked", 0o755)
        shutil.rmtree(base)
    assert res.returncode == 0, res.stderr
    import json
    out = json.loads(res.stdout)
    assert out == {"unlisted": ["locked"], "removed": [], "videos": ["a.mp4", "locked/b.mp4"]}
    assert "cannot list" not in res.stderr  # reported once, by the reader of ``unlisted`` (the CLI)


def test_plan_update_takes_no_lock_and_writes_nothing(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"x")
    idx = folder / INDEX_DIRNAME
    plan = plan_update(folder, idx, SETTINGS)
    assert not idx.exists() and plan.rebuild_reason == "no index yet" and [f.path for f in plan.new] == ["a.mp4"]
    with IndexWriter(idx, SETTINGS) as w:
        w.add([_entry_video(folder, "a.mp4")])
    writer = IndexWriter(idx, SETTINGS)  # holds the lock: a plan does not wait for it
    before = sorted((p.name, p.stat().st_mtime_ns) for p in idx.iterdir())
    try:
        plan = plan_update(folder, idx, SETTINGS)
        assert plan.up_to_date and plan.unchanged == 1
        other = type(SETTINGS)(**{**SETTINGS.__dict__, "window": 10.0})
        plan = plan_update(folder, idx, other)
        assert not plan.up_to_date and plan.rebuild_reason == "segment window 30.0 -> 10.0"
        (folder / "b.mp4").write_bytes(b"y")
        assert [f.path for f in plan_update(folder, idx, SETTINGS).new] == ["b.mp4"]
        assert sorted((p.name, p.stat().st_mtime_ns) for p in idx.iterdir()) == before
    finally:
        writer.close()


@pytest.mark.parametrize("n", [0])
def test_scan_of_missing_folder_is_a_data_error(tmp_path, n):
    from probret.engine.errors import DataError
    with pytest.raises(DataError, match="no such folder"):
        list_folder(tmp_path / "missing")
