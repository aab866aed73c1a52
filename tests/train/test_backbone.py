"""train/backbone.py: open_clip wrapper, tiny configs, freezing (weights and offline errors: test_weights.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from probret.engine.errors import ModelError  # noqa: E402
from probret.engine.tokenizer import Tokenizer  # noqa: E402
from probret.train import backbone as bb  # noqa: E402
from probret.train.backbone import Backbone, create_backbone, list_backbones  # noqa: E402
from probret.train.methods.base import TextFeatures  # noqa: E402

CAPTIONS = ["a red ball bounces", "", "two dogs run on the beach at night " * 6, "a man playing guitar 🎸"]


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("test-vit-tiny").eval()


@pytest.fixture
def hf_offline(monkeypatch):
    """huggingface_hub in offline mode, as with HF_HUB_OFFLINE=1 set before start-up."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return constants


# ---------------------------------------------------------------------------------------------
# registry and configs
# ---------------------------------------------------------------------------------------------
def test_configs_registered_with_open_clip():
    names = list_backbones()
    assert {"test-vit-tiny", "test-vit-small", "ViT-B-32"} <= set(names)
    for path in sorted(bb.BACKBONE_CONFIG_DIR.glob("*.json")):
        cfg = json.loads(path.read_text())
        assert set(cfg) >= {"embed_dim", "vision_cfg", "text_cfg"}
        assert cfg["text_cfg"]["vocab_size"] == 49408  # open_clip's SimpleTokenizer
        assert open_clip.get_model_config(path.stem) is not None
    model, _, preprocess = open_clip.create_model_and_transforms("test-vit-tiny")
    assert isinstance(model, open_clip.CLIP)
    bb.register_backbone_configs()  # idempotent
    assert sum(Path(p).resolve() == bb.BACKBONE_CONFIG_DIR for p in open_clip.factory._MODEL_CONFIG_PATHS) == 1


def test_attributes(tiny):
    assert (tiny.name, tiny.pretrained) == ("test-vit-tiny", None)
    assert tiny.embed_dim == 64 and tiny.image_size == 32 and tiny.context_length == 32
    assert tiny.image_mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert tiny.image_std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert isinstance(tiny.logit_scale, torch.nn.Parameter)
    assert tiny.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-5)
    assert (tiny.sot_token_id, tiny.eot_token_id, tiny.vocab_size) == (49406, 49407, 49408)
    assert tiny.config()["name"] == "test-vit-tiny"
    small = create_backbone("test-vit-small")
    assert small.embed_dim == 128 and small.image_size == 64 and small.context_length == 32


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------
def test_tokenize_matches_engine_tokenizer(tiny):
    ids = tiny.tokenize(CAPTIONS)
    assert ids.dtype == torch.long and ids.shape == (len(CAPTIONS), 32)
    assert np.array_equal(ids.numpy(), Tokenizer(context_length=32)(CAPTIONS))
    assert ids[2, -1] == tiny.eot_token_id  # truncated at 32


def _check_text(backbone: Backbone, ids: torch.Tensor):
    with torch.no_grad():
        out = backbone.encode_text(ids)
        ref = backbone.clip.encode_text(ids)
    n, length = ids.shape
    assert isinstance(out, TextFeatures)
    assert out.sentence.shape == (n, backbone.embed_dim)
    assert out.tokens.shape == (n, length, backbone.embed_dim) and out.mask.shape == (n, length)
    assert out.mask.dtype == torch.bool
    torch.testing.assert_close(out.sentence, ref, rtol=0, atol=1e-6)  # open_clip's encode_text
    eot = ids.argmax(dim=-1)
    assert torch.equal(out.tokens[torch.arange(n), eot], out.sentence)  # exact, not approximately
    expected_mask = torch.arange(length)[None, :] <= eot[:, None]
    assert torch.equal(out.mask, expected_mask)
    return out


def test_encode_text_consistent_with_open_clip(tiny):
    ids = tiny.tokenize(CAPTIONS)
    out = _check_text(tiny, ids)
    assert out.mask.sum(1).tolist() == (ids != 0).sum(1).tolist()
    assert out.mask[1].sum() == 2 and out.mask[2].all()  # empty caption: SOT, EOT; truncated: all
    # tokens before EOT are the same features open_clip computes (after ln_final + projection)
    with torch.no_grad():
        c = tiny.clip
        x = c.token_embedding(ids) + c.positional_embedding
        x = c.ln_final(c.transformer(x, attn_mask=c.attn_mask)) @ c.text_projection
    torch.testing.assert_close(out.tokens[out.mask], x[out.mask], rtol=1e-5, atol=1e-6)


