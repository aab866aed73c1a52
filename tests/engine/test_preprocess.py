"""engine/preprocess.py: Pillow-exact resize and open_clip parity.

The parity tests import PIL / torch / open_clip (test-only dependencies; the engine itself
never does) and skip when they are missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from probret.engine.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop_box,
    preprocess_frames,
    resize_frames_uint8,
)

# (h, w) chosen to hit the awkward cases: downscale by non-integer factors, upscale, square,
# already-at-size short side, portrait, and a crop offset of x.5 (torchvision rounds half to
# even: (297 - 224) / 2 = 36.5 -> 36).
SHAPES = [(48, 64), (240, 320), (240, 319), (360, 640), (224, 224), (224, 300), (300, 200),
          (7, 5), (481, 853), (1080, 1920)]


def frames_for(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Two frames: white noise (worst case for a resampler) and a smooth gradient with a
    sharp-edged box (typical content)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                       (xx + yy) * 255 // max(w + h - 2, 1)], axis=-1).astype(np.uint8)
    smooth[h // 4:h // 2, w // 4:w // 2] = (250, 20, 40)
    return np.stack([noise, smooth])


def test_constants_are_openai_clip():
    open_clip = pytest.importorskip("open_clip")
    assert CLIP_MEAN == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert CLIP_STD == pytest.approx(open_clip.OPENAI_DATASET_STD)


@pytest.mark.parametrize("h, w", SHAPES)
def test_resize_is_pillow_exact(h, w):
    Image = pytest.importorskip("PIL.Image")
    frames = frames_for(h, w)
    ours = resize_frames_uint8(frames, size=224)
    out_w, out_h = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
    assert ours.shape == (2, out_h, out_w, 3)
    ref = np.stack([np.asarray(Image.fromarray(f).resize((out_w, out_h), Image.BICUBIC))
                    for f in frames])
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("h, w", SHAPES)
def test_matches_open_clip_eval_transform(h, w):
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    Image = pytest.importorskip("PIL.Image")
    frames = frames_for(h, w, seed=h * 7 + w)
    transform = open_clip.image_transform(224, is_train=False)
    ref = torch.stack([transform(Image.fromarray(f)) for f in frames]).numpy()
    ours = preprocess_frames(frames, size=224, mean=CLIP_MEAN, std=CLIP_STD)
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
    # Same uint8 pixels, same float32 ops in the same order: identical up to float rounding.
    assert np.abs(ours - ref).max() <= 1e-6


def test_other_sizes_and_normalisation():
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    Image = pytest.importorskip("PIL.Image")
    frames = frames_for(120, 160)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    for size in (32, 96, 257):
        transform = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
        ref = torch.stack([transform(Image.fromarray(f)) for f in frames]).numpy()
        ours = preprocess_frames(frames, size=size, mean=mean, std=std)
        assert ours.shape == (2, 3, size, size)
        assert np.abs(ours - ref).max() <= 1e-6


def test_identity_normalisation_gives_cropped_pixels():
    frames = frames_for(224, 300)  # short side already 224: no resize, crop only
    out = preprocess_frames(frames, size=224, mean=(0, 0, 0), std=(1, 1, 1))
    left, top = center_crop_box(300, 224, 224)
    expected = frames[:, top:top + 224, left:left + 224].transpose(0, 3, 1, 2) / np.float32(255)
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_center_crop_rounds_half_to_even_like_torchvision():
    assert center_crop_box(297, 224, 224) == (36, 0)  # 36.5 -> 36
    assert center_crop_box(299, 224, 224) == (38, 0)  # 37.5 -> 38
    assert center_crop_box(224, 298, 224) == (0, 37)


def test_crop_only_path_equals_full_resize_then_crop():
    frames = frames_for(360, 640)
    full = resize_frames_uint8(frames, size=224)
    left, top = center_crop_box(full.shape[2], full.shape[1], 224)
    expected = full[:, top:top + 224, left:left + 224]
    out = preprocess_frames(frames, size=224, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), expected.transpose(0, 3, 1, 2))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 4), np.uint8)],
)
def test_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        preprocess_frames(bad, size=4)


def test_rejects_bad_size_and_stats():
    frames = frames_for(8, 8)
    with pytest.raises(ValueError):
        preprocess_frames(frames, size=0)
    with pytest.raises(ValueError):
        preprocess_frames(frames, size=4, mean=(0.5, 0.5), std=(1, 1, 1))
    with pytest.raises(ValueError):
        resize_frames_uint8(frames, size=0)
