"""The core install, the way a new user gets probret: ``pip wheel`` of this checkout, a fresh
venv, ``pip install`` of the wheel with its declared core dependencies only (no torch, no
onnxruntime-gpu, no faiss, no starlette), then the README's first commands through the
installed ``probret`` script. Its sibling tests/cli/test_wheel_install.py checks the wheel offline
against this environment's packages; this one checks what ``pip install probret`` brings.

The venv is built once per test session under pytest's tmp (about a minute the first time: pip
fetches the core wheels from the package index or its cache). Where pip cannot reach an index
the tests skip, saying so; the wheel itself is always built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, *, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh venv holding probret's wheel and its core dependencies."""
    root = tmp_path_factory.mktemp("wheel-install")
    # pip builds in the source tree (build/, *.egg-info): build a copy, leave the checkout alone
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "data",
        ".probret-index", "tmp"))
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", source], cwd=root)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    (wheel,) = (root / "dist").glob("probret-*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", venv])
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    install = _run([bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel],
                   cwd=root, timeout=900)
    if install.returncode != 0:
        if any(s in install.stderr for s in ("No matching distribution", "Could not find a version",
                                             "NewConnectionError", "Network is unreachable")):
            pytest.skip(f"pip cannot fetch probret's core dependencies here: {install.stderr.strip().splitlines()[-1]}")
        raise AssertionError(f"pip install {wheel.name} failed:\n{install.stdout}\n{install.stderr}")
    return bin_dir


def _env(tmp: Path) -> dict[str, str]:
    # nothing from this checkout or the test venv may leak in: no PYTHONPATH, a cwd outside the repo
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PROBRET_CACHE": str(tmp / "cache"), "COLUMNS": "200"}


def test_core_install_is_cpu_sized_and_torch_free(wheel_venv, tmp_path):
    py = wheel_venv / "python"
    where = _run([py, "-c", "import probret.engine, probret.cli.main as m; print(probret.engine.__path__[0]); "
                            "print(m.__file__)"], cwd=tmp_path, env=_env(tmp_path))
    assert where.returncode == 0, where.stderr
    assert all(str(wheel_venv.parent) in line for line in where.stdout.split()), where.stdout  # not the checkout
    dists = _run([py, "-m", "pip", "list", "--format", "json"], cwd=tmp_path).stdout
    names = {d["name"].lower() for d in json.loads(dists)}
    assert "onnxruntime" in names and "tokenizers" in names
    for heavy in ("torch", "onnxruntime-gpu", "faiss-cpu", "open-clip-torch", "starlette", "uvicorn"):
        assert heavy not in names, f"{heavy} is in the core install"
    build = _run([py, "-c", "from probret.engine.runtime import ort_build; import json; print(json.dumps(ort_build()))"],
                 cwd=tmp_path, env=_env(tmp_path))
    assert build.returncode == 0, build.stderr
    info = json.loads(build.stdout)
    assert info["device"] == "CPU" and info["distributions"] == [f"onnxruntime {info['version']}"], info


@pytest.mark.parametrize("args", [[], ["--help"], ["search", "--help"], ["index", "--help"], ["serve", "--help"]])
def test_help_runs_from_the_wheel(wheel_venv, tmp_path, args):
    p = _run([wheel_venv / "probret", *args], cwd=tmp_path, env=_env(tmp_path))
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == (2 if not args else 0), f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    text = p.stdout + p.stderr
    assert "Usage: probret" in text
    if args[:1] == ["search"]:
        assert "--no-update" in text and "--json" in text
    elif args[:1] == ["serve"]:
        assert "--host" in text and "--public" in text
    elif args[:1] != ["index"]:
        assert "search" in text and "index" in text and "serve" in text


def test_search_with_a_bundle_from_the_wheel(wheel_venv, tmp_path_factory, make_spem_bundle):
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("wheel-search")
    _, bundle = make_spem_bundle(root, seed=3)
    world = root / "world"
    generate_world(world, videos=4, seed=5, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    folder = root / "videos"
    shutil.copytree(world / "videos", folder)
    caption = next(iter(json.loads((world / "world.json").read_text())["captions"].values()))["caption"]
    env = _env(root)
    p = _run([wheel_venv / "probret", "search", folder, caption, "--model", bundle, "--json", "-k", "3"],
             cwd=root, env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    out = json.loads(p.stdout)
    (result,) = out["queries"]
    assert result["query"] == caption
    assert [h["rank"] for h in result["results"]] == [1, 2, 3]
    assert all(Path(h["path"]).suffix == ".mp4" for h in result["results"])
    # the second search reuses the index the first one built, without a walk
    p = _run([wheel_venv / "probret", "search", folder, caption, "--no-update", "--json", "-k", "3"], cwd=root, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["queries"][0]["results"] == result["results"]


def test_serve_without_its_extra_names_the_extra(wheel_venv, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    p = _run([wheel_venv / "probret", "serve", folder], cwd=tmp_path, env=_env(tmp_path))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "pip install 'probret[serve]'" in p.stderr and "starlette" in p.stderr
    assert _run([wheel_venv / "probret", "serve", "--help"], cwd=tmp_path, env=_env(tmp_path)).returncode == 0
