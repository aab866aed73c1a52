import json
from pathlib import Path

import pytest

from probret.engine.errors import DataError
from probret.train.config import ExperimentConfig, apply_overrides, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.model.num_frames > 0
    assert config.train.batch_size > 0


def test_paper_protocol_configs_follow_tmass_hyperparameters():
    config = load_config(Path(__file__).parents[2] / "configs" / "msrvtt-spem-vitb32.json")
    assert (config.model.num_frames, config.train.batch_size, config.train.epochs) == (12, 32, 5)
    assert config.train.lr_backbone == 1e-6 and config.train.lr_head == 3e-5
    assert config.train.weight_decay == 0.2 and config.train.warmup_ratio == 0.1
    didemo = load_config(Path(__file__).parents[2] / "configs" / "didemo-spem-vitb16.json")
    assert didemo.train.lr_head == 1e-5 and didemo.model.backbone == "ViT-B-16-quickgelu"


def test_overrides_parse_json_values_and_nested_head_keys():
    config = apply_overrides(ExperimentConfig(), ["train.lr_head=3e-5", "model.head.alpha=1.0",
                                                  "model.pretrained=null", "data.root=/x/y", "train.amp=false"])
    assert config.train.lr_head == 3e-5
    assert config.model.head == {"alpha": 1.0}
    assert config.model.pretrained is None
    assert config.data.root == "/x/y"
    assert config.train.amp is False


@pytest.mark.parametrize("bad", ["train.no_such_key=1", "nosection.x=1", "train.lr_head", "train.seed.x=1"])
def test_bad_overrides_name_the_key(bad):
    with pytest.raises(DataError, match="override|unknown|section"):
        apply_overrides(ExperimentConfig(), [bad])


def test_unknown_keys_in_file_are_rejected(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"lr": 1}}))
    with pytest.raises(DataError, match="unknown key"):
        load_config(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_config(path)
    with pytest.raises(DataError, match="not found"):
        load_config(tmp_path / "missing.json")


@pytest.mark.parametrize("path", [p for p in CONFIGS if "vitb" in p.name], ids=lambda p: p.name)
def test_paper_configs_name_the_quickgelu_variant_of_openai_weights(path):
    """OpenAI's CLIP was trained with QuickGELU: the architecture name says so (train/weights.py)."""
    config = load_config(path)
    assert config.model.pretrained == "openai" and config.model.backbone.endswith("-quickgelu")


# -- validated completely at load: one line, the documented exit code, nothing read or written --------
BAD_SETTINGS = [
    (["--method", "bogus"], 4, "unknown method 'bogus'; choose one of duq, dvtr, meanp, prota, spem, tmass, xpool"),
    (["--set", "model.head.alfa=1.0"], 4, "has no hyperparameter(s) ['alfa']"),
    (["--set", "model.head.num_heads=5"], 4, "not divisible by num_heads 5"),
    (["--set", "model.head.num_samples=\"many\""], 4, "num_samples: expected int"),
    (["--set", "model.backbone=ViT-Q-99"], 4, "unknown backbone 'ViT-Q-99'"),
    (["--set", "train.selection_metric=t2v.R99"], 3, "unknown metric 't2v.R99'; choose one of t2v.R1"),
    (["--set", "train.batch_size=abc"], 3, "train.batch_size: expected int, got \"abc\""),
    (["--set", "train.batch_size=0"], 3, "train.batch_size: must be in [1, "),
    (["--set", "train.lr_head=NaN"], 3, "train.lr_head: must be a finite number"),
    (["--set", "train.lr_hed=1e-5"], 3, "unknown key(s) ['lr_hed']"),
    (["--set", "data.dataset=webvid"], 3, "unknown dataset 'webvid'"),
    (["--set", "train.lr_head"], 3, "expected KEY=VALUE"),
    (["--max-steps", "-3"], 3, "train.max_steps: must be in [1, "),
]


@pytest.mark.parametrize("args,code,message", BAD_SETTINGS, ids=[" ".join(a) for a, _, _ in BAD_SETTINGS])
def test_bad_settings_exit_with_one_line_before_reading_data(tmp_path, capsys, args, code, message):
    from probret.cli.main import cli

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"backbone": "test-vit-tiny", "pretrained": None},
                                  "data": {"dataset": "procedural", "root": str(tmp_path / "no-data-here")},
                                  "train": {"out": str(tmp_path / "run")}}))
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--config", str(config), "--quiet", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err
    assert "no-data-here" not in err  # the data folder was never looked at
    assert not (tmp_path / "run").exists()


def test_a_valid_config_with_a_missing_data_folder_fails_on_the_data(tmp_path, capsys):
    from probret.cli.main import cli

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"backbone": "test-vit-tiny", "pretrained": None, "method": "meanp"},
                                  "data": {"dataset": "procedural", "root": str(tmp_path / "no-data-here")},
                                  "train": {"out": str(tmp_path / "run")}}))
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--config", str(config), "--quiet"])
    assert exit_info.value.code == 3
    assert "no-data-here" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_checks_hold_for_configs_built_in_python():
    from probret.engine.errors import ModelError

    config = ExperimentConfig()
    config.model.method = "bogus"
    with pytest.raises(ModelError, match="unknown method"):
        config.validate()
    config = ExperimentConfig()
    config.train.selection_metric = "v2t.MdR"  # lower is better: the trainer keeps the maximum
    with pytest.raises(DataError, match="unknown metric"):
        config.validate()
