"""Parity gates: the exported graphs against PyTorch (and TensorRT engines against ONNX Runtime).

Two levels (docs/export.md, "Parity gates"):

1. **Graphs**, on fresh random inputs (never the tensors the graphs were traced with, and with
   batch sizes different from the tracing ones, so the dynamic axes are exercised): every output
   of every graph is compared with PyTorch. The pair graph is compared with the *original head*
   (``head.score`` on the same frames and the same noise numbers), so the gate covers both the
   ONNX conversion and the export-form restructuring.
2. **Retrieval**, on a procedural mini-benchmark (a small world from ``train/world.py``, or the
   test split of a world given with ``--benchmark``): videos decoded and preprocessed by
   ``engine/``, captions tokenized by the engine's tokenizer, ranked end to end through the
   bundle, and compared with the PyTorch model (open_clip's tokenizer, the head's own scoring):
   identical top-10 for every query (fp32), R@1 both ways; top-K overlap and delta R@1 for fp16.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probret.engine.int8_probe import TOLERANCE as INT8_TOLERANCE
from probret.engine.metrics import retrieval_metrics
from probret.train.methods.base import TextFeatures

__all__ = ["TOLERANCES", "FP16_TOLERANCES", "TRT_FP32_TOLERANCES", "INT8_TOLERANCES", "RETRIEVAL_GATES",
           "compare_output", "random_inputs", "graph_parity", "retrieval_parity", "compare_rankings",
           "load_benchmark"]

# (kind, tolerance): "abs" = max |got - ref|; "scaled" = max |got - ref| / max(1, max |ref|), for
# tensors whose magnitude grows with D (the Gram matrices of the video side).
TOLERANCES: dict[str, tuple[str, float]] = {
    "text_sentence": ("abs", 1e-4), "text_tokens": ("abs", 1e-4), "text_mask": ("exact", 0.0),
    "frame_features": ("abs", 1e-4), "video_*": ("scaled", 1e-4),
    "scores": ("abs", 1e-4), "uncertainty": ("scaled", 1e-4),
}
TRT_FP32_TOLERANCES = {k: (kind, tol if kind == "exact" else 1e-3) for k, (kind, tol) in TOLERANCES.items()}
# fp16 encoders: features carry ~3 significant digits; head graphs always run in fp32.
FP16_TOLERANCES = {**TRT_FP32_TOLERANCES, "text_sentence": ("scaled", 3e-2), "text_tokens": ("scaled", 3e-2),
                   "frame_features": ("scaled", 3e-2), "video_*": ("scaled", 3e-2),
                   "scores": ("abs", 2e-2), "uncertainty": ("scaled", 3e-2)}
# int8 encoders (``--quantize int8``: dynamic quantisation of the text / frame encoders' MatMul and
# Gemm weights, per output channel): the encoder features carry int8 rounding; measured scaled
# errors 0.5-2e-2 on random-weight towers, so 0.1 catches a broken quantisation (wrong scales,
# a transposed weight: errors of order 1) without failing on rounding. The head graphs stay fp32
# and bit-identical, so they keep the fp32 gates. The retrieval gate below is the real one.
# The same figure is the tolerance of the probe the engine replays at load (engine/int8_probe.py).
INT8_TOLERANCES = {**TOLERANCES, "text_sentence": ("scaled", INT8_TOLERANCE), "text_tokens": ("scaled", INT8_TOLERANCE),
                   "frame_features": ("scaled", INT8_TOLERANCE)}
#: Retrieval-level gates: fp32 needs identical top-k (up to ties closer than tie_tol);
#: fp16 needs a mean top-k overlap and |delta R@1| within these bounds; int8 (issue #6: "<= 1 pt
#: R@1 loss") a mean top-k overlap and an R@1 loss (fp32 ORT minus int8, both directions) of at
#: most int8_max_r1_loss points.
RETRIEVAL_GATES = {"k": 10, "tie_tol": 1e-5, "fp16_min_overlap": 0.9, "fp16_max_delta_r1": 2.0,
                   "int8_min_overlap": 0.9, "int8_max_r1_loss": 1.0}


def _tolerance(name: str, table: dict) -> tuple[str, float]:
    if name in table:
        return table[name]
    if name.startswith("video_"):
        return table["video_*"]
    return ("scaled", 1e-4)


def compare_output(graph: str, name: str, got: np.ndarray, ref: np.ndarray, table: dict = TOLERANCES) -> dict:
    kind, tol = _tolerance(name, table)
    got, ref = np.asarray(got), np.asarray(ref)
    rec: dict[str, Any] = {"graph": graph, "output": name, "shape": list(ref.shape), "kind": kind, "tolerance": tol}
    if got.shape != ref.shape:
        return {**rec, "passed": False, "error": f"shape {list(got.shape)} != reference {list(ref.shape)}"}
    if kind == "exact" or ref.dtype == np.bool_:
        bad = int(np.count_nonzero(got != ref))
        return {**rec, "kind": "exact", "mismatches": bad, "passed": bad == 0}
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if not np.all(np.isfinite(g)):
        return {**rec, "passed": False, "error": "non-finite values"}
    abs_err = float(np.max(np.abs(g - r))) if r.size else 0.0
    scale = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
    err = abs_err if kind == "abs" else abs_err / scale
    return {**rec, "max_abs_err": abs_err, "max_scaled_err": abs_err / scale, "ref_max_abs": scale,
            "passed": bool(err <= tol)}


# --------------------------------------------------------------------------------------------
# level 1: graphs
# --------------------------------------------------------------------------------------------
def random_inputs(rng: np.random.Generator, *, context_length: int, image_size: int, num_frames: int,
                  embed_dim: int, n_text: int = 5, n_images: int = 6, n_video: int = 5, n_pair_text: int = 4,
                  sot: int = 49406, eot: int = 49407) -> dict[str, np.ndarray]:
    """Fresh inputs for every graph (sizes differ from the tracing sizes on purpose)."""
    L = context_length
    ids = np.zeros((n_text, L), dtype=np.int32)
    lengths = rng.integers(0, L - 1, size=n_text)
    lengths[0], lengths[-1] = 0, L - 2  # empty text and a full one
    for i, n in enumerate(lengths):
        ids[i, 0] = sot
        ids[i, 1:1 + n] = rng.integers(1, sot, size=n)
        ids[i, 1 + n] = eot
    tok_len = rng.integers(2, L + 1, size=n_pair_text)
    return {
        "input_ids": ids,
        "pixels": rng.standard_normal((n_images, 3, image_size, image_size), dtype=np.float32),
        "frames": (rng.standard_normal((n_video, num_frames, embed_dim), dtype=np.float32)
                   + rng.standard_normal((n_video, 1, embed_dim), dtype=np.float32)),
        "text_sentence": rng.standard_normal((n_pair_text, embed_dim), dtype=np.float32) * 2,
        "text_tokens": rng.standard_normal((n_pair_text, L, embed_dim), dtype=np.float32),
        "text_mask": np.arange(L)[None, :] < tok_len[:, None],
    }


@torch.no_grad()
def graph_parity(model, form, rt, banks: dict[str, np.ndarray], *, seed: int, table: dict = TOLERANCES,
                 reference_rt=None) -> list[dict]:
    """Every output of the four graphs run by ``rt`` against PyTorch (or against ``reference_rt``,
    another runtime, e.g. ONNX Runtime as the reference of TensorRT engines)."""
    bb = model.backbone
    size = bb.image_size if isinstance(bb.image_size, int) else int(bb.image_size[0])
    x = random_inputs(np.random.default_rng(seed + 7919), context_length=bb.context_length, image_size=size,
                      num_frames=form.num_frames, embed_dim=form.embed_dim,
                      sot=bb.sot_token_id or 49406, eot=bb.eot_token_id or 49407)
    checks = []

    # text encoder
    got = rt.encode_text(x["input_ids"])
    if reference_rt is not None:
        ref = reference_rt.encode_text(x["input_ids"])
    else:
        f = bb.encode_text(torch.from_numpy(x["input_ids"]).long())
        ref = {"text_sentence": f.sentence.numpy(), "text_tokens": f.tokens.numpy(), "text_mask": f.mask.numpy()}
    for name in got:
        checks.append(compare_output("text_encoder", name, got[name], ref[name], table))

    # frame encoder
    got_f = rt.encode_frames(x["pixels"])
    ref_f = (reference_rt.encode_frames(x["pixels"]) if reference_rt is not None
             else bb.encode_frames(torch.from_numpy(x["pixels"])[None])[0].numpy())
    checks.append(compare_output("frame_encoder", "frame_features", got_f, ref_f, table))

    # video side
    frames = torch.from_numpy(x["frames"])
    got_v = rt.video_side(x["frames"])
    if reference_rt is not None:
        ref_v = reference_rt.video_side(x["frames"])
    else:
        vs = form.video_side(frames)
        ref_v = {f"video_{k}": vs[k].numpy() for k in form.video_names}
    for name in ref_v:
        checks.append(compare_output("video_side", name, got_v.get(name, np.zeros(0)), ref_v[name], table))

    # pair scoring against the original head, on the graph's own video-side outputs
    text_np = {k: x[k] for k in ("text_sentence", "text_tokens", "text_mask")}
    scores, unc = rt.score(text_np, got_v)
    if reference_rt is not None:
        ref_s, ref_u = reference_rt.score(text_np, ref_v)
    else:
        text = TextFeatures(torch.from_numpy(x["text_sentence"]), torch.from_numpy(x["text_tokens"]),
                            torch.from_numpy(x["text_mask"]))
        out = form.reference(text, frames, {s.key: torch.from_numpy(banks[s.name]) for s in form.noise_specs})
        ref_s = out.scores.numpy()
        ref_u = None if out.uncertainty is None else out.uncertainty.numpy()
    checks.append(compare_output("pair_score", "scores", scores, ref_s, table))
    if ref_u is not None or unc is not None:
        if ref_u is None or unc is None:
            checks.append({"graph": "pair_score", "output": "uncertainty", "passed": False,
                           "error": "uncertainty present on one side only"})
        else:
            checks.append(compare_output("pair_score", "uncertainty", unc, ref_u, table))
    return checks


# --------------------------------------------------------------------------------------------
# level 2: retrieval on a procedural mini-benchmark
# --------------------------------------------------------------------------------------------
def make_benchmark(out: Path, *, videos: int, seed: int) -> Path:
    from probret.train.world import generate_world

    generate_world(out, videos=videos, seed=seed, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    return out


def load_benchmark(world: Path, *, split: str = "test", max_videos: int | None = None):
    """(texts, video paths, text_video_index) of a procedural world's split: every caption of
    every video of the split (``<name>_data.json``), or the split csv's captions."""
    world = Path(world)
    split_csv = world / f"{split}.csv"
    if not split_csv.is_file():
        from probret.engine.errors import DataError

        raise DataError(f"{world}: no {split}.csv; --benchmark takes a procedural world (probret synth)")
    with open(split_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    vids = list(dict.fromkeys(r["video_id"] for r in rows))[: max_videos or None]
    col = {v: i for i, v in enumerate(vids)}
    texts, idx = [], []
    data = next(iter(sorted(world.glob("*_data.json"))), None)
    if data is not None:
        for s in json.loads(data.read_text())["sentences"]:
            if s["video_id"] in col:
                texts.append(s["caption"])
                idx.append(col[s["video_id"]])
    if not texts:
        for r in rows:
            if r["video_id"] in col and r.get("sentence"):
                texts.append(r["sentence"])
                idx.append(col[r["video_id"]])
    paths = [world / "videos" / f"{v}.mp4" for v in vids]
    return texts, paths, np.asarray(idx, dtype=np.int64)


def compare_rankings(ref: np.ndarray, got: np.ndarray, idx: np.ndarray, *, k: int = 10,
                     tie_tol: float = 1e-5) -> dict:
    """Top-k agreement of two (N_t, N_v) score matrices, row by row, plus R@1 of both.
    A row whose top-k differs only where the reference scores of the swapped videos are within
    ``tie_tol`` counts as a tie, not a mismatch."""
    k = min(k, ref.shape[1])
    o_ref = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    o_got = np.argsort(-got, axis=1, kind="stable")[:, :k]
    identical = ties = 0
    bad_rows = []
    overlap = 0.0
    for i in range(ref.shape[0]):
        overlap += len(set(o_ref[i]) & set(o_got[i])) / k
        diff = np.nonzero(o_ref[i] != o_got[i])[0]
        if diff.size == 0:
            identical += 1
        elif np.all(np.abs(ref[i, o_ref[i, diff]] - ref[i, o_got[i, diff]]) <= tie_tol):
            ties += 1
        else:
            bad_rows.append(i)
    # the other direction: each video's top-k captions
    kv = min(k, ref.shape[0])
    c_ref = np.argsort(-ref.T, axis=1, kind="stable")[:, :kv]
    c_got = np.argsort(-got.T, axis=1, kind="stable")[:, :kv]
    v2t_bad = 0
    for j in range(ref.shape[1]):
        diff = np.nonzero(c_ref[j] != c_got[j])[0]
        if diff.size and not np.all(np.abs(ref[c_ref[j, diff], j] - ref[c_got[j, diff], j]) <= tie_tol):
            v2t_bad += 1
    m_ref = retrieval_metrics(ref, idx)
    m_got = retrieval_metrics(got, idx)
    n = ref.shape[0]
    return {
        "queries": int(n), "videos": int(ref.shape[1]), "k": int(k),
        "topk_identical": identical / n, "topk_tie_swaps": int(ties), "topk_mismatched_queries": bad_rows[:20],
        "topk_mismatches": len(bad_rows), "topk_overlap": overlap / n, "v2t_topk_mismatches": int(v2t_bad),
        "max_abs_score_diff": float(np.max(np.abs(ref.astype(np.float64) - got))),
        "R1_t2v_ref": m_ref["t2v"]["R1"], "R1_t2v": m_got["t2v"]["R1"],
        "R1_v2t_ref": m_ref["v2t"]["R1"], "R1_v2t": m_got["v2t"]["R1"],
        "delta_R1_t2v": m_got["t2v"]["R1"] - m_ref["t2v"]["R1"],
        "delta_R1_v2t": m_got["v2t"]["R1"] - m_ref["v2t"]["R1"],
    }


def decode_benchmark(rt, paths: list[Path], num_frames: int) -> np.ndarray:
    from probret.engine.video import sample_frames

    return np.stack([rt.preprocess(sample_frames(p, num_frames).frames) for p in paths])


@torch.no_grad()
def torch_scores(model, form, texts: list[str], pixels: np.ndarray, banks: dict[str, np.ndarray],
                 block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch side: open_clip's tokenizer, the backbone, the head's own ``score``."""
    ids = model.backbone.tokenize(texts)
    text = model.encode_text(ids)
    frames = torch.cat([model.encode_video(torch.from_numpy(pixels[i:i + block])) for i in range(0, len(pixels), block)])
    out = form.reference(text, frames, {s.key: torch.from_numpy(banks[s.name]) for s in form.noise_specs})
    return out.scores.numpy(), ids.numpy()


def retrieval_parity(model, form, rt, banks: dict[str, np.ndarray], *, seed: int, benchmark: Path | None = None,
                     videos: int = 24, reference_rt=None, fp16: bool = False, int8: bool = False) -> dict:
    """End-to-end ranking through ``rt`` against PyTorch (or ``reference_rt``). The gate is the
    fp32 one (identical top-k), or with ``fp16`` / ``int8`` the lossy ones (RETRIEVAL_GATES)."""
    with tempfile.TemporaryDirectory(prefix="probret-bench-") as tmp:
        world = Path(benchmark) if benchmark is not None else make_benchmark(Path(tmp) / "world", videos=videos, seed=seed)
        texts, paths, idx = load_benchmark(world, max_videos=videos if benchmark is not None else None)
        pixels = decode_benchmark(rt, paths, form.num_frames)
    got_text = rt.encode_text(texts)
    got_video = rt.video_side(rt.encode_videos(pixels))
    got, _ = rt.score(got_text, got_video)
    ids_engine = rt.tokenize(texts)[0]
    if reference_rt is not None:
        ref, _ = reference_rt.score(reference_rt.encode_text(texts),
                                    reference_rt.video_side(reference_rt.encode_videos(pixels)))
        ids_ref = ids_engine
    else:
        ref, ids_ref = torch_scores(model, form, texts, pixels, banks)
    g = RETRIEVAL_GATES
    rep = compare_rankings(ref, got, idx, k=g["k"], tie_tol=g["tie_tol"])
    rep["benchmark"] = str(benchmark) if benchmark is not None else f"procedural world (seed {seed}, {len(paths)} videos)"
    rep["tokenizer_identical"] = bool(np.array_equal(ids_engine.astype(np.int64), ids_ref.astype(np.int64)))
    if int8:
        rep["gate"] = (f"int8: mean top-{rep['k']} overlap >= {g['int8_min_overlap']} and R@1 loss <= "
                       f"{g['int8_max_r1_loss']} pt both directions")
        rep["passed"] = bool(rep["topk_overlap"] >= g["int8_min_overlap"]
                             and rep["delta_R1_t2v"] >= -g["int8_max_r1_loss"]
                             and rep["delta_R1_v2t"] >= -g["int8_max_r1_loss"] and rep["tokenizer_identical"])
    elif fp16:
        rep["gate"] = (f"fp16: mean top-{rep['k']} overlap >= {g['fp16_min_overlap']} and "
                       f"|delta R@1| <= {g['fp16_max_delta_r1']} pt")
        rep["passed"] = bool(rep["topk_overlap"] >= g["fp16_min_overlap"]
                             and abs(rep["delta_R1_t2v"]) <= g["fp16_max_delta_r1"]
                             and abs(rep["delta_R1_v2t"]) <= g["fp16_max_delta_r1"] and rep["tokenizer_identical"])
    else:
        rep["gate"] = (f"fp32: identical top-{rep['k']} for every query, both directions (ties within "
                       f"{g['tie_tol']} allowed), same token ids")
        rep["passed"] = bool(rep["topk_mismatches"] == 0 and rep["v2t_topk_mismatches"] == 0
                             and rep["tokenizer_identical"])
    return rep
