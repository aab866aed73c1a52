"""Ranking: queries against an index with the probabilistic head (torch-free).

    searcher = Searcher(runtime, IndexReader(index_dir))
    results = searcher.search(["a red circle moves left"], top_k=10)        # text -> videos
    ranked = searcher.rank_captions(captions, video=searcher.video_index("clip.mp4"))  # video -> texts

**Exact** (default up to :data:`ANN_AUTO_VIDEOS` videos): every stored segment is scored against
every query by the bundle's pair graph (the head's best-of-M over the shared noise banks), in
blocks taken straight from the memory-mapped shards, so the only per-query cost beyond the
pair graph is one read of the stored video-side tensors. A video's score is the best score of
its segments; that segment is its best moment, and inside it the frame whose feature is closest
to the query (cosine) is the best instant (``best_time``, used for thumbnails).

**Two-stage** (``ann=True``, or automatically beyond :data:`ANN_AUTO_VIDEOS` videos when faiss is
installed): the first stage is engine/ann.py's :class:`~probret.engine.ann.AnnStage`, a faiss
inner-product index over a query-independent embedding of every segment (``ann``: the unit
mean of unit frame features, i.e. the video Gaussian's mean with the query-conditioned pooling
replaced by mean pooling) searched with the unit text mean; it gives ``ann_candidates``
segments, and every segment of the videos they belong to is then re-scored by the full head and
ranked as above. The stage chooses Flat / HNSW / IVF-PQ by size, persists in ``INDEX/ann/`` and
follows an index that changed by adding and removing vectors (engine/ann.py's docstring).

Memory (docs/benchmarks_memory.md): an exact scan reads the stored rows in blocks of
:data:`~probret.engine.index.BLOCK_BYTES` straight from the memory-mapped shards and releases
each block's pages behind it, converts a float16 block to float32 before the head sees it (the
head always computes in float32), and scores at most :data:`SCORE_BYTES` of (queries x segments)
at a time; so a search's resident memory is the reader's tables (~280 B a video) plus a few
blocks, whatever the size of the stored features.

Ties are broken by path, so a ranking never depends on storage order.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from probret.engine.errors import DataError, IndexStoreError
from probret.engine.index import IndexReader

__all__ = ["Hit", "QueryResult", "CaptionHit", "Searcher", "ANN_AUTO_VIDEOS", "faiss_available",
           "l2_normalize"]

log = logging.getLogger(__name__)

#: Above this many videos a search uses the ANN first stage by default (when faiss is installed).
ANN_AUTO_VIDEOS = 100_000
#: Queries scored at once in exact mode, at most ...
QUERY_BLOCK = 256
#: ... and fewer when their (queries x segments) score and uncertainty matrices would pass this
#: many bytes (at 1M segments: 32 queries at a time instead of 256, 256 MB instead of 2 GB).
SCORE_BYTES = 256 << 20
#: Stored bytes per block of an exact scan. Every block is one pair-graph run with a fixed cost
#: (~0.3 ms of CPU: the text side is recomputed per run), and its pages are released after it:
#: 32 MB blocks (~420 SPEM videos) left SPEM at 2.49x the warm read floor at 50k, 128 MB at 2.05x
#: (docs/benchmarks_search.md). The price is one block resident at a time (128 MB stored, twice
#: that once a float16 block is converted to float32), still independent of the index size.
SCAN_BLOCK_BYTES = 128 << 20


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


#: An ONNX graph of one node, Cast(float16 -> float32) over a 1-D tensor (opset 13, IR 8, made
#: with onnx.helper; 84 bytes, so that the engine needs no ``onnx`` package to have it).
_CAST_F16_ONNX = bytes.fromhex(
    "0808120770726f627265743a410a170a01781201792204436173742a090a02746f1801a001021208663136746f6633325a0d0a0178"
    "12080a06080a12020a00620d0a017912080a06080112020a0042040a00100d")
_caster = None


def _half_to_float(src: np.ndarray, dst: np.ndarray) -> None:
    """float16 ``src`` -> float32 ``dst`` (same shape). ONNX Runtime's Cast is vectorised (F16C):
    0.45 ns an element here against 1.15 for numpy's cast, the whole cost of float16 storage in
    an exact scan; numpy does it when ONNX Runtime cannot (non-contiguous or big-endian arrays,
    no onnxruntime). The conversion is exact either way (every float16 is a float32; ORT may
    return a signalling NaN quieted)."""
    global _caster
    if _caster is None:
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1  # memory-bound: a second thread measured slower
            opts.log_severity_level = 3
            _caster = ort.InferenceSession(_CAST_F16_ONNX, opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any failure means: use numpy
            _caster = False
    if (_caster is False or not src.flags.c_contiguous or not dst.flags.c_contiguous or src.dtype != np.float16
            or not src.dtype.isnative or dst.dtype != np.float32 or src.shape != dst.shape or not src.size):
        np.copyto(dst, src)
        return
    try:
        io = _caster.io_binding()
        io.bind_cpu_input("x", np.asarray(src).reshape(-1))
        io.bind_output("y", "cpu", 0, np.float32, [int(src.size)], dst.ctypes.data)
        _caster.run_with_iobinding(io)
    except Exception:  # noqa: BLE001
        np.copyto(dst, src)


def _as_float32(tensors: dict[str, np.ndarray], buffers: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Stored rows as float32: a no-op for float32 storage; for float16, one block at a time, so
    the head always computes in float32 whatever the storage dtype. ``buffers`` (name -> float32
    array, grown as needed) are reused from block to block: converting into memory already
    touched saves the page faults of a fresh array (1.15 against 1.75 ns an element with numpy)."""
    out = {}
    for k, v in tensors.items():
        if v.dtype == np.float32:
            out[k] = v
            continue
        if buffers is None:
            dst = np.empty(v.shape, dtype=np.float32)
        else:
            buf = buffers.get(k)
            if buf is None or buf.shape[0] < v.shape[0] or buf.shape[1:] != v.shape[1:]:
                buf = buffers[k] = np.empty(v.shape, dtype=np.float32)
            dst = buf[:v.shape[0]]
        if v.dtype == np.float16:
            _half_to_float(v, dst)
        else:
            np.copyto(dst, v)
        out[k] = dst
    return out


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


