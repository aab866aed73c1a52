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
