"""cli/shards_cmd.py: ``probret shards merge|manifest|compact`` (engine/shards.py behind it)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from probret.engine.index import EncodedVideo, IndexSettings, IndexWriter

SETTINGS = IndexSettings(bundle_sha256="d" * 64, num_frames=2, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)


def _index(path, names):
    with IndexWriter(path, SETTINGS) as w:
        w.add([EncodedVideo(path=n, size=1, mtime_ns=1, duration=1.0, fps=1.0, width=8, height=8,
                            segments=[(0.0, 1.0)], timestamps=np.zeros((1, 2)),
                            tensors={"ann": np.full((1, 4), i, np.float32)}) for i, n in enumerate(names)])


def probret(*args):
    return subprocess.run([sys.executable, "-m", "probret.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_merge_manifest_compact(tmp_path):
    _index(tmp_path / "a", ["x.mp4", "y.mp4"])
    _index(tmp_path / "b", ["x.mp4"])
    res = probret("shards", "merge", tmp_path / "all", tmp_path / "a", tmp_path / "b", "--prefix", "A", "--prefix", "B")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"copied": 3, "skipped": 0, "failed": 0, "videos": 3}
    res = probret("shards", "manifest", tmp_path / "all")
    assert sorted(json.loads(res.stdout)["shards"]["1"]["videos"]) == ["A/x.mp4", "A/y.mp4", "B/x.mp4"]
    res = probret("shards", "compact", tmp_path / "all")
    assert res.returncode == 0 and json.loads(res.stdout) == {"compacted": False}  # no dead rows


def test_errors_are_one_line_with_their_exit_code(tmp_path):
    _index(tmp_path / "a", ["x.mp4"])
    res = probret("shards", "merge", tmp_path / "all", tmp_path / "a", "--prefix", "A", "--prefix", "B")
    assert res.returncode == 2 and "one --prefix per source" in res.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "index.db").write_text("not a database")
    res = probret("shards", "merge", tmp_path / "all", tmp_path / "junk")
    assert res.returncode == 5 and res.stderr.count("\n") == 1 and "not a probret index" in res.stderr
