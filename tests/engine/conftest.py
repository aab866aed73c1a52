"""Test videos generated at test time with PyAV (no binary fixtures in the repository).

Every frame carries its own index as a 12-bit black/white block pattern (4 x 3 blocks of
16 x 16 pixels on a 64 x 48 frame), so a test can read back *which* frame it got. Black and
white blocks survive every codec here, lossy 4:2:0 H.264 at low bitrate and GIF's 3-3-2
palette included, which keeps the checks exact rather than "within tolerance".

Videos are built lazily and cached for the session by :func:`videos` (``videos["h264_mp4"]``),
so a test run that selects one test only encodes what it needs. All of them are tiny: the
whole set encodes in about a second.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

W, H = 64, 48
BLOCK = 16
NBITS = (W // BLOCK) * (H // BLOCK)  # 12 bits: frame indices up to 4095
FFMPEG = shutil.which("ffmpeg")


def pattern(i: int, w: int = W, h: int = H) -> np.ndarray:
    """RGB frame whose blocks spell ``i`` in binary (bit b at block row b // 4, col b % 4)."""
    img = np.zeros((h, w, 3), np.uint8)
    for b in range(NBITS):
        if (i >> b) & 1:
            r, c = divmod(b, W // BLOCK)
            img[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = 255
    return img


def read_pattern(frame: np.ndarray) -> int:
    """Inverse of :func:`pattern` for a decoded (possibly lossy) 64 x 48 frame."""
    gray = frame.astype(np.float32).mean(axis=2)
    value = 0
    for b in range(NBITS):
        r, c = divmod(b, W // BLOCK)
        # Sample the block's interior: edges bleed under lossy compression.
        block = gray[r * BLOCK + 4:(r + 1) * BLOCK - 4, c * BLOCK + 4:(c + 1) * BLOCK - 4]
        if block.mean() > 127:
            value |= 1 << b
    return value


@dataclass
class Spec:
    """A generated video and the truth about it."""

    path: Path
    times: np.ndarray  # presentation time (s) of frame i, i.e. of pattern(i)
    fps: float
    codec: str = ""
    rotation: int = 0  # counter-clockwise display rotation written into the file
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.times)

    def expected_index(self, t: float) -> int:
        """Index of the frame on screen at ``t``: last frame with time <= t (else first)."""
        i = int(np.searchsorted(self.times, t + 1e-9, side="right")) - 1
        return max(i, 0)


def write_video(
    path: Path,
    n: int,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rate: int = 10,
    fmt: str | None = None,
    options: dict | None = None,
    container_options: dict | None = None,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
    frame_fn: Callable[[int], np.ndarray] = pattern,
    size: tuple[int, int] = (W, H),
) -> None:
    """Encode ``n`` frames (``frame_fn(i)``) with PyAV. ``pts_ms`` gives irregular times."""
    w, h = size
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height = w, h
        s.pix_fmt = pix_fmt
        if options:
            s.options = options
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
            s.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n):
            img = frame_fn(i)
            if pix_fmt == "pal8":
                frame = _pal8_frame(img)
            else:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts = pts_ms[i]
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _pal8_frame(img: np.ndarray) -> av.VideoFrame:
    """Black/white RGB image -> pal8 frame with a 2-colour palette (PyAV wants ARGB rows)."""
    index = (img[..., 0] > 127).astype(np.uint8)
    palette = np.zeros((256, 4), np.uint8)
    palette[0] = [255, 0, 0, 0]
    palette[1] = [255, 255, 255, 255]
    return av.VideoFrame.from_ndarray((index, palette), format="pal8")


def _cfr(path: Path, n: int, rate: int, decoder: str, **kw) -> Spec:
    """Constant frame rate video of pattern frames; ``decoder`` is the expected codec name."""
    write_video(path, n, rate=rate, **kw)
    return Spec(path, np.arange(n) / rate, float(rate), codec=decoder)


def _has_encoder(name: str) -> bool:
    return name in av.codecs_available


X264 = {"preset": "ultrafast", "g": "10"}

# name -> builder(dir) -> Spec. Builders raise pytest.skip.Exception when an encoder is absent.
_BUILDERS: dict[str, Callable[[Path], Spec]] = {}


def builder(name: str):
    def deco(fn):
        _BUILDERS[name] = fn
        return fn
    return deco


@builder("h264_mp4")
def _(d: Path) -> Spec:
    return _cfr(d / "h264.mp4", 30, 10, "h264", options=X264)


@builder("h264_bframes_mp4")
def _(d: Path) -> Spec:
    # B-frames reorder decoding vs presentation and shift DTS below PTS: the classic trap
    # for "frame index" samplers and for seeking by DTS.
    return _cfr(d / "h264_b.mp4", 60, 10, "h264",
                options={"preset": "medium", "g": "12", "bf": "3", "sc_threshold": "0"})


@builder("mpeg4_avi")
def _(d: Path) -> Spec:
    return _cfr(d / "mpeg4.avi", 30, 10, "mpeg4", codec="mpeg4", options={"g": "10", "qscale": "3"})


@builder("mjpeg_mkv")
def _(d: Path) -> Spec:
    return _cfr(d / "mjpeg.mkv", 30, 10, "mjpeg", codec="mjpeg", pix_fmt="yuvj420p")


@builder("vp9_webm")
def _(d: Path) -> Spec:
    if not _has_encoder("libvpx-vp9"):
        pytest.skip("PyAV build has no libvpx-vp9 encoder")
    return _cfr(d / "vp9.webm", 30, 10, "vp9", codec="libvpx-vp9",
                options={"deadline": "realtime", "cpu-used": "8", "g": "10", "crf": "20", "b:v": "0"})


@builder("gif")
def _(d: Path) -> Spec:
    return _cfr(d / "anim.gif", 20, 10, "gif", codec="gif", pix_fmt="rgb8")


@builder("h264_yuv444p_mp4")
def _(d: Path) -> Spec:
    return _cfr(d / "h264_444.mp4", 30, 10, "h264", pix_fmt="yuv444p", options=X264)


@builder("h264_10bit_mp4")
def _(d: Path) -> Spec:
    try:
        return _cfr(d / "h264_10bit.mp4", 30, 10, "h264", pix_fmt="yuv420p10le", options=X264)
    except (av.FFmpegError, ValueError) as exc:  # pragma: no cover - 8-bit-only x264 builds
        pytest.skip(f"libx264 cannot encode 10-bit here: {exc}")


@builder("gray_mkv")
def _(d: Path) -> Spec:
    return _cfr(d / "gray.mkv", 30, 10, "ffv1", codec="ffv1", pix_fmt="gray")


@builder("rgb24_mov")
def _(d: Path) -> Spec:
    return _cfr(d / "rgb24.mov", 20, 10, "png", codec="png", pix_fmt="rgb24")


@builder("pal8_mov")
def _(d: Path) -> Spec:
    return _cfr(d / "pal8.mov", 20, 10, "png", codec="png", pix_fmt="pal8")


@builder("one_frame_mp4")
def _(d: Path) -> Spec:
    return _cfr(d / "one.mp4", 1, 10, "h264", options=X264)


@builder("five_frames_mp4")
def _(d: Path) -> Spec:
    return _cfr(d / "five.mp4", 5, 10, "h264", options=X264)


VFR_MS = [0, 50, 300, 320, 900, 1500, 1520, 2000, 2010, 2600]


@builder("vfr_mp4")
def _(d: Path) -> Spec:
    path = d / "vfr.mp4"
    write_video(path, len(VFR_MS), rate=30, pts_ms=VFR_MS, options={"preset": "ultrafast"})
    return Spec(path, np.array(VFR_MS) / 1000.0, 0.0, codec="h264")


@builder("vfr_mkv")
def _(d: Path) -> Spec:
    path = d / "vfr.mkv"
    write_video(path, len(VFR_MS), rate=30, pts_ms=VFR_MS, codec="mjpeg", pix_fmt="yuvj420p")
    return Spec(path, np.array(VFR_MS) / 1000.0, 0.0, codec="mjpeg")


def _rotated(d: Path, degrees: int) -> Spec:
    path = d / f"rot{degrees % 360}.mp4"
    write_video(path, 20, rate=10, rotation=degrees, options=X264)
    spec = Spec(path, np.arange(20) / 10, 10.0, codec="h264", rotation=degrees % 360)
    return spec


@builder("rot90_mp4")
def _(d: Path) -> Spec:
    return _rotated(d, 90)


@builder("rot180_mp4")
def _(d: Path) -> Spec:
    return _rotated(d, 180)


@builder("rot270_mp4")
def _(d: Path) -> Spec:
    return _rotated(d, -90)


@builder("rot_tag_mkv")
def _(d: Path) -> Spec:
    # Legacy 'rotate' tag (clockwise 90) and no display matrix, as old remuxers left it.
    path = d / "rot_tag.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
        s.metadata["rotate"] = "90"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(pattern(i), format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Spec(path, np.arange(20) / 10, 10.0, codec="mjpeg", rotation=270)


@builder("long_mp4")
def _(d: Path) -> Spec:
    # 10 minutes at 1 fps, a keyframe every 30 s: a seek has up to 29 frames to decode,
    # a linear pass 600.
    return _cfr(d / "long.mp4", 600, 1, "h264",
                options={"preset": "ultrafast", "g": "30", "keyint_min": "30", "sc_threshold": "0"})


@builder("long_bframes_mkv")
def _(d: Path) -> Spec:
    # Matroska (sparse cues, no frame count) + B-frames + 300 frames at 5 fps = 60 s.
    return _cfr(d / "long_b.mkv", 300, 5, "h264",
                options={"preset": "fast", "g": "40", "bf": "2", "sc_threshold": "0"})


@builder("raw_h264")
def _(d: Path) -> Spec:
    # Annex-B elementary stream: no container, no timestamps, no duration.
    return _cfr(d / "raw.h264", 20, 10, "h264", fmt="h264", options=X264)


@builder("colors_mp4")
def _(d: Path) -> Spec:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]

    def solid(i: int) -> np.ndarray:
        return np.broadcast_to(np.array(colors[i % 4], np.uint8), (H, W, 3)).copy()

    spec = _cfr(d / "colors.mp4", 4, 1, "h264", frame_fn=solid, options={"preset": "ultrafast", "crf": "10"})
    spec.extra["colors"] = colors
    return spec


def _truncate_at_frame(full: Path, path: Path, frame: int) -> None:
    """Copy ``full`` cut a few bytes into the packet of ``frame`` (by presentation order),
    so frames before it are intact and nothing after it exists."""
    with av.open(str(full)) as c:
        stream = c.streams.video[0]
        packets = [p for p in c.demux(stream) if p.size]
    packets.sort(key=lambda p: p.pts)
    cut = packets[frame].pos + 8
    path.write_bytes(full.read_bytes()[:cut])


@builder("truncated_mkv")
def _(d: Path) -> Spec:
    full = d / "full_for_trunc.mkv"
    _cfr(full, 40, 10, "mjpeg", codec="mjpeg", pix_fmt="yuvj420p")
    path = d / "truncated.mkv"
    _truncate_at_frame(full, path, 25)
    return Spec(path, np.arange(40) / 10, 10.0, codec="mjpeg")


@builder("truncated_faststart_mp4")
def _(d: Path) -> Spec:
    # moov at the front: the index survives, the media data is cut after frame 24.
    full = d / "full_faststart.mp4"
    _cfr(full, 40, 10, "h264", options=X264, container_options={"movflags": "faststart"})
    path = d / "truncated_faststart.mp4"
    _truncate_at_frame(full, path, 25)
    return Spec(path, np.arange(40) / 10, 10.0, codec="h264")


@builder("truncated_mp4")
def _(d: Path) -> Spec:
    # Default mp4: moov at the end, so cutting the file loses the index -> unreadable.
    full = d / "full_for_trunc.mp4"
    _cfr(full, 30, 10, "h264", options=X264)
    data = full.read_bytes()
    path = d / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    return Spec(path, np.arange(30) / 10, 10.0)


def _mux_silence(container, stream, frames: int = 10) -> None:
    """``frames`` x 1024 samples of mono silence at 16 kHz through ``stream``, then a flush."""
    for i in range(frames):
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        fr.pts = i * 1024
        for p in stream.encode(fr):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


@builder("audio_only_m4a")
def _(d: Path) -> Spec:
    path = d / "audio.m4a"
    with av.open(str(path), "w") as c:
        _mux_silence(c, c.add_stream("aac", rate=16000))
    return Spec(path, np.zeros(0), 0.0)


@builder("cover_art_mp4")
def _(d: Path) -> Spec:
    # Music file with an album cover: a "video" stream that is one attached picture.
    path = d / "song_with_cover.mp4"
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=16000)
        v = c.add_stream("mjpeg", rate=1)
        v.width, v.height, v.pix_fmt = W, H, "yuvj420p"
        v.disposition = av.stream.Disposition.attached_pic
        frame = av.VideoFrame.from_ndarray(pattern(5), format="rgb24")
        frame.pts = 0
        for p in list(v.encode(frame)) + list(v.encode()):
            c.mux(p)
        _mux_silence(c, a)
    return Spec(path, np.zeros(0), 0.0)


@builder("empty_mp4")
def _(d: Path) -> Spec:
    path = d / "empty.mp4"
    path.write_bytes(b"")
    return Spec(path, np.zeros(0), 0.0)


@builder("random_bytes_mp4")
def _(d: Path) -> Spec:
    path = d / "random.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    return Spec(path, np.zeros(0), 0.0)


@builder("text_mp4")
def _(d: Path) -> Spec:
    path = d / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    return Spec(path, np.zeros(0), 0.0)


class _Videos:
    """Lazy cache of generated videos plus the helpers tests need (tests do not import
    conftest: with several test folders the module name ``conftest`` is ambiguous)."""

    ffmpeg_first_frame_rgb = staticmethod(lambda path: ffmpeg_first_frame_rgb(path))

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, Spec] = {}

    def __getitem__(self, name: str) -> Spec:
        if name not in self._cache:
            self._cache[name] = _BUILDERS[name](self.root)
        return self._cache[name]


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> _Videos:
    """Lazily generated test videos: ``videos["h264_mp4"] -> Spec``."""
    return _Videos(tmp_path_factory.mktemp("videos"))


def ffmpeg_first_frame_rgb(path: Path) -> np.ndarray | None:
    """The first frame as the ffmpeg CLI displays it (autorotate on), or None without ffmpeg.

    Read as PPM so the (possibly rotated) size comes with the pixels.
    """
    if FFMPEG is None:
        return None
    out = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe",
         "-vcodec", "ppm", "-"],
        capture_output=True, check=True, timeout=30,
    ).stdout
    header = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", out)
    assert header is not None, out[:20]
    w, h = int(header.group(1)), int(header.group(2))
    return np.frombuffer(out[header.end():header.end() + w * h * 3], np.uint8).reshape(h, w, 3)
