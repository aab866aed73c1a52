"""train/checkpoint.py: a malformed config.json is refused with ModelError naming the key."""

from __future__ import annotations

import json

import pytest
import torch

from probret.engine.errors import ModelError
from probret.train.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from probret.train.config import ModelConfig
from probret.train.model import RetrievalModel


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = RetrievalModel.from_config(ModelConfig(backbone="test-vit-tiny", pretrained=None, method="xpool",
                                                   num_frames=4))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", model)


MALFORMED = [
    ("model.num_frames", "twelve", "model.num_frames: expected int"),
    ("model.num_frames", 10**9, "model.num_frames: must be in [1, 1024]"),
    ("model.num_frames", -4, "model.num_frames: must be in [1, 1024]"),
    ("model.colour", "red", "model: unknown key(s) ['colour']"),
    ("model.method", "bogus", "unknown method 'bogus'"),
    ("model.head", {"num_heads": 1.5}, "num_heads: expected int"),
    ("model.head", {"dropout": 2.0}, "dropout must be in [0, 1)"),
    ("model.backbone", 42, "model.backbone: expected str"),
    ("model", [1, 2], "'model' must be an object"),
    ("backbone.embed_dim", -64, "backbone.embed_dim: must be an integer in [1, 65536]"),
    ("backbone.image_size", 10**7, "backbone.image_size: must be an integer"),
    ("backbone.image_std", [0.2, 0.2], "backbone.image_std: must be a list of 3 finite numbers"),
    ("backbone.image_std", [0.2, 0.0, 0.2], "backbone.image_std: must be positive"),
    ("backbone.patches", 3, "backbone: unknown key(s) ['patches']"),
    ("format_version", "1", "format_version must be a non-negative integer"),
]


@pytest.mark.parametrize("key,value,message", MALFORMED, ids=[f"{k}={v}" for k, v, _ in MALFORMED])
def test_malformed_checkpoint_configs_are_refused_naming_the_key(checkpoint, tmp_path, key, value, message):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as info:
        load_checkpoint(bad)
    assert message in str(info.value) and str(bad / "config.json") in str(info.value)
    assert "\n" not in str(info.value)


def test_a_well_formed_checkpoint_loads(checkpoint):
    config = read_checkpoint_config(checkpoint)
    assert config["model"]["method"] == "xpool"
    model, _ = load_checkpoint(checkpoint)
    assert model.config.num_frames == 4
