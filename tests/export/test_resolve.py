"""export/resolve.py: what ``--model`` means (bundle, checkpoint exported once, open_clip
NAME:TAG, the shipped demo model, the index's recorded model)."""

from __future__ import annotations

import pytest
import torch

from probret.engine.errors import ModelError
from probret.export.resolve import SHIPPED_DEMO_BUNDLE, content_digest, resolve_model


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_resolve_model_errors(tmp_path, cache):
    from probret.engine.cache import cache_dir

    assert cache_dir() == cache
    with pytest.raises(ModelError, match="no such bundle or checkpoint.*NAME:TAG"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "file.onnx").write_text("x")
    with pytest.raises(ModelError, match="not a file"):
        resolve_model(str(tmp_path / "file.onnx"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a bundle"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError):
        resolve_model("no-such-open-clip-model:openai")


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    from probret.engine.cache import cache_dir

    monkeypatch.delenv("PROBRET_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "probret"


def test_checkpoint_is_exported_once_and_cached(tmp_path, cache, make_spem_bundle):
    ckpt, bundle_dir = make_spem_bundle(tmp_path / "m", seed=0, benchmark_videos=6)
    said = []
    r1 = resolve_model(str(ckpt), say=said.append)
    assert r1.kind == "checkpoint" and any("with PyTorch" in m for m in said)
    assert any("export [" in m for m in said)  # the one-time export shows its progress
    said.clear()
    r2 = resolve_model(str(ckpt), say=said.append)
    assert not said and r2.bundle.path == r1.bundle.path  # cached: no second export
    assert r1.bundle.path.parent == cache / "bundles"
    b = resolve_model(str(bundle_dir))
    assert b.kind == "bundle" and b.spec == str(bundle_dir.resolve())
    # no --model: the index's recorded model while it is still there
    again = resolve_model(None, previous=b.to_meta())
    assert again.bundle.path == b.bundle.path and "(the index's model)" in again.description


def test_a_missing_index_model_is_an_error_not_the_demo(tmp_path, cache):
    demo = resolve_model(None)
    assert demo.kind == "demo" and demo.bundle.path == SHIPPED_DEMO_BUNDLE
    gone = {**demo.to_meta(), "kind": "bundle", "spec": str(tmp_path / "deleted-bundle"),
            "description": "bundle deleted-bundle (spem)"}
    with pytest.raises(ModelError) as info:
        resolve_model(None, previous=gone)
    msg = str(info.value)
    assert "the index was built with bundle deleted-bundle (spem)" in msg and "--model" in msg
    assert resolve_model(None, previous=demo.to_meta()).kind == "demo"  # an index of the demo model


def test_zero_shot_cache_is_keyed_by_weight_content(tmp_path, cache):
    """Replacing the weights file behind ``NAME:/path/file.safetensors`` builds the model again
    (the old key was the path, cut to 60 characters)."""
    import open_clip
    from safetensors.torch import load_file, save_file

    from probret.export.resolve import _open_clip_checkpoint

    import probret.train.backbone  # noqa: F401 - registers the test-vit-* configs

    weights = tmp_path / ("w" * 80) / "open_clip_model.safetensors"
    weights.parent.mkdir()

    def write(seed: int) -> None:
        torch.manual_seed(seed)
        model = open_clip.create_model("test-vit-tiny")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    write(0)
    first = _open_clip_checkpoint("test-vit-tiny", str(weights), lambda m: None)
    assert _open_clip_checkpoint("test-vit-tiny", str(weights), lambda m: None) == first  # cached
    digest = content_digest(weights)
    write(1)
    assert content_digest(weights) != digest
    second = _open_clip_checkpoint("test-vit-tiny", str(weights), lambda m: None)
    assert second != first
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
