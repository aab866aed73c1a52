"""Hard negative captions by word swaps (NegCLIP: Yuksekgonul et al., "When and why
vision-language models behave like bags-of-words, and what to do about it", ICLR 2023, Sec. 4).

Why. A contrastive batch only asks the encoders for what tells its videos apart. In the
procedural world, colour and motion already separate a batch of 32 videos, so a backbone trained
from scratch never learns the objects' shapes (quality protocol v2, settings 1-4: the shape probe
stays at the majority class through 1,500 steps while a supervised classifier on the same tower
reaches 91%). A negative that differs from the true caption in one word of an attribute makes
that attribute the only way to score the video's own caption above it.

How (``train.negative_swaps``, ``train.negative_weight``):

- ``negative_swaps`` lists groups of interchangeable words (e.g. the world's five shape nouns,
  or its four directions). Every training caption gets ONE negative per group it contains a word
  of: one such occurrence, chosen uniformly, replaced by another word of its group, chosen
  uniformly. Captions without a group word get none. Words match whole, case-insensitively; the
  replacement keeps the occurrence's position, so the rest of the sentence is unchanged. One
  negative per group (not one per caption, drawn over all groups' words) keeps each attribute's
  share of negatives independent of which other groups are listed: adding a motion group
  (quality protocol v2, setting 10) does not halve the shape negatives that settings 5-9 relied on.
  With a single group the two rules are the same.
- The negatives join the batch's captions as extra candidates of the video-to-text direction
  only (NegCLIP's image-to-text term): for video i the candidates are the B captions of the batch
  and the batch's negatives, the target is caption i; scores come from the head's inference
  scoring ``pair_side`` (a sampling head draws its inference noise from the step's generator),
  the logits are CLIP's temperature times those scores. The
  term is added to the head's own loss with weight ``negative_weight`` (1.0: NegCLIP weights
  its terms equally). Text-to-video is untouched: a negative caption has no video.
- The rng is seeded per micro-batch from the training seed, step and rank, so a resumed run
  draws the same negatives.

What it does not guarantee: a swapped caption may still be true of the video (a two-object
video whose other object has the swapped-in shape and does the same thing). The procedural
world makes this rare (it needs equal colour and motion too); such a negative only adds noise.
"""

from __future__ import annotations

import random
import re

import torch
import torch.nn.functional as F
from torch import Tensor

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def check_swaps(groups) -> str | None:
    """Why ``groups`` is not a valid ``train.negative_swaps`` (None when it is)."""
    if not isinstance(groups, list):
        return "must be a list of word groups, e.g. [[\"circle\", \"square\"]]"
    seen: set[str] = set()
    for g in groups:
        if not isinstance(g, list) or len(g) < 2 or not all(isinstance(w, str) for w in g):
            return f"each group must be a list of at least two words, got {g!r}"
        words = [w.lower() for w in g]
        if any(not _WORD.fullmatch(w) for w in words):
            return f"group {g!r}: every entry must be one word (letters only)"
        if len(set(words)) != len(words) or seen & set(words):
            return f"group {g!r}: a word may appear only once over all groups"
        seen |= set(words)
    return None


def swap_negatives(texts: list[str], groups: list[list[str]], rng: random.Random) -> list[str]:
    """One word-swapped negative per caption of ``texts`` and per group of ``groups`` the caption
    contains a word of (caption by caption in the order of ``texts``, then in the order of
    ``groups``; captions without a group word contribute nothing)."""
    lowered = [[w.lower() for w in g] for g in groups]
    group_index = {w: k for k, g in enumerate(lowered) for w in g}
    negatives = []
    for text in texts:
        spots: dict[int, list[re.Match]] = {}
        for m in _WORD.finditer(text):
            k = group_index.get(m.group().lower())
            if k is not None:
                spots.setdefault(k, []).append(m)
        for k in sorted(spots):
            m = spots[k][rng.randrange(len(spots[k]))]
            others = [w for w in lowered[k] if w != m.group().lower()]
            negatives.append(text[: m.start()] + others[rng.randrange(len(others))] + text[m.end():])
    return negatives


def negative_text_loss(head, text, negatives, frames: Tensor, *, logit_scale: Tensor, generator=None) -> Tensor:
    """Video-to-text cross-entropy with the negatives as extra candidates (module docstring).
    ``text``/``negatives``: TextFeatures of the B captions and of the negatives; frames (B, T', D)."""
    video = head.video_side(frames)
    positives = head.pair_side(text, video, generator=generator).scores  # (B, B)
    extra = head.pair_side(negatives, video, generator=generator).scores  # (N_neg, B)
    logits = logit_scale * torch.cat([positives, extra], 0).t()  # (B videos, B + N_neg captions)
    return F.cross_entropy(logits, torch.arange(frames.shape[0], device=frames.device))
