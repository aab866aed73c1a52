"""engine/distributed.py: `probret index FOLDER --ray` on a local Ray cluster (2 CPUs) started here,
and engine/shards.py: merging independently written indexes, the manifest, compaction.

One procedural folder (8 videos of 2 segments each, plus a broken file) and a tiny random SPEM
bundle. The Ray index is built in two runs, the second through the CLI after three videos were
"added" (resume: only they are encoded), a third run encodes nothing. It must then equal the
single-process index: same videos, segments, timestamps and failures, every stored tensor
within 1e-5, the same search ranking.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from probret.engine.index import IndexReader, IndexSettings, IndexWriter  # noqa: E402
from probret.engine.pipeline import PipelineOptions, update_index  # noqa: E402
from probret.engine.search import Searcher  # noqa: E402

WINDOW = 1.0  # the world's clips last ~2 s: two segments each


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_spem_bundle):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("dist")
    generate_world(root / "world", videos=8, seed=5, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    make_spem_bundle(root, seed=0, jitter=True, benchmark=root / "world", benchmark_videos=4)
    (root / "world" / "videos" / "zz_broken.mp4").write_bytes(b"not a video" * 100)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield root
    ray.shutdown()


def _stored(idx: Path) -> tuple[dict, list]:
    out = {}
    with IndexReader(idx) as r:
        names = sorted(r.layout)
        for i, v in enumerate(r.videos):
            segs = np.arange(r.video_offsets[i], r.video_offsets[i + 1])
            out[v.path] = {"meta": (v.size, v.mtime_ns, round(v.duration, 6), v.width, v.height),
                           "segments": [(float(r.seg_start[s]), float(r.seg_end[s])) for s in segs],
                           "ts": np.stack([r.timestamps(int(s)) for s in segs]),
                           **r.gather(names, segs)}
        return out, sorted(r.failed)


def test_ray_index_resumes_and_equals_single_process(world, tmp_path):
    from click.testing import CliRunner

    from probret.cli.search_cmd import index
    from probret.engine.distributed import update_index_ray
    from probret.engine.runtime import BundleRuntime

    rt = BundleRuntime(world / "bundle", device="cpu")
    folder = world / "world" / "videos"
    single, dist = tmp_path / "single", tmp_path / "ray"
    with IndexWriter(single, IndexSettings.for_bundle(rt.bundle, window=WINDOW)) as w:
        ref = update_index(folder, rt, w, PipelineOptions(progress=False, batch_segments=3))
    assert ref.added == 8 and ref.encoded_segments == 16 and len(ref.failed) == 1

    # run 1 on Ray with three videos missing (as if the run had been killed before them)
    aside = tmp_path / "aside"
    aside.mkdir()
    later = sorted(p.name for p in folder.glob("*.mp4") if p.name != "zz_broken.mp4")[-3:]
    for n in later:
        (folder / n).rename(aside / n)
    try:
        with IndexWriter(dist, IndexSettings.for_bundle(rt.bundle, window=WINDOW)) as w:
            r1 = update_index_ray(folder, rt, w, PipelineOptions(progress=False, batch_segments=3))
    finally:
        for n in later:
            (aside / n).rename(folder / n)
    assert (r1.added, r1.encoded_videos, r1.encoded_segments) == (5, 5, 10)
    assert [p for p, _ in r1.failed] == ["zz_broken.mp4"]

    # run 2 through the CLI: only the three new videos are encoded
    res = CliRunner().invoke(index, [str(folder), "--model", str(world / "bundle"), "--index", str(dist),
                                   "--window", str(WINDOW), "--device", "cpu", "--batch", "3", "-q", "--json",
                                   "--ray", "--full"])  # --full: the index above was written in float32
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert (rep["added"], rep["unchanged"], rep["encoded_videos"], rep["indexed"]) == (3, 6, 3, 8)  # unchanged: 5 videos + the broken file

    # run 3: nothing left to do
    with IndexWriter(dist, IndexSettings.for_bundle(rt.bundle, window=WINDOW)) as w:
        r3 = update_index_ray(folder, rt, w, PipelineOptions(progress=False))
    assert r3.encoded_videos == 0 and r3.unchanged == 9

    a, fa = _stored(single)
    b, fb = _stored(dist)
    assert fa == fb and sorted(a) == sorted(b) and len(a) == 8
    for path in a:
        assert a[path]["meta"] == b[path]["meta"] and a[path]["segments"] == b[path]["segments"], path
        np.testing.assert_array_equal(a[path]["ts"], b[path]["ts"])
        for name in a[path]:
            if name not in ("meta", "segments", "ts"):
                np.testing.assert_allclose(a[path][name], b[path][name], atol=1e-5, rtol=0, err_msg=f"{path} {name}")

    data = json.loads((world / "world" / "world.json").read_text())
    texts = [c["caption"] for c in data["captions"].values()][:12]
    with IndexReader(single) as r_a, IndexReader(dist) as r_b:
        ra = Searcher(rt, r_a).search(texts, top_k=8)
        rb = Searcher(rt, r_b).search(texts, top_k=8)
    for x, y in zip(ra, rb):
        assert [h.path for h in x.hits] == [h.path for h in y.hits], x.query
        assert [h.segment for h in x.hits] == [h.segment for h in y.hits]
        np.testing.assert_allclose([h.score for h in x.hits], [h.score for h in y.hits], atol=1e-5)


def test_ray_missing_is_a_clear_error(monkeypatch):  # runs without Ray too
    import builtins

    from probret.engine import distributed
    from probret.engine.errors import DataError

    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert not distributed.ray_available()
    with pytest.raises(DataError, match=r"pip install 'probret\[ray\]'"):
        distributed.init_ray(None)


# --------------------------------------------------------------------------------------------
# engine/shards.py (no Ray needed)
# --------------------------------------------------------------------------------------------
def _fake(i: int, nseg: int = 2):
    from probret.engine.index import EncodedVideo

    rng = np.random.default_rng(i)
    f = rng.standard_normal((nseg, 2, 8)).astype(np.float32)
    return EncodedVideo(path=f"d{i % 3}/v{i:03d}.mp4", size=100 + i, mtime_ns=1000 + i, duration=2.0 * nseg, fps=2.0,
                        width=8, height=8, segments=[(2.0 * k, 2.0 * k + 2) for k in range(nseg)],
                        timestamps=np.tile([0.5, 1.5], (nseg, 1)) + 2.0 * np.arange(nseg)[:, None] + i,
                        tensors={"frame_features": f, "video_mean": f.mean(1), "ann": f[:, 0]})


FAKE = IndexSettings(bundle_sha256="b" * 64, num_frames=2, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_merge_manifest_compact(tmp_path):
    from probret.engine.errors import IndexStoreError
    from probret.engine.index import FileEntry
    from probret.engine.shards import compact, merge_indexes, write_manifest

    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    with IndexWriter(a, FAKE) as w:
        w.add([_fake(i, 1 + i % 3) for i in range(6)])
        w.add_failed(FileEntry("bad.mp4", 1, 1), "not a video")
    with IndexWriter(b, FAKE) as w:
        w.add([_fake(i, 2) for i in range(6, 10)])
    counts = merge_indexes(dest, [a, b], prefixes=["nodeA", "nodeB"])
    assert counts == {"copied": 10, "skipped": 0, "failed": 1, "videos": 10}
    sa, _ = _stored(a)
    sb, _ = _stored(b)
    merged, failed = _stored(dest)
    assert failed == [("nodeA/bad.mp4", "not a video")]
    want = {**{"nodeA/" + k: v for k, v in sa.items()}, **{"nodeB/" + k: v for k, v in sb.items()}}
    assert sorted(merged) == sorted(want)
    for p, v in want.items():
        assert merged[p]["meta"] == v["meta"] and merged[p]["segments"] == v["segments"]
        for name in ("ts", "frame_features", "video_mean", "ann"):
            np.testing.assert_array_equal(merged[p][name], v[name])
    # resumable: a second merge copies nothing
    assert merge_indexes(dest, [a, b], prefixes=["nodeA", "nodeB"])["skipped"] == 10
    m = json.loads((dest / "manifest.json").read_text())
    assert sorted(p for s in m["shards"].values() for p in s["videos"]) == sorted(want)
    assert m["sources"] == [str(a), str(b)]
    # dead rows, then compaction keeps the data and the manifest follows
    with IndexWriter(dest, FAKE) as w:
        w.remove(sorted(want)[:7])
    before, _ = _stored(dest)
    assert compact(dest) is True
    after, _ = _stored(dest)
    assert sorted(after) == sorted(before)
    for p in before:
        np.testing.assert_array_equal(after[p]["frame_features"], before[p]["frame_features"])
    m = write_manifest(dest)
    assert all(s["rows"] == s["live_rows"] for s in m["shards"].values())
    from click.testing import CliRunner
    from probret.cli.shards_cmd import shards
    res = CliRunner().invoke(shards, ["manifest", str(dest)])
    assert res.exit_code == 0 and json.loads(res.output)["shards"] == m["shards"]
    other = tmp_path / "other"
    with IndexWriter(other, IndexSettings(**{**FAKE.__dict__, "window": 10.0})) as w:
        w.add([_fake(20)])
    with pytest.raises(IndexStoreError, match="other settings"):
        merge_indexes(tmp_path / "m2", [a, other])
