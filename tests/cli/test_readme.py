"""The README's Python API section runs as written (its shell line, then its Python block, in a
fresh directory with an empty model cache)."""

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


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Python API\n(.*?)^## ", text, re.S | re.M)
    assert m, "README.md has no '## Python API' section"
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
