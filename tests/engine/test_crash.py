"""The crash harness (bench/crash.py, docs/reliability.md), a sample of its points in CI.

The full run (every durability point, killed and with unsynced writes dropped, plus crashes
inside the recovery) is ``python bench/crash.py``; here a seeded sample of (point, mode) pairs
runs with the same checks: real subprocesses ended by ``os._exit`` at the point, reopened,
compared with the states the scenario passes through, resumed, compared with the final state.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "crash.py"


@pytest.fixture(scope="module")
def crash():
    spec = importlib.util.spec_from_file_location("crash", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["crash"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_scenario_passes_every_kind_of_durability_point(crash, tmp_path):
    labels = crash.count_points(tmp_path)
    kinds = {line.split()[1] for line in labels}
    assert {"write", "fsync", "commit", "rename", "unlink"} <= kinds
    assert len(labels) > 100  # 139 today: every one of them is a crash point of the bench


def test_a_sample_of_crash_points_loses_nothing(crash, tmp_path):
    res = crash.run_harness(tmp_path, points=8, seed=1, say=lambda m: None)
    assert res["crash_points"] == 8 and res["failures"] == []


def test_the_harness_catches_a_writer_that_does_not_sync(crash, tmp_path, monkeypatch):
    """The harness can fail: rows that were never fsynced before their commit are lost to the
    dropped-writes emulation, and that is reported as a lost finished video."""
    all_states = crash.states()
    folder = tmp_path / "videos"
    crash.make_folder(folder)
    labels = crash.count_points(tmp_path)
    commit = next(int(line.split()[0]) for line in labels if line.split()[1] == "commit"
                  and int(line.split()[0]) > 40)  # after two finished steps
    run = tmp_path / "run"
    run.mkdir()
    res = crash.child("run_scenario", [run / "idx", run / "done"], {"PROBRET_CRASH_AT": str(commit)})
    assert res.returncode == 86
    for p in (run / "idx" / "shards").iterdir():  # what dropping writes does to an index that never synced
        p.write_bytes(b"")
    with pytest.raises(AssertionError, match="unopenable|lacked"):
        crash.check_after_crash(folder, run / "idx", run / "done", all_states, resumed_crash=False)
