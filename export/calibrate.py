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
  * the domain (dataset, split, gallery size, queries) goes into the dict, so a search on a very
    different gallery can say that the probabilities were fitted elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path

from probret.engine.calibration import DEFAULT_TOP_K, fit_on_scores
from probret.engine.errors import DataError

REFUSED_SPLITS = ("test",)


def fit_calibration(checkpoint: str | Path, data_root: str | Path, *, dataset: str = "procedural",
                    split: str = "val", top_k: int = DEFAULT_TOP_K, seed: int = 0, device: str = "cpu",
                    model=None) -> dict:
    """Score ``split`` of ``dataset`` at ``data_root`` with the checkpoint (or an already loaded
    ``model``) and return the fitted calibrator's manifest dict (``Calibrator.to_dict``), with the
    cross-fitted report of every candidate under ``candidates``."""
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
    calibrator, report = fit_on_scores(result.sims, relevant, result.uncertainty, top_k=top_k,
                                       domain={"dataset": dataset, "split": split})
    out = calibrator.to_dict()
    # JSON has no NaN: an AUROC is undefined when every top-1 hit of the split is right (or wrong)
    out["candidates"] = {name: {k: round(float(v), 5) if math.isfinite(v) else None for k, v in row.items()}
                         for name, row in report.items()}
    return out


def calibration_for_export(model, checkpoint: str | Path, options, say=lambda msg: None) -> dict | None:
    """The exporter's one call: the calibration dict when ``options.calibrate`` names a dataset root
    (``options.calibrate_split``, default val; ``options.calibrate_dataset``, default procedural),
    else None (the bundle then carries no calibration and search reports no confidence)."""
    root = getattr(options, "calibrate", None)
    if not root:
        return None
    split = getattr(options, "calibrate_split", None) or "val"
    dataset = getattr(options, "calibrate_dataset", None) or "procedural"
    say(f"fitting the confidence calibrator on {dataset}/{split} at {root}")
    return fit_calibration(checkpoint, root, dataset=dataset, split=split, model=model)
