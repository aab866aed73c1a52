"""The indexing pipeline: parallel decoding overlapped with batched inference (torch-free).

    report = update_index(folder, runtime, writer, PipelineOptions())

1. ``writer.scan(folder)`` says what is new, changed, removed (engine/index.py); removed files
   drop out first.
2. A thread pool decodes videos (PyAV releases the GIL while decoding, NumPy while resizing):
   each task opens a file once (engine/video.py ``open_video``: the probe and the decoder share
   the open), plans its segments (:func:`plan_segments`), samples up to ``chunk_segments`` of
   them in one forward pass (per target, engine/video.py's ``decode="auto"`` seeks or decodes
   on from the keyframe index, and drops the non-reference frames no target needs), then
   preprocesses them (engine/preprocess.py); a long video continues in further tasks, so memory
   stays bounded whatever its length. FFmpeg's own decoder threads are off
   (``decoder_threads="NONE"``): the pool already decodes one file per core, and frame threads
   only add CPU time that the encoder needs (8-10 % of decoding on 320x240 H.264).
3. Tasks are queued so that about ``prefetch_segments`` (default two batches) are decoded or
   decoding ahead of the encoder: the next batch is ready when the encoder finishes this one.
   The decoding threads run at a lower priority (``decode_nice``, default +10, Linux): ONNX
   Runtime's intra-op pool already keeps every core busy, and a decoder that takes a core from
   one of its threads stalls the others at the next barrier; at lower priority the decoders
   still get the cores whenever the encoder waits. Measured on 2 cores (bench/indexing.py,
   docs/benchmarks_indexing.md): +3 to +5 points of end-to-end / encoder-only in each of four
   runs on a machine shared with other jobs.
   The calling thread runs the frame encoder, the video-side graph and the ANN embedding on a
   batch of ``batch_segments`` as soon as one is ready, or on whatever is ready when it would
   otherwise wait (the first batch: the encoder starts after the first file, not after the
   first ``batch_segments`` files). ONNX Runtime releases the GIL too.
4. A video whose segments are all encoded is committed to the index with its tensors
   (``frame_features``, the video-side outputs ``video_*``, and ``ann``, the query-independent
   embedding of the ANN first stage). A file that fails to decode is recorded with its reason and
   skipped; the rest is indexed.

The report (:class:`IndexReport`) times every stage (``stages``: decode, preprocess, encode,
head, write, and wait, the calling thread's time waiting for decoded segments) and says how the
files were decoded (``decode``: files decoded in one forward pass or with seeks, seeks, frames
decoded for frames sampled). bench/indexing.py measures the pipeline against the encoder alone
(docs/benchmarks_indexing.md).

Segments: a video of duration d is cut into n = max(1, round(d / window)) equal windows (no
short tail), each sampled with T' uniform frames (segment midpoints) like a whole clip at
training time. ``window=0`` keeps one segment per video. With the default 30 s, clips up to 45 s
are one segment, a 10-minute video twenty of 30 s.

Resizing (``resize``): ``exact`` decodes full frames and resizes with the Pillow-exact bicubic of
engine/preprocess.py (what training saw); ``decoder`` lets FFmpeg resize while converting
(several times cheaper on large frames, within a few levels of Pillow, docs/decoding.md);
``auto`` (default) uses ``decoder`` when the short side is more than twice the model's image
size and ``exact`` otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from probret.engine.errors import VideoDecodeError
from probret.engine.index import EncodedVideo, FileEntry, IndexWriter, ScanResult
from probret.engine.preprocess import preprocess_frames
from probret.engine.video import DecodeStats, VideoInfo, open_video

__all__ = ["PipelineOptions", "IndexReport", "plan_segments", "decode_segments", "decode_windows", "encode_segments",
           "update_index", "RESIZE_MODES", "STAGES", "default_workers"]

log = logging.getLogger(__name__)

RESIZE_MODES = ("auto", "exact", "decoder")


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


@dataclass
class PipelineOptions:
    """How to run (not what to store: the segment window and resize mode are index settings,
    ``IndexSettings.window`` / ``.resize``, because the stored features depend on them)."""

    workers: int = 0  # decoding threads; 0 = one per core (at most 8)
    batch_segments: int = 16  # segments per encoder call (at most)
    chunk_segments: int = 4  # segments decoded per task
    prefetch_segments: int = 0  # decoded segments kept ahead of the encoder; 0 = 2 x batch_segments
    # niceness added to the decoding threads (Linux only; 0 = the encoder's priority): the encoder's
    # intra-op threads then keep the cores and decoding fills the gaps (module docstring)
    decode_nice: int = 10
    decoder_threads: str = "NONE"  # FFmpeg threading inside each decode (the pool is the parallelism)
    retry_failed: bool = False
    progress: bool = True


@dataclass
class IndexReport:
    folder: str
    index: str
    total_videos: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # failed in this run
    failed_before: list[tuple[str, str]] = field(default_factory=list)  # unchanged files that failed earlier
    ignored: int = 0
    encoded_videos: int = 0
    encoded_segments: int = 0
    seconds: float = 0.0
    # seconds per stage (STAGES): decode and preprocess summed over the decoding threads; encode,
    # head, write and wait on the calling thread (wait: the encoder had no decoded segment)
    stages: dict[str, float] = field(default_factory=dict)
    # how files were decoded (engine/video.py's per-target seek-or-continue choice, decode="auto"):
    # files decoded in one forward pass ("linear") / with at least one seek ("seek"), seeks,
    # frames decoded and frames sampled
    decode: dict[str, int] = field(default_factory=dict)
    compacted: bool = False

    def count_written(self, videos: list[EncodedVideo], changed: set[str]) -> None:
        """Count ``videos`` just committed: updated when their path was in the index before."""
        for v in videos:
            if v.path in changed:
                self.updated += 1
            else:
                self.added += 1
        self.encoded_videos += len(videos)

    @property
    def videos_per_s(self) -> float:
        return self.encoded_videos / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "index": self.index, "videos": self.total_videos, "added": self.added,
                "updated": self.updated, "removed": self.removed, "unchanged": self.unchanged,
                "failed": [{"path": p, "error": e} for p, e in self.failed],
                "failed_before": [{"path": p, "error": e} for p, e in self.failed_before],
                "ignored_files": self.ignored, "encoded_videos": self.encoded_videos,
                "encoded_segments": self.encoded_segments, "seconds": round(self.seconds, 3),
                "videos_per_s": round(self.videos_per_s, 3),
                "stage_seconds": {k: round(v, 3) for k, v in self.stages.items()}, "decode": dict(self.decode),
                "compacted": self.compacted}


def plan_segments(duration: float, window: float) -> list[tuple[float, float]]:
    """Equal windows of about ``window`` seconds covering [0, duration] (module docstring)."""
    duration = max(0.0, float(duration))
    if window <= 0 or duration <= 0:
        return [(0.0, duration)]
    n = max(1, int(round(duration / float(window))))
    edges = np.linspace(0.0, duration, n + 1)
    return [(float(edges[i]), float(edges[i + 1])) for i in range(n)]


def _use_decoder_resize(info: VideoInfo, size: int, resize: str) -> bool:
    if resize == "decoder":
        return True
    if resize == "exact":
        return False
    return min(info.width, info.height) > 2 * size


def decode_segments(path: str | Path, info: VideoInfo, segments: list[tuple[float, float]], *, num_frames: int,
                    image_size: int, mean, std, resize: str = "auto",
                    thread_type: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pixels float32 (n, T, 3, S, S), timestamps float64 (n, T)) of ``segments`` of one video.

    ``info`` is the video's probe (kept for callers that have one; the file is probed again by
    the single open that samples every segment in one pass). ``thread_type``: FFmpeg's decoder
    threading (engine/video.py; None = its default, one thread per core). Callers that already
    decode one file per core (Ray tasks, process pools) pass ``"NONE"``: with a pool of one
    worker per core, per-decoder threads oversubscribe the CPU cores^2 times, measured 40% slower on
    16 cores (docs/benchmarks_gpu.md, "Indexing")."""
    d = _decode_chunk(path, segments, num_frames=num_frames, image_size=image_size, mean=mean, std=std, resize=resize,
                      thread_type=thread_type)
    return d.pixels, d.timestamps


