"""Annotation readers for the text-video retrieval benchmarks, one interface for all.

    split = load_split("msrvtt", "data/msrvtt", "test")
    split.texts[i]                      # i-th query / training caption
    split.videos[split.text_video_index[i]]   # its ground-truth VideoRecord (id, path, captions, window)

Pure Python + numpy (no torch): the torch ``Dataset`` wrappers live in ``train/data.py``, and
``probret eval`` / dataset checks must not need the training extra just to read a CSV.

The file formats are exactly the ones the public reference code reads, so the annotation
archives those projects distribute can be used as they are (docs/datasets.md gives the
download sources and folder layouts):

=========== ========================================================== =======================
dataset     annotation files (in ``root``)                              reference
=========== ========================================================== =======================
msrvtt      MSRVTT_data.json, MSRVTT_train.9k.csv / .7k.csv,             CLIP4Clip, X-Pool
            MSRVTT_JSFUSION_test.csv
didemo      {split}_data.json + {split}_list.txt, or didemo_ret_{split}.json  CLIP4Clip / VINDLU
msvd        raw-captions.json or captions_msvd.json, {split}_list.txt    CLIP4Clip / X-Pool
lsmdc       LSMDC16_annos_training.csv / _val.csv,                       CLIP4Clip, X-Pool
            LSMDC16_challenge_1000_publictect.csv
vatex       ref_captions.json + {split}_list.txt (or the official        CLIP2Video / T-MASS
            vatex_training_v1.0.json / vatex_validation_v1.0.json)
charades    Charades_v1_train.csv / Charades_v1_test.csv                 Charades (AI2)
procedural  procedural_data.json, train.csv, val.csv, test.csv,          train/world.py
            world.json
=========== ========================================================== =======================

Protocols (what ``texts`` holds):

* train splits: every caption of every video, each paired with its video (X-Pool / T-MASS /
  CLIP4Clip ``unfold_sentences``), except DiDeMo (paragraphs) and Charades (one description
  field per video).
* msrvtt test: the 1k-A (JSFUSION) protocol, 1000 (caption, video) pairs. ``test-full``: all
  20 captions of the 2990 official test videos. ``train`` is the 9k split, ``train-7k`` the 7k.
* didemo: paragraph retrieval: all descriptions of a video joined into one text, one per video;
  the window is [0, 30] s (annotations cover the first 30 s; CLIP4Clip uses 31 for the same).
* msvd, vatex test: multi-caption: every caption is a query mapped to its video.
* lsmdc: one sentence per clip (the 1000-clip challenge test set); clips are pre-cut files.
* charades: the ``descriptions`` field of each video is its text (``script`` is the prompt the
  actors read, not a description of the recording, so it is not used).
* procedural: like msrvtt (val/test have one evaluation caption per video), plus ``relevant``:
  for each text, every video of the split it truly describes (from world.json).

``val`` where a benchmark has no validation split (msrvtt 1k-A, charades, vatex without a
``val_list.txt``): the test split is returned (``split.split == "test"``) with a warning,
as CLIP4Clip / X-Pool / T-MASS select checkpoints on it. Numbers selected that way are not
held-out numbers; say so when reporting them.

Videos: a record keeps the path where its file was found, or where it was expected. A missing
file is never silently dropped: it stays in ``videos`` (so the evaluation protocol keeps its
size), its path is listed in ``split.missing`` and a :class:`DatasetWarning` says how many;
``strict_missing=True`` raises :class:`DataError` instead, and
:meth:`RetrievalSplit.without_missing` gives the split without them. Files are looked up at
the documented relative paths first, then by name anywhere under the video folder (CLIP4Clip
walks the folder the same way), so re-encoded copies (``.mp4`` for ``.avi``) are found too.

MSVD captions come from CLIP4Clip as a pickle (``raw-captions.pkl``); probret never unpickles
files on its own. Convert once with::

    probret data convert-msvd raw-captions.pkl

which reads the pickle with an unpickler that refuses every class and function (only dict,
list, str, int ... can be built) and writes ``raw-captions.json`` next to it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import shlex
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probret.engine.errors import DataError
from probret.engine.index import VIDEO_EXTENSIONS as ENGINE_VIDEO_EXTENSIONS
from probret.engine.fsutil import atomic_write_text

__all__ = [
    "DATASETS",
    "VIDEO_EXTENSIONS",
    "DatasetWarning",
    "VideoRecord",
    "RetrievalSplit",
    "load_split",
    "convert_msvd_pickle",
]

DATASETS = ("msrvtt", "didemo", "msvd", "lsmdc", "vatex", "charades", "procedural")
#: The engine's video extensions (one list for the index and the datasets), ``.mp4`` first: the
#: order in which another extension of a documented file name is looked for.
VIDEO_EXTENSIONS = (".mp4",) + tuple(sorted(ENGINE_VIDEO_EXTENSIONS - {".mp4"}))
DOCS = "docs/datasets.md"


class DatasetWarning(UserWarning):
    """Something in a dataset deserves attention but does not stop loading (missing videos,
    a validation split that is really the test split, captions that were dropped)."""


@dataclass
class VideoRecord:
    """One video of a split.

    ``path``: where the file was found, or where it was expected when it is missing (see
    ``RetrievalSplit.missing``). ``captions``: this video's texts *in this split* (for a 1k-A
    test video that is the one query sentence, not all 20 MSRVTT captions). ``start`` /
    ``end``: window in seconds to sample frames from (``None`` = start / end of the file).
    """

    video_id: str
    path: str
    captions: list[str]
    start: float | None = None
    end: float | None = None


@dataclass
class RetrievalSplit:
    """A split ready for training or evaluation.

    ``texts[i]`` belongs to ``videos[text_video_index[i]]``. ``relevant`` (procedural world
    only, else ``None``): for each text, the indices of every video of the split it truly
    describes, its own video included; feed it to ``retrieval_metrics(relevant=...)``.
    ``missing``: paths of videos whose file was not found (they remain in ``videos``).
    """

    name: str
    split: str
    videos: list[VideoRecord]
    texts: list[str]
    text_video_index: np.ndarray
    missing: list[str] = field(default_factory=list)
    relevant: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.text_video_index = np.asarray(self.text_video_index, dtype=np.int64).reshape(-1)
        if self.text_video_index.shape[0] != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {self.text_video_index.shape[0]} text_video_index entries")
        if self.relevant is not None and len(self.relevant) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.relevant)} relevant entries")

    @property
    def video_ids(self) -> list[str]:
        return [v.video_id for v in self.videos]

    def without_missing(self) -> "RetrievalSplit":
        """The split without its missing videos and their texts (indices renumbered).

        This changes the evaluation protocol (fewer candidates); report it when you use it."""
        gone = set(self.missing)
        keep = [j for j, v in enumerate(self.videos) if v.path not in gone]
        remap = np.full(len(self.videos), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        new_index = remap[self.text_video_index]
        text_keep = np.flatnonzero(new_index >= 0)
        relevant = None
        if self.relevant is not None:
            relevant = [sorted(int(remap[j]) for j in self.relevant[i] if remap[j] >= 0) for i in text_keep]
        return RetrievalSplit(
            name=self.name,
            split=self.split,
            videos=[self.videos[j] for j in keep],
            texts=[self.texts[i] for i in text_keep],
            text_video_index=new_index[text_keep],
            missing=[],
            relevant=relevant,
        )

    def __repr__(self) -> str:
        return (f"RetrievalSplit({self.name}/{self.split}: {len(self.texts)} texts, {len(self.videos)} videos, "
                f"{len(self.missing)} missing)")


# --------------------------------------------------------------------------------------------
# file helpers: every failure names the file and what is wrong
# --------------------------------------------------------------------------------------------


def _warn(message: str) -> None:
    warnings.warn(message, DatasetWarning, stacklevel=3)


def _find_file(root: Path, dataset: str, names: Iterable[str], what: str) -> Path:
    names = list(names)
    for name in names:
        path = root / name
        if path.is_file():
            return path
    alts = " or ".join(names)
    raise DataError(f"{root}: {alts} not found ({what} of {dataset!r}; see {DOCS} for the expected layout)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def _read_csv(path: Path, required: Iterable[str], *, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a CSV with a header row; checks the required columns and the field count of
    every row (a ragged row means a quoting problem, which would silently shift columns)."""
    required = list(required)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    rows: list[dict[str, str]] = []
    try:
        header = [h.strip() for h in next(reader, [])]
        absent = [c for c in required if c not in header]
        if absent:
            raise DataError(f"{path}: missing column(s) {absent}; the header has {header} "
                            f"(expected at least {required})")
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if len(fields) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: expected {len(header)} fields ({', '.join(header)}), "
                                f"got {len(fields)}")
            rows.append(dict(zip(header, fields)))
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    return rows


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _as_str(value, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}: {where} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


