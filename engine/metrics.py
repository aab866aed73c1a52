"""Retrieval metrics: R@1/5/10, median rank (MdR) and mean rank (MnR), both directions.

numpy only (``engine/`` never imports torch). Everything streams over blocks of
``chunk_size`` texts, so an (N_text, N_video) problem of 100k x 100k (a float32 ``np.memmap``
of 40 GB, say) is scored with O(chunk_size x N_video) extra memory.

Layout
------
``sims[i, j]`` is the score of text ``i`` against video ``j`` (higher = more similar), shape
(N_text, N_video). ``text_video_index[i]`` is the column of text ``i``'s ground-truth video.
Several captions may share a video (MSVD, VATEX, training splits), so N_text != N_video in
general. A ``text_video_index`` whose length matches N_video but not N_text is reported as a
transposed matrix: evaluation code that swaps the axes only "works" when the counts happen to be
equal (MSR-VTT 1k-A), which is exactly the bug this check exists to catch.

Conventions (docs/datasets.md, "Metric conventions")
----------------------------------------------------
* Ranks are 1-based; recalls are percentages in [0, 100].
* **t2v**: text ``i`` ranks all N_video videos by ``sims[i, :]``; its rank is the position of its
  ground-truth video.
* **v2t** (``v2t_mode="captions"``): video ``j`` ranks all N_text captions by
  ``sims[:, j]``; its rank is the position of its best-ranked ground-truth caption (the first
  hit). This is the classic multi-caption convention (Karpathy/VSE++ image-to-text, 5 captions
  per image). ``v2t_mode="videos"`` (the default, so our numbers compare with the papers') instead ranks the *caption groups* of the videos, each
  scored by its best caption (``max`` over a video's captions): this is what CLIP4Clip
  (``tensor_video_to_text_sim``) and X-Pool / T-MASS (``v2t_metrics``) compute, so use it to
  compare multi-caption v2t numbers (MSVD, VATEX) with those papers. With one caption per
  video (MSR-VTT 1k-A, DiDeMo, LSMDC, Charades) the two modes agree exactly. Videos without
  any caption (pure distractors) are candidates for t2v only; they issue no v2t query.
* **t2v_semantic** (when ``relevant`` is given): a text is a hit at rank r if *any* of its
  relevant videos (always including its own) is ranked <= r; its rank is the position of the
  first relevant video. The procedural world provides these sets.
* **Ties** (``ties=``): reference code uses ``argsort``, which breaks ties by index, so a
  model that outputs constant scores gets R@1 = 100 on a diagonal test set. We never reward
  ties. With ``greater`` = number of irrelevant candidates scoring strictly higher than the
  best relevant one, ``t`` = irrelevant candidates tying with it, ``g`` = relevant candidates
  tying at that best score:

  - ``"pessimistic"`` (default): rank = 1 + greater + t (every tie is resolved against the
    query; a constant-score model gets R@1 = 0, MdR = MnR = N).
  - ``"expected"``: the expectation under uniformly random tie-breaking: MnR uses
    E[rank] = 1 + greater + t / (g + 1); R@k is the exact probability that the first relevant
    item lands in the top k, averaged over queries (hypergeometric: P(first x tied items are
    all irrelevant) = prod_{i<x} (t - i) / (t + g - i)); MdR is the median of E[rank].
  - ``"optimistic"``: rank = 1 + greater (every tie resolved in the query's favour; only for
    diagnosing how much a result depends on ties).

  With continuous scores ties do not happen and the three agree.

Dual softmax (DSL)
------------------
:func:`dual_softmax` is the inference-time re-scoring of Cheng et al. 2021 ("Improving
Video-Text Retrieval by Multi-Stream Corpus Alignment and Dual Softmax Loss"):
``sims * softmax(temperature * sims, axis)``. For t2v the prior is a softmax over the *text*
axis (axis 0: how strongly video j prefers text i over the other texts), which demotes "hub"
videos that score high against every query. It uses the whole test set's queries, so it is
reported separately (``probret eval --dsl``), never mixed into the plain metrics.
:func:`dual_softmax_metrics` applies it the symmetric way for both directions (prior over
texts for t2v, over videos for v2t), streaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TIE_MODES",
    "V2T_MODES",
    "RECALL_KS",
    "retrieval_metrics",
    "dual_softmax",
    "dual_softmax_metrics",
    "format_metrics_table",
]

TIE_MODES = ("pessimistic", "expected", "optimistic")
V2T_MODES = ("captions", "videos")
RECALL_KS = (1, 5, 10)
_METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_sims(sims) -> np.ndarray:
    # np.asarray keeps ndarray / memmap as they are (no copy); torch CPU tensors convert.
    sims = np.asarray(sims)
    if sims.ndim != 2:
        raise ValueError(f"sims must be a 2-D (N_text, N_video) matrix, got shape {sims.shape}")
    if sims.dtype == np.bool_ or not (np.issubdtype(sims.dtype, np.floating) or np.issubdtype(sims.dtype, np.integer)):
        raise ValueError(f"sims must hold real numbers, got dtype {sims.dtype}")
    if sims.shape[0] == 0 or sims.shape[1] == 0:
        raise ValueError(f"sims is empty (shape {sims.shape}): nothing to rank")
    return sims


def _check_index(text_video_index, n_text: int, n_video: int) -> np.ndarray:
    idx = np.asarray(text_video_index)
    if idx.ndim != 1:
        raise ValueError(f"text_video_index must be 1-D (one video column per text), got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        if np.issubdtype(idx.dtype, np.floating) and np.all(np.isfinite(idx)) and np.all(idx == np.round(idx)):
            idx = idx.astype(np.int64)
        else:
            raise ValueError(f"text_video_index must hold integer column indices, got dtype {idx.dtype}")
    if idx.shape[0] != n_text:
        if idx.shape[0] == n_video:
            raise ValueError(
                f"sims has shape {(n_text, n_video)} but text_video_index has {idx.shape[0]} entries, which matches "
                f"the number of columns: sims looks transposed. Pass it as (N_text, N_video), one row per text "
                f"(e.g. sims.T)."
            )
        raise ValueError(
            f"text_video_index has {idx.shape[0]} entries but sims has {n_text} rows; need one entry per text "
            f"(row) of the (N_text, N_video) matrix"
        )
    idx = idx.astype(np.int64, copy=False)
    bad = np.flatnonzero((idx < 0) | (idx >= n_video))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"text_video_index[{i}] = {int(idx[i])} is not a valid column of a matrix with {n_video} videos "
            f"({bad.size} invalid entries)"
        )
    return idx


def _check_relevant(relevant, idx: np.ndarray, n_video: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR form (indptr, columns) of each text's relevant set, always including its own video."""
    if len(relevant) != idx.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} entries but there are {idx.shape[0]} texts; need one per text")
    indptr = np.zeros(idx.shape[0] + 1, dtype=np.int64)
    cols: list[np.ndarray] = []
    for i, rel in enumerate(relevant):
        arr = np.asarray(list(rel) if rel is not None else [])
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"relevant[{i}] must hold integer video columns, got {list(rel)[:5]!r}")
        arr = arr.astype(np.int64, copy=False).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= n_video):
            raise ValueError(f"relevant[{i}] holds a column outside [0, {n_video}): {sorted(set(arr.tolist()))[:5]}")
        arr = np.unique(np.append(arr, idx[i]))
        cols.append(arr)
        indptr[i + 1] = indptr[i] + arr.size
    return indptr, (np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64))


