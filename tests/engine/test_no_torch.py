"""The engine must import without torch (a deployed search installs numpy + av + onnxruntime).

Runs in a fresh interpreter where any import of torch (or of packages that pull it in:
torchvision, open_clip) raises ImportError, then imports every module under probret.engine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = ("torch", "torchvision", "open_clip", "timm")

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name!r} (engine must not import torch)")
            return None

    sys.meta_path.insert(0, BlockTorch())

    import probret.engine as engine

    names = ["probret.engine"]
    for info in pkgutil.walk_packages(engine.__path__, prefix="probret.engine."):
        names.append(info.name)
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("imported", len(names), "modules:", " ".join(names))
    """
)


def test_engine_imports_without_torch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "probret.engine.video" in proc.stdout
    assert "probret.engine.preprocess" in proc.stdout


BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "open_clip", "timm"):
                raise ImportError(f"blocked import of {name!r} (torch is blocked in this test)")
            return None

    sys.meta_path.insert(0, BlockTorch())
    """
)


def _run_blocked(code: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_model_resolution_imports_without_torch(tmp_path):
    """export/resolve.py sits above the engine but needs torch only to export a checkpoint: the
    shipped demo model and a bundle resolve with torch blocked, and nothing imports it."""
    import os

    env = {**os.environ, "PROBRET_CACHE": str(tmp_path / "empty-cache")}
    p = _run_blocked("""
        import sys
        from probret.export.resolve import SHIPPED_DEMO_BUNDLE, resolve_model
        demo = resolve_model(None)
        assert demo.kind == "demo" and demo.bundle.path == SHIPPED_DEMO_BUNDLE, demo
        again = resolve_model(str(SHIPPED_DEMO_BUNDLE))
        assert again.kind == "bundle" and again.bundle.sha256 == demo.bundle.sha256
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip"))
        assert not leaked, leaked
        print("ok", demo.description)
        """, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok shipped demo model" in p.stdout
    # the shipped bundle is used in place, nothing exported: the cache holds at most the record of its
    # verified files (engine/bundle.py's _verify_files)
    cache = tmp_path / "empty-cache"
    assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == ["bundle-verified"]


def test_default_search_runs_without_torch_and_an_empty_cache(tmp_path):
    """``probret search FOLDER QUERY`` with no --model, torch unimportable and an empty model
    cache: the shipped demo bundle runs as it is (issue 13's torch-free default-model test)."""
    import json
    import os
    import shutil

    from probret.train.world import generate_world

    world = tmp_path / "world"
    generate_world(world, videos=4, seed=21, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    folder = tmp_path / "videos"
    shutil.copytree(world / "videos", folder)
    caption = next(iter(json.loads((world / "world.json").read_text())["captions"].values()))["caption"]
    env = {**os.environ, "PROBRET_CACHE": str(tmp_path / "empty-cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    p = _run_blocked("""
        import sys
        from probret.cli.main import cli
        cli(sys.argv[1:])
        """, "search", str(folder), caption, "--json", "-k", "4", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    out = json.loads(p.stdout)
    assert out["model"]["kind"] == "demo" and out["indexing"]["encoded_videos"] == 4
    assert sorted(h["path"] for h in out["queries"][0]["results"]) == sorted(f.name for f in folder.glob("*.mp4"))
    assert all(0.0 <= h["confidence"] <= 1.0 for h in out["queries"][0]["results"])  # the calibrator, torch-free
    # nothing exported: the cache holds at most ORT's optimised graphs (engine/runtime.py's graph_cache),
    # the tokenizer's merge rules and merge table (engine/tokenizer.py's _merge_text, _load_table), the
    # pair graph's noise banks (engine/runtime.py's cached_noise) and the bundle's verification record
    # (engine/bundle.py's _verify_files)
    cache = tmp_path / "empty-cache"
    assert set(p.name for p in cache.iterdir()) <= {"ort-optimized", "tokenizers", "bundle-verified", "noise"}
    assert sorted(p.name.split("-")[1] for p in (cache / "tokenizers").iterdir()) == ["merge", "merges"]
