"""train/weights.py: local weight files, pickles refused, offline and unreachable hosts, QuickGELU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from probret.engine.errors import ModelError  # noqa: E402
from probret.train import weights  # noqa: E402
from probret.train.backbone import create_backbone  # noqa: E402


@pytest.fixture
def hf_offline(monkeypatch):
    """huggingface_hub in offline mode, as with HF_HUB_OFFLINE=1 set before start-up."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return constants


# ---------------------------------------------------------------------------------------------
# local weight files
# ---------------------------------------------------------------------------------------------
def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_safetensors_and_weights_only_pt(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = create_backbone("test-vit-tiny")
    state = {k: v.contiguous() for k, v in src.clip.state_dict().items()}
    st = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(st))
    loaded = create_backbone("test-vit-tiny", pretrained=str(st))
    assert _same_weights(loaded.clip, src.clip) and loaded.pretrained == str(st)

    pt = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, pt)
    assert _same_weights(create_backbone("test-vit-tiny", pretrained=pt).clip, src.clip)

    with pytest.raises(ModelError, match="cannot load weights"):  # wrong architecture
        create_backbone("test-vit-small", pretrained=str(st))


class _Payload:
    """Unpickling this would create a marker file: it must never happen."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_objects_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = str(marker)
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": payload}, bad)
    with pytest.raises(ModelError, match="weights_only"):
        create_backbone("test-vit-tiny", pretrained=str(bad))
    assert not marker.exists()


def test_missing_file_folder_and_bad_tag(tmp_path):
    with pytest.raises(ModelError, match="not found.*model.pretrained="):
        create_backbone("test-vit-tiny", pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelError, match="is a folder"):
        create_backbone("test-vit-tiny", pretrained=str(tmp_path))
    with pytest.raises(ModelError, match="Tags of ViT-B-32: openai"):
        create_backbone("ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(ModelError, match="unknown backbone"):
        create_backbone("test-vit-tinyy")
    with pytest.raises(ModelError, match="backbone name"):
        create_backbone("ViT-B-32", pretrained="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


# ---------------------------------------------------------------------------------------------
# pretrained tags and the Hub, offline
# ---------------------------------------------------------------------------------------------
def _spy_hf_download(monkeypatch) -> list:
    calls = []
    real = open_clip.pretrained.hf_hub_download

    def spy(*args, **kwargs):
        calls.append(kwargs.get("repo_id"))
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", spy)
    return calls


def _assert_fix_named(err: ModelError, *parts: str):
    msg = str(err)
    for part in ("on a machine with internet", "HF_HOME", *parts):
        assert part in msg, msg


def test_tag_offline_fails_fast_through_open_clip(tmp_path, monkeypatch, hf_offline):
    calls = _spy_hf_download(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(ModelError) as info:
        create_backbone("ViT-B-32", pretrained="openai", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 10
    assert "timm/vit_base_patch32_clip_224.openai" in calls  # open_clip's real download path ran
    _assert_fix_named(info.value, "model.pretrained=/path/to/open_clip_model.safetensors",
                      "timm/vit_base_patch32_clip_224.openai")
    assert info.value.exit_code == 4


def test_hf_hub_name_offline(tmp_path, monkeypatch, hf_offline):
    calls = _spy_hf_download(monkeypatch)
    with pytest.raises(ModelError) as info:
        create_backbone("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", cache_dir=tmp_path)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in calls
    _assert_fix_named(info.value, "local-dir:")


def test_unreachable_host_switches_hub_to_offline(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE, an unreachable hub must not cost huggingface_hub's ~45 s of retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "_host_reachable", lambda host, *a, **k: False)
    seen = []
    real = open_clip.pretrained.hf_hub_download

    def spy(*args, **kwargs):
        seen.append(constants.is_offline_mode())
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", spy)
    t0 = time.monotonic()
    with pytest.raises(ModelError):
        create_backbone("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 10
    assert seen and all(seen)
    assert constants.HF_HUB_OFFLINE is False  # restored


def test_host_probe_fails_fast():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert weights._host_reachable("127.0.0.1", port, timeout=2) is False
    assert time.monotonic() - t0 < 3


def test_tag_served_from_hf_cache_offline(tmp_path, monkeypatch, hf_offline):
    """A pretrained tag whose weights are in the Hugging Face cache loads offline (open_clip's path)."""
    from safetensors.torch import save_file

    torch.manual_seed(5)
    src = create_backbone("test-vit-tiny")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--probret--fake-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED, "test-vit-tiny",
        {"probret_fake": open_clip.pretrained._pcfg(hf_hub="probret/fake-tiny/")},
    )
    loaded = create_backbone("test-vit-tiny", pretrained="probret_fake", cache_dir=tmp_path, freeze="vision")
    assert _same_weights(loaded.clip, src.clip)
    assert loaded.pretrained == "probret_fake" and loaded.freeze_mode == "vision"


