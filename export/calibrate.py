"""Fit the bundle's confidence calibrator on a validation split (ExportOptions.calibrate).

``probret-export CKPT --out B --calibrate DATA [--calibrate-split val]`` sets it; the exporter calls
``calibration_for_export`` when the option is set.

The checkpoint scores the split with PyTorch (``train.evaluate``, the same scores the bundle's
graphs reproduce; export/parity.py checks that they rank the same), and
``engine.calibration.fit_on_scores`` picks and fits the calibrator. The result is the JSON dict the
manifest stores under ``calibration`` and the engine applies per hit.

Rules:
  * never the test split: a calibrator fitted there would make the reported test ECE a training
    number; ``split="test"`` is refused;
  * the relevance labels are the split's match sets (the procedural world gives them); a dataset
    without match sets uses each caption's own video;
  * the domain (dataset, split, gallery size, queries; for a procedural world also the world's seed,
    size, resolution and difficulty) goes into the dict, so a search on a very different gallery can
    say that the probabilities were fitted elsewhere;
  * ``gallery_size`` cuts the split into galleries of that many videos (consecutive in the split's
    order, the remainder dropped), each query ranked only against its own video's gallery: a
    confidence is a probability for a gallery of one size (engine/calibration.fit_on_galleries).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from probret.engine.calibration import DEFAULT_TOP_K, fit_on_galleries
from probret.engine.errors import DataError

REFUSED_SPLITS = ("test",)


def galleries_of(sims, text_video_index, relevant, uncertainty, size: int | None) -> list[tuple]:
    """The scored split cut into galleries of ``size`` videos (module docstring): a list of
    (sims, relevant, uncertainty) with columns and match sets renumbered inside each gallery.
    ``size`` None: the whole split is one gallery."""
    n_video = sims.shape[1]
    if size is None or size >= n_video:
        return [(sims, relevant, uncertainty)]
    if size < 2:
        raise DataError(f"calibration gallery size must be at least 2 videos, got {size}")
    index = np.asarray(text_video_index)
    out = []
    for lo in range(0, n_video - size + 1, size):
        rows = np.flatnonzero((index >= lo) & (index < lo + size))
        cols = slice(lo, lo + size)
        rel = [[j - lo for j in relevant[i] if lo <= j < lo + size] for i in rows]
        out.append((sims[rows][:, cols], rel, None if uncertainty is None else uncertainty[rows][:, cols]))
    return out


def _world_domain(data_root: Path) -> dict:
    """The settings a procedural world was generated with (what another world must share for the
    probabilities to carry over); {} for other datasets."""
    try:
        settings = json.loads((Path(data_root) / "world.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return {}
    difficulty = settings.get("difficulty")
    return {"world": {"seed": settings.get("seed"), "videos": settings.get("videos"),
                      "resolution": settings.get("resolution"), "frames": settings.get("frames"),
                      "difficulty": difficulty.get("name") if isinstance(difficulty, dict) else difficulty}}


def fit_calibration(checkpoint: str | Path, data_root: str | Path, *, dataset: str = "procedural",
                    split: str = "val", top_k: int = DEFAULT_TOP_K, seed: int = 0, device: str = "cpu",
                    model=None, gallery_size: int | None = None) -> dict:
    """Score ``split`` of ``dataset`` at ``data_root`` with the checkpoint (or an already loaded
    ``model``) and return the fitted calibrator's manifest dict (``Calibrator.to_dict``), with the
    cross-fitted report of every candidate under ``candidates``. ``gallery_size``: fit on galleries
    of that many videos (module docstring); None: the whole split is one gallery."""
    if split in REFUSED_SPLITS:
        raise DataError(f"calibration split {split!r}: a calibrator is never fitted on the test split; use val")
    from probret.train.checkpoint import load_checkpoint
    from probret.train.datasets import load_split
    from probret.train.evaluate import evaluate

    if model is None:
        model, _ = load_checkpoint(checkpoint, device=device)
    data = load_split(dataset, data_root, split)
    if len(data.texts) < 4 or len(data.videos) < 2:
        raise DataError(f"{dataset}/{split} at {data_root} has {len(data.texts)} captions and {len(data.videos)} "
                        f"videos; calibration needs at least 4 captions and 2 videos")
    result = evaluate(model, data, seed=seed, device=device)
    relevant = data.relevant if data.relevant is not None else [[int(j)] for j in data.text_video_index]
    galleries = galleries_of(result.sims, data.text_video_index, relevant, result.uncertainty, gallery_size)
    domain = {"dataset": dataset, "split": split, **(_world_domain(data_root) if dataset == "procedural" else {})}
    calibrator, report = fit_on_galleries(galleries, top_k=top_k, domain=domain)
    out = calibrator.to_dict()
    # JSON has no NaN: an AUROC is undefined when every top-1 hit of the split is right (or wrong)
    out["candidates"] = {name: {k: round(float(v), 5) if math.isfinite(v) else None for k, v in row.items()}
                         for name, row in report.items()}
    return out


def calibration_for_export(model, checkpoint: str | Path, options, say=lambda msg: None) -> dict | None:
    """The exporter's one call: the calibration dict when ``options.calibrate`` names a dataset root
    (``options.calibrate_split``, default val; ``options.calibrate_dataset``, default procedural;
    ``options.calibrate_gallery``, default the whole split), else None (the bundle then carries no calibration and search reports no confidence)."""
    root = getattr(options, "calibrate", None)
    if not root:
        return None
    split = getattr(options, "calibrate_split", None) or "val"
    dataset = getattr(options, "calibrate_dataset", None) or "procedural"
    gallery = getattr(options, "calibrate_gallery", None)
    say(f"fitting the confidence calibrator on {dataset}/{split} at {root}"
        + (f" in galleries of {gallery} videos" if gallery else ""))
    return fit_calibration(checkpoint, root, dataset=dataset, split=split, model=model, gallery_size=gallery)
