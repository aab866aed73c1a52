"""A non-editable install works: build probret's wheel, install it (no dependencies) into a fresh
venv that sees this environment's third-party packages but not its editable probret, block
torch there, and run ``probret --help``, ``probret search --help`` and a default-model search.

The editable install the other tests use hides packaging mistakes: ``cli/main.py`` once used
``importlib.util`` without importing it (only the editable finder imported it), and the demo
bundle must be package data of the wheel for the torch-free default search to work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class _BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "open_clip", "timm"):
                raise ImportError(f"torch is not installed here ({name})")
            return None

    sys.meta_path.insert(0, _BlockTorch())
""")


def _third_party_paths() -> list[str]:
    """This environment's site-packages directories, without .pth processing (so no editable
    probret comes along) -- the installed wheel's dependencies are found there."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for p in list(paths):
        for pth in Path(p).glob("*.pth"):
            for line in pth.read_text().splitlines():
                if line and not line.startswith(("import", "#")) and Path(line).is_dir():
                    paths.add(line)
    return sorted(paths)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    pytest.importorskip("wheel", reason="building a wheel offline needs the 'wheel' package (probret[dev])")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    wheel = next((root / "dist").glob("probret-*.whl"))
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    (site / "_probret_test_block_torch.py").write_text(BLOCKER)
    (site / "zz_probret_test.pth").write_text("import _probret_test_block_torch\n"
                                              + "".join(p + "\n" for p in _third_party_paths()))
    return env_dir, root


def _run(env_dir: Path, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    p = subprocess.run([str(env_dir / "bin" / "probret"), *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    return p


def test_installed_wheel_runs_without_torch(venv, tmp_path):
    env_dir, root = venv
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PROBRET_CACHE"] = str(tmp_path / "empty-cache")
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                            "import probret.cli, sys; print(probret.cli.__file__); import torch"],
                           capture_output=True, text=True, env=env)
    assert str(env_dir) in where.stdout and "torch is not installed here" in where.stderr  # the wheel, no torch
    assert "search" in _run(env_dir, "--help", cwd=tmp_path, env=env).stdout
    assert "--paths-only" in _run(env_dir, "search", "--help", cwd=tmp_path, env=env).stdout
    from probret.train.world import generate_world

    generate_world(tmp_path / "world", videos=3, seed=5, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    p = _run(env_dir, "search", str(tmp_path / "world" / "videos"), "a red circle", "--json", cwd=tmp_path, env=env)
    out = json.loads(p.stdout)
    assert out["model"]["kind"] == "demo" and str(env_dir) in out["model"]["bundle"]  # the wheel's own bundle
    assert len(out["queries"][0]["results"]) == 3
