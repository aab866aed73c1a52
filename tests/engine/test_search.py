"""engine/search.py (ranking, best moments, ANN, video-to-text).

Ranking logic is checked against brute force with a numpy stand-in model; the real thing
(a tiny random SPEM checkpoint exported to a bundle) is checked against PyTorch: the index's
ranking through ONNX Runtime must equal the checkpoint's own scoring of the same pixels. With
the shipped demo model present, a procedural folder must also put the right video first for
specific captions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from probret.engine.errors import DataError, IndexStoreError, ModelError
from probret.engine.index import EncodedVideo, IndexReader, IndexSettings, IndexWriter
from probret.engine.search import Searcher, faiss_available, l2_normalize

# --------------------------------------------------------------------------------------------
# a numpy stand-in model: a query is a colour name, a video segment a colour
# --------------------------------------------------------------------------------------------
PALETTE = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0],
           "yellow": [0.7, 0.7, 0.0], "cyan": [0.0, 0.7, 0.7]}
SETTINGS = IndexSettings(bundle_sha256="c" * 64, num_frames=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)


class _Bundle:
    num_frames = 3
    video_outputs = ["video_mean"]
    has_uncertainty = True
    context_length = 8
    method = "fake"
    manifest = {"tokenizer": {"eot_token_id": 2}}


class ColourRuntime:
    bundle = _Bundle()

    def tokenize(self, texts):
        ids = np.array([[1, 3 + list(PALETTE).index(t.split()[0]), 2] + [0] * 5 for t in texts], np.int32)
        return ids, np.array([len(t.split()) > 6 for t in texts])

    def encode_text(self, ids):
        vecs = np.array([PALETTE[list(PALETTE)[i[1] - 3]] for i in ids], np.float32)
        return {"text_sentence": vecs}

    def score(self, text, video):
        s = l2_normalize(text["text_sentence"]) @ l2_normalize(np.asarray(video["video_mean"], np.float32)).T
        return s.astype(np.float32), (1.0 - s).astype(np.float32)


def colour_video(path: str, colours: list[str], noise: float = 0.0, seed: int = 0) -> EncodedVideo:
    rng = np.random.default_rng(seed)
    n = len(colours)
    frames = np.stack([np.tile(np.array(PALETTE[c], np.float32), (3, 1)) for c in colours])
    frames = frames + noise * rng.standard_normal(frames.shape).astype(np.float32)
    frames[:, [0, 2]] += 0.4  # greyer first and last frames: the middle one is each segment's best instant
    return EncodedVideo(path=path, size=1, mtime_ns=1, duration=4.0 * n, fps=4.0, width=32, height=32,
                        segments=[(4.0 * k, 4.0 * k + 4.0) for k in range(n)],
                        timestamps=np.stack([4.0 * k + np.array([0.5, 2.0, 3.5]) for k in range(n)]),
                        tensors={"frame_features": frames, "video_mean": frames.mean(1),
                                 "ann": l2_normalize(l2_normalize(frames).mean(1))})


@pytest.fixture
def colour_index(tmp_path):
    vids = [colour_video("a_red.mp4", ["red"]),
            colour_video("b_long.mp4", ["blue", "green", "yellow"]),  # green is its second window
            colour_video("c_green.mp4", ["green"], noise=0.3, seed=1),
            colour_video("d_twin.mp4", ["cyan"]), colour_video("e_twin.mp4", ["cyan"]),  # exact tie
            colour_video("f_mix.mp4", ["red", "blue"], noise=0.2, seed=2)]
    with IndexWriter(tmp_path / "idx", SETTINGS) as w:
        w.add(vids[:3])
        w.add(vids[3:])
    reader = IndexReader(tmp_path / "idx")
    yield reader
    reader.close()


def brute_force(reader: IndexReader, query: str) -> list[tuple[str, float]]:
    rt = ColourRuntime()
    t = rt.encode_text(rt.tokenize([query])[0])
    best = {}
    for i, v in enumerate(reader.videos):
        segs = np.arange(reader.video_offsets[i], reader.video_offsets[i + 1])
        s, _ = rt.score(t, reader.gather(["video_mean"], segs))
        best[v.path] = float(s.max())
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))


def test_exact_ranking_equals_brute_force(colour_index):
    s = Searcher(ColourRuntime(), colour_index)
    queries = list(PALETTE)
    results = s.search(queries, top_k=4)
    for q, r in zip(queries, results):
        want = brute_force(colour_index, q)[:4]
        assert [(h.path, round(h.score, 5)) for h in r.hits] == [(p, round(v, 5)) for p, v in want]
        assert [h.rank for h in r.hits] == [1, 2, 3, 4] and not r.ann and r.candidates == colour_index.num_segments
        for h in r.hits:
            assert h.uncertainty == pytest.approx(1 - h.score, abs=1e-6)


def test_best_moment_ties_and_top_k(colour_index):
    s = Searcher(ColourRuntime(), colour_index)
    green = s.search(["green"], top_k=10)[0]
    long_hit = next(h for h in green.hits if h.path == "b_long.mp4")
    assert (long_hit.segment, long_hit.start, long_hit.end) == (1, 4.0, 8.0)  # the green window
    assert long_hit.best_time == 6.0  # the frame of that window closest to the query
    assert len(green.hits) == 6  # top-k larger than the folder: every video once
    cyan = s.search(["cyan"], top_k=2)[0]
    assert [h.path for h in cyan.hits] == ["d_twin.mp4", "e_twin.mp4"]  # exact tie: by path
    assert cyan.hits[0].score == cyan.hits[1].score
    with pytest.raises(DataError, match="top-k"):
        s.search(["red"], top_k=0)
    with pytest.raises(DataError, match="query 2 is empty"):
        s.search(["red", "  "])


def test_moments_per_hit_and_the_hit_fields_are_the_first_moment(colour_index):
    s = Searcher(ColourRuntime(), colour_index)
    blue = s.search(["blue"], top_k=10, moments=3)[0]
    mix = next(h for h in blue.hits if h.path == "f_mix.mp4")
    assert (mix.start, mix.end, mix.best_time) == (mix.moments[0].start, mix.moments[0].end, mix.moments[0].best_time)
    assert mix.moments[0].score == mix.score and 4.0 <= mix.moments[0].start < mix.moments[0].end <= 8.0
    for h in blue.hits:
        assert 1 <= len(h.moments) <= 3
        assert all(a.end <= b.start or b.end <= a.start for a in h.moments for b in h.moments if a is not b)
        assert all(m.start <= m.best_time <= m.end for m in h.moments)
    assert set(blue.hits[0].to_dict()["moments"][0]) == {"start", "end", "best_time", "score"}
    one = next(h for h in s.search(["red"], moments=3)[0].hits if h.path == "a_red.mp4")  # one window: the clip
    assert [(m.start, m.end, m.best_time) for m in one.moments] == [(0.0, 4.0, 2.0)]
    with pytest.raises(DataError, match="moments"):
        s.search(["red"], moments=0)


class NaNRuntime(ColourRuntime):
    """The colour model, but every segment of ``bad`` videos (or all) scores NaN."""

    def __init__(self, bad_rows=None):
        self.bad_rows = bad_rows

    def score(self, text, video):
        s, u = super().score(text, video)
        if self.bad_rows is None:
            s[:] = np.nan
        else:
            s[:, self.bad_rows] = np.nan
            u[:, self.bad_rows] = np.nan
        return s, u


def test_nan_scores_are_never_ranked(colour_index):
    r = colour_index
    a_red = np.arange(r.video_offsets[0], r.video_offsets[1])  # a_red.mp4's one segment
    said = []
    res = Searcher(NaNRuntime(a_red), r, say=said.append).search(["red"], top_k=10)[0]
    assert "a_red.mp4" not in [h.path for h in res.hits] and res.unranked == ["a_red.mp4"]
    assert all(np.isfinite(h.score) for h in res.hits) and len(res.hits) == 5
    assert any("NaN" in m and "a_red.mp4" in m for m in said)
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["unranked"] == ["a_red.mp4"]
    with pytest.raises(ModelError, match="pair graph scored every segment NaN"):
        Searcher(NaNRuntime(), r).search(["red"])


class StoredRowsRuntime(ColourRuntime):
    """Takes video rows as BundleRuntime.score does: float16 rows converted exactly to float32
    before the head (engine/runtime.py, "Scoring float16 rows"); records the dtypes it was given."""

    def __init__(self):
        self.given = set()

    def score(self, text, video):
        from probret.engine.runtime import _as_float32

        self.given |= {str(v.dtype) for v in video.values()}
        return super().score(text, _as_float32(video))


def test_float16_storage_end_to_end(colour_index, tmp_path):
    """The same videos stored at float16: the exact scan hands the stored rows to the runtime
    unconverted (it converts them tile by tile), rankings and scores match float32 storage up to
    float16 rounding (video ties by path included), in exact and ANN mode, and in video -> text
    ranking."""
    import dataclasses

    vids = []
    r32 = colour_index
    for i, v in enumerate(r32.videos):
        segs = np.arange(r32.video_offsets[i], r32.video_offsets[i + 1])
        vids.append(EncodedVideo(path=v.path, size=1, mtime_ns=1, duration=v.duration, fps=v.fps, width=32, height=32,
                                 segments=[(float(r32.seg_start[k]), float(r32.seg_end[k])) for k in segs],
                                 timestamps=np.stack([r32.timestamps(int(k)) for k in segs]),
                                 tensors=r32.gather(sorted(r32.layout), segs)))
    with IndexWriter(tmp_path / "idx16", dataclasses.replace(SETTINGS, dtype="float16")) as w:
        w.add(vids)
    with IndexReader(tmp_path / "idx16") as r16:
        assert r16.tensor(1, "video_mean").dtype == np.float16
        a, b = Searcher(ColourRuntime(), r32), Searcher(StoredRowsRuntime(), r16)
        modes = [{}] + ([{"ann": True}] if faiss_available() else [])
        for kw in modes:
            for x, y in zip(a.search(list(PALETTE), top_k=6, **kw), b.search(list(PALETTE), top_k=6, **kw)):
                assert [h.path for h in x.hits] == [h.path for h in y.hits]
                np.testing.assert_allclose([h.score for h in x.hits], [h.score for h in y.hits], atol=2e-3)
                # (exactly tied segments or frames, e.g. blue and green for "cyan", may swap: scores decide)
                assert all(h.start <= h.best_time <= h.end for h in y.hits)
        assert "float16" in b.rt.given  # no float32 copy of a block made before scoring it
        caps = ["red", "blue", "green", "yellow"]
        hits, _ = b.rank_captions(caps, video=r16.video_index("b_long.mp4"))
        want, _ = a.rank_captions(caps, video=r32.video_index("b_long.mp4"))
        assert {h.caption: h.segment for h in hits} == {h.caption: h.segment for h in want}  # blue, green tie at 1


def test_query_blocks_bounded_by_score_bytes(colour_index, monkeypatch):
    """Fewer queries per block when (queries x segments) scores would pass SCORE_BYTES: same results."""
    from probret.engine import search as S

    calls = []
    s = Searcher(ColourRuntime(), colour_index)
    full = s.search(list(PALETTE) * 3, top_k=3)
    real = s.score_segments
    monkeypatch.setattr(s, "score_segments", lambda text, sl: calls.append(sl) or real(text, sl))
    monkeypatch.setattr(S, "SCORE_BYTES", 2 * 4 * 2 * colour_index.num_segments)  # two queries' scores + uncertainty
    small = s.search(list(PALETTE) * 3, top_k=3)
    assert len(calls) == 8 and all(c.stop - c.start == 2 for c in calls)  # 15 queries, 2 at a time
    assert [[(h.path, h.score) for h in r.hits] for r in full] == [[(h.path, h.score) for h in r.hits] for r in small]


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_ann_first_stage(colour_index):
    s = Searcher(ColourRuntime(), colour_index)
    queries = list(PALETTE)
    exact = s.search(queries, top_k=3)
    wide = s.search(queries, top_k=3, ann=True, ann_candidates=1000)  # candidates cover everything
    for a, b in zip(exact, wide):
        assert b.ann and [(h.path, h.score, h.start) for h in a.hits] == [(h.path, h.score, h.start) for h in b.hits]
    narrow = s.search(["red"], top_k=1, ann=True, ann_candidates=1)[0]
    assert narrow.hits[0].path == "a_red.mp4" and narrow.candidates == 1  # one segment re-scored
    # the first stage is engine/ann.py's AnnStage, persisted beside the index (no cache of its own)
    meta = json.loads((colour_index.root / "ann" / "ann.json").read_text())
    assert meta["factory"] == "Flat" and meta["ntotal"] == colour_index.num_segments
    assert not list(colour_index.root.glob("ann-g*.faiss"))
    said = []
    s2 = Searcher(ColourRuntime(), colour_index, say=said.append)
    assert [h.path for h in s2.search(["blue"], top_k=2, ann=True)[0].hits] == [h.path for h in exact[2].hits[:2]]
    assert not any("building" in m for m in said)  # loaded from INDEX/ann/, not rebuilt


def test_ann_without_faiss_fails_clearly(colour_index, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *a, **kw):
        if name == "faiss":
            raise ImportError("no faiss here")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    s = Searcher(ColourRuntime(), colour_index)
    with pytest.raises(IndexStoreError, match="pip install faiss-cpu"):
        s.search(["red"], ann=True)
    assert s.search(["red"])[0].hits[0].path == "a_red.mp4"  # exact search needs no faiss


def test_rank_captions(colour_index):
    s = Searcher(ColourRuntime(), colour_index)
    hits, cut = s.rank_captions(["red", "blue", "green", "yellow"], video=colour_index.video_index("b_long.mp4"))
    assert {h.caption for h in hits[:3]} == {"blue", "green", "yellow"}  # each matches one window exactly
    by_caption = {h.caption: h for h in hits}
    assert by_caption["green"].segment == 1 and by_caption["yellow"].segment == 2 and by_caption["blue"].segment == 0
    assert hits[-1].caption == "red" and not cut.any()


def test_searcher_refuses_an_index_of_another_model(colour_index):
    class Other(ColourRuntime):
        class bundle(_Bundle):  # noqa: N801
            video_outputs = ["video_keys"]

    with pytest.raises(IndexStoreError, match="built with another model"):
        Searcher(Other(), colour_index)


# --------------------------------------------------------------------------------------------
# the real thing: a tiny SPEM checkpoint, its bundle, PyTorch
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_spem_bundle):
    """(checkpoint, bundle dir, world) for a random tiny SPEM (test-vit-tiny, 4 frames)."""
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("tiny")
    ckpt, _ = make_spem_bundle(root, seed=0, jitter=True, benchmark_videos=6)
    generate_world(root / "world", videos=10, seed=5, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    return ckpt, root / "bundle", root / "world"


def test_bundle_ranking_equals_pytorch_checkpoint(tiny, tmp_path):
    """The whole search path (decode, preprocess, four graphs through ONNX Runtime, index round
    trip, ranking) against the checkpoint's PyTorch scoring of the same frames."""
    from probret.engine.pipeline import PipelineOptions, decode_windows, update_index
    from probret.engine.runtime import BundleRuntime
    from probret.export import parity as P
    from probret.export.forms import create_form, set_num_samples
    from probret.engine.runtime import draw_noise
    from probret.train.checkpoint import load_checkpoint

    ckpt, bundle_dir, world = tiny
    rt = BundleRuntime(bundle_dir, device="cpu")
    idx = tmp_path / "idx"
    with IndexWriter(idx, IndexSettings.for_bundle(rt.bundle)) as w:
        report = update_index(world / "videos", rt, w, PipelineOptions(progress=False, batch_segments=3))
    assert report.added == 10 and not report.failed
    data = json.loads((world / "world.json").read_text())
    texts = [c["caption"] for c in data["captions"].values()][:24]
    with IndexReader(idx) as reader:
        results = Searcher(rt, reader).search(texts, top_k=10)
        paths = [v.path for v in reader.videos]

    model, _ = load_checkpoint(ckpt)
    set_num_samples(model.head, rt.bundle.sampling["samples"])
    form = create_form(model.head)
    banks = draw_noise(rt.bundle.noise_specs, rt.bundle.sampling["seed"])
    pixels = []
    for p in paths:
        f = world / "videos" / p
        pixels.append(decode_windows(f, 0.0, num_frames=4, image_size=32, mean=rt.bundle.preprocessing["mean"],
                                     std=rt.bundle.preprocessing["std"]).pixels[0])  # window 0: the whole clip
    ref, _ = P.torch_scores(model, form, texts, np.stack(pixels), banks)
    for i, r in enumerate(results):
        order = sorted(range(len(paths)), key=lambda j: (-ref[i, j], paths[j]))
        got = [h.path for h in r.hits]
        want = [paths[j] for j in order]
        if got != want:  # only near-ties may swap
            for a, b in zip(got, want):
                if a != b:
                    assert abs(ref[i, paths.index(a)] - ref[i, paths.index(b)]) < 1e-5, (r.query, got, want)
        np.testing.assert_allclose([h.score for h in r.hits], [ref[i, paths.index(p)] for p in got], atol=1e-4)


