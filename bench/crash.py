"""Crash harness of the index: kill a real writer at every durability point, reopen, check.

    OMP_NUM_THREADS=1 python bench/crash.py --out bench/results/crash/crash.json     # 340 crash points (~2 min)
    python bench/crash.py --points 12 --out /tmp/crash-quick.json                    # a sample (what CI runs)

Modelled on SQLite's crash tests and LazyFS-style dropped writes (docs/reliability.md):

1. A clean run of the scenario below in a subprocess with ``PROBRET_CRASH_LOG`` enumerates the
   durability points of an index update (engine/index/durability.py: every write of rows or
   checksums, every fsync, SQLite commit, rename, truncate, unlink), N of them.
2. For each point n (all N, or a sample), a fresh subprocess runs the scenario with
   ``PROBRET_CRASH_AT=n`` and dies there by ``os._exit``: no finally, no atexit, no flush.
3. In the "drop" mode the harness then emulates a power loss as well: every shard or temporary
   file is cut back to its size at its last fsync (what was written after it was never durable).
4. Reopen and check the invariants:
   * the index opens (a reader; a writer when nothing had finished yet) and every row passes
     its checksum;
   * its state is exactly the state after the last finished step, or after the one in flight
     (each step is atomic): 0 finished videos lost, 0 duplicates, 0 half-written videos, every
     stored row equal to what was written for that version of that video;
   * a resume (a real ``IndexWriter.scan`` of the real folder, then add / remove / add_failed)
     re-encodes exactly the videos the recovered index lacks, nothing it holds;
   * after the resume the index equals the clean run's final state and holds no file that is
     not part of it (no leaked shard files).
5. Then random points inside the *resume* itself (a crash while recovering from a crash), checked
   the same way, until ``--min-points`` is reached.

The features are deterministic rows per (path, version) made with numpy: the real IndexWriter,
real files, real fsyncs and real SQLite are what is tested, and values are compared bit for bit.
No model runs in the inner loop.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: ~6 rows per shard: the scenario rotates shards twice and compacts once.
SHARD_MAX_BYTES = 4 * 8 * 4 * 6
SETTINGS_KW = dict(bundle_sha256="c" * 64, num_frames=4, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))

#: The folder's final files: name -> (segments, seed, size, mtime_ns). f1 fails to "decode".
FINAL = {"v0.mp4": (2, 0, 10, 10**9), "v1.mp4": (2, 11, 21, 2 * 10**9), "v3.mp4": (2, 3, 13, 4 * 10**9),
         "v4.mp4": (1, 4, 14, 5 * 10**9), "v5.mp4": (4, 5, 15, 6 * 10**9), "v6.mp4": (1, 6, 16, 7 * 10**9),
         "sub/v7.mp4": (2, 7, 17, 8 * 10**9)}
FAILED = {"f1.mp4": (1, 30, "no video stream")}
#: An older version of v1 (replaced in step 5) and v2 (removed in step 6).
OLD = {"v1.mp4": (1, 1, 100, 1), "v2.mp4": (3, 2, 12, 3 * 10**9)}
#: The scenario: one durable operation per step.
STEPS = [("add", [("v0.mp4", FINAL), ("v1.mp4", OLD)]), ("add", [("v2.mp4", OLD)]), ("fail", "f1.mp4"),
         ("add", [("v3.mp4", FINAL), ("v4.mp4", FINAL)]), ("add", [("v1.mp4", FINAL)]), ("remove", ["v2.mp4"]),
         ("compact", None), ("add", [("v5.mp4", FINAL)]), ("add", [("v6.mp4", FINAL), ("sub/v7.mp4", FINAL)])]


def encoded(path: str, spec):
    from probret.engine.index import EncodedVideo
    n, seed, size, mtime = spec
    rng = np.random.default_rng(seed)
    return EncodedVideo(path=path, size=size, mtime_ns=mtime, duration=2.0 * n, fps=8.0, width=64, height=48,
                        segments=[(2.0 * k, 2.0 * k + 2.0) for k in range(n)],
                        timestamps=np.stack([2.0 * k + np.array([0.25, 0.75, 1.25, 1.75]) for k in range(n)]),
                        tensors={"frame_features": rng.standard_normal((n, 4, 8)).astype(np.float32),
                                 "video_x": rng.standard_normal((n, 3, 3)).astype(np.float32),
                                 "ann": rng.standard_normal((n, 8)).astype(np.float32)})


def settings():
    from probret.engine.index import IndexSettings
    return IndexSettings(**SETTINGS_KW)


def make_folder(folder: Path) -> None:
    for name, (_, _, size, mtime) in {**FINAL, **{k: (0, 0, 9, 9 * 10**9) for k in FAILED}}.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        os.utime(p, ns=(mtime, mtime))


# --------------------------------------------------------------------------------------------
# the scenario (child process) and the states it passes through
# --------------------------------------------------------------------------------------------
def run_scenario(idx: Path, done_log: Path) -> None:
    """Every step of STEPS on the index; each finished step is appended to ``done_log``."""
    from probret.engine.index import FileEntry, IndexWriter
    fd = os.open(done_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with IndexWriter(idx, settings(), shard_max_bytes=SHARD_MAX_BYTES) as w:
        for k, (op, arg) in enumerate(STEPS, 1):
            if op == "add":
                w.add([encoded(p, table[p]) for p, table in arg])
            elif op == "fail":
                w.add_failed(FileEntry(arg, 9, 9 * 10**9), FAILED[arg][2])
            elif op == "remove":
                w.remove(arg)
            else:
                w.compact(force=True)
            os.write(fd, f"{k}\n".encode())


def states() -> list[dict]:
    """The logical state of the index after 0, 1, ... len(STEPS) steps: path -> version."""
    out, cur = [{}], {}
    for op, arg in STEPS:
        cur = dict(cur)
        if op == "add":
            for p, table in arg:
                cur[p] = ("ok",) + tuple(table[p])
        elif op == "fail":
            cur[arg] = ("failed", 9, 9 * 10**9, FAILED[arg][2])
        elif op == "remove":
            for p in arg:
                cur.pop(p, None)
        out.append(cur)
    return out


def observe(idx: Path) -> dict:
    """The state the index holds, every stored row checked against its version's features (and
    its checksum): path -> version, or raises AssertionError."""
    from probret.engine.index import IndexReader
    with IndexReader(idx, verify="always") as r:
        paths = [v.path for v in r.videos]
        assert len(paths) == len(set(paths)), "duplicate videos"
        names = sorted(r.layout)
        seen = 0
        for segs, _ in r.blocks(names, block=5):  # every row through its checksum
            seen += len(segs)
        assert seen == r.num_segments
        state = {}
        for i, v in enumerate(r.videos):
            segs = np.arange(r.video_offsets[i], r.video_offsets[i + 1])
            version = next((("ok",) + tuple(t[v.path]) for t in (FINAL, OLD)
                            if v.path in t and tuple(t[v.path])[2:] == (v.size, v.mtime_ns)), None)
            assert version is not None and len(segs) == version[1], f"{v.path}: unknown version"
            want = encoded(v.path, version[1:])
            got = r.gather(names, segs)
            for n in names:
                assert np.array_equal(got[n], want.tensors[n]), f"{v.path}: rows of {n} differ"
            state[v.path] = version
        for p, reason in r.failed:
            state[p] = ("failed", 9, 9 * 10**9, reason)
    return state


def resume(folder: Path, idx: Path) -> int:
    """The next run: scan the real folder, encode what the index lacks. Returns videos encoded."""
    from probret.engine.index import IndexWriter
    with IndexWriter(idx, settings(), shard_max_bytes=SHARD_MAX_BYTES) as w:
        scan = w.scan(folder)
        w.remove(scan.removed)
        todo = [e for e in scan.todo if e.path in FINAL]
        for e in scan.todo:
            if e.path in FAILED:
                w.add_failed(e, FAILED[e.path][2])
        if todo:
            w.add([encoded(e.path, FINAL[e.path]) for e in todo])
    return len(todo)


# --------------------------------------------------------------------------------------------
# the harness
# --------------------------------------------------------------------------------------------
CHILD = """
import sys
sys.path.insert(0, {bench!r})
import crash
crash.{fn}(*map(crash.Path, sys.argv[1:]))
"""


def child(fn: str, args: list[Path], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD.format(bench=str(Path(__file__).parent), fn=fn),
                           *map(str, args)], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def count_points(work: Path, fn: str = "run_scenario") -> list[str]:
    idx, log, done = work / "count-idx", work / "count.log", work / "count.done"
    res = child(fn, [idx, done], {"PROBRET_CRASH_LOG": str(log)})
    assert res.returncode == 0, res.stderr
    lines = log.read_text().splitlines()
    shutil.rmtree(idx)
    return lines


def drop_unsynced(log: Path) -> int:
    """Cut every file written after its last fsync back to its size then (0 when never synced)."""
    synced, dirty = {}, set()
    for line in log.read_text().splitlines() if log.exists() else []:
        _, label, path, size = line.split(" ", 3)
        if label == "fsync":
            synced[path] = int(size)
            dirty.discard(path)
        elif label == "write":
            dirty.add(path)
        elif label in ("rename", "unlink"):
            dirty.discard(path)
    cut = 0
    for path in dirty:
        try:
            if os.path.getsize(path) > synced.get(path, 0):
                os.truncate(path, synced.get(path, 0))
                cut += 1
        except FileNotFoundError:
            pass
    return cut


def check_after_crash(folder: Path, idx: Path, done: Path, all_states: list[dict], *, resumed_crash: bool) -> dict:
    from probret.engine.errors import IndexStoreError
    k = len(done.read_text().split()) if done.exists() else 0
    try:
        state = observe(idx)
    except IndexStoreError as exc:
        if k and not resumed_crash:
            raise AssertionError(f"unopenable after {k} finished step(s): {exc}") from None
        state = None  # nothing finished: "no index yet" is the truth; the writer must still open it
    if state is not None and not resumed_crash:
        allowed = [all_states[k]] + ([all_states[k + 1]] if k + 1 < len(all_states) else [])
        assert state in allowed, f"after {k} step(s): {sorted(state)} is neither state {k} nor {k + 1}"
    elif state is not None:  # a crash inside a resume: every video must be one of a known version
        assert set(state) <= set(FINAL) | set(FAILED) | set(OLD)
    missing = {p for p in FINAL if (state or {}).get(p) != ("ok",) + tuple(FINAL[p])}
    encoded_now = resume(folder, idx)
    assert encoded_now == len(missing), f"re-encoded {encoded_now}, the index lacked {len(missing)}"
    final = observe(idx)
    assert final == all_states[-1], f"final state differs: {sorted(final)}"
    check_no_leaks(idx)
    return {"finished_steps": k, "reencoded": encoded_now}


def check_no_leaks(idx: Path) -> None:
    from probret.engine.index import IndexReader
    with IndexReader(idx) as r:
        live = {f"{s:06d}.{n}.{ext}" for s in r.shard_rows for n in r.layout for ext in ("bin", "crc")}
    on_disk = set(os.listdir(idx / "shards"))
    assert on_disk == live, f"files outside the index's state: {sorted(on_disk - live)}"


def run_harness(work: Path, *, points: int | None = None, min_points: int = 340, seed: int = 0,
                say=print) -> dict:
    """The whole harness (module docstring); ``points`` samples that many of the scenario's points."""
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "videos"
    make_folder(folder)
    labels = count_points(work)
    n = len(labels)
    rng = random.Random(seed)
    plan = [(p, mode) for p in range(1, n + 1) for mode in ("kill", "drop")]
    if points is not None:
        plan = rng.sample(plan, min(points, len(plan)))
    all_states = states()
    results, t0 = [], time.time()
    for i, (p, mode) in enumerate(plan):
        results.append(one_point(work, folder, p, mode, all_states, labels))
        if i % 25 == 0:
            say(f"crash point {i + 1}/{len(plan)}: {labels[p - 1]} ({mode})")
    extra = max(0, min_points - len(results)) if points is None else 0
    for _ in range(extra):  # crash inside the resume that follows a crash
        p = rng.randrange(1, n + 1)
        results.append(one_point(work, folder, p, "kill", all_states, labels, crash_resume=True, rng=rng))
    return {"durability_points": n, "labels": sorted({ln.split()[1] for ln in labels}), "crash_points": len(results),
            "modes": {m: sum(r["mode"] == m for r in results) for m in ("kill", "drop", "resume")},
            "resumes_that_crashed": sum(bool(r.get("resume_crashed")) for r in results),
            "reencoded_total": sum(r.get("reencoded", 0) for r in results),
            "failures": [r for r in results if r.get("error")], "harness_seconds": round(time.time() - t0, 1)}


