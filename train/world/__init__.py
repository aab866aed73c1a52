"""The procedural video world: the training and test universe of probret.

Why it exists: no real dataset (MSRVTT, DiDeMo, ...) and no pretrained CLIP weights can be
downloaded where probret is developed and tested, so every model is a tiny CLIP trained from
scratch on a CPU in minutes. That needs a data set that is (a) generated in seconds, (b) learnable
at 64-112 px from ~12 sampled frames, (c) exactly reproducible from a seed, and (d) hard in the
*same ways* real text-video retrieval is hard, so that the probabilistic methods (SPEM, T-MASS,
DUQ, DVTR, ProTA) have something to fix:

* **visually dominant, recurring backgrounds** (stripes, checkers, gradients, noise, dots) cover
  most pixels of every video and recur across ~1/5 of the data set each -- the "semantic
  over-clustering" SPEM's abstract names: a mean-pooled video embedding is pulled toward its
  background, not toward what the caption talks about;
* **only part of a video matches its caption**: two events in sequence ("a red circle moves left,
  then a blue square grows") with captions that describe only one of them, and static distractor
  objects no caption mentions -- what query-guided fusion (X-Pool, T-MASS, SPEM) addresses;
* **short / ambiguous queries** ("a circle moving") that truly match many videos, and
  **near-duplicate videos** (same objects and events, new positions / background / distractors)
  that are soft positives -- what DVTR's soft-positive calibration and the uncertainty of DUQ /
  SPEM address.

Every caption's meaning is kept as a small structured record (``semantics``), so the generator
knows, for every caption, exactly which videos of its split it truly describes (``world.json``);
metrics can therefore report semantic recall next to the usual one-positive recall.

Output (``generate_world``), mirroring MSRVTT so the same loader reads both::

    OUT/videos/video<i>.mp4        H.264 (libx264, yuv420p), fixed settings, single thread
    OUT/<name>_data.json           MSRVTT_data.json format: {"info", "videos", "sentences"}
    OUT/train.csv                  column video_id (as MSRVTT_train.9k.csv)
    OUT/val.csv, OUT/test.csv      key,vid_key,video_id,sentence (as MSRVTT_JSFUSION_test.csv);
                                   one evaluation caption per video
    OUT/world.json                 settings, every video's attributes, every caption's semantics
                                   and the list of video_ids it truly describes in its split

This package imports numpy and PyAV only (never torch): generating a world must not need the
training extra, and ``probret synth`` stays fast to start. Its modules, one job each:

    vocabulary   shapes, colours, sizes, motions, backgrounds and their geometry
    difficulty   the ``Difficulty`` knobs and the easy / medium / hard presets
    specs        the records: ObjectSpec, EventSpec, VideoSpec, Caption
    scenes       sampling each video's scene (background, actors, events, distractors)
    motion       per-frame object state along its events
    grammar      caption semantics to English
    captions     what each caption says; choosing evaluation captions
    matching     which videos a caption truly describes (reference and vectorised)
    rendering    pixels; encoding: deterministic yuv420p + x264 mp4
    annotations  the files (MSRVTT formats, world.json) and reading them back
    generate     ``generate_world`` and ``build_specs``, which tie the rest together
    benchmark    the quality-benchmark (protocol v2) knobs: dominant backgrounds, query-kind mix
    long         long videos (1-5 min) with several events at known times, and their moment queries
"""

from __future__ import annotations

from .annotations import (MSRVTT_SPLIT_NAMES, OUTPUT_FILES, SPLITS, WORLD_FORMAT, WORLD_VERSION, eval_match_sets,
                          load_world, write_annotations)
from .benchmark import EVAL_KINDS, BenchmarkKnobs
from .difficulty import DIFFICULTIES, Difficulty, parse_difficulty
from .encoding import GOP_SIZE, X264_OPTIONS, encode_mp4
from .generate import WorldSummary, build_specs, generate_world, split_counts
from .long import LONG_MOTIONS, LongVideos, build_long_specs, generate_long_world, moment_queries
from .matching import caption_matches, specificity
from .rendering import render_video
from .specs import Caption, EventSpec, ObjectSpec, VideoSpec
from .vocabulary import (BACKGROUNDS, BG_PALETTES, COLOR_NAMES, COLORS, GENERIC_MOTIONS, MOTIONS, RESIZES, SHAPES,
                         SIZES, TRANSLATIONS)

__all__ = [
    "BACKGROUNDS", "BG_PALETTES", "COLOR_NAMES", "COLORS", "Caption", "DIFFICULTIES", "Difficulty", "EventSpec",
    "GENERIC_MOTIONS", "GOP_SIZE", "MOTIONS", "MSRVTT_SPLIT_NAMES", "OUTPUT_FILES", "ObjectSpec", "RESIZES",
    "SHAPES", "SIZES", "SPLITS", "TRANSLATIONS", "VideoSpec", "WORLD_FORMAT", "WORLD_VERSION", "WorldSummary",
    "X264_OPTIONS", "build_specs", "caption_matches", "encode_mp4", "eval_match_sets", "generate_world",
    "load_world", "parse_difficulty", "LONG_MOTIONS", "LongVideos", "build_long_specs", "generate_long_world",
    "moment_queries", "BenchmarkKnobs", "EVAL_KINDS", "render_video", "split_counts", "specificity", "write_annotations",
]
