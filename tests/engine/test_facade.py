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
        # an update with work walks twice (the plan without the lock, then under it), a search never
        assert walks.calls == 2
        report = vf.last_update
        assert isinstance(report, UpdateReport) and report.added == 5 and not report.failed
        results = vf.search(queries, top_k=3)
        assert walks.calls == 2
        assert [r.query for r in results] == queries and all(isinstance(r, SearchResult) for r in results)
        for r in results:
            assert [h.rank for h in r.hits] == [1, 2, 3] and r.note is None
            for h in r.hits:
                assert isinstance(h, Hit) and 0.0 <= h.confidence <= 1.0 and isinstance(h.uncertainty, float)
                assert len(h.moments) == 1 and isinstance(h.moment, Moment) and h.moment.score == h.score
                assert (videos / h.path).is_file() and h.display_path == h.path
                json.dumps(h.to_json(), allow_nan=False)
        one = vf.search(queries[0], top_k=3)[0]
        assert [h.path for h in one.hits] == [h.path for h in results[0].hits]
        again = vf.update()
        assert again.added == 0 and again.unchanged == 5 and walks.calls == 3  # up to date: the plan's walk only


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
    plain = _without_calibrator(SHIPPED_DEMO_BUNDLE, tmp_path / "plain")
    with open_folder(videos, bundle=plain, index=tmp_path / "idx2", progress=False) as vf:
        assert vf.calibrator is None and vf.search(queries[0], top_k=2)[0].hits[0].confidence is None
        with pytest.raises(UsageError, match="calibrator"):
            vf.search(queries, min_confidence=0.5)


