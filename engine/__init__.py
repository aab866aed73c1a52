"""probret.engine: the torch-free runtime (decoding, preprocessing, tokenizing, sessions, index, scoring).

Nothing in this package may import torch: a deployed search installs numpy, av and
onnxruntime only. ``tests/engine/test_no_torch.py`` enforces it in a subprocess.

The names below are the engine's public face (engine/facade.py, engine/results.py,
engine/options.py, engine/errors.py); ``probret search`` and ``probret serve`` use only these.
They load on first use, so ``import probret.engine`` stays cheap for every submodule import.
"""

from probret.engine._version import __version__
from probret.engine.lazy import lazy_attributes

_EXPORTS = {
    "open_folder": "facade", "recorded_model": "facade", "VideoFolder": "facade", "NOTES_LOGGER": "facade", "DEFAULT_WINDOW": "facade",
    "load_bundle": "bundle", "Bundle": "bundle",
    "Moment": "results", "Hit": "results", "SearchResult": "results", "CaptionHit": "results",
    "CaptionResult": "results", "SkippedFile": "results", "UpdateReport": "results", "display_safe": "results",
    "Bound": "options", "IndexOptions": "options", "SearchOptions": "options", "WINDOW": "options",
    "WORKERS": "options", "BATCH": "options", "TOP_K": "options", "ANN_CANDIDATES": "options",
    "MOMENTS": "options", "MIN_CONFIDENCE": "options", "RESOLUTION_SIDE": "options", "DTYPES": "options", "RESIZE_MODES": "options",
    "parse_resolution": "options",
    "ProbretError": "errors", "DataError": "errors", "ModelError": "errors", "IndexStoreError": "errors",
    "UsageError": "errors", "VideoDecodeError": "errors",
    "DEVICES": "runtime", "cache_dir": "cache",
    "png_bytes": "thumbnails", "thumbnail": "thumbnails",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_attributes('probret.engine', _EXPORTS, globals(), __all__)
