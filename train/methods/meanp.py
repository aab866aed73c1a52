"""meanP: parameter-free mean pooling of frames (CLIP4Clip, Luo et al., Neurocomputing 2022, Sec. 3.2
"Parameter-free type"; the baseline in SPEM's and T-MASS's tables).

    v      = normalize( (1/T') sum_i normalize(f_i) )     frames normalised first, as CLIP4Clip's code
    score  = cos(t, v)
    loss   = symmetric InfoNCE over logit_scale * score (CLIP4Clip Eqs. 9-10, T-MASS Eq. 2)

Nothing is learned in the head itself; the loss trains the backbone (and CLIP's temperature).
The video embedding does not depend on the text, so `video_side` returns the final embedding and
`pair_side` is a single matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures, l2n, register_method, symmetric_infonce


@register_method("meanp")
class MeanPHead(RetrievalHead):
    export_form = "MeanPForm"

    @dataclass
    class Config:
        pass

    def video_side(self, frames: Tensor) -> dict[str, Tensor]:
        """frames (N_v, T, D) raw -> {"video": (N_v, D) unit-norm mean of unit-norm frames}."""
        return {"video": l2n(l2n(frames).mean(1))}

    def pair_side(self, text: TextFeatures, video: dict[str, Tensor], *, noise=None, generator=None) -> ScoreOutput:
        return ScoreOutput(l2n(text.sentence) @ video["video"].t())

    def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
        sims = self.pair_side(text, self.video_side(frames)).scores
        return {"loss": symmetric_infonce(logit_scale * sims)}
