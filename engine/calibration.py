"""Calibrated per-hit confidence: the probability that a search hit truly matches its query.

numpy only (the engine never imports torch). The same code fits the calibrator (at export, on the
validation split; export/calibrate.py) and applies it (at search time, in the engine), so
the signals a calibrator was fitted on are exactly the ones it is applied to.

Signals (``hit_signals``), computed from one query's ranked hit scores, best first:

    score        s_k                      the hit's own score
    margin       s_k - max_{j != k} s_j   top-1: s_1 - s_2 (>= 0); every other hit: s_k - s_1 (<= 0)
    uncertainty  u_k                      the head's raw per-pair uncertainty (higher = less sure), when
                                          the bundle's head predicts one

``margin`` needs the two best scores of the query, so a search that keeps only the top k hits
(k >= 2) computes it exactly. A query with a single candidate has no "other" hit; its margin is 0
(the least informative value, between a clear winner's > 0 and a loser's < 0).

Two calibrators, both monotone in their signal and bounded in [0, 1]:

    platt      p = sigmoid(sum_i w_i x_i + b)      logistic regression (Platt 1999: Newton's method,
                                                   targets smoothed to (N+ + 1)/(N+ + 2), N- + 1)/(N- + 2))
    isotonic   p = interp(x, table_x, table_y)     pool-adjacent-violators on one signal, stored as each
                                                   block's (first x, mean label), (last x, mean label):
                                                   flat inside a block, linear between blocks, constant
                                                   beyond the ends; ``increasing`` says the direction
                                                   (False for ``uncertainty``)

The fitted values are clipped to [1/(n+2), (n+1)/(n+2)] (n = fitting examples): a finite sample never
justifies certainty, and clipping is monotone, so the order is kept.

A calibrator holds for the domain it was fitted on; the dict carries that ``domain`` (dataset, split,
gallery size, queries) and the validation ECE, measured by 2-fold cross-fitting on the validation
queries (each half scored by a calibrator fitted on the other half), so it is not an in-sample number.

The dict stored in the bundle manifest (``to_dict`` / ``from_dict``)::

    {"kind": "isotonic", "signals": ["margin"], "increasing": true,
     "table_x": [...], "table_y": [...],                       # isotonic
     "weights": [...], "bias": 0.0,                            # platt (instead of the table)
     "top_k": 10, "domain": {"dataset": ..., "split": "val", "gallery_size": ..., "queries": ...},
     "val_ece": 0.031}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probret.engine.errors import ModelError

SIGNALS = ("score", "margin", "uncertainty")
KINDS = ("platt", "isotonic")
#: how many ranked hits per validation query become fitting examples (and the k the domain assumes)
DEFAULT_TOP_K = 10


# --------------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------------


def hit_signals(scores_sorted, uncertainty=None) -> dict[str, np.ndarray]:
    """Per-hit signals of ranked hits: ``scores_sorted`` (K,) or (N_q, K), best first along the last
    axis; ``uncertainty`` the head's per-hit uncertainty in the same layout, or None.
    Returns {"score", "margin"[, "uncertainty"]} each of the input's shape, float64."""
    s = np.asarray(scores_sorted, dtype=np.float64)
    if s.ndim not in (1, 2) or s.shape[-1] == 0:
        raise ValueError(f"scores_sorted must be (K,) or (N_q, K) with K >= 1, got shape {s.shape}")
    if s.shape[-1] > 1 and np.any(np.diff(s, axis=-1) > 0):
        raise ValueError("scores_sorted must be sorted best first (non-increasing along the last axis)")
    best = s[..., :1]
    if s.shape[-1] > 1:
        second = s[..., 1:2]
        margin = np.where(np.arange(s.shape[-1]) == 0, best - second, s - best)
    else:
        margin = np.zeros_like(s)
    out = {"score": s, "margin": margin}
    if uncertainty is not None:
        u = np.asarray(uncertainty, dtype=np.float64)
        if u.shape != s.shape:
            raise ValueError(f"uncertainty has shape {u.shape} but scores_sorted has {s.shape}")
        out["uncertainty"] = u
    return out


def ranked_hits(sims, uncertainty=None, top_k: int = DEFAULT_TOP_K):
    """Top-k columns of every row of an (N_q, N_v) score matrix, best first: returns (columns (N_q, k),
    scores (N_q, k), uncertainty (N_q, k) or None). Ties keep the lower column first (stable)."""
    sims = np.asarray(sims, dtype=np.float64)
    k = min(int(top_k), sims.shape[1])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(sims, order, 1)
    unc = None if uncertainty is None else np.take_along_axis(np.asarray(uncertainty, np.float64), order, 1)
    return order, scores, unc


