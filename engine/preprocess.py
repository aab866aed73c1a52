"""CLIP image preprocessing in numpy, bit-exact with open_clip's eval transform.

open_clip evaluates images with ``Resize(size, bicubic) -> CenterCrop(size) -> ToTensor ->
Normalize(mean, std)``, where torchvision's ``Resize`` on a PIL image calls Pillow's
``Image.resize(..., BICUBIC)``. A model trained through that pipeline sees Pillow's pixels, so
the deployed engine must produce the same pixels, without importing PIL or torch (neither is
an engine dependency).

This module therefore re-implements Pillow's resampler (``libImaging/Resample.c``) in numpy:
the same antialiased bicubic kernel (a = -0.5, support scaled by the downscale factor), the
same 22-bit fixed-point coefficients, the same horizontal-then-vertical passes with rounding
to uint8 between them. The result equals Pillow's byte for byte; after normalisation the max
abs difference to open_clip's tensors is float32 rounding only (< 1e-6, measured in
tests/engine/test_preprocess.py). FFmpeg's swscale bicubic (the ``size=`` option of
``sample_frames``) is faster but is a different filter, ~0.1 max abs after normalisation;
see docs/decoding.md.

Only the output pixels that survive the center crop are computed, which makes the common
16:9 -> 224x224 case ~40 % cheaper than resizing the whole frame first. The passes run one
frame at a time into preallocated buffers (the int32 accumulator stays in cache): 2.2x faster
than whole-clip passes for 12 frames of 320x240 -> 224 (59 -> 27 ms), 2x at 1280x720 and
1920x1080, same bytes (measured when the change was made; bench/indexing.py times this stage).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "preprocess_frames",
    "resize_frames_uint8",
    "center_crop_box",
]

#: OpenAI CLIP's normalisation constants (open_clip ``OPENAI_DATASET_MEAN`` / ``_STD``).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (Keys, a = -0.5)."""
    a = -0.5
    x = np.abs(x)
    out = np.zeros_like(x)
    m1 = x < 1.0
    m2 = (x >= 1.0) & (x < 2.0)
    out[m1] = ((a + 2.0) * x[m1] - (a + 3.0)) * x[m1] * x[m1] + 1.0
    out[m2] = (((x[m2] - 5.0) * x[m2] + 8.0) * x[m2] - 4.0) * a
    return out