def _check_nan(block: np.ndarray, row0: int) -> None:
    if np.issubdtype(block.dtype, np.floating):
        nan = np.isnan(block)
        if nan.any():
            r, c = np.argwhere(nan)[0]
            raise ValueError(
                f"sims contains NaN (first at text {row0 + int(r)}, video {int(c)}; {int(nan.sum())} in rows "
                f"{row0}..{row0 + block.shape[0] - 1}); a score must be a number to be ranked"
            )


# --------------------------------------------------------------------------------------------
# rank statistics -> metrics
# --------------------------------------------------------------------------------------------


def _summarise(greater: np.ndarray, ties: np.ndarray, group: np.ndarray, mode: str) -> dict:
    """R@1/5/10 (percent), MdR, MnR from per-query (greater, tied irrelevant, tied relevant)."""
    greater = greater.astype(np.float64)
    t = ties.astype(np.float64)
    g = group.astype(np.float64)
    n = greater.shape[0]
    if n == 0:
        return {k: float("nan") for k in _METRIC_KEYS}
    out: dict[str, float] = {}
    if mode == "pessimistic":
        rank = 1.0 + greater + t
    elif mode == "optimistic":
        rank = 1.0 + greater
    else:  # expected
        rank = 1.0 + greater + t / (g + 1.0)
    for k in RECALL_KS:
        if mode == "expected":
            # P(rank <= k) = 1 - P(X >= x) with X = irrelevant ties placed before the first relevant
            # one and x = k - greater; P(X >= x) = prod_{i<x} (t - i) / (t + g - i) for 0 < x <= t.
            x = k - greater
            p_ge = np.ones(n)
            p_ge[x > t] = 0.0
            for i in range(k):
                active = (i < x) & (x <= t)
                p_ge[active] *= (t[active] - i) / (t[active] + g[active] - i)
            hit = np.where(x <= 0, 0.0, 1.0 - p_ge)
        else:
            hit = (rank <= k).astype(np.float64)
        out[f"R{k}"] = float(100.0 * hit.mean())
    out["MdR"] = float(np.median(rank))
    out["MnR"] = float(rank.mean())
    return out


