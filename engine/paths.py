"""Where probret keeps its caches (torch-free): the one place the rule is written.

``cache_dir()`` is ``$PROBRET_CACHE``, else ``$XDG_CACHE_HOME/probret``, else
``~/.cache/probret`` (the XDG base-directory convention, with an override of probret's own).
Below it: ``bundles/`` (checkpoints exported once, engine/models.py), ``checkpoints/`` (zero-shot
open_clip models), ``ort-trt/`` (ONNX Runtime's TensorRT engine cache) and ``int8-probe/``
(verdicts of the int8 probe per bundle and CPU, engine/int8_probe.py). Every entry carries a
format version (a bundle's manifest, the probe's JSON), so an entry written by an older probret
is migrated or recomputed, never misread.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    env = os.environ.get("PROBRET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "probret"