def calibration_examples(sims, relevant, uncertainty=None, top_k: int = DEFAULT_TOP_K):
    """Fitting examples from a scored split: every query's top-k hits, their signals and whether each
    hit is in the query's match set. ``relevant[i]`` lists the columns that truly match query i.
    Returns (signals dict of flat (N_q * k,) arrays, labels (N_q * k,) bool)."""
    cols, scores, unc = ranked_hits(sims, uncertainty, top_k)
    if len(relevant) != cols.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} entries for {cols.shape[0]} queries")
    labels = np.array([[c in set(rel) for c in row] for row, rel in zip(cols.tolist(), relevant)], dtype=bool)
    signals = {k: v.reshape(-1) for k, v in hit_signals(scores, unc).items()}
    return signals, labels.reshape(-1)


# --------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------


def _clip_bounds(n: int) -> tuple[float, float]:
    return 1.0 / (n + 2), (n + 1.0) / (n + 2)


def fit_platt(signal, labels, *, ridge: float = 1e-6, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Logistic regression of labels on ``signal`` ((N,) or (N, F)) by Newton's method, Platt's smoothed
    targets and a tiny ridge (so separable data converges). Returns (weights (F,), bias)."""
    x = np.asarray(signal, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = np.asarray(labels, dtype=bool)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"signal {x.shape} and labels {y.shape} must be non-empty with one label per row")
    if not np.all(np.isfinite(x)):
        raise ValueError("signal holds NaN or infinite values")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    target = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    xb = np.concatenate([x, np.ones((x.shape[0], 1))], 1)
    theta = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], ridge)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = _sigmoid(xb @ theta)
        grad = xb.T @ (p - target) + reg * theta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-12)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta[:-1], float(theta[-1])


def fit_isotonic(signal, labels, *, increasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the monotone step function closest (least squares) to the labels as a
    function of ``signal``. Returns the table (x strictly increasing: each block's first and last
    signal value; y: the block's label mean at both, monotone in the given direction, clipped to the
    finite-sample bounds). ``np.interp`` on it is the PAV fit at every fitted signal value and linear
    between blocks."""
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"signal {x.shape} and labels {y.shape} must be non-empty and the same length")
    if not np.all(np.isfinite(x)):
        raise ValueError("signal holds NaN or infinite values")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ys = y[order] if increasing else -y[order]  # a decreasing fit is an increasing fit of -y
    # equal signals are one point: merge them first, so the table's x is strictly increasing
    ux, start = np.unique(xs, return_index=True)
    counts = np.diff(np.append(start, xs.size)).astype(np.float64)
    sums = np.add.reduceat(ys, start)
    blocks: list[list[float]] = []  # [label sum, weight, first x, last x]
    for s, w, xv in zip(sums, counts, ux):
        blocks.append([s, w, xv, xv])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s2, w2, _, last = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += w2
            blocks[-1][3] = last
    # each block is flat from its first to its last signal value; interpolate between blocks
    tx, ty = [], []
    for s, w, first, last in blocks:
        tx += [first] if first == last else [first, last]
        ty += [s / w] if first == last else [s / w, s / w]
    tx, ty = np.array(tx), np.array(ty)
    ty = ty if increasing else -ty
    lo, hi = _clip_bounds(x.size)
    return tx, np.clip(ty, lo, hi)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


# --------------------------------------------------------------------------------------------
# the calibrator
# --------------------------------------------------------------------------------------------


