"""A supervised warm start of the vision tower on the world's object attributes, before the shared
backbone's contrastive pre-training (quality protocol v2, setting 6; ``pretrain.vision_warmstart``).

Why. Settings 1-5 pre-trained the backbone contrastively from random initialisation, and shape
never rose above the majority class, even with shape-swapped hard negative captions (setting 5).
The swap check at step 250 showed why: the text tower put a caption and its shape-swapped copy at
cosine 0.997 and the video preferred its own caption over the copy 50% of the time, on training
data. Each tower's gradient towards shape is proportional to the other tower's sensitivity to it,
and both start near zero, so training sits at that saddle; colour escapes it because random
convolutional features already carry colour. Video-text models commonly start their image tower
from a supervised image classifier (ImageNet initialisation: Frozen in Time, ClipBERT); here the
classifier is trained on the world's own training frames, the procedural world's ImageNet.

What. The single-object videos of the world's **training** split, every frame, labelled with the
object's attributes (``attributes``: shape and colour by default); the open_clip vision tower
(random initialisation, seeded) plus one linear layer per attribute, the sum of their
cross-entropies, AdamW (``lr``, weight decay 0.05), batches of ``batch_size`` frames drawn with a
seeded generator, ``steps`` steps, one thread. Validation accuracy per attribute (middle frames of
the validation split's single-object videos) is recorded; the test split is never read. The
linear layers are thrown away; the whole open_clip state (the trained vision tower and the
untouched random text tower) is saved as safetensors, which the contrastive pre-training loads
as its ``model.pretrained`` file.

bench/shape_learnability.py, the diagnostic that chose the tower, trains the same loop on shape
alone.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np


def single_object_frames(world: Path, split: str, every_frame: bool, attributes=("shape",)):
    """Frames (N, H, W, 3) uint8 of the split's single-object videos and their labels, one array
    of N strings per attribute (every frame of each video, or its middle one)."""
    import av

    meta = json.loads((world / "world.json").read_text())["videos"]
    with open(world / f"{split}.csv", newline="") as f:
        ids = list(dict.fromkeys(row["video_id"] for row in csv.DictReader(f)))
    frames, labels = [], {a: [] for a in attributes}
    for vid in ids:
        if len(meta[vid]["objects"]) != 1:
            continue
        with av.open(str(world / "videos" / f"{vid}.mp4")) as c:
            decoded = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
        kept = decoded if every_frame else [decoded[len(decoded) // 2]]
        frames.extend(kept)
        for a in attributes:
            labels[a].extend([meta[vid]["objects"][0][a]] * len(kept))
    return np.stack(frames), {a: np.asarray(v) for a, v in labels.items()}


def train_attributes(backbone, world: Path, *, attributes, steps: int, lr: float, batch_size: int, seed: int,
                     every_frame: bool = True, eval_every: int = 100, report=None) -> dict:
    """Train ``backbone.clip.visual`` on the attributes (module docstring) in place; returns the
    validation accuracies per evaluation step and the majority-class rates."""
    import torch

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_tr, y_tr = single_object_frames(world, "train", every_frame, attributes)
    x_va, y_va = single_object_frames(world, "val", False, attributes)
    classes = {a: np.unique(y_tr[a]) for a in attributes}
    mean = torch.tensor(backbone.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.image_std).view(1, 3, 1, 1)

    def prep(x):
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std

    vision = backbone.clip.visual
    heads = torch.nn.ModuleDict({a: torch.nn.Linear(backbone.embed_dim, len(classes[a])) for a in attributes})
    opt = torch.optim.AdamW([*vision.parameters(), *heads.parameters()], lr=lr, weight_decay=0.05)
    yt = {a: torch.from_numpy(np.searchsorted(classes[a], y_tr[a])) for a in attributes}
    # a validation label never seen in training counts as wrong (searchsorted would alias it)
    yv = {a: np.where(np.isin(y_va[a], classes[a]), np.searchsorted(classes[a], y_va[a]), -1) for a in attributes}
    majority = {a: float(np.mean(yv[a] == np.bincount(yt[a].numpy()).argmax())) for a in attributes}
    rows, started = [], time.process_time()
    vision.train()
    for step in range(1, steps + 1):
        i = torch.randint(0, len(x_tr), (batch_size,), generator=generator)
        z = vision(prep(x_tr[i.numpy()]))
        loss = sum(torch.nn.functional.cross_entropy(heads[a](z), yt[a][i]) for a in attributes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            vision.eval()
            with torch.no_grad():
                z = torch.cat([vision(prep(x_va[j:j + 256])) for j in range(0, len(x_va), 256)])
                acc = {a: round(float((heads[a](z).argmax(1).numpy() == yv[a]).mean()), 3) for a in attributes}
            vision.train()
            rows.append({"step": step, "loss": round(loss.item(), 3), "val_accuracy": acc})
            if report:
                report(f"vision warm start step {step}: loss {loss.item():.3f}, val accuracy "
                       + ", ".join(f"{a} {acc[a]:.3f} (majority {majority[a]:.3f})" for a in attributes))
    return {"rows": rows, "majority": majority, "training_frames": int(len(x_tr)),
            "cpu_seconds": round(time.process_time() - started, 1)}


def warm_start_file(protocol: dict, world: Path, out: Path, *, report=None) -> Path:
    """Train the warm start of ``protocol["pretrain"]["vision_warmstart"]`` once and save the
    open_clip weights to ``out`` (with its record beside it, ``out``.json); reuses a finished one."""
    import torch
    from safetensors.torch import save_file

    from probret.train.backbone import create_backbone

    record = out.with_suffix(".json")
    if out.is_file() and record.is_file():
        return out
    ws = protocol["pretrain"]["vision_warmstart"]
    torch.set_num_threads(1)
    torch.manual_seed(protocol["pretrain"]["seed"])
    backbone = create_backbone(protocol["backbone"]["name"])
    result = train_attributes(backbone, world, attributes=tuple(ws["attributes"]), steps=ws["steps"], lr=ws["lr"],
                              batch_size=ws["batch_size"], seed=protocol["pretrain"]["seed"], report=report)
    state = {k: v.detach().contiguous() for k, v in backbone.clip.state_dict().items()}
    save_file(state, str(out.with_name(out.name + ".part")))
    out.with_name(out.name + ".part").replace(out)
    record.write_text(json.dumps({"settings": ws, **result}, indent=1) + "\n")
    return out
