"""Can a backbone's vision tower learn the world's shapes at all from the protocol's training
videos? A supervised check behind quality protocol v2's choice of backbone (its encoder gate
needs shape well above chance).

    python bench/shape_learnability.py --world WORLD --backbone test-vit-small [--steps 400] [--frames all]

Takes the single-object videos of the world's train split (label: the object's shape) and
trains the open_clip vision tower from random initialisation plus a linear layer with
cross-entropy (AdamW, batch 64, one thread); every 100 steps prints the training loss and the
accuracy on the middle frames of the validation split's single-object videos. ``--frames all``
trains on every frame of each training video, ``middle`` on the middle one. A diagnostic for
choosing the protocol's backbone, never a result; the test split is not read.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, say  # noqa: E402


def single_object_frames(world: Path, split: str, every_frame: bool) -> tuple[np.ndarray, np.ndarray]:
    import av

    meta = json.loads((world / "world.json").read_text())["videos"]
    with open(world / f"{split}.csv", newline="") as f:
        ids = list(dict.fromkeys(row["video_id"] for row in csv.DictReader(f)))
    frames, labels = [], []
    for vid in ids:
        if len(meta[vid]["objects"]) != 1:
            continue
        with av.open(str(world / "videos" / f"{vid}.mp4")) as c:
            decoded = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
        kept = decoded if every_frame else [decoded[len(decoded) // 2]]
        frames.extend(kept)
        labels.extend([meta[vid]["objects"][0]["shape"]] * len(kept))
    return np.stack(frames), np.asarray(labels)


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
    x_tr, y_tr = single_object_frames(args.world, "train", args.frames == "all")
    x_va, y_va = single_object_frames(args.world, "val", False)
    classes = np.unique(y_tr)
    backbone = create_backbone(args.backbone)
    mean = torch.tensor(backbone.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.image_std).view(1, 3, 1, 1)

    def prep(x):
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std

    vision = backbone.clip.visual
    head = torch.nn.Linear(backbone.embed_dim, len(classes))
    opt = torch.optim.AdamW([*vision.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.05)
    xt, yt = prep(x_tr), torch.from_numpy(np.searchsorted(classes, y_tr))
    xv, yv = prep(x_va), np.searchsorted(classes, y_va)
    majority = float(np.mean(yv == np.bincount(yt.numpy()).argmax()))
    rows, started = [], time.process_time()
    for step in range(1, args.steps + 1):
        i = torch.randint(0, len(xt), (64,))
        loss = torch.nn.functional.cross_entropy(head(vision(xt[i])), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                acc = float((head(vision(xv)).argmax(1).numpy() == yv).mean())
            rows.append({"step": step, "loss": round(loss.item(), 3), "val_accuracy": round(acc, 3)})
            say(f"{args.backbone} step {step}: loss {loss.item():.3f}, val accuracy {acc:.3f} "
                f"(majority {majority:.3f}, {len(xt)} training frames)")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()},
                                        "majority": majority, "cpu_seconds": round(time.process_time() - started, 1),
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