# --------------------------------------------------------------------------------------------
# score transforms (identity, dual softmax), applied block-wise
# --------------------------------------------------------------------------------------------


class _Identity:
    needs_stats = False

    def __call__(self, block, rows, cols):
        return block


@dataclass
class _DualSoftmax:
    """``s * exp(T*s - lse)``, lse the log-sum-exp of T*s over ``axis`` (0: per video, 1: per text)."""

    temperature: float
    axis: int
    lse: np.ndarray | None = None  # filled by _dsl_stats
    needs_stats = True

    def __call__(self, block, rows, cols):
        s = block.astype(np.float64, copy=False)
        lse = self.lse[cols][None, :] if self.axis == 0 else self.lse[rows][:, None]
        return s * np.exp(self.temperature * s - lse)


def _dsl_stats(sims: np.ndarray, transforms, chunk: int) -> None:
    """One streaming pass: log-sum-exp of T*s over texts (per video) and over videos (per text)."""
    n_text, n_video = sims.shape
    temps = {tf.temperature for tf in transforms}
    for temperature in temps:
        col_max = np.full(n_video, -np.inf)
        col_sum = np.zeros(n_video)
        row_lse = np.empty(n_text)
        for r0 in range(0, n_text, chunk):
            block = np.asarray(sims[r0 : r0 + chunk], dtype=np.float64)
            if not np.all(np.isfinite(block)):
                _check_nan(block, r0)
                raise ValueError("dual softmax needs finite scores; sims contains +-inf")
            z = temperature * block
            bmax = z.max(axis=0)
            new_max = np.maximum(col_max, bmax)
            col_sum = col_sum * np.exp(col_max - new_max) + np.exp(z - new_max).sum(axis=0)
            col_max = new_max
            zr = z.max(axis=1, keepdims=True)
            row_lse[r0 : r0 + chunk] = (zr + np.log(np.exp(z - zr).sum(axis=1, keepdims=True)))[:, 0]
        col_lse = col_max + np.log(col_sum)
        for tf in transforms:
            if tf.temperature == temperature:
                tf.lse = col_lse if tf.axis == 0 else row_lse


# --------------------------------------------------------------------------------------------
# streaming rank computation
# --------------------------------------------------------------------------------------------


