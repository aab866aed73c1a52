"""Video probing and frame sampling with PyAV, torch-free.

Everything that reads a video in probret goes through this module: the training datasets
(random sampling as augmentation), evaluation and indexing (uniform sampling), and search.
Two public calls:

* :func:`probe_video` -> :class:`VideoInfo`: what the file is (duration, fps, display size,
  rotation, codec, container). It decodes the first frame, so a file that probes is a file that
  decodes.
* :func:`sample_frames` -> :class:`SampledFrames`: ``T`` RGB frames picked by *time*.

Sampling convention (X-Pool / T-MASS): the window ``[start, end)`` is cut into ``T`` equal
segments; ``mode="uniform"`` takes each segment's midpoint, ``mode="random"`` one uniformly
random time inside each segment (training augmentation). For every target time the returned
frame is the one *on screen* at that time: the last frame whose presentation timestamp is
``<= t`` (the first frame if ``t`` precedes it). Working in presentation time rather than
frame index makes variable-frame-rate files, GIFs and edit lists come out right, and it pads
short videos naturally: a 5-frame clip sampled at ``T=12`` returns each frame about 2.4 times,
in order, with duplicated timestamps.

Three decoding policies return bit-identical frames (tested) and differ only in cost:

* ``"linear"``: one forward pass, keeping only the frames that are picked (it may seek once
  to reach the first target). Cost: every frame between the first and the last target is
  decoded. Best for short clips, where keyframes are too close together for a seek to skip
  anything.
* ``"seek"``: before each target, if a keyframe lies between the decoder's position and the
  target, seek to the keyframe at or before the target and decode forward from it;
  otherwise keep decoding. Cost: about ``T`` x (half a keyframe interval) frames whatever
  the length of the video, so a 2-hour film is not decoded end to end.
* ``"auto"`` (default): the same per-target decision, but a seek is made only if it skips
  more than :data:`SEEK_COST_FRAMES` frames (what one seek costs, measured;
  :data:`SEEK_COST_FRAMES_UNTHREADED` without frame threads, as the indexer decodes). Short clips
  therefore decode linearly, long ones seek to every target, and mixed cases do whichever
  is cheaper per target; with an exact keyframe index it never decodes more frames than
  linear. The rule and the
  measurements behind the constants are in docs/decoding.md (``bench/decode.py``).

Within any policy, a packet whose frame no target needs (no target falls while it would be
on screen) is decoded with ``skip_frame=NONREF`` (H.264 / HEVC): if it is a non-reference
frame (most B-frames) the decoder drops it instead of reconstructing it. Nothing refers to a
non-reference frame, so every frame that is returned is bit-identical to full decoding
(tested); on 8 fps H.264 clips with B-frames a linear pass decodes ~30 % fewer frames.
``skip_nonref=False`` decodes every frame (the benches compare with it).

Decoder options are keyword arguments of :func:`open_video` and :func:`sample_frames` (in the
manner of torchcodec's ``VideoDecoder(source, *, num_ffmpeg_threads=..., seek_mode=...)``), never
module state: ``decode`` (the policy above), ``thread_type`` (:data:`THREAD_TYPES`) and
``skip_nonref``.

Several windows of one file (the indexer's segments) are sampled in one open and one pass with
:func:`open_video` (``with open_video(p) as v: v.sample(windows, T)``).

Keyframe positions come from the container index when it lists every frame (MP4/MOV/AVI:
exact); Matroska/WebM cues list one keyframe per cluster and raw streams have none, so
there a seek is also made when the gap exceeds :data:`ASSUMED_KEYFRAME_INTERVAL_S`.
Files that cannot seek (raw elementary streams, GIF) are always decoded linearly.

Errors: any failure, whether a missing file, empty file, text file, random bytes, audio-only
file, or a file in which no frame decodes, raises
:class:`probret.engine.errors.VideoDecodeError` with a short reason, never a raw PyAV
exception. A *truncated* or partly corrupt file whose first frames still decode succeeds
with what could be decoded (later targets repeat the last good frame) and logs a warning:
a dataset with one damaged tail should still train, and a search should still index it.

This module imports numpy and av only (never torch): it is part of the deployed engine.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from probret.engine.errors import VideoDecodeError

__all__ = [
    "VideoInfo",
    "SampledFrames",
    "DecodeStats",
    "VideoFile",
    "open_video",
    "probe_video",
    "sample_frames",
    "sampling_times",
    "resized_size",
    "THREAD_TYPES",
    "SEEK_COST_FRAMES",
    "SEEK_COST_FRAMES_UNTHREADED",
    "ASSUMED_KEYFRAME_INTERVAL_S",
    "MIN_BYTES_PER_SECOND",
]

log = logging.getLogger(__name__)

#: Fixed overhead of one seek, in "decoded frames" (demuxer seek + decoder flush + refilling
#: the frame-threading pipeline). Measured with bench/decode.py on 320x240 H.264; used only by
#: ``decode="auto"``: a seek is made only if it skips more frames than this.
SEEK_COST_FRAMES = 12

#: The same without frame threads (``thread_type`` "NONE" or "SLICE", as the indexer decodes):
#: no frame-thread pipeline to drain and refill, so a seek costs about 4 frames. Measured with
#: bench/indexing.py's long clips (320x240 8 fps H.264, GOP 2 s, targets 2.5 s apart): auto
#: with 4-6 took 595-610 ms per 120 s file, with 12 (too few seeks) 695-707, linear 1080;
#: with 2 or 0 the 10 s clips start seeking for no gain.
SEEK_COST_FRAMES_UNTHREADED = 4

#: Keyframe interval assumed when the container has no usable keyframe index (Matroska/WebM
#: cues list only one keyframe per cluster; raw streams have none). Typical encoders use
#: 1-10 s (phones ~1 s, streaming ~2-4 s, x264's default keyint=250 frames ~8-10 s).
ASSUMED_KEYFRAME_INTERVAL_S = 4.0

#: A header that claims more seconds than the file could hold at this many bytes a second is
#: checked against the packets (``_Reader._content_end``). Real streams hold far more: a static
#: 1 fps H.264 slideshow at 320x240 is ~500 B/s, typical video 10-1000 KB/s; so the check (a
#: demux of the file, no decoding) costs nothing on honest files, and a false alarm only costs
#: that scan.
MIN_BYTES_PER_SECOND = 256

#: FFmpeg decoder threading, the ``thread_type`` keyword of :func:`open_video` and
#: :func:`sample_frames` (PyAV's ``stream.thread_type``): ``"AUTO"`` (default: slice + frame
#: threads, one per core, best for a lone caller), ``"SLICE"``, ``"FRAME"``, or ``"NONE"`` (one
#: thread: for callers that already decode one file per core, as the indexer does).
THREAD_TYPES = ("AUTO", "SLICE", "FRAME", "NONE")

# Formats whose seeking is unsupported or does not land on a decodable keyframe. GIF frames
# are deltas over the previous canvas: a seek would return partial images, so GIF is always
# decoded linearly (GIFs are short anyway).
_NO_SEEK_FORMATS = frozenset({"gif", "apng", "webp_pipe", "image2", "image2pipe"})

# Codecs whose decoder honours skip_frame=NONREF per packet: a packet whose frame no target
# needs is decoded with NONREF, so a non-reference frame (most B-frames) is dropped without
# being reconstructed. Nothing refers to a non-reference frame, so every other frame decodes
# bit-identically (tested against full decoding); on the indexing benchmark's 8 fps H.264
# clips with B-frames this skips ~40 % of the frames a linear pass decodes (bench/indexing.py).
_SKIP_CODECS = frozenset({"h264", "hevc"})
_SKIP_LOOKAHEAD = 16  # packets read ahead to learn the next presentation time (>= reorder depth)

# Tolerance when comparing a frame's timestamp with a target time: timestamps are rationals
# turned into floats; a frame whose pts equals the target must count as "on screen".
_EPS = 1e-6

# Give up a pass after this many *consecutive* packets that fail to decode (a file of garbage
# after a valid header would otherwise be walked packet by packet to its end).
_MAX_CONSECUTIVE_BAD_PACKETS = 64

DecodeMode = Literal["auto", "seek", "linear"]
SampleMode = Literal["uniform", "random"]


@dataclass(frozen=True)
class VideoInfo:
    """What a video file is, as far as sampling cares.

    Attributes:
        path: the file, as given.
        duration: seconds, measured from the first frame's presentation time (time 0 of every
            timestamp this module returns). From the stream, else the container, else a
            packet scan (raw streams).
        fps: average frame rate (informational: sampling uses timestamps, never frame
            indices, so variable frame rate is handled exactly).
        width, height: *display* size, i.e. after applying ``rotation``: the shape of the
            frames :func:`sample_frames` returns (unless ``size`` is given).
        num_frames: exact when the container records it (MP4, AVI, GIF) or after a packet
            scan; otherwise ``round(duration * fps)``.
        rotation: degrees *counter-clockwise* the coded picture is turned for display, in
            {0, 90, 180, 270}: the display-matrix convention of FFmpeg, ffprobe and PyAV's
            ``VideoFrame.rotation`` (a phone's legacy ``rotate=90`` tag reads 270 here).
            Frames are returned already upright.
        codec: decoder name (``h264``, ``vp9``, ``gif`` ...).
        container: demuxer name (``mov,mp4,m4a,3gp,3g2,mj2``, ``matroska,webm`` ...).
    """

    path: str
    duration: float
    fps: float
    width: int
    height: int
    num_frames: int
    rotation: int
    codec: str
    container: str


@dataclass(frozen=True, eq=False)
class SampledFrames:
    """Frames picked from one video.

    Attributes:
        frames: uint8 (T, H, W, 3) RGB, upright (rotation applied), C-contiguous.
        timestamps: float64 (T,) presentation times in seconds (from the first frame) of the
            frames actually returned, not of the targets; non-decreasing, with repeats when a
            frame covers several targets.
        info: the video's :class:`VideoInfo`.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    info: VideoInfo


# --------------------------------------------------------------------------- public API


def probe_video(path: str | Path) -> VideoInfo:
    """Describe a video file; raises :class:`VideoDecodeError` if it is not a decodable video.

    Decodes the first frame: that is the only reliable way to read the rotation (FFmpeg
    attaches the display matrix to decoded frames) and it guarantees that a file which
    probes also decodes, which is what an indexer needs to know.
    """
    with _reader(path) as reader:
        return reader.info


def sampling_times(
    num_frames: int,
    start: float,
    end: float,
    *,
    mode: SampleMode = "uniform",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Target times (float64, sorted) for ``num_frames`` samples of ``[start, end)``.

    The window is cut into ``num_frames`` equal segments; ``uniform`` returns their midpoints
    (the X-Pool / T-MASS / CLIP4Clip evaluation convention: deterministic and symmetric, never
    the very first or last instant, which are often black or a fade), ``random`` one uniform
    draw inside each segment (stratified sampling: still covers the whole clip, but a
    different frame every epoch, the usual training augmentation).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    seg = (end - start) / num_frames
    if mode == "uniform":
        offsets = np.full(num_frames, 0.5)
    elif mode == "random":
        gen = rng if rng is not None else np.random.default_rng()
        offsets = gen.random(num_frames)
    else:
        raise ValueError(f"mode must be 'uniform' or 'random', got {mode!r}")
    return start + (np.arange(num_frames, dtype=np.float64) + offsets) * seg


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the short side equal to ``size``: torchvision's rule.

    The long side is ``int(size * long / short)`` (truncated), exactly as
    ``torchvision.transforms.Resize(size)`` computes it, so frames resized while decoding
    have the shape open_clip's eval transform would produce.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def sample_frames(
    path: str | Path,
    num_frames: int,
    *,
    mode: SampleMode = "uniform",
    rng: np.random.Generator | None = None,
    start: float | None = None,
    end: float | None = None,
    decode: DecodeMode = "auto",
    size: int | None = None,
    thread_type: str = "AUTO",
    skip_nonref: bool = True,
) -> SampledFrames:
    """Sample ``num_frames`` RGB frames from ``[start, end)`` of a video.

    Args:
        path: video file.
        num_frames: ``T`` >= 1. Videos with fewer frames (or a window shorter than ``T``
            frames) repeat frames: see the module docstring.
        mode: ``"uniform"`` (segment midpoints, evaluation) or ``"random"`` (one random time
            per segment, training); see :func:`sampling_times`.
        rng: generator for ``mode="random"``; pass a seeded one for reproducible epochs.
            ``None`` draws fresh OS entropy.
        start, end: window in seconds from the first frame; ``None`` means the start / end
            of the video. ``end`` is clamped to the duration; an empty window is a
            ``ValueError`` (a caller bug, not a data problem).
        decode: ``"auto"`` (default), ``"seek"`` or ``"linear"``; all return the same frames,
            see the module docstring. On a file that cannot seek (raw streams, GIF) every
            policy decodes linearly; if the demuxer refuses a seek mid-way, sampling starts
            over linearly.
        size: if given, each kept frame is resized while converting to RGB (FFmpeg swscale,
            bicubic) so its short side is ``size`` (long side by :func:`resized_size`).
            Much cheaper than converting full-resolution frames and resizing afterwards; the
            result differs slightly from PIL's bicubic (see docs/decoding.md), so use
            ``preprocess_frames`` on full-size frames where exact open_clip parity matters.
        thread_type: FFmpeg's decoder threading, one of :data:`THREAD_TYPES`.
        skip_nonref: drop the non-reference frames no target needs (same frames, less work);
            False decodes every frame.

    Returns:
        :class:`SampledFrames`.

    Raises:
        VideoDecodeError: the file is missing, not a video, or no frame decodes.
        ValueError: bad arguments (``num_frames < 1``, unknown mode, empty window).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode not in ("uniform", "random"):
        raise ValueError(f"mode must be 'uniform' or 'random', got {mode!r}")
    if decode not in ("auto", "seek", "linear"):
        raise ValueError(f"decode must be 'auto', 'seek' or 'linear', got {decode!r}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    frames, _stats = _sample(path, num_frames, mode=mode, rng=rng, start=start, end=end,
                             decode=decode, size=size, thread_type=thread_type, skip_nonref=skip_nonref)
    return frames


# --------------------------------------------------------------------------- internals


@dataclass
class _DecodeStats:
    """What a sampling pass cost (bench/decode.py, the indexer's per-file report).

    ``strategy`` is the policy the pass ran under (``"linear"`` for files that cannot seek,
    whatever was asked); ``seeks`` how many seeks it made: under ``"auto"``, 0 means the file
    was decoded linearly because no seek would have paid for itself."""

    strategy: str = ""
    frames_decoded: int = 0
    seeks: int = 0
    bad_packets: int = 0
    packets_skippable: int = 0  # packets sent with skip_frame=NONREF (unneeded; dropped if non-reference)


DecodeStats = _DecodeStats


@dataclass
class _Decoded:
    """One decoded frame and its presentation time in seconds from the first frame."""

    t: float
    frame: av.VideoFrame


@dataclass
class _Cursor:
    """A forward pass over decoded frames with one frame of look-ahead.

    ``cur`` is the last frame consumed (on screen at the last target), ``nxt`` the first frame
    not yet consumed (``None`` at the end of the stream). ``advance(t)`` consumes frames while
    the next one starts at or before ``t``, so afterwards ``cur`` is the frame on screen at t.
    """

    it: Iterator[_Decoded]
    nxt: _Decoded | None
    cur: _Decoded | None = None

    def advance(self, t: float) -> _Decoded | None:
        while self.nxt is not None and self.nxt.t <= t + _EPS:
            self.cur = self.nxt
            self.nxt = next(self.it, None)
        return self.cur


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without PyAV's '[Errno N] ...: path' decoration."""
    msg = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(msg)


@contextmanager
def _translate_errors(path: str | Path, what: str):
    """Turn PyAV / OS / codec errors raised inside the block into VideoDecodeError."""
    try:
        yield
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(path, f"{what}: {_reason(exc)}") from None


@contextmanager
def _open_container(path: str | Path):
    """Open ``path`` for reading with clear reasons for the common failures; always closes."""
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(path, "file not found")
    if p.is_dir():
        raise VideoDecodeError(path, "is a directory, not a video file")
    try:
        if p.stat().st_size == 0:
            raise VideoDecodeError(path, "empty file (0 bytes)")
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot read file: {_reason(exc)}") from None
    try:
        # metadata_errors="replace": a title tag in a legacy 8-bit encoding must not make the
        # video unreadable.
        container = av.open(str(p), mode="r", metadata_errors="replace")
    except av.PermissionError:
        raise VideoDecodeError(path, "permission denied") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(path, f"not a readable video file ({_reason(exc)})") from None
    try:
        yield container
    finally:
        container.close()


def _pick_stream(container, path) -> av.video.stream.VideoStream:
    """The main video stream; cover art (attached pictures in music files) does not count."""
    attached = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not (s.disposition & attached)]
    if not videos:
        others = sorted({s.type for s in container.streams if s.type != "video"})
        if container.streams.video:
            what = f"only {' and '.join(others + ['cover art'])}"
        else:
            what = f"streams: {', '.join(others)}" if others else "no streams"
        raise VideoDecodeError(path, f"no video stream ({what})")
    # Prefer the stream FFmpeg itself would pick (largest / default), else the first.
    try:
        best = container.streams.best("video")
        if best is not None and best in videos:
            return best
    except (av.FFmpegError, ValueError):
        pass
    return videos[0]


def _fps_of(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and 0 < float(rate) < 10000:
            return float(rate)
    return None


def _rotation_of(frame: av.VideoFrame, stream) -> int:
    """Counter-clockwise display rotation in {0, 90, 180, 270}.

    The display matrix (MP4/MOV ``tkhd`` matrix, Matroska projection, H.264/HEVC SEI) is
    what FFmpeg exports and attaches to every decoded frame; PyAV reads it as
    ``frame.rotation`` (counter-clockwise). Files remuxed by old tools may carry only a
    legacy ``rotate`` tag instead, which means *clockwise* degrees; it is honoured when no
    matrix is present (the ffmpeg CLI ignores it, but whoever wrote it meant it).
    Flips in the matrix (mirrored selfie video) are not applied; non-right angles round to
    the nearest quarter turn.
    """
    ccw = frame.rotation or 0
    if not ccw:
        for key, value in (stream.metadata or {}).items():
            if key.lower() == "rotate":
                try:
                    ccw = -float(value)
                except ValueError:
                    pass
                break
    return int(round(ccw / 90.0)) * 90 % 360


class _Reader:
    """An open video stream with timestamps in seconds from its first frame.

    Holds the container, the chosen stream, the probe result and a live frame iterator;
    :meth:`frames` yields :class:`_Decoded` in presentation order and survives bad packets,
    :meth:`seek_cursor` positions a new pass at or before a time.
    """

    def __init__(self, container, path: str | Path, *, scan_if_unknown: bool = True,
                 thread_type: str = "AUTO", skip_nonref: bool = True):
        self.container = container
        self.path = path
        self.stream = stream = _pick_stream(container, path)
        # Slice + frame threading. Frame threading delays output by ~thread_count frames,
        # which costs a little per seek; see docs/decoding.md for the measurement.
        self.thread_type = thread_type
        stream.thread_type = self.thread_type
        self.skip_nonref = skip_nonref
        self.tb = stream.time_base or Fraction(1, 1_000_000)
        self.tb_f = float(self.tb)
        self.stats = _DecodeStats()
        self.first_error: str | None = None
        # sorted target times of the sampling pass (set by _pick): lets the decoder drop the
        # non-reference frames no target needs (_packets)
        self.skip_targets: np.ndarray | None = None

        self._fps = _fps_of(stream)
        self._t0_pts: int | None = stream.start_time
        self._prev_end = 0.0  # where a frame without pts is placed (raw streams)

        self._live = self.frames()
        first = next(self._live, None)
        if first is None:
            why = f" ({self.first_error})" if self.first_error else ""
            raise VideoDecodeError(path, f"no decodable video frames{why}")
        self.first = first
        # Time 0 is the stream's start_time (else the first frame's pts), so the first frame
        # is at 0 except in streams that start with a gap; targets before it get the first
        # frame.
        self.first_t = first.t
        self.has_pts = first.frame.pts is not None
        fmt = container.format.name
        self.seekable = self.has_pts and not (set(fmt.split(",")) & _NO_SEEK_FORMATS)

        self.rotation = _rotation_of(first.frame, stream)
        self.coded_w, self.coded_h = first.frame.width, first.frame.height

        self._read_index(stream)
        duration, num_frames, exact = self._duration_and_count(scan_if_unknown)
        if exact and duration > 0:
            # The true mean rate. The header rates can lie: raw streams report FFmpeg's
            # default 25 fps, and for VFR files guessed_rate is the tick rate, not the mean.
            fps = num_frames / duration
        else:
            fps = self._fps or 0.0
        w, h = self.coded_w, self.coded_h
        if self.rotation in (90, 270):
            w, h = h, w
        self.info = VideoInfo(
            path=str(path), duration=duration, fps=fps, width=w, height=h,
            num_frames=num_frames, rotation=self.rotation,
            codec=stream.codec_context.name, container=fmt,
        )

    def _read_index(self, stream) -> None:
        index = stream.index_entries
        n_index = len(index) if index is not None else 0
        # MP4/MOV/AVI index every sample: exact keyframe lookups. Matroska cues hold one
        # keyframe per cluster: a lower bound only.
        self.index = index if n_index else None
        self.index_dense = bool(n_index) and stream.frames > 0 and n_index >= 0.5 * stream.frames
        # MP4/MOV index entries are in *decode* time; with B-frames a keyframe is presented
        # a constant reorder delay later (2 frames for x264 defaults). Without correcting for
        # it, a target between a keyframe's DTS and PTS would look like it needs a seek; the
        # seek (by PTS) lands on the previous keyframe and re-decodes a whole GOP.
        self.reorder_delay = 0.0
        if self.index is not None and self.has_pts:
            delay = (self.first.frame.pts - index[0].timestamp) * self.tb_f
            if 0.0 < delay < 2.0:
                self.reorder_delay = delay

    def _bounded_by_content(self, claimed: float) -> float:
        """``claimed`` (the header's duration), or where the frames really end when the file
        holds far less (:func:`_content_end`): a header is data, and a 3 KB file that claims 30
        hours must cost the indexer one segment, not 3,600. The margin (1 s or 10 %) is the
        damage warning's: audio that outlasts the video a little is not a lie."""
        end = self._content_end(claimed)
        if end is None or claimed <= end + max(1.0, 0.1 * end):
            return claimed
        log.warning("%s: the header says %.2f s but the file holds %.2f s of video; using %.2f s",
                    self.path, claimed, end, end)
        return end

    def _content_end(self, claimed: float) -> float | None:
        """Seconds (from time 0) to the end of the last frame the file really holds, when that
        is cheap to know: from the sample index where it lists every frame (MP4/MOV/AVI),
        else from a packet scan (no decoding) when the file is too small to hold ``claimed``
        seconds at :data:`MIN_BYTES_PER_SECOND`. None when neither applies."""
        frame = min(1.0, 1.0 / self._fps) if self._fps else 0.04
        if self.index_dense:
            n = len(self.index)
            tail = sorted(self.index[i].timestamp for i in range(max(0, n - _SKIP_LOOKAHEAD), n))
            gaps = np.diff(tail)
            if (gaps > 0).any():  # the frame interval as the index states it (the header rate may lie)
                frame = float(np.median(gaps[gaps > 0])) * self.tb_f
            return (tail[-1] - (self._t0_pts or 0)) * self.tb_f + self.reorder_delay + frame
        try:
            size = Path(self.path).stat().st_size
        except OSError:
            return None
        if claimed * MIN_BYTES_PER_SECOND <= size:
            return None
        scanned = _scan_packets(self.path, self._fps)
        return None if scanned is None else scanned.last_start + frame

    # ---------------------------------------------------------------- timing

    def _time_of(self, frame: av.VideoFrame) -> float:
        dur = frame.duration * self.tb_f if frame.duration else 0.0
        if dur <= 0:
            dur = 1.0 / self._fps if self._fps else 0.04
        if frame.pts is None:
            # Raw elementary streams carry no timestamps: synthesise them from durations.
            t = self._prev_end
        else:
            if self._t0_pts is None:
                self._t0_pts = frame.pts
            t = (frame.pts - self._t0_pts) * self.tb_f
        self._prev_end = t + dur
        return t

    def to_pts(self, t: float) -> int:
        """Seconds from time 0 -> a timestamp in the stream's time base."""
        return int(math.floor(t / self.tb_f + 1e-6)) + (self._t0_pts or 0)

    def _duration_and_count(self, scan_if_unknown: bool) -> tuple[float, int, bool]:
        """(duration s, frame count, whether the count is exact). Stream header first, then
        the container header, then a packet scan when neither states a duration."""
        stream, container = self.stream, self.container
        duration: float | None = None
        if stream.duration:
            # stream.duration counts from stream.start_time, which is our time 0.
            duration = stream.duration * self.tb_f
        elif container.duration:
            end_abs = ((container.start_time or 0) + container.duration) / av.time_base
            t0_abs = (self._t0_pts or 0) * self.tb_f if self.has_pts else 0.0
            duration = end_abs - t0_abs
        count = stream.frames if stream.frames and stream.frames > 0 else None
        if (duration is None or duration <= 0) and scan_if_unknown:
            scanned = _scan_packets(self.path, self._fps)
            if scanned is not None:
                duration, count = scanned.duration, scanned.count
        if duration is None or duration < 0:
            duration = 0.0
        duration = self._bounded_by_content(duration)
        exact = count is not None
        if count is None:
            count = max(1, round(duration * self._fps)) if self._fps else 1
        return float(duration), int(count), exact

    # ---------------------------------------------------------------- decoding

    def frames(self) -> Iterator[_Decoded]:
        """Decoded frames from the current demuxer position, robust to damaged data.

        A packet that fails to decode is skipped (FFmpeg conceals most damage by itself);
        a demuxer error (truncated file, garbage) ends the pass as if the stream ended there.
        """
        stats = self.stats
        bad_run = 0
        cc = self.stream.codec_context
        skipping = "DEFAULT"
        for packet, skip in self._packets():
            want = "NONREF" if skip else "DEFAULT"
            if want != skipping:
                cc.skip_frame = skipping = want
            if skip:
                stats.packets_skippable += 1
            try:
                decoded = packet.decode()
            except (av.FFmpegError, OSError, EOFError) as exc:
                stats.bad_packets += 1
                self._note_error(exc)
                bad_run += 1
                if bad_run >= _MAX_CONSECUTIVE_BAD_PACKETS:
                    return
                continue
            bad_run = 0
            for frame in decoded:
                stats.frames_decoded += 1
                yield _Decoded(self._time_of(frame), frame)

    def _packets(self) -> Iterator[tuple[av.Packet, bool]]:
        """Packets from the current demuxer position, each with whether its frame may be
        dropped by the decoder (see :data:`_SKIP_CODECS`): ``skip_targets`` is set, the packet
        is not a keyframe, and no target falls while its frame would be on screen, i.e. in
        [its time, the next frame's time). The next frame's time is the smallest larger pts
        among the next :data:`_SKIP_LOOKAHEAD` packets (decode order differs from
        presentation order by at most the reorder depth); unknown means "keep". A demuxer
        error (truncated file, garbage) ends the packets as if the stream ended there."""
        demux = self.container.demux(self.stream)
        codec_ok = self.stream.codec_context.name in _SKIP_CODECS
        buf: deque[av.Packet] = deque()
        ended = False
        while True:
            # read when needed: the probe's pass starts before the targets are known
            targets = self.skip_targets
            active = codec_ok and targets is not None and len(targets) > 0
            while not ended and len(buf) < (_SKIP_LOOKAHEAD + 1 if active else 1):
                try:
                    buf.append(next(demux))
                except StopIteration:
                    ended = True
                except (av.FFmpegError, OSError, EOFError) as exc:
                    self._note_error(exc)
                    ended = True
            if not buf:
                return
            packet = buf.popleft()
            skip = False
            if active and packet.pts is not None and packet.size and not packet.is_keyframe \
                    and self._t0_pts is not None:
                later = [q.pts for q in buf if q.pts is not None and q.pts > packet.pts]
                if later:
                    t = (packet.pts - self._t0_pts) * self.tb_f
                    t_next = (min(later) - self._t0_pts) * self.tb_f
                    # on screen for the targets in [t - eps, t_next - eps) (_Cursor.advance)
                    i = int(np.searchsorted(targets, t - _EPS, side="left"))
                    skip = i >= len(targets) or targets[i] >= t_next - _EPS
            yield packet, skip

    def _note_error(self, exc: BaseException) -> None:
        if self.first_error is None:
            self.first_error = _reason(exc)

    def start_cursor(self) -> _Cursor:
        """A pass from the beginning, reusing the frame decoded while probing."""
        if self._live is None:  # pragma: no cover - internal misuse
            raise RuntimeError("start_cursor() may be used once")
        cursor = _Cursor(self._live, self.first)
        self._live = None
        return cursor

    def _seek_raw(self, t: float) -> _Cursor:
        """Seek to the keyframe presented at or before ``t`` and start a pass there.

        FFmpeg's demuxers seek by presentation time here (MP4 corrects its DTS index
        itself), so the target is passed as is."""
        self.stats.seeks += 1
        self.container.seek(self.to_pts(max(t, 0.0)), stream=self.stream, backward=True)
        it = self.frames()
        return _Cursor(it, next(it, None))

    def seek_cursor(self, t: float) -> _Cursor:
        """A new pass whose first frame starts at or before ``t`` (or is the first frame).

        Some demuxers land after the target (coarse indexes, keyframes whose presentation
        is delayed by B-frames); if the first frame after the seek is already past ``t``,
        seek again further back (1 s, 4 s, 16 s), then from the beginning. Raises
        ``_SeekFailed`` if the demuxer cannot seek at all.
        """
        back = 0.0
        for _ in range(4):
            try:
                cursor = self._seek_raw(t - back)
            except (av.FFmpegError, OSError) as exc:
                raise _SeekFailed(_reason(exc)) from None
            nxt = cursor.nxt
            if nxt is not None and (nxt.t <= t + _EPS or nxt.t <= self.first_t + _EPS):
                return cursor
            if t - back <= 0:
                break
            back = max(1.0, back * 4)
        try:
            cursor = self._seek_raw(-1.0)
        except (av.FFmpegError, OSError) as exc:
            raise _SeekFailed(_reason(exc)) from None
        if cursor.nxt is None:
            raise _SeekFailed("no frame after seeking to the start")
        return cursor

    # ---------------------------------------------------------------- keyframes

    def keyframe_before(self, t: float) -> float | None:
        """Presentation time of the last *indexed* keyframe shown at or before ``t``
        (None if the index does not say)."""
        if self.index is None:
            return None
        i = self.index.search_timestamp(self.to_pts(t - self.reorder_delay), backward=True)
        if i < 0:
            return None
        return (self.index[i].timestamp - (self._t0_pts or 0)) * self.tb_f + self.reorder_delay

    def should_seek(self, pos: float, t: float, policy: str) -> bool:
        """Seek to reach ``t``, or keep decoding forward from ``pos`` (the next frame's time)?

        ``"seek"`` (pure): seek whenever a keyframe lies in (pos, t], i.e. whenever seeking
        skips any frame. ``"auto"`` (cost-aware): seek only when it skips more than
        :data:`SEEK_COST_FRAMES` frames, so it never does much worse than either pure
        strategy. ``"linear"``: never. With a dense index (MP4/MOV/AVI) the keyframe
        positions are exact; otherwise (Matroska cues, no index) a seek is also made when the
        gap exceeds :data:`ASSUMED_KEYFRAME_INTERVAL_S`.
        """
        if policy == "linear" or not self.seekable or t <= pos + _EPS:
            return False
        cost = SEEK_COST_FRAMES if self.thread_type in ("AUTO", "FRAME") else SEEK_COST_FRAMES_UNTHREADED
        min_skip = 0.0 if policy == "seek" else cost / (self.info.fps or 25.0)
        kf = self.keyframe_before(t)
        if kf is not None and kf - pos > min_skip + _EPS:
            return True
        if self.index_dense:
            return False
        return t - pos > max(ASSUMED_KEYFRAME_INTERVAL_S, min_skip)


class _SeekFailed(Exception):
    """The demuxer refused to seek; the caller decodes linearly instead."""


@dataclass(frozen=True)
class _PacketScan:
    duration: float  # first packet's start to the last one's end
    count: int  # packets (frames)
    last_start: float  # the last packet's start, from the first's (a packet's duration is data too)


def _scan_packets(path, fps: float | None) -> _PacketScan | None:
    """Duration and frame count from the packets alone (no decoding), for streams whose
    headers state no duration (raw H.264 / MJPEG elementary streams, some live captures), and
    to check a duration claim the file is too small to hold (``_Reader._content_end``)."""
    with _open_container(path) as container, _translate_errors(path, "scanning packets"):
        stream = _pick_stream(container, path)
        tb = float(stream.time_base or Fraction(1, 1_000_000))
        n = 0
        first_pts = None
        last_end = None
        last_start = None
        dur_sum = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                n += 1
                dur_sum += packet.duration or 0
                if packet.pts is not None:
                    first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                    last_start = packet.pts if last_start is None else max(last_start, packet.pts)
                    end = packet.pts + (packet.duration or 0)
                    last_end = end if last_end is None else max(last_end, end)
        except (av.FFmpegError, OSError, EOFError):
            pass  # truncated: what was read so far is the answer
        if n == 0:
            return None
        if last_end is not None and first_pts is not None:
            return _PacketScan((last_end - first_pts) * tb, n, (last_start - first_pts) * tb)
        if dur_sum > 0:
            return _PacketScan(dur_sum * tb, n, dur_sum * tb * (n - 1) / n)
        if fps:
            return _PacketScan(n / fps, n, (n - 1) / fps)
        return None


@contextmanager
def _reader(path: str | Path, *, scan_if_unknown: bool = True, thread_type: str = "AUTO", skip_nonref: bool = True):
    with _open_container(path) as container, _translate_errors(path, "decoding failed"):
        yield _Reader(container, path, scan_if_unknown=scan_if_unknown, thread_type=thread_type,
                      skip_nonref=skip_nonref)


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """Convert one decoded frame to uint8 (height, width, 3) RGB with swscale.

    Works for every pixel format FFmpeg decodes to (yuv420p/444p, 10-bit, gray, rgb24, pal8,
    bgra for GIF ...); alpha is dropped. Resizing happens in a second swscale pass on the
    full-size RGB image: one combined YUV->scaled-RGB pass is ~4x cheaper but resamples the
    subsampled chroma planes directly and lands up to ~95/255 away from Pillow at coloured
    edges; the two-pass result stays within a few levels (measured in docs/decoding.md).
    """
    rgb = frame.reformat(format="rgb24")
    if rgb.width != width or rgb.height != height:
        rgb = rgb.reformat(width=width, height=height, interpolation="BICUBIC")
    return rgb.to_ndarray()


def _sample(
    path: str | Path,
    num_frames: int,
    *,
    mode: SampleMode = "uniform",
    rng: np.random.Generator | None = None,
    start: float | None = None,
    end: float | None = None,
    decode: DecodeMode = "auto",
    size: int | None = None,
    thread_type: str = "AUTO",
    skip_nonref: bool = True,
) -> tuple[SampledFrames, _DecodeStats]:
    """:func:`sample_frames` plus what it cost (strategy, frames decoded, seeks)."""
    with open_video(path, thread_type=thread_type, skip_nonref=skip_nonref) as video:
        (frames,), stats = video.sample([(start, end)], num_frames, mode=mode, rng=rng, decode=decode, size=size)
    return frames, stats


def _window_targets(info: VideoInfo, num_frames: int, start: float | None, end: float | None,
                    mode: SampleMode, rng: np.random.Generator | None) -> np.ndarray:
    """The target times of one window ``[start, end)`` (None = start / end of the video)."""
    duration = info.duration
    lo = 0.0 if start is None else float(start)
    hi = duration if end is None else float(end)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"start/end must be finite, got start={start}, end={end}")
    lo = max(lo, 0.0)
    if duration > 0:
        hi = min(hi, duration)
    elif end is None:
        hi = lo  # a still image without a duration: every target at the start
    if hi < lo or (hi == lo and duration > 0):
        raise ValueError(
            f"empty sampling window [{start}, {end}) for a video of {duration:.3f} s"
        )
    return sampling_times(num_frames, lo, hi, mode=mode, rng=rng)


@contextmanager
def open_video(path: str | Path, *, thread_type: str = "AUTO", skip_nonref: bool = True) -> Iterator[VideoFile]:
    """Open (and probe) a video once, to read its :class:`VideoInfo` and then sample it.

        with open_video(path) as video:
            windows = plan(video.info)             # e.g. the indexer's segments
            frames, stats = video.sample(windows, 12)

    The indexer's way in: one open and one forward pass for all the windows of a file (or of a
    chunk of a long file), where :func:`probe_video` followed by one :func:`sample_frames` per
    window opened the file 1 + n times and restarted decoding for every window. Raises
    :class:`VideoDecodeError` like :func:`probe_video`; decoding errors inside the block are
    translated the same way.

    ``thread_type``: FFmpeg's decoder threading for this file (``"AUTO"`` = slice + frame
    threads, the default for a lone caller; ``"NONE"`` where the caller already decodes one file
    per core, as the indexer does: frame threads then only add CPU time, 8-10 % on 320x240
    H.264, measured by bench/decode.py and bench/indexing.py). ``skip_nonref``: drop the
    non-reference frames no target needs (module docstring); False decodes every frame.
    """
    if thread_type not in THREAD_TYPES:
        raise ValueError(f"thread_type must be one of {THREAD_TYPES}, got {thread_type!r}")
    with _reader(path, thread_type=thread_type, skip_nonref=skip_nonref) as reader:
        yield VideoFile(reader)


class VideoFile:
    """An open video (from :func:`open_video`): ``info``, and one :meth:`sample` call."""

    def __init__(self, reader: _Reader):
        self._reader = reader
        self._used = False

    @property
    def info(self) -> VideoInfo:
        return self._reader.info

    def sample(
        self,
        windows: Sequence[tuple[float | None, float | None]],
        num_frames: int,
        *,
        mode: SampleMode = "uniform",
        rng: np.random.Generator | None = None,
        decode: DecodeMode = "auto",
        size: int | None = None,
    ) -> tuple[list[SampledFrames], DecodeStats]:
        """``num_frames`` frames from each ``(start, end)`` window, as :func:`sample_frames`
        would return them one window at a time (bit-identical: the frame on screen at each
        target does not depend on how it was reached), from one forward pass over the targets
        of every window in time order, with the per-target seek-or-continue choice of
        ``decode``. Returns the frames per window and what the pass cost
        (:class:`DecodeStats`: ``strategy``, ``frames_decoded``, ``seeks``). Once per open file.
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if mode not in ("uniform", "random"):
            raise ValueError(f"mode must be 'uniform' or 'random', got {mode!r}")
        if decode not in ("auto", "seek", "linear"):
            raise ValueError(f"decode must be 'auto', 'seek' or 'linear', got {decode!r}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not windows:
            raise ValueError("no window to sample")
        if self._used:
            raise RuntimeError("VideoFile.sample() may be called once per open_video()")
        self._used = True
        reader = self._reader
        # rng draws happen window by window, in order: the same numbers as separate calls
        targets = np.concatenate([_window_targets(reader.info, num_frames, s, e, mode, rng) for s, e in windows])
        order = np.argsort(targets, kind="stable")  # windows may overlap or come in any order
        ordered = targets[order]

        strategy = decode if reader.seekable else "linear"
        try:
            picked = _pick(reader, ordered, strategy)
        except _SeekFailed as exc:
            # The demuxer state is unknown after a refused seek: start over on a fresh open,
            # with the same targets (the rng must not be drawn twice).
            log.debug("%s: seeking failed (%s); decoding linearly", reader.path, exc)
            picked = None
        if picked is not None:
            reader.stats.strategy = strategy
            return self._split(reader, picked, ordered, order, len(windows), size)
        with _reader(reader.path, thread_type=reader.thread_type, skip_nonref=reader.skip_nonref) as fresh:
            fresh.seekable = False
            picked = _pick(fresh, ordered, "linear")
            fresh.stats.strategy = "linear"
            return self._split(fresh, picked, ordered, order, len(windows), size)

    @staticmethod
    def _split(reader: _Reader, picked: list[_Decoded], ordered: np.ndarray, order: np.ndarray, n: int,
               size: int | None) -> tuple[list[SampledFrames], DecodeStats]:
        _warn_if_damaged(reader, picked, ordered)
        back = [None] * len(picked)
        for i, k in enumerate(order):
            back[k] = picked[i]
        allf = _assemble(reader, back, size)
        t = len(back) // n
        out = [SampledFrames(frames=allf.frames[i * t:(i + 1) * t], timestamps=allf.timestamps[i * t:(i + 1) * t],
                             info=allf.info) for i in range(n)]
        return out, reader.stats


def _warn_if_damaged(reader: _Reader, picked: list[_Decoded], targets: np.ndarray) -> None:
    """Log (not raise) when the file is damaged: a decode error was met, or the frames end
    well before the duration the header states (a truncated download). The gap threshold
    (1 s or 10 %) keeps files whose audio outlasts the video a little from being flagged."""
    if reader.first_error is not None:
        log.warning("%s: damaged video, sampled from the frames that decoded (%s)",
                    reader.path, reader.first_error)
        return
    duration = reader.info.duration
    last = max(rec.t for rec in picked)
    if float(targets[-1]) - last > max(1.0, 0.1 * duration):
        log.warning("%s: frames end at %.2f s but the header says %.2f s (truncated file?); "
                    "later samples repeat the last frame", reader.path, last, duration)


def _pick(reader: _Reader, targets: np.ndarray, policy: str) -> list[_Decoded]:
    """The frame on screen at each (sorted) target, decoding forward and seeking per ``policy``.

    Starts from the pass opened while probing (already at the first frame), so a target near
    the start never costs a seek. ``"linear"`` may still seek once, to reach the *first*
    target (a window that starts late, or a long first segment), when that skips more than
    a seek costs; after that it only decodes forward.
    """
    reader.skip_targets = targets if reader.skip_nonref else None
    cursor = reader.start_cursor()
    picked: list[_Decoded] = []
    for i, t in enumerate(targets):
        t = float(t)
        nxt = cursor.nxt
        if nxt is not None and nxt.t <= t + _EPS:
            step = "auto" if (policy == "linear" and i == 0) else policy
            if reader.should_seek(nxt.t, t, step):
                cursor = reader.seek_cursor(t)
        picked.append(cursor.advance(t) or cursor.nxt)
    return picked


def _assemble(reader: _Reader, picked: list[_Decoded], size: int | None) -> SampledFrames:
    """Convert the picked frames (each distinct one once) to upright RGB and stack them."""
    if any(rec is None for rec in picked):  # pragma: no cover - the probe guarantees a frame
        raise VideoDecodeError(reader.path, "no decodable video frames")
    w, h = reader.coded_w, reader.coded_h
    if size is not None:
        w, h = resized_size(w, h, size)
    k = reader.rotation // 90
    converted: dict[int, np.ndarray] = {}
    arrays = []
    for rec in picked:
        key = id(rec)
        if key not in converted:
            img = _to_rgb(rec.frame, w, h)
            if k:
                img = np.rot90(img, k=k)  # rotation is counter-clockwise, as np.rot90
            converted[key] = img
        arrays.append(converted[key])
    frames = np.ascontiguousarray(np.stack(arrays))
    timestamps = np.array([rec.t for rec in picked], dtype=np.float64)
    return SampledFrames(frames=frames, timestamps=timestamps, info=reader.info)