# --------------------------------------------------------------------------------------------
# what a reader hands to the common builder
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    split: str  # the split actually loaded
    videos: list[tuple[str, float | None, float | None]]  # (video_id, start, end), protocol order
    pairs: list[tuple[str, str]]  # (text, video_id) in protocol order
    relevant: list[list[str]] | None = None  # per pair: video ids it truly describes


@dataclass(frozen=True)
class _Layout:
    """Where a dataset's video files live: default folders (relative to root, first existing
    wins) and the candidate relative paths of a video id inside that folder."""

    dirs: tuple[str, ...]
    names: Callable[[str], list[str]]


def _with_exts(stem: str, exts: Iterable[str]) -> list[str]:
    return [stem + e for e in exts]


def _didemo_names(video_id: str) -> list[str]:
    # DiDeMo ids are Flickr file names, usually with their original extension (.mov, .avi,
    # .m4v, .3gp ...), sometimes none; archives re-encoded to mp4 keep the stem.
    stem, ext = os.path.splitext(video_id)
    if ext.lower() in VIDEO_EXTENSIONS:
        return [video_id] + _with_exts(stem, [".mp4"] + [e for e in VIDEO_EXTENSIONS if e not in (".mp4", ext.lower())])
    return [video_id] + _with_exts(video_id, VIDEO_EXTENSIONS)


