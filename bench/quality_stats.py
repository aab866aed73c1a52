"""The numbers of quality protocol v2 (bench/quality_v2.py), torch-free: per-query scores against
match sets, the model-free floor ranker, linear probes for the encoder gate, paired bootstrap
confidence intervals, and the pre-registered comparisons of bench/protocols/quality_v2.json.

Per-query scores. For query i with match set M_i (every video it truly describes, its own
included), ``hit1[i]`` is the probability that the top-1 video is in M_i when ties are broken at
random: (matching videos at the top score) / (all videos at the top score), exactly what a
model-free ranker with many ties needs. ``rank[i]`` is the expected rank of the first matching
video, 1 + greater + ties / (matching ties + 1), engine/metrics.py's convention.
"""

from __future__ import annotations

import re

import numpy as np

KINDS = ("full", "partial", "short")


def per_query(sims: np.ndarray, relevant: list[list[int]]) -> dict[str, np.ndarray]:
    """hit1 (probability, 0..1) and expected rank of the first relevant video, per query row."""
    n = sims.shape[0]
    hit1, rank = np.empty(n), np.empty(n)
    for i in range(n):
        row = sims[i]
        mask = np.zeros(row.shape[0], dtype=bool)
        mask[relevant[i]] = True
        top = row.max()
        at_top = row == top
        hit1[i] = (at_top & mask).sum() / at_top.sum()
        best = row[mask].max()
        greater = int((row[~mask] > best).sum())
        ties = int((row[~mask] == best).sum())
        g = int((row[mask] == best).sum())
        rank[i] = 1 + greater + ties / (g + 1)
    return {"hit1": hit1, "rank": rank}


def margins(sims: np.ndarray) -> dict[str, np.ndarray]:
    """Top-1 score and top1 - top2 margin per query (baselines for uncertainty, issue 11 §3)."""
    part = -np.partition(-sims, 1, axis=1)[:, :2]
    return {"top1": part[:, 0], "margin": part[:, 0] - part[:, 1]}


# -- the model-free floor ----------------------------------------------------------------------

def floor_scores(texts: list[str], video_records: list[dict], colors: list[str], backgrounds: list[str]) -> np.ndarray:
    """The "background + colour words only" ranker: a video scores one point for the query's
    background word if it is the video's background, and one per colour word of the query that
    some object of the video has. No model, no shape, no motion: what an encoder that learned
    only background and colour can do. (Protocol v2 queries never name the background, so
    there it ranks by colour alone.)"""
    word = re.compile(r"[a-z]+")
    sims = np.zeros((len(texts), len(video_records)), dtype=np.float32)
    video_colors = [{o["color"] for o in v["objects"]} for v in video_records]
    video_bg = [v["background"] for v in video_records]
    for i, text in enumerate(texts):
        words = set(word.findall(text.lower()))
        said_colors = [c for c in colors if c in words]
        said_bg = [b for b in backgrounds if b in words]
        for j in range(len(video_records)):
            sims[i, j] = sum(c in video_colors[j] for c in said_colors) + sum(b == video_bg[j] for b in said_bg)
    return sims


# -- encoder gate: linear probes ----------------------------------------------------------------

def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                 l2: float = 1e-3, steps: int = 300, seed: int = 0) -> dict:
    """Multinomial logistic regression (full-batch gradient descent with Adam on standardised
    features), test accuracy against the majority class of the training labels."""
    rng = np.random.default_rng(seed)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    classes = np.unique(y_train)
    yi = np.searchsorted(classes, y_train)
    w = rng.normal(0, 0.01, (a.shape[1], len(classes)))
    bias = np.zeros(len(classes))
    m_w, v_w, m_b, v_b = (np.zeros_like(w), np.zeros_like(w), np.zeros_like(bias), np.zeros_like(bias))
    onehot = np.eye(len(classes))[yi]
    for t in range(1, steps + 1):
        logits = a @ w + bias
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(a)
        gw, gb = a.T @ g + l2 * w, g.sum(0)
        for param, grad, m, v in ((w, gw, m_w, v_w), (bias, gb, m_b, v_b)):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    pred = classes[np.argmax(b @ w + bias, axis=1)]
    values, counts = np.unique(y_train, return_counts=True)
    majority = values[np.argmax(counts)]
    return {"accuracy": float(np.mean(pred == y_test)), "majority": float(np.mean(y_test == majority)),
            "classes": int(len(classes)), "train": int(len(a)), "test": int(len(b))}


def probe_labels(records: list[dict]) -> dict[str, np.ndarray]:
    """Per video: background, and colour / shape / motion of the actor of its first event."""
    out = {"background": [], "color": [], "shape": [], "motion": []}
    for r in records:
        actor = r["objects"][r["events"][0]["actor"]]
        out["background"].append(r["background"])
        out["color"].append(actor["color"])
        out["shape"].append(actor["shape"])
        out["motion"].append(r["events"][0]["motion"])
    return {k: np.asarray(v) for k, v in out.items()}


def shown_video_frames(num_frames: int, video_frames: int, fps: float) -> np.ndarray:
    """Video frame index that each of the ``num_frames`` uniform samples of a clip shows
    (engine.video.sampling_times: segment midpoints; a frame is on screen from its timestamp
    until the next one)."""
    from probret.engine.video import sampling_times

    times = sampling_times(num_frames, 0.0, video_frames / fps, mode="uniform")
    return np.minimum(np.floor(times * fps + 1e-6).astype(int), video_frames - 1)


