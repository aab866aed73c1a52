"""The uncertainty half of quality protocol v2 (issue 11 section 3), torch-free: does a head's
uncertainty, or a confidence calibrated from it, predict that its top-1 hit is wrong better than
the raw top-1 score and the top1 - top2 margin do?

Used by bench/quality_v2.py's report; it reads only the per-query records that
bench/quality_finetune.py stores in every run's result.json (``queries.val``, ``queries.test``,
``queries.calibration``), so
it can be recomputed, and changed, without retraining. What it computes is pre-registered in the
protocol's ``uncertainty`` section (bench/protocols/quality_v2.json); in short, per run:

- every calibrator is FITTED ON ONE NON-TEST RECORD ONLY (``fit_calibrators`` takes nothing
  else; ``fit_record`` picks it): from setting 10 on the run's calibration gallery, 1,000 videos
  of a second world with the protocol's settings, as large as the test gallery, because scores
  and R@1 depend on the gallery's size; before (settings 6-9) its 300 validation queries. It is
  applied unchanged to the test queries' top-1 hits: Platt on the score, Platt on the margin, the
  full confidence (Platt on score + margin + the head's uncertainty where it has one) and the
  product's calibrator (engine.calibration.fit_on_scores on the top-10 hits of each fitting
  query, exactly what ``probret-export --calibrate`` ships);
- on test: AUROC for "top-1 is wrong", AURC, abstention gain and Spearman with match-set size of
  every signal (engine.uncertainty.uncertainty_report; signals oriented so that higher = less
  sure), and the ECE of every calibrated one over ``ece_bins`` equal-width bins;
- the best uncertainty signal (head uncertainty or confidence), chosen on the fitting record, against the
  margin baselines: the method's own margin and meanP's margin (meanP's own top-1, same seed).

Across seeds: each metric is the mean over seeds (and its sample std, ddof=1). The interval of an
AUROC difference is a two-level bootstrap (seeds and queries resampled, the same query indices for
both sides). quality_stats.paired_bootstrap does not fit: it averages a per-query difference, and
an AUROC is not a mean over queries, so ``auroc_difference`` recomputes both AUROCs per replicate.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from probret.engine.calibration import DEFAULT_TOP_K, Calibrator, fit_on_scores, hit_signals
from probret.engine.uncertainty import auroc, ece, reliability_bins, risk_coverage, uncertainty_report

#: signals in the tables' order; ``meanp_margin`` is the baseline from meanP's run of the same seed
SIGNALS = ("score", "margin", "uncertainty", "confidence", "product", "meanp_margin")
#: the calibrated confidences whose ECE is reported side by side
CALIBRATED = ("platt_score", "platt_margin", "confidence", "product")
CANDIDATES = ("uncertainty", "confidence")  # the "best uncertainty signal" is one of these
#: one colour per signal in every panel (a head without an uncertainty must not shift the others)
COLORS = dict(zip(SIGNALS + CALIBRATED, ("C0", "C1", "C2", "C3", "C4", "C5", "C0", "C1", "C3", "C4")))


# -- one run ------------------------------------------------------------------------------------

def top1_signals(rec: dict) -> dict[str, np.ndarray]:
    """engine.calibration.hit_signals of each query's top-1 hit (score, margin[, uncertainty]),
    from the stored top-1 score and margin: the same definitions the product applies."""
    top1, margin = np.asarray(rec["top1"], np.float64), np.asarray(rec["margin"], np.float64)
    scores = np.stack([top1, top1 - margin], 1)
    unc = None if rec.get("uncertainty_top1") is None else np.repeat(
        np.asarray(rec["uncertainty_top1"], np.float64)[:, None], 2, 1)
    out = {k: v[:, 0] for k, v in hit_signals(scores, unc).items()}
    out["margin"] = margin  # exact, not top1 - (top1 - margin)
    return out


def correct(rec: dict) -> np.ndarray:
    """Is the top-1 hit in the match set (hit1 == 1: a tie at the top counts as wrong unless every
    tied video matches, as engine.uncertainty.top1_correct)?"""
    return np.asarray(rec["hit1"], np.float64) >= 1.0


def calibrator_signals(has_uncertainty: bool) -> dict[str, list[str]]:
    return {"platt_score": ["score"], "platt_margin": ["margin"],
            "confidence": ["score", "margin"] + (["uncertainty"] if has_uncertainty else [])}


def fit_calibrators(val: dict, split: str = "val") -> dict[str, Calibrator]:
    """Every calibrator of the analysis, fitted on the record ``val`` alone (the calibration gallery
    from setting 10 on, the validation split before; ``split`` names it in each domain)."""
    feats, labels = top1_signals(val), correct(val)
    domain = {"dataset": "procedural", "split": split, "queries": len(labels)}
    cals = {name: Calibrator.fit("platt", feats, labels, names, domain=domain)
            for name, names in calibrator_signals("uncertainty" in feats).items()}
    scores = np.asarray(val["topk_scores"], np.float64)
    if scores.shape[1] != DEFAULT_TOP_K:
        raise ValueError(f"{split} keeps {scores.shape[1]} hits per query, the product fits on {DEFAULT_TOP_K}")
    # the top-k hits are already ranked, so fit_on_scores' own ranking keeps their order (stable)
    relevant = [np.flatnonzero(r).tolist() for r in val["topk_relevant"]]
    unc = None if val.get("topk_uncertainty") is None else np.asarray(val["topk_uncertainty"], np.float64)
    cals["product"], _ = fit_on_scores(scores, relevant, unc, top_k=scores.shape[1],
                                       domain={**domain, "gallery_size": gallery_videos(val)})
    return cals


def gallery_videos(record: dict) -> int:
    """How many videos each query of ``record`` was ranked against (the calibrator's domain). Runs
    before setting 11 did not store it: each split was one gallery with one query per video, so
    the query count is the video count there."""
    return int(record.get("gallery_videos", len(record["hit1"])))


def cross_fitted_auroc(val: dict, names: list[str]) -> float:
    """Validation AUROC of a Platt confidence on ``names``, each half of the queries (even / odd)
    scored by a calibrator fitted on the other half: the best signal is chosen on this."""
    feats, labels = top1_signals(val), correct(val)
    held = np.empty(labels.size)
    half = np.arange(labels.size) % 2
    for fold in (0, 1):
        fit, apply = half != fold, half == fold
        cal = Calibrator.fit("platt", {k: v[fit] for k, v in feats.items()}, labels[fit], names)
        held[apply] = cal.confidence({k: v[apply] for k, v in feats.items()})
    return auroc(-held, ~labels)


def best_signal(val: dict) -> tuple[str, dict]:
    """The protocol's ``best_signal`` rule, on the fitting record only: (name, {candidate: its AUROC})."""
    feats = top1_signals(val)
    scores = {"confidence": cross_fitted_auroc(val, calibrator_signals("uncertainty" in feats)["confidence"])}
    if "uncertainty" in feats:
        scores["uncertainty"] = auroc(feats["uncertainty"], ~correct(val))
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not finite:
        return "confidence", scores
    top = max(finite.values())
    return ("confidence" if finite.get("confidence") == top else "uncertainty"), scores


def fit_record(queries: dict) -> tuple[str, dict]:
    """What a run's calibrators are fitted on: its calibration gallery (protocol section
    ``calibration``, setting 10 on), else its validation split (settings 6-9)."""
    return ("calibration", queries["calibration"]) if "calibration" in queries else ("val", queries["val"])


def run_analysis(val: dict, test: dict, *, meanp_test: dict | None, bins: int, fraction: float,
                 fit_split: str = "val") -> dict:
    """One run: calibrators fitted on ``val`` (the record named ``fit_split``), every metric on
    ``test``. Returns the report row and, under ``arrays``, the oriented test signals, the wrong
    flags and the confidences (for the bootstrap and the plots; not stored)."""
    cals = fit_calibrators(val, fit_split)
    feats, ok = top1_signals(test), correct(test)
    conf = {name: cal.confidence(feats) for name, cal in cals.items()}
    oriented = {"score": -feats["score"], "margin": -feats["margin"], "confidence": -conf["confidence"],
                "product": -conf["product"]}
    if "uncertainty" in feats:
        oriented["uncertainty"] = feats["uncertainty"]
    size = np.asarray(test["match_set_size"], np.float64)
    report = uncertainty_report(oriented, ok, size, fraction)
    wrong = {k: ~ok for k in oriented}
    if meanp_test is not None:
        base, base_ok = -top1_signals(meanp_test)["margin"], correct(meanp_test)
        report["meanp_margin"] = uncertainty_report({"m": base}, base_ok, size, fraction)["m"]
        oriented["meanp_margin"], wrong["meanp_margin"] = base, ~base_ok
    best, val_auroc = best_signal(val)
    return {"signals": report, "ece": {n: ece(conf[n], ok, bins) for n in CALIBRATED}, "best": best, "fitted_on": fit_split,
            "val_auroc": val_auroc, "calibrators": {n: c.to_dict() for n, c in cals.items()},
            "arrays": {"oriented": oriented, "wrong": wrong, "confidence": conf, "correct": ok}}


# -- across seeds -------------------------------------------------------------------------------

def auroc_difference(a: np.ndarray, wrong_a: np.ndarray, b: np.ndarray, wrong_b: np.ndarray, *,
                     reps: int, level: float, seed: int) -> dict:
    """AUROC(a) - AUROC(b), per seed, averaged over seeds. a, b: (seeds, queries) oriented signals
    of the same queries; wrong_a / wrong_b their events (different when b is another model's).
    Two-level bootstrap: seeds and queries resampled, the same query indices for a and b."""
    def diff(rows, cols) -> float:
        vals = [auroc(a[r, cols], wrong_a[r, cols]) - auroc(b[r, cols], wrong_b[r, cols]) for r in rows]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    s, q = a.shape
    rng = np.random.default_rng(seed)
    per_seed = np.array([diff([r], np.arange(q)) for r in range(s)])
    boot = np.array([diff(rng.integers(0, s, s), rng.integers(0, q, q)) for _ in range(reps)])
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2]) if boot.size else (math.nan, math.nan)
    finite = per_seed[np.isfinite(per_seed)]  # a seed whose queries are all right (or all wrong) has no AUROC
    return {"mean": float(finite.mean()) if finite.size else math.nan, "lo": float(lo), "hi": float(hi),
            "level": level, "seed_std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "seeds": int(s), "queries": int(q)}


def _mean_std(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    return {"mean": float(v.mean()) if v.size else None, "std": float(v.std(ddof=1)) if v.size > 1 else None}


def _best_arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's best signal (chosen on its fitting record) and its wrong flags, stacked."""
    return (np.stack([r["arrays"]["oriented"][r["best"]] for r in rows]),
            np.stack([r["arrays"]["wrong"][r["best"]] for r in rows]))


def method_summary(rows: list[dict], spec: dict, stats: dict) -> dict:
    """Mean / std over seeds of every metric of one method, the key AUROC differences with their
    intervals, and the targets."""
    signals = [s for s in SIGNALS if all(s in r["signals"] for r in rows)]
    table = {s: {k: _mean_std([r["signals"][s][k] for r in rows]) for k in rows[0]["signals"][s]} for s in signals}
    eces = {n: _mean_std([r["ece"][n] for r in rows]) for n in CALIBRATED}
    best, wrong_best = _best_arrays(rows)
    boot = {"reps": stats["reps"], "level": stats["level"], "seed": stats["seed"]}
    diffs = {}
    for base in ("margin", "meanp_margin"):
        if base in signals:
            b = np.stack([r["arrays"]["oriented"][base] for r in rows])
            wb = np.stack([r["arrays"]["wrong"][base] for r in rows])
            diffs[f"best-{base}"] = auroc_difference(best, wrong_best, b, wb, **boot)
    return {"seeds": len(rows), "signals": table, "ece": eces, "differences": diffs,
            "best_chosen": {c: sum(r["best"] == c for r in rows) for c in CANDIDATES},
            "targets": targets(table, eces, diffs, spec)}


def targets(table: dict, eces: dict, diffs: dict, spec: dict) -> dict:
    """The protocol's uncertainty targets for one method: {name: {value, threshold, met}}."""
    t = spec["targets"]
    base = max((d for d in ("margin", "meanp_margin") if d in table),
               key=lambda d: table[d]["auroc"]["mean"] if table[d]["auroc"]["mean"] is not None else -1)
    d = diffs.get(f"best-{base}", {})
    auroc_met = None if d.get("mean") is None or not math.isfinite(d["mean"]) else bool(
        d["mean"] >= t["auroc_over_margin"] and d["lo"] > 0)
    e = eces["confidence"]["mean"]
    g = table["confidence"]["abstain_gain"]["mean"]
    return {"auroc_over_margin": {"baseline": base, "value": d.get("mean"), "lo": d.get("lo"),
                                  "threshold": t["auroc_over_margin"], "met": auroc_met},
            "confidence_ece_max": {"value": e, "threshold": t["confidence_ece_max"],
                                   "met": None if e is None else bool(e <= t["confidence_ece_max"])},
            "abstention_gain_min": {"value": g, "threshold": t["abstention_gain_min"],
                                    "met": None if g is None else bool(g >= t["abstention_gain_min"])}}


def analyse(runs: dict, seeds: list[int], methods: list[str], protocol: dict) -> tuple[dict, dict]:
    """(report, per-method run rows with their arrays). ``runs``: {(method, seed): result.json}."""
    spec = protocol["uncertainty"]
    rows, calibrators = {}, {}
    for m in methods:
        rows[m] = []
        for s in (s for s in seeds if (m, s) in runs):
            meanp = runs[("meanp", s)]["queries"]["test"] if ("meanp", s) in runs else None
            fit_split, fit = fit_record(runs[(m, s)]["queries"])
            row = run_analysis(fit, runs[(m, s)]["queries"]["test"], meanp_test=meanp, bins=spec["ece_bins"],
                               fraction=spec["abstain_fraction"], fit_split=fit_split)
            rows[m].append(row)
            calibrators[f"{m}-s{s}"] = row["calibrators"]
    summaries = {m: method_summary(r, spec, protocol["statistics"]) for m, r in rows.items() if r}
    fitted_on = sorted({row["fitted_on"] for r in rows.values() for row in r})
    return _finite({"spec": spec, "methods": summaries, "calibrators": calibrators, "fitted_on": fitted_on}), rows


def _finite(x):
    """NaN (an AUROC of a split with one class) as None, so results.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# -- plots --------------------------------------------------------------------------------------

def _grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, axes.flat


#: what ``fit_record`` returns, in words (report text and plot titles)
FIT_RECORD_NAMES = {"val": "the validation split", "calibration": "the calibration gallery"}


def _fitted_on(rows: dict[str, list[dict]]) -> str:
    return " / ".join(FIT_RECORD_NAMES[f] for f in sorted({row["fitted_on"] for r in rows.values() for row in r}))


def plot_risk_coverage(rows: dict[str, list[dict]], path: Path) -> Path:
    """One panel per method: risk (error rate of the kept queries) against coverage for every
    signal, the mean of the seeds' curves, with the oracle ordering dashed."""
    methods = [m for m, r in rows.items() if r]
    plt, fig, axes = _grid(len(methods))
    for ax, m in zip(axes, methods):
        for s in SIGNALS:
            if all(s in r["arrays"]["oriented"] for r in rows[m]):
                curves = [risk_coverage(r["arrays"]["oriented"][s], r["arrays"]["wrong"][s]) for r in rows[m]]
                ax.plot(curves[0][0], np.mean([c[1] for c in curves], 0), label=s, lw=1.2, color=COLORS[s])
        oracle = [risk_coverage(w.astype(float), w) for w in (r["arrays"]["wrong"]["margin"] for r in rows[m])]
        ax.plot(oracle[0][0], np.mean([c[1] for c in oracle], 0), "k--", lw=0.8, label="oracle")
        ax.set(title=f"{m} ({len(rows[m])} seeds)", xlabel="coverage", ylabel="risk (top-1 wrong)", xlim=(0, 1))
        ax.legend(fontsize=7)
    fig.suptitle("Risk-coverage on test (calibrators fitted on " + _fitted_on(rows) + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(rows: dict[str, list[dict]], path: Path, bins: int) -> Path:
    """One panel per method: accuracy against mean confidence in each of ``bins`` equal-width bins
    (test queries of all seeds pooled) for every calibrated confidence, the diagonal for reference."""
    methods = [m for m, r in rows.items() if r]
    plt, fig, axes = _grid(len(methods))
    for ax, m in zip(axes, methods):
        ok = np.concatenate([r["arrays"]["correct"] for r in rows[m]])
        for n in CALIBRATED:
            conf = np.concatenate([r["arrays"]["confidence"][n] for r in rows[m]])
            b = reliability_bins(conf, ok, bins)
            ax.plot([x["confidence"] for x in b], [x["accuracy"] for x in b], "o-", ms=3, lw=1, label=n, color=COLORS[n])
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=f"{m} ({len(rows[m])} seeds)", xlabel="confidence", ylabel="accuracy (top-1 right)",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.suptitle(f"Reliability on test, {bins} equal-width bins (calibrators fitted on {_fitted_on(rows)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the report's tables -----------------------------------------------------------------------

def _f(cell, nd=3) -> str:
    v = cell.get("mean") if isinstance(cell, dict) else cell
    return "-" if v is None else f"{v:.{nd}f}"


def _signal_table(methods: dict, metric: str, title: str, nd: int) -> list[str]:
    lines = ["", title, "", "| method | " + " | ".join(SIGNALS) + " |", "|---" * (len(SIGNALS) + 1) + "|"]
    for m, s in methods.items():
        lines.append(f"| {m} | " + " | ".join(_f(s["signals"][x][metric], nd) if x in s["signals"] else "-"
                                           for x in SIGNALS) + " |")
    return lines


def markdown(report: dict) -> str:
    spec, methods = report["spec"], report["methods"]
    on = " / ".join(FIT_RECORD_NAMES.get(f, f) for f in report.get("fitted_on") or ["val"])
    lines = ["", f"Uncertainty (issue 11 section 3): test split, every calibrator fitted on {on} only, never on test; "
             f"mean over seeds. Signals: {', '.join(SIGNALS)} (the protocol's uncertainty section)."]
    lines += _signal_table(methods, "auroc", "AUROC for \"top-1 is not in the match set\" (0.5 = no information):", 3)
    lines += _signal_table(methods, "aurc", "AURC (risk-coverage area, lower is better; plot: risk_coverage.png):", 3)
    lines += _signal_table(methods, "abstain_gain", f"Abstention: R@1 on the {100 * (1 - spec['abstain_fraction']):.0f}% "
                           "most confident queries minus R@1 on all (points):", 1)
    lines += _signal_table(methods, "spearman_match_set_size", "Spearman of each signal (higher = less sure) "
                           "with the match-set size:", 3)
    lines += ["", f"Confidence ECE on test ({spec['ece_bins']} equal-width bins; plot: reliability.png):", "",
              "| method | " + " | ".join(CALIBRATED) + " |", "|---" * (len(CALIBRATED) + 1) + "|"]
    for m, s in methods.items():
        lines.append(f"| {m} | " + " | ".join(f"{_f(s['ece'][n])} ± {_f(s['ece'][n]['std'])}" if s["ece"][n]["std"]
                                              is not None else _f(s["ece"][n]) for n in CALIBRATED) + " |")
    lines += ["", "Best uncertainty signal (chosen per seed on the data the calibrators are fitted on) minus a margin baseline, AUROC, "
              "with a two-level bootstrap interval:", "",
              "| method | best chosen | difference | mean | CI | seed std |", "|---|---|---|---|---|---|"]
    for m, s in methods.items():
        chosen = ", ".join(f"{k} x{v}" for k, v in s["best_chosen"].items() if v)
        for name, d in s["differences"].items():
            lines.append(f"| {m} | {chosen} | {name} | {_f(d)} | [{_f(d['lo'])}, {_f(d['hi'])}] | {_f(d['seed_std'])} |")
    t = spec["targets"]
    lines += ["", f"Targets (issue 11): best - stronger margin baseline AUROC >= {t['auroc_over_margin']} with CI > 0; "
              f"confidence ECE <= {t['confidence_ece_max']}; abstention gain of the confidence >= "
              f"{t['abstention_gain_min']} points:", "",
              "| method | AUROC gain | ECE | abstention |", "|---|---|---|---|"]
    word = {True: "met", False: "not met", None: "n/a"}
    for m, s in methods.items():
        tg = s["targets"]
        lines.append(f"| {m} | {_f(tg['auroc_over_margin']['value'])} vs {tg['auroc_over_margin']['baseline']}: "
                     f"{word[tg['auroc_over_margin']['met']]} | {_f(tg['confidence_ece_max']['value'])}: "
                     f"{word[tg['confidence_ece_max']['met']]} | {_f(tg['abstention_gain_min']['value'], 1)}: "
                     f"{word[tg['abstention_gain_min']['met']]} |")
    return "\n".join(lines) + "\n"