def _lsmdc_names(clip_id: str) -> list[str]:
    # X-Pool: <videos>/<movie>/<clip>.avi with movie = clip id minus its "_HH" suffix
    # ("1012_Unbreakable_00.05.16.065-00.05.21.941" -> "1012_Unbreakable"); MPII's archive uses
    # the same per-movie folders.
    match = re.match(r"^(.+)_\d\d\.", clip_id)
    if match is None:
        return [f"{clip_id}.avi", f"{clip_id}.mp4"]
    movie = match.group(1)
    return [f"{movie}/{clip_id}.avi", f"{clip_id}.avi", f"{movie}/{clip_id}.mp4", f"{clip_id}.mp4"]


LAYOUTS: dict[str, _Layout] = {
    # CLIP4Clip's / Frozen-in-Time's MSRVTT archive unpacks to videos/all/<id>.mp4; X-Pool points
    # videos_dir at that folder directly. Both are accepted (and .webm, CLIP4Clip's fallback).
    "msrvtt": _Layout(("videos",), lambda v: [f"{v}.mp4", f"all/{v}.mp4", f"{v}.webm", f"all/{v}.webm"]),
    "didemo": _Layout(("videos",), _didemo_names),
    "msvd": _Layout(("videos", "YouTubeClips"), lambda v: [f"{v}.avi", f"{v}.mp4"]),
    "lsmdc": _Layout(("videos", "avi"), _lsmdc_names),
    "vatex": _Layout(("videos",), lambda v: [f"{v}.mp4", f"{v}.webm", f"{v}.mkv"]),
    "charades": _Layout(("videos", "Charades_v1_480", "Charades_v1"), lambda v: [f"{v}.mp4"]),
    "procedural": _Layout(("videos",), lambda v: [f"{v}.mp4"]),
}


