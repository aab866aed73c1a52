"""Evaluation: encode a split's captions and videos, score every pair with the head, compute
R@1/5/10, MdR and MnR in both directions (``engine/metrics.py``).

Videos are encoded once; captions are encoded once; the head then scores (block x block)
pieces, so query-conditioned fusion (X-Pool, T-MASS, SPEM) never holds more than a block's
(texts, videos, D) tensor. Sampling heads score with the noise banks of ``seed``, shared by every
text and video (``RetrievalModel.score_blocks``; docs/methods.md, "Sampling at inference"), so the
same checkpoint, split and seed give the same matrix whatever the block size, and the same
numbers as a bundle exported with ``--seed`` equal to it.

``save_similarities`` writes what anyone needs to recompute the metrics without probret:
``sims.npy`` (N_text, N_video float32), ``text_video_index.npy`` (N_text int64: column of each
text's ground-truth video), ``uncertainty.npy`` when the head predicts it, and ``meta.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from probret.engine.metrics import dual_softmax_metrics, retrieval_metrics
from probret.train.interrupt import ignore_stop_signals
from probret.train.loaders import EvalVideos
from probret.train.datasets import RetrievalSplit
from probret.train.methods.base import TextFeatures


@dataclass
class EvalResult:
    metrics: dict
    sims: np.ndarray
    text_video_index: np.ndarray
    uncertainty: np.ndarray | None = None
    failed_videos: list[str] = field(default_factory=list)
    dsl_metrics: dict | None = None
    #: every video that could not be used: {"path", "reason": "missing" | "undecodable", "error"}
    unusable_videos: list[dict] = field(default_factory=list)


@torch.no_grad()
def encode_texts(model, texts: list[str], *, batch_size: int, device) -> TextFeatures:
    parts = []
    for i in range(0, len(texts), batch_size):
        tokens = model.backbone.tokenize(texts[i : i + batch_size]).to(device)
        out = model.encode_text(tokens)
        parts.append(TextFeatures(out.sentence.float(), out.tokens.float(), out.mask))
    return TextFeatures(
        torch.cat([p.sentence for p in parts]), torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts])
    )


@torch.no_grad()
def encode_videos(model, split: RetrievalSplit, *, batch_size: int, num_workers: int, device, progress: bool):
    backbone = model.backbone
    dataset = EvalVideos(split, num_frames=model.config.num_frames, image_size=backbone.image_size,
                         mean=backbone.image_mean, std=backbone.image_std)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=ignore_stop_signals)  # a Ctrl-C mid-training evaluation: see there
    features, failed, offset = [], {}, 0
    for pixels, ok, reason in tqdm(loader, desc="encode videos", disable=not progress, leave=False):
        features.append(model.encode_video(pixels.to(device)).float())
        failed.update({offset + k: r for k, (r, good) in enumerate(zip(reason, ok.tolist())) if not good})
        offset += len(ok)
    return torch.cat(features), failed


def evaluate(model, split: RetrievalSplit, *, batch_size: int = 64, block: int = 256, seed: int = 0,
             num_workers: int = 0, device="cpu", progress: bool = False, dsl: bool = False,
             max_texts: int | None = None) -> EvalResult:
    was_training = model.training
    model.eval()
    try:
        texts, index = split.texts, np.asarray(split.text_video_index, dtype=np.int64)
        relevant = split.relevant
        if max_texts is not None and len(texts) > max_texts:
            texts, index = texts[:max_texts], index[:max_texts]
            relevant = relevant[:max_texts] if relevant is not None else None
        frames, failed = encode_videos(model, split, batch_size=batch_size, num_workers=num_workers,
                                       device=device, progress=progress)
        text = encode_texts(model, texts, batch_size=batch_size, device=device)
        out = model.score_blocks(text, frames, block=block, seed=seed)
        sims = out.scores.numpy().astype(np.float32)
        if failed:
            # An undecodable video can never be retrieved: rank it last instead of letting its
            # all-zero features score arbitrarily.
            sims[:, sorted(failed)] = np.nanmin(sims) - 1.0
        metrics = retrieval_metrics(sims, index, relevant=relevant)
        dsl_metrics = dual_softmax_metrics(sims, index, relevant=relevant) if dsl else None
        unc = out.uncertainty.numpy().astype(np.float32) if out.uncertainty is not None else None
        return EvalResult(metrics, sims, index, unc, list(failed.values()), dsl_metrics,
                          unusable_videos(split, failed))
    finally:
        model.train(was_training)


def unusable_videos(split: RetrievalSplit, failed: dict[int, str]) -> list[dict]:
    """The videos that scored as failed candidates: missing files first named by the split, then
    files that exist but did not decode (with the decoder's reason)."""
    missing = set(split.missing)
    out = []
    for j in sorted(failed):
        path = split.videos[j].path
        if path in missing:
            out.append({"path": path, "reason": "missing"})
        else:
            out.append({"path": path, "reason": "undecodable", "error": failed[j]})
    return out


def save_similarities(result: EvalResult, out_dir: str | Path, *, meta: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "sims.npy", result.sims)
    np.save(out / "text_video_index.npy", result.text_video_index)
    if result.uncertainty is not None:
        np.save(out / "uncertainty.npy", result.uncertainty)
    info = {"shape": list(result.sims.shape), "metrics": result.metrics, "failed_videos": result.failed_videos,
            "unusable_videos": result.unusable_videos,
            "layout": "sims[i, j] = score of text i against video j; text_video_index[i] = j of text i's video",
            **(meta or {})}
    (out / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