def decode_windows(path: str | Path, window: float, *, num_frames: int, image_size: int, mean, std,
                   resize: str = "auto", thread_type: str | None = None) -> "_DecodedChunk":
    """Every ``window``-second segment of one video (``plan_segments``), planned from the probe of
    the same single open that decodes them: ``.info``, ``.segments``, ``.pixels``, ``.timestamps``.
    ``thread_type`` as in :func:`decode_segments`."""
    return _decode_chunk(path, lambda info: plan_segments(info.duration, window), num_frames=num_frames,
                         image_size=image_size, mean=mean, std=std, resize=resize, thread_type=thread_type)


@dataclass
class _DecodedChunk:
    info: VideoInfo
    segments: list[tuple[float, float]]
    pixels: np.ndarray
    timestamps: np.ndarray
    stats: DecodeStats
    decode_s: float
    preprocess_s: float


def _windows(info: VideoInfo, segments: list[tuple[float, float]]) -> list[tuple[float | None, float | None]]:
    # the video's last window runs to the end of the stream (None), so a header duration
    # that is a little off never makes an empty window
    return [(start if start > 0 else None, None if end >= info.duration or end <= start else end)
            for start, end in segments]


def _decode_chunk(path: str | Path, segments, *, num_frames: int, image_size: int, mean, std, resize: str,
                  limit: int | None = None, thread_type: str | None = None) -> _DecodedChunk:
    """Decode (one open, one pass: engine/video.py ``open_video``) and preprocess ``segments``
    of one file, or the first ``limit`` of them. ``segments`` may be a callable ``info ->
    segments`` (a file's first task plans its segments from the probe); the result carries the
    whole plan. Times the two stages separately."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    t0 = time.perf_counter()
    with open_video(path, thread_type=thread_type) as video:
        info = video.info
        segs = segments(info) if callable(segments) else list(segments)
        size = image_size if _use_decoder_resize(info, image_size, resize) else None
        sampled, stats = video.sample(_windows(info, segs[:limit]), num_frames, size=size)
    t1 = time.perf_counter()
    frames = sampled[0].frames if len(sampled) == 1 else np.concatenate([x.frames for x in sampled])
    pixels = preprocess_frames(frames, size=image_size, mean=mean, std=std)
    pixels = pixels.reshape(len(sampled), num_frames, *pixels.shape[1:])
    timestamps = np.stack([x.timestamps for x in sampled])
    return _DecodedChunk(info, segs, pixels, timestamps, stats, t1 - t0, time.perf_counter() - t1)


def encode_segments(runtime, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels (n, T, 3, S, S) -> every tensor the index stores per segment."""
    frames = runtime.encode_videos(pixels)
    video = runtime.video_side(frames)
    return {"frame_features": frames, **video, "ann": ann_embedding(frames)}


