"""Where probret caches what it derives (exported bundles, zero-shot checkpoints, TensorRT
engine caches): one rule for every caller.

``$PROBRET_CACHE``, else ``$XDG_CACHE_HOME/probret``, else ``~/.cache/probret``.

Below it, ``int8-probe/`` holds the verdicts of int8 bundles' load-time probe per bundle and CPU
(engine/int8_probe.py), ``ort-optimized/`` ORT's optimised graphs with their weights beside them
(engine/runtime.py, ``graph_cache``), ``tokenizers/`` the checked merge rules of a vocabulary
file and its Hugging Face conversion (engine/tokenizer.py), and ``bundle-verified/`` the records
of bundles whose files hashed right (engine/bundle.py, ``_verify_files``). Every entry carries a
format version (a bundle's manifest, the probe's JSON, a key or record format) or a checksum, so
an entry written by an older probret is migrated or recomputed, never misread.
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