class _VideoFinder:
    """Exact relative paths first; then (one lazy walk of the folder) any file whose name or
    stem is the video id, shallowest and alphabetically first."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._index: dict[str, Path] | None = None

    def _walk(self) -> dict[str, Path]:
        if self._index is None:
            self._index = {}
            if self.folder.is_dir():
                for dirpath, dirnames, filenames in os.walk(self.folder):
                    dirnames.sort()
                    for fname in sorted(filenames):
                        stem, ext = os.path.splitext(fname)
                        if ext.lower() not in VIDEO_EXTENSIONS:
                            continue
                        full = Path(dirpath) / fname
                        self._index.setdefault(fname, full)
                        self._index.setdefault(stem, full)
        return self._index

    def find(self, video_id: str, names: list[str]) -> Path | None:
        for name in names:
            path = self.folder / name
            if path.is_file():
                return path
        if not self.folder.is_dir():
            return None
        index = self._walk()
        keys = [video_id]
        stem, ext = os.path.splitext(video_id)
        if ext.lower() in VIDEO_EXTENSIONS:
            keys.append(stem)
        for key in keys:
            if key in index:
                return index[key]
        return None


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def load_split(
    dataset: str,
    root: str | Path,
    split: str,
    *,
    video_dir: str | Path | None = None,
    strict_missing: bool = False,
) -> RetrievalSplit:
    """Read one split of a benchmark.

    Args:
        dataset: one of :data:`DATASETS` (case-insensitive).
        root: folder with the annotation files (layout per dataset in docs/datasets.md).
        split: ``train``, ``val`` or ``test``; msrvtt also ``train-7k``, ``train-9k`` (= train),
            ``test-1k`` (= test) and ``test-full``.
        video_dir: folder of the video files; default: the dataset's usual folder under ``root``
            (``videos/`` for most; see :data:`LAYOUTS`).
        strict_missing: raise :class:`DataError` naming the missing files instead of warning.

    Raises:
        DataError: unknown dataset or split, missing or malformed annotation file (the message
            names the file and what is wrong), or missing videos with ``strict_missing``.
    """
    name = str(dataset).strip().lower()
    if name not in READERS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        hint = (f"; make one with `probret synth {shlex.quote(str(root))} --videos 600`" if name == "procedural"
                else f" (the {name} annotations go there; see {DOCS})")
        raise DataError(f"{root}: dataset folder not found{hint}")
    split_name = str(split).strip().lower()
    raw = READERS[name](root, split_name)
    layout = LAYOUTS[name]
    if video_dir is not None:
        folder = Path(video_dir)
    else:
        folder = next((root / d for d in layout.dirs if (root / d).is_dir()), root / layout.dirs[0])
    return _build(name, raw, layout, folder, strict_missing)


def _build(name: str, raw: _Raw, layout: _Layout, folder: Path, strict_missing: bool) -> RetrievalSplit:
    finder = _VideoFinder(folder)
    pos: dict[str, int] = {}
    videos: list[VideoRecord] = []
    missing: list[str] = []
    for video_id, start, end in raw.videos:
        if video_id in pos:
            continue
        if not video_id or "/" in video_id or "\\" in video_id or video_id in (".", ".."):
            # ids become file names under the video folder: never let one point elsewhere
            raise DataError(f"{name}/{raw.split}: video id {video_id!r} is not a plain file name")
        names = layout.names(video_id)
        found = finder.find(video_id, names)
        path = str(found if found is not None else folder / names[0])
        if found is None:
            missing.append(path)
        pos[video_id] = len(videos)
        videos.append(VideoRecord(video_id, path, [], start, end))

    texts: list[str] = []
    index: list[int] = []
    relevant: list[list[int]] | None = [] if raw.relevant is not None else None
    empty = 0
    for k, (text, video_id) in enumerate(raw.pairs):
        text = " ".join(text.split())  # collapse newlines / runs of blanks, strip
        if not text:
            empty += 1
            continue
        j = pos[video_id]
        videos[j].captions.append(text)
        texts.append(text)
        index.append(j)
        if relevant is not None:
            rel = {pos[v] for v in raw.relevant[k] if v in pos}
            rel.add(j)
            relevant.append(sorted(rel))
    label = f"{name}/{raw.split}"
    if empty:
        _warn(f"{label}: dropped {empty} empty caption(s)")
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        where = f"{folder} does not exist" if not folder.is_dir() else f"not found under {folder}"
        msg = f"{label}: {len(missing)} of {len(videos)} video files missing ({where}): {shown}"
        if strict_missing:
            raise DataError(msg)
        _warn(msg + "; they stay in the split (listed in .missing); pass strict_missing=True to make this an error")
    return RetrievalSplit(name, raw.split, videos, texts, np.asarray(index, dtype=np.int64), missing, relevant)


def _unknown_split(dataset: str, split: str, valid: Iterable[str]) -> DataError:
    return DataError(f"unknown split {split!r} for {dataset!r}; valid: {', '.join(valid)}")


def _val_is_test(dataset: str, why: str) -> None:
    _warn(f"{dataset}: {why}, so 'val' loads the test split (as CLIP4Clip / X-Pool / T-MASS do); "
          f"numbers selected on it are not held-out")


# --------------------------------------------------------------------------------------------
# MSRVTT and the procedural world (same files)
# --------------------------------------------------------------------------------------------


def _msrvtt_json(path: Path) -> tuple[dict[str, list[str]], list[dict]]:
    """(video_id -> captions in file order, the 'videos' list) of an MSRVTT_data.json."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise DataError(f"{path}: expected an object with a 'sentences' list (and 'videos'), "
                        f"the MSRVTT_data.json format")
    captions: dict[str, list[str]] = defaultdict(list)
    for k, item in enumerate(data["sentences"]):
        ok = isinstance(item, dict) and isinstance(item.get("video_id"), str) and isinstance(item.get("caption"), str)
        if not ok:
            raise DataError(f"{path}: sentences[{k}] must be an object with string 'video_id' and 'caption', "
                            f"got {item!r:.80}")
        captions[item["video_id"]].append(item["caption"])
    videos = data.get("videos", [])
    if not isinstance(videos, list):
        raise DataError(f"{path}: 'videos' must be a list")
    return captions, videos


