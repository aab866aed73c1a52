"""One fine-tuning run of quality protocol v2: a method fine-tuned from the shared backbone for one
seed, then evaluated once on the validation and the test split, keeping per-query results.

Used by bench/quality_v2.py (``run_keyed``); not a command of its own. This file, not the report
code in quality_v2.py, is what a fine-tuning run's key hashes (quality_v2.CODE_FILES), so the
report and the uncertainty analysis (quality_uncertainty.py) can change without throwing finished
runs away. Everything the report computes is therefore stored here, in result.json:

``queries.val`` and ``queries.test``, one entry per query in the split's order:

    hit1              probability that the top-1 video is in the match set (ties at random)
    rank              expected rank of the first matching video
    top1, margin      top-1 score and top1 - top2 margin
    uncertainty_top1  the head's uncertainty of its top-1 pair (None for heads without one)
    match_set_size    how many videos truly match the query

``queries.calibration`` (protocol section ``calibration``, setting 10 on): the same fields for the
calibration gallery, the first ``gallery`` videos of a second world's split, scored after val and
test; what the uncertainty analysis fits its calibrators on.

``queries.val`` (and ``queries.calibration``) also keep their top-k ranked hits (``topk_scores``,
``topk_uncertainty``, ``topk_relevant``; k = ``TOP_K``, engine.calibration.DEFAULT_TOP_K): what
``probret-export --calibrate`` fits its calibrator on, so the report can fit the product's
calibrator the same way. The test split keeps only top-1 signals: every calibrator is fitted on
the calibration gallery (settings 6-9: validation) and applied to test's top-1 hit, which needs
the top two scores and nothing more.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import quality_pretrain as qp
import quality_stats as qs

#: ranked hits kept per validation query; engine.calibration.DEFAULT_TOP_K, written out so the run
#: key does not depend on the engine's default (the analysis checks that they agree)
TOP_K = 10


def _train(protocol: dict, job: dict, schedule: dict):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from probret.train.checkpoint import load_checkpoint
    from probret.train.config import ExperimentConfig, apply_overrides
    from probret.train.trainer import train

    config = apply_overrides(ExperimentConfig(), qp.overrides(protocol, job, schedule))
    started = time.process_time()
    result = train(config, progress=False)
    model, _ = load_checkpoint(Path(job["dir"]) / "train" / "last")  # fixed schedule: the last step
    return model, result, time.process_time() - started


def query_records(sims: np.ndarray, relevant: list[list[int]], uncertainty: np.ndarray | None,
                  top_k: int | None = None) -> dict:
    """The per-query fields (module docstring) of one scored split; with ``top_k`` its ranked hits too."""
    scores = qs.per_query(sims, relevant)
    extra = qs.margins(sims)
    unc = None
    if uncertainty is not None:
        unc = uncertainty[np.arange(len(sims)), sims.argmax(1)].tolist()
    out = {"hit1": scores["hit1"].tolist(), "rank": scores["rank"].tolist(), "top1": extra["top1"].tolist(),
           "margin": extra["margin"].tolist(), "uncertainty_top1": unc,
           "match_set_size": [len(r) for r in relevant]}
    if top_k is not None:
        # engine.calibration.ranked_hits' order (stable, best first), done here so that the run key
        # need not hash engine/calibration.py, which the product side keeps changing
        cols = np.argsort(-sims, axis=1, kind="stable")[:, :top_k]
        out["topk_scores"] = np.take_along_axis(sims, cols, 1).tolist()
        out["topk_uncertainty"] = None if uncertainty is None else np.take_along_axis(uncertainty, cols, 1).tolist()
        out["topk_relevant"] = [[c in set(rel) for c in row] for row, rel in zip(cols.tolist(), relevant)]
    return out


def first_videos(data, n: int):
    """The gallery of ``data``'s first ``n`` videos: their texts, and match sets cut to them, as
    if the split held those videos alone (the calibration gallery; the split's order is the
    generator's, a random draw of its videos)."""
    from probret.train.datasets import RetrievalSplit

    if n > len(data.videos):
        raise SystemExit(f"{data.name}/{data.split}: a gallery of {n} videos asked of a split of {len(data.videos)}")
    keep = np.flatnonzero(data.text_video_index < n)
    relevant = None if data.relevant is None else [[j for j in data.relevant[i] if j < n] for i in keep]
    paths = {v.path for v in data.videos[:n]}
    return RetrievalSplit(name=data.name, split=data.split, videos=data.videos[:n], texts=[data.texts[i] for i in keep],
                          text_video_index=data.text_video_index[keep], missing=[m for m in data.missing if m in paths],
                          relevant=relevant)


def finetune_job(protocol: dict, job: dict) -> dict:
    """Fine-tune one method from the shared backbone for one seed; evaluate once on val and test
    (and on the calibration gallery when the protocol has one)."""
    import torch

    from probret.train.datasets import load_split
    from probret.train.evaluate import evaluate

    model, result, cpu = _train(protocol, job, protocol["finetune"])
    started = time.process_time()
    queries, metrics = {}, {}
    splits = [("val", TOP_K, lambda: load_split("procedural", job["world"], "val")),
              ("test", None, lambda: load_split("procedural", job["world"], "test"))]
    cal = job.get("calibration")
    if cal is not None:
        splits.append(("calibration", TOP_K, lambda: first_videos(
            load_split("procedural", cal["world"], cal["split"]), cal["gallery"])))
    for split, top_k, load in splits:
        data = load()
        with torch.no_grad():
            ev = evaluate(model, data, block=256, seed=0)
        queries[split] = query_records(ev.sims, data.relevant, ev.uncertainty, top_k)
        metrics[split] = ev.metrics
    return {"method": job["method"], "seed": job["seed"], "cpu_seconds": round(cpu, 1),
            "eval_cpu_seconds": round(time.process_time() - started, 1), "steps": result.steps,
            "val": metrics["val"], "test": metrics["test"], **({"calibration": metrics["calibration"]}
                                                                if "calibration" in metrics else {}),
            "queries": queries}