def test_encode_text_shorter_length_equivalent(tiny):
    ids = tiny.tokenize(["a cat", "a dog on a red mat"])
    length = int(ids.argmax(-1).max()) + 1
    with torch.no_grad():
        full = tiny.encode_text(ids)
        cut = tiny.encode_text(ids[:, :length])
    torch.testing.assert_close(cut.sentence, full.sentence, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cut.tokens, full.tokens[:, :length], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        tiny.encode_text(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError):
        tiny.encode_text(torch.zeros(33, dtype=torch.long))


def test_encode_text_gradients_reach_text_tower():
    b = create_backbone("test-vit-tiny")
    out = b.encode_text(b.tokenize(["a ball", "a box"]))
    (out.sentence.sum() + out.tokens[out.mask].sum()).backward()
    assert b.clip.text_projection.grad is not None and b.clip.token_embedding.weight.grad is not None


def test_custom_text_clip():
    b = create_backbone("test-vit-tiny", open_clip_kwargs={"force_custom_text": True}).eval()
    assert isinstance(b.clip, open_clip.CustomTextCLIP)
    _check_text(b, b.tokenize(CAPTIONS))
    b.set_freeze("text")
    assert not any(p.requires_grad for p in b.clip.text.parameters())
    assert all(p.requires_grad for p in b.clip.visual.parameters())
    b.set_freeze("partial:1")
    assert b.clip.text.transformer.resblocks[1].mlp.c_fc.weight.requires_grad
    assert not b.clip.text.transformer.resblocks[0].mlp.c_fc.weight.requires_grad


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------
def test_encode_frames(tiny):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 3, 32, 32)
    calls = []
    handle = tiny.clip.visual.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        with torch.no_grad():
            feats = tiny.encode_frames(pixels)
    finally:
        handle.remove()
    assert calls == [torch.Size([6, 3, 32, 32])]  # the image tower runs once on B*T frames
    assert feats.shape == (2, 3, 64)
    with torch.no_grad():
        ref = tiny.clip.encode_image(pixels[1, 2:3])
    torch.testing.assert_close(feats[1, 2:3], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        tiny.encode_frames(torch.randn(3, 3, 32, 32))


# ---------------------------------------------------------------------------------------------
# freezing
# ---------------------------------------------------------------------------------------------
def _flags(b: Backbone) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in b.clip.named_parameters()}


def test_freeze_modes():
    b = create_backbone("test-vit-tiny", freeze="all")
    assert b.freeze_mode == "all"
    flags = _flags(b)
    assert not any(v for n, v in flags.items() if n != "logit_scale")
    assert flags["logit_scale"]  # the temperature stays trainable

    b.set_freeze("text")
    flags = _flags(b)
    assert all(v for n, v in flags.items() if n.startswith("visual."))
    assert not any(flags[n] for n in flags if n.split(".")[0] in
                   {"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"})

    b.set_freeze("vision")
    flags = _flags(b)
    assert not any(v for n, v in flags.items() if n.startswith("visual."))
    assert flags["token_embedding.weight"] and flags["transformer.resblocks.0.attn.in_proj_weight"]

    b.set_freeze("partial:1")
    flags = _flags(b)
    for tower in ("", "visual."):
        assert not flags[f"{tower}transformer.resblocks.0.mlp.c_fc.weight"]
        assert flags[f"{tower}transformer.resblocks.1.mlp.c_fc.weight"]
    assert not flags["token_embedding.weight"] and not flags["positional_embedding"]
    assert not flags["visual.conv1.weight"] and not flags["visual.class_embedding"] and not flags["visual.ln_pre.weight"]
    assert flags["ln_final.weight"] and flags["text_projection"] and flags["visual.ln_post.weight"] and flags["visual.proj"]

    b.set_freeze("partial:0")
    flags = _flags(b)
    trainable = {n for n, v in flags.items() if v}
    assert trainable == {"ln_final.weight", "ln_final.bias", "text_projection", "visual.ln_post.weight",
                         "visual.ln_post.bias", "visual.proj", "logit_scale"}

    b.set_freeze("partial:99")
    assert all(v for n, v in _flags(b).items() if ".resblocks." in n)

    b.set_freeze("none")
    assert all(_flags(b).values())
    for bad in ("some", "partial:x", "partial:-1"):
        with pytest.raises(ModelError):
            b.set_freeze(bad)


def test_precision_bf16():
    b = create_backbone("test-vit-tiny", precision="pure_bf16").eval()
    ids = b.tokenize(["a dog", "a red ball"])
    with torch.no_grad():
        out = b.encode_text(ids)
        frames = b.encode_frames(torch.randn(1, 2, 3, 32, 32))  # fp32 pixels are cast
    assert out.sentence.dtype == torch.bfloat16 and frames.dtype == torch.bfloat16
    assert torch.equal(out.tokens[torch.arange(2), ids.argmax(-1)], out.sentence)
