"""Why the encoder gate's motion probe fell from 52% (setting 7) to 29% (setting 8): a
validation-only diagnostic (issue 11).

    python bench/motion_probe_check.py --backbone-file B.safetensors --world W --out R.json

Settings 1-8's motion probe (``quality_stats.clip_halves``) labels each video with the motion of
its *first event* and gives a linear classifier the mean frame feature of the clip's first half,
of its second half, and their difference. That input was designed for worlds in which the actor
stays on screen for the whole clip: the second half then shows where the actor went, so the
difference carries the direction. Setting 8's world knob ``actor_visibility="own_event"`` hides
the first actor of a two-actor clip after its event ends, which is about the middle of the clip;
its second half then shows the *other* actor, and the clip halves carry the first event's motion
only through the first four sampled frames.

So this script fits (on train videos) and scores (on **validation** videos, never test) two
probes of the same frame features, for the same label:

* ``clip_halves``: settings 1-8's probe input;
* ``event_span`` (``quality_stats.event_span_halves``, the gate's motion probe from setting 9):
  the same three parts (first-half mean, second-half mean, difference), but of the sampled
  frames that fall inside the first event's own span [start_frame, end_frame) (sampled frame k
  shows the video frame at the midpoint time of segment k).

and reports both overall and per kind of video (one event; two events by one actor; two events
by two actors). If the encoder had lost motion, both probes would fall; if the probe's input is
what changed, ``event_span`` on setting 8 stays near setting 7's level while ``clip_halves``
falls on the two-actor videos only. It trains nothing and reads no test label or query.
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
from common import cpu_flags, machine, say, write_results  # noqa: E402


def video_kind(record: dict) -> str:
    events = record["events"]
    if len(events) == 1:
        return "one_event"
    return "two_events_one_actor" if len({e["actor"] for e in events}) == 1 else "two_events_two_actors"


def encode(backbone: str, backbone_file: Path, world_dir: Path, num_frames: int, splits: tuple[str, ...]):
    """Frame features and world records of each split in ``splits`` (one model, one world read),
    and the world: ([(frames, records), ...], world)."""
    import torch

    from probret.train.config import ModelConfig
    from probret.train.datasets import load_split
    from probret.train.evaluate import encode_videos
    from probret.train.model import RetrievalModel
    from probret.train.world import load_world

    model = RetrievalModel.from_config(ModelConfig(backbone=backbone, pretrained=str(backbone_file),
                                                   method="meanp", num_frames=num_frames)).eval()
    world = load_world(world_dir)
    out = []
    for split_name in splits:
        data = load_split("procedural", str(world_dir), split_name)
        with torch.no_grad():
            frames, _ = encode_videos(model, data, batch_size=64, num_workers=0, device=torch.device("cpu"),
                                      progress=False)
        out.append((frames.float().numpy(), [world["videos"][v] for v in data.video_ids]))
    return out, world


def probe_accuracy(x_tr, y_tr, x_va, y_va, probe: dict, kinds: np.ndarray) -> dict:
    """The gate's linear probe; overall and per video kind (accuracy on that kind's videos)."""
    out = {"all": qs.linear_probe(x_tr, y_tr, x_va, y_va, l2=probe["l2"], steps=probe["steps"])}
    for kind in sorted(set(kinds)):
        mask = kinds == kind
        res = qs.linear_probe(x_tr, y_tr, x_va[mask], y_va[mask], l2=probe["l2"], steps=probe["steps"])
        out[kind] = {"accuracy": res["accuracy"], "majority": res["majority"], "videos": int(mask.sum())}
    return out


def measure(backbone: str, backbone_file: Path, world_dir: Path, num_frames: int, probe: dict) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    ((f_tr, r_tr), (f_va, r_va)), world = encode(backbone, backbone_file, world_dir, num_frames, ("train", "val"))
    settings = world["settings"]
    shown = qs.shown_video_frames(num_frames, int(settings["frames"]), float(settings["fps"]))
    y_tr, y_va = qs.probe_labels(r_tr)["motion"], qs.probe_labels(r_va)["motion"]
    kinds = np.asarray([video_kind(r) for r in r_va])
    res = {"shown_video_frames": shown.tolist(), "val_videos_by_kind": {k: int((kinds == k).sum()) for k in set(kinds)}}
    res["clip_halves"] = probe_accuracy(qs.clip_halves(f_tr), y_tr, qs.clip_halves(f_va), y_va, probe, kinds)
    res["event_span"] = probe_accuracy(qs.event_span_halves(f_tr, r_tr, shown), y_tr,
                                       qs.event_span_halves(f_va, r_va, shown), y_va, probe, kinds)
    for name in ("clip_halves", "event_span"):
        say(f"{name:12s} " + ", ".join(f"{k} {100 * v['accuracy']:.1f}/{100 * v['majority']:.1f}"
                                       for k, v in res[name].items()))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", type=Path, default=None, help="default: bench/protocols/quality_v2.json")
    p.add_argument("--backbone-file", type=Path, required=True)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    import quality_v2 as q2

    protocol = json.loads((a.protocol or q2.PROTOCOL).read_text())
    res = {"machine": machine(), "cpu_flags": cpu_flags(), "backbone_file": str(a.backbone_file),
           "world": str(a.world), "split": "fit on train, scored on val",
           **measure(protocol["backbone"]["name"], a.backbone_file, a.world, protocol["backbone"]["num_frames"],
                     protocol["gate"]["probe"])}
    write_results(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
