"""The README's Python API section runs as written (its shell line, then its Python block, in a
fresh directory with an empty model cache), and so does "Reading the numbers" (its shell lines)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBRET = Path(sys.executable).with_name("probret")


def _section(title: str = "Python API") -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^## {title}\n(.*?)^## ", text, re.S | re.M)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


@pytest.mark.skipif(not PROBRET.exists(), reason="the probret entry point is not installed")
def test_python_api_section_runs_as_written(tmp_path):
    section = _section()
    shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "PROBRET_CACHE": str(tmp_path / "cache")}
    for line in shell.strip().splitlines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "probret"
        subprocess.run([str(PROBRET), *args[1:]], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    p = subprocess.run([sys.executable, "-c", code + "\nprint('hits', len(result.hits), embeddings.shape)"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^1 \S+\.mp4 ", p.stdout, re.M) and "hits 3 (2," in p.stdout, p.stdout


@pytest.mark.skipif(not PROBRET.exists(), reason="the probret entry point is not installed")
def test_reading_the_numbers_runs_as_written(tmp_path):
    """Every line runs; the JSON carries a probability per hit; --min-confidence shows none below
    its threshold; the folder is the calibrator's domain, so no domain warning."""
    import json

    shell = re.search(r"```bash\n(.*?)```", _section("Reading the numbers"), re.S).group(1)
    env = {**os.environ, "PROBRET_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    for line in shell.strip().splitlines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "probret"
        p = subprocess.run([str(PROBRET), *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert "calibrated on a gallery" not in p.stderr and "tiny demo model" not in p.stderr, p.stderr
        if "--json" in args:
            hits = [h for q in json.loads(p.stdout)["queries"] for h in q["results"]]
            assert hits and all(0.0 <= h["confidence"] <= 1.0 and "uncertainty" in h for h in hits)
        if "--min-confidence" in args:
            floor = float(args[args.index("--min-confidence") + 1])
            shown = [float(m) for m in re.findall(r"^\s+\d+\s+\S+\s+([\d.]+)\s", p.stdout, re.M)]
            assert all(c >= floor for c in shown), p.stdout