def test_offline_env_subprocess(tmp_path):
    """End to end as a user runs it: HF_HUB_OFFLINE=1 and an empty HF_HOME -> ModelError quickly."""
    code = (
        "import sys\n"
        "from probret.train.backbone import create_backbone\n"
        "from probret.engine.errors import ModelError\n"
        "try:\n"
        "    create_backbone('ViT-B-32', pretrained='openai')\n"
        "except ModelError as e:\n"
        "    print('MODELERROR', e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "model.pretrained=/path/to/open_clip_model.safetensors" in res.stdout
    assert time.monotonic() - t0 < 60


def test_local_dir_name(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(9)
    src = create_backbone("test-vit-tiny")
    cfg = open_clip.get_model_config("test-vit-tiny")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    loaded = create_backbone(f"local-dir:{tmp_path}")
    assert _same_weights(loaded.clip, src.clip) and loaded.context_length == 32
    with pytest.raises(ModelError, match="open_clip_config.json"):
        create_backbone(f"local-dir:{tmp_path / 'missing'}")


# ---------------------------------------------------------------------------------------------
# QuickGELU (OpenAI weights) vs GELU, checked on the activation the built model really uses
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_with_quickgelu_variant(tmp_path_factory):
    """A tiny architecture with a ``-quickgelu`` sibling, as open_clip ships ViT-B-32 and
    ViT-B-32-quickgelu, and a file of random weights for it."""
    import json

    from probret.train.backbone import BACKBONE_CONFIG_DIR

    folder = tmp_path_factory.mktemp("configs")
    cfg = json.loads((BACKBONE_CONFIG_DIR / "test-vit-tiny.json").read_text())
    (folder / "test-vit-qg.json").write_text(json.dumps(cfg))
    (folder / "test-vit-qg-quickgelu.json").write_text(json.dumps({**cfg, "quick_gelu": True}))
    open_clip.add_model_config(folder)
    from safetensors.torch import save_file

    state = open_clip.create_model("test-vit-qg").state_dict()
    files = {}
    for where in ("openai", "laion"):
        path = folder / f"models--org--vit_tiny.{where}" / "open_clip_model.safetensors"
        path.parent.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        files[where] = path
    return files


def _activation(backbone) -> type:
    return type(backbone.clip.visual.transformer.resblocks[0].mlp.gelu)


def test_openai_weight_file_gets_quickgelu(tiny_with_quickgelu_variant, caplog):
    from open_clip.transformer import QuickGELU

    backbone = create_backbone("test-vit-qg", pretrained=tiny_with_quickgelu_variant["openai"])
    assert _activation(backbone) is QuickGELU
    text_block = backbone.clip.transformer.resblocks[0]
    assert type(text_block.mlp.gelu) is QuickGELU


def test_other_weight_file_keeps_gelu_and_warns_with_the_fix(tiny_with_quickgelu_variant, caplog):
    with caplog.at_level("WARNING", logger="probret.train.backbone"):
        backbone = create_backbone("test-vit-qg", pretrained=tiny_with_quickgelu_variant["laion"])
    assert _activation(backbone) is torch.nn.GELU
    assert "use the backbone test-vit-qg-quickgelu" in caplog.text


def test_naming_the_quickgelu_variant_is_exact_and_quiet(tiny_with_quickgelu_variant, caplog):
    from open_clip.transformer import QuickGELU

    with caplog.at_level("WARNING", logger="probret.train.backbone"):
        backbone = create_backbone("test-vit-qg-quickgelu", pretrained=tiny_with_quickgelu_variant["laion"])
    assert _activation(backbone) is QuickGELU
    assert "GELU" not in caplog.text
    # an explicit choice wins over the path heuristic
    backbone = create_backbone("test-vit-qg", pretrained=tiny_with_quickgelu_variant["openai"],
                               open_clip_kwargs={"force_quick_gelu": False})
    assert _activation(backbone) is torch.nn.GELU


def test_openai_tag_plans_quickgelu(hf_offline):
    plan = weights.resolve_weights("ViT-B-32", "openai")
    assert plan.open_clip_kwargs == {"force_quick_gelu": True} and plan.quick_gelu
    plan = weights.resolve_weights("ViT-B-32-quickgelu", "openai")
    assert plan.quick_gelu and plan.offline