def _require_faiss() -> None:
    if not faiss_available():
        raise IndexStoreError("--ann needs faiss: pip install faiss-cpu (or faiss-gpu); without --ann every video is "
                              "scored exactly")


@dataclass
class Hit:
    rank: int
    path: str
    score: float
    uncertainty: float | None
    start: float
    end: float
    best_time: float | None
    segment: int  # segment number within the video

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QueryResult:
    query: str
    truncated: bool
    hits: list[Hit]
    candidates: int  # segments scored by the head
    ann: bool

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "truncated": self.truncated, "ann": self.ann, "candidates": self.candidates,
                "results": [h.to_dict() for h in self.hits]}


@dataclass
class CaptionHit:
    rank: int
    caption: str
    score: float
    uncertainty: float | None
    start: float
    end: float
    segment: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Text:
    feats: dict[str, np.ndarray]
    truncated: np.ndarray
    unit: np.ndarray = field(default=None)  # (N, D) unit sentence features

    def select(self, sl) -> dict[str, np.ndarray]:
        return {k: v[sl] for k, v in self.feats.items()}


class Searcher:
    """Scores queries against an :class:`IndexReader` with a ``BundleRuntime`` (module docstring)."""

    def __init__(self, runtime, reader: IndexReader, *, say: Callable[[str], None] | None = None):
        self.rt = runtime
        self.reader = reader
        self.say = say or (lambda msg: log.info(msg))
        self.video_names = [n for n in runtime.bundle.video_outputs]
        missing = [n for n in self.video_names if n not in reader.layout] if reader.num_segments else []
        if missing:
            raise IndexStoreError(f"{reader.root}: the index lacks {missing} that this model's pair graph needs; it was "
                                  "built with another model: run `probret index` with this model (or --rebuild)")
        self._ann = None

    # -- text ------------------------------------------------------------------------------------
    def encode_queries(self, queries: Sequence[str]) -> _Text:
        if isinstance(queries, str):
            queries = [queries]
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise DataError(f"query {i + 1} is empty")
        ids, cut = self.rt.tokenize(list(queries))
        feats = self.rt.encode_text(ids)
        return _Text(feats, np.asarray(cut, dtype=bool), l2_normalize(feats["text_sentence"]))

    def video_index(self, path: str) -> int | None:
        return self.reader.video_index(path)

    # -- scoring ---------------------------------------------------------------------------------
    def score_segments(self, text: _Text, sl: slice = slice(None)) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, uncertainty or None), each (N_q, N_segments) in the reader's segment order."""
        feats = text.select(sl)
        nq = next(iter(feats.values())).shape[0]
        n = self.reader.num_segments
        scores = np.empty((nq, n), dtype=np.float32)
        unc = np.empty((nq, n), dtype=np.float32) if self.rt.bundle.has_uncertainty else None
        buffers: dict[str, np.ndarray] = {}
        for segs, tensors in self.reader.blocks(self.video_names, release=True, max_bytes=SCAN_BLOCK_BYTES):
            s, u = self.rt.score(feats, _as_float32(tensors, buffers))
            scores[:, segs] = s
            if unc is not None and u is not None:
                unc[:, segs] = u
        return scores, unc

    def _score_rows(self, feats: dict[str, np.ndarray], segs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        tensors = self.reader.gather(self.video_names, segs)
        return self.rt.score(feats, _as_float32(tensors))

    # -- text -> video ---------------------------------------------------------------------------
    def search(self, queries: Sequence[str], *, top_k: int = 10, ann: bool | None = None,
               ann_candidates: int = 1000) -> list[QueryResult]:
        if top_k < 1:
            raise DataError(f"--top-k must be at least 1, got {top_k}")
        r = self.reader
        if not r.videos:
            raise DataError(f"{r.root}: the index holds no searchable video"
                            + (f" ({len(r.failed)} file(s) failed to decode)" if r.failed else ""))
        text = self.encode_queries(queries)
        use_ann = self._want_ann(ann)
        results: list[QueryResult] = []
        if use_ann:
            k = int(min(r.num_segments, max(ann_candidates, top_k)))
            _, cand = self.ann_stage().search(text.unit, k)
            for q in range(len(queries)):
                c = cand[q][cand[q] >= 0]
                vids = np.unique(r.seg_video[c])
                segs = np.concatenate([np.arange(r.video_offsets[v], r.video_offsets[v + 1]) for v in vids])
                s, u = self._score_rows(text.select(slice(q, q + 1)), segs)
                hits = self._rank(s[0], None if u is None else u[0], segs, text.unit[q], top_k)
                results.append(QueryResult(queries[q], bool(text.truncated[q]), hits, len(segs), True))
            return results
        all_segs = np.arange(r.num_segments)
        per_query = 4 * r.num_segments * (2 if self.rt.bundle.has_uncertainty else 1)
        qb = max(1, min(QUERY_BLOCK, SCORE_BYTES // max(1, per_query)))
        for q0 in range(0, len(queries), qb):
            s, u = self.score_segments(text, slice(q0, q0 + qb))
            for i in range(s.shape[0]):
                q = q0 + i
                hits = self._rank(s[i], None if u is None else u[i], all_segs, text.unit[q], top_k)
                results.append(QueryResult(queries[q], bool(text.truncated[q]), hits, r.num_segments, False))
        return results

    def _rank(self, seg_scores: np.ndarray, seg_unc: np.ndarray | None, segs: np.ndarray, unit_text: np.ndarray,
              top_k: int) -> list[Hit]:
        """Per-video best segment among ``segs`` (positions in reader order, grouped by video in
        ascending order), then the top ``top_k`` videos, ties by path."""
        r = self.reader
        vid = r.seg_video[segs]
        starts = np.concatenate([[0], np.nonzero(np.diff(vid))[0] + 1])
        vscores = np.maximum.reduceat(seg_scores, starts)
        vids = vid[starts]
        k = min(top_k, len(vids))
        if len(vids) > 4 * k:
            part = np.argpartition(-vscores, k - 1)[:k]
            thresh = vscores[part].min()
            part = np.nonzero(vscores >= thresh)[0]  # keep every tie at the boundary
        else:
            part = np.arange(len(vids))
        order = part[np.lexsort((vids[part], -vscores[part]))][:k]  # videos are sorted by path
        hits = []
        ends = np.concatenate([starts[1:], [len(segs)]])
        for rank, j in enumerate(order, 1):
            a, b = int(starts[j]), int(ends[j])
            best = a + int(np.argmax(seg_scores[a:b]))
            pos = int(segs[best])
            hits.append(Hit(rank=rank, path=r.videos[int(vids[j])].path, score=float(seg_scores[best]),
                            uncertainty=None if seg_unc is None else float(seg_unc[best]),
                            start=float(r.seg_start[pos]), end=float(r.seg_end[pos]),
                            best_time=self._best_time(pos, unit_text), segment=int(r.seg_index[pos])))
        return hits

    def _best_time(self, pos: int, unit_text: np.ndarray) -> float | None:
        if "frame_features" not in self.reader.layout:
            return None
        f = self.reader.gather(["frame_features"], np.array([pos]))["frame_features"][0]
        ts = self.reader.timestamps(pos)
        if ts.size == 0:
            return None
        sims = l2_normalize(f) @ unit_text.astype(np.float32)
        return float(ts[int(np.argmax(sims))])

    # -- video -> text ---------------------------------------------------------------------------
    def rank_captions(self, captions: Sequence[str], *, video: int | None = None,
                      tensors: dict[str, np.ndarray] | None = None, segments: Sequence[tuple[float, float]] | None = None,
                      top_k: int | None = None) -> tuple[list[CaptionHit], np.ndarray]:
        """Rank ``captions`` for one video: an indexed one (``video``, its position in the reader)
        or one encoded on the fly (``tensors`` holding the video-side outputs of its segments and
        ``segments`` their windows). Returns (hits, truncated flags).

        On-the-fly tensors are rounded through the index's storage dtype (float16 by default) so
        a video scores the same whether it is read from the index or encoded now."""
        if not captions:
            raise DataError("no captions to rank")
        text = self.encode_queries(list(captions))
        r = self.reader
        if video is not None:
            segs = np.arange(r.video_offsets[video], r.video_offsets[video + 1])
            feats = _as_float32(r.gather(self.video_names, segs))
            windows = [(float(r.seg_start[s]), float(r.seg_end[s])) for s in segs]
        else:
            if tensors is None or segments is None:
                raise ValueError("give video= or tensors= and segments=")
            store = np.dtype(r.settings.get("dtype", "float32"))
            feats = {n: np.asarray(tensors[n]).astype(store).astype(np.float32) for n in self.video_names}
            windows = list(segments)
        s, u = self.rt.score(text.feats, feats)
        best = np.argmax(s, axis=1)
        score = s[np.arange(len(captions)), best]
        unc = None if u is None else u[np.arange(len(captions)), best]
        order = np.lexsort((np.arange(len(captions)), -score))
        if top_k:
            order = order[:top_k]
        hits = [CaptionHit(rank=i + 1, caption=captions[j], score=float(score[j]),
                           uncertainty=None if unc is None else float(unc[j]), start=windows[best[j]][0],
                           end=windows[best[j]][1], segment=int(best[j])) for i, j in enumerate(order)]
        return hits, text.truncated

    # -- ANN ---------------------------------------------------------------------------------------
    def _want_ann(self, ann: bool | None) -> bool:
        if ann is not None:
            if ann:
                _require_faiss()
            return bool(ann)
        if len(self.reader.videos) <= ANN_AUTO_VIDEOS:
            return False
        if not faiss_available():
            self.say(f"{len(self.reader.videos)} videos: the ANN first stage would be faster but faiss is not "
                     "installed (pip install faiss-cpu); scoring every video exactly")
            return False
        return True

    def ann_stage(self):
        """The ANN first stage (engine/ann.py), opened on first use: loaded from ``INDEX/ann/``,
        brought up to date with the index, or built."""
        if self._ann is None:
            from probret.engine.ann import AnnStage

            self._ann = AnnStage.open(self.reader, say=self.say)
            for old in self.reader.root.glob("ann-g*.faiss"):  # the older cache of a first stage of its own
                try:
                    old.unlink()
                except OSError:
                    pass
        return self._ann
