"""Can a backbone's vision tower learn the world's shapes at all from the protocol's training
videos? A supervised check behind quality protocol v2's choice of backbone (its encoder gate
needs shape well above chance).

    python bench/shape_learnability.py --world WORLD --backbone test-vit-small [--steps 400] [--frames all]

Takes the single-object videos of the world's train split (label: the object's shape) and
trains the open_clip vision tower from random initialisation plus a linear layer with
cross-entropy (AdamW, batch 64, one thread; the loop of bench/vision_warmstart.py); every 100
steps prints the training loss and the accuracy on the middle frames of the validation split's
single-object videos. ``--frames all``
trains on every frame of each training video, ``middle`` on the middle one. A diagnostic for
choosing the protocol's backbone, never a result; the test split is not read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, say  # noqa: E402
from vision_warmstart import train_attributes  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--backbone", default="test-vit-small")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--frames", choices=("all", "middle"), default="middle")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    from probret.train.backbone import create_backbone

    torch.set_num_threads(1)
    torch.manual_seed(0)
    result = train_attributes(create_backbone(args.backbone), args.world, attributes=("shape",), steps=args.steps,
                              lr=args.lr, batch_size=64, seed=0, every_frame=args.frames == "all", report=say)
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()},
                                        **result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
