"""Does an uncertainty (or confidence) signal predict retrieval errors? numpy only.

The event of interest is "the top-1 hit is not in the query's match set" (``top1_correct``, which
takes the match sets of the procedural world, or the one ground-truth column per text). A signal is
oriented so that HIGHER means MORE LIKELY WRONG (an uncertainty); pass ``-confidence`` or
``-margin`` for signals that grow with certainty.

    auroc(signal, wrong)              P(signal of a wrong query > signal of a right one), ties count 1/2
                                      (Mann-Whitney U / (n_wrong n_right)); 0.5 = no information
    risk_coverage(signal, wrong)      keep the c most certain queries, risk = error rate among them,
                                      for every c = 1..N; AURC = mean risk over c (lower is better;
                                      Geifman & El-Yaniv 2017), with the oracle AURC for reference
    abstention_gain(signal, correct)  R@1 on the kept queries after abstaining on the given fraction of
                                      the least certain ones, minus R@1 on all queries (points)
    ece(confidence, correct)          expected calibration error over equal-width bins of a probability
                                      (``reliability_bins`` gives the diagram's bins)
    rank_correlation(a, b)            Spearman's rho (e.g. uncertainty vs match-set size)

Ties in the signal are broken by query order nowhere: AUROC counts them as 1/2 and the risk-coverage
curve averages over tied groups (``_tie_averaged_errors``), so a constant signal scores exactly 0.5
and the AURC of random order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["top1_correct", "auroc", "risk_coverage", "aurc", "abstention_gain", "ece", "reliability_bins",
           "rank_correlation", "uncertainty_report"]


def top1_correct(sims, relevant=None, text_video_index=None) -> np.ndarray:
    """(N_q,) bool: is each query's top-1 column in its match set? Give ``relevant`` (list of column
    lists) or ``text_video_index`` (one column per query). Ties at the top count as wrong unless every
    tied column is relevant (pessimistic, as engine/metrics.py)."""
    sims = np.asarray(sims)
    if relevant is None:
        if text_video_index is None:
            raise ValueError("give relevant (match sets) or text_video_index")
        relevant = [[int(j)] for j in np.asarray(text_video_index)]
    if len(relevant) != sims.shape[0]:
        raise ValueError(f"{len(relevant)} match sets for {sims.shape[0]} queries")
    best = sims.max(1, keepdims=True)
    out = np.empty(sims.shape[0], dtype=bool)
    for i, rel in enumerate(relevant):
        top = np.flatnonzero(sims[i] == best[i, 0])
        out[i] = set(top.tolist()) <= set(int(j) for j in rel)
    return out


def _check_pair(signal, flag, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(signal, dtype=np.float64).reshape(-1)
    f = np.asarray(flag, dtype=bool).reshape(-1)
    if s.shape != f.shape or s.size == 0:
        raise ValueError(f"signal {s.shape} and {what} {f.shape} must be non-empty and the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("signal holds NaN or infinite values")
    return s, f


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    xs = x[order]
    _, start, counts = np.unique(xs, return_index=True, return_counts=True)
    mean_rank = start + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def auroc(signal, wrong) -> float:
    """Area under the ROC curve of ``signal`` for detecting ``wrong`` (NaN if one class is empty)."""
    s, w = _check_pair(signal, wrong, "wrong")
    n_w, n_r = int(w.sum()), int((~w).sum())
    if n_w == 0 or n_r == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[w].sum() - n_w * (n_w + 1) / 2.0) / (n_w * n_r))


def _tie_averaged_errors(s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Errors in order of increasing signal, each tied group replaced by its mean error."""
    order = np.argsort(s, kind="stable")
    xs, ws = s[order], w[order].astype(np.float64)
    _, start, counts = np.unique(xs, return_index=True, return_counts=True)
    return np.repeat(np.add.reduceat(ws, start) / counts, counts)


def risk_coverage(signal, wrong) -> tuple[np.ndarray, np.ndarray]:
    """(coverage (N,), risk (N,)): keeping the c least uncertain queries, c = 1..N."""
    s, w = _check_pair(signal, wrong, "wrong")
    errs = _tie_averaged_errors(s, w)
    c = np.arange(1, s.size + 1)
    return c / s.size, np.cumsum(errs) / c


def aurc(signal, wrong) -> dict:
    """{"aurc", "oracle", "random"}: area under the risk-coverage curve of the signal, of the perfect
    ordering (all right queries first), and of a signal with no information (= the error rate)."""
    s, w = _check_pair(signal, wrong, "wrong")
    _, risk = risk_coverage(s, w)
    _, oracle = risk_coverage(w.astype(np.float64), w)
    return {"aurc": float(risk.mean()), "oracle": float(oracle.mean()), "random": float(w.mean())}


def abstention_gain(signal, correct, fraction: float = 0.2) -> dict:
    """Abstain on the ``fraction`` most uncertain queries: {"kept_R1", "all_R1", "gain"} in points."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    s, c = _check_pair(signal, correct, "correct")
    keep = int(round((1.0 - fraction) * s.size))
    errs = _tie_averaged_errors(s, ~c)
    kept = 100.0 * (1.0 - errs[:max(keep, 1)].mean())
    overall = 100.0 * c.mean()
    return {"kept_R1": float(kept), "all_R1": float(overall), "gain": float(kept - overall)}


def reliability_bins(confidence, correct, n_bins: int = 10) -> list[dict]:
    """Equal-width bins of the confidence in [0, 1]: count, mean confidence, accuracy (non-empty bins)."""
    p, c = _check_pair(confidence, correct, "correct")
    if np.any(p < 0) or np.any(p > 1):
        raise ValueError("confidence must lie in [0, 1]")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(m.sum()),
                        "confidence": float(p[m].mean()), "accuracy": float(c[m].mean())})
    return out


def ece(confidence, correct, n_bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (count / N) |accuracy - mean confidence|."""
    bins = reliability_bins(confidence, correct, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))


def rank_correlation(a, b) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant."""
    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two equal-length samples of at least 2, got {x.shape} and {y.shape}")
    rx, ry = _average_ranks(x), _average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def uncertainty_report(signals: dict[str, np.ndarray], correct, match_set_size=None, fraction: float = 0.2) -> dict:
    """Every metric for each named per-query signal (oriented: higher = less certain)."""
    wrong = ~np.asarray(correct, dtype=bool)
    out = {}
    for name, s in signals.items():
        row = {"auroc": auroc(s, wrong), **aurc(s, wrong), **{f"abstain_{k}": v for k, v in
                                                                 abstention_gain(s, ~wrong, fraction).items()}}
        if match_set_size is not None:
            row["spearman_match_set_size"] = rank_correlation(s, match_set_size)
        out[name] = row
    return out
