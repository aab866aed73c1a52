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
    # by default the text graph does not spin (it runs right before the pair workers), the others do
    def spinning(sess) -> str | None:
        try:
            return sess.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: ORT's default (spinning)
            return None

    default = BundleRuntime(spem_bundle, device="cpu")
    assert {n: spinning(default.session(n)) for n in ("text_encoder", "frame_encoder")} == \
        {"text_encoder": "0", "frame_encoder": None}
    assert spinning(BundleRuntime(spem_bundle, device="cpu", spinning=True).session("text_encoder")) == "1"
    # ORT's memory pattern: off for the graphs a search runs (module docstring), ORT's default elsewhere
    assert {n: default.session(n).session.get_session_options().enable_mem_pattern
            for n in ("text_encoder", "pair_score", "frame_encoder")} == \
        {"text_encoder": False, "pair_score": False, "frame_encoder": True}
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


def test_optimized_graphs_are_cached_and_reused(spem_bundle, tmp_path, caplog):
    """The first CPU session of a graph writes ORT's optimised form; the next loads it without
    optimising again, and every output is the one the uncached session gives."""
    from probret.engine.runtime import BundleRuntime

    cache = tmp_path / "optimized"
    plain = BundleRuntime(spem_bundle, device="cpu", graph_cache=False)
    text, video = _features(plain, 300, 4)
    ref = plain.score(text, video)
    assert not cache.exists()

    first = BundleRuntime(spem_bundle, device="cpu", graph_cache=cache)
    t1, v1 = _features(first, 300, 4)
    assert not first.session("pair_score").optimized_from_cache
    files = sorted(cache.glob("*.onnx"))
    assert len(files) == 3 and not list(cache.glob(".*"))  # text, video side, pair; no temporary left
    data = sorted(cache.glob("*.data"))  # their weights, beside them (engine/runtime.py's docstring)
    assert {d.name.split(".")[0] for d in data} <= {f.stem for f in files} and data
    stamps = [f.stat().st_mtime_ns for f in files]

    again = BundleRuntime(spem_bundle, device="cpu", graph_cache=cache)
    t2, v2 = _features(again, 300, 4)
    for name in ("text_encoder", "video_side", "pair_score"):
        assert again.session(name).optimized_from_cache, name
    assert [f.stat().st_mtime_ns for f in files] == stamps
    for k in text:
        np.testing.assert_array_equal(t2[k], text[k])
        np.testing.assert_array_equal(t1[k], text[k])
    for out, want in zip(again.score(t2, v2), ref):
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)

    # a damaged cache file is optimised again, with a warning, not an error
    for f in files:
        f.write_bytes(b"not an onnx graph")
    with caplog.at_level("WARNING", logger="probret.engine.runtime"):
        healed = BundleRuntime(spem_bundle, device="cpu", graph_cache=cache)
        np.testing.assert_array_equal(healed.encode_text(["caption number 0"])["text_sentence"],
                                      text["text_sentence"][:1])
    assert "optimising" in caplog.text and not healed.session("text_encoder").optimized_from_cache
    assert healed.session("text_encoder").run  # usable
    assert BundleRuntime(spem_bundle, device="cpu", graph_cache=cache).session("text_encoder").optimized_from_cache
    # the rewritten text graph names a new data file; its old one is gone, not left behind
    healed_data = sorted(cache.glob("*.data"))
    keys = [d.name.split(".")[0] for d in healed_data]
    assert len(healed_data) == len(data) and len(set(keys)) == len(keys) and set(healed_data) != set(data)


def test_optimized_graph_key():
    from probret.engine.runtime import optimized_graph_path

    a, b = optimized_graph_path("a" * 64, "/c"), optimized_graph_path("b" * 64, "/c")
    assert a != b and a.parent == b.parent == __import__("pathlib").Path("/c") and a.suffix == ".onnx"
    assert optimized_graph_path("a" * 64, "/c") == a


def test_ort_build_names_the_active_onnxruntime():
    import onnxruntime as ort

    from probret.engine.runtime import ort_build

    build = ort_build()
    assert build["version"] == ort.__version__ and build["providers"] == ort.get_available_providers()
    assert build["device"] == ("GPU" if "CUDAExecutionProvider" in build["providers"] else "CPU")
    assert build["distributions"] and all(d.startswith("onnxruntime") for d in build["distributions"])
    assert ort.__version__ in build["description"] and build["device"] in build["description"]

