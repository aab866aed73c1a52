"""One module per retrieval method (heads + losses); each module's docstring cites its paper
and equation numbers. ``create_head("spem", embed_dim=512, num_frames=12, **hparams)`` builds one.

| name   | module     | what it is                                                         |
|--------|------------|--------------------------------------------------------------------|
| meanp  | meanp.py   | CLIP4Clip mean pooling of frames, cosine similarity (baseline)     |
| xpool  | xpool.py   | X-Pool text-conditioned attention over frames (baseline)           |
| tmass  | tmass.py   | T-MASS stochastic text embedding on X-Pool                         |
| spem   | spem.py    | SPEM: video and text both Gaussian (flagship, the default)         |
| duq    | duq.py     | DUQ: evidential similarity uncertainty + K probabilistic samples   |
| dvtr   | dvtr.py    | DVTR: uncertainty-weighted negatives (soft positive calibration)  |
| prota  | prota.py   | ProTA: token-level Gaussians, 2-Wasserstein token similarity       |

Methods register themselves: a module here that defines ``@register_method("name")`` on its
head class is found by ``list_methods()`` (every module of this package is imported on first
use). Adding a method is one file here plus its test (tests/train/methods/test_method_NAME.py);
the export, the CLI's ``--method`` and the benches read the registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from probret.train.methods.base import REGISTRY, NoiseSpec, RetrievalHead, ScoreOutput, TextFeatures, register_method

DEFAULT_METHOD = "spem"
_NOT_METHODS = {"base"}
_discovered = False


def _discover() -> None:
    """Import every module of this package once, so each registers its head."""
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _discovered = True


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _discover()
    return sorted(REGISTRY)


def get_head_class(name: str) -> type[RetrievalHead]:
    """The head class registered as ``name`` (case-insensitive); ValueError names the choices."""
    _discover()
    key = str(name).lower()
    if key not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(list_methods())}")
    return REGISTRY[key]


def check_hparams(name: str, hparams: dict) -> type[RetrievalHead]:
    """The head class of ``name`` after checking that ``hparams`` are keys of its ``Config``."""
    cls = get_head_class(name)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(hparams) - known
    if unknown:
        raise ValueError(f"method {name!r} has no hyperparameter(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls


def create_head(name: str, *, embed_dim: int, num_frames: int, **hparams) -> RetrievalHead:
    """Build a head; ``hparams`` override its ``Config`` defaults (unknown keys are an error)."""
    cls = check_hparams(name, hparams)
    return cls(embed_dim, num_frames, cls.Config(**hparams))


__all__ = ["DEFAULT_METHOD", "NoiseSpec", "RetrievalHead", "ScoreOutput", "TextFeatures", "check_hparams",
           "create_head", "get_head_class", "list_methods", "register_method"]
