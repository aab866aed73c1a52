"""Fixtures every test folder shares."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def make_spem_bundle():
    """``make(root, *, seed, jitter=False, **export_options) -> (checkpoint dir, bundle dir)``: a
    random tiny SPEM (test-vit-tiny, 4 frames) saved under ``root/ckpt`` and exported to
    ``root/bundle``. ``jitter`` adds 0.1 N(0, 1) to every head parameter, so the heads' learned
    modulators are not at their initial, symmetric values. Skips when torch is not installed."""
    torch = pytest.importorskip("torch")
    from probret.export.exporter import ExportOptions, export_checkpoint
    from probret.train.checkpoint import save_checkpoint
    from probret.train.config import ModelConfig
    from probret.train.model import RetrievalModel

    def make(root: Path, *, seed: int, jitter: bool = False, **export_options) -> tuple[Path, Path]:
        torch.manual_seed(seed)
        model = RetrievalModel.from_config(ModelConfig(backbone="test-vit-tiny", pretrained=None, method="spem",
                                                       num_frames=4))
        if jitter:
            with torch.no_grad():
                for p in model.head.parameters():
                    p.add_(0.1 * torch.randn_like(p))
        ckpt = save_checkpoint(root / "ckpt", model)
        export_checkpoint(ckpt, root / "bundle", ExportOptions(**export_options))
        return ckpt, root / "bundle"

    return make


@pytest.fixture(scope="session", autouse=True)
def _private_probret_cache(tmp_path_factory):
    """Tests never write the user's ~/.cache/probret (exported bundles, ORT's optimised graphs,
    the tokenizer cache): PROBRET_CACHE points into pytest's tmp unless the caller set it."""
    import os

    if "PROBRET_CACHE" in os.environ:
        yield
        return
    os.environ["PROBRET_CACHE"] = str(tmp_path_factory.mktemp("probret-cache"))
    try:
        yield
    finally:
        os.environ.pop("PROBRET_CACHE", None)
