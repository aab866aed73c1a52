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
    match_set_size    how many videos truly match the query (in its gallery)

and, per record, ``gallery_videos``: how many videos each query was ranked against.

``queries.calibration`` (protocol section ``calibration``, setting 10 on): the same fields for the
calibration gallery, the first ``gallery`` videos of a second world's split, scored after val and
test; what the uncertainty analysis fits its calibrators on.

``queries.val`` (and ``queries.calibration``) also keep their top-k ranked hits (``topk_scores``,
``topk_uncertainty``, ``topk_relevant``; k = ``TOP_K``, engine.calibration.DEFAULT_TOP_K): what
``probret-export --calibrate`` fits its calibrator on, so the report can fit the product's
calibrator the same way. The test split keeps only top-1 signals: every calibrator is fitted on
the calibration gallery (settings 6-9: validation) and applied to test's top-1 hit, which needs
the top two scores and nothing more.

Galleries (protocol section ``galleries``, setting 11 on). Without it every split is one gallery,
each query ranked against all of the split's videos (settings 1-10: test 1,000, validation 300).
With ``galleries.size`` = G, every split that is scored (validation, test, the calibration
gallery) is cut into consecutive blocks of G videos (:func:`confine_to_galleries`): a query is
ranked against its own video's block only, its match set cut to that block, as if each block
were a folder of G videos searched on its own. Test's whole-split records are kept beside them
(``queries.test_whole_split``, top-1 signals only), so a report can still show the 1,000-video
numbers of earlier settings. ``val``/``test`` metrics in result.json are always the whole
split's (the trainer's evaluate); the report reads only the per-query records.
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
           "match_set_size": [len(r) for r in relevant], "gallery_videos": int(sims.shape[1])}
    if top_k is not None:
        # engine.calibration.ranked_hits' order (stable, best first), done here so that the run key
        # need not hash engine/calibration.py, which the product side keeps changing
        cols = np.argsort(-sims, axis=1, kind="stable")[:, :top_k]
        out["topk_scores"] = np.take_along_axis(sims, cols, 1).tolist()
        out["topk_uncertainty"] = None if uncertainty is None else np.take_along_axis(uncertainty, cols, 1).tolist()
        out["topk_relevant"] = [[c in set(rel) for c in row] for row, rel in zip(cols.tolist(), relevant)]
    return out


def confine_to_galleries(sims: np.ndarray, relevant: list[list[int]], text_video_index, size: int,
                         uncertainty: np.ndarray | None = None):
    """Each query against its own gallery only: the split's videos (columns) cut into consecutive
    blocks of ``size``, a query belonging to its own video's block, its match set cut to that
    block. The split's order is the generator's, a random draw of its videos, so consecutive
    blocks are random galleries; every query keeps its own video, so no match set is empty.

    Returns (scores, match sets, uncertainty) with columns local to each query's block: (queries,
    size) arrays and indices 0..size-1, what :func:`query_records` takes."""
    n = sims.shape[1]
    if size < 2 or n % size:
        raise SystemExit(f"galleries of {size} videos do not tile a split of {n} videos: "
                         "set the protocol's galleries.size to a divisor of every scored split's size")
    block = np.asarray(text_video_index, dtype=np.int64) // size
    cols = block[:, None] * size + np.arange(size)[None, :]
    local = [[j - b * size for j in rel if j // size == b] for rel, b in zip(relevant, block.tolist())]
    unc = None if uncertainty is None else np.take_along_axis(uncertainty, cols, 1)
    return np.take_along_axis(sims, cols, 1), local, unc


def split_records(ev, data, top_k: int | None, size: int | None) -> dict:
    """The per-query records of one evaluated split: one gallery of the whole split, or (``size``)
    the split's galleries of ``size`` videos."""
    if size is None:
        return query_records(ev.sims, data.relevant, ev.uncertainty, top_k)
    sims, relevant, unc = confine_to_galleries(ev.sims, data.relevant, data.text_video_index, size, ev.uncertainty)
    return query_records(sims, relevant, unc, top_k)


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
    size = job.get("gallery_size")
    for split, top_k, load in splits:
        data = load()
        with torch.no_grad():
            ev = evaluate(model, data, block=256, seed=0)
        queries[split] = split_records(ev, data, top_k, size)
        if split == "test" and size is not None:
            queries["test_whole_split"] = split_records(ev, data, None, None)
        metrics[split] = ev.metrics
    return {"method": job["method"], "seed": job["seed"], "cpu_seconds": round(cpu, 1),
            "eval_cpu_seconds": round(time.process_time() - started, 1), "steps": result.steps,
            "val": metrics["val"], "test": metrics["test"], **({"calibration": metrics["calibration"]}
                                                                if "calibration" in metrics else {}),
            "queries": queries}
