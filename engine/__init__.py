"""probret.engine: the torch-free runtime (decoding, preprocessing, tokenizing, sessions, index, scoring).

Nothing in this package may import torch: a deployed search installs numpy, av and
onnxruntime only. ``tests/engine/test_no_torch.py`` enforces it in a subprocess.
"""

from probret.engine._version import __version__

__all__ = ["__version__"]
