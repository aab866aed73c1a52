"""``probret synth``: options, summary, progress, and one-line errors with exit code 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from probret.cli.synth_cmd import synth
from probret.engine.errors import DataError

ARGS = ["--videos", "6", "--seed", "3", "--resolution", "48x32", "--frames", "6", "--fps", "6"]


def test_synth_writes_a_world_and_prints_a_summary(tmp_path):
    out = tmp_path / "w"
    result = CliRunner().invoke(synth, [str(out), *ARGS, "--difficulty", "easy"])
    assert result.exit_code == 0, result.output
    stdout = result.stdout
    assert "videos: train 4, val 1, test 1" in stdout
    assert "captions: train" in stdout and "disk:" in stdout and "time:" in stdout
    assert "synth" in result.stderr  # tqdm bar goes to stderr, not into the summary
    assert len(list((out / "videos").glob("*.mp4"))) == 6
    world = json.loads((out / "world.json").read_text())
    s = world["settings"]
    assert (s["seed"], s["resolution"], s["frames"], s["fps"]) == (3, [48, 32], 6, 6)
    assert s["difficulty"]["name"] == "easy"
    for name in ("procedural_data.json", "train.csv", "val.csv", "test.csv"):
        assert (out / name).is_file()


def test_synth_refuses_non_empty_dir_then_overwrites(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    runner = CliRunner()
    result = runner.invoke(synth, [str(out), *ARGS, "-q"])
    assert isinstance(result.exception, DataError) and "not empty" in str(result.exception)
    assert not (out / "videos").exists()
    result = runner.invoke(synth, [str(out), *ARGS, "-q", "--overwrite", "--difficulty", "0.3"])
    assert result.exit_code == 0, result.output
    assert (out / "keep.txt").exists() and (out / "world.json").exists()
    assert json.loads((out / "world.json").read_text())["settings"]["difficulty"]["name"] == "0.3"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--difficulty", "insane"], "unknown difficulty"),
        (["--splits", "0.5,0.5"], "three"),
    ],
)
def test_bad_options_are_data_errors(tmp_path, extra, message):
    result = CliRunner().invoke(synth, [str(tmp_path / "w"), *ARGS, *extra])
    assert isinstance(result.exception, DataError) and message in str(result.exception)


@pytest.mark.parametrize("value, message", [("big", "WIDTHxHEIGHT"), ("33x32", "even"), ("16x16", "from 32 to 4096")])
def test_bad_resolution_is_a_usage_error(tmp_path, value, message):
    result = CliRunner().invoke(synth, [str(tmp_path / "w"), *ARGS, "--resolution", value])
    assert result.exit_code == 2 and "--resolution" in result.output and message in result.output
    assert not (tmp_path / "w").exists()


def _probret() -> str:
    exe = Path(sys.executable).with_name("probret")
    if not exe.exists():
        pytest.skip("probret console script not installed next to this Python")
    return str(exe)


def test_console_script_error_is_one_line_exit_3(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "something").write_text("x")
    proc = subprocess.run([_probret(), "synth", str(out), *ARGS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ") and "--overwrite" in proc.stderr
    assert proc.stdout == ""


def test_console_script_generates(tmp_path):
    out = tmp_path / "w"
    proc = subprocess.run([_probret(), "synth", str(out), *ARGS, "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "videos: train 4, val 1, test 1" in proc.stdout
    assert len(list((out / "videos").glob("*.mp4"))) == 6


def test_synth_long_videos(tmp_path):
    out = tmp_path / "long"
    result = CliRunner().invoke(synth, [str(out), "--long", "--videos", "2", "--duration", "25,30", "--events",
                                        "2,3", "--resolution", "32x32", "-q"])
    assert result.exit_code == 0, result.output
    assert "25-30 s @ 2 fps" in result.stdout
    world = json.loads((out / "world.json").read_text())
    assert world["settings"]["long_videos"]["events"] == [2, 3] and world["settings"]["fps"] == 2
    assert all(50 <= v["frames"] <= 60 for v in world["videos"].values())
    result = CliRunner().invoke(synth, [str(tmp_path / "bad"), "--long", "--events", "3"])
    assert isinstance(result.exception, DataError) and "MIN,MAX" in str(result.exception)
