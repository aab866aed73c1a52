"""Shared fixtures of the export tests: tiny random checkpoints (test-vit-tiny, 4 frames) and
bundles exported from them once per session."""

from __future__ import annotations

import pytest
import torch

#: Small retrieval benchmark: enough to exercise the gate, fast on two shared cores.
BENCH_VIDEOS = 8


def make_checkpoint(path, method: str, *, seed: int = 0, **head):
    """A random-initialised model whose head weights are perturbed off their identity init (so a
    wrong restructuring cannot hide behind identity matrices), saved as a checkpoint."""
    from probret.train.checkpoint import save_checkpoint
    from probret.train.config import ModelConfig
    from probret.train.model import RetrievalModel

    torch.manual_seed(seed)
    model = RetrievalModel.from_config(ModelConfig(backbone="test-vit-tiny", pretrained=None, method=method,
                                                   num_frames=4, head=head))
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cache = {}

    def get(method: str, **head):
        key = (method, tuple(sorted(head.items())))
        if key not in cache:
            name = method + "".join(f"-{k}={v}" for k, v in key[1])
            cache[key] = make_checkpoint(root / name, method, **head)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, checkpoints):
    """bundles(method, sampling="noise-input", seed=0, samples=None) -> ExportResult (exported once)."""
    from probret.export.exporter import ExportOptions, export_checkpoint

    root = tmp_path_factory.mktemp("bundles")
    cache = {}

    def get(method: str, sampling: str = "noise-input", seed: int = 0, samples: int | None = None):
        key = (method, sampling, seed, samples)
        if key not in cache:
            out = root / f"{method}-{sampling}-{seed}-{samples}"
            cache[key] = export_checkpoint(checkpoints(method), out, ExportOptions(
                sampling=sampling, seed=seed, samples=samples, benchmark_videos=BENCH_VIDEOS))
        return cache[key]

    return get
