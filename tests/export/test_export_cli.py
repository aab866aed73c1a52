"""The console scripts, run as a user would (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probret.engine.runtime import tensorrt_status

BIN = Path(sys.executable).parent


def _run(*args, timeout=300):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def test_probret_export_writes_a_verified_bundle(checkpoints, tmp_path):
    out = tmp_path / "bundle"
    r = _run(BIN / "probret-export", checkpoints("tmass"), "--out", out, "--sampling", "fixed-seed",
             "--samples", "5", "--seed", "7", "--benchmark-videos", "6", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["parity_passed"] and summary["sampling"] == "fixed-seed" and summary["samples"] == 5
    assert summary["retrieval"]["topk_identical"] == 1.0
    assert "parity: retrieval" in r.stderr  # progress on stderr
    from probret.engine.bundle import load_bundle

    b = load_bundle(out)
    assert b.sampling["seed"] == 7 and b.noise_specs == []  # fixed-seed: noise is inside the graph


def test_probret_export_subcommand_and_human_summary(checkpoints, tmp_path):
    r = _run(BIN / "probret", "export", checkpoints("meanp"), "--out", tmp_path / "b", "--benchmark-videos", "4",
             "--quiet")
    assert r.returncode == 0, r.stderr
    assert "parity" in r.stdout and "passed" in r.stdout and "top-10 identical for 100%" in r.stdout
    assert r.stderr == ""


@pytest.mark.skipif(tensorrt_status()[0], reason="TensorRT and a GPU are present")
def test_trt_without_tensorrt_fails_at_once(checkpoints, tmp_path):
    t0 = time.perf_counter()
    r = _run(BIN / "probret-export", checkpoints("meanp"), "--out", tmp_path / "b", "--trt", "--fp16")
    assert r.returncode == 4
    assert r.stderr.startswith("error: --trt: ") and ("TensorRT" in r.stderr or "GPU" in r.stderr)
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []
    assert time.perf_counter() - t0 < 60  # checked before the checkpoint is even loaded


def test_missing_checkpoint_and_usage_errors(tmp_path):
    r = _run(BIN / "probret-export", tmp_path / "nope", "--out", tmp_path / "b")
    assert r.returncode == 4 and "not a probret checkpoint" in r.stderr
    r = _run(BIN / "probret-export", tmp_path, "--out", tmp_path / "b", "--sampling", "random")
    assert r.returncode == 2 and "--sampling" in r.stderr


def test_quantize_int8_from_the_command_line(checkpoints, tmp_path):
    out = tmp_path / "b8"
    r = _run(BIN / "probret-export", checkpoints("meanp"), "--out", out, "--quantize", "int8",
             "--benchmark-videos", "6", "--json")
    assert r.returncode == 0, r.stderr
    from probret.engine.bundle import load_bundle

    b = load_bundle(out)
    q = b.manifest["quantization"]
    assert q["mode"] == "int8" and (out / "frame_encoder.int8.onnx").is_file()
    r = _run(BIN / "probret-export", checkpoints("meanp"), "--out", tmp_path / "bt", "--quantize", "int8", "--trt")
    assert r.returncode != 0 and not (tmp_path / "bt").exists()
