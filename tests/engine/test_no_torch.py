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
