"""What every CPU benchmark under bench/ shares: progress on stderr, the machine record printed
with each result, the FP32 matmul peak, the export-code stamp of cached bundles, and the JSON
results file. The scripts import it as ``from common import ...`` (bench/ is on sys.path when a
script runs from it)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    """CPU model, cores this process may use, RAM, versions, date and the load average at the start
    (benchmarks add ``loadavg_end``): the context every reported ratio needs."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "torch", "av"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "mem_gib": mem, "platform": platform.platform(),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "loadavg_start": os.getloadavg(),
            "versions": versions}


def best_time(fn, reps: int, *, clock=time.perf_counter, warmup: bool = False) -> float:
    """The smallest of ``reps`` timings of ``fn()`` on ``clock`` (after one untimed call when
    ``warmup``): the least-disturbed run on a shared machine."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(reps):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def sgemm_peak(n: int = 2048, reps: int = 3) -> float:
    """FP32 matmul GFLOP/s of numpy's BLAS on all cores (best of ``reps``)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def export_source_sha() -> str:
    """sha256 of the export code (forms, graphs, exporter): a cached bench bundle exported by other
    code is exported again, so a changed graph is what gets measured."""
    h = hashlib.sha256()
    for name in ("forms.py", "graphs.py", "exporter.py"):
        h.update((REPO / "export" / name).read_bytes())
    return h.hexdigest()


def write_results(res: dict, out: str | Path | None) -> None:
    """``res`` as JSON at ``out`` (numpy scalars as numbers, anything else as text)."""
    if not out:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    say(f"results: {out}")


def print_targets(targets: list[dict]) -> None:
    print("\ntargets (issue 6)")
    for t in targets:
        print(f"  {t['target']}: measured {t['measured']} -> {t['status']}")


def finish(res: dict, t0: float, out: str | Path | None, print_tables, targets=None) -> None:
    """The end of every benchmark run: load average at the end, duration, the targets
    (``targets(res) -> [{target, measured, status}]``), the tables on stdout, the JSON file."""
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["seconds"] = time.perf_counter() - t0
    if targets is not None:
        res["targets"] = targets(res)
    print_tables(res)
    print(f"\nbenchmark took {res['seconds']:.0f} s")
    write_results(res, out)


def cpu_flags() -> list[str]:
    """The SIMD flags of this CPU that matter to the numbers (machine() has the model)."""
    try:
        line = next(ln for ln in open("/proc/cpuinfo") if ln.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "sse4", "fma", "asimd", "neon")))
