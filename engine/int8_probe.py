"""The load-time check of int8 encoders on the CPU that runs them (torch-free).

int8 arithmetic is the one part of a bundle whose numbers depend on the CPU: ONNX Runtime picks
its integer kernels at run time (AVX2's VPMADDUBSW, AVX-512 VNNI, AMX, ARM dot products). The
export's scheme is saturation-free on all of them by construction (docs/export.md, "int8"), but a
bundle travels, and the next CPU or ONNX Runtime may differ in ways no construction foresaw. So
an int8 bundle carries a small probe (``int8_probe.npz``: inputs and the fp32 encoders' outputs
for them, written at export) and its fp32 encoders. The first time an int8 encoder is opened on a
machine, :func:`int8_verdict` runs the probe through it and compares:

    error = max |int8 - fp32| / max(1, max |fp32|)        per output, as the export's gate

With every error within the manifest's ``quantization.probe.tolerance`` (:data:`TOLERANCE`, 0.1,
the export's int8 feature gate) the int8 graph is used; otherwise the runtime opens the fp32 graph
instead and logs one warning. The verdict is cached as a small JSON per (bundle sha256, CPU
model and flags, ONNX Runtime version, provider) under ``CACHE/int8-probe/`` (engine/cache.py),
so later queries pay nothing; a verdict record of another format version is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np

from probret.engine.errors import ModelError
from probret.engine.fsutil import atomic_write_json, read_versioned_json
from probret.engine.cache import cache_dir

__all__ = ["TOLERANCE", "VERDICT_FORMAT", "VERDICT_VERSION", "cpu_signature", "probe_errors", "int8_verdict",
           "verdict_path"]

log = logging.getLogger(__name__)

#: The int8 feature tolerance: export/parity.py's INT8_TOLERANCES and the probe both use it.
TOLERANCE = 0.1
VERDICT_FORMAT = "probret-int8-probe-verdict"
VERDICT_VERSION = 1
_warned: set[tuple[str, str]] = set()


def cpu_signature() -> dict[str, str]:
    """What decides which integer kernels ONNX Runtime runs: architecture, CPU model, and a hash
    of the CPU's feature flags (/proc/cpuinfo on Linux; the processor string elsewhere)."""
    model, flags = platform.processor() or "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k == "model name" and not model.strip():
                model = v.strip()
            elif k in ("flags", "Features") and not flags:
                flags = " ".join(sorted(v.split()))
    except OSError:
        pass
    return {"machine": platform.machine(), "model": model,
            "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()}


def probe_errors(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], probe: Path, graph: str,
                 input_names: list[str], output_names: list[str]) -> dict[str, float]:
    """{output: scaled error} of ``run`` (a graph's session) on the probe's inputs for ``graph``
    against the probe's fp32 outputs; inf for a non-finite or misshapen output."""
    try:
        with np.load(probe, allow_pickle=False) as arrays:
            feeds = {n: arrays[f"{graph}.{n}"] for n in input_names}
            refs = {n: arrays[f"{graph}.{n}"] for n in output_names}
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{probe}: the int8 probe of {graph} is unreadable ({exc}); re-export the bundle") from None
    got = run(feeds)
    errors = {}
    for name, ref in refs.items():
        g, r = np.asarray(got.get(name), dtype=np.float64), ref.astype(np.float64)
        if g.shape != r.shape or not np.all(np.isfinite(g)):
            errors[name] = float("inf")
            continue
        scale = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
        errors[name] = float(np.max(np.abs(g - r))) / scale if r.size else 0.0
    return errors


def verdict_path(bundle_sha256: str, provider: str) -> Path:
    import onnxruntime

    key = json.dumps({"cpu": cpu_signature(), "onnxruntime": onnxruntime.__version__, "provider": provider},
                     sort_keys=True)
    return cache_dir() / "int8-probe" / f"{bundle_sha256[:32]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def int8_verdict(bundle, graph: str, session, *, tolerance: float | None = None) -> bool:
    """True when the int8 ``graph`` of ``bundle``, opened as ``session`` (an OrtGraph), passes the
    bundle's probe on this machine (module docstring); cached per bundle, CPU, ORT and provider."""
    probe_file, stored_tol = bundle.int8_probe
    tol = stored_tol if tolerance is None else tolerance
    sha = bundle.sha256
    path = verdict_path(sha, session.provider)
    record = read_versioned_json(path, fmt=VERDICT_FORMAT, version=VERDICT_VERSION) or {}
    cached = record.get("graphs", {}).get(graph) if record.get("bundle_sha256") == sha else None
    if isinstance(cached, dict) and isinstance(cached.get("ok"), bool) and cached.get("tolerance") == tol:
        ok, errors = cached["ok"], cached.get("errors", {})
        log.debug("int8 probe verdict of %s (%s) from %s: %s", graph, bundle.path, path, ok)
    else:
        spec = bundle.graphs[graph]
        errors = probe_errors(session.run, probe_file, graph, spec.input_names, spec.output_names)
        ok = all(e <= tol for e in errors.values())
        _save_verdict(path, record, sha, graph, {"ok": ok, "tolerance": tol, "errors": _json_floats(errors)})
    if not ok and (sha, graph) not in _warned:
        _warned.add((sha, graph))
        worst = max(errors, key=lambda k: float(errors[k]))
        log.warning("bundle %s: the int8 %s is not accurate on this CPU (probe error %.3g in %s > tolerance %g); "
                    "running its fp32 graph instead (slower, same results as fp32)", bundle.path, graph,
                    float(errors[worst]), worst, tol)
    return ok


def _json_floats(errors: dict[str, float]) -> dict[str, Any]:
    return {k: (v if np.isfinite(v) else "inf") for k, v in errors.items()}


def _save_verdict(path: Path, record: dict, sha: str, graph: str, verdict: dict) -> None:
    if record.get("bundle_sha256") != sha:
        record = {}
    graphs = {**record.get("graphs", {}), graph: verdict}
    data = {"format": VERDICT_FORMAT, "format_version": VERDICT_VERSION, "bundle_sha256": sha,
            "cpu": cpu_signature(), "graphs": graphs}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data)
    except OSError as exc:  # a read-only cache costs a probe run per process, nothing else
        log.debug("cannot cache the int8 probe verdict in %s (%s)", path, exc)
