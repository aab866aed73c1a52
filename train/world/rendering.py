"""Pixels: anti-aliased shapes over textured (optionally scrolling) backgrounds, plus grain."""

from __future__ import annotations

import math

import numpy as np

from .difficulty import Difficulty
from .motion import object_track
from .specs import ObjectSpec, VideoSpec


_SUB = np.array([-0.25, 0.25])  # 2x2 supersampling offsets: anti-aliased edges survive resizing


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u, v: coordinates in the object's frame, in units of its radius, v pointing up."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.86
    if shape == "triangle":  # equilateral, circumradius 1.25, apex up
        rho = 0.625
        return (v >= -rho) & (0.8660254 * u + 0.5 * v <= rho) & (-0.8660254 * u + 0.5 * v <= rho)
    if shape == "star":  # five points, outer radius 1.25, inner 0.55
        ro, ri, half = 1.25, 0.55, math.pi / 5
        theta = np.arctan2(v, u) - math.pi / 2
        t = np.mod(theta, 2 * half)
        phi = np.abs(t - half)  # 0 at an outer point, half at an inner point
        phi = half - phi
        bound = ri * ro * math.sin(half) / (ri * np.sin(phi) + ro * np.sin(half - phi))
        return u * u + v * v <= bound * bound
    if shape == "cross":
        au, av_ = np.abs(u), np.abs(v)
        return ((au <= 1.05) & (av_ <= 0.36)) | ((av_ <= 1.05) & (au <= 0.36))
    raise ValueError(shape)


def _coverage(shape: str, cx: float, cy: float, r: float, angle: float, width: int, height: int):
    """Anti-aliased coverage of a shape: (y0, y1, x0, x1, mask float32) or None if off-screen."""
    ext = 1.3 * r + 1
    x0, x1 = max(int(math.floor(cx - ext)), 0), min(int(math.ceil(cx + ext)), width)
    y0, y1 = max(int(math.floor(cy - ext)), 0), min(int(math.ceil(cy + ext)), height)
    if x1 <= x0 or y1 <= y0 or r <= 0:
        return None
    xs = np.arange(x0, x1) + 0.5
    ys = np.arange(y0, y1) + 0.5
    # sub-samples on the leading axes, so averaging them adds contiguous planes (fast)
    px = (xs[None, None, None, :] + _SUB[None, :, None, None]) - cx  # (1, 2, 1, W)
    py = (ys[None, None, :, None] + _SUB[:, None, None, None]) - cy  # (2, 1, H, 1)
    c, s = math.cos(angle), math.sin(angle)
    u = (c * px + s * py) / r
    v = (s * px - c * py) / r  # image y points down; v points up
    inside = _shape_inside(shape, u, v).reshape(4, y1 - y0, x1 - x0)  # (2, 2, H, W) -> (4, H, W)
    mask = (inside[0].astype(np.float32) + inside[1] + inside[2] + inside[3]) * np.float32(0.25)
    return y0, y1, x0, x1, mask