@dataclass
class Calibrator:
    """A fitted map from hit signals to the probability that the hit matches."""

    kind: str
    signals: list[str]
    increasing: bool = True
    table_x: np.ndarray | None = None
    table_y: np.ndarray | None = None
    weights: np.ndarray | None = None
    bias: float = 0.0
    top_k: int = DEFAULT_TOP_K
    domain: dict = field(default_factory=dict)
    val_ece: float | None = None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def fit(cls, kind: str, signals: dict[str, np.ndarray], labels, names: list[str], *,
            increasing: bool | None = None, top_k: int = DEFAULT_TOP_K, domain: dict | None = None) -> "Calibrator":
        """Fit ``kind`` on the named signals. Isotonic takes one signal; its direction defaults to
        decreasing for ``uncertainty`` and increasing otherwise."""
        _check_kind_signals(kind, names)
        missing = [n for n in names if n not in signals]
        if missing:
            raise ValueError(f"signals {missing} were not computed (have {sorted(signals)})")
        if kind == "isotonic":
            inc = (names[0] != "uncertainty") if increasing is None else increasing
            tx, ty = fit_isotonic(signals[names[0]], labels, increasing=inc)
            return cls(kind, list(names), inc, tx, ty, top_k=top_k, domain=dict(domain or {}))
        w, b = fit_platt(np.stack([signals[n] for n in names], 1), labels)
        return cls(kind, list(names), bool(w[0] >= 0), weights=w, bias=b, top_k=top_k, domain=dict(domain or {}))

    @classmethod
    def from_dict(cls, d) -> "Calibrator":
        """Validate a manifest's ``calibration`` dict; a bad field raises ModelError naming its key."""
        if not isinstance(d, dict):
            raise ModelError(f"calibration must be a JSON object, got {type(d).__name__}")
        kind = _get(d, "kind", str)
        names = _get(d, "signals", list)
        if not names or not all(isinstance(n, str) for n in names):
            raise ModelError("calibration.signals must be a non-empty list of signal names")
        try:
            _check_kind_signals(kind, names)
        except ValueError as e:
            raise ModelError(f"calibration: {e}") from None
        top_k = _get(d, "top_k", int, DEFAULT_TOP_K)
        if top_k < 2:
            raise ModelError(f"calibration.top_k must be >= 2 (margin needs two hits), got {top_k}")
        domain = _get(d, "domain", dict, {})
        val_ece = _get(d, "val_ece", (int, float), None)
        if kind == "isotonic":
            tx, ty = _table(d, "table_x"), _table(d, "table_y")
            if tx.size != ty.size:
                raise ModelError(f"calibration.table_x has {tx.size} entries but table_y has {ty.size}")
            if np.any(np.diff(tx) <= 0):
                raise ModelError("calibration.table_x must be strictly increasing")
            if np.any(ty < 0) or np.any(ty > 1):
                raise ModelError("calibration.table_y must hold probabilities in [0, 1]")
            increasing = _get(d, "increasing", bool, True)
            steps = np.diff(ty)
            if np.any(steps < 0 if increasing else steps > 0):
                raise ModelError(f"calibration.table_y must be {'non-decreasing' if increasing else 'non-increasing'}"
                                 " (calibration.increasing)")
            return cls(kind, names, increasing, tx, ty, top_k=top_k, domain=domain, val_ece=val_ece)
        w = _table(d, "weights")
        if w.size != len(names):
            raise ModelError(f"calibration.weights has {w.size} entries for {len(names)} signals")
        bias = float(_get(d, "bias", (int, float)))
        return cls(kind, names, bool(w[0] >= 0), weights=w, bias=bias, top_k=top_k, domain=domain, val_ece=val_ece)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "signals": list(self.signals), "top_k": int(self.top_k), "domain": dict(self.domain),
             "val_ece": None if self.val_ece is None else float(self.val_ece)}
        if self.kind == "isotonic":
            d.update(increasing=bool(self.increasing), table_x=[float(v) for v in self.table_x],
                     table_y=[float(v) for v in self.table_y])
        else:
            d.update(weights=[float(v) for v in self.weights], bias=float(self.bias))
        return d

    # -- application -------------------------------------------------------------------------
    def confidence(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Probability in [0, 1] that each hit matches, from ``hit_signals`` output (any shape)."""
        missing = [n for n in self.signals if n not in features]
        if missing:
            raise ModelError(f"the calibrator needs signal(s) {missing}, which this search does not produce "
                             f"(have {sorted(features)}); re-export the bundle with a calibrator on available signals")
        if self.kind == "isotonic":
            x = np.asarray(features[self.signals[0]], dtype=np.float64)
            p = np.interp(x, self.table_x, self.table_y)
        else:
            z = sum(w * np.asarray(features[n], dtype=np.float64) for w, n in zip(self.weights, self.signals))
            p = _sigmoid(z + self.bias)
        return np.clip(p, 0.0, 1.0)

    def describe(self) -> str:
        dom = self.domain
        where = ", ".join(f"{k} {dom[k]}" for k in ("dataset", "split", "gallery_size") if k in dom)
        return f"{self.kind} on {'+'.join(self.signals)}" + (f" ({where})" if where else "")


def _check_kind_signals(kind, names) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; known: {SIGNALS}")
    if kind == "isotonic" and len(names) != 1:
        raise ValueError(f"isotonic calibration takes exactly one signal, got {list(names)}")


_MISSING = object()


def _get(d: dict, key: str, types, default=_MISSING):
    if key not in d or (d[key] is None and default is None):
        if default is _MISSING:
            raise ModelError(f"calibration.{key} is missing")
        return default
    value = d[key]
    if isinstance(value, bool) and types is not bool and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ModelError(f"calibration.{key} must be {getattr(types, '__name__', types)}, got a boolean")
    if not isinstance(value, types):
        raise ModelError(f"calibration.{key} has the wrong type ({type(value).__name__})")
    return value


def _table(d: dict, key: str) -> np.ndarray:
    values = _get(d, key, list)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"calibration.{key} must be a list of numbers") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ModelError(f"calibration.{key} must be a non-empty list of finite numbers")
    return arr


# --------------------------------------------------------------------------------------------
# fitting on a scored validation split, with the choice of signal made by cross-fitting
# --------------------------------------------------------------------------------------------

#: (kind, signals) tried by ``fit_on_scores``; ones needing an uncertainty are skipped without one
CANDIDATES = (("isotonic", ("margin",)), ("isotonic", ("score",)), ("platt", ("score",)), ("platt", ("margin",)),
              ("platt", ("score", "margin")), ("isotonic", ("uncertainty",)),
              ("platt", ("score", "margin", "uncertainty")))


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def cross_fit(kind: str, names, signals: dict, labels: np.ndarray, n_queries: int, top_k: int) -> dict:
    """2-fold cross-fitting over queries (even / odd): every example is scored by a calibrator that
    never saw its query. Returns held-out log-loss over all hits and ECE / AUROC over top-1 hits."""
    from probret.engine.uncertainty import auroc, ece

    query = np.repeat(np.arange(n_queries), top_k)
    held = np.empty(labels.shape, dtype=np.float64)
    for fold in (0, 1):
        train, test = query % 2 != fold, query % 2 == fold
        cal = Calibrator.fit(kind, {k: v[train] for k, v in signals.items()}, labels[train], list(names), top_k=top_k)
        held[test] = cal.confidence({k: v[test] for k, v in signals.items()})
    top1 = np.arange(labels.size) % top_k == 0
    return {"log_loss": _log_loss(held, labels), "ece_top1": ece(held[top1], labels[top1]),
            "ece_all": ece(held, labels), "auroc_top1": auroc(-held[top1], ~labels[top1])}


def fit_on_scores(sims, relevant, uncertainty=None, *, candidates=CANDIDATES, top_k: int = DEFAULT_TOP_K,
                  domain: dict | None = None) -> tuple[Calibrator, dict]:
    """Fit every candidate (kind, signals) on a validation split's scores, keep the one with the lowest
    cross-fitted log-loss (a proper scoring rule: it rewards separation and calibration together),
    refit it on the whole split and record its cross-fitted top-1 ECE as ``val_ece``.
    Returns (calibrator, {"kind+signals": cross-fit metrics} for every candidate tried)."""
    return fit_on_galleries([(sims, relevant, uncertainty)], candidates=candidates, top_k=top_k, domain=domain)


def fit_on_galleries(galleries, *, candidates=CANDIDATES, top_k: int = DEFAULT_TOP_K,
                     domain: dict | None = None) -> tuple[Calibrator, dict]:
    """``fit_on_scores`` on several galleries of one size, their examples pooled: ``galleries`` is a list of
    (sims (N_q, N_v), relevant, uncertainty or None), each query ranked only against its own gallery.
    A confidence depends on how many near-misses a gallery holds, so a validation split cut into
    galleries of the size a user searches gives probabilities for that size, from more queries than
    one gallery of that size has. The domain records ``gallery_size`` (N_v), ``galleries`` (when more
    than one) and ``queries`` (all galleries)."""
    galleries = [(np.asarray(s), r, u) for s, r, u in galleries]
    if not galleries or len({s.shape[1] for s, _, _ in galleries}) != 1:
        raise ValueError(f"need one or more galleries of one size, got sizes {[s.shape[1] for s, _, _ in galleries]}")
    n_video, n_query = galleries[0][0].shape[1], sum(s.shape[0] for s, _, _ in galleries)
    if any(u is None for _, _, u in galleries) and any(u is not None for _, _, u in galleries):
        raise ValueError("give the uncertainty for every gallery or for none")
    top_k = min(int(top_k), n_video)
    if top_k < 2 or n_query < 4:
        raise ValueError(f"need at least 4 queries and 2 candidates to fit a calibrator, got {n_query} and {n_video}")
    parts = [calibration_examples(s, r, u, top_k) for s, r, u in galleries]
    signals = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    labels = np.concatenate([p[1] for p in parts])
    report = {}
    for kind, names in candidates:
        if any(n not in signals for n in names):
            continue
        report[f"{kind}:{'+'.join(names)}"] = cross_fit(kind, names, signals, labels, n_query, top_k)
    if not report:
        raise ValueError("no calibration candidate could be fitted with the signals available")
    best = min(report, key=lambda k: report[k]["log_loss"])
    kind, names = best.split(":")[0], best.split(":")[1].split("+")
    dom = {"gallery_size": int(n_video), **({"galleries": len(galleries)} if len(galleries) > 1 else {}),
           "queries": int(n_query), **(domain or {})}
    cal = Calibrator.fit(kind, signals, labels, names, top_k=top_k, domain=dom)
    cal.val_ece = report[best]["ece_top1"]
    return cal, report