def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for one axis.

    Returns ``(index, weight)``, both (out_size, K): source index of each tap (clamped, with
    zero weight on padding taps) and its int32 fixed-point weight.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale  # bicubic support is 2, widened when downscaling (antialias)
    ksize = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # C casts truncate toward zero; the operands are >= -0.5 + small, so trunc == Pillow's.
    xmin = np.trunc(centers - support + 0.5).astype(np.int64)
    xmin = np.maximum(xmin, 0)
    xmax = np.trunc(centers + support + 0.5).astype(np.int64)
    xmax = np.minimum(xmax, in_size) - xmin  # number of taps
    taps = np.arange(ksize)[None, :]
    valid = taps < xmax[:, None]
    x = (taps + xmin[:, None] - centers[:, None] + 0.5) / filterscale
    w = np.where(valid, _bicubic(x), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=w.copy(), where=total != 0.0)
    scaled = w * (1 << _PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    index = np.minimum(taps + xmin[:, None], in_size - 1)
    return index, fixed


def _accumulate(src: np.ndarray, index: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """out[o] = clip8(sum_k src[index[o, k]] * weight[o, k]) along axis 0, Pillow's rounding:
    int32 accumulator started at 1 << (PRECISION_BITS - 1), then >> PRECISION_BITS.

    ``src`` is one frame with the resampled axis first (so every tap gathers whole contiguous
    rows, a memcpy each), uint8; ``out`` receives the uint8 result. Working one frame at a time
    with preallocated buffers keeps the int32 accumulator in cache and avoids a temporary per
    tap (2.6x faster than whole-clip passes at 320x240 -> 224, 3x at 1280x720; measured by
    bench/indexing.py's preprocess stage); a tap whose weight is zero for most outputs (the
    last tap of a window that is not always full) is applied to the outputs that use it only.
    The integer arithmetic is unchanged, so the result stays Pillow's byte for byte.
    """
    n_out = index.shape[0]
    shape = (n_out,) + src.shape[1:]
    bshape = (-1,) + (1,) * (src.ndim - 1)
    acc = np.full(shape, 1 << (_PRECISION_BITS - 1), np.int32)
    gathered = np.empty(shape, np.uint8)
    prod = np.empty(shape, np.int32)
    for k in range(index.shape[1]):
        w = weight[:, k]
        used = np.flatnonzero(w)
        if used.size == 0:
            continue
        if used.size * 2 < n_out:  # a sparse tap: only the outputs that use it
            acc[used] += src[index[used, k]] * w[used].reshape(bshape)
            continue
        np.take(src, index[:, k], axis=0, out=gathered)
        np.multiply(gathered, w.reshape(bshape), out=prod)
        acc += prod
    acc >>= _PRECISION_BITS
    np.clip(acc, 0, 255, out=acc)
    out[...] = acc


def _resize_uint8(frames: np.ndarray, out_w: int, out_h: int,
                  keep_x: slice | None = None, keep_y: slice | None = None) -> np.ndarray:
    """Pillow-exact bicubic resize of (T, H, W, C) uint8; horizontal pass first, as Pillow.

    ``keep_x`` / ``keep_y`` restrict the output to a sub-rectangle of the full resize (a crop)
    without changing any kept pixel. Frame by frame: see :func:`_accumulate`.
    """
    t, h, w, c = frames.shape
    need_h = out_w != w
    need_v = out_h != h
    first, last = 0, h
    if need_v:
        # Pillow first resizes only the rows the vertical pass will read; same here, and we
        # only need the rows feeding the kept output rows.
        v_index, v_weight = _coefficients(h, out_h)
        if keep_y is not None:
            v_index, v_weight = v_index[keep_y], v_weight[keep_y]
        first, last = int(v_index.min()), int(v_index.max()) + 1
        v_index = v_index - first
    if need_h:
        h_index, h_weight = _coefficients(w, out_w)
        if keep_x is not None:
            h_index, h_weight = h_index[keep_x], h_weight[keep_x]
        nx = h_index.shape[0]
    else:
        cols = np.arange(w)[keep_x] if keep_x is not None else np.arange(w)
        nx = cols.size
    ny = v_index.shape[0] if need_v else len(range(h)[keep_y] if keep_y is not None else range(h))
    out = np.empty((t, ny, nx, c), np.uint8)
    mid = np.empty((nx, last - first, c), np.uint8)  # one frame after the horizontal pass, transposed
    for i in range(t):
        frame = frames[i, first:last]  # (H', W, C)
        if need_h:
            _accumulate(np.ascontiguousarray(frame.transpose(1, 0, 2)), h_index, h_weight, mid)
            rows = mid.transpose(1, 0, 2)  # (H', nx, C) view
        else:
            rows = frame[:, cols]
        if need_v:
            _accumulate(np.ascontiguousarray(rows), v_index, v_weight, out[i])
        else:
            out[i] = rows[keep_y] if keep_y is not None else rows
    return out


def _short_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)`` output size: short side = size, long side truncated."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def center_crop_box(w: int, h: int, size: int) -> tuple[int, int]:
    """(left, top) of torchvision's ``CenterCrop(size)``: Python's round-half-to-even."""
    return int(round((w - size) / 2.0)), int(round((h - size) / 2.0))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    return frames


def resize_frames_uint8(frames: np.ndarray, *, size: int) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 so the short side is ``size``: Pillow-exact bicubic.

    Same pixels as ``torchvision.transforms.Resize(size)`` on the PIL image of each frame.
    """
    frames = _check_frames(frames)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    _, h, w, _ = frames.shape
    out_w, out_h = _short_side_size(w, h, size)
    return _resize_uint8(frames, out_w, out_h)


def preprocess_frames(
    frames: np.ndarray,
    *,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB frames -> float32 (T, 3, size, size) model input.

    Resize the short side to ``size`` (Pillow-exact bicubic, antialiased when shrinking),
    center crop ``size`` x ``size``, scale to [0, 1], subtract ``mean`` and divide by ``std``
    per channel: open_clip's ``image_transform(size, is_train=False)``. Frames smaller than
    ``size`` are upscaled (open_clip does the same), so the crop never needs padding.
    """
    frames = _check_frames(frames)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    if mean_a.size != 3 or std_a.size != 3:
        raise ValueError("mean and std must have 3 values (R, G, B)")
    _, h, w, _ = frames.shape
    out_w, out_h = _short_side_size(w, h, size)
    left, top = center_crop_box(out_w, out_h, size)
    if (out_w, out_h) == (w, h):
        # torchvision returns the image untouched when it already has the target size.
        cropped = frames[:, top:top + size, left:left + size]
    else:
        cropped = _resize_uint8(frames, out_w, out_h,
                                keep_x=slice(left, left + size), keep_y=slice(top, top + size))
    x = cropped.transpose(0, 3, 1, 2).astype(np.float32)
    # ToTensor divides by 255 in float32 before Normalize: same order, same rounding.
    x /= np.float32(255.0)
    x -= mean_a
    x /= std_a
    return np.ascontiguousarray(x)