def test_half_to_float_is_exact():
    """float16 -> float32 conversion of stored rows (ONNX Runtime's Cast, numpy as the fallback) is exact
    for every float16 value: normals, subnormals, zeros of both signs, infinities (NaN stays NaN)."""
    from probret.engine import runtime as S

    every = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    want = every.astype(np.float32)
    bufs = {}
    for src in (every, every[::2], every[:, ::3]):  # contiguous (ORT) and strided (numpy) inputs
        got = S._as_float32({"x": src}, bufs)["x"]
        assert got.dtype == np.float32 and got.shape == src.shape
        ref = src.astype(np.float32)
        nan = np.isnan(ref)
        assert np.array_equal(np.isnan(got), nan)  # (NaN payloads may come back quieted)
        np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))  # bit-exact, -0 too
    small = S._as_float32({"x": every[:3]}, bufs)["x"]  # a shorter block reuses the buffer
    assert np.shares_memory(small, bufs["x"]) and np.array_equal(small, want[:3])
    assert S._as_float32({"x": want})["x"] is want  # float32 passes through, no copy



def test_float16_rows_score_as_their_float32_values(spem_bundle):
    """``score`` given float16 video tensors (an index's stored rows) converts them tile by tile in
    the pair workers: the scores equal those of the same rows converted to float32 beforehand,
    with one worker or several, tiles uneven and the last one short."""
    from probret.engine.runtime import MIN_PAIR_TILE_VIDEOS, BundleRuntime

    n_v = 3 * MIN_PAIR_TILE_VIDEOS + 17
    for workers in (1, 3):
        rt = BundleRuntime(spem_bundle, device="cpu", pair_workers=workers, pair_text_batch=2, pair_video_batch=300)
        text, video = _features(rt, n_v, 3)
        half = {k: v.astype(np.float16) for k, v in video.items()}
        want = rt.score(text, {k: v.astype(np.float32) for k, v in half.items()})
        got = rt.score(text, half)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_noise_banks_are_cached_bit_for_bit(spem_bundle, tmp_path, monkeypatch):
    """runtime.cached_noise: the banks read back from CACHE/noise/ equal draw_noise's bit for bit;
    a damaged, truncated or misshapen file is drawn and written again; another seed is another
    file; an unwritable cache still gives the drawn banks; a fresh process with the cache
    imports no numpy.random."""
    import subprocess
    import sys

    from probret.engine.bundle import load_bundle
    from probret.engine.runtime import cached_noise, draw_noise

    bundle = load_bundle(spem_bundle)
    specs, seed = bundle.noise_specs, int(bundle.sampling["seed"])
    assert specs  # the demo SPEM is a noise-input bundle
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    want = draw_noise(specs, seed)

    def same(got):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            assert got[k].tobytes() == want[k].tobytes(), k

    same(cached_noise(specs, seed))
    (path,) = (tmp_path / "cache" / "noise").glob("banks-*.npy")
    good = path.read_bytes()
    same(cached_noise(specs, seed))
    flipped = good[:-5] + bytes([good[-5] ^ 0x40]) + good[-4:]
    for bad in (b"", good[:9], good[:len(good) // 2], flipped, b"%08x\n" % 0 + good[9:]):
        path.write_bytes(bad)
        same(cached_noise(specs, seed))
        assert path.read_bytes() == good
    other = cached_noise(specs, seed + 1)
    assert len(list((tmp_path / "cache" / "noise").glob("banks-*.npy"))) == 2
    assert any(other[k].tobytes() != want[k].tobytes() for k in want)
    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "blocked"))
    same(cached_noise(specs, seed))
    code = ("import sys, numpy; from probret.engine.runtime import cached_noise; from probret.engine.bundle import "
            f"load_bundle; b = load_bundle({str(spem_bundle)!r}); cached_noise(b.noise_specs, {seed}); "
            "assert 'numpy.random' not in sys.modules, 'imported numpy.random'")
    env = {**__import__("os").environ, "PROBRET_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
