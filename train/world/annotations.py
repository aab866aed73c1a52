"""The files of a world: MSRVTT-format annotations, world.json, and reading them back."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from probret.engine._version import __version__ as PROBRET_VERSION
from probret.engine.errors import DataError

from .captions import eval_caption
from .specs import VideoSpec
from .vocabulary import BACKGROUNDS, COLORS, GENERIC_MOTIONS, MOTIONS, SHAPES, SIZES

WORLD_FORMAT = "probret-world"
#: Bumped whenever the same seed and settings would give different videos or captions.
WORLD_VERSION = 1

SPLITS = ("train", "val", "test")
#: MSRVTT_data.json spells the validation split 'validate'.
MSRVTT_SPLIT_NAMES = {"train": "train", "val": "validate", "test": "test"}
OUTPUT_FILES = ("world.json", "train.csv", "val.csv", "test.csv")


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _atomic_write(path: Path, data: bytes) -> int:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def write_annotations(out: Path, specs: list[VideoSpec], settings: dict, *, name: str, fps: int,
                      frames: int) -> int:
    """Write <name>_data.json, train/val/test.csv and world.json (last: its presence marks a
    complete world); returns bytes written."""
    written = _atomic_write(out / f"{name}_data.json", _json_bytes(msrvtt_record(specs, settings, fps, frames)))
    for split in SPLITS:
        written += _atomic_write(out / f"{split}.csv", split_csv(specs, split).encode())
    written += _atomic_write(out / "world.json", _json_bytes(world_record(specs, settings)))
    return written


def msrvtt_record(specs: list[VideoSpec], settings: dict, fps: int, frames: int) -> dict:
    """MSRVTT_data.json: {"info", "videos", "sentences"}."""
    duration = round(frames / fps, 3)
    return {
        "info": {
            "contributor": "probret procedural world",
            "data_created": "deterministic",
            "description": f"procedural text-video world, seed {settings['seed']}, "
                           f"difficulty {settings['difficulty']['name']}",
            "version": f"{WORLD_VERSION}",
            "year": "",
        },
        "videos": [
            {
                "category": MOTIONS.index(v.events[0].motion),
                "url": f"procedural://seed{settings['seed']}/{v.video_id}",
                "video_id": v.video_id,
                "start time": 0.0,
                "end time": duration if v.frames is None else round(v.frames / v.fps, 3),
                "split": MSRVTT_SPLIT_NAMES[v.split],
                "id": v.index,
            }
            for v in specs
        ],
        "sentences": [
            {"caption": c.text, "video_id": v.video_id, "sen_id": c.sen_id}
            for v in specs for c in v.captions
        ],
    }


def split_csv(specs: list[VideoSpec], split: str) -> str:
    """train.csv (video_id, as MSRVTT_train.9k.csv) or val/test.csv (key,vid_key,video_id,sentence,
    as MSRVTT_JSFUSION_test.csv, with each video's evaluation caption)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if split == "train":
        w.writerow(["video_id"])
        for v in specs:
            if v.split == "train":
                w.writerow([v.video_id])
        return buf.getvalue()
    w.writerow(["key", "vid_key", "video_id", "sentence"])
    for k, v in enumerate(x for x in specs if x.split == split):
        w.writerow([f"ret{k}", f"msr{v.index}", v.video_id, eval_caption(v).text])
    return buf.getvalue()


def world_record(specs: list[VideoSpec], settings: dict) -> dict:
    """world.json: settings, vocabulary, every video's attributes, every caption's meaning and matches."""
    return {
        "format": WORLD_FORMAT,
        "version": WORLD_VERSION,
        "probret_version": PROBRET_VERSION,
        "settings": settings,
        "vocabulary": {
            "shapes": list(SHAPES), "colors": {k: list(c) for k, c in COLORS.items()}, "sizes": list(SIZES),
            "motions": list(MOTIONS), "generic_motions": {k: list(v) for k, v in GENERIC_MOTIONS.items()},
            "backgrounds": list(BACKGROUNDS),
        },
        "videos": {v.video_id: v.record() for v in specs},
        "captions": {
            str(c.sen_id): {
                "video_id": v.video_id,
                "split": v.split,
                "caption": c.text,
                "kind": c.kind,
                "eval": c.sen_id == v.eval_sen_id,
                "semantics": c.semantics,
                "matches": c.matches,
                **({} if c.moment is None else {"moment": c.moment}),
            }
            for v in specs for c in v.captions
        },
    }


def load_world(out_dir: str | Path) -> dict:
    """Read world.json (raises DataError with the reason if it is missing or not a world)."""
    path = Path(out_dir) / "world.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: not a procedural world (run probret synth)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if data.get("format") != WORLD_FORMAT:
        raise DataError(f"{path}: not a probret world file")
    return data


def eval_match_sets(world: dict, split: str) -> dict[str, list[str]]:
    """video_id -> every video_id of ``split`` its evaluation caption truly describes (the video
    itself included): the positives for semantic recall."""
    out = {}
    for rec in world["captions"].values():
        if rec["split"] == split and rec["eval"]:
            out[rec["video_id"]] = list(rec["matches"])
    return out