DEMO = Path(__file__).resolve().parents[2] / "export" / "pretrained" / "demo-spem" / "manifest.json"


@pytest.mark.skipif(not DEMO.exists(), reason="the shipped demo bundle is not built (make demo-bundle)")
def test_demo_model_finds_the_right_video(tmp_path, monkeypatch):
    """Held-out procedural folder, the shipped demo model: captions that describe exactly one
    video of the folder should mostly rank that video first."""
    from probret.engine.pipeline import PipelineOptions, update_index
    from probret.export.resolve import resolve_model
    from probret.engine.runtime import BundleRuntime
    from probret.train.world import generate_world

    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    world = tmp_path / "world"
    generate_world(world, videos=30, seed=11, resolution=(64, 64), splits=(0.0, 0.0, 1.0))
    model = resolve_model(None)
    rt = BundleRuntime(model.bundle, device="cpu")
    with IndexWriter(tmp_path / "idx", IndexSettings.for_bundle(rt.bundle)) as w:
        update_index(world / "videos", rt, w, PipelineOptions(progress=False))
    data = json.loads((world / "world.json").read_text())
    specific = [(c["caption"], c["matches"][0] + ".mp4") for c in data["captions"].values()
                if c["eval"] and len(c["matches"]) == 1]
    assert len(specific) >= 10
    with IndexReader(tmp_path / "idx") as reader:
        results = Searcher(rt, reader).search([q for q, _ in specific], top_k=5)
    first = np.mean([r.hits[0].path == want for r, (_, want) in zip(results, specific)])
    top5 = np.mean([any(h.path == want for h in r.hits) for r, (_, want) in zip(results, specific)])
    # chance is 1/30 first and 1/6 in the top 5; an intermediate demo checkpoint (val R@1 43 %)
    # gave 0.57 and 0.97 here
    assert first >= 0.4 and top5 >= 0.8, (first, top5)