def one_point(work: Path, folder: Path, p: int, mode: str, all_states, labels, *, crash_resume: bool = False,
              rng=None) -> dict:
    run = Path(tempfile.mkdtemp(dir=work, prefix=f"p{p}-"))
    idx, log, done = run / "idx", run / "crash.log", run / "done"
    out = {"point": p, "label": labels[p - 1], "mode": "resume" if crash_resume else mode}
    try:
        res = child("run_scenario", [idx, done], {"PROBRET_CRASH_AT": str(p), "PROBRET_CRASH_LOG": str(log)})
        from probret.engine.index.durability import CRASH_EXIT
        assert res.returncode == CRASH_EXIT, f"exit {res.returncode}: {res.stderr[-500:]}"
        if mode == "drop":
            out["cut_files"] = drop_unsynced(log)
        if crash_resume:  # a second crash, inside the recovery run
            q = rng.randrange(1, 40)
            res = child("resume_cli", [folder, idx], {"PROBRET_CRASH_AT": str(q)})
            out["resume_point"], out["resume_crashed"] = q, res.returncode == CRASH_EXIT
            assert res.returncode in (0, CRASH_EXIT), f"resume exit {res.returncode}: {res.stderr[-500:]}"
        out.update(check_after_crash(folder, idx, done, all_states, resumed_crash=crash_resume))
    except Exception as exc:  # noqa: BLE001 - every failure is a result, the run goes on
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(run, ignore_errors=True)
    return out


def resume_cli(folder: Path, idx: Path) -> None:
    resume(folder, idx)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=None, help="sample this many (point, mode) pairs (default: all)")
    ap.add_argument("--min-points", type=int, default=340, help="add crashes inside resumes up to this many")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results JSON")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from common import cpu_flags, finish, machine, say
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="probret-crash-") as tmp:
        res = run_harness(Path(tmp), points=a.points, min_points=a.min_points, seed=a.seed, say=say)
    res["machine"] = machine()
    res["machine"]["cpu_flags"] = cpu_flags()

    def tables(r):
        print(f"{r['crash_points']} crash points over {r['durability_points']} durability points "
              f"({r['modes']}; {r['resumes_that_crashed']} of the resumes crashed as asked); "
              f"videos re-encoded by the resumes: {r['reencoded_total']}; failures: {len(r['failures'])}; "
              f"{r['harness_seconds']} s")
        for f in r["failures"][:10]:
            print("  FAIL", f)
    finish(res, t0, a.out, tables)
    sys.exit(1 if res["failures"] else 0)


if __name__ == "__main__":
    main()
