"""Retrieval metrics: hand-computed cases, tie conventions, chunking, DSL, input validation."""

from __future__ import annotations

import itertools
import json
import tracemalloc

import numpy as np
import pytest

from probret.engine.metrics import (
    dual_softmax,
    dual_softmax_metrics,
    format_metrics_table,
    retrieval_metrics,
)

# 7 captions over 3 videos (3 + 2 + 2), hand-built so that every direction and convention
# gives a different, hand-checkable rank.
#              v0    v1    v2
SEVEN = np.array(
    [
        [0.90, 0.82, 0.97],  # t0 -> v0: 0.97 beats it             rank 2
        [0.30, 0.85, 0.10],  # t1 -> v0: 0.85 beats it             rank 2
        [0.20, 0.40, 0.60],  # t2 -> v0: both others beat it       rank 3
        [0.10, 0.80, 0.00],  # t3 -> v1                            rank 1
        [0.70, 0.60, 0.96],  # t4 -> v1: 0.70 and 0.96 beat it     rank 3
        [0.00, 0.30, 0.95],  # t5 -> v2                            rank 1
        [0.50, 0.40, 0.45],  # t6 -> v2: 0.50 beats it             rank 2
    ]
)
SEVEN_INDEX = np.array([0, 0, 0, 1, 1, 2, 2])


def approx(d: dict) -> dict:
    return {k: pytest.approx(v) for k, v in d.items()}


def test_unequal_counts_hand_computed():
    m = retrieval_metrics(SEVEN, SEVEN_INDEX, v2t_mode="captions")
    # t2v ranks [2, 2, 3, 1, 3, 1, 2]
    assert m["t2v"] == approx({"R1": 100 * 2 / 7, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 2.0})
    # v2t, captions convention: each column ranks all 7 captions; a video's rank is its first
    # ground-truth caption. v0: 0.90 is the top of its column -> 1. v1: best own caption 0.80,
    # beaten by t0 (0.82) and t1 (0.85) -> 3. v2: best own 0.95, beaten by t0 0.97, t4 0.96 -> 3.
    assert m["v2t"] == approx({"R1": 100 / 3, "R5": 100.0, "R10": 100.0, "MdR": 3.0, "MnR": 7 / 3})
    assert "t2v_semantic" not in m


def test_unequal_counts_video_groups_convention():
    # CLIP4Clip / X-Pool: candidates are videos scored by their best caption. v1's column:
    # video 0's best caption (0.85) beats v1's (0.80) -> 2; t0 and t1 count once, not twice.
    m = retrieval_metrics(SEVEN, SEVEN_INDEX, v2t_mode="videos")
    assert m["v2t"] == approx({"R1": 100 / 3, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 2.0})
    assert m["t2v"] == retrieval_metrics(SEVEN, SEVEN_INDEX)["t2v"]


def test_transposed_matrix_is_detected():
    # The known leak: axes swapped only "work" when N_text == N_video. With 7 texts over 3
    # videos the transposed (3, 7) matrix must be refused, with a message that says why.
    with pytest.raises(ValueError, match="transposed"):
        retrieval_metrics(SEVEN.T, SEVEN_INDEX)
    with pytest.raises(ValueError, match="one entry per text"):
        retrieval_metrics(SEVEN, SEVEN_INDEX[:5])


def test_invalid_inputs():
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="not a valid column"):
        retrieval_metrics(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="not a valid column"):
        retrieval_metrics(np.zeros((2, 2)), np.array([-1, 0]))
    with pytest.raises(ValueError, match="integer"):
        retrieval_metrics(np.zeros((2, 2)), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="ties"):
        retrieval_metrics(np.eye(2), np.arange(2), ties="random")
    with pytest.raises(ValueError, match="v2t_mode"):
        retrieval_metrics(np.eye(2), np.arange(2), v2t_mode="texts")
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(np.eye(2), np.arange(2), chunk_size=0)