def _train_from_json(dataset: str, split: str, csv_path: Path, json_path: Path) -> _Raw:
    ids = _unique(row["video_id"].strip() for row in _read_csv(csv_path, ["video_id"]))
    captions, _ = _msrvtt_json(json_path)
    uncaptioned = [v for v in ids if not captions.get(v)]
    if uncaptioned:
        _warn(f"{dataset}/{split}: {len(uncaptioned)} video(s) of {csv_path.name} have no caption in {json_path.name} "
              f"(e.g. {uncaptioned[:3]}); they contribute no training pair")
    return _Raw(split, [(v, None, None) for v in ids], [(c, v) for v in ids for c in captions.get(v, [])])


def _pairs_from_jsfusion(split: str, csv_path: Path) -> _Raw:
    rows = _read_csv(csv_path, ["video_id", "sentence"])
    pairs = [(row["sentence"], row["video_id"].strip()) for row in rows]
    return _Raw(split, [(v, None, None) for v in _unique(v for _, v in pairs)], pairs)


def _read_msrvtt(root: Path, split: str) -> _Raw:
    def data() -> Path:
        return _find_file(root, "msrvtt", ["MSRVTT_data.json"], "captions")

    if split in ("train", "train-9k", "train-7k"):
        csv_name = "MSRVTT_train.7k.csv" if split == "train-7k" else "MSRVTT_train.9k.csv"
        return _train_from_json("msrvtt", split, _find_file(root, "msrvtt", [csv_name], "training videos"), data())
    if split in ("test", "test-1k", "val"):
        if split == "val":
            _val_is_test("msrvtt", "the 1k-A protocol has no validation split")
        return _pairs_from_jsfusion("test", _find_file(root, "msrvtt", ["MSRVTT_JSFUSION_test.csv"], "1k-A test pairs"))
    if split == "test-full":
        path = data()
        captions, videos = _msrvtt_json(path)
        ids = _unique(v["video_id"] for v in videos if isinstance(v, dict) and v.get("split") == "test"
                      and isinstance(v.get("video_id"), str))
        if not ids:
            raise DataError(f"{path}: no video has \"split\": \"test\" (needed for test-full)")
        return _Raw(split, [(v, None, None) for v in ids], [(c, v) for v in ids for c in captions.get(v, [])])
    raise _unknown_split("msrvtt", split, ["train", "train-9k", "train-7k", "val", "test", "test-1k", "test-full"])


def _procedural_json(root: Path) -> Path:
    preferred = root / "procedural_data.json"
    if preferred.is_file():
        return preferred
    found = sorted(p for p in root.glob("*_data.json") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{root}: no <name>_data.json (procedural_data.json) found; generate a world with "
                        f"`probret synth` (see {DOCS})")
    raise DataError(f"{root}: several *_data.json files ({[p.name for p in found]}); keep one world per folder")


