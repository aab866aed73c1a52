"""engine/runtime.py: session threading options and concurrent pair-graph tiles (``pair_workers``).

The pair graph is a real one (a tiny random SPEM checkpoint exported to a bundle, as in
tests/engine/test_search.py); the references are the same runtime run one tile at a time."""

from __future__ import annotations

import numpy as np
import pytest

from probret.engine.errors import ModelError


@pytest.fixture(scope="module")
def spem_bundle(tmp_path_factory, make_spem_bundle):
    return make_spem_bundle(tmp_path_factory.mktemp("rt"), seed=3, jitter=True, benchmark_videos=4)[1]


def _features(rt, n_videos: int, n_text: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((n_videos, rt.bundle.num_frames, rt.bundle.manifest["embed_dim"]), dtype=np.float32)
    video = rt.video_side(frames)
    text = rt.encode_text([f"caption number {i}" for i in range(n_text)])
    return text, video


def test_concurrent_tiles_equal_one_tile_at_a_time(spem_bundle):
    """Scores do not depend on how the (text, video) grid is tiled or on which thread runs a tile:
    every tile writes its own block, and each pair's numbers come from the same graph."""
    from probret.engine.runtime import MIN_PAIR_TILE_VIDEOS, BundleRuntime

    seq = BundleRuntime(spem_bundle, device="cpu", pair_workers=1, pair_text_batch=3, pair_video_batch=700)
    par = BundleRuntime(spem_bundle, device="cpu", pair_workers=4, pair_text_batch=3, pair_video_batch=700)
    n_v = 3 * MIN_PAIR_TILE_VIDEOS + 17  # splits into uneven tiles, the last one short
    text, video = _features(seq, n_v, 5)
    s1, u1 = seq.score(text, video)
    s2, u2 = par.score(text, video)
    assert s1.shape == s2.shape == (5, n_v) and u1.shape == u2.shape == (5, n_v)
    assert np.isfinite(s2).all() and np.isfinite(u2).all()
    # same graph, same rows: equal up to the GEMM's blocking of a different number of rows
    np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(u2, u1, rtol=1e-6, atol=1e-7)
    assert (np.argsort(-s1, 1, kind="stable")[:, :10] == np.argsort(-s2, 1, kind="stable")[:, :10]).all()
    # the concurrent runtime's pair session is single-threaded; the sequential one keeps ORT's default
    assert par.session("pair_score").threads == 1
    assert seq.session("pair_score").threads is None


def test_thread_options_reach_the_sessions(spem_bundle):
    from probret.engine.runtime import BundleRuntime

    rt = BundleRuntime(spem_bundle, device="cpu", threads=1, spinning=False)
    assert rt.pair_workers == 1  # threads=1 means one core in all: no concurrent tiles either
    sess = rt.session("text_encoder")
    opts = sess.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert BundleRuntime(spem_bundle, device="cpu", threads=2).pair_workers == 2
    with pytest.raises(ModelError, match="pair_workers"):
        BundleRuntime(spem_bundle, device="cpu", pair_workers=0)


def test_tile_errors_surface(spem_bundle):
    """A failing tile raises from ``score`` (not lost in a worker thread)."""
    from probret.engine.runtime import MIN_PAIR_TILE_VIDEOS, BundleRuntime

    rt = BundleRuntime(spem_bundle, device="cpu", pair_workers=2)
    text, video = _features(rt, 2 * MIN_PAIR_TILE_VIDEOS + 1, 1)
    bad = dict(video)
    name = next(n for n in bad if n.endswith("frames"))
    bad[name] = bad[name][:, :, :3]  # wrong feature width: ONNX Runtime rejects every tile
    with pytest.raises(Exception):
        rt.score(text, bad)