def _rank_all(sims, idx, rel_csr, *, chunk: int, t2v_tf, v2t_tf, ties: str, v2t_mode: str) -> dict:
    n_text, n_video = sims.shape
    rows_all = np.arange(n_text)

    t2v_greater = np.empty(n_text, dtype=np.int64)
    t2v_ties = np.empty(n_text, dtype=np.int64)
    if rel_csr is not None:
        indptr, rel_cols = rel_csr
        sem_greater = np.empty(n_text, dtype=np.int64)
        sem_ties = np.empty(n_text, dtype=np.int64)
        sem_group = np.empty(n_text, dtype=np.int64)
    v2t_diag = np.empty(n_text, dtype=np.float64)  # v2t-transformed score of each text with its own video

    # Pass 1 over row blocks: t2v (and semantic t2v) ranks, NaN check, v2t diagonal values.
    for r0 in range(0, n_text, chunk):
        rows = slice(r0, min(r0 + chunk, n_text))
        block = np.asarray(sims[rows])
        _check_nan(block, r0)
        local = rows_all[rows] - r0
        own = idx[rows]
        scores = t2v_tf(block, rows, slice(None))
        target = scores[local, own]
        t2v_greater[rows] = (scores > target[:, None]).sum(axis=1)
        t2v_ties[rows] = (scores == target[:, None]).sum(axis=1) - 1
        if rel_csr is not None:
            lo, hi = indptr[r0], indptr[rows.stop]
            counts = np.diff(indptr[r0 : rows.stop + 1])
            owner = np.repeat(local, counts)
            vals = scores[owner, rel_cols[lo:hi]]
            starts = indptr[r0 : rows.stop] - lo
            best = np.maximum.reduceat(vals, starts)
            group = np.add.reduceat((vals == np.repeat(best, counts)).astype(np.int64), starts)
            sem_greater[rows] = (scores > best[:, None]).sum(axis=1)
            sem_ties[rows] = (scores == best[:, None]).sum(axis=1) - group
            sem_group[rows] = group
        vscores = scores if v2t_tf is t2v_tf else v2t_tf(block, rows, slice(None))
        v2t_diag[rows] = vscores[local, own]

    metrics = {"t2v": _summarise(t2v_greater, t2v_ties, np.ones(n_text, dtype=np.int64), ties)}

    has_caption = np.bincount(idx, minlength=n_video) > 0
    if v2t_mode == "captions":
        best = np.full(n_video, -np.inf)
        np.maximum.at(best, idx, v2t_diag)
        group = np.bincount(idx, weights=(v2t_diag == best[idx]).astype(np.float64), minlength=n_video).astype(np.int64)
        greater = np.zeros(n_video, dtype=np.int64)
        equal = np.zeros(n_video, dtype=np.int64)
        # Pass 2: per video, count captions above / tied with its best ground-truth caption.
        for r0 in range(0, n_text, chunk):
            rows = slice(r0, min(r0 + chunk, n_text))
            vscores = v2t_tf(np.asarray(sims[rows]), rows, slice(None))
            greater += (vscores > best[None, :]).sum(axis=0)
            equal += (vscores == best[None, :]).sum(axis=0)
        q = has_caption
        metrics["v2t"] = _summarise(greater[q], (equal - group)[q], group[q], ties)
    else:
        metrics["v2t"] = _v2t_video_groups(sims, idx, has_caption, chunk=chunk, v2t_tf=v2t_tf, ties=ties)

    if rel_csr is not None:
        metrics["t2v_semantic"] = _summarise(sem_greater, sem_ties, sem_group, ties)
    return metrics


