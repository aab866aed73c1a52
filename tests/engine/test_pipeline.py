"""engine/pipeline.py: segments, broken files, incremental updates, and kill -9 at any moment.

A numpy stand-in for the model (``FakeRuntime``: per-frame channel means and stds) keeps these
tests about the pipeline and the index; tests/engine/test_search.py and tests/cli/ run real
bundles. The kill tests run the indexer in a subprocess and SIGKILL it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from probret.engine.index import IndexReader, IndexSettings, IndexWriter
from probret.engine import pipeline as pipeline_mod
from probret.engine.pipeline import STAGES, PipelineOptions, decode_windows, plan_segments, update_index

COLORS = [(220, 30, 30), (30, 200, 60), (40, 80, 240), (240, 210, 30), (240, 240, 240), (160, 40, 210),
          (20, 20, 20), (120, 120, 120), (0, 200, 200), (200, 100, 0)]
SETTINGS = IndexSettings(bundle_sha256="f" * 64, num_frames=4, image_size=16, mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25), window=3.0, resize="auto")


class FakeBundle:
    num_frames = 4
    preprocessing = {"image_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    video_outputs = ["video_mean"]
    has_uncertainty = False
    context_length = 16
    sha256 = "f" * 64
    method = "fake"


class FakeRuntime:
    """encode_videos: per-frame channel mean and std (D = 6); video_side: the mean over frames."""

    def __init__(self, delay: float = 0.0):
        self.bundle = FakeBundle()
        self.delay = delay
        self.encoded: list[int] = []  # segments per encoder call

    def encode_videos(self, pixels):
        if self.delay:
            time.sleep(self.delay)
        self.encoded.append(len(pixels))
        return np.concatenate([pixels.mean(axis=(3, 4)), pixels.std(axis=(3, 4))], -1).astype(np.float32)

    def video_side(self, frames):
        return {"video_mean": frames.mean(1)}


def solid_video(path: Path, colors, *, seconds_each: float = 2.0, fps: int = 4, size=(32, 32)) -> Path:
    from probret.train.world import encode_mp4

    w, h = size
    n = int(round(seconds_each * fps))
    frames = np.concatenate([np.broadcast_to(np.array(c, np.uint8), (n, h, w, 3)) for c in colors])
    encode_mp4(path, np.ascontiguousarray(frames), fps)
    return path


def make_folder(root: Path, n: int = 6, *, broken: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        solid_video(root / f"clip{i}.mp4", [COLORS[i % len(COLORS)]])
    (root / "sub").mkdir(exist_ok=True)
    solid_video(root / "sub" / "long.mp4", COLORS[:4], seconds_each=3.0)  # 12 s: four 3 s windows
    (root / "README.txt").write_text("not a video\n")
    if broken:
        (root / "empty.mp4").write_bytes(b"")
        (root / "notes.mp4").write_text("this is not a video\n" * 20)
        (root / "random.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return root


def index_folder(folder, idx, runtime=None, settings=SETTINGS, **opts):
    runtime = runtime or FakeRuntime()
    with IndexWriter(idx, settings) as w:
        return update_index(folder, runtime, w, PipelineOptions(progress=False, **opts)), runtime


def stored(idx) -> dict[str, dict[str, np.ndarray]]:
    with IndexReader(idx) as r:
        out = {}
        for i, v in enumerate(r.videos):
            segs = np.arange(r.video_offsets[i], r.video_offsets[i + 1])
            out[v.path] = {k: np.array(a) for k, a in r.gather(sorted(r.layout), segs).items()}
        return out


def test_plan_segments():
    assert plan_segments(4.0, 30.0) == [(0.0, 4.0)]
    assert plan_segments(44.0, 30.0) == [(0.0, 44.0)]  # up to 1.5 windows: one segment
    assert plan_segments(50.0, 30.0) == [(0.0, 25.0), (25.0, 50.0)]  # equal windows, no short tail
    assert len(plan_segments(600.0, 30.0)) == 20
    assert plan_segments(600.0, 0.0) == [(0.0, 600.0)]
    assert plan_segments(0.0, 30.0) == [(0.0, 0.0)]


def test_indexes_good_files_and_reports_broken_ones(tmp_path):
    folder = make_folder(tmp_path / "v")
    idx = tmp_path / "idx"
    report, rt = index_folder(folder, idx, batch_segments=3, chunk_segments=2)
    assert report.added == 7 and report.total_videos == 10 and report.ignored == 1
    failed = dict(report.failed)
    assert set(failed) == {"empty.mp4", "notes.mp4", "random.mkv"}
    assert all(isinstance(r, str) and r for r in failed.values())
    assert report.encoded_segments == 6 + 4 == sum(rt.encoded)
    assert max(rt.encoded) <= 3 + 1  # batches of about batch_segments
    data = stored(idx)
    # each clip's stored mean colour is its own colour (normalised as preprocess does)
    for i in range(6):
        want = (np.array(COLORS[i], np.float32) / 255 - 0.5) / 0.25
        np.testing.assert_allclose(data[f"clip{i}.mp4"]["video_mean"][0, :3], want, atol=0.1)
    # unchanged folder: nothing is encoded again, failures are remembered, not retried
    report2, rt2 = index_folder(folder, idx)
    assert rt2.encoded == [] and report2.added == report2.updated == 0 and report2.unchanged == 10
    assert sorted(p for p, _ in report2.failed_before) == ["empty.mp4", "notes.mp4", "random.mkv"]
    report3, rt3 = index_folder(folder, idx, retry_failed=True)
    assert len(report3.failed) == 3 and rt3.encoded == []


def test_report_has_every_stage_and_the_decode_modes(tmp_path):
    folder = make_folder(tmp_path / "v", n=3, broken=False)
    report, rt = index_folder(folder, tmp_path / "idx", batch_segments=2)
    assert set(report.stages) == set(STAGES)
    assert report.stages["decode"] > 0 and report.stages["preprocess"] > 0 and report.stages["encode"] > 0
    assert all(v >= 0 for v in report.stages.values())
    dec = report.decode
    assert dec["files_linear"] + dec["files_seek"] == report.encoded_videos == 4
    assert dec["frames_sampled"] == report.encoded_segments * FakeBundle.num_frames
    assert dec["frames_decoded"] >= 1
    d = report.to_dict()
    assert set(d["stage_seconds"]) == set(STAGES) and d["decode"] == dec


def test_decoding_stays_a_bounded_prefetch_ahead_of_the_encoder(tmp_path, monkeypatch):
    """Decoded-but-not-encoded segments never exceed the prefetch (plus one task), whatever the
    encoder's speed, and every encoder call takes at most a batch (plus one chunk's spill)."""
    folder = make_folder(tmp_path / "v", n=8, broken=False)
    decoded = [0]
    real = pipeline_mod._decode_chunk

    def counting(*a, **k):
        d = real(*a, **k)
        decoded[0] += len(d.timestamps)
        return d

    monkeypatch.setattr(pipeline_mod, "_decode_chunk", counting)

    class Slow(FakeRuntime):
        def __init__(self):
            super().__init__(delay=0.05)
            self.ahead: list[int] = []

        def encode_videos(self, pixels):
            self.ahead.append(decoded[0] - sum(self.encoded))
            return super().encode_videos(pixels)

    rt = Slow()
    report, _ = index_folder(folder, tmp_path / "idx", runtime=rt, batch_segments=2, chunk_segments=2,
                             prefetch_segments=3, workers=2)
    assert report.encoded_segments == 8 + 4 == sum(rt.encoded)
    assert max(rt.encoded) <= 2 + 1
    # each task is counted as >= 1 segment and yields <= chunk: (prefetch + 1) x chunk at most,
    # where an unbounded pool would have decoded all 12 segments before the second call
    assert max(rt.ahead) <= (3 + 1) * 2


def test_decode_threads_run_at_the_requested_niceness(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities are set on Linux only")
    import threading

    folder = make_folder(tmp_path / "v", n=2, broken=False)
    seen = []
    real = pipeline_mod._decode_chunk

    def recording(*a, **k):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(*a, **k)

    monkeypatch.setattr(pipeline_mod, "_decode_chunk", recording)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    index_folder(folder, tmp_path / "idx", decode_nice=5)
    assert seen and all(p == min(19, base + 5) for p in seen)
    seen.clear()
    index_folder(folder, tmp_path / "idx2", decode_nice=0)
    assert seen and all(p == base for p in seen)
    assert threading.get_native_id() and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_long_video_is_indexed_as_windows(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    solid_video(folder / "long.mp4", COLORS[:4], seconds_each=3.0)
    idx = tmp_path / "idx"
    report, rt = index_folder(folder, idx, chunk_segments=1, batch_segments=3)
    assert report.encoded_segments == 4
    with IndexReader(idx) as r:
        assert r.num_segments == 4
        np.testing.assert_allclose(r.seg_start, [0, 3, 6, 9])
        np.testing.assert_allclose(r.seg_end, [3, 6, 9, 12])
        means = r.gather(["video_mean"], np.arange(4))["video_mean"][:, :3]
        for k in range(4):
            ts = r.timestamps(k)
            assert ts.shape == (4,) and np.all((ts >= 3 * k) & (ts < 3 * k + 3))
            want = (np.array(COLORS[k], np.float32) / 255 - 0.5) / 0.25
            np.testing.assert_allclose(means[k], want, atol=0.15)  # each window sees its own colour


def test_incremental_update_touches_only_changed_files(tmp_path):
    folder = make_folder(tmp_path / "v", n=5, broken=False)
    idx = tmp_path / "idx"
    index_folder(folder, idx)
    before = stored(idx)
    solid_video(folder / "clip1.mp4", [COLORS[9]], seconds_each=3.0)  # changed content, size and mtime
    solid_video(folder / "new.mp4", [COLORS[8]])
    (folder / "clip3.mp4").unlink()
    report, rt = index_folder(folder, idx)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 4)
    assert sum(rt.encoded) == 2
    after = stored(idx)
    assert sorted(after) == sorted(set(before) - {"clip3.mp4"} | {"new.mp4"})
    for p in ("clip0.mp4", "clip2.mp4", "clip4.mp4", "sub/long.mp4"):
        for k in before[p]:
            np.testing.assert_array_equal(after[p][k], before[p][k])
    assert not np.allclose(after["clip1.mp4"]["video_mean"], before["clip1.mp4"]["video_mean"])
    # a touched file (same bytes, new mtime) is encoded again too: mtime is part of the rule
    os.utime(folder / "clip0.mp4", ns=(time.time_ns(), time.time_ns()))
    report, rt = index_folder(folder, idx)
    assert report.updated == 1 and sum(rt.encoded) == 1


def test_resize_modes_agree(tmp_path):
    path = solid_video(tmp_path / "big.mp4", [COLORS[2], COLORS[3]], size=(160, 96))
    kw = dict(num_frames=4, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    # window 0: the whole file as one segment; auto = decoder here (96 > 2 x 16)
    d = {r: decode_windows(path, 0.0, resize=r, **kw) for r in ("exact", "decoder", "auto")}
    exact, fast, auto = d["exact"].pixels, d["decoder"].pixels, d["auto"].pixels
    ts1, ts2 = d["exact"].timestamps, d["decoder"].timestamps
    assert exact.shape == fast.shape == (1, 4, 3, 16, 16)
    np.testing.assert_array_equal(ts1, ts2)
    np.testing.assert_array_equal(auto, fast)
    assert np.abs(exact - fast).max() < 0.2  # a few levels of 255, normalised by std 0.25


# --------------------------------------------------------------------------------------------
# what a file holds, not what its header claims
# --------------------------------------------------------------------------------------------
def _mp4_box(data: bytes, path: list[str], start: int = 0, end: int | None = None) -> int:
    """Offset of the body of the box at ``path`` (e.g. moov/trak/mdia/mdhd) in an MP4."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        if kind.decode("latin1") == path[0]:
            return start + 8 if len(path) == 1 else _mp4_box(data, path[1:], start + 8, start + size)
        start += size
    raise KeyError("/".join(path))


