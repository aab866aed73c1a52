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

Failures belong to whoever caused them. A file that does not decode fails alone. A model that
cannot encode (the ONNX session raises, an output has the wrong shape, or holds NaN or inf:
:func:`encode_segments` checks every batch) is not the videos' fault: the update stops with a
:class:`~probret.engine.errors.ModelError` naming the model, the videos already committed stay,
and no video is recorded as failed, so the next run with a working model indexes the rest.

The pieces, and who shares them: :class:`DecodeSpec` (how this update decodes a file) and
:func:`encode_segments` serve both drivers and ``probret search --video``;
:class:`PartialVideo` and :class:`SegmentAssembler` (segments encoded in pieces and in any order
become committed videos) serve this module's driver and engine/distributed.py's Ray driver;
``_Indexer`` is this module's scheduler (work items :class:`_FirstTask`, :class:`_MoreTask`,
:class:`_Ready`).

The report (:class:`IndexReport`) times every stage (``stages``: decode, preprocess, encode,
head, write, and wait, the calling thread's time waiting for decoded segments) and says how the
files were decoded (``decode``: files decoded in one forward pass or with seeks, seeks, frames
decoded for frames sampled). bench/indexing.py measures the pipeline against the encoder alone
(docs/benchmarks_indexing.md).

Segments: a video of duration d is cut into n = max(1, round(d / window)) equal windows (no
short tail), each sampled with T' uniform frames (segment midpoints) like a whole clip at
training time. ``window=0`` keeps one segment per video. With the default 30 s, clips up to 45 s
are one segment, a 10-minute video twenty of 30 s. The count is bounded by what the file holds,
not by what its header claims: d is where the frames really end when the header claims far
more (engine/video.py, ``MIN_BYTES_PER_SECOND``), and n is at most the file's frame count / T'
(a segment with fewer distinct frames than it samples adds nothing): a 3 KB file that claims 30
hours costs one or two segments, not 3,600.

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

from probret.engine.errors import ModelError, ProbretError, VideoDecodeError
from probret.engine.index import EncodedVideo, FileEntry, IndexWriter, ScanResult
from probret.engine.preprocess import preprocess_frames
from probret.engine.video import DecodeStats, VideoInfo, open_video

__all__ = ["PipelineOptions", "IndexReport", "DecodeSpec", "DecodedChunk", "PartialVideo", "SegmentAssembler",
           "plan_segments", "decode_windows", "encode_segments", "ann_embedding", "begin_update", "update_index",
           "RESIZE_MODES", "STAGES", "default_workers"]

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


def plan_segments(duration: float, window: float, *, max_segments: int | None = None) -> list[tuple[float, float]]:
    """Equal windows of about ``window`` seconds covering [0, duration], at most ``max_segments``
    of them (module docstring)."""
    duration = max(0.0, float(duration))
    if window <= 0 or duration <= 0:
        return [(0.0, duration)]
    n = max(1, int(round(duration / float(window))))
    if max_segments is not None:
        n = max(1, min(n, int(max_segments)))
    edges = np.linspace(0.0, duration, n + 1)
    return [(float(edges[i]), float(edges[i + 1])) for i in range(n)]


def _use_decoder_resize(info: VideoInfo, size: int, resize: str) -> bool:
    if resize == "decoder":
        return True
    if resize == "exact":
        return False
    return min(info.width, info.height) > 2 * size


@dataclass
class DecodedChunk:
    """Segments of one file, decoded and preprocessed: the file's probe (``info``), its whole
    plan (``segments``), the pixels (n, T, 3, S, S) and timestamps (n, T) of the decoded ones
    (all, or the first ``limit``), what decoding cost, and the seconds of both stages."""

    info: VideoInfo
    segments: list[tuple[float, float]]
    pixels: np.ndarray
    timestamps: np.ndarray
    stats: DecodeStats
    decode_s: float
    preprocess_s: float


@dataclass(frozen=True)
class DecodeSpec:
    """How every file of one update is decoded: the model's frames and preprocessing, the index's
    window and resize mode, and FFmpeg's threading (``"NONE"`` where the caller decodes one file
    per core: the pipeline's pool, Ray tasks; with a pool of one worker per core, per-decoder
    threads oversubscribe the CPU cores^2 times, measured 40 % slower on 16 cores,
    docs/benchmarks_gpu.md "Indexing")."""

    num_frames: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    window: float
    resize: str = "auto"
    thread_type: str = "AUTO"

    @classmethod
    def for_index(cls, bundle, settings, *, thread_type: str = "NONE") -> "DecodeSpec":
        """The spec of an index of ``bundle``'s features with ``settings`` (window, resize).
        Preprocessing a model cannot have is a :class:`ModelError` here, before any file is
        decoded, never a decode failure of every video."""
        pre = bundle.preprocessing
        size = pre["image_size"] if isinstance(pre["image_size"], int) else pre["image_size"][0]
        mean, std = tuple(float(x) for x in pre["mean"]), tuple(float(x) for x in pre["std"])
        name = _model_name(bundle)
        if int(size) < 1 or int(bundle.num_frames) < 1:
            raise ModelError(f"model {name}: image_size {size} and frames {bundle.num_frames} must be >= 1")
        if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) or min(std) <= 0:
            raise ModelError(f"model {name}: preprocessing needs 3 finite means and 3 positive stds, got mean={mean}, "
                             f"std={std}")
        return cls(int(bundle.num_frames), int(size), mean, std, float(settings.window), settings.resize, thread_type)

    def plan(self, info: VideoInfo) -> list[tuple[float, float]]:
        """The file's segments: its window plan, at most one segment per ``num_frames`` frames."""
        return plan_segments(info.duration, self.window, max_segments=max(1, info.num_frames // self.num_frames))

    def decode(self, path: str | Path, segments: list[tuple[float, float]] | None = None, *,
               limit: int | None = None) -> DecodedChunk:
        """``segments`` of one file (None: plan them from the probe of the same open), or the
        first ``limit`` of them."""
        return _decode_chunk(path, self.plan if segments is None else segments, num_frames=self.num_frames,
                             image_size=self.image_size, mean=self.mean, std=self.std, resize=self.resize,
                             limit=limit, thread_type=self.thread_type)


def decode_windows(path: str | Path, window: float, *, num_frames: int, image_size: int, mean, std,
                   resize: str = "auto", thread_type: str = "AUTO") -> DecodedChunk:
    """Every ``window``-second segment of one video (:meth:`DecodeSpec.plan`), planned from the
    probe of the same single open that decodes them; ``window=0``: the whole video as one."""
    spec = DecodeSpec(int(num_frames), int(image_size), tuple(mean), tuple(std), float(window), resize, thread_type)
    return spec.decode(path)


def _windows(info: VideoInfo, segments: list[tuple[float, float]]) -> list[tuple[float | None, float | None]]:
    # the video's last window runs to the end of the stream (None), so a header duration
    # that is a little off never makes an empty window
    return [(start if start > 0 else None, None if end >= info.duration or end <= start else end)
            for start, end in segments]


def _decode_chunk(path: str | Path, segments, *, num_frames: int, image_size: int, mean, std, resize: str,
                  limit: int | None = None, thread_type: str = "AUTO") -> DecodedChunk:
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
    return DecodedChunk(info, segs, pixels, timestamps, stats, t1 - t0, time.perf_counter() - t1)


# --------------------------------------------------------------------------------------------
# encoding, with the model's outputs checked
# --------------------------------------------------------------------------------------------
def _model_name(bundle_or_runtime) -> str:
    b = getattr(bundle_or_runtime, "bundle", bundle_or_runtime)
    return str(getattr(b, "path", None) or getattr(b, "method", None) or "(unnamed)")


def _model_call(runtime, what: str, fn, arg) -> dict[str, np.ndarray] | np.ndarray:
    try:
        return fn(arg)
    except ModelError as exc:
        raise ModelError(f"model {_model_name(runtime)}: {what}: {exc}") from None
    except ProbretError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime / TensorRT raise: the model's problem
        why = " ".join(str(exc).split())  # ONNX Runtime's messages span lines; an error is one
        raise ModelError(f"model {_model_name(runtime)}: the {what} failed on {len(arg)} segment(s) "
                         f"({type(exc).__name__}: {why}); no video was marked failed: check or re-export the model"
                         ) from None


def _check_output(runtime, what: str, name: str, a: np.ndarray, shape: tuple) -> None:
    """``a`` has ``shape`` (None = any size) and only finite values, or the model is broken."""
    a = np.asarray(a)
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        want = "(" + ", ".join("D" if d is None else str(d) for d in shape) + ")"
        raise ModelError(f"model {_model_name(runtime)}: the {what} returned {name} of shape {tuple(a.shape)}, "
                         f"expected {want}; the model does not match its manifest: re-export it")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a.reshape(len(a), -1))).any(axis=1).sum())
        raise ModelError(f"model {_model_name(runtime)}: the {what} returned NaN or inf in {name} for {bad} of "
                         f"{len(a)} segment(s); no video was marked failed: check or re-export the model")


