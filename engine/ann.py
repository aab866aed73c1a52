"""The ANN first stage at scale: a faiss index over the query-independent ``ann`` embedding.

    stage = AnnStage.open(reader)                    # load INDEX/ann/, add what is new, or build
    scores, segments = stage.search(text_means, 1000)   # candidate segments (reader positions)

* **Which index** (:func:`choose_factory`, by the number of vectors n and the dimension d; a
  faiss factory string given by the user overrides it, e.g. ``"IVF4096,PQ32"``):

  | n | factory | memory per vector | why |
  | --- | --- | --- | --- |
  | <= 50 000 | ``Flat`` | 4·d B | exact; a scan of 50k x 512 floats takes a few ms |
  | <= 250 000 (and raw vectors <= ``memory_budget``) | ``HNSW32`` | 4·d + ~300 B | no training, cheap inserts |
  | beyond | ``IVF{nlist},PQ{m}`` | m B + 8 B id | nlist ~ 4·sqrt(n) (power of 2), m = d/4 capped at 64: 10M x 512-d in ~0.7 GB |

  Measured (docs/benchmarks_ann.md, 1M clustered vectors, d=64): with the 1000 candidates that
  the head re-ranks, IVF-PQ finds 99.9 % of the exact top 10 with a 32 MB index, HNSW32 93-97 %
  with 0.5 GB and 3.5x the build time, hence IVF-PQ from a quarter million vectors on.

  Every index is wrapped in ``IndexIDMap2`` whose ids are stable segment keys
  (``shard << 32 | row``: they survive additions and removals of other videos and change only
  when compaction moves rows), all in inner-product metric (the vectors are unit-norm).
* **Persisted** beside the index shards, in ``INDEX/ann/``: ``index.faiss`` and ``ann.json``
  (factory, d, count, the ``build_id`` and generation of the index it matches), each written to
  a temporary file and renamed, the json last: a crash leaves the previous pair or a json that
  does not match (then a rebuild). ``--rebuild`` and a model change give the index a new
  ``build_id`` (and delete these files), so a stale cache is never used: segment keys restart
  after a rebuild and would otherwise name other vectors. Never read or written through a
  symlink. The folder is a cache: deleting it costs a rebuild.
* **Incremental**: on open, the stored keys are compared with the reader's; new segments are
  added (IVF/PQ reuse their trained quantizers, HNSW inserts into its graph), removed ones are
  deleted with ``remove_ids`` (Flat, IVF) or masked at search time (HNSW cannot delete) until
  more than ``rebuild_dead_fraction`` of the stored vectors are dead or the size moves the
  automatic choice to another kind, which rebuilds.
* HNSW's efSearch is raised to the number of candidates asked for: faiss's HNSW recall is set
  by efSearch alone (a search for 1000 results with efSearch 128 finds no more of the true top
  10 than a search for 10; bench/ann.py).
* The candidates are re-ranked by the full probabilistic head (engine/search.py); what matters
  is the recall of the exact top-k inside the candidate set (docs/benchmarks_ann.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from probret.engine.errors import IndexStoreError
from probret.engine.index.directory import open_nofollow, real_dir, write_atomic
from probret.engine.index.schema import ANN_DIR

__all__ = ["choose_factory", "AnnStage", "build_index", "segment_keys", "ANN_DIR", "FLAT_MAX", "HNSW_MAX",
           "set_search_params"]

log = logging.getLogger(__name__)

ANN_FORMAT = 2  # 2: tied to the index build (build_id)
FLAT_MAX = 50_000
HNSW_MAX = 250_000
DEFAULT_MEMORY_BUDGET = 8 << 30
DEFAULT_NPROBE = 64
DEFAULT_EF_SEARCH = 128


def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise IndexStoreError("the ANN first stage needs faiss: pip install 'probret[ann]' (faiss-cpu; or faiss-gpu)") from None
    return faiss


def choose_factory(n: int, d: int, *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> str:
    """The faiss factory string for n vectors of dimension d (module docstring's table)."""
    if n <= FLAT_MAX:
        return "Flat"
    if n <= HNSW_MAX and n * d * 4 <= memory_budget:
        return "HNSW32"
    nlist = 1 << max(8, min(18, round(math.log2(4 * math.sqrt(n)))))
    m = min(64, max(1, d // 4))
    while d % m:
        m -= 1
    return f"IVF{nlist},PQ{m}"


def set_search_params(index, *, nprobe: int = DEFAULT_NPROBE, ef_search: int = DEFAULT_EF_SEARCH) -> None:
    """nprobe of an IVF index / efSearch of an HNSW one (inside an IDMap or not)."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    hnsw = getattr(faiss.downcast_index(inner), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = ef_search


def build_index(factory: str, vectors: np.ndarray | None, d: int, *, train_size: int = 100_000, seed: int = 0,
                say: Callable[[str], None] | None = None):
    """An empty ``IndexIDMap2(factory)`` trained on (a sample of) ``vectors`` when it needs training."""
    faiss = _faiss()
    inner = _factory(d, factory)
    if not inner.is_trained:
        if vectors is None or len(vectors) == 0:
            raise IndexStoreError(f"faiss index {factory!r} needs training vectors")
        n = len(vectors)
        take = np.sort(np.random.default_rng(seed).choice(n, size=min(n, train_size), replace=False))
        if say:
            say(f"ann: training {factory} on {len(take)} vectors")
        inner.train(np.ascontiguousarray(vectors[take], dtype=np.float32))
    return faiss.IndexIDMap2(inner)


def _factory(d: int, factory: str):
    faiss = _faiss()
    try:
        return faiss.index_factory(int(d), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexStoreError(f"bad faiss factory string {factory!r}: {str(exc).strip().split(': ')[-1]}") from None


def segment_keys(shard: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Stable int64 keys of stored rows: shard << 32 | row."""
    return (np.asarray(shard, np.int64) << 32) | np.asarray(row, np.int64)


@dataclass
class AnnStage:
    """A faiss index over a reader's ``ann`` rows, ids = segment keys (module docstring)."""

    index: object
    factory: str
    keys: np.ndarray  # sorted keys of the reader's segments
    positions: np.ndarray  # positions (reader order) of those keys
    dead: np.ndarray  # sorted keys stored in the index but no longer live (masked)

    @classmethod
    def open(cls, reader, *, factory: str | None = None, directory: str | Path | None = None,
             memory_budget: int = DEFAULT_MEMORY_BUDGET, rebuild_dead_fraction: float = 0.2,
             nprobe: int = DEFAULT_NPROBE, ef_search: int = DEFAULT_EF_SEARCH, persist: bool = True,
             say: Callable[[str], None] | None = None) -> "AnnStage":
        faiss = _faiss()
        say = say or (lambda m: log.info(m))
        if "ann" not in reader.layout:
            raise IndexStoreError(f"{reader.root}: the index has no ANN embedding; run with --rebuild")
        d = int(reader.layout["ann"]["shape"][0])
        n = reader.num_segments
        live = segment_keys(reader.seg_shard, reader.seg_row)
        order = np.argsort(live, kind="stable")
        keys, positions = live[order], order.astype(np.int64)
        want = factory or choose_factory(n, d, memory_budget=memory_budget)
        folder = Path(directory) if directory is not None else Path(reader.root) / ANN_DIR
        index, stored = _load(folder, want, d, getattr(reader, "build_id", ""))
        changed = True
        if index is not None:
            new = np.setdiff1d(keys, stored, assume_unique=True)
            gone = np.setdiff1d(stored, keys, assume_unique=True)
            removable = "HNSW" not in want
            if len(gone) > rebuild_dead_fraction * max(1, len(stored)) or (not removable and len(gone) and
                                                                            len(gone) > rebuild_dead_fraction * n):
                index = None  # too much dead weight (or compaction moved the rows): rebuild
            else:
                changed = bool(len(new))
                if len(gone) and removable:
                    index.remove_ids(faiss.IDSelectorBatch(gone))
                    gone, changed = np.zeros(0, np.int64), True
                if len(new):
                    say(f"ann: adding {len(new)} new segment(s) to the {want} index")
                    _add(index, reader, keys, positions, new)
                dead = gone
        if index is None:
            say(f"ann: building a {want} index over {n} segment(s)")
            sample = None
            probe = _factory(d, want)
            if not probe.is_trained:
                take = np.sort(np.random.default_rng(0).choice(n, size=min(n, 100_000), replace=False))
                sample = reader.gather(["ann"], positions[take])["ann"].astype(np.float32)
            index = build_index(want, sample, d, say=say)
            _add(index, reader, keys, positions, keys)
            dead = np.zeros(0, np.int64)
        set_search_params(index, nprobe=nprobe, ef_search=ef_search)
        if persist and changed:
            _save(folder, index, {"format": ANN_FORMAT, "factory": want, "d": d, "ntotal": int(index.ntotal),
                                  "generation": int(reader.generation), "build_id": getattr(reader, "build_id", "")})
        return cls(index, want, keys, positions, np.sort(dead))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k'), reader segment positions (Q, k'), -1 where fewer) of the best k live
        segments by inner product with the unit ``queries`` (Q, d)."""
        faiss = _faiss()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        extra = min(len(self.dead), 4 * k) if len(self.dead) else 0
        kk = max(1, min(k + extra, int(self.index.ntotal)))
        hnsw = getattr(faiss.downcast_index(self.index.index), "hnsw", None)
        if hnsw is not None and hnsw.efSearch < kk:  # HNSW's recall is set by efSearch, not by k
            hnsw.efSearch = kk
        scores, ids = self.index.search(q, kk)
        pos = np.full(ids.shape, -1, np.int64)
        ok = ids >= 0
        if len(self.dead):
            ok &= ~np.isin(ids, self.dead)
        j = np.searchsorted(self.keys, ids[ok])
        j = np.minimum(j, len(self.keys) - 1)
        hit = self.keys[j] == ids[ok]
        p = np.where(hit, self.positions[j], -1)
        pos[ok] = p
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_p = np.full((len(q), k), -1, np.int64)
        for i in range(len(q)):
            sel = pos[i] >= 0
            m = min(k, int(sel.sum()))
            out_s[i, :m] = scores[i][sel][:m]
            out_p[i, :m] = pos[i][sel][:m]
        return out_s, out_p


def _load(folder: Path, factory: str, d: int, build_id: str):
    """(index, its sorted keys) stored in ``folder`` when it matches this factory, dimension and
    build of the index (a --rebuild or a model change makes a new build), else (None, None)."""
    faiss = _faiss()
    try:
        if not real_dir(folder, create=False):
            return None, None
        meta = json.loads(_read(folder / "ann.json"))
        if (meta.get("format") != ANN_FORMAT or meta.get("factory") != factory or int(meta.get("d", -1)) != d
                or meta.get("build_id", "") != build_id):
            return None, None
        index = faiss.deserialize_index(np.frombuffer(_read(folder / "index.faiss"), dtype=np.uint8))
        if index.ntotal != int(meta.get("ntotal", -1)):
            return None, None
        return index, np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    except (OSError, ValueError, RuntimeError, AttributeError, IndexStoreError):
        return None, None


def _read(path: Path) -> bytes:
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as fh:
        return fh.read()


def _save(folder: Path, index, meta: dict) -> None:
    """The index file, then the json that vouches for it (module docstring), never through a link."""
    faiss = _faiss()
    try:
        real_dir(folder, create=True)
        write_atomic(folder / "index.faiss", faiss.serialize_index(index).tobytes())
        write_atomic(folder / "ann.json", json.dumps(meta).encode())
    except (OSError, RuntimeError, IndexStoreError) as exc:  # read-only index: only costs a rebuild next time
        log.info("cannot save the ANN index in %s: %s", folder, exc)


def _add(index, reader, keys: np.ndarray, positions: np.ndarray, which: np.ndarray, step: int = 65536) -> None:
    sel = np.searchsorted(keys, which)
    for i in range(0, len(sel), step):
        s = sel[i:i + step]
        vec = reader.gather(["ann"], positions[s])["ann"].astype(np.float32)
        index.add_with_ids(np.ascontiguousarray(vec), keys[s])
