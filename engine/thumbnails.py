"""Thumbnails of moments (the ``--html`` page, ``probret serve``): the frame on screen at an
instant, and a PNG encoder that needs no imaging library (zlib and struct only)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["png_bytes", "thumbnail", "THUMBNAIL_SIZE"]

#: Short side of a thumbnail in pixels (smaller videos are not enlarged).
THUMBNAIL_SIZE = 160


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 (H, W, 3) RGB -> a PNG file (8-bit truecolour, zlib)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # filter byte 0 (None) per row
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def thumbnail(path: str | Path, t: float, *, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The frame on screen at ``t`` seconds, short side ``size`` at most (decoder resize; small
    videos are not enlarged). Raises VideoDecodeError when the file cannot be decoded."""
    from probret.engine.video import probe_video, sample_frames

    info = probe_video(path)
    size = min(size, info.width, info.height)
    t = max(0.0, float(t))
    return sample_frames(path, 1, start=max(0.0, t - 1e-3) or None, end=t + 1e-3, size=size).frames[0]
