"""Distributed indexing on Ray (``probret index FOLDER --ray [ADDRESS]``), torch-free.

    report = update_index_ray(folder, runtime, writer, PipelineOptions(), address=None)

The same work as :func:`probret.engine.pipeline.update_index`, run as a Ray Data pipeline:

1. The driver scans the folder against the index (``IndexWriter.scan``): only new and changed
   files are sent to the cluster, removed ones are dropped from the index first.
2. ``flat_map`` on CPU tasks: each task probes one video, plans its segments and decodes and
   preprocesses them from that one open (:class:`~probret.engine.pipeline.DecodeSpec`, the same
   spec as the single-process pipeline), emitting one row per segment (pixels float32
   (T', 3, S, S)). A file that fails yields a single row carrying the reason instead.
3. ``map_batches`` on a pool of actors, each holding a :class:`~probret.engine.runtime.BundleRuntime`
   (ONNX Runtime / TensorRT sessions opened once per actor, on a GPU when the actor asks for one):
   batches of ``batch_segments`` segments through the frame encoder and the video-side graph,
   plus the ANN embedding: exactly :func:`~probret.engine.pipeline.encode_segments`, with its
   checks: a model that fails is a ``ModelError`` that stops the run, no video is failed.
4. The driver streams the encoded segments back (``iter_batches``), reassembles videos and
   commits every finished video to the one index with the pipeline's own
   :class:`~probret.engine.pipeline.PartialVideo` and
   :class:`~probret.engine.pipeline.SegmentAssembler` (the single writer of engine/index.py, with
   its crash safety): the result is an ordinary index that ``probret search`` reads, equal to the
   single-process one. A re-run (after a crash, a Ctrl-C or a lost node) skips every video whose
   commit returned, because the scan sees them as unchanged.

Workers read the videos and the bundle by the same absolute paths as the driver: on a cluster,
put both on a shared file system (NFS, a FUSE mount of an object store) and install probret on
every node (docs/scaling.md).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from probret.engine.errors import DataError, ModelError, VideoDecodeError
from probret.engine.index import FileEntry, IndexWriter, ScanResult
from probret.engine.pipeline import (DecodeSpec, IndexReport, PartialVideo, PipelineOptions, SegmentAssembler,
                                     begin_update)

__all__ = ["ray_available", "init_ray", "update_index_ray"]

log = logging.getLogger(__name__)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def init_ray(address: str | None = None, **kwargs) -> None:
    """Connect to the cluster at ``address`` (``auto``, ``ray://host:10001``, ``host:6379``), or
    with None/"" to the one named by $RAY_ADDRESS / started by ``ray start`` on this machine, else
    start a local one. A session already open in this process is reused."""
    if not ray_available():
        raise DataError("--ray needs Ray: pip install 'probret[ray]' (or: pip install 'ray[data]')")
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address or None, log_to_driver=False, **kwargs)


# --------------------------------------------------------------------------------------------
# the remote parts (plain callables: Ray pickles them by value with cloudpickle)
# --------------------------------------------------------------------------------------------
class _Decode:
    """flat_map: one file row -> one row per decoded segment (or one error row)."""

    def __init__(self, folder: str, spec: DecodeSpec):
        self.folder, self.spec = folder, spec

    def _error_row(self, item: dict, reason: str) -> dict:
        T, S = self.spec.num_frames, self.spec.image_size
        return {**self._video(item, None, 0), "seg": 0, "start": 0.0, "stop": 0.0,
                "timestamps": np.zeros(T, np.float64), "pixels": np.zeros((T, 3, S, S), np.float32), "error": reason,
                "decode_s": 0.0}

    @staticmethod
    def _video(item: dict, info, nseg: int) -> dict:
        return {"path": item["path"], "size": int(item["size"]), "mtime_ns": int(item["mtime_ns"]), "nseg": nseg,
                "duration": float(info.duration) if info else 0.0, "fps": float(info.fps) if info else 0.0,
                "width": int(info.width) if info else 0, "height": int(info.height) if info else 0}

    def __call__(self, item: dict) -> list[dict]:
        path = os.path.join(self.folder, item["path"])
        t0 = time.perf_counter()
        try:
            d = self.spec.decode(path)  # one decode task per CPU (num_cpus=1): spec.thread_type "NONE"
        except VideoDecodeError as exc:
            return [self._error_row(item, exc.reason)]
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the cluster
            return [self._error_row(item, f"{type(exc).__name__}: {exc}")]
        head = self._video(item, d.info, len(d.segments))
        per = (time.perf_counter() - t0) / len(d.segments)
        return [{**head, "seg": k, "start": float(s), "stop": float(e), "pixels": d.pixels[k], "error": "",
                 "timestamps": d.timestamps[k].astype(np.float64), "decode_s": per}
                for k, (s, e) in enumerate(d.segments)]


class _Encoder:
    """map_batches actor: holds one BundleRuntime; pixels -> the tensors the index stores."""

    def __init__(self, bundle: str, device: str = "cpu", threads: int | None = None):
        from probret.engine.runtime import BundleRuntime

        self.rt = BundleRuntime(bundle, device=device, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from probret.engine.pipeline import encode_segments

        pixels = np.asarray(batch.pop("pixels"), dtype=np.float32)
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        n = len(ok)
        out = dict(batch)
        t = time.perf_counter()
        enc = encode_segments(self.rt, pixels[ok]) if ok.any() else {}
        if not enc:  # an all-error batch: shapes from one dummy segment, rows zeroed
            enc = {k: v[:0] for k, v in encode_segments(self.rt, pixels[:1]).items()}
        for name, a in enc.items():
            full = np.zeros((n, *a.shape[1:]), np.float32)
            full[ok] = a
            out[f"t:{name}"] = full
        out["encode_s"] = np.full(n, (time.perf_counter() - t) / max(n, 1))
        return out


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------
def update_index_ray(folder: str | Path, runtime, writer: IndexWriter, options: PipelineOptions | None = None, *,
                     address: str | None = None, say: Callable[[str], None] | None = None,
                     scan: ScanResult | None = None, encoders: int | None = None, encoder_gpus: float | None = None,
                     device: str | None = None) -> IndexReport:
    """Bring the index up to date with ``folder`` on a Ray cluster (module docstring).

    ``runtime`` is only used for its bundle (path and preprocessing); actors open their own.
    ``encoder_gpus``: GPUs per encoder actor (default: 1 when the cluster has GPUs and the
    runtime's device is not ``cpu``, else 0: CPU actors). ``encoders`` = size of the actor pool
    (default: one per GPU with GPU actors, else half the cluster's CPUs, at least 1, the other
    half decoding). ``device`` of the actors' runtimes (default: the driver runtime's device)."""
    o = options or PipelineOptions()
    say = say or (lambda msg: log.info(msg))
    t0 = time.perf_counter()
    folder = Path(folder).resolve()
    scan, report = begin_update(folder, writer, o, scan)
    todo = list(scan.todo)
    stages = {"decode": 0.0, "encode": 0.0, "head": 0.0, "write": 0.0}  # decode and encode summed over workers
    if todo:
        init_ray(address)
        _run(folder, runtime, writer, o, todo, {e.path for e in scan.changed}, report, stages, say,
             encoders=encoders, encoder_gpus=encoder_gpus, device=device)
    report.compacted = writer.compact()
    report.stages = stages
    report.seconds = time.perf_counter() - t0
    return report


def _run(folder: Path, runtime, writer: IndexWriter, o: PipelineOptions, todo: list[FileEntry], changed: set[str],
         report: IndexReport, stages: dict[str, float], say, *, encoders, encoder_gpus, device) -> None:
    import ray

    spec = DecodeSpec.for_index(runtime.bundle, writer.settings, thread_type="NONE")
    dev = device or getattr(runtime, "device", "cpu")
    encoders, encoder_gpus = _actor_pool(ray.cluster_resources(), dev, encoders, encoder_gpus)
    res = ray.cluster_resources()
    say(f"ray: {len(todo)} video(s) on {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s); "
        f"{encoders} encoder actor(s) on {dev}")
    items = [{"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns} for e in todo]
    ray.data.DataContext.get_current().enable_progress_bars = bool(o.progress)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 8192)))  # ~1 video a decode task
    ds = ds.flat_map(_Decode(str(folder), spec), num_cpus=1)
    ds = ds.map_batches(_Encoder, fn_constructor_kwargs={"bundle": str(runtime.bundle.path), "device": dev},
                        batch_size=max(1, int(o.batch_segments)), batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=encoders),
                        num_cpus=0 if encoder_gpus else 1, num_gpus=encoder_gpus or None)

    def timed(stage: str, seconds: float) -> None:
        stages[stage] = stages.get(stage, 0.0) + seconds

    assembler = SegmentAssembler(writer, report, changed, timed=timed)
    partial = _collect_rows(ds, {e.path: e for e in todo}, spec.num_frames, assembler, timed)
    if partial:  # cannot happen unless a task lost rows; they are re-encoded by the next run
        say(f"warning: {len(partial)} video(s) came back incomplete and were not indexed: {sorted(partial)[:3]}")


def _actor_pool(res: dict, dev: str, encoders: int | None, encoder_gpus: float | None) -> tuple[int, float]:
    """(encoder actors, GPUs each): the defaults of :func:`update_index_ray`'s docstring."""
    if encoder_gpus is None:
        encoder_gpus = 1.0 if res.get("GPU", 0) > 0 and dev != "cpu" else 0.0
    if encoders is None:
        if encoder_gpus:
            encoders = max(1, int(res.get("GPU", 1) // encoder_gpus))
        else:
            encoders = max(1, int(res.get("CPU", 2)) // 2)
    return encoders, encoder_gpus


def _collect_rows(ds, entries: dict[str, FileEntry], num_frames: int, assembler: SegmentAssembler,
                  timed) -> dict[str, PartialVideo]:
    """Stream the encoded rows back and assemble them into committed videos (a batch's finished
    videos commit together); returns the videos left incomplete. A model failure inside an actor
    comes back as the :class:`ModelError` it was."""
    partial: dict[str, PartialVideo] = {}
    try:
        for rows in ds.iter_batches(batch_size=None, batch_format="numpy"):
            names = [k[2:] for k in rows if k.startswith("t:")]
            timed("encode", float(np.sum(rows["encode_s"])))
            timed("decode", float(np.sum(rows["decode_s"])))
            for i in range(len(rows["path"])):
                path, err = str(rows["path"][i]), str(rows["error"][i])
                if err:
                    assembler.fail(entries[path], err)
                    continue
                video = partial.get(path)
                if video is None:
                    nseg = int(rows["nseg"][i])
                    video = partial[path] = PartialVideo(
                        entries[path], float(rows["duration"][i]), float(rows["fps"][i]), int(rows["width"][i]),
                        int(rows["height"][i]), [(0.0, 0.0)] * nseg, np.zeros((nseg, num_frames), np.float64))
                k = int(rows["seg"][i])
                video.segments[k] = (float(rows["start"][i]), float(rows["stop"][i]))
                if assembler.put(video, k, {nm: rows[f"t:{nm}"][i:i + 1] for nm in names}, rows["timestamps"][i:i + 1]):
                    del partial[path]
            assembler.commit()
    except Exception as exc:
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError wraps the actor's exception
        if isinstance(cause, ModelError) or isinstance(exc, ModelError):
            raise ModelError(str(cause if isinstance(cause, ModelError) else exc)) from None
        raise
    assembler.commit()
    return partial
