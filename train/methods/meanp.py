"""meanP: parameter-free mean pooling of frames (CLIP4Clip, Luo et al., Neurocomputing 2022, Sec. 3.2
"Parameter-free type"; the baseline in SPEM's and T-MASS's tables).

    v      = normalize( (1/T') sum_i normalize(f_i) )     frames normalised first, as CLIP4Clip's code
    score  = cos(t, v)
    loss   = symmetric InfoNCE over logit_scale * score (CLIP4Clip Eqs. 9-10, T-MASS Eq. 2)

Nothing is learned in the head itself; the loss trains the backbone (and CLIP's temperature).
The video embedding does not depend on the text, so `video_side` returns the final embedding and
`pair_side` is a single matrix product.

``objective="frames"`` (a pre-training objective, not a retrieval method of its own) swaps the loss
for CLIP's image-text loss applied to every frame alone, scoring unchanged:

    loss   = (1/T') sum_i symmetric InfoNCE over logit_scale * cos(t, f_i)   (CLIP, Radford et al.,
                                                                              ICML 2021, Fig. 3)

Why it exists: quality protocol v2 pre-trains one shared backbone that every head fine-tunes from.
Pre-trained with the default (video) objective, only the *mean* of the frames is ever asked to
match the caption, and single frames end up far weaker than their mean (validation R@1 29.7 for
the mean of per-frame cosines against 43.0 for the cosine of the mean frame;
bench/fusion_at_init.py), so every head that selects frames (X-Pool, T-MASS, SPEM) starts ~8
points behind meanP before it has trained a step. The papers' heads start from image-level CLIP,
whose frames are each aligned with text; this objective gives the shared backbone that property.
Scoring, and therefore any extra hard-negative term (train/negatives.py, which scores through
`pair_side`), stays the cosine of the mean frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures, l2n, register_method, symmetric_infonce


#: the training objectives of ``MeanPHead.Config.objective`` (module docstring)
OBJECTIVES = ("video", "frames")


@register_method("meanp")
class MeanPHead(RetrievalHead):
    export_form = "MeanPForm"

    @dataclass
    class Config:
        objective: str = "video"  # "video": InfoNCE on the mean frame; "frames": on each frame alone

        def __post_init__(self):
            if self.objective not in OBJECTIVES:
                raise ValueError(f"meanp objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")

    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        """frames (N_v, T, D) raw -> {"video": (N_v, D) unit-norm mean of unit-norm frames}."""
        return {"video": l2n(l2n(frames).mean(1))}

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        return ScoreOutput(l2n(text.sentence) @ video["video"].t())

    def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
        if self.config.objective == "frames":
            t, f = l2n(text.sentence), l2n(frames)
            per_frame = [symmetric_infonce(logit_scale * (t @ f[:, i].t())) for i in range(f.shape[1])]
            return {"loss": torch.stack(per_frame).mean()}
        sims = self.pair_side(text, self.video_side(frames)).scores
        return {"loss": symmetric_infonce(logit_scale * sims)}