def test_nan_is_a_clear_error():
    sims = np.eye(4)
    sims[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*text 2, video 1"):
        retrieval_metrics(sims, np.arange(4), chunk_size=1)
    with pytest.raises(ValueError, match="NaN"):
        dual_softmax(sims)


def test_infinities_are_ordinary_values():
    sims = np.array([[np.inf, 0.0, -np.inf], [0.0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf]])
    m = retrieval_metrics(sims, np.arange(3))
    # ranks: t0 -> 1; t1 -> 2; t2 (-inf, tied with two -inf) -> 3 (pessimistic)
    assert m["t2v"]["R1"] == pytest.approx(100 / 3)
    assert m["t2v"]["MnR"] == pytest.approx(2.0)


def test_perfect_and_worst():
    n = 6
    perfect = retrieval_metrics(np.eye(n), np.arange(n))
    for direction in ("t2v", "v2t"):
        assert perfect[direction] == approx({"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0})
    worst = retrieval_metrics(-np.eye(n), np.arange(n))
    for direction in ("t2v", "v2t"):
        # own video always last; the others tie with each other but not with it
        assert worst[direction] == approx({"R1": 0.0, "R5": 0.0, "R10": 100.0, "MdR": 6.0, "MnR": 6.0})


def test_mdr_mnr_values():
    # t2v ranks 1, 2, 4, 3 (by construction: the own column is 1st, 2nd, 4th, 3rd best)
    sims = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],
            [0.8, 0.7, 0.1, 0.0],
            [0.9, 0.8, 0.1, 0.7],
            [0.9, 0.0, 0.8, 0.5],
        ]
    )
    m = retrieval_metrics(sims, np.arange(4))
    assert m["t2v"] == approx({"R1": 25.0, "R5": 100.0, "R10": 100.0, "MdR": 2.5, "MnR": 2.5})


def test_constant_scores_are_not_rewarded():
    sims = np.full((4, 4), 0.3)
    pess = retrieval_metrics(sims, np.arange(4))
    for direction in ("t2v", "v2t"):
        assert pess[direction] == approx({"R1": 0.0, "R5": 100.0, "R10": 100.0, "MdR": 4.0, "MnR": 4.0})
    expected = retrieval_metrics(sims, np.arange(4), ties="expected")
    # uniformly random tie-breaking among 4: P(first) = 1/4, E[rank] = 2.5
    assert expected["t2v"] == approx({"R1": 25.0, "R5": 100.0, "R10": 100.0, "MdR": 2.5, "MnR": 2.5})
    optimistic = retrieval_metrics(sims, np.arange(4), ties="optimistic")
    assert optimistic["t2v"]["R1"] == 100.0