def claim_duration_mp4(src: Path, dst: Path, seconds: float) -> Path:
    """``src`` (one video track, one stts entry, version-0 boxes) rewritten so that every
    duration its header states (mvhd, tkhd, the edit list, mdhd, and the sample durations of
    stts) adds up to ``seconds``; the frames themselves are untouched."""
    data = bytearray(src.read_bytes())

    def put(off: int, value: float) -> None:
        data[off:off + 4] = struct.pack(">I", min(2 ** 32 - 1, int(value)))

    mvhd = _mp4_box(data, ["moov", "mvhd"])
    movie_scale = struct.unpack(">I", data[mvhd + 12:mvhd + 16])[0]
    put(mvhd + 16, seconds * movie_scale)
    put(_mp4_box(data, ["moov", "trak", "tkhd"]) + 20, seconds * movie_scale)
    put(_mp4_box(data, ["moov", "trak", "edts", "elst"]) + 8, seconds * movie_scale)
    mdhd = _mp4_box(data, ["moov", "trak", "mdia", "mdhd"])
    media_scale = struct.unpack(">I", data[mdhd + 12:mdhd + 16])[0]
    put(mdhd + 16, seconds * media_scale)
    stts = _mp4_box(data, ["moov", "trak", "mdia", "minf", "stbl", "stts"])
    assert struct.unpack(">I", data[stts + 4:stts + 8])[0] == 1, "one stts entry expected"
    count = struct.unpack(">I", data[stts + 8:stts + 12])[0]
    put(stts + 12, seconds * media_scale / count)
    dst.write_bytes(bytes(data))
    return dst


