"""engine/ann.py: factory choice, exactness of Flat, persistence, incremental add/remove, overrides."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from probret.engine.ann import ANN_DIR, AnnStage, choose_factory  # noqa: E402
from probret.engine.errors import IndexStoreError  # noqa: E402
from probret.engine.index import EncodedVideo, IndexReader, IndexSettings, IndexWriter  # noqa: E402

D = 16
SETTINGS = IndexSettings(bundle_sha256="a" * 64, num_frames=2, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _video(i: int, nseg: int = 2) -> EncodedVideo:
    rng = np.random.default_rng(i)
    ann = _unit(rng.standard_normal((nseg, D)))
    return EncodedVideo(path=f"v{i:05d}.mp4", size=1, mtime_ns=1, duration=2.0 * nseg, fps=1.0, width=8, height=8,
                        segments=[(2.0 * k, 2.0 * k + 2) for k in range(nseg)],
                        timestamps=np.tile([0.5, 1.5], (nseg, 1)) + 2.0 * np.arange(nseg)[:, None],
                        tensors={"video_mean": ann, "ann": ann})


def _exact(reader, q, k):
    vec = reader.gather(["ann"], np.arange(reader.num_segments))["ann"]
    s = q @ vec.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_choose_factory():
    assert choose_factory(1000, 512) == "Flat"
    assert choose_factory(200_000, 512) == "HNSW32"
    assert choose_factory(200_000, 512, memory_budget=1 << 20).startswith("IVF")  # vectors over the budget
    assert choose_factory(1_000_000, 64) == "IVF4096,PQ16"
    f = choose_factory(10_000_000, 512)
    assert f.startswith("IVF") and f.endswith(",PQ64")
    nlist = int(f[3:f.index(",")])
    assert nlist & (nlist - 1) == 0 and 4096 <= nlist <= 32768
    assert choose_factory(10_000_000, 60).endswith(",PQ15")  # m divides d


def test_flat_is_exact_persisted_and_incremental(tmp_path):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([_video(i) for i in range(300)])
    q = _unit(np.random.default_rng(99).standard_normal((5, D)))
    said = []
    with IndexReader(idx) as r:
        st = AnnStage.open(r, say=said.append)
        assert st.factory == "Flat" and any("building" in m for m in said)
        _, pos = st.search(q, 10)
        np.testing.assert_array_equal(pos, _exact(r, q, 10))
    assert (idx / ANN_DIR / "index.faiss").is_file() and (idx / ANN_DIR / "ann.json").is_file()
    said.clear()
    with IndexReader(idx) as r:  # reopened: loaded, nothing built or added
        AnnStage.open(r, say=said.append)
        assert said == []
    with IndexWriter(idx, SETTINGS) as w:  # 20 new videos, 30 removed
        w.add([_video(i) for i in range(300, 320)])
        w.remove([f"v{i:05d}.mp4" for i in range(30)])
    with IndexReader(idx) as r:
        st = AnnStage.open(r, say=said.append)
        assert said == ["ann: adding 40 new segment(s) to the Flat index"]
        assert st.index.ntotal == r.num_segments == 580
        _, pos = st.search(q, 10)
        np.testing.assert_array_equal(pos, _exact(r, q, 10))


def test_hnsw_masks_removed_and_ivfpq_override(tmp_path):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([_video(i) for i in range(400)])
    q = _unit(np.random.default_rng(7).standard_normal((8, D)))
    with IndexReader(idx) as r:
        AnnStage.open(r, factory="HNSW16")
    with IndexWriter(idx, SETTINGS) as w:
        w.remove([f"v{i:05d}.mp4" for i in range(0, 400, 10)])  # 10% of the rows: masked, not rebuilt
    said = []
    with IndexReader(idx) as r:
        st = AnnStage.open(r, factory="HNSW16", ef_search=256, say=said.append)
        assert said == [] and len(st.dead) == 80 and st.index.ntotal == 800
        _, pos = st.search(q, 10)
        assert (pos >= 0).all() and (pos < r.num_segments).all()
        exact = _exact(r, q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, exact)])
        assert recall >= 0.9
        st = AnnStage.open(r, factory="IVF8,PQ4x4", nprobe=8, directory=tmp_path / "ivf")
        assert st.index.ntotal == r.num_segments
        _, pos = st.search(q, 100)  # PQ candidates, re-ranked downstream: the exact top 5 is among 100
        assert np.mean([len(set(a[:5]) & set(b)) / 5 for a, b in zip(_exact(r, q, 5), pos)]) >= 0.9
        with pytest.raises(IndexStoreError, match="bad faiss factory"):
            AnnStage.open(r, factory="NoSuchIndex", persist=False)


def _shifted(i: int, nseg: int = 2) -> EncodedVideo:
    v = _video(i + 1000, nseg)
    v.path = f"v{i:05d}.mp4"
    return v


@pytest.mark.parametrize("how", ["rebuild", "model change"])
def test_rebuild_and_model_change_invalidate_the_cache(tmp_path, how):
    """After --rebuild or a model change the segment keys restart at (shard 1, row 0) and would
    name other vectors: the stored ANN index must not be reused (it is tied to the build)."""
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([_video(i) for i in range(50)])
    with IndexReader(idx) as r:
        AnnStage.open(r)
    other = SETTINGS if how == "rebuild" else IndexSettings(**{**SETTINGS.__dict__, "bundle_sha256": "b" * 64})
    with IndexWriter(idx, other, rebuild=how == "rebuild") as w:
        w.add([_shifted(i) for i in range(50)])  # same paths and keys, other vectors
    q = _unit(np.random.default_rng(5).standard_normal((6, D)))
    said = []
    with IndexReader(idx) as r:
        st = AnnStage.open(r, say=said.append)
        assert any("building" in m for m in said)
        _, pos = st.search(q, 10)
        np.testing.assert_array_equal(pos, _exact(r, q, 10))


def test_ann_files_are_never_written_through_a_symlink(tmp_path):
    idx = tmp_path / "idx"
    with IndexWriter(idx, SETTINGS) as w:
        w.add([_video(i) for i in range(20)])
    victim = tmp_path / "victim"
    victim.mkdir()
    (idx / ANN_DIR).symlink_to(victim)
    with IndexReader(idx) as r:
        st = AnnStage.open(r)  # works, without the cache
        assert st.index.ntotal == r.num_segments
    assert list(victim.iterdir()) == []
    (idx / ANN_DIR).unlink()
    (idx / ANN_DIR).mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (idx / ANN_DIR / "ann.json").symlink_to(target)
    with IndexReader(idx) as r:
        AnnStage.open(r)
    assert target.read_text() == "keep me"
