"""Where the fusion heads start: every method's head at its initialisation on one backbone, and how
well single frames of that backbone match the text (validation split only; issue 11 diagnostic).

    python bench/fusion_at_init.py                                    # quality v2's shared backbone
    python bench/fusion_at_init.py --backbone-file B.safetensors --world W --out results.json

Why: in quality protocol v2 (setting 6) every fusion head (X-Pool, T-MASS, SPEM, which share
X-Pool's attention block) ended its 150 fine-tuning steps ~5 points below the mean-pooled cosine
(meanP, DVTR). A head that starts at the identity (X-Pool's own initialisation) is not meanP: it
LayerNorms text and frames and attends over the frames with temperature sqrt(d), a soft selection
of the frames most like the text. On a backbone pre-trained with meanP's loss only the *mean* of
the frames was ever asked to match the caption, so how well single frames match it decides where
those heads start. This script measures both, with no training:

* ``heads``: R@1 (against match sets, per query kind) of each registered head, freshly built
  (seed 0), scoring the backbone's features;
* ``frames``: R@1 of parameter-free rules on the same features: the cosine of the mean frame
  (= meanP), each single frame, the best frame, the mean of the per-frame cosines, and a softmax
  over frames at a few temperatures (what an attention head can at most select).

It trains nothing and reads no test query, so it may guide a new setting (protocol rule: the world
and the pre-training change, never the baselines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_stats as qs  # noqa: E402
from common import cpu_flags, machine, say  # noqa: E402

V2 = Path(__file__).resolve().parent / "results" / "quality" / "v2"
DEFAULT_OUT = V2 / "diagnostics" / "fusion_at_init.json"


def _kind_r1(sims: np.ndarray, split, kinds: np.ndarray) -> dict[str, float]:
    hit = qs.per_query(sims, split.relevant)["hit1"]
    return {k: round(float(100 * hit[qs.kind_mask(kinds, k)].mean()), 1) for k in ("all",) + qs.KINDS}


def frame_rules(text: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Parameter-free scores from unit text (Q, D) and unit frames (V, T, D): name -> (Q, V)."""
    mean = frames.mean(1)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    per = np.einsum("qd,vtd->qvt", text, frames)
    rules = {"mean frame (meanP)": text @ mean.T, "best frame": per.max(-1), "mean of frame cosines": per.mean(-1)}
    t = frames.shape[1]
    for j in sorted({0, t // 2, t - 1}):
        rules[f"frame {j} alone"] = per[..., j]
    for tau in (0.02, 0.05):
        w = np.exp((per - per.max(-1, keepdims=True)) / tau)
        rules[f"softmax over frames, tau {tau}"] = (w * per).sum(-1) / w.sum(-1)
    return rules


def measure(backbone: str, backbone_file: Path, world_dir: Path, num_frames: int, split_name: str) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from probret.train.config import ModelConfig
    from probret.train.datasets import load_split
    from probret.train.evaluate import encode_texts, encode_videos
    from probret.train.methods import create_head, list_methods
    from probret.train.model import RetrievalModel
    from probret.train.world import load_world

    model = RetrievalModel.from_config(ModelConfig(backbone=backbone, pretrained=str(backbone_file),
                                                   method="meanp", num_frames=num_frames)).eval()
    split = load_split("procedural", str(world_dir), split_name)
    kinds = qs.query_kinds(load_world(world_dir), split)
    cpu = torch.device("cpu")
    with torch.no_grad():
        frames, _ = encode_videos(model, split, batch_size=64, num_workers=0, device=cpu, progress=False)
        text = encode_texts(model, split.texts, batch_size=64, device=cpu)
        heads = {}
        for method in list_methods():
            torch.manual_seed(0)
            model.head = create_head(method, embed_dim=model.backbone.embed_dim, num_frames=num_frames).eval()
            heads[method] = _kind_r1(model.score_blocks(text, frames, block=256, seed=0).scores.numpy(), split, kinds)
            say(f"{method:6s} at init: R@1 {heads[method]}")
        unit_t = torch.nn.functional.normalize(text.sentence.float(), dim=-1).numpy()
        unit_f = torch.nn.functional.normalize(frames.float(), dim=-1).numpy()
    rules = {name: _kind_r1(s, split, kinds) for name, s in frame_rules(unit_t, unit_f).items()}
    for name, r in rules.items():
        say(f"{name:28s} R@1 {r}")
    return {"split": split_name, "queries": len(split.texts), "heads_at_init": heads, "frame_rules": rules}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", type=Path, default=None, help="default: bench/protocols/quality_v2.json")
    p.add_argument("--backbone-file", type=Path, default=None, help="open_clip weights (default: the protocol's "
                   "finished shared backbone, rebuilt from its committed parts)")
    p.add_argument("--world", type=Path, default=None, help="the world (default: the protocol's, generated if missing)")
    p.add_argument("--split", default="val", choices=("val", "train"), help="never test: this guides decisions")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    import quality_v2 as q2

    protocol = json.loads((a.protocol or q2.PROTOCOL).read_text())
    out_dir = q2.REPO / protocol["out"]
    world = a.world or q2.ensure_world(protocol, out_dir)
    backbone_file = a.backbone_file or q2.shared_backbone_file(protocol, out_dir)
    res = {"machine": machine(), "cpu_flags": cpu_flags(), "backbone": protocol["backbone"]["name"],
           "backbone_file": str(backbone_file), "world": str(world),
           **measure(protocol["backbone"]["name"], backbone_file, world, protocol["backbone"]["num_frames"], a.split)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    say(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
