"""Sharded indexes: independently written indexes merged into one, a manifest, compaction.

    probret shards merge DEST SRC [SRC ...] [--prefix SRC_NAME ...]     (cli/shards_cmd.py)
    probret shards manifest INDEX           # which shard holds which video
    probret shards compact INDEX            # rewrite live rows, drop dead space

"Shards" here are whole indexes written independently (one per machine or folder); the files
inside one index are its shard files (engine/index/layout.py). Built on engine/index's writer
and reader, with nothing of its own on disk besides ``INDEX/manifest.json``:

* **Shards written independently**: any number of ordinary indexes (one per machine, per
  folder, per Ray job: docs/scaling.md), each with its own single writer and crash safety.
* **Merge** (:func:`merge_indexes`) copies the committed rows of every source into DEST through
  ``IndexWriter.add`` (no re-encoding: bytes are copied as stored), a batch of videos per
  transaction, so a merge killed at any moment resumes: a video already in DEST with the same
  size and mtime is skipped. Sources must have been built with the same settings (model, frames,
  window, ...); paths can be prefixed per source (``--prefix``) to keep videos of different
  folders apart. Files that failed in a source are carried over as failures.
* **Manifest** (:func:`write_manifest`): ``INDEX/manifest.json`` = ``{"shards": {id: {"rows",
  "live_rows", "videos": [paths]}}, "sources": [...]}``, regenerated after every merge; the
  authoritative record stays in SQLite (``segments.shard``), the json is for people and tools.
* **Compaction** (:func:`compact`) is ``IndexWriter.compact(force=True)``: crash-safe, see
  docs/search.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from probret.engine.errors import IndexStoreError
from probret.engine.index import EncodedVideo, FileEntry, IndexReader, IndexSettings, IndexWriter
from probret.engine.index.directory import write_atomic

__all__ = ["merge_indexes", "shard_manifest", "write_manifest", "compact", "settings_of"]

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def settings_of(reader: IndexReader) -> IndexSettings:
    return IndexSettings.from_identity(reader.settings)


def _key(settings: IndexSettings) -> dict:
    d = settings.identity()
    d.pop("probret_version", None)
    return d


def merge_indexes(dest: str | Path, sources: Sequence[str | Path], *, prefixes: Sequence[str] | None = None,
                  batch_videos: int = 64, say: Callable[[str], None] | None = None) -> dict:
    """Copy every committed video of ``sources`` into the index ``dest`` (module docstring).
    Returns counts: ``{"copied", "skipped", "failed", "videos"}``."""
    say = say or (lambda m: log.info(m))
    sources = [Path(s) for s in sources]
    if prefixes is not None and len(prefixes) != len(sources):
        raise ValueError("give one prefix per source")
    readers = [IndexReader(s) for s in sources]
    try:
        settings = settings_of(readers[0])
        for s, r in zip(sources[1:], readers[1:]):
            if _key(settings_of(r)) != _key(settings):
                raise IndexStoreError(f"{s} was built with other settings than {sources[0]} (model, frames, window, ...); "
                                  "shards can only be merged when built the same way")
        have = {}
        if (Path(dest) / "index.db").is_file():
            with IndexReader(dest) as d:
                if _key(settings_of(d)) != _key(settings):
                    raise IndexStoreError(f"{dest} holds an index built with other settings; merge into a new directory")
                have = {v.path: (v.size, v.mtime_ns) for v in d.videos}
        counts = {"copied": 0, "skipped": 0, "failed": 0}
        with IndexWriter(dest, settings, model=readers[0].meta.get("model"), say=say) as w:
            for k, (src, r) in enumerate(zip(sources, readers)):
                pre = (prefixes[k].strip("/") + "/") if prefixes and prefixes[k] else ""
                names = sorted(r.layout)
                batch: list[EncodedVideo] = []
                for i, v in enumerate(r.videos):
                    path = pre + v.path
                    if have.get(path) == (v.size, v.mtime_ns):
                        counts["skipped"] += 1
                        continue
                    segs = np.arange(r.video_offsets[i], r.video_offsets[i + 1])
                    batch.append(EncodedVideo(
                        path=path, size=v.size, mtime_ns=v.mtime_ns, duration=v.duration, fps=v.fps, width=v.width,
                        height=v.height, segments=[(float(r.seg_start[s]), float(r.seg_end[s])) for s in segs],
                        timestamps=np.stack([r.timestamps(int(s)) for s in segs]), tensors=r.gather(names, segs)))
                    if len(batch) >= batch_videos:
                        w.add(batch)
                        counts["copied"] += len(batch)
                        batch = []
                if batch:
                    w.add(batch)
                    counts["copied"] += len(batch)
                for path, reason in r.failed:
                    w.add_failed(FileEntry(pre + path, 0, 0), reason)
                    counts["failed"] += 1
                say(f"merged {src}: {len(r.videos)} video(s)")
    finally:
        for r in readers:
            r.close()
    manifest = write_manifest(dest, sources=[str(s) for s in sources])
    counts["videos"] = sum(len(s["videos"]) for s in manifest["shards"].values())
    return counts


def shard_manifest(index: str | Path) -> dict:
    """``{"shards": {id: {"rows", "live_rows", "videos"}}}`` of the index at ``index``."""
    with IndexReader(index) as r:
        shards: dict[str, dict] = {str(s): {"rows": int(n), "live_rows": 0, "videos": []}
                                   for s, n in sorted(r.shard_rows.items())}
        for i, v in enumerate(r.videos):
            ids = sorted({int(x) for x in r.seg_shard[r.video_offsets[i]:r.video_offsets[i + 1]]})
            for s in ids:
                e = shards.setdefault(str(s), {"rows": 0, "live_rows": 0, "videos": []})
                e["videos"].append(v.path)
        for s, n in zip(*np.unique(r.seg_shard, return_counts=True)):
            shards[str(int(s))]["live_rows"] = int(n)
        return {"index": str(index), "generation": r.generation, "shards": shards}


def write_manifest(index: str | Path, *, sources: Sequence[str] | None = None) -> dict:
    m = shard_manifest(index)
    path = Path(index) / MANIFEST
    if sources is None and path.is_file():
        try:
            sources = json.loads(path.read_text()).get("sources")
        except ValueError:
            sources = None
    m["sources"] = list(sources or [])
    write_atomic(path, (json.dumps(m, indent=1) + "\n").encode())
    return m


def compact(index: str | Path, *, say: Callable[[str], None] | None = None) -> bool:
    with IndexReader(index) as r:
        settings, model = settings_of(r), r.meta.get("model")
    with IndexWriter(index, settings, model=model, say=say) as w:
        done = w.compact(force=True)
    write_manifest(index)
    return done