def _without_calibrator(bundle_dir, out):
    """A copy of the demo bundle whose manifest carries no calibrator (an export without --calibrate)."""
    shutil.copytree(bundle_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["calibration"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return load_bundle(out)


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


# -- readers and writers coexist (issue 12 §3) ------------------------------------------------
def _hold_lock(index_dir):
    """Another process holding the writer's lock (``flock(1)`` on INDEX/lock), as a long
    ``probret index`` would; returns the Popen (:func:`_release` it). flock(1) runs ``sleep`` as
    its child, which holds the lock too: both are in a session of their own, ended together."""
    import subprocess

    holder = subprocess.Popen(["flock", "--exclusive", str(index_dir / "lock"), "sleep", "120"],
                              start_new_session=True)
    for _ in range(200):  # until the lock is really taken
        if subprocess.run(["flock", "--nonblock", str(index_dir / "lock"), "true"]).returncode:
            return holder
        import time

        time.sleep(0.05)
    _release(holder)
    raise AssertionError("flock did not take the lock")


def _release(holder) -> None:
    import signal

    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()


def test_a_search_with_nothing_to_index_takes_no_lock(folder, bundle, tmp_path):
    videos, queries = folder
    src = tmp_path / "videos"
    shutil.copytree(videos, src)
    open_folder(src, bundle=bundle, index=tmp_path / "idx", progress=False).close()
    holder = _hold_lock(tmp_path / "idx")
    try:
        for _ in range(3):
            with open_folder(src, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
                assert vf.last_update.unchanged == 5 and vf.last_update.encoded_videos == 0
                assert vf.search(queries[0], top_k=2)[0].hits
        shutil.copy(src / sorted(os.listdir(src))[0], src / "new.mp4")  # now there is work: the lock is needed
        with pytest.raises(IndexStoreError, match="being written by another probret process"):
            open_folder(src, bundle=bundle, index=tmp_path / "idx", progress=False)
        with open_folder(src, bundle=bundle, index=tmp_path / "idx", update=False) as vf:
            assert len(vf) == 5  # --no-update searches what is there
    finally:
        _release(holder)
    with open_folder(src, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
        assert vf.last_update.added == 1 and len(vf) == 6


def _damage(how: str, idx):
    import sqlite3

    if how == "not a database":
        (idx / "index.db").write_bytes(b"this is no sqlite file, only text" * 200)
        for side in ("index.db-wal", "index.db-shm"):
            if (idx / side).exists():
                (idx / side).unlink()
        return "is unreadable (file is not a database)"
    if how == "missing shard":
        victim = sorted((idx / "shards").glob("*.bin"))[0]
        victim.unlink()
        return victim.name
    conn = sqlite3.connect(idx / "index.db")
    version = {"older format": "0", "newer format": "99"}[how]
    conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (version,))
    conn.commit()
    conn.close()
    return f"index format {version}"


@pytest.mark.parametrize("how", ["not a database", "missing shard", "older format", "newer format"])
@pytest.mark.parametrize("update", [True, False])
def test_a_damaged_index_is_reported_with_the_true_reason(folder, bundle, tmp_path, how, update):
    videos, queries = folder
    idx = tmp_path / "idx"
    open_folder(videos, bundle=bundle, index=idx, progress=False).close()
    words = _damage(how, idx)
    with pytest.raises(IndexStoreError) as err:
        with open_folder(videos, bundle=bundle, index=idx, progress=False, update=update) as vf:
            vf.search(queries[0])
    message = str(err.value)
    assert str(idx) in message and words in message and "no index here" not in message, message
    assert "\n" not in message


@pytest.mark.parametrize("update", [True, False])
def test_a_foreign_directory_is_refused_with_the_true_reason(folder, bundle, tmp_path, update):
    videos, _ = folder
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    with pytest.raises(IndexStoreError, match=r"not a probret index.*notes\.txt|notes\.txt.*not a probret index") as err:
        open_folder(videos, bundle=bundle, index=foreign, progress=False, update=update)
    assert "no index here" not in str(err.value)
    assert sorted(os.listdir(foreign)) == ["notes.txt"] and (foreign / "notes.txt").read_text() == "mine\n"


def test_fifos_and_sockets_are_reported_as_skipped(folder, bundle, tmp_path):
    import socket

    videos, _ = folder
    src = tmp_path / "videos"
    shutil.copytree(videos, src)
    os.mkfifo(src / "pipe.mp4")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.mp4"))
    try:
        for _ in range(2):  # the update that indexes, then the one that has nothing to do
            with open_folder(src, bundle=bundle, index=tmp_path / "idx", progress=False) as vf:
                report = vf.last_update
                assert sorted(f.path for f in report.skipped) == ["pipe.mp4", "sock.mp4"]
                assert all("not a video file" in f.reason for f in report.skipped) and not report.failed
                assert {s["path"] for s in report.to_json()["skipped"]} == {"pipe.mp4", "sock.mp4"}
                assert len(vf) == 5
    finally:
        sock.close()


def _with_calibrator(bundle_dir, out, *, gallery_size: int):
    """A copy of the demo bundle whose manifest carries a Platt calibrator on the margin, fitted on
    synthetic signals (what export/calibrate.py stores; tests/export/test_calibrate.py fits a real one)."""
    from probret.engine.calibration import Calibrator, hit_signals

    shutil.copytree(bundle_dir, out)
    rng = np.random.default_rng(0)
    scores = -np.sort(-rng.uniform(0, 1, (200, 5)), axis=1)
    signals = {k: v[:, 0] for k, v in hit_signals(scores).items()}
    labels = (signals["margin"] + rng.normal(0, 0.05, 200) > 0.1).astype(float)
    cal = Calibrator.fit("platt", signals, labels, ["margin"], domain={"dataset": "procedural", "split": "val",
                                                                       "gallery_size": gallery_size})
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["calibration"] = cal.to_dict()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return load_bundle(out), cal


def test_confidence_uses_the_runner_up_and_min_confidence_abstains(folder, tmp_path, caplog):
    from probret.engine.calibration import hit_signals

    videos, captions = folder
    calibrated, cal = _with_calibrator(SHIPPED_DEMO_BUNDLE, tmp_path / "b", gallery_size=1000)
    with open_folder(videos, bundle=calibrated, index=tmp_path / "idx") as vf:
        [two] = vf.search(captions[0], top_k=2)
        [one] = vf.search(captions[0], top_k=1)
        [none] = vf.search(captions[0], top_k=3, min_confidence=1.0)
    expected = cal.confidence(hit_signals(np.array([h.score for h in two.hits])))
    assert [h.confidence for h in two.hits] == pytest.approx(list(expected))
    assert len(one.hits) == 1 and one.hits[0].confidence == pytest.approx(expected[0])  # margin to the hidden #2
    assert all(0.0 <= h.confidence <= 1.0 for h in two.hits)
    assert none.hits == [] and none.note.startswith("no confident match")
    assert "calibrated on a gallery of 1000 videos" in caplog.text  # 5 videos here: a rough guide only