def encode_segments(runtime, pixels: np.ndarray, *,
                    timed: Callable[[str, float], None] | None = None) -> dict[str, np.ndarray]:
    """Pixels (n, T, 3, S, S) -> every tensor the index stores per segment, each (n, ...);
    ``timed(stage, seconds)`` is told the seconds of the "encode" and "head" stages.

    Every output is checked (shape, finite): a model that raises or returns garbage is a
    :class:`ModelError` naming the model, never a failure of the videos (module docstring)."""
    n, t = pixels.shape[:2]
    t0 = time.perf_counter()
    frames = _model_call(runtime, "frame encoder", runtime.encode_videos, pixels)
    _check_output(runtime, "frame encoder", "frame_features", frames, (n, t, None))
    t1 = time.perf_counter()
    video = _model_call(runtime, "video-side graph", runtime.video_side, frames)
    for name, a in video.items():
        _check_output(runtime, "video-side graph", name, a, (n, *np.shape(a)[1:]))
    out = {"frame_features": frames, **video, "ann": ann_embedding(frames)}
    if timed is not None:
        timed("encode", t1 - t0)
        timed("head", time.perf_counter() - t1)
    return out


def ann_embedding(frames: np.ndarray) -> np.ndarray:
    """The query-independent embedding of the ANN first stage: the unit-norm mean of the unit-norm
    frame features (CLIP4Clip's meanP video embedding, the mean of the video Gaussians with the
    query-conditioned pooling replaced by mean pooling)."""
    f = np.asarray(frames, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    m = f.mean(axis=1)
    return (m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# videos assembled from segments encoded in pieces (both drivers)
# --------------------------------------------------------------------------------------------
@dataclass
class PartialVideo:
    """A video whose segments arrive encoded in pieces and in any order (a pipeline chunk, a Ray
    row): the file, what it is, its plan; rows are filled by :meth:`put`."""

    entry: FileEntry
    duration: float
    fps: float
    width: int
    height: int
    segments: list[tuple[float, float]]
    timestamps: np.ndarray  # float64 (n, T)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n, ...), allocated on first put
    missing: int = -1  # segments not yet put (set from the plan)
    failed: bool = False
    seeks: int = 0  # what decoding it cost (the pipeline's report)
    frames_decoded: int = 0

    def __post_init__(self):
        if self.missing < 0:
            self.missing = len(self.segments)

    @classmethod
    def of(cls, entry: FileEntry, info: VideoInfo, segments: list[tuple[float, float]],
           num_frames: int) -> "PartialVideo":
        return cls(entry, float(info.duration), float(info.fps), int(info.width), int(info.height), list(segments),
                   np.zeros((len(segments), num_frames), np.float64))

    def put(self, lo: int, tensors: dict[str, np.ndarray], timestamps: np.ndarray) -> bool:
        """Rows ``lo .. lo + len(timestamps)`` of every tensor; True when the video is complete."""
        k = len(timestamps)
        for name, a in tensors.items():
            buf = self.tensors.get(name)
            if buf is None:
                buf = self.tensors[name] = np.empty((len(self.segments), *a.shape[1:]), dtype=np.float32)
            buf[lo:lo + k] = a
        self.timestamps[lo:lo + k] = timestamps
        self.missing -= k
        return self.missing == 0

    def encoded(self) -> EncodedVideo:
        e = self.entry
        return EncodedVideo(path=e.path, size=e.size, mtime_ns=e.mtime_ns, duration=self.duration, fps=self.fps,
                            width=self.width, height=self.height, segments=self.segments, timestamps=self.timestamps,
                            tensors=self.tensors)


class SegmentAssembler:
    """Encoded segments -> finished videos -> commits to the one writer, and failures recorded:
    the part of an update both drivers share. ``timed(stage, seconds)`` gets the write time;
    ``progress(videos)`` is told of every video finished or failed."""

    def __init__(self, writer: IndexWriter, report: IndexReport, changed: set[str], *,
                 timed: Callable[[str, float], None], progress: Callable[[int], None] = lambda n: None):
        self.writer, self.report, self.changed = writer, report, changed
        self.timed, self.progress = timed, progress
        self.done: list[EncodedVideo] = []

    def put(self, video: PartialVideo, lo: int, tensors: dict[str, np.ndarray], timestamps: np.ndarray) -> bool:
        """Store encoded rows of ``video``; True when that completed it (it commits with the next
        :meth:`commit`)."""
        self.report.encoded_segments += len(timestamps)
        if not video.put(lo, tensors, timestamps):
            return False
        self.done.append(video.encoded())
        return True

    def fail(self, entry: FileEntry, reason: str) -> None:
        self.writer.add_failed(entry, reason)
        self.report.failed.append((entry.path, reason))
        self.progress(1)

    def commit(self) -> None:
        """Commit the finished videos (one transaction: engine/index.py's crash safety)."""
        if not self.done:
            return
        t = time.perf_counter()
        self.writer.add(self.done)
        self.timed("write", time.perf_counter() - t)
        self.report.count_written(self.done, self.changed)
        self.progress(len(self.done))
        self.done = []


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
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

    def count_decode(self, video: PartialVideo, num_frames: int) -> None:
        """A finished video's decoding, in the report's ``decode`` counts."""
        d = self.decode
        d["files_seek" if video.seeks else "files_linear"] += 1
        d["seeks"] += video.seeks
        d["frames_decoded"] += video.frames_decoded
        d["frames_sampled"] += len(video.segments) * num_frames


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
    t0 = time.perf_counter()
    folder = Path(folder)
    spec = DecodeSpec.for_index(runtime.bundle, writer.settings, thread_type=o.decoder_threads)
    scan, report = begin_update(folder, writer, o, scan)
    todo = list(scan.todo)
    stages = _Stages()
    if todo:
        from tqdm.auto import tqdm

        # progress=True shows the bar when stderr is a terminal (tqdm's disable=None), never in logs
        with tqdm(total=len(todo), desc="index", unit="video", file=sys.stderr, disable=None if o.progress else True,
                  dynamic_ncols=True, smoothing=0.1) as bar:
            def progress(videos: int) -> None:
                bar.update(videos)
                if report.failed:
                    bar.set_postfix(failed=len(report.failed), refresh=False)

            assembler = SegmentAssembler(writer, report, {e.path for e in scan.changed}, timed=stages.add,
                                         progress=progress)
            _Indexer(folder, runtime, spec, o, assembler, stages).run(todo)
    report.compacted = writer.compact()
    report.stages = dict(stages.t)
    report.decode = dict(stages.decode)
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class _FirstTask:
    """Decode a file's first ``chunk_segments`` segments, planning them all from its probe."""

    entry: FileEntry


@dataclass
class _MoreTask:
    """Decode segments ``lo .. hi`` of a long video whose first task is done."""

    video: PartialVideo
    lo: int
    hi: int


@dataclass
class _Ready:
    """Decoded segments ``lo .. lo + n`` of a video, waiting for the encoder."""

    video: PartialVideo
    lo: int
    pixels: np.ndarray
    timestamps: np.ndarray

    @property
    def n(self) -> int:
        return len(self.timestamps)


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, VideoDecodeError):
        return exc.reason
    log.debug("unexpected error while decoding", exc_info=exc)
    return f"{type(exc).__name__}: {exc}"


class _Indexer:
    """The scheduler of one :func:`update_index` (module docstring, steps 2-4): decode tasks in a
    thread pool kept about ``prefetch_segments`` ahead of the encoder on the calling thread."""

    def __init__(self, folder: Path, runtime, spec: DecodeSpec, o: PipelineOptions, assembler: SegmentAssembler,
                 stages: _Stages):
        self.folder, self.runtime, self.spec, self.assembler, self.stages = folder, runtime, spec, assembler, stages
        self.workers = o.workers or default_workers()
        self.nice = int(o.decode_nice)
        self.chunk = max(1, int(o.chunk_segments))
        self.batch = max(1, int(o.batch_segments))
        self.prefetch = max(1, int(o.prefetch_segments)) if o.prefetch_segments else 2 * self.batch
        # work items, taken from the end; a long video's continuation tasks go to the end so they
        # run next, keeping few videos half-done at once
        self.queue: list[_FirstTask | _MoreTask] = []
        self.pending: dict[Future, _FirstTask | _MoreTask] = {}
        self.ready: list[_Ready] = []
        # segments a file's first task yields, learned as files complete (capped at chunk): the
        # prefetch counts segments, and a first task's count is unknown until it has probed
        self.first_tasks = self.first_segments = 0

    def run(self, todo: list[FileEntry]) -> None:
        self.queue = [_FirstTask(e) for e in reversed(todo)]
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="probret-decode",
                                  initializer=_lower_priority, initargs=(self.nice,))
        try:
            while self.queue or self.pending or self.ready:
                self._submit_ahead(pool)
                if self._encoder_due():
                    self._encode_batch()
                    continue
                self.ready = [c for c in self.ready if not c.video.failed]
                if not self.pending:
                    if self.queue:
                        continue
                    break
                t = time.perf_counter()
                finished, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                self.stages.add("wait", time.perf_counter() - t)
                for fut in finished:
                    self._collect(self.pending.pop(fut), fut)
            self.assembler.commit()
        except BaseException:
            for fut in self.pending:
                fut.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- decoding ----------------------------------------------------------------------------
    def _decode(self, path: Path, segments, limit: int | None = None) -> DecodedChunk:
        s = self.spec
        d = _decode_chunk(path, segments, num_frames=s.num_frames, image_size=s.image_size, mean=s.mean, std=s.std,
                          resize=s.resize, limit=limit, thread_type=s.thread_type)
        self.stages.add("decode", d.decode_s)
        self.stages.add("preprocess", d.preprocess_s)
        return d

    def _task(self, item: _FirstTask | _MoreTask) -> DecodedChunk:
        if isinstance(item, _FirstTask):
            return self._decode(self.folder / item.entry.path, self.spec.plan, self.chunk)
        return self._decode(self.folder / item.video.entry.path, item.video.segments[item.lo:item.hi])

    def _ahead(self) -> float:
        """Decoded or in-flight segments not yet encoded (first tasks estimated)."""
        first = min(self.chunk, self.first_segments / self.first_tasks) if self.first_tasks else 1.0
        n = sum(c.n for c in self.ready if not c.video.failed)
        return n + sum(first if isinstance(t, _FirstTask) else t.hi - t.lo for t in self.pending.values())

    def _submit_ahead(self, pool: ThreadPoolExecutor) -> None:
        # keep about `prefetch` segments decoded or decoding ahead of the encoder, so the next
        # batch is ready when the encoder finishes this one (tasks queue in the pool and run
        # while the encoder runs)
        while self.queue and self._ahead() < self.prefetch:
            item = self.queue.pop()
            if isinstance(item, _FirstTask) or not item.video.failed:
                self.pending[pool.submit(self._task, item)] = item

    def _collect(self, item: _FirstTask | _MoreTask, fut: Future) -> None:
        """A finished decode task: its segments join ``ready``, a first task queues the rest of
        its video, a failure fails the video (once)."""
        video = item.video if isinstance(item, _MoreTask) else None
        if video is not None and video.failed:
            return
        exc = fut.exception()
        if exc is not None:
            if video is not None:
                video.failed = True
            self.assembler.fail(item.entry if video is None else video.entry, _reason_of(exc))
            return
        d: DecodedChunk = fut.result()
        lo = 0
        if video is None:
            video = PartialVideo.of(item.entry, d.info, d.segments, self.spec.num_frames)
            self.first_tasks += 1
            self.first_segments += len(d.timestamps)
            n, k = len(d.segments), self.chunk
            self.queue.extend(_MoreTask(video, a, min(a + k, n)) for a in reversed(range(k, n, k)))
        else:
            lo = item.lo
        video.seeks += d.stats.seeks
        video.frames_decoded += d.stats.frames_decoded
        self.ready.append(_Ready(video, lo, d.pixels, d.timestamps))

    # -- encoding ----------------------------------------------------------------------------
    def _encoder_due(self) -> bool:
        """A full batch is ready, or some is and waiting would leave the encoder idle (the first
        batch, decoding that falls behind); only a full batch while finished decodes are about to
        be collected."""
        ready = sum(c.n for c in self.ready if not c.video.failed)
        return ready >= self.batch or (ready > 0 and not any(f.done() for f in self.pending))

    def _encode_batch(self) -> None:
        take, n = [], 0
        while self.ready and (n < self.batch or not take):
            c = self.ready.pop(0)
            if not c.video.failed:
                take.append(c)
                n += c.n
        if not take:
            return
        pixels = take[0].pixels if len(take) == 1 else np.concatenate([c.pixels for c in take], axis=0)
        tensors = encode_segments(self.runtime, pixels, timed=self.stages.add)
        off = 0
        for c in take:
            rows = {name: a[off:off + c.n] for name, a in tensors.items()}
            off += c.n
            if self.assembler.put(c.video, c.lo, rows, c.timestamps):
                self.stages.count_decode(c.video, self.spec.num_frames)
        self.assembler.commit()
