"""probret's own small image towers, registered with timm so that an open_clip config can name
them the way open_clip names any timm tower (``vision_cfg.timm_model_name``; open_clip then wraps
the trunk in its ``TimmModel`` with the config's pooling and a linear projection to
``embed_dim``). The model stays an ordinary open_clip ``CLIP``: same tokenizer, text tower,
checkpoints (``visual.trunk.*`` / ``visual.head.proj.*`` in the state dict) and ONNX export.

Why a tower of its own. Quality protocol v2's encoder gate needs the frame features to carry the
shape of the procedural world's objects (circle, square, triangle, star, cross; 6-10 px radius in
64x64 frames). Trained from random initialisation on the world's single-object training frames
with a supervised shape loss (bench/shape_learnability.py, 2026-12-02, world of setting 2, one
thread, batch 64, AdamW 1e-3), validation accuracy against a majority class of 24% was:

- open_clip ViT ``test-vit-small`` (patch 8): at or below the majority class at 300-400 steps,
  while memorising the training frames;
- open_clip ModifiedResNet ``test-rn-small`` (layers 1-1-1-1, width 32): 22% at 400 steps and
  63% at 800, on every frame of 1,244 videos;
- this tower, ``probret_convnet_small``: 55% at 200 steps and 89% at 300, in a third of the
  ResNet's time per step.

Both open_clip towers downsample 64 px frames by 4 in their stem (ViT: 8 px patches; ResNet: a
strided convolution and an average pool) before any feature can see a corner, and the ViT has no
locality prior at all; with a few thousand small synthetic videos neither learns shape in the
budget of the protocol. This tower keeps full resolution for its first convolution, halves it
with a max pool after each stage (a max keeps the strongest corner or edge response; an average
blurs a 6 px star into a blob) and ends in a global max pool: the plain VGG recipe. It exists for
the procedural world and the tests; real footage uses a pre-trained open_clip model.
"""

from __future__ import annotations

from timm.layers import SelectAdaptivePool2d
from timm.models import register_model
from torch import Tensor, nn

from probret.engine.errors import ModelError

__all__ = ["PlainConvNet", "probret_convnet_small"]


class PlainConvNet(nn.Module):
    """Stages of conv3x3 -> BatchNorm -> ReLU, each stage after the first preceded by a 2x2 max
    pool; a global pool (``global_pool``, default max) and an optional linear classifier. The
    attributes and methods open_clip's ``TimmModel`` uses (``num_features``, ``default_cfg``,
    ``reset_classifier``) follow timm's conventions."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 128, 256), *, in_chans: int = 3,
                 num_classes: int = 0, global_pool: str = "max", drop_rate: float = 0.0, **_timm_kwargs):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for i, width in enumerate(channels):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            prev = width
        self.stages = nn.Sequential(*layers)
        self.num_features = int(channels[-1])
        self.drop_rate = float(drop_rate)
        self.default_cfg = self.pretrained_cfg = {"pool_size": None, "num_classes": num_classes}
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = int(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = nn.functional.dropout(self.global_pool(x), self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def probret_convnet_small(pretrained: bool = False, **kwargs) -> PlainConvNet:
    """Five stages of 32-64-128-128-256 channels, one convolution each (~0.5M parameters; about 56M
    multiply-adds per 64x64 frame)."""
    if pretrained:
        raise ModelError("probret_convnet_small has no pretrained weights: it trains from random initialisation")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return PlainConvNet((32, 64, 128, 128, 256), **kwargs)
