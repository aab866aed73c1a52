"""``generate_world``: validate settings, build scenes and captions, render, write the files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from probret.engine.errors import DataError

from .annotations import OUTPUT_FILES, SPLITS, write_annotations
from .benchmark import BenchmarkKnobs, confine_actors, deal_eval_kinds
from .captions import draw_captions, eval_caption, match_and_choose, number_sentences
from .difficulty import Difficulty, parse_difficulty
from .encoding import GOP_SIZE, X264_OPTIONS, encode_mp4
from .grammar import Grammar
from .rendering import render_video
from .scenes import sample_scenes
from .specs import Caption, VideoSpec


@dataclass(frozen=True)
class WorldSummary:
    """What ``generate_world`` wrote. captions: number of sentences per split (all captions of
    the split's videos); eval_unique: per val/test split, the fraction of evaluation captions
    that match exactly one video of their split."""

    out_dir: Path
    videos: dict[str, int]
    captions: dict[str, int]
    eval_unique: dict[str, float]
    disk_bytes: int
    seconds: float
    seed: int
    difficulty: str

    @property
    def total_videos(self) -> int:
        return sum(self.videos.values())


def split_counts(videos: int, fractions: Sequence[float]) -> dict[str, int]:
    """Contiguous id ranges as MSRVTT (train first, then val, then test). Every split with a
    positive fraction gets at least one video when there are enough videos."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DataError(f"splits must be three non-negative fractions (train, val, test), got {tuple(fractions)}")
    total = float(sum(fractions))
    fr = [f / total for f in fractions]
    n_val = int(round(videos * fr[1]))
    n_test = int(round(videos * fr[2]))
    if videos >= 3:
        n_val = max(n_val, 1 if fr[1] > 0 else 0)
        n_test = max(n_test, 1 if fr[2] > 0 else 0)
    n_train = videos - n_val - n_test
    if fr[0] > 0 and n_train < 1 and videos >= 3:
        n_train, n_test = 1, n_test - 1
    if n_train < 0:
        raise DataError(f"{videos} videos are too few for splits {tuple(fractions)}")
    return {"train": n_train, "val": n_val, "test": n_test}


def _render_job(args) -> int:
    spec, out_path, width, height, frames, fps, difficulty, seed = args
    frames, fps = spec.frames or frames, spec.fps or fps  # a long video has its own length
    pixels = render_video(spec, width=width, height=height, frames=frames, difficulty=difficulty, seed=seed)
    encode_mp4(out_path, pixels, fps)
    return os.path.getsize(out_path)


def check_out_dir(out: Path, overwrite: bool, name: str) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(f"{out} is not empty; pass --overwrite (overwrite=True) to replace a world there")
    # Remove only what a world consists of; anything else the user keeps there stays.
    videos_dir = out / "videos"
    if videos_dir.is_dir():
        for p in videos_dir.iterdir():
            if p.is_file() and (p.suffix == ".mp4" or p.name.endswith(".mp4.part")):
                p.unlink()
            elif p.is_dir():
                raise DataError(f"{videos_dir} holds a folder ({p.name}); it does not look like a world, refusing to overwrite")
    for fname in OUTPUT_FILES + (f"{name}_data.json",):
        for path in (out / fname, out / (fname + ".part")):
            if path.is_file():
                path.unlink()


def generate_world(
    out_dir: str | Path,
    *,
    videos: int,
    seed: int,
    resolution: tuple[int, int] = (112, 112),
    frames: int = 32,
    fps: int = 8,
    difficulty: str | float | Difficulty = "medium",
    splits: Sequence[float] = (0.7, 0.1, 0.2),
    captions_per_video: tuple[int, int] = (3, 5),
    name: str = "procedural",
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    benchmark: BenchmarkKnobs | None = None,
) -> WorldSummary:
    """Generate a procedural world in ``out_dir`` (see the module docstring for the layout).

    videos: number of videos (ids video0..video{N-1}; train, val, test are contiguous id ranges).
    seed: everything (scenes, captions, pixels) is a function of (seed, settings): the same call
        writes byte-identical files.
    resolution: (width, height), even numbers (yuv420p) >= 32. frames / fps: length of each clip.
    difficulty: 'easy' | 'medium' | 'hard' | float in [0, 1] | Difficulty (see ``Difficulty``).
    captions_per_video: inclusive range of captions drawn per video (the first is always full).
    workers: processes rendering videos in parallel (output identical for any number).
    progress: called as progress(done, total) after every video.
    benchmark: the quality-benchmark knobs of protocol v2 (``BenchmarkKnobs``; docs/world.md):
        dominant backgrounds rarely named in training captions, val/test queries that never
        name the background, a fixed mix of full / partial / short evaluation queries.
    overwrite: a non-empty ``out_dir`` is refused (DataError) unless set; then only the files a
        world consists of (videos/*.mp4, the annotation files) are deleted, nothing else.

    Videos are written first, the annotations last and world.json at the very end, so a folder
    with a world.json holds a complete world. Bad settings raise DataError before anything is
    written.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    d = parse_difficulty(difficulty)
    if benchmark is not None:
        benchmark.check()
        d = benchmark.difficulty(d)
    width, height = check_settings(videos, resolution, frames, fps, captions_per_video)
    counts = split_counts(videos, splits)
    check_out_dir(out, overwrite, name)
    (out / "videos").mkdir(parents=True, exist_ok=True)

    specs = build_specs(videos=videos, seed=seed, width=width, height=height, frames=frames,
                        difficulty=d, counts=counts, captions_per_video=tuple(captions_per_video),
                        benchmark=benchmark)
    jobs = [(v, out / "videos" / f"{v.video_id}.mp4", width, height, frames, fps, d, seed) for v in specs]
    disk = render_all(jobs, workers, progress)
    settings = {
        "seed": seed, "videos": videos, "resolution": [width, height], "frames": frames, "fps": fps,
        "difficulty": d.to_dict(), "splits": counts, "split_fractions": list(map(float, splits)),
        "captions_per_video": list(captions_per_video), "name": name,
        "encoder": {"codec": "libx264", "pix_fmt": "yuv420p", "gop_size": GOP_SIZE, "threads": 1, **X264_OPTIONS},
        **({} if benchmark is None else {"benchmark": benchmark.to_dict()}),
    }
    disk += write_annotations(out, specs, settings, name=name, fps=fps, frames=frames)
    return WorldSummary(
        out_dir=out,
        videos=dict(counts),
        captions={s: sum(len(v.captions) for v in specs if v.split == s) for s in SPLITS},
        eval_unique={
            s: float(np.mean([len(eval_caption(v).matches) == 1 for v in specs if v.split == s]))
            for s in ("val", "test") if counts[s] > 0
        },
        disk_bytes=disk,
        seconds=time.perf_counter() - t0,
        seed=seed,
        difficulty=d.name,
    )


def check_settings(videos: int, resolution, frames: int, fps: int, captions_per_video) -> tuple[int, int]:
    """Raise DataError on a bad setting (before anything is written); returns (width, height)."""
    width, height = (int(resolution[0]), int(resolution[1]))
    if videos < 1:
        raise DataError(f"videos must be at least 1, got {videos}")
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise DataError(f"resolution must be even and at least 32x32 (yuv420p), got {width}x{height}")
    if frames < 4:
        raise DataError(f"frames must be at least 4, got {frames}")
    if fps < 1:
        raise DataError(f"fps must be at least 1, got {fps}")
    lo_c, hi_c = captions_per_video
    if lo_c < 1 or hi_c < lo_c:
        raise DataError(f"captions_per_video must be a range (lo, hi) with 1 <= lo <= hi, got {captions_per_video}")
    return width, height


def render_all(jobs: list[tuple], workers: int, progress: Callable[[int, int], None] | None) -> int:
    """Render and encode every video (in ``workers`` forked processes); returns bytes written."""
    disk = 0
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
        with ctx.Pool(workers) as pool:
            for i, size in enumerate(pool.imap(_render_job, jobs, chunksize=4)):
                disk += size
                if progress:
                    progress(i + 1, len(jobs))
    else:
        for i, job in enumerate(jobs):
            disk += _render_job(job)
            if progress:
                progress(i + 1, len(jobs))
    return disk


def build_specs(*, videos: int, seed: int, width: int, height: int, frames: int, difficulty: Difficulty,
                counts: dict[str, int], captions_per_video: tuple[int, int] = (3, 5),
                benchmark: BenchmarkKnobs | None = None) -> list[VideoSpec]:
    """Scenes and captions of the whole world (no pixels): fast, and what world.json records.
    ``benchmark``: the protocol-v2 knobs (train/world/benchmark.py); ``difficulty`` must
    already carry their background and two-event settings (``benchmark.difficulty(d)``).

    Scenes come from one generator seeded by ``seed`` in id order (near-duplicates copy an
    earlier video of their own split, so they matter for that split's evaluation); caption
    match sets are computed per split; each val/test video then gets its evaluation caption."""
    d = difficulty
    rng = np.random.default_rng([seed, 0])
    specs = sample_scenes(rng, counts, d, frames, width, height)
    if benchmark is not None and benchmark.actor_visibility == "own_event":
        confine_actors(specs, frames)
    grammar = Grammar(rng, d.paraphrase)
    lo_c, hi_c = captions_per_video
    dealt: dict[str, str] = {}
    if benchmark is not None:  # the fixed mix of evaluation query kinds, by quota per split
        for split in ("val", "test"):
            members = [v for v in specs if v.split == split]
            dealt.update(deal_eval_kinds(rng, members, benchmark.eval_mix) if members else {})
    want_kind: dict[str, str] = {}
    for v in specs:
        n = int(rng.integers(lo_c, hi_c + 1))
        want = draw_captions(rng, grammar, v, d, n, benchmark, dealt.get(v.video_id))
        if v.split != "train":
            want_kind[v.video_id] = want
    chosen: dict[str, Caption] = {}
    for split in SPLITS:
        members = [v for v in specs if v.split == split]
        if members:
            chosen.update(match_and_choose(rng, grammar, members, d, want_kind))
    number_sentences(specs, chosen)
    return specs
