"""train/vision_towers.py: probret's timm image tower, built through open_clip's config route,
trained, saved, reloaded and exported like any open_clip tower."""

from __future__ import annotations

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from probret.engine.errors import ModelError  # noqa: E402
from probret.train.backbone import create_backbone  # noqa: E402
from probret.train.vision_towers import PlainConvNet  # noqa: E402


def test_the_cnn_config_builds_an_open_clip_model_with_the_timm_tower():
    torch.manual_seed(0)
    b = create_backbone("test-cnn-small")
    assert isinstance(b.clip, open_clip.CLIP)
    assert isinstance(b.clip.visual.trunk, PlainConvNet)
    assert (b.embed_dim, b.image_size) == (128, 64)
    frames = b.encode_frames(torch.randn(2, 3, 3, 64, 64))
    assert frames.shape == (2, 3, 128)
    # the max pool keeps full resolution until the first stage ends: a single bright pixel anywhere
    # in the frame changes the feature (an average-pooled stem would blur it away first)
    b.eval()
    x = torch.zeros(1, 3, 64, 64)
    base = b.clip.visual(x)
    x[0, :, 37, 11] = 3.0
    assert not torch.allclose(b.clip.visual(x), base, atol=1e-6)


def test_pretrained_weights_for_the_cnn_are_refused_by_name():
    with pytest.raises(ModelError, match="probret_convnet_small has no pretrained weights"):
        timm.create_model("probret_convnet_small", pretrained=True)


def test_reset_classifier_follows_timm():
    net = timm.create_model("probret_convnet_small", num_classes=5)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    net.reset_classifier(0, global_pool="avg")
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, net.num_features)


def test_a_cnn_model_trains_saves_reloads_and_exports_with_parity(tmp_path):
    from probret.export.exporter import ExportOptions, export_checkpoint
    from probret.train.checkpoint import load_checkpoint, save_checkpoint
    from probret.train.config import ModelConfig
    from probret.train.model import RetrievalModel

    torch.manual_seed(0)
    model = RetrievalModel.from_config(ModelConfig(backbone="test-cnn-small", pretrained=None, method="meanp",
                                                   num_frames=4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.backbone.clip.visual.trunk.stages[0].weight.detach().clone()
    tokens = model.backbone.tokenize(["a red circle", "a blue star"])
    pixels = torch.randn(2, 4, 3, 64, 64)
    text, frames = model.backbone(tokens, pixels)
    loss = -torch.nn.functional.cosine_similarity(text.sentence, frames.mean(1)).mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.backbone.clip.visual.trunk.stages[0].weight)
    ckpt = save_checkpoint(tmp_path / "ckpt", model.eval())
    again, _ = load_checkpoint(ckpt)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again.backbone.encode_frames(pixels), model.backbone.encode_frames(pixels))
    result = export_checkpoint(tmp_path / "ckpt", tmp_path / "bundle", ExportOptions(benchmark_videos=8))
    assert result.parity["passed"], result.parity