def test_segments_are_bounded_by_what_the_file_holds(tmp_path):
    """A 2 KB MP4 whose every header duration and sample duration claims 30 hours (FFmpeg
    believes it: 30 h by the stream and by the timestamps) holds 8 frames: with T' = 4 it costs
    at most 8 / 4 segments, not the 36,000 of a 3 s window over 30 hours."""
    folder = tmp_path / "v"
    folder.mkdir()
    honest = solid_video(tmp_path / "honest.mp4", COLORS[:2], seconds_each=1.0)  # 8 frames at 4 fps
    liar = claim_duration_mp4(honest, folder / "liar.mp4", 30 * 3600)
    assert liar.stat().st_size < 3000
    import av

    with av.open(str(liar)) as c:
        s = c.streams.video[0]
        assert s.duration * s.time_base == pytest.approx(30 * 3600, rel=1e-3)
    report, rt = index_folder(folder, tmp_path / "idx")
    assert report.added == 1 and not report.failed
    assert report.encoded_segments == sum(rt.encoded) <= 8 // FakeBundle.num_frames
    with IndexReader(tmp_path / "idx") as r:
        assert r.num_segments == report.encoded_segments


# --------------------------------------------------------------------------------------------
# a model problem is the model's, never the videos'
# --------------------------------------------------------------------------------------------
class BrokenRuntime(FakeRuntime):
    """The stand-in model, broken from its ``after``-th encoder call on, in one of four ways."""

    def __init__(self, how: str, after: int = 1):
        super().__init__()
        self.how, self.after = how, after

    def encode_videos(self, pixels):
        frames = super().encode_videos(pixels)
        if len(self.encoded) <= self.after:
            return frames
        if self.how == "nan":
            frames[0, 0, 0] = np.nan
        elif self.how == "shape":
            frames = frames[:, :2]
        elif self.how == "raises":
            raise RuntimeError("CUDA out of memory")
        return frames

    def video_side(self, frames):
        out = super().video_side(frames)
        if self.how == "video_inf" and len(self.encoded) > self.after:
            out["video_mean"][-1] = np.inf
        return out


