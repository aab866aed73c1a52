"""End-to-end training on the procedural world with a tiny random-initialised CLIP (seconds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probret.engine.metrics import retrieval_metrics
from probret.train.checkpoint import load_checkpoint
from probret.train.config import ExperimentConfig, apply_overrides
from probret.train.datasets import load_split
from probret.train.evaluate import evaluate
from probret.train.trainer import train

torch.set_num_threads(1)


def tiny_config(world, out, method="meanp", **train_overrides):
    overrides = [
        "model.backbone=test-vit-tiny", "model.pretrained=null", f"model.method={method}", "model.num_frames=4",
        "data.dataset=procedural", f"data.root={world}", "data.num_workers=0",
        f"train.out={out}", "train.batch_size=4", "train.max_steps=6", "train.eval_every=3",
        "train.lr_backbone=1e-4", "train.lr_head=1e-3", "train.log_every=1", "train.eval_batch_size=16",
    ] + [f"train.{k}={json.dumps(v)}" for k, v in train_overrides.items()]
    return apply_overrides(ExperimentConfig(), overrides)


@pytest.mark.parametrize("method", ["meanp", "spem"])
def test_training_writes_checkpoints_logs_and_reloads_identically(tiny_world, tmp_path, method):
    out = tmp_path / "run"
    result = train(tiny_config(tiny_world, out, method), progress=False)
    assert result.steps == 6
    for name in ("best", "last"):
        assert (out / name / "config.json").is_file() and (out / name / "model.safetensors").is_file()
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "eval"] == [3, 6]
    assert all(np.isfinite(e["loss"]) for e in events if e["event"] == "train")

    model, config = load_checkpoint(out / "last")
    assert config["model"]["method"] == method and config["versions"]["probret"]
    split = load_split("procedural", tiny_world, "val")
    again = evaluate(model, split, block=7, seed=3)
    model2, _ = load_checkpoint(out / "last")
    np.testing.assert_array_equal(again.sims, evaluate(model2, split, block=7, seed=3).sims)
    # the val metrics logged at step 6 are those of the saved last checkpoint
    logged = [e for e in events if e["event"] == "eval"][-1]["metrics"]
    recomputed = evaluate(model, split, block=256, seed=0).metrics
    assert logged["t2v"]["R1"] == pytest.approx(recomputed["t2v"]["R1"])


def test_resume_after_interruption_equals_uninterrupted_run(tiny_world, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(tiny_world, straight, "xpool", eval_every=100), progress=False)
    interrupted = tmp_path / "interrupted"
    first = train(tiny_config(tiny_world, interrupted, "xpool", eval_every=100), progress=False, stop_after=4)
    assert first.steps == 4
    second = train(tiny_config(tiny_world, interrupted, "xpool", eval_every=100), progress=False, resume=True)
    assert second.steps == 6
    from safetensors.torch import load_file

    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(interrupted / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_refuses_to_overwrite_a_run_without_resume(tiny_world, tmp_path):
    from probret.engine.errors import DataError, ModelError

    out = tmp_path / "run"
    train(tiny_config(tiny_world, out, max_steps=3), progress=False)
    with pytest.raises(DataError, match="--resume"):
        train(tiny_config(tiny_world, out, max_steps=3), progress=False)
    with pytest.raises(ModelError, match="nothing to resume"):
        train(tiny_config(tiny_world, tmp_path / "fresh", max_steps=3), progress=False, resume=True)


def test_cli_train_then_eval_save_sims_recomputes_the_same_metrics(tiny_world, tmp_path):
    from probret.cli.eval_cmd import eval_cmd
    from probret.cli.train_cmd import train as train_cmd

    config_path = tmp_path / "c.json"
    config_path.write_text(json.dumps(tiny_config(tiny_world, tmp_path / "run", "tmass").to_dict()))
    runner = CliRunner()
    res = runner.invoke(train_cmd, ["--config", str(config_path), "--max-steps", "3", "--quiet",
                                    "--set", "model.head.num_samples=4"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["steps"] == 3
    sims_dir = tmp_path / "sims"
    res = runner.invoke(eval_cmd, [str(tmp_path / "run" / "best"), "--data", str(tiny_world), "--split", "test",
                                   "--json", "--save-sims", str(sims_dir), "--quiet", "--workers", "0"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    sims = np.load(sims_dir / "sims.npy")
    index = np.load(sims_dir / "text_video_index.npy")
    assert sims.shape == (payload["texts"], payload["videos"])
    recomputed = retrieval_metrics(sims, index)
    for direction in ("t2v", "v2t"):
        for key, value in payload["metrics"][direction].items():
            assert recomputed[direction][key] == pytest.approx(value), (direction, key)
    # one sampling convention: the noise banks do not depend on how the matrix is blocked
    res = runner.invoke(eval_cmd, [str(tmp_path / "run" / "best"), "--data", str(tiny_world), "--split", "test",
                                   "--json", "--quiet", "--workers", "0", "--block", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["metrics"] == payload["metrics"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_gloo(tiny_world, tmp_path):
    config_path = tmp_path / "c.json"
    config_path.write_text(json.dumps(tiny_config(tiny_world, tmp_path / "ddp", "xpool", max_steps=2, eval_every=2).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # torchrun's module, not its console script (a venv made by copying site-packages lacks the script)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "probret.cli.train_cmd",
                           "--config", str(config_path), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"best_checkpoint"') == 1  # rank 0 alone prints the summary
    assert (tmp_path / "ddp" / "best" / "model.safetensors").is_file()
    events = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "eval" for e in events)


def _copy_world(world, dest):
    import shutil

    shutil.copytree(world, dest)
    return dest


def test_a_training_split_where_nothing_decodes_is_a_data_error_before_anything_is_written(tiny_world, tmp_path):
    from probret.engine.errors import DataError

    world = _copy_world(tiny_world, tmp_path / "world")
    for video in world.rglob("*.mp4"):
        video.write_bytes(b"not a video at all")
    out = tmp_path / "run"
    with pytest.raises(DataError, match="no training video can be decoded"):
        train(tiny_config(world, out), progress=False)
    assert not out.exists()


def test_eval_json_records_missing_and_undecodable_videos(tiny_world, tmp_path):
    from probret.cli.eval_cmd import eval_cmd

    ckpt = tmp_path / "run"
    train(tiny_config(tiny_world, ckpt, max_steps=1, eval_every=100), progress=False)
    world = _copy_world(tiny_world, tmp_path / "world")
    split = load_split("procedural", world, "test")
    gone, broken = split.videos[0].path, split.videos[1].path
    Path(gone).unlink()
    Path(broken).write_bytes(b"garbage")
    res = CliRunner().invoke(eval_cmd, [str(ckpt / "best"), "--data", str(world), "--split", "test", "--json",
                                        "--quiet", "--workers", "0"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    unusable = payload["unusable_videos"]
    assert [(v["path"], v["reason"]) for v in unusable] == [(gone, "missing"), (broken, "undecodable")]
    assert broken in unusable[1]["error"]
    assert payload["videos"] == len(split.videos)  # they stay in the gallery


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc): the DataLoader workers."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_sigint_saves_a_resumable_state_and_prints_the_exact_resume_command(tiny_world, tmp_path, workers):
    """As a terminal's Ctrl-C does, the signal reaches the DataLoader workers too."""
    import shlex
    import signal
    import threading
    import time

    from probret.cli.train_cmd import train as train_cmd

    out = tmp_path / "run"
    config_path = tmp_path / "c.json"
    config = tiny_config(tiny_world, out, "meanp", max_steps=30, eval_every=100)
    config.data.num_workers = workers
    config_path.write_text(json.dumps(config.to_dict()))

    def interrupt_after_first_step():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = out / "log.jsonl"
            if log.is_file() and '"event": "train"' in log.read_text():
                for pid in _children(os.getpid()):
                    os.kill(pid, signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)

    threading.Thread(target=interrupt_after_first_step, daemon=True).start()
    res = CliRunner().invoke(train_cmd, ["--config", str(config_path), "--quiet"])
    assert res.exit_code == 130, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["stopped_by"] == "SIGINT" and 1 <= summary["steps"] < 30
    assert (out / "state" / "state.json").is_file() and (out / "last" / "model.safetensors").is_file()
    command = summary["resume_command"]
    assert command in res.stderr
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "stopped" and events[-1]["resume"] == command

    prog, *args = shlex.split(command)
    assert prog == "probret-train"
    res = CliRunner().invoke(train_cmd, [*args, "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["steps"] == 30


def test_tensorboard_scalars_beside_log_jsonl(tiny_world, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_config(tiny_world, out, max_steps=3, eval_every=3), progress=False)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr/0", "val/t2v/R1", "val/v2t/MnR"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    r1 = [e["metrics"]["t2v"]["R1"] for e in logged if e["event"] == "eval"]
    assert [e.value for e in acc.Scalars("val/t2v/R1")] == pytest.approx(r1)


def test_tensorboard_off_records_only_log_jsonl(tmp_path):
    from probret.train.run_log import RunLog

    log = RunLog(tmp_path, tensorboard=False)
    log.train_step(1, epoch=0, lr=[0.1], losses={"loss": 1.0}, elapsed=0.1)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]


def test_library_info_lines_only_with_verbose(tiny_world, tmp_path):
    """open_clip's INFO lines (logged on the root logger: "Parsing model identifier ...") stay
    quiet unless -v; probret's own evaluation lines are shown."""
    config_path = tmp_path / "c.json"
    config_path.write_text(json.dumps(tiny_config(tiny_world, tmp_path / "run", max_steps=1, eval_every=100).to_dict()))
    base = [sys.executable, "-m", "probret.cli.train_cmd", "--config", str(config_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = subprocess.run(base, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Parsing model identifier" not in quiet.stderr and "Loaded" not in quiet.stderr
    assert "probret.train step 1  val t2v.R1=" in quiet.stderr
    loud = subprocess.run([*base, "-v", "--quiet", "--set", f"train.out={json.dumps(str(tmp_path / 'run2'))}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "Parsing model identifier" in loud.stderr


def test_a_folder_of_other_files_is_not_used_as_a_run_directory(tiny_world, tmp_path):
    from probret.engine.errors import DataError

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "config.json").write_text("{}")
    with pytest.raises(DataError, match="did not write .notes.txt"):
        train(tiny_config(tiny_world, out, max_steps=1), progress=False)
    assert (out / "config.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