def _world_matches(path: Path) -> tuple[dict[tuple[str, str], list[str]], dict[str, list[str]]]:
    """From world.json: (video_id, caption) -> matching video ids, and video_id -> matches of its
    evaluation caption. Reads train/world.py's layout: {"captions": {sen_id: {"video_id",
    "caption", "eval", "matches", ...}}}; a list of such records is accepted too."""
    world = _read_json(path)
    records = world.get("captions") if isinstance(world, dict) else None
    if isinstance(records, dict):
        records = list(records.values())
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a 'captions' object of caption records (train/world.py format)")
    by_text: dict[tuple[str, str], list[str]] = {}
    by_eval: dict[str, list[str]] = {}
    for k, rec in enumerate(records):
        if not isinstance(rec, dict) or "matches" not in rec:
            continue
        matches = rec["matches"]
        if not isinstance(matches, list) or not all(isinstance(m, str) for m in matches):
            raise DataError(f"{path}: captions record {k}: 'matches' must be a list of video ids")
        vid, text = rec.get("video_id"), rec.get("caption", rec.get("sentence", rec.get("text")))
        if isinstance(vid, str) and isinstance(text, str):
            by_text.setdefault((vid, " ".join(text.split())), matches)
        if isinstance(vid, str) and rec.get("eval"):
            by_eval[vid] = matches
    return by_text, by_eval


def _read_procedural(root: Path, split: str) -> _Raw:
    if split == "train":
        return _train_from_json("procedural", split, _find_file(root, "procedural", ["train.csv"], "training videos"),
                                _procedural_json(root))
    if split not in ("val", "test"):
        raise _unknown_split("procedural", split, ["train", "val", "test"])
    raw = _pairs_from_jsfusion(split, _find_file(root, "procedural", [f"{split}.csv"], f"{split} pairs"))
    world_path = root / "world.json"
    if world_path.is_file():
        by_text, by_eval = _world_matches(world_path)
        relevant, unmatched = [], 0
        for text, vid in raw.pairs:
            matches = by_text.get((vid, " ".join(text.split())), by_eval.get(vid))
            if matches is None:
                unmatched += 1
                matches = [vid]
            relevant.append(list(matches))
        if unmatched:
            _warn(f"procedural/{split}: {unmatched} caption(s) not found in {world_path}; their only relevant video is "
                  f"their own")
        raw.relevant = relevant
    else:
        _warn(f"procedural/{split}: {world_path} not found; no semantic relevance (split.relevant is None)")
    return raw


# --------------------------------------------------------------------------------------------
# DiDeMo
# --------------------------------------------------------------------------------------------

DIDEMO_WINDOW = (0.0, 30.0)


def _object_records(path: Path, expected: str):
    """Yield (k, record) over a JSON file that must hold a list of objects; ``expected`` says
    which keys, for the error message."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of {expected} records")
    for k, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}: entry {k} is not an object")
        yield k, item


def _read_didemo(root: Path, split: str) -> _Raw:
    if split not in ("train", "val", "test"):
        raise _unknown_split("didemo", split, ["train", "val", "test"])
    clip4clip, ret = root / f"{split}_data.json", root / f"didemo_ret_{split}.json"
    paragraphs: dict[str, list[str]] = defaultdict(list)
    if clip4clip.is_file():
        # CLIP4Clip: [{"video": id, "description": sentence, "times": [[s, e], ...], ...}, ...],
        # one entry per moment; a video's sentences are joined in file order.
        for k, item in _object_records(clip4clip, "moment records with 'video' and 'description'"):
            vid = _as_str(item.get("video"), clip4clip, f"entry {k} 'video'")
            paragraphs[vid].append(_as_str(item.get("description"), clip4clip, f"entry {k} 'description'"))
        source = clip4clip
    elif ret.is_file():
        # VINDLU / Singularity: [{"video": id, "caption": [sentences] or paragraph, ...}, ...]
        for k, item in _object_records(ret, "{'video', 'caption'}"):
            vid = _as_str(item.get("video"), ret, f"entry {k} 'video'")
            caption = item.get("caption")
            if isinstance(caption, str):
                caption = [caption]
            if not isinstance(caption, list) or not all(isinstance(c, str) for c in caption):
                raise DataError(f"{ret}: entry {k} 'caption' must be a string or a list of strings")
            paragraphs[vid].extend(caption)
        source = ret
    else:
        raise DataError(f"{root}: neither {clip4clip.name} (CLIP4Clip) nor {ret.name} found (DiDeMo {split} "
                        f"annotations; see {DOCS})")
    ids = list(paragraphs)
    list_path = root / f"{split}_list.txt"
    if list_path.is_file():
        listed = _unique(_read_lines(list_path))
        absent = [v for v in listed if v not in paragraphs]
        if absent:
            _warn(f"didemo/{split}: {len(absent)} video(s) of {list_path.name} have no description in {source.name} "
                  f"(e.g. {absent[:3]}); left out")
        ids = [v for v in listed if v in paragraphs]
    start, end = DIDEMO_WINDOW
    return _Raw(split, [(v, start, end) for v in ids],
                [(" ".join(s.strip() for s in paragraphs[v]), v) for v in ids])


# --------------------------------------------------------------------------------------------
# MSVD
# --------------------------------------------------------------------------------------------


def _caption_dict(path: Path, data) -> dict[str, list[str]]:
    """{video_id: [caption, ...]}; a caption may be a string or a list of tokens (CLIP4Clip's
    raw-captions, joined with spaces as CLIP4Clip does)."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object mapping video ids to lists of captions")
    out: dict[str, list[str]] = {}
    for vid, caps in data.items():
        if not isinstance(caps, list):
            raise DataError(f"{path}: captions of {vid!r} must be a list, got {type(caps).__name__}")
        texts = []
        for k, cap in enumerate(caps):
            if isinstance(cap, list) and all(isinstance(w, str) for w in cap):
                cap = " ".join(cap)
            if not isinstance(cap, str):
                raise DataError(f"{path}: caption {k} of {vid!r} must be a string or a list of words")
            texts.append(cap)
        out[str(vid)] = texts
    return out