def _onnx_runtime(tmp_path: Path):
    """A stand-in whose frame encoder is a real ONNX Runtime session, of a graph (global average
    pool) that wants 8 x 8 images: the pipeline's 16 x 16 pixels make ONNX Runtime itself fail."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["y"])], "enc",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 1, 1])])
    path = tmp_path / "enc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    class OnnxRuntime(FakeRuntime):
        def encode_videos(self, pixels):
            n, t = pixels.shape[:2]
            y = session.run(["y"], {"x": pixels.reshape(n * t, *pixels.shape[2:])})[0]
            return y.reshape(n, t, 3)

    return OnnxRuntime()


@pytest.mark.parametrize("how", ["nan", "video_inf", "shape", "raises", "onnx"])
def test_a_model_problem_stops_the_update_and_fails_no_video(tmp_path, how):
    from probret.engine.errors import ModelError

    folder = make_folder(tmp_path / "v", n=6, broken=False)
    idx = tmp_path / "idx"
    rt = _onnx_runtime(tmp_path) if how == "onnx" else BrokenRuntime(how)
    with pytest.raises(ModelError, match=r"model fake: .*(NaN|shape|failed)") as err:
        index_folder(folder, idx, runtime=rt, batch_segments=2, chunk_segments=1, workers=1)
    assert "\n" not in str(err.value)
    with IndexReader(idx) as r:
        assert not r.failed  # not one video blamed
        kept = len(r.videos)  # what was committed before the model broke stays
    assert kept == 0 if how == "onnx" else 1 <= kept < 7  # (the first encoder call worked)
    report, good = index_folder(folder, idx)  # the next run, with a working model, does the rest
    assert report.encoded_videos == 7 - kept and not report.failed and report.unchanged == kept


def test_preprocessing_a_model_cannot_have_is_a_model_error_before_any_decode(tmp_path):
    from probret.engine.errors import ModelError

    class BadBundle(FakeBundle):
        preprocessing = {"image_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.0, 0.25]}

    rt = FakeRuntime()
    rt.bundle = BadBundle()
    folder = make_folder(tmp_path / "v", n=2, broken=False)
    with pytest.raises(ModelError, match="model fake: preprocessing needs .* positive stds"):
        index_folder(folder, tmp_path / "idx", runtime=rt)
    assert rt.encoded == []
    with IndexReader(tmp_path / "idx") as r:
        assert not r.failed and not r.videos  # no video blamed for the model's preprocessing


# --------------------------------------------------------------------------------------------
# kill -9
# --------------------------------------------------------------------------------------------
DRIVER = textwrap.dedent("""
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("pipeline_helpers", {helpers!r})
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    from probret.engine import index as I
    from probret.engine.index import IndexWriter
    from probret.engine.pipeline import PipelineOptions, update_index

    folder, idx, mode, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    if mode == "kill-in-commit":
        # die after the rows of the 3rd commit are written and fsynced, before SQLite commits
        original, calls = IndexWriter.add, [0]
        def add(self, videos):
            calls[0] += 1
            if calls[0] == 3:
                I._Txn.__enter__ = lambda txn: os.kill(os.getpid(), signal.SIGKILL)
            return original(self, videos)
        IndexWriter.add = add
    with IndexWriter(idx, m.SETTINGS) as w:
        update_index(folder, m.FakeRuntime(delay=delay), w, PipelineOptions(workers=1, batch_segments=1, progress=False))
    print("finished")
