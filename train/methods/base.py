"""The contract every retrieval method implements.

A method receives what the backbone produced -- the caption's sentence and token features and
the video's T' frame features -- and either returns training losses or a text x video score
matrix. Randomness never happens inside ``loss``/``score`` implicitly: every method draws its
noise tensors in ``draw_noise`` (from a seeded ``torch.Generator``) and receives them as an
argument, so an exported graph can take the same noise as an input and rank identically.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TextFeatures:
    """Text tower outputs for N captions.

    sentence: (N, D) projected end-of-text feature (CLIP's text embedding, not normalised).
    tokens:   (N, L, D) projected per-token features (for token-level methods such as ProTA).
    mask:     (N, L) bool, True on real tokens (start, words, end), False on padding.
    """

    sentence: Tensor
    tokens: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.sentence.shape[0]

    def select(self, index) -> "TextFeatures":
        return TextFeatures(self.sentence[index], self.tokens[index], self.mask[index])


@dataclass
class ScoreOutput:
    """scores: (N_text, N_video), higher is more similar.
    uncertainty: (N_text, N_video) or None; higher means the model is less sure of the pair."""

    scores: Tensor
    uncertainty: Tensor | None = None


@dataclass(frozen=True)
class NoiseSpec:
    """One inference noise tensor of a head, as a *bank* shared by every text and every video.

    key:   the key in the head's noise dict (``draw_noise(training=False)``), e.g. "eps", "eps_t".
    distribution: "uniform" (U[0, 1)) or "gaussian" (N(0, 1)), then multiplied by ``scale``.
    shape: the bank's shape: the head's noise shape without its text / video axis.
    side:  "text" or "video": which count the head's tensor has at ``axis``.
    axis:  where the head's tensor has its N_text / N_video axis.

    ``name`` (``noise_<key>``) is the input name of an exported pair graph; ``to_dict`` is the
    manifest entry that ``probret.engine.runtime.draw_noise`` draws from.
    """

    key: str
    distribution: str
    scale: float
    shape: tuple[int, ...]
    side: str
    axis: int

    def __post_init__(self):
        if self.distribution not in ("uniform", "gaussian"):
            raise ValueError(f"noise {self.key!r}: distribution must be uniform or gaussian, got {self.distribution!r}")
        if self.side not in ("text", "video"):
            raise ValueError(f"noise {self.key!r}: side must be text or video, got {self.side!r}")

    @property
    def name(self) -> str:
        return f"noise_{self.key}"

    def expand(self, bank: Tensor, n_text: int, n_video: int) -> Tensor:
        """The head's layout: the bank broadcast along the text / video axis (a view)."""
        n = n_text if self.side == "text" else n_video
        x = bank.unsqueeze(self.axis)
        shape = list(x.shape)
        shape[self.axis] = n
        return x.expand(*shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "distribution": self.distribution, "scale": self.scale,
                "shape": list(self.shape), "side": self.side, "axis": self.axis}


def noise_banks(specs: list[NoiseSpec], seed: int) -> dict[str, Tensor]:
    """The inference noise of one seed: {key: bank}, the numbers a noise-input bundle feeds its pair
    graph (``probret.engine.runtime.draw_noise``: one PCG64 stream, in ``specs`` order).

    This is probret's one sampling convention (docs/methods.md, "Sampling at inference"): every
    text and every video share the banks, so a score never depends on how the texts and videos
    were batched (``--block``), and evaluation in PyTorch ranks as the exported bundle does."""
    from probret.engine.runtime import draw_noise

    specs = sorted(specs, key=lambda s: s.key)  # the drawing order of the bundle's manifest
    drawn = draw_noise([s.to_dict() for s in specs], seed)
    return {s.key: torch.from_numpy(np.ascontiguousarray(drawn[s.name])) for s in specs}


class RetrievalHead(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the heads in ``train/methods``; register one with ``@register_method(name)``.

    Subclasses define a ``Config`` dataclass (hyperparameters, serialised into the checkpoint's
    config.json) and implement ``video_side`` (everything text-independent, once per video),
    ``pair_side`` (the per-(text, video) rest) and ``loss``; ``score`` is the two halves in a row.
    Those that sample override ``draw_noise`` and declare their inference noise in
    ``inference_noise`` (export draws the banks from that declaration; a test checks the two agree).

    What export needs is declared on the class:
      ``export_form``: the name of the class in ``probret.export.forms`` that rewrites the head for
      an inference graph ("GenericForm": the head's own ``video_side`` / ``pair_side``);
      ``needs_tokens``: whether ``pair_side`` reads the text's token features and mask.
    """

    name: ClassVar[str] = "base"  # set by @register_method
    export_form: ClassVar[str] = "GenericForm"
    needs_tokens: ClassVar[bool] = False

    @dataclass
    class Config:
        pass

    def __init__(self, embed_dim: int, num_frames: int, config=None):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_frames = num_frames
        self.config = config if config is not None else self.Config()

    # -- noise -------------------------------------------------------------------------------
    def draw_noise(
        self, n_text: int, n_video: int, *, generator: torch.Generator | None = None, training: bool = False
    ) -> dict[str, Tensor]:
        """Noise tensors for one call of ``loss`` (training=True) or ``score`` (training=False).
        Deterministic methods return {}."""
        return {}

    def inference_noise(self) -> list[NoiseSpec]:
        """The noise ``draw_noise(training=False)`` draws, as banks (one per key, sorted by key).
        Deterministic methods return []."""
        return []

    def _noise(self, noise, n_text, n_video, generator, training):
        if noise is not None:
            return noise
        return self.draw_noise(n_text, n_video, generator=generator, training=training)

    # -- the contract ---------------------------------------------------------------------------
    @abc.abstractmethod
    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        """frames (N_v, T', D) raw -> every text-independent tensor, each with N_v first."""

    @abc.abstractmethod
    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise: dict[str, Tensor] | None = None,
                  generator: torch.Generator | None = None) -> ScoreOutput:
        """The per-pair rest: scores (and uncertainty) of every text with every video of ``video``."""

    @abc.abstractmethod
    def loss(
        self,
        text: TextFeatures,
        frames: Tensor,
        *,
        logit_scale: Tensor,
        noise: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Training losses for a batch of B aligned pairs (text i describes video i).
        frames: (B, T, D). logit_scale: scalar, already exponentiated (CLIP's temperature).
        Returns a dict whose "loss" entry is the total to minimise."""

    def score(
        self,
        text: TextFeatures,
        frames: Tensor,
        *,
        noise: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> ScoreOutput:
        """Similarity of every text with every video: (N_text, N_video)."""
        return self.pair_side(text, self.video_side(frames), noise=noise, generator=generator)

    def config_dict(self) -> dict:
        return {f.name: getattr(self.config, f.name) for f in fields(self.config)}


def symmetric_infonce(logits: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy over a (B, B) logit matrix whose diagonal holds positives
    (X-Pool Eq. 6, T-MASS Eq. 3)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def l2n(x: Tensor, dim: int = -1) -> Tensor:
    return F.normalize(x, dim=dim, eps=1e-6)


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------
#: name -> head class, filled by ``@register_method`` when a module of ``train/methods`` is imported
#: (``probret.train.methods`` imports them all on first use, so a new method is one new file).
REGISTRY: dict[str, type[RetrievalHead]] = {}


def register_method(name: str):
    """Class decorator: ``@register_method("spem") class SPEMHead(RetrievalHead)`` makes the head
    known to ``create_head``, ``--method``, export and the benches, under ``name``."""
    if not name or name != name.lower() or not name.isidentifier():
        raise ValueError(f"method name {name!r}: use a lower-case identifier")

    def decorate(cls: type[RetrievalHead]) -> type[RetrievalHead]:
        if not (isinstance(cls, type) and issubclass(cls, RetrievalHead)):
            raise TypeError(f"@register_method({name!r}) decorates a RetrievalHead subclass, not {cls!r}")
        other = REGISTRY.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is registered twice ({other.__module__}.{other.__qualname__} "
                             f"and {cls.__module__}.{cls.__qualname__})")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate
