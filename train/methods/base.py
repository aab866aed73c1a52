"""The contract every retrieval method implements.

A method receives what the backbone produced -- the caption's sentence and token features and
the video's T' frame features -- and either returns training losses or a text x video score
matrix. Randomness never happens inside ``loss``/``score`` implicitly: every method draws its
noise tensors in ``draw_noise`` (from a seeded ``torch.Generator``) and receives them as an
argument, so an exported graph can take the same noise as an input and rank identically.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

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


class RetrievalHead(nn.Module):
    """Base class of the heads in ``train/methods``.

    Subclasses define ``name``, a ``Config`` dataclass (hyperparameters, serialised into the
    checkpoint's config.json) and implement ``loss`` and ``score``; those that sample also
    override ``draw_noise``.
    """

    name: ClassVar[str] = "base"

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

    def _noise(self, noise, n_text, n_video, generator, training):
        if noise is not None:
            return noise
        return self.draw_noise(n_text, n_video, generator=generator, training=training)

    # -- the two entry points ------------------------------------------------------------------
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
        raise NotImplementedError

    def score(
        self,
        text: TextFeatures,
        frames: Tensor,
        *,
        noise: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> ScoreOutput:
        """Similarity of every text with every video: (N_text, N_video)."""
        raise NotImplementedError

    def config_dict(self) -> dict:
        return {f.name: getattr(self.config, f.name) for f in fields(self.config)}


def symmetric_infonce(logits: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy over a (B, B) logit matrix whose diagonal holds positives
    (X-Pool Eq. 6, T-MASS Eq. 3)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def l2n(x: Tensor, dim: int = -1) -> Tensor:
    return F.normalize(x, dim=dim, eps=1e-6)
