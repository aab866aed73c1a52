"""``probret index`` / ``probret search`` / ``probret demo`` through the installed entry point
(subprocesses of .venv/bin/probret): outputs, the results page, bad input (one line, an exit
code, never a traceback), a checkpoint model, and a run with torch unimportable.

One tiny random SPEM bundle (test-vit-tiny) and one small procedural folder are built per module.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

PROBRET = Path(sys.executable).with_name("probret")
pytestmark = pytest.mark.skipif(not PROBRET.exists(), reason="the probret entry point is not installed")


@pytest.fixture(scope="module")
def env(tmp_path_factory, make_spem_bundle):
    """(folder with 8 videos + 2 broken files, bundle dir, checkpoint dir, world dir, environment)."""
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("cli")
    ckpt, _ = make_spem_bundle(root, seed=1, benchmark_videos=6)
    world = root / "world"
    generate_world(world, videos=8, seed=4, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    folder = root / "videos"
    shutil.copytree(world / "videos", folder)
    (folder / "broken.mp4").write_text("not a video at all\n" * 10)
    (folder / "empty.mkv").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored\n")
    e = {**os.environ, "PROBRET_CACHE": str(root / "cache"), "COLUMNS": "200"}
    return folder, root / "bundle", ckpt, world, e


def run(args, env, *, code=0, cwd=None, stdin=None):
    proc = subprocess.run([str(PROBRET), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          input=stdin, timeout=300)
    assert proc.returncode == code, f"exit {proc.returncode} != {code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def captions(world: Path, n: int) -> list[str]:
    data = json.loads((world / "world.json").read_text())
    return [c["caption"] for c in data["captions"].values()][:n]


def test_index_then_search_outputs(env, tmp_path):
    folder, bundle, _, world, e = env
    p = run(["index", folder, "--model", bundle], e)
    assert "indexed 8 video(s)" in p.stderr and "videos/s" in p.stderr
    # per-stage breakdown and how the files were decoded (8 good files: one pass or with seeks)
    assert re.search(r"decode [\d.]+ s and preprocess [\d.]+ s over threads; encode [\d.]+ s", p.stderr)
    m = re.search(r"; (\d+) file\(s\) decoded in one pass, (\d+) with seeks\)", p.stderr)
    assert m and int(m.group(1)) + int(m.group(2)) == 8, p.stderr
    assert "skipped 2 file(s) that could not be decoded" in p.stderr
    assert re.search(r"^  broken\.mp4: \S", p.stderr, re.M) and re.search(r"^  empty\.mkv: \S", p.stderr, re.M)
    assert (folder / ".probret-index" / "index.db").is_file()

    q = captions(world, 2)
    # no --model: the index's model; nothing new to encode
    p = run(["search", folder, *q, "--json", "-k", "5"], e)
    assert "indexed" not in p.stderr and "(the index's model)" in p.stderr
    out = json.loads(p.stdout)
    assert [r["query"] for r in out["queries"]] == q
    for r in out["queries"]:
        assert [h["rank"] for h in r["results"]] == [1, 2, 3, 4, 5]
        scores = [h["score"] for h in r["results"]]
        assert scores == sorted(scores, reverse=True)
        for h in r["results"]:
            assert (folder / h["path"]).is_file() and h["path"].endswith(".mp4")
            assert isinstance(h["uncertainty"], float) and h["start"] == 0.0 and h["end"] == pytest.approx(2.0)
            assert 0.0 <= h["best_time"] <= 2.0
            assert h["confidence"] is None  # this bundle carries no calibrator
            assert h["moments"] == [{"start": h["start"], "end": h["end"], "best_time": h["best_time"],
                                     "score": h["score"]}]
    assert out["model"]["method"] == "spem" and out["indexing"]["encoded_videos"] == 0

    p = run(["search", folder, q[0], "--paths-only", "-k", "3"], e)
    lines = p.stdout.splitlines()
    assert len(lines) == 3 and all(Path(line).is_file() for line in lines)
    assert lines == [str(folder / h["path"]) for h in out["queries"][0]["results"][:3]]

    rep = json.loads(run(["index", folder, "--json", "-q"], e).stdout)
    assert (rep["encoded_videos"], rep["indexed"], rep["failed_total"], rep["unchanged"]) == (0, 8, 2, 10)

    p = run(["search", folder, q[0], "-k", "2"], e)
    assert p.stdout.splitlines()[0] == f"query: {q[0]}"
    assert re.match(r"rank\s+score\s+uncertainty\s+path\s+moment", p.stdout.splitlines()[1])
    # the moment and, after @, its best instant
    assert re.search(r"^\s+1\s+-?\d\.\d{4}\s+\d\.\d{4}\s+\S+\.mp4\s+0:00\.0-0:02\.0 @0:0[0-2]\.\d$", p.stdout, re.M)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    idat = data.index(b"IDAT")
    n = struct.unpack(">I", data[idat - 4:idat])[0]
    assert len(zlib.decompress(data[idat + 4:idat + 4 + n])) == h * (1 + 3 * w)
    return w, h


def test_queries_file_and_html_page(env, tmp_path):
    folder, bundle, _, world, e = env
    qs = captions(world, 3)
    qfile = tmp_path / "queries.txt"
    qfile.write_text("\n".join(qs[:2]) + "\n\n")
    page = tmp_path / "out" / "results.html"
    p = run(["search", folder, qs[2], "--queries", qfile, "--model", bundle, "-k", "3", "--html", page], e)
    assert p.stdout.count("query: ") == 3
    text = page.read_text()
    for q in qs:
        assert q in text
    imgs = re.findall(r"<img class='thumb' src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(imgs) == 9
    assert _png_size(base64.b64decode(imgs[0])) == (64, 64)  # small videos are not enlarged
    assert text.count("class='hit'") == 9 and "#t=0.00,2.00" in text
    # links relative to the page, no absolute path anywhere on it
    assert str(folder) not in text and str(folder.resolve()) not in text and "file://" not in text
    # queries from stdin
    p = run(["search", folder, "--queries", "-", "--paths-only", "-k", "1"], e, stdin="\n".join(qs) + "\n")
    assert len(p.stdout.splitlines()) == 3


def test_video_to_text(env, tmp_path):
    folder, bundle, _, world, e = env
    caps = captions(world, 6)
    cfile = tmp_path / "captions.txt"
    cfile.write_text("\n".join(caps) + "\n")
    p = run(["search", folder, "--video", folder / "video0.mp4", "--captions", cfile, "--json"], e)
    out = json.loads(p.stdout)
    assert out["source"] == "index" and sorted(h["caption"] for h in out["captions"]) == sorted(caps)
    assert [h["rank"] for h in out["captions"]] == list(range(1, 7))
    # a video outside the folder is encoded on the fly, with the same scores as from the index
    outside = tmp_path / "copy.mp4"
    shutil.copy(folder / "video0.mp4", outside)
    p2 = run(["search", folder, "--video", outside, "--captions", cfile, "--json"], e)
    out2 = json.loads(p2.stdout)
    assert out2["source"].startswith("encoded now")
    assert [h["caption"] for h in out2["captions"]] == [h["caption"] for h in out["captions"]]
    np.testing.assert_allclose([h["score"] for h in out2["captions"]], [h["score"] for h in out["captions"]], atol=1e-5)
    p = run(["search", folder, "--video", folder / "video0.mp4", "--captions", cfile, "-k", "2"], e)
    assert re.match(r"rank\s+score\s+uncertainty\s+moment\s+caption", p.stdout.splitlines()[0])
    assert len(p.stdout.splitlines()) == 3


def test_bad_input_is_one_line_and_an_exit_code(env, tmp_path):
    folder, bundle, _, world, e = env
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    p = run(["search", empty, "a query", "--model", bundle], e, code=3)
    assert p.stderr.startswith("error: ") and "no videos found" in p.stderr
    run(["index", tmp_path / "missing", "--model", bundle], e, code=3)
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "a.mp4").write_text("nope")
    p = run(["search", only_broken, "a query", "--model", bundle], e, code=3)
    assert "none of the 1 video file(s) could be decoded" in p.stderr
    p = run(["search", folder, "a query", "--model", tmp_path / "no-model"], e, code=4)
    assert "no such bundle or checkpoint" in p.stderr
    run(["search", folder, "", "--model", bundle], e, code=2)
    run(["search", folder, "--model", bundle], e, code=2)
    run(["search", folder, "q", "--json", "--paths-only"], e, code=2)
    bad = tmp_path / "badindex"  # probret's own index (marked), its database damaged afterwards
    run(["index", folder, "--model", bundle, "--index", bad, "-q"], e)
    for name in ("index.db-wal", "index.db-shm"):
        (bad / name).unlink(missing_ok=True)
    (bad / "index.db").write_bytes(b"garbage" * 500)
    p = run(["search", folder, "a query", "--model", bundle, "--index", bad], e, code=5)
    assert "unreadable" in p.stderr and "--rebuild" in p.stderr
    run(["search", folder, "a query", "--model", bundle, "--index", bad, "--rebuild", "-q"], e)
    foreign = tmp_path / "foreign"  # a directory that is not probret's: refused, even with --rebuild
    foreign.mkdir()
    (foreign / "index.db").write_bytes(b"garbage" * 500)
    p = run(["search", folder, "a query", "--model", bundle, "--index", foreign, "--rebuild"], e, code=5)
    assert "not a probret index" in p.stderr and (foreign / "index.db").read_bytes() == b"garbage" * 500


def test_long_query_is_cut_with_a_warning(env):
    folder, bundle, _, world, e = env
    long = " ".join(["a red circle moves left over a striped background"] * 8)
    p = run(["search", folder, long, "--model", bundle, "--paths-only", "-k", "1"], e)
    assert re.search(r"warning: query 1 is longer than the model's 32-token context; it was cut to: 'a red circle", p.stderr)
    assert len(p.stdout.splitlines()) == 1


def test_second_writer_fails_clearly(env, tmp_path):
    folder, bundle, _, _, e = env
    from probret.engine.bundle import load_bundle
    from probret.engine.index import IndexSettings, IndexWriter

    b = load_bundle(bundle)
    s = IndexSettings(bundle_sha256=b.sha256, num_frames=4, image_size=32, mean=tuple(b.preprocessing["mean"]),
                      std=tuple(b.preprocessing["std"]))
    with IndexWriter(tmp_path / "idx", s):
        p = run(["index", folder, "--model", bundle, "--index", tmp_path / "idx"], e, code=5)
        assert f"being written by another probret process (pid {os.getpid()})" in p.stderr and "--wait" in p.stderr
        # --no-update searches what is there without the lock (here: nothing indexed yet)
        p = run(["search", folder, "q", "--model", bundle, "--index", tmp_path / "idx", "--no-update"], e, code=3)
        assert "no searchable video" in p.stderr


def test_checkpoint_model_ranks_like_its_bundle(env, tmp_path):
    folder, bundle, ckpt, world, e = env
    q = captions(world, 3)
    a = json.loads(run(["search", folder, *q, "--model", bundle, "--json"], e).stdout)
    p = run(["search", folder, *q, "--model", ckpt, "--index", tmp_path / "idx", "--json"], e)
    assert "with PyTorch" in p.stderr
    b = json.loads(p.stdout)
    for ra, rb in zip(a["queries"], b["queries"]):
        assert [h["path"] for h in ra["results"]] == [h["path"] for h in rb["results"]]
        np.testing.assert_allclose([h["score"] for h in ra["results"]], [h["score"] for h in rb["results"]], atol=1e-6)


BLOCK_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip"):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from probret.cli.main import cli
cli(sys.argv[1:])
"""