def _read_msvd(root: Path, split: str) -> _Raw:
    if split not in ("train", "val", "test"):
        raise _unknown_split("msvd", split, ["train", "val", "test"])
    path = next((root / n for n in ("raw-captions.json", "captions_msvd.json") if (root / n).is_file()), None)
    if path is None:
        pkl = root / "raw-captions.pkl"
        if pkl.is_file():
            raise DataError(f"{pkl}: probret does not load pickles implicitly; convert it once with "
                            f"`probret data convert-msvd {pkl}` (safe: no code can run), "
                            f"which writes {root / 'raw-captions.json'}")
        raise DataError(f"{root}: raw-captions.json or captions_msvd.json not found (MSVD captions; see {DOCS})")
    captions = _caption_dict(path, _read_json(path))
    list_path = _find_file(root, "msvd", [f"{split}_list.txt"], f"{split} video list")
    ids = _unique(_read_lines(list_path))
    absent = [v for v in ids if v not in captions]
    if absent:
        raise DataError(f"{list_path}: {len(absent)} video(s) have no captions in {path.name}, e.g. {absent[:3]}")
    return _Raw(split, [(v, None, None) for v in ids], [(c, v) for v in ids for c in captions[v]])


def _restricted_unpickle(data: bytes):
    class _DataOnly(pickle.Unpickler):
        def find_class(self, module, name):  # every class / function lookup goes through here
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain data (dict, list, str) is accepted")

    return _DataOnly(io.BytesIO(data), encoding="utf-8").load()


def convert_msvd_pickle(pkl_path: str | Path, json_path: str | Path | None = None) -> Path:
    """Convert CLIP4Clip's ``raw-captions.pkl`` ({video_id: [[word, ...], ...]}) to JSON.

    The pickle is read with an unpickler whose ``find_class`` refuses everything, so only
    built-in containers and scalars can be reconstructed and no code can run (the pickle
    documentation's "restricting globals"). Writes ``{video_id: ["a man is ...", ...]}``
    (``raw-captions.json`` next to the pickle by default) and returns its path.
    """
    pkl_path = Path(pkl_path)
    out = Path(json_path) if json_path is not None else pkl_path.with_suffix(".json")
    try:
        data = _restricted_unpickle(pkl_path.read_bytes())
    except OSError as exc:
        raise DataError(f"{pkl_path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a data problem
        raise DataError(f"{pkl_path}: not a plain-data pickle of captions ({exc})") from None
    if isinstance(data, dict):
        data = {k.decode("utf-8") if isinstance(k, bytes) else k: v for k, v in data.items()}
    captions = _caption_dict(pkl_path, data)
    atomic_write_text(out, json.dumps(captions, ensure_ascii=False, indent=1) + "\n")
    return out


# --------------------------------------------------------------------------------------------
# LSMDC
# --------------------------------------------------------------------------------------------

LSMDC_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}