def ann_embedding(frames: np.ndarray) -> np.ndarray:
    """The query-independent embedding of the ANN first stage: the unit-norm mean of the unit-norm
    frame features (CLIP4Clip's meanP video embedding, the mean of the video Gaussians with the
    query-conditioned pooling replaced by mean pooling)."""
    f = np.asarray(frames, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    m = f.mean(axis=1)
    return (m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
@dataclass
class _Partial:
    entry: FileEntry
    info: VideoInfo
    segments: list[tuple[float, float]]
    timestamps: np.ndarray
    tensors: dict[str, np.ndarray] | None = None
    missing: int = 0  # segments not yet encoded
    failed: bool = False
    seeks: int = 0
    frames_decoded: int = 0


@dataclass
class _Chunk:
    partial: _Partial
    lo: int
    hi: int
    pixels: np.ndarray


#: The stages of IndexReport.stages, in pipeline order.
STAGES = ("decode", "preprocess", "encode", "head", "write", "wait")


class _Stages:
    def __init__(self):
        self.lock = threading.Lock()
        self.t: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.decode: dict[str, int] = {"files_linear": 0, "files_seek": 0, "seeks": 0, "frames_decoded": 0,
                                       "frames_sampled": 0}

    def add(self, name: str, dt: float) -> None:
        with self.lock:
            self.t[name] = self.t.get(name, 0.0) + dt


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness by ``nice`` (Linux schedules threads, so this touches the
    calling decoder thread only, and the FFmpeg threads it starts inherit it)."""
    if nice <= 0 or not sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS takes a pid, not a thread
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(nice)))
    except OSError:  # pragma: no cover - not permitted here: run at the normal priority
        pass


def begin_update(folder: Path, writer: IndexWriter, o: PipelineOptions,
                 scan: ScanResult | None) -> tuple[ScanResult, IndexReport]:
    """The start every indexing driver shares (this module's and engine/distributed.py's): check
    the resize mode, scan the folder (unless given), open the report and drop removed files."""
    if writer.settings.resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {writer.settings.resize!r}")
    scan = scan or writer.scan(folder, retry_failed=o.retry_failed)
    report = IndexReport(folder=str(folder), index=str(writer.root), total_videos=scan.total_videos,
                         removed=len(scan.removed), unchanged=scan.unchanged, failed_before=list(scan.failed_before),
                         ignored=scan.ignored)
    writer.remove(scan.removed)
    return scan, report


def update_index(folder: str | Path, runtime, writer: IndexWriter, options: PipelineOptions | None = None, *,
                 say: Callable[[str], None] | None = None, scan: ScanResult | None = None) -> IndexReport:
    """Bring the index up to date with ``folder`` (module docstring). Returns what was done."""
    o = options or PipelineOptions()
    say = say or (lambda msg: log.info(msg))
    t0 = time.perf_counter()
    folder = Path(folder)
    scan, report = begin_update(folder, writer, o, scan)
    todo = list(scan.todo)
    changed = {e.path for e in scan.changed}
    stages = _Stages()
    if todo:
        _run(folder, runtime, writer, o, todo, changed, report, stages)
    report.compacted = writer.compact()
    report.stages = dict(stages.t)
    report.decode = dict(stages.decode)
    report.seconds = time.perf_counter() - t0
    return report


def _run(folder: Path, runtime, writer: IndexWriter, o: PipelineOptions, todo: list[FileEntry], changed: set[str],
         report: IndexReport, stages: _Stages) -> None:
    b = runtime.bundle
    pre = b.preprocessing
    size = pre["image_size"] if isinstance(pre["image_size"], int) else int(pre["image_size"][0])
    mean, std, T = pre["mean"], pre["std"], b.num_frames
    window, resize = float(writer.settings.window), writer.settings.resize
    workers = o.workers or default_workers()
    chunk = max(1, int(o.chunk_segments))
    batch = max(1, int(o.batch_segments))
    prefetch = max(1, int(o.prefetch_segments)) if o.prefetch_segments else 2 * batch
    # segments a file's first task yields, learned as files complete (capped at chunk): the
    # prefetch counts segments, and a first task's count is unknown until it has probed
    first_seen = [0, 0]  # tasks, segments

    def first_estimate() -> float:
        return min(chunk, first_seen[1] / first_seen[0]) if first_seen[0] else 1.0

    def decode(path: Path, segments, limit: int | None = None) -> _DecodedChunk:
        d = _decode_chunk(path, segments, num_frames=T, image_size=size, mean=mean, std=std, resize=resize,
                          limit=limit, thread_type=o.decoder_threads)
        stages.add("decode", d.decode_s)
        stages.add("preprocess", d.preprocess_s)
        return d

    def first_task(entry: FileEntry) -> _DecodedChunk:
        return decode(folder / entry.path, lambda info: plan_segments(info.duration, window), chunk)

    def more_task(p: _Partial, lo: int, hi: int) -> _DecodedChunk:
        return decode(folder / p.entry.path, p.segments[lo:hi])

    from tqdm.auto import tqdm

    # progress=True shows the bar when stderr is a terminal (tqdm's disable=None), never in logs
    bar = tqdm(total=len(todo), desc="index", unit="video", file=sys.stderr, disable=None if o.progress else True,
               dynamic_ncols=True, smoothing=0.1)
    # work items, taken from the end: ("first", entry) or ("more", partial, lo, hi); a long video's
    # continuation chunks go to the end so they run next, keeping few videos half-done at once
    queue: list[tuple] = [("first", e) for e in reversed(todo)]
    pending: dict[Future, tuple] = {}
    ready: list[_Chunk] = []
    done_videos: list[EncodedVideo] = []

    def fail(entry: FileEntry, reason: str) -> None:
        writer.add_failed(entry, reason)
        report.failed.append((entry.path, reason))
        bar.update(1)
        bar.set_postfix(failed=len(report.failed), refresh=False)

    def reason_of(exc: BaseException) -> str:
        if isinstance(exc, VideoDecodeError):
            return exc.reason
        log.debug("unexpected error while decoding", exc_info=exc)
        return f"{type(exc).__name__}: {exc}"

    def flush_encoder() -> None:
        take, n = [], 0
        while ready and (n < batch or not take):
            c = ready.pop(0)
            if c.partial.failed:
                continue
            take.append(c)
            n += c.hi - c.lo
        if not take:
            return
        pixels = take[0].pixels if len(take) == 1 else np.concatenate([c.pixels for c in take], axis=0)
        t = time.perf_counter()
        frames = runtime.encode_videos(pixels)
        t1 = time.perf_counter()
        video = runtime.video_side(frames)
        tensors = {"frame_features": frames, **video, "ann": ann_embedding(frames)}
        stages.add("encode", t1 - t)
        stages.add("head", time.perf_counter() - t1)
        report.encoded_segments += n
        off = 0
        for c in take:
            p = c.partial
            k = c.hi - c.lo
            if p.tensors is None:
                p.tensors = {name: np.empty((len(p.segments), *a.shape[1:]), dtype=np.float32) for name, a in tensors.items()}
            for name, a in tensors.items():
                p.tensors[name][c.lo:c.hi] = a[off:off + k]
            off += k
            p.missing -= k
            if p.missing == 0:
                done_videos.append(EncodedVideo(
                    path=p.entry.path, size=p.entry.size, mtime_ns=p.entry.mtime_ns, duration=p.info.duration,
                    fps=p.info.fps, width=p.info.width, height=p.info.height, segments=p.segments,
                    timestamps=p.timestamps, tensors=p.tensors))
                dec = stages.decode
                dec["files_seek" if p.seeks else "files_linear"] += 1
                dec["seeks"] += p.seeks
                dec["frames_decoded"] += p.frames_decoded
                dec["frames_sampled"] += len(p.segments) * T
        commit()

    def commit() -> None:
        if not done_videos:
            return
        t = time.perf_counter()
        writer.add(done_videos)
        stages.add("write", time.perf_counter() - t)
        report.count_written(done_videos, changed)
        bar.update(len(done_videos))
        done_videos.clear()

    def ahead() -> float:
        """Decoded or in-flight segments not yet encoded (first tasks estimated)."""
        n = sum(c.hi - c.lo for c in ready if not c.partial.failed)
        for item in pending.values():
            n += first_estimate() if item[0] == "first" else item[3] - item[2]
        return n

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probret-decode",
                              initializer=_lower_priority, initargs=(int(o.decode_nice),))
    try:
        while queue or pending or ready:
            # keep about `prefetch` segments decoded or decoding ahead of the encoder, so the
            # next batch is ready when the encoder finishes this one (tasks queue in the pool
            # and run while the encoder runs)
            while queue and ahead() < prefetch:
                item = queue.pop()
                if item[0] == "first":
                    pending[pool.submit(first_task, item[1])] = item
                elif not item[1].failed:
                    pending[pool.submit(more_task, *item[1:])] = item
            ready_segments = sum(c.hi - c.lo for c in ready if not c.partial.failed)
            # a full batch, or whatever is ready when waiting would leave the encoder idle
            # (the first batch, and decoding that falls behind); only a full batch while
            # finished decodes are about to be collected
            if ready_segments >= batch or (ready_segments and not any(f.done() for f in pending)):
                flush_encoder()
                continue
            ready[:] = [c for c in ready if not c.partial.failed]
            if not pending:
                if queue:
                    continue
                break
            t = time.perf_counter()
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            stages.add("wait", time.perf_counter() - t)
            for fut in finished:
                kind, *args = pending.pop(fut)
                exc = fut.exception()
                if kind == "first":
                    entry = args[0]
                    if exc is not None:
                        fail(entry, reason_of(exc))
                        continue
                    d: _DecodedChunk = fut.result()
                    segments = d.segments
                    first_seen[0] += 1
                    first_seen[1] += len(d.timestamps)
                    p = _Partial(entry, d.info, segments, np.zeros((len(segments), T), np.float64), missing=len(segments),
                                 seeks=d.stats.seeks, frames_decoded=d.stats.frames_decoded)
                    p.timestamps[:len(d.timestamps)] = d.timestamps
                    ready.append(_Chunk(p, 0, len(d.timestamps), d.pixels))
                    for lo in reversed(range(chunk, len(segments), chunk)):
                        queue.append(("more", p, lo, min(lo + chunk, len(segments))))
                else:
                    p, lo, hi = args
                    if p.failed:
                        continue
                    if exc is not None:
                        p.failed = True
                        fail(p.entry, reason_of(exc))
                        continue
                    d = fut.result()
                    p.seeks += d.stats.seeks
                    p.frames_decoded += d.stats.frames_decoded
                    p.timestamps[lo:hi] = d.timestamps
                    ready.append(_Chunk(p, lo, hi, d.pixels))
        commit()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