def test_v2t_ties_between_own_captions_do_not_count_against():
    # Video 0 has two captions tied at its best score; a third caption (video 1) ties too.
    sims = np.array([[0.5, 0.1], [0.5, 0.2], [0.5, 0.9]])
    idx = np.array([0, 0, 1])
    pess = retrieval_metrics(sims, idx, v2t_mode="captions")["v2t"]
    # v0: only t2 is an irrelevant tie -> rank 2; v1: t2 is top -> rank 1
    assert pess["MnR"] == pytest.approx(1.5)
    exp = retrieval_metrics(sims, idx, ties="expected", v2t_mode="captions")["v2t"]
    # v0: 1 irrelevant tie against 2 relevant: E[rank] = 1 + 1/3, P(rank 1) = 2/3
    assert exp["MnR"] == pytest.approx((1 + 1 / 3 + 1) / 2)
    assert exp["R1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert retrieval_metrics(sims, idx, ties="optimistic", v2t_mode="captions")["v2t"]["R1"] == 100.0


def _brute_force_expected(scores: np.ndarray, relevant: set[int], k: int) -> tuple[float, float]:
    """(P(first relevant within top k), E[first relevant position]) over all tie orderings."""
    best = max(scores[j] for j in relevant)
    greater = sum(1 for j, s in enumerate(scores) if s > best)
    tied = [j for j, s in enumerate(scores) if s == best]
    hits, total, positions = 0, 0, 0.0
    for perm in itertools.permutations(tied):
        first = next(p for p, j in enumerate(perm) if j in relevant)
        rank = greater + first + 1
        hits += rank <= k
        positions += rank
        total += 1
    return hits / total, positions / total


def test_expected_ties_match_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n_text, n_video = 5, 6
        sims = rng.integers(0, 3, size=(n_text, n_video)).astype(np.float32)
        idx = rng.integers(0, n_video, size=n_text)
        relevant = [list(rng.choice(n_video, size=rng.integers(0, 3), replace=False)) for _ in range(n_text)]
        m = retrieval_metrics(sims, idx, relevant=relevant, ties="expected", v2t_mode="captions")
        for key, rel_sets in (("t2v", [{int(idx[i])} for i in range(n_text)]),
                              ("t2v_semantic", [set(map(int, relevant[i])) | {int(idx[i])} for i in range(n_text)])):
            for k, name in ((1, "R1"), (5, "R5")):
                p = [_brute_force_expected(sims[i], rel_sets[i], k)[0] for i in range(n_text)]
                assert m[key][name] == pytest.approx(100 * np.mean(p))
            e = [_brute_force_expected(sims[i], rel_sets[i], 1)[1] for i in range(n_text)]
            assert m[key]["MnR"] == pytest.approx(np.mean(e))
        # v2t (captions): each video with captions ranks the texts in its column
        queries = [j for j in range(n_video) if (idx == j).any()]
        p1 = [_brute_force_expected(sims[:, j], set(np.flatnonzero(idx == j).tolist()), 1)[0] for j in queries]
        assert m["v2t"]["R1"] == pytest.approx(100 * np.mean(p1))


def _reference_ranks(sims, idx, ties="pessimistic"):
    """Straightforward (unchunked, loop) implementation of the documented conventions."""
    n_text, n_video = sims.shape
    t2v = []
    for i in range(n_text):
        target = sims[i, idx[i]]
        g = int((sims[i] > target).sum())
        t = int((sims[i] == target).sum()) - 1
        t2v.append(1 + g + (t if ties == "pessimistic" else 0))
    v2t = []
    for j in range(n_video):
        own = np.flatnonzero(idx == j)
        if own.size == 0:
            continue
        best = sims[own, j].max()
        others = np.delete(sims[:, j], own)
        v2t.append(1 + int((others > best).sum()) + (int((others == best).sum()) if ties == "pessimistic" else 0))
    return np.array(t2v), np.array(v2t)


def _metrics_from_ranks(ranks):
    return {"R1": 100 * np.mean(ranks <= 1), "R5": 100 * np.mean(ranks <= 5), "R10": 100 * np.mean(ranks <= 10),
            "MdR": float(np.median(ranks)), "MnR": float(np.mean(ranks))}


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_matches_reference_on_random_data_with_ties(ties):
    rng = np.random.default_rng(0)
    sims = rng.integers(0, 5, size=(60, 25)).astype(np.float32)  # many ties
    idx = rng.integers(0, 20, size=60)  # videos 20..24 have no caption (distractors)
    t2v, v2t = _reference_ranks(sims, idx, ties)
    m = retrieval_metrics(sims, idx, ties=ties, chunk_size=7, v2t_mode="captions")
    assert m["t2v"] == approx(_metrics_from_ranks(t2v))
    assert m["v2t"] == approx(_metrics_from_ranks(v2t))


@pytest.mark.parametrize("ties", ["pessimistic", "expected", "optimistic"])
@pytest.mark.parametrize("v2t_mode", ["captions", "videos"])
def test_chunked_equals_unchunked(ties, v2t_mode):
    rng = np.random.default_rng(1)
    n_text, n_video = 103, 37
    sims = np.round(rng.normal(size=(n_text, n_video)), 1).astype(np.float32)  # some ties
    idx = rng.integers(0, n_video, size=n_text)
    relevant = [list(rng.choice(n_video, size=3, replace=False)) for _ in range(n_text)]
    full = retrieval_metrics(sims, idx, relevant=relevant, chunk_size=100_000, ties=ties, v2t_mode=v2t_mode)
    for chunk in (1, 3, 64):
        assert retrieval_metrics(sims, idx, relevant=relevant, chunk_size=chunk, ties=ties, v2t_mode=v2t_mode) == full


def test_memmap_input(tmp_path):
    rng = np.random.default_rng(2)
    sims = rng.normal(size=(50, 20)).astype(np.float32)
    idx = rng.integers(0, 20, size=50)
    path = tmp_path / "sims.npy"
    np.save(path, sims)
    mm = np.load(path, mmap_mode="r")
    assert retrieval_metrics(mm, idx, chunk_size=8) == retrieval_metrics(sims, idx)


def test_chunked_memory_is_bounded():
    rng = np.random.default_rng(4)
    n_text, n_video = 4000, 1000
    sims = rng.normal(size=(n_text, n_video)).astype(np.float32)  # 16 MB
    idx = rng.integers(0, n_video, size=n_text)
    for mode in ("captions", "videos"):
        retrieval_metrics(sims[:20], idx[:20] % 10, v2t_mode=mode)  # warm-up: numpy's lazy imports and caches
        tracemalloc.start()
        retrieval_metrics(sims, idx, chunk_size=16, v2t_mode=mode)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # O(chunk x N_video) blocks plus O(N_text) vectors; a full boolean N_text x N_video
        # temporary alone would be 4 MB
        assert peak < 1.5e6, (mode, peak)


def test_semantic_recall_hand_computed():
    sims = np.array(
        [
            [0.2, 0.5, 0.9],  # own v0 rank 3; relevant {0, 1}: best 0.5, only v2 above -> 2
            [0.1, 0.3, 0.8],  # own v1 rank 2; relevant {1} (own only) -> 2
            [0.7, 0.6, 0.5],  # own v2 rank 3; relevant {0, 1, 2}: everything relevant -> 1
        ]
    )
    m = retrieval_metrics(sims, np.arange(3), relevant=[[1], [], [0, 1]])
    assert m["t2v"] == approx({"R1": 0.0, "R5": 100.0, "R10": 100.0, "MdR": 3.0, "MnR": 8 / 3})
    assert m["t2v_semantic"] == approx({"R1": 100 / 3, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 5 / 3})
    with pytest.raises(ValueError, match="relevant has 2 entries"):
        retrieval_metrics(sims, np.arange(3), relevant=[[1], []])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(sims, np.arange(3), relevant=[[5], [], []])


def test_result_is_json_serialisable():
    m = retrieval_metrics(SEVEN, SEVEN_INDEX, relevant=[[1]] * 7)
    assert set(m) == {"t2v", "v2t", "t2v_semantic"}
    assert json.loads(json.dumps(m)) == m
    for sub in m.values():
        assert list(sub) == ["R1", "R5", "R10", "MdR", "MnR"]
        assert all(type(v) is float for v in sub.values())


def test_dual_softmax_formula():
    sims = np.array([[0.6, 0.2, 0.7], [0.1, 0.6, 0.7], [0.1, 0.2, 0.8]])
    out = dual_softmax(sims, temperature=10.0)
    e = np.exp(10.0 * sims)
    np.testing.assert_allclose(out, sims * e / e.sum(axis=0, keepdims=True))
    out1 = dual_softmax(sims, temperature=10.0, axis=1)
    np.testing.assert_allclose(out1, sims * e / e.sum(axis=1, keepdims=True))
    with pytest.raises(ValueError, match="finite"):
        dual_softmax(np.array([[np.inf, 0.0]]))


def test_dual_softmax_demotes_a_hub_video():
    # video 2 scores highest for every text; the prior over texts gives it to the text that
    # likes it most (t2), freeing t0 and t1 to find their own videos
    sims = np.array([[0.6, 0.2, 0.7], [0.1, 0.6, 0.7], [0.1, 0.2, 0.8]])
    plain = retrieval_metrics(sims, np.arange(3))
    assert plain["t2v"]["R1"] == pytest.approx(100 / 3)
    assert retrieval_metrics(dual_softmax(sims), np.arange(3))["t2v"]["R1"] == 100.0
    assert dual_softmax_metrics(sims, np.arange(3))["t2v"]["R1"] == 100.0


@pytest.mark.parametrize("v2t_mode", ["captions", "videos"])
def test_dual_softmax_metrics_streams_the_same_result(v2t_mode):
    rng = np.random.default_rng(5)
    n_text, n_video = 90, 30
    sims = rng.uniform(-0.2, 0.6, size=(n_text, n_video))
    idx = rng.integers(0, n_video, size=n_text)
    relevant = [list(rng.choice(n_video, size=2, replace=False)) for _ in range(n_text)]
    streamed = dual_softmax_metrics(sims, idx, relevant=relevant, chunk_size=7, v2t_mode=v2t_mode)
    t2v = retrieval_metrics(dual_softmax(sims, axis=0), idx, relevant=relevant, v2t_mode=v2t_mode)
    v2t = retrieval_metrics(dual_softmax(sims, axis=1), idx, v2t_mode=v2t_mode)
    assert streamed["t2v"] == approx(t2v["t2v"])
    assert streamed["t2v_semantic"] == approx(t2v["t2v_semantic"])
    assert streamed["v2t"] == approx(v2t["v2t"])


def test_format_metrics_table():
    m = retrieval_metrics(SEVEN, SEVEN_INDEX, relevant=[[]] * 7, v2t_mode="captions")
    table = format_metrics_table(m, title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo"
    assert lines[1].split() == ["direction", "R@1", "R@5", "R@10", "MdR", "MnR"]
    assert lines[3].split() == ["text->video", "28.6", "100.0", "100.0", "2.0", "2.0"]
    assert lines[4].split() == ["video->text", "33.3", "100.0", "100.0", "3.0", "2.3"]
    assert lines[5].startswith("text->video (semantic)")
    partial = format_metrics_table({"t2v": {"R1": 1.0}, "note": "ignored"})
    assert partial.splitlines()[-1].split() == ["text->video", "1.0", "-", "-", "-", "-"]
    with pytest.raises(TypeError):
        format_metrics_table([1, 2])


def test_metrics_import_no_torch():
    import subprocess
    import sys

    code = "import sys, probret.engine.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