def _background(v: VideoSpec, width: int, height: int, contrast: float, rng: np.random.Generator,
                shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Background (H, W, 3) float32. ``shift`` moves the periodic textures (background_motion)
    by recomputing them on shifted coordinates, which wraps seamlessly at any angle."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx += np.float32(shift[0])
    yy += np.float32(shift[1])
    c0 = np.array(v.bg_colors[0], dtype=np.float32)
    c1 = np.array(v.bg_colors[1], dtype=np.float32)
    period = v.bg_period
    ca, sa = math.cos(v.bg_angle), math.sin(v.bg_angle)
    if v.background == "striped":
        t = ((xx * ca + yy * sa) / period + v.bg_phase[0]) % 1.0
        w = (t < 0.5).astype(np.float32)
    elif v.background == "checkered":
        w = (((np.floor(xx / period + v.bg_phase[0]) + np.floor(yy / period + v.bg_phase[1])) % 2) == 0).astype(np.float32)
    elif v.background == "gradient":
        t = xx * ca + yy * sa
        w = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif v.background == "noisy":  # smooth value noise (bilinear upsampling of a coarse grid) + grain
        cell = max(period / 2.0, 2.0)
        gh, gw = int(height / cell) + 2, int(width / cell) + 2
        grid = rng.random((gh, gw)).astype(np.float32)
        fy, fx = yy / cell, xx / cell
        iy, ix = fy.astype(int), fx.astype(int)
        ty, tx = fy - iy, fx - ix
        w = (grid[iy, ix] * (1 - tx) * (1 - ty) + grid[iy, ix + 1] * tx * (1 - ty)
             + grid[iy + 1, ix] * (1 - tx) * ty + grid[iy + 1, ix + 1] * tx * ty)
        w = 0.75 * w + 0.25 * rng.random((height, width)).astype(np.float32)
    elif v.background == "dotted":
        gx = ((xx / period + v.bg_phase[0]) % 1.0) - 0.5
        gy = ((yy / period + v.bg_phase[1]) % 1.0) - 0.5
        w = np.clip((0.22 - np.sqrt(gx * gx + gy * gy)) * period, 0.0, 1.0).astype(np.float32)
    else:  # pragma: no cover - guarded by BACKGROUNDS
        raise ValueError(v.background)
    mid = (c0 + c1) / 2
    lo = mid + (c0 - mid) * contrast
    hi = mid + (c1 - mid) * contrast
    out = lo[None, None, :] * (1 - w[..., None]) + hi[None, None, :] * w[..., None]
    return np.clip(out, 0, 255).astype(np.float32)


def render_video(v: VideoSpec, *, width: int, height: int, frames: int, difficulty: Difficulty,
                 seed: int) -> np.ndarray:
    """Pixels of one video, uint8 (F, H, W, 3) RGB. Deterministic in (spec, seed): the pixel
    noise has its own generator seeded by (seed, video index), independent of the scene draw."""
    rng = np.random.default_rng([seed, v.index, 1])
    d = difficulty
    scrolling = d.background_motion > 0 and v.background in ("striped", "checkered", "dotted")
    canvas = _background(v, width, height, d.background_contrast, rng)
    dx, dy = math.cos(v.bg_angle + 0.6), math.sin(v.bg_angle + 0.6)
    tracks = [
        object_track(o, [e for e in v.events if e.actor == k], frames, width, height, d.object_scale)
        for k, o in enumerate(v.objects)
    ]
    for k, o in enumerate(v.objects):
        if o.visible is not None:  # off screen outside its span (long videos)
            first, last = o.visible
            tracks[k][:first, 4] = 0.0
            tracks[k][last:, 4] = 0.0
    order = sorted(range(len(v.objects)), key=lambda k: v.objects[k].role == "actor")  # distractors behind
    cache: dict[int, tuple] = {}

    def paint_distractors(layer):
        for k in order:
            if v.objects[k].role == "distractor":
                _paint(layer, v.objects[k], tracks[k][0], width, height, cache, k)

    if not scrolling:
        paint_distractors(canvas)  # static: painted once into the background
    video = np.empty((frames, height, width, 3), dtype=np.float32)
    for f in range(frames):
        frame = video[f]
        if scrolling:
            step = f * d.background_motion
            frame[...] = _background(v, width, height, d.background_contrast, rng, (step * dx, step * dy))
            paint_distractors(frame)
        else:
            frame[...] = canvas
        for k in order:
            if v.objects[k].role == "actor":
                _paint(frame, v.objects[k], tracks[k][f], width, height, cache, k)
    if d.pixel_noise > 0:
        # triangular noise (difference of two uniform bytes) with std pixel_noise: it looks the
        # same as Gaussian grain after x264 and costs a fifth of rng.standard_normal
        a = rng.integers(0, 256, video.shape, dtype=np.uint8).astype(np.float32)
        a -= rng.integers(0, 256, video.shape, dtype=np.uint8)
        video += a * np.float32(d.pixel_noise / 104.5)
    video += np.float32(0.5)
    np.clip(video, 0, 255, out=video)
    return video.astype(np.uint8)


def _paint(frame: np.ndarray, o: ObjectSpec, state: np.ndarray, width: int, height: int,
           cache: dict | None = None, key: int = -1) -> None:
    x, y, r, ang, alpha = (float(s) for s in state)
    if alpha <= 0:
        return
    sig = (round(x, 2), round(y, 2), round(r, 2), round(ang, 3))
    cov = None
    if cache is not None and key in cache and cache[key][0] == sig:
        cov = cache[key][1]
    if cov is None:
        cov = _coverage(o.shape, x, y, r, ang, width, height)
        if cache is not None:
            cache[key] = (sig, cov)
    if cov is None:
        return
    y0, y1, x0, x1, mask = cov
    a = (mask * np.float32(alpha))[..., None]
    col = np.asarray(o.rgb, dtype=np.float32)
    region = frame[y0:y1, x0:x1]
    region *= 1 - a
    region += a * col