def clip_halves(frames: np.ndarray) -> np.ndarray:
    """The first and second half's mean frame and their difference (V, 3D): settings 1-8's
    motion probe input, kept for the diagnostic (bench/motion_probe_check.py)."""
    half = frames.shape[1] // 2
    first, second = frames[:, :half].mean(1), frames[:, half:].mean(1)
    return np.concatenate([first, second, second - first], axis=1)


def event_span_halves(frames: np.ndarray, records: list[dict], shown: np.ndarray) -> np.ndarray:
    """:func:`clip_halves` over only the samples inside each video's first event span
    [start_frame, end_frame) (``shown``: :func:`shown_video_frames`); the whole clip where fewer
    than two samples fall inside it."""
    rows = []
    for feats, record in zip(frames, records):
        event = record["events"][0]
        inside = np.flatnonzero((shown >= event["start_frame"]) & (shown < event["end_frame"]))
        if len(inside) < 2:
            inside = np.arange(len(shown))
        rows.append(clip_halves(feats[None, inside])[0])
    return np.stack(rows)


def probe_inputs(frames: np.ndarray, records: list[dict], shown: np.ndarray) -> dict[str, np.ndarray]:
    """What each probe sees: the mean frame feature for background / colour / shape; for motion
    (the first event's, :func:`probe_labels`) the two half means of that event's own frames and
    their difference (a mean over time cannot tell left from right).

    Why the event's frames and not the clip's halves (setting 9): with ``actor_visibility=
    "own_event"`` (setting 8's world) the first actor of a two-actor clip leaves the screen when
    its event ends, about mid-clip, so the clip's second half shows the *other* actor; the clip
    halves then carried the first event's direction only through four samples. On validation
    (bench/results/quality/v2/diagnostics/motion_probe_setting8.json) the clip-halves probe fell
    to 19% on two-actor videos while the event-span probe of the same features scored 77%."""
    mean = frames.mean(1)
    return {"background": mean, "color": mean, "shape": mean, "motion": event_span_halves(frames, records, shown)}


# -- paired bootstrap ---------------------------------------------------------------------------

def paired_bootstrap(diff: np.ndarray, *, reps: int, level: float, seed: int) -> dict:
    """diff: (seeds, queries) paired per-query differences (same queries for every seed).
    Resamples seeds and queries with replacement (two-level bootstrap) and returns the mean
    difference, its percentile interval at ``level``, and the std over seeds (ddof=1)."""
    rng = np.random.default_rng(seed)
    s, q = diff.shape
    means = np.empty(reps)
    for r in range(reps):
        rows = rng.integers(0, s, s)
        cols = rng.integers(0, q, q)
        means[r] = diff[np.ix_(rows, cols)].mean()
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    per_seed = diff.mean(1)
    return {"mean": float(diff.mean()), "lo": float(lo), "hi": float(hi), "level": level,
            "seed_std": float(per_seed.std(ddof=1)) if s > 1 else None, "seeds": int(s), "queries": int(q)}


def query_kinds(world: dict, split) -> np.ndarray:
    """The kind (full / partial / short) of each query of a procedural ``split``, in its order."""
    vids = split.video_ids
    return np.asarray([world["captions"][str(world["videos"][vids[j]]["eval_sen_id"])]["kind"]
                       for j in split.text_video_index])


def kind_mask(kinds: np.ndarray, kind: str) -> np.ndarray:
    return np.ones(len(kinds), dtype=bool) if kind == "all" else kinds == kind


def method_table(hits: dict[str, np.ndarray], kinds: np.ndarray) -> dict:
    """R@1 (%) per method and query kind: mean over seeds and sample std over seeds (ddof=1)."""
    table = {}
    for method, h in hits.items():  # h: (seeds, queries) hit1
        row = {}
        for kind in ("all",) + KINDS:
            per_seed = 100 * h[:, kind_mask(kinds, kind)].mean(1)
            row[kind] = {"mean": float(per_seed.mean()),
                         "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None,
                         "queries": int(kind_mask(kinds, kind).sum())}
        table[method] = row
    return table


def comparison(spec: dict, hits: dict[str, np.ndarray], kinds: np.ndarray, stats: dict) -> dict:
    """One pre-registered comparison: paired per-query difference A - B (points of R@1) on a
    query kind, with a bootstrap interval at the level the correction sets. B may be
    "max(X, Y)": the one of X and Y with the higher mean R@1 on that kind."""
    a, b = spec["a"], spec["b"]
    mask = kind_mask(kinds, spec["kind"])
    if b.startswith("max("):
        options = [x.strip() for x in b[4:-1].split(",")]
        present = [x for x in options if x in hits]
        if len(present) < len(options) or a not in hits:
            return {**spec, "status": "not run", "missing": sorted(set(options + [a]) - set(hits))}
        b = max(present, key=lambda x: hits[x][:, mask].mean())
    if a not in hits or b not in hits:
        return {**spec, "status": "not run", "missing": sorted({a, b} - set(hits))}
    n = min(len(hits[a]), len(hits[b]))
    diff = 100 * (hits[a][:n, mask] - hits[b][:n, mask])
    level = stats["level"] if spec.get("family") != "primary" else stats["primary_level"]
    ci = paired_bootstrap(diff, reps=stats["reps"], level=level, seed=stats["seed"])
    ok = ci["lo"] > 0 and ci["mean"] >= float(spec.get("min_diff", 0.0))
    return {**spec, "b_resolved": b, **ci, "status": "pass" if ok else "fail"}
