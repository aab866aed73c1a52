"""engine/facade.py: open_folder / VideoFolder, with the shipped demo bundle on a small
procedural folder (real decoding, real ONNX Runtime, a real index)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from probret.engine import (DataError, Hit, IndexStoreError, Moment, SearchResult, UpdateReport, UsageError, load_bundle,
                            open_folder)
from probret.export.resolve import SHIPPED_DEMO_BUNDLE


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("facade")
    generate_world(root / "world", videos=5, seed=13, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    shutil.copytree(root / "world" / "videos", root / "videos")
    caps = json.loads((root / "world" / "world.json").read_text())["captions"]
    return root / "videos", [c["caption"] for c in caps.values()][:3]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(SHIPPED_DEMO_BUNDLE)


class WalkCounter:
    """Counts the folder walks (os.walk calls on the folder itself) while delegating to os.walk."""

    def __init__(self, monkeypatch, folder):
        self.calls = 0
        real = os.walk

        def walk(top, *a, **kw):
            if os.path.realpath(top) == os.path.realpath(folder):
                self.calls += 1
            return real(top, *a, **kw)

        monkeypatch.setattr(os, "walk", walk)


def test_update_search_and_results(folder, bundle, tmp_path, monkeypatch):
    videos, queries = folder
    walks = WalkCounter(monkeypatch, videos)
    with open_folder(videos, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
        assert walks.calls == 1  # one walk for the update, none for the search
        report = vf.last_update
        assert isinstance(report, UpdateReport) and report.added == 5 and not report.failed
        results = vf.search(queries, top_k=3)
        assert walks.calls == 1
        assert [r.query for r in results] == queries and all(isinstance(r, SearchResult) for r in results)
        for r in results:
            assert [h.rank for h in r.hits] == [1, 2, 3] and r.note is None
            for h in r.hits:
                assert isinstance(h, Hit) and h.confidence is None and isinstance(h.uncertainty, float)
                assert len(h.moments) == 1 and isinstance(h.moment, Moment) and h.moment.score == h.score
                assert (videos / h.path).is_file() and h.display_path == h.path
                json.dumps(h.to_json(), allow_nan=False)
        one = vf.search(queries[0], top_k=3)[0]
        assert [h.path for h in one.hits] == [h.path for h in results[0].hits]
        again = vf.update()
        assert again.added == 0 and again.unchanged == 5 and walks.calls == 2


def test_no_update_walks_nothing(folder, bundle, tmp_path, monkeypatch):
    videos, queries = folder
    open_folder(videos, bundle=bundle, index=tmp_path / "idx", progress=False).close()
    walks = WalkCounter(monkeypatch, videos)
    with open_folder(videos, bundle=bundle, index=tmp_path / "idx", update=False) as vf:
        assert vf.last_update is None and len(vf) == 5
        assert vf.search(queries[:1], top_k=2)[0].hits
    assert walks.calls == 0
    with pytest.raises(UsageError, match="--window"):
        open_folder(videos, bundle=bundle, index=tmp_path / "idx", update=False, window=5)
    with pytest.raises(IndexStoreError, match="no index here"):
        open_folder(videos, bundle=bundle, index=tmp_path / "none", update=False)


def test_settings_default_to_the_index(folder, bundle, tmp_path):
    videos, _ = folder
    open_folder(videos, bundle=bundle, index=tmp_path / "idx", window=0, dtype="float32", progress=False).close()
    with open_folder(videos, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
        assert (vf.settings.window, vf.settings.dtype) == (0.0, "float32")
        assert vf.last_update.encoded_videos == 0 and vf.last_update.rebuilt is None
    with open_folder(videos, bundle=bundle, index=tmp_path / "idx", dtype="float16", progress=False) as vf:
        assert vf.last_update.rebuilt and "storage dtype float32 -> float16" in vf.last_update.rebuilt
        assert vf.last_update.encoded_videos == 5


@pytest.mark.parametrize("kwargs", [{"window": float("nan")}, {"window": 0.2}, {"workers": -1}, {"batch": 0},
                                    {"dtype": "int8"}, {"resize": "bogus"}])
def test_bad_index_options(folder, bundle, tmp_path, kwargs):
    videos, _ = folder
    with pytest.raises(UsageError):
        open_folder(videos, bundle=bundle, index=tmp_path / "idx", **kwargs)
    assert not (tmp_path / "idx").exists()


def test_bad_search_options_and_queries(folder, bundle, tmp_path):
    videos, queries = folder
    with open_folder(videos, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
        for kwargs in ({"top_k": 0}, {"moments": 0}, {"ann_candidates": 0}, {"top_k": float("inf")}):
            with pytest.raises(UsageError):
                vf.search(queries, **kwargs)
        with pytest.raises(UsageError, match="query 2 is empty"):
            vf.search(["a", " "])
        with pytest.raises(UsageError, match="calibrator"):
            vf.search(queries, min_confidence=0.5)


def test_rank_captions_from_the_index_and_encoded_now(folder, bundle, tmp_path):
    videos, queries = folder
    outside = tmp_path / "copy.mp4"
    shutil.copy(videos / "video0.mp4", outside)
    with open_folder(videos, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
        a = vf.rank_captions(queries, video=videos / "video0.mp4")
        b = vf.rank_captions(queries, video=outside)
        c = vf.rank_captions(queries, video=vf.reader.video_index("video0.mp4"))
    assert a.source == c.source == "index" and b.source.startswith("encoded now")
    assert [h.caption for h in a.hits] == [h.caption for h in b.hits] == [h.caption for h in c.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)


def test_encode_text_follows_sentence_transformers(folder, bundle, tmp_path):
    videos, queries = folder
    with open_folder(videos, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
        one = vf.encode_text(queries[0])
        many = vf.encode_text(queries, batch_size=2, show_progress_bar=False)
        unit = vf.encode_text(queries, normalize_embeddings=True)
        listed = vf.encode_text(queries, convert_to_numpy=False)
    assert one.shape == (bundle.embed_dim,) and many.shape == (3, bundle.embed_dim) and many.dtype == np.float32
    np.testing.assert_allclose(many[0], one, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert isinstance(listed, list) and len(listed) == 3


def test_a_folder_without_videos(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no videos found"):
        open_folder(tmp_path / "empty", bundle=bundle)
    with pytest.raises(DataError, match="no such folder"):
        open_folder(tmp_path / "missing", bundle=bundle)
