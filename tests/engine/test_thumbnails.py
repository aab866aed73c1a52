"""engine/thumbnails.py: the frame at an instant, and the PNG writer (checked byte by byte)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    idat = data.index(b"IDAT")
    n = struct.unpack(">I", data[idat - 4:idat])[0]
    assert len(zlib.decompress(data[idat + 4:idat + 4 + n])) == h * (1 + 3 * w)
    return w, h


def test_thumbnails_and_png_writer(tmp_path):
    from probret.engine.thumbnails import png_bytes, thumbnail
    from probret.train.world import encode_mp4

    frames = np.zeros((8, 240, 320, 3), np.uint8)
    frames[4:, :, :, 0] = 200  # red from 1 s on
    encode_mp4(tmp_path / "v.mp4", frames, 4)
    early, late = thumbnail(tmp_path / "v.mp4", 0.2), thumbnail(tmp_path / "v.mp4", 1.6)
    assert early.shape == late.shape == (160, 213, 3)
    assert early[..., 0].mean() < 30 and late[..., 0].mean() > 170
    data = png_bytes(late)
    assert _png_size(data) == (213, 160)
    raw = zlib.decompress(data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8])
    rows = np.frombuffer(raw, np.uint8).reshape(160, 1 + 213 * 3)
    assert (rows[:, 0] == 0).all() and np.array_equal(rows[:, 1:].reshape(160, 213, 3), late)
