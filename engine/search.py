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
installed): a faiss inner-product index over a query-independent embedding of every segment
(``ann``: the unit mean of unit frame features, i.e. the video Gaussian's mean with the
query-conditioned pooling replaced by mean pooling) against the unit text mean gives
``ann_candidates`` segments; every segment of the videos they belong to is then re-scored by the
full head and ranked as above. The faiss index is cached in ``INDEX/ann-g<generation>-...faiss``
and rebuilt when the index changed (its generation counter). Exact inner product (``IndexFlatIP``) up to
:data:`ANN_FLAT_MAX` segments, HNSW beyond.

Ties are broken by path, so a ranking never depends on storage order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from probret.engine.errors import DataError, IndexError_
from probret.engine.index import IndexReader

__all__ = ["Hit", "QueryResult", "CaptionHit", "Searcher", "ANN_AUTO_VIDEOS", "ANN_FLAT_MAX", "faiss_available",
           "l2_normalize"]

log = logging.getLogger(__name__)

#: Above this many videos a search uses the ANN first stage by default (when faiss is installed).
ANN_AUTO_VIDEOS = 100_000
#: Up to this many segments the first stage is an exact inner-product scan; HNSW beyond.
ANN_FLAT_MAX = 200_000
#: Queries scored at once in exact mode (bounds the (queries x segments) score matrix).
QUERY_BLOCK = 256


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


def _faiss():
    try:
        import faiss
    except ImportError:
        raise IndexError_("--ann needs faiss: pip install faiss-cpu (or faiss-gpu); without --ann every video is "
                          "scored exactly") from None
    return faiss


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
            raise IndexError_(f"{reader.root}: the index lacks {missing} that this model's pair graph needs; it was "
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
        for segs, tensors in self.reader.blocks(self.video_names):
            s, u = self.rt.score(feats, tensors)
            scores[:, segs] = s
            if unc is not None and u is not None:
                unc[:, segs] = u
        return scores, unc

    def _score_rows(self, feats: dict[str, np.ndarray], segs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        tensors = self.reader.gather(self.video_names, segs)
        return self.rt.score(feats, tensors)

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
            index = self._ann_index()
            k = int(min(r.num_segments, max(ann_candidates, top_k)))
            if hasattr(index, "hnsw"):
                # faiss HNSW recall is set by efSearch alone, not by k: below k it silently
                # drops true neighbours (measured: 0.93 top-10 recall at 1M with 128 for k=1000).
                index.hnsw.efSearch = max(128, k)
            _, cand = index.search(np.ascontiguousarray(text.unit, dtype=np.float32), k)
            for q in range(len(queries)):
                c = cand[q][cand[q] >= 0]
                vids = np.unique(r.seg_video[c])
                segs = np.concatenate([np.arange(r.video_offsets[v], r.video_offsets[v + 1]) for v in vids])
                s, u = self._score_rows(text.select(slice(q, q + 1)), segs)
                hits = self._rank(s[0], None if u is None else u[0], segs, text.unit[q], top_k)
                results.append(QueryResult(queries[q], bool(text.truncated[q]), hits, len(segs), True))
            return results
        all_segs = np.arange(r.num_segments)
        for q0 in range(0, len(queries), QUERY_BLOCK):
            s, u = self.score_segments(text, slice(q0, q0 + QUERY_BLOCK))
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
        ``segments`` their windows). Returns (hits, truncated flags)."""
        if not captions:
            raise DataError("no captions to rank")
        text = self.encode_queries(list(captions))
        r = self.reader
        if video is not None:
            segs = np.arange(r.video_offsets[video], r.video_offsets[video + 1])
            feats = r.gather(self.video_names, segs)
            windows = [(float(r.seg_start[s]), float(r.seg_end[s])) for s in segs]
        else:
            if tensors is None or segments is None:
                raise ValueError("give video= or tensors= and segments=")
            feats = {n: tensors[n] for n in self.video_names}
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
                _faiss()
            return bool(ann)
        if len(self.reader.videos) <= ANN_AUTO_VIDEOS:
            return False
        if not faiss_available():
            self.say(f"{len(self.reader.videos)} videos: the ANN first stage would be faster but faiss is not "
                     "installed (pip install faiss-cpu); scoring every video exactly")
            return False
        return True

    def _ann_index(self):
        if self._ann is not None:
            return self._ann
        faiss = _faiss()
        r = self.reader
        if "ann" not in r.layout:
            raise IndexError_(f"{r.root}: the index has no ANN embedding; run with --rebuild")
        kind = "flat" if r.num_segments <= ANN_FLAT_MAX else "hnsw32"
        path = r.root / f"ann-g{r.generation}-n{r.num_segments}-{kind}.faiss"
        if path.is_file():
            try:
                index = faiss.read_index(str(path))
                if index.ntotal == r.num_segments:
                    self._ann = index
                    return index
            except RuntimeError:
                pass
        d = int(r.layout["ann"]["shape"][0])
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
        step = 65536
        for i in range(0, r.num_segments, step):
            segs = np.arange(i, min(i + step, r.num_segments))
            index.add(np.ascontiguousarray(r.gather(["ann"], segs)["ann"], dtype=np.float32))
        self._ann = index
        try:  # a cache: failing to write it (read-only index) only costs a rebuild next time
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            faiss.write_index(index, str(tmp))
            os.replace(tmp, path)
            for old in r.root.glob("ann-*.faiss"):
                if old != path:
                    old.unlink(missing_ok=True)
        except (OSError, RuntimeError) as exc:
            log.info("cannot cache the ANN index in %s: %s", r.root, exc)
        return index