def _read_lsmdc(root: Path, split: str) -> _Raw:
    if split not in LSMDC_FILES:
        raise _unknown_split("lsmdc", split, list(LSMDC_FILES))
    path = _find_file(root, "lsmdc", [LSMDC_FILES[split]], f"{split} annotations")
    pairs = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        # <CLIP_ID> <START_ALIGNED> <END_ALIGNED> <START_EXTRACTED> <END_EXTRACTED> <SENTENCE>
        if len(fields) != 6:
            raise DataError(f"{path}, line {line_no}: expected 6 tab-separated fields (clip id, start/end aligned, "
                            f"start/end extracted, sentence), found {len(fields)}")
        clip_id = fields[0].strip()
        if not clip_id:
            raise DataError(f"{path}, line {line_no}: empty clip id")
        pairs.append((fields[5], clip_id))
    # Clips are pre-cut files, so the timestamps (positions in the movie) are not a window.
    return _Raw(split, [(v, None, None) for v in _unique(v for _, v in pairs)], pairs)


# --------------------------------------------------------------------------------------------
# VATEX
# --------------------------------------------------------------------------------------------

VATEX_OFFICIAL = ("vatex_training_v1.0.json", "vatex_validation_v1.0.json")


def _read_vatex(root: Path, split: str) -> _Raw:
    if split not in ("train", "val", "test"):
        raise _unknown_split("vatex", split, ["train", "val", "test"])
    ref = root / "ref_captions.json"
    if ref.is_file():
        captions, source = _caption_dict(ref, _read_json(ref)), ref.name
    else:
        captions, present = {}, [root / n for n in VATEX_OFFICIAL if (root / n).is_file()]
        if not present:
            raise DataError(f"{root}: ref_captions.json (or the official {' / '.join(VATEX_OFFICIAL)}) not found "
                            f"(VATEX captions; see {DOCS})")
        for path in present:
            for k, item in _object_records(path, "{'videoID', 'enCap'}"):
                vid = _as_str(item.get("videoID"), path, f"entry {k} 'videoID'")
                caps = item.get("enCap")
                if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                    raise DataError(f"{path}: entry {k} 'enCap' must be a list of strings")
                captions[vid] = caps
        source = " + ".join(p.name for p in present)
    list_path = root / f"{split}_list.txt"
    actual = split
    if not list_path.is_file() and split == "val" and (root / "test_list.txt").is_file():
        _val_is_test("vatex", "there is no val_list.txt")
        list_path, actual = root / "test_list.txt", "test"
    if list_path.is_file():
        ids = _unique(_read_lines(list_path))
    elif split == "train" and not ref.is_file() and (root / VATEX_OFFICIAL[0]).is_file():
        ids = _unique(item["videoID"] for item in _read_json(root / VATEX_OFFICIAL[0]))
    else:
        raise DataError(f"{list_path}: not found; VATEX {split} needs the split's video list (the 1500/1500 "
                        f"val/test split of HGR / CLIP2Video; see {DOCS})")
    absent = [v for v in ids if v not in captions]
    if absent:
        raise DataError(f"{list_path}: {len(absent)} video(s) have no captions in {source}, e.g. {absent[:3]}")
    return _Raw(actual, [(v, None, None) for v in ids], [(c, v) for v in ids for c in captions[v]])


# --------------------------------------------------------------------------------------------
# Charades
# --------------------------------------------------------------------------------------------


def _read_charades(root: Path, split: str) -> _Raw:
    if split not in ("train", "val", "test"):
        raise _unknown_split("charades", split, ["train", "val", "test"])
    actual = split
    if split == "val":
        _val_is_test("charades", "Charades has no validation split")
        actual = "test"
    path = _find_file(root, "charades", [f"Charades_v1_{actual}.csv"], f"{actual} annotations")
    rows = _read_csv(path, ["id", "descriptions"])
    ids = _unique(row["id"].strip() for row in rows)
    if any(not v for v in ids):
        raise DataError(f"{path}: a row has an empty 'id'")
    # One text per video: the whole 'descriptions' field (one or more sentences by the worker
    # who watched the video). Videos with an empty field stay as (uncaptioned) candidates.
    return _Raw(actual, [(v, None, None) for v in ids], [(row["descriptions"], row["id"].strip()) for row in rows])


READERS: dict[str, Callable[[Path, str], _Raw]] = {
    "msrvtt": _read_msrvtt,
    "didemo": _read_didemo,
    "msvd": _read_msvd,
    "lsmdc": _read_lsmdc,
    "vatex": _read_vatex,
    "charades": _read_charades,
    "procedural": _read_procedural,
}
