"""PyTorch datasets over a ``RetrievalSplit``: training pairs and evaluation videos.

Frames are decoded with the engine's decoder (the same code the search runtime uses) and
preprocessed with the engine's numpy preprocessing, so a model sees exactly the pixels at
training time that it will see when deployed.

Training iterates over every (caption, video) pair of the split, as X-Pool and T-MASS do on
MSRVTT (all 20 captions of each of the 9k videos per epoch). Two captions of the same video may
meet in one batch and then count as each other's negatives; like the reference code we accept
that (it is rare at batch 32 over thousands of videos).

A video that fails to decode during training is reported once (warning) and replaced by the
next pair, so one broken file does not stop a five-epoch run.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from probret.engine.errors import DataError, VideoDecodeError
from probret.engine.preprocess import preprocess_frames
from probret.engine.video import sample_frames
from probret.train.datasets import RetrievalSplit, VideoRecord


class _FrameLoader:
    def __init__(self, num_frames: int, image_size: int, mean, std):
        self.num_frames = num_frames
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    def load(self, record: VideoRecord, *, mode: str, rng: np.random.Generator | None) -> np.ndarray:
        sampled = sample_frames(
            record.path, self.num_frames, mode=mode, rng=rng, start=record.start, end=record.end
        )
        return preprocess_frames(sampled.frames, size=self.image_size, mean=self.mean, std=self.std)


class TrainPairs(Dataset):
    """Item i: (caption text, pixels (T', 3, H, W) float32) for the i-th caption of the split."""

    def __init__(self, split: RetrievalSplit, *, num_frames: int, image_size: int, mean, std,
                 sampling: str = "random", seed: int = 0):
        self.split = split
        self.loader = _FrameLoader(num_frames, image_size, mean, std)
        self.sampling = sampling
        self.seed = seed
        self.epoch = 0
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.split.texts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            record = self.split.videos[int(self.split.text_video_index[i])]
            rng = np.random.default_rng((self.seed, self.epoch, i))
            try:
                pixels = self.loader.load(record, mode=self.sampling, rng=rng)
            except VideoDecodeError as exc:
                if record.path not in self._reported:
                    self._reported.add(str(record.path))
                    warnings.warn(f"skipping undecodable training video: {exc}", stacklevel=2)
                continue
            return self.split.texts[i], torch.from_numpy(pixels)
        raise DataError(f"{self.split.name}/{self.split.split}: no video of the training split could be decoded")


class EvalVideos(Dataset):
    """Item j: (pixels (T', 3, H, W), ok flag) for the j-th video, uniformly sampled.

    A video that cannot be decoded yields zeros and ok=False; the evaluator reports it and
    it still occupies its column, so metrics keep counting it as a (failed) candidate instead
    of silently shrinking the gallery."""

    def __init__(self, split: RetrievalSplit, *, num_frames: int, image_size: int, mean, std):
        self.split = split
        self.loader = _FrameLoader(num_frames, image_size, mean, std)

    def __len__(self) -> int:
        return len(self.split.videos)

    def __getitem__(self, index: int):
        record = self.split.videos[index]
        try:
            pixels = self.loader.load(record, mode="uniform", rng=None)
            return torch.from_numpy(pixels), True, ""
        except VideoDecodeError as exc:
            size = self.loader.image_size
            return torch.zeros(self.loader.num_frames, 3, size, size), False, str(exc)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start part-way, so a resumed run sees exactly
    the batches it would have seen without the interruption. Under DDP each rank takes every
    world_size-th index of the same permutation (padded to equal length)."""

    def __init__(self, length: int, *, seed: int, rank: int = 0, world_size: int = 1):
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        per_rank = -(-self.length // self.world_size)
        order += order[: per_rank * self.world_size - self.length]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return -(-self.length // self.world_size) - self.start
