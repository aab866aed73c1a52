"""``probret search`` / ``index`` / ``synth`` at their boundary: numeric options refused with the
flag and its range (exit 2), names that would harm a terminal printed safely, ``-0``, ``--quiet``
that is quiet, and an index whose model is gone. The model is the shipped demo bundle (the
default), so nothing is exported here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBRET = Path(sys.executable).with_name("probret")
pytestmark = pytest.mark.skipif(not PROBRET.exists(), reason="the probret entry point is not installed")


def run(args, env, *, code=0, text=True):
    proc = subprocess.run([str(PROBRET), *map(os.fsdecode, args)], capture_output=True, text=text, env=env,
                          timeout=300)
    err = proc.stderr if text else proc.stderr.decode(errors="replace")
    assert proc.returncode == code, f"exit {proc.returncode} != {code}\n{proc.stdout!r}\n{err}"
    assert "Traceback" not in err, err
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("inputs")
    generate_world(root / "world", videos=4, seed=8, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    env = {**os.environ, "PROBRET_CACHE": str(root / "cache"), "COLUMNS": "200"}
    return root, env


def _folder(world, name: str, files: dict[str, str]) -> Path:
    """A folder holding copies of world videos under the given (raw) names."""
    root, _ = world
    folder = root / name
    if not folder.exists():
        folder.mkdir()
        for new, old in files.items():
            shutil.copy(root / "world" / "videos" / old, os.path.join(os.fsencode(folder), os.fsencode(new)))
    return folder


@pytest.mark.parametrize("args, flag", [
    (["--window", "nan"], "--window"), (["--window", "inf"], "--window"), (["--window", "-1"], "--window"),
    (["--window", "0.01"], "--window"), (["--workers", "-1"], "--workers"), (["--workers", "1.5"], "--workers"),
    (["--batch", "0"], "--batch"), (["--top-k", "0"], "--top-k"), (["-k", "nan"], "--top-k"),
    (["--ann-candidates", "0"], "--ann-candidates"), (["--moments", "0"], "--moments"),
    (["--min-confidence", "1.5"], "--min-confidence"),
])
def test_numeric_options_name_the_flag_and_the_range(world, tmp_path, args, flag):
    _, env = world
    p = run(["search", tmp_path, "a query", *args], env, code=2)
    assert flag in p.stderr and " from " in p.stderr and " to " in p.stderr, p.stderr
    assert not (tmp_path / ".probret-index").exists()  # refused before anything is touched


@pytest.mark.parametrize("value, words", [("33x32", "even"), ("16x16", "from 32 to 4096"), ("big", "WIDTHxHEIGHT")])
def test_synth_resolution_is_a_usage_error(world, tmp_path, value, words):
    _, env = world
    p = run(["synth", tmp_path / "out", "--videos", "1", "--resolution", value], env, code=2)
    assert "--resolution" in p.stderr and words in p.stderr


def test_control_characters_never_reach_the_terminal(world):
    _, env = world
    evil = "evil\n\x1b[31mred\u202e.mp4"
    folder = _folder(world, "ctrl", {"ok.mp4": "video0.mp4", evil: "video1.mp4"})
    p = run(["search", folder, "a red circle", "--window", "0"], env)  # 0: one segment per video, accepted
    for stream in (p.stdout, p.stderr):
        assert "\x1b" not in stream and "\u202e" not in stream
    assert "evil\\n\\x1b[31mred\\u202e.mp4" in p.stdout
    lines = run(["search", folder, "a red circle", "--paths-only", "--no-update"], env).stdout.splitlines()
    assert len(lines) == 2  # the newline in the name does not split it
    raw = run(["search", folder, "a red circle", "--paths-only", "-0", "--no-update"], env, text=False).stdout
    assert sorted(raw.split(b"\0")[:-1]) == sorted(os.path.join(os.fsencode(folder), n.encode())
                                                     for n in ("ok.mp4", evil))
    out = json.loads(run(["search", folder, "a red circle", "--json", "--no-update"], env).stdout)
    hits = {h["path"]: h for h in out["queries"][0]["results"]}
    assert "ok.mp4" in hits and "path_b64" not in hits["ok.mp4"]
    shown = "evil\\n\\x1b[31mred\\u202e.mp4"
    assert hits[shown]["path_b64"]  # the exact name travels beside the display form


def test_names_that_are_not_utf8(world):
    """A Latin-1 name (not valid UTF-8): indexed, searched, shown escaped in the table and JSON,
    exact in JSON's path_b64 and in -0's raw bytes, and unchanged on the next update."""
    _, env = world
    folder = _folder(world, "bytes", {"ok.mp4": "video0.mp4", b"caf\xe9.mp4".decode("utf-8", "surrogateescape"):
                                      "video2.mp4"})
    p = run(["search", folder, "a red circle", "--json"], env)
    hit = next(h for h in json.loads(p.stdout)["queries"][0]["results"] if h["path"] != "ok.mp4")
    assert hit["path"] == "caf\\xe9.mp4"
    import base64

    assert base64.b64decode(hit["path_b64"]) == b"caf\xe9.mp4"
    table = run(["search", folder, "a red circle"], env)
    assert os.path.join(str(folder), "caf\\xe9.mp4") in table.stdout and "\udce9" not in table.stdout
    assert "indexed" not in table.stderr  # the name round-trips: nothing is encoded again
    raw = run(["search", folder, "a red circle", "--paths-only", "-0", "--no-update"], env, text=False).stdout
    assert os.path.join(os.fsencode(folder), b"caf\xe9.mp4") in raw.split(b"\0")
    shown = run(["search", folder, "a red circle", "--paths-only", "--no-update"], env).stdout.splitlines()
    assert os.path.join(str(folder), "caf\\xe9.mp4") in shown


def test_quiet_is_quiet(world):
    _, env = world
    folder = _folder(world, "quiet", {"a.mp4": "video0.mp4", "b.mp4": "video1.mp4"})
    (folder / "broken.mp4").write_text("not a video\n")
    p = run(["search", folder, "a red circle", "-q", "-v", "-k", "1"], env)
    lines = [line for line in p.stderr.splitlines() if not line.startswith("  ")]
    assert lines and all(line.startswith("warning: ") for line in lines), p.stderr  # only the failed file
    assert "broken.mp4" in p.stderr
    p = run(["search", folder, "a red circle", "-k", "1"], env)
    assert "model: shipped demo model" in p.stderr  # without -q the notes are there
    # a folder that is not a procedural world: one line on what the demo model knows, and the fix
    assert p.stderr.count("the default model is the tiny demo model") == 1 and "--model ViT-B-32:openai" in p.stderr
    p = run(["search", world[0] / "world" / "videos", "a red circle", "-k", "1"], env)
    assert "tiny demo model" not in p.stderr


def test_min_confidence_needs_a_calibrator(world, tmp_path):
    from probret.export.resolve import SHIPPED_DEMO_BUNDLE

    _, env = world
    folder = _folder(world, "conf", {"a.mp4": "video0.mp4"})
    plain = tmp_path / "plain"  # the demo bundle as an export without --calibrate makes it
    shutil.copytree(SHIPPED_DEMO_BUNDLE, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    del manifest["calibration"]
    (plain / "manifest.json").write_text(json.dumps(manifest))
    p = run(["search", folder, "a red circle", "--model", plain, "--min-confidence", "0.5"], env, code=2)
    assert "--min-confidence" in p.stderr and "calibrator" in p.stderr


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A procedural folder the size the demo calibrator was fitted for (within 4x of its gallery),
    with its evaluation captions."""
    from probret.export.demo_bundle import CALIBRATION_GALLERY
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("gallery")
    n = CALIBRATION_GALLERY // 3
    generate_world(root / "world", videos=n, seed=21, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    caps = [c["caption"] for c in json.loads((root / "world" / "world.json").read_text())["captions"].values()
            if c.get("eval")]
    return root / "world" / "videos", caps[:3], {**os.environ, "PROBRET_CACHE": str(root / "cache"), "COLUMNS": "200"}


def test_the_demo_model_reports_confidence_and_min_confidence_hides_hits(gallery, tmp_path):
    folder, caps, env = gallery
    p = run(["search", folder, *caps, "--json", "-k", "5"], env)
    assert "calibrated on a gallery" not in p.stderr and "tiny demo model" not in p.stderr  # its own domain
    queries = json.loads(p.stdout)["queries"]
    confs = [[h["confidence"] for h in q["results"]] for q in queries]
    assert all(isinstance(c, float) and 0.0 <= c <= 1.0 for row in confs for c in row)
    assert all(q["note"] is None for q in queries)
    # a threshold between the first query's top two hits keeps exactly its first hit
    assert confs[0][0] > confs[0][1]
    cut = f"{(confs[0][0] + confs[0][1]) / 2:.6f}"
    kept = json.loads(run(["search", folder, caps[0], "--json", "-k", "5", "--min-confidence", cut], env).stdout)
    [q] = kept["queries"]
    assert [h["path"] for h in q["results"]] == [queries[0]["results"][0]["path"]] and q["note"] is None
    paths = run(["search", folder, caps[0], "-k", "5", "--min-confidence", cut, "--paths-only"], env).stdout
    assert paths.splitlines() == [str(folder / queries[0]["results"][0]["path"])]
    table = run(["search", folder, caps[0], "-k", "5", "--min-confidence", cut], env).stdout.splitlines()
    assert re.match(r"rank\s+score\s+confidence\s+uncertainty\s+path\s+moment", table[1]) and len(table) == 3
    page = tmp_path / "kept.html"
    run(["search", folder, caps[0], "-k", "5", "--min-confidence", cut, "--html", page], env)
    assert page.read_text().count("class='hit'") == 1 and "no confident match" not in page.read_text()


def test_no_confident_match_in_every_output(gallery, tmp_path):
    folder, caps, env = gallery
    args = ["search", folder, caps[0], "-k", "5", "--min-confidence", "1"]
    [q] = json.loads(run(args + ["--json"], env).stdout)["queries"]
    assert q["results"] == [] and q["note"].startswith("no confident match")
    table = run(args, env).stdout
    assert "(no confident match" in table and "rank" not in table and ".mp4" not in table  # no empty header
    p = run(args + ["--paths-only"], env)
    assert p.stdout == "" and "no confident match" in p.stderr
    page = tmp_path / "none.html"
    run(args + ["--html", page], env)
    assert "no confident match" in page.read_text() and "class='hit'" not in page.read_text()


def test_domain_warnings_fire_only_off_the_calibrators_domain(world, gallery):
    """One line when the gallery is far from the calibrator's size, one when the demo model meets a
    folder that is not procedural; neither on a procedural folder of the fitted size."""
    from probret.export.demo_bundle import CALIBRATION_GALLERY

    _, env = world
    small = _folder(world, "small", {"a.mp4": "video0.mp4", "b.mp4": "video1.mp4"})  # copies: not procedural
    p = run(["search", small, "a red circle", "-k", "1"], env)
    assert p.stderr.count(f"confidence was calibrated on a gallery of {CALIBRATION_GALLERY} videos") == 1
    assert p.stderr.count("the default model is the tiny demo model") == 1
    p = run(["search", world[0] / "world" / "videos", "a red circle", "-k", "1"], env)  # procedural, 4 videos
    assert "calibrated on a gallery" in p.stderr and "tiny demo model" not in p.stderr
    folder, caps, genv = gallery
    p = run(["search", folder, caps[0], "-k", "1"], genv)
    assert "calibrated on a gallery" not in p.stderr and "tiny demo model" not in p.stderr


def test_index_settings_stick_and_a_change_is_reported(world):
    _, env = world
    folder = _folder(world, "window", {"a.mp4": "video0.mp4", "b.mp4": "video1.mp4"})
    run(["index", folder, "--window", "1"], env)
    p = run(["search", folder, "a red circle", "--json"], env)  # no --window: the index's 1 s
    assert json.loads(p.stdout)["indexing"]["encoded_videos"] == 0
    p = run(["search", folder, "a red circle", "--window", "5", "--no-update"], env, code=2)
    assert "--window" in p.stderr and "built with 1.0" in p.stderr
    p = run(["search", folder, "a red circle", "--window", "0", "--json"], env)
    assert "rebuilding" in p.stderr and "segment window 1.0 -> 0.0" in p.stderr
    assert json.loads(p.stdout)["indexing"]["rebuilt"]


def test_a_missing_index_model_fails_clearly(world, tmp_path):
    from probret.export.resolve import SHIPPED_DEMO_BUNDLE

    _, env = world
    folder = _folder(world, "gone", {"a.mp4": "video0.mp4"})
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_DEMO_BUNDLE, bundle)
    run(["index", folder, "--model", bundle, "-q"], env)
    shutil.rmtree(bundle)
    p = run(["search", folder, "a red circle"], env, code=4)
    assert "the index was built with bundle" in p.stderr and "--model" in p.stderr
    assert "indexed" not in p.stderr  # nothing was rebuilt with the demo model