""")


def _driver(tmp_path: Path, folder: Path, idx: Path, mode: str, delay: float) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(helpers=str(Path(__file__).resolve())))
    return subprocess.Popen([sys.executable, str(script), str(folder), str(idx), mode, str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed(idx: Path) -> int:
    db = idx / "index.db"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM videos WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _check_resume(folder: Path, idx: Path, reference: dict, committed_before: dict) -> None:
    """The killed index opens, holds its finished videos intact; resuming encodes exactly the
    unfinished ones and ends equal to an index built without interruption."""
    assert committed_before, "nothing was committed before the kill"
    con = sqlite3.connect(idx / "index.db")
    failed_before = con.execute("SELECT count(*) FROM videos WHERE status != 'ok'").fetchone()[0]
    con.close()
    for path, tensors in committed_before.items():
        for k, a in tensors.items():
            np.testing.assert_array_equal(a, reference[path][k])
    report, rt = index_folder(folder, idx)  # a new writer gets the lock at once: the kernel freed it
    segs_left = sum(len(reference[p]["video_mean"]) for p in reference if p not in committed_before)
    assert sum(rt.encoded) == segs_left and report.encoded_videos == len(reference) - len(committed_before)
    # finished videos and files that already failed are not decoded again
    assert report.unchanged == len(committed_before) + failed_before
    assert len(report.failed) == 3 - failed_before
    final = stored(idx)
    assert sorted(final) == sorted(reference)
    for path, tensors in reference.items():
        for k, a in tensors.items():
            np.testing.assert_array_equal(final[path][k], a)


@pytest.fixture(scope="module")
def kill_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    folder = make_folder(root / "v", n=8)
    ref = root / "ref-idx"
    index_folder(folder, ref)
    return folder, stored(ref)


def test_sigkill_while_encoding_then_resume(tmp_path, kill_world):
    folder, reference = kill_world
    idx = tmp_path / "idx"
    proc = _driver(tmp_path, folder, idx, "slow", 0.25)
    deadline = time.time() + 60
    while _committed(idx) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (out, err)
    assert "finished" not in out
    before = stored(idx)  # opens after the kill
    assert 3 <= len(before) < len(reference)
    _check_resume(folder, idx, reference, before)


def test_sigkill_between_fsync_and_commit_then_resume(tmp_path, kill_world):
    folder, reference = kill_world
    idx = tmp_path / "idx"
    proc = _driver(tmp_path, folder, idx, "kill-in-commit", 0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (out, err)
    with IndexReader(idx) as r:
        rows = sum(r.shard_rows.values())
        nbytes = 4 * 6 * 4  # frame_features row: T=4 x D=6 float32
    f = idx / "shards" / "000001.frame_features.bin"
    assert f.stat().st_size > rows * nbytes  # the uncommitted rows are on disk...
    before = stored(idx)  # ...and invisible
    assert len(before) == 2
    _check_resume(folder, idx, reference, before)
    assert f.stat().st_size == sum(len(t["video_mean"]) for t in reference.values()) * nbytes