def _v2t_video_groups(sims, idx, has_caption, *, chunk: int, v2t_tf, ties: str) -> dict:
    """CLIP4Clip / X-Pool v2t: candidates are videos' caption groups, each scored by its best caption."""
    n_text, n_video = sims.shape
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    width = max(1, min(chunk, chunk * n_video // n_text))  # columns per block
    rows_per = max(1, chunk * n_video // width)  # rows per sub-block, <= chunk * N_video elements
    greater = np.zeros(n_video, dtype=np.int64)
    equal = np.zeros(n_video, dtype=np.int64)
    cand = has_caption[:, None]
    for c0 in range(0, n_video, width):
        cols = slice(c0, min(c0 + width, n_video))
        w = cols.stop - c0
        gmax = np.full((n_video, w), -np.inf)
        for r0 in range(0, n_text, rows_per):
            take = order[r0 : r0 + rows_per]
            sub = np.asarray(sims[:, cols][take])
            sub = v2t_tf(sub, take, cols)
            vids = sorted_idx[r0 : r0 + rows_per]
            starts = np.flatnonzero(np.r_[True, vids[1:] != vids[:-1]])
            red = np.maximum.reduceat(sub, starts, axis=0)
            uniq = vids[starts]
            gmax[uniq] = np.maximum(gmax[uniq], red)
        query = np.arange(c0, cols.stop)
        target = gmax[query, np.arange(w)]
        greater[cols] = ((gmax > target[None, :]) & cand).sum(axis=0)
        equal[cols] = ((gmax == target[None, :]) & cand).sum(axis=0) - 1
    q = has_caption
    return _summarise(greater[q], equal[q], np.ones(int(q.sum()), dtype=np.int64), ties)


def _prepare(sims, text_video_index, relevant, chunk_size, ties, v2t_mode):
    if ties not in TIE_MODES:
        raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}")
    if v2t_mode not in V2T_MODES:
        raise ValueError(f"v2t_mode must be one of {V2T_MODES}, got {v2t_mode!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    sims = _check_sims(sims)
    idx = _check_index(text_video_index, *sims.shape)
    rel = _check_relevant(relevant, idx, sims.shape[1]) if relevant is not None else None
    return sims, idx, rel, int(chunk_size)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def retrieval_metrics(
    sims: np.ndarray,
    text_video_index: np.ndarray,
    *,
    relevant: list[Sequence[int]] | None = None,
    chunk_size: int = 4096,
    ties: str = "pessimistic",
    v2t_mode: str = "videos",
) -> dict:
    """Standard retrieval metrics of a text x video score matrix.

    Args:
        sims: (N_text, N_video) scores, higher = better. Any real dtype; an ``np.memmap`` works
            and is read block by block. NaN raises ``ValueError``; +-inf are ordinary values.
        text_video_index: (N_text,) integer column of each text's ground-truth video.
        relevant: optional, one sequence of video columns per text that the text truly
            describes (its own video is always added). Adds ``"t2v_semantic"``.
        chunk_size: texts per block; extra memory is O(chunk_size x N_video).
        ties: ``"pessimistic"`` (default), ``"expected"`` or ``"optimistic"`` (module docstring).
        v2t_mode: ``"videos"`` (default; CLIP4Clip / X-Pool: rank videos by their best caption) or
            ``"captions"`` (rank all captions, first ground-truth hit).

    Returns:
        ``{"t2v": {...}, "v2t": {...}[, "t2v_semantic": {...}]}``, each with float ``R1``, ``R5``,
        ``R10`` (percent), ``MdR`` and ``MnR`` (1-based ranks). JSON-serialisable.

    Raises:
        ValueError: wrong shapes (including a transposed matrix), bad indices, NaN scores.
    """
    sims, idx, rel, chunk = _prepare(sims, text_video_index, relevant, chunk_size, ties, v2t_mode)
    ident = _Identity()
    return _rank_all(sims, idx, rel, chunk=chunk, t2v_tf=ident, v2t_tf=ident, ties=ties, v2t_mode=v2t_mode)


def dual_softmax(sims: np.ndarray, temperature: float = 100.0, *, axis: int = 0) -> np.ndarray:
    """Dual-softmax (DSL) re-scoring: ``sims * softmax(temperature * sims, axis=axis)``.

    Cheng et al. 2021 (arXiv 2109.04290), inference form. ``sims`` is (N_text, N_video) of
    *cosine* similarities (not logit-scaled: ``temperature`` plays the role of CLIP's logit
    scale, hence the default of 100). ``axis=0`` (default) takes
    the prior over texts, i.e. for each video a softmax over all texts, which is the form used
    to re-rank text-to-video; ``axis=1`` takes it over videos (use it for video-to-text).
    The training-loss variant also multiplies by the batch size, a constant that changes no
    ranking and is omitted here. Computed in float64 (a float32 softmax at temperature 100
    underflows to exact zeros, which would create spurious ties). Returns float64.

    The prior uses every query of the test set at once, so DSL numbers are not comparable
    with plain ones; report them separately. Materialises one (N_text, N_video) float64
    matrix; :func:`dual_softmax_metrics` computes DSL metrics without it.
    """
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"axis must be 0 (prior over texts) or 1 (prior over videos), got {axis}")
    s = _check_sims(sims).astype(np.float64)
    if not np.all(np.isfinite(s)):
        _check_nan(s, 0)
        raise ValueError("dual softmax needs finite scores; sims contains +-inf")
    z = float(temperature) * s
    z -= z.max(axis=axis, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=axis, keepdims=True)
    return s * p


def dual_softmax_metrics(
    sims: np.ndarray,
    text_video_index: np.ndarray,
    *,
    temperature: float = 100.0,
    relevant: list[Sequence[int]] | None = None,
    chunk_size: int = 4096,
    ties: str = "pessimistic",
    v2t_mode: str = "videos",
) -> dict:
    """:func:`retrieval_metrics` after DSL re-scoring, done symmetrically and streaming.

    t2v (and t2v_semantic) rank ``dual_softmax(sims, temperature, axis=0)`` (prior over texts);
    v2t ranks ``dual_softmax(sims, temperature, axis=1)`` (prior over videos), so each direction
    gets the prior over the *other* side's candidates' competitors, as in the DSL paper. Same
    result as calling :func:`retrieval_metrics` on the two materialised matrices, without ever
    holding one (one extra streaming pass computes the softmax normalisers).
    """
    sims, idx, rel, chunk = _prepare(sims, text_video_index, relevant, chunk_size, ties, v2t_mode)
    t2v_tf = _DualSoftmax(float(temperature), axis=0)
    v2t_tf = _DualSoftmax(float(temperature), axis=1)
    _dsl_stats(sims, [t2v_tf, v2t_tf], chunk)
    return _rank_all(sims, idx, rel, chunk=chunk, t2v_tf=t2v_tf, v2t_tf=v2t_tf, ties=ties, v2t_mode=v2t_mode)


_ROW_LABELS = {"t2v": "text->video", "v2t": "video->text", "t2v_semantic": "text->video (semantic)"}


def format_metrics_table(metrics: dict, *, title: str | None = None) -> str:
    """A fixed-width table of a :func:`retrieval_metrics` result, one row per direction.

    Known directions come first in a fixed order (t2v, v2t, t2v_semantic), then any other
    sub-dict in insertion order; non-dict entries are ignored. Missing values print as "-".
    """
    if not isinstance(metrics, dict):
        raise TypeError(
            f"format_metrics_table expects the dict returned by retrieval_metrics, got {type(metrics).__name__}"
        )
    keys = [k for k in _ROW_LABELS if isinstance(metrics.get(k), dict)]
    keys += [k for k, v in metrics.items() if isinstance(v, dict) and k not in _ROW_LABELS]
    labels = [_ROW_LABELS.get(k, k) for k in keys]
    width = max([len("direction")] + [len(x) for x in labels])
    heads = ["R@1", "R@5", "R@10", "MdR", "MnR"]
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'direction':<{width}}" + "".join(f"{h:>8}" for h in heads))
    lines.append("-" * (width + 8 * len(heads)))
    for key, label in zip(keys, labels):
        cells = []
        for name in _METRIC_KEYS:
            value = metrics[key].get(name)
            try:
                cells.append(f"{float(value):>8.1f}")
            except (TypeError, ValueError):
                cells.append(f"{'-':>8}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)
