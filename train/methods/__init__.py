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
"""

from __future__ import annotations

import dataclasses
import importlib

from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures

DEFAULT_METHOD = "spem"

METHODS: dict[str, str] = {
    "meanp": "meanp:MeanPHead",
    "xpool": "xpool:XPoolHead",
    "tmass": "tmass:TMassHead",
    "spem": "spem:SPEMHead",
    "duq": "duq:DUQHead",
    "dvtr": "dvtr:DVTRHead",
    "prota": "prota:ProTAHead",
}


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_head_class(name: str) -> type[RetrievalHead]:
    key = name.lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(list_methods())}")
    module_name, cls_name = METHODS[key].split(":")
    module = importlib.import_module(f"probret.train.methods.{module_name}")
    return getattr(module, cls_name)


def create_head(name: str, *, embed_dim: int, num_frames: int, **hparams) -> RetrievalHead:
    """Build a head; ``hparams`` override its ``Config`` defaults (unknown keys are an error)."""
    cls = get_head_class(name)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(hparams) - known
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyperparameter(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    return cls(embed_dim, num_frames, cls.Config(**hparams))


__all__ = ["METHODS", "DEFAULT_METHOD", "RetrievalHead", "ScoreOutput", "TextFeatures", "create_head",
           "get_head_class", "list_methods"]