def test_search_runs_with_torch_unimportable(env, tmp_path):
    folder, bundle, ckpt, world, e = env
    q = captions(world, 1)
    args = ["search", str(folder), q[0], "--model", str(bundle), "--index", str(tmp_path / "idx"), "--json", "-q"]
    p = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["queries"][0]["results"]) == 8
    # a checkpoint that was never exported needs torch for its one-time export: a clear error, exit 4
    args = ["search", str(folder), q[0], "--model", str(ckpt), "--index", str(tmp_path / "idx2")]
    fresh = {**e, "PROBRET_CACHE": str(tmp_path / "fresh-cache")}
    p = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, env=fresh, timeout=300)
    assert p.returncode == 4 and "needs PyTorch" in p.stderr and "Traceback" not in p.stderr


def test_demo_command(env, tmp_path):
    _, bundle, _, _, e = env
    p = run(["demo", "--out", tmp_path / "demo", "--videos", "12", "--queries", "2", "--model", bundle], e)
    assert "1. generated 12 videos" in p.stdout and "2. indexed 12 videos" in p.stdout
    assert p.stdout.count("query: ") == 2 and "right video first for" in p.stdout
    p = run(["demo", "--out", tmp_path / "demo", "--videos", "12", "--queries", "2", "--model", bundle], e)
    assert "1. reusing" in p.stdout and "is up to date" in p.stdout
    assert not re.search(r"rank\s+score\s+confidence", p.stdout)  # that bundle carries no calibrator
    p = run(["demo", "--out", tmp_path / "default", "--videos", "12", "--queries", "1"], e)  # the shipped demo model
    assert re.search(r"^rank\s+score\s+confidence\s+uncertainty\s+path", p.stdout, re.M), p.stdout
