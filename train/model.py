"""RetrievalModel: an open_clip backbone plus one retrieval head from ``train/methods``.

The backbone turns token ids into ``TextFeatures`` and pixels (B, T', 3, H, W) into frame
features (B, T', D); the head turns those into losses (training) or a text x video score
matrix (evaluation, search). Scoring of large sets is done in blocks (``score_blocks``) so the
(N_text, N_video, D) tensors of query-conditioned fusion never exist at once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from probret.train.backbone import Backbone, create_backbone
from probret.train.config import ModelConfig
from probret.train.methods import create_head
from probret.train.methods.base import RetrievalHead, ScoreOutput, TextFeatures, noise_banks
from probret.train.negatives import negative_text_loss


class RetrievalModel(nn.Module):
    def __init__(self, backbone: Backbone, head: RetrievalHead, config: ModelConfig):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config

    @classmethod
    def from_config(cls, config: ModelConfig, *, load_pretrained: bool = True) -> "RetrievalModel":
        """Build the model; ``load_pretrained=False`` skips downloading CLIP weights (used when a
        checkpoint's own weights are about to be loaded)."""
        backbone = create_backbone(
            config.backbone, pretrained=config.pretrained if load_pretrained else None, freeze=config.freeze
        )
        head = create_head(
            config.method, embed_dim=backbone.embed_dim, num_frames=config.num_frames, **config.head
        )
        return cls(backbone, head, config)

    # -- encoders ---------------------------------------------------------------------------------
    def encode_text(self, token_ids: Tensor) -> TextFeatures:
        return self.backbone.encode_text(token_ids)

    def encode_video(self, pixels: Tensor) -> Tensor:
        return self.backbone.encode_frames(pixels)

    def logit_scale(self) -> Tensor:
        # CLIP clamps its temperature at 100 (log 4.6052); without the clamp it can run away when
        # training from scratch on small worlds.
        return self.backbone.logit_scale.clamp(max=4.6052).exp()

    # -- training -----------------------------------------------------------------------------------
    def forward(self, token_ids: Tensor, pixels: Tensor, *, generator: torch.Generator | None = None,
                negative_ids: Tensor | None = None, negative_weight: float = 1.0) -> dict[str, Tensor]:
        """Training losses of one batch. ``negative_ids``: token ids of word-swapped hard negative
        captions (train/negatives.py), encoded in the same text-tower call as the captions; their
        video-to-text term is added to the head's loss with ``negative_weight``."""
        b = token_ids.shape[0]
        both = token_ids if negative_ids is None else torch.cat([token_ids, negative_ids], 0)
        text_all = self.encode_text(both)
        text = text_all.select(slice(0, b))
        frames = self.encode_video(pixels)
        losses = self.head.loss(text, frames, logit_scale=self.logit_scale(), generator=generator)
        if negative_ids is not None and negative_ids.shape[0]:
            neg = negative_text_loss(self.head, text, text_all.select(slice(b, None)), frames,
                                     logit_scale=self.logit_scale(), generator=generator)
            losses = {**losses, "loss": losses["loss"] + negative_weight * neg, "loss_negative": neg.detach()}
        return losses

    # -- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def score_blocks(
        self, text: TextFeatures, frames: Tensor, *, block: int = 256, seed: int = 0
    ) -> ScoreOutput:
        """Score every text against every video in (block x block) pieces.

        Sampling heads get the noise banks of ``seed`` (``noise_banks``: the numbers an exported
        noise-input bundle with that seed uses), shared by every text and every video, so the
        matrix does not depend on ``block`` (up to float rounding)."""
        n_text, n_video = len(text), frames.shape[0]
        specs = self.head.inference_noise()
        banks = {k: b.to(frames.device, frames.dtype) for k, b in noise_banks(specs, seed).items()}
        scores = torch.empty(n_text, n_video)
        uncertainty = None
        for i in range(0, n_text, block):
            text_block = text.select(slice(i, i + block))
            for j in range(0, n_video, block):
                video_block = frames[j : j + block]
                noise = {s.key: s.expand(banks[s.key], len(text_block), video_block.shape[0]) for s in specs}
                out = self.head.score(text_block, video_block, noise=noise or None)
                scores[i : i + block, j : j + block] = out.scores.float().cpu()
                if out.uncertainty is not None:
                    if uncertainty is None:
                        uncertainty = torch.zeros(n_text, n_video)
                    uncertainty[i : i + block, j : j + block] = out.uncertainty.float().cpu()
        return ScoreOutput(scores, uncertainty)
