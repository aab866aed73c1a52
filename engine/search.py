"""Ranking: queries against an index with the probabilistic head (torch-free).

    searcher = Searcher(runtime, IndexReader(index_dir))
    results = searcher.search(["a red circle moves left"], top_k=10)        # text -> videos
    ranked = searcher.rank_captions(captions, video=searcher.video_index("clip.mp4"))  # video -> texts

**Exact** (default up to :data:`ANN_AUTO_VIDEOS` videos): every stored segment is scored against
every query by the bundle's pair graph (the head's best-of-M over the shared noise banks), in
blocks taken straight from the memory-mapped shards, so the only per-query cost beyond the
pair graph is one read of the stored video-side tensors. A video's score is the best score of
its segments. Where in the video the query matches comes from the stored frames: engine/moments.py
turns each hit's per-frame text-frame similarities into its top ``moments`` moments, finer than the
window, each ``(start, end, best_time, score)``; the first holds the frame closest to the query
inside the best segment (``best_time``, used for thumbnails), and the hit's ``start``, ``end`` and
``best_time`` are the first moment's.

Scores that are not finite (NaN, inf: a damaged index or a broken model) are never ranked: those
segments are left out, the result lists the videos left out (``unranked``) and ``say`` tells why;
when no segment has a finite score the search fails with an error naming the cause.

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
each block's pages behind it, has a float16 block converted to float32 tile by tile by the pair
workers (the head always computes in float32; engine/runtime.py, "Scoring float16 rows"), and
scores at most :data:`SCORE_BYTES` of (queries x segments) at a time; so a search's resident
memory is the reader's tables (~280 B a video) plus a block and one float32 tile per pair
worker, whatever the size of the stored features.

Ties are broken by path, so a ranking never depends on storage order.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from probret.engine.errors import DataError, IndexStoreError, ModelError
from probret.engine.index import IndexReader
from probret.engine.moments import Moment, find_moments
from probret.engine.runtime import _as_float32

__all__ = ["Hit", "Moment", "QueryResult", "CaptionHit", "Searcher", "ANN_AUTO_VIDEOS", "faiss_available",
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
#: (docs/benchmarks_search.md). The price is one block resident at a time (128 MB stored, plus a
#: float32 tile per pair worker), still independent of the index size.
SCAN_BLOCK_BYTES = 128 << 20


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


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
    start: float  # start, end, best_time: the first moment's
    end: float
    best_time: float | None
    segment: int  # segment number within the video (the best one)
    moments: list[Moment] = field(default_factory=list)  # best first, disjoint (engine/moments.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QueryResult:
    query: str
    truncated: bool
    hits: list[Hit]
    candidates: int  # segments scored by the head
    ann: bool
    unranked: list[str] = field(default_factory=list)  # videos left out: no finite score (module docstring)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "truncated": self.truncated, "ann": self.ann, "candidates": self.candidates,
                "results": [h.to_dict() for h in self.hits], "unranked": list(self.unranked)}


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
        for segs, tensors in self.reader.blocks(self.video_names, release=True, max_bytes=SCAN_BLOCK_BYTES):
            s, u = self.rt.score(feats, tensors)  # float16 rows converted tile by tile (runtime.score)
            scores[:, segs] = s
            if unc is not None and u is not None:
                unc[:, segs] = u
        return scores, unc

    def _score_rows(self, feats: dict[str, np.ndarray], segs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        tensors = self.reader.gather(self.video_names, segs)
        return self.rt.score(feats, _as_float32(tensors))

    # -- text -> video ---------------------------------------------------------------------------
    def search(self, queries: Sequence[str], *, top_k: int = 10, ann: bool | None = None,
               ann_candidates: int = 1000, moments: int = 1) -> list[QueryResult]:
        """The ``top_k`` videos for each query, each with its top ``moments`` moments."""
        if top_k < 1:
            raise DataError(f"--top-k must be at least 1, got {top_k}")
        if moments < 1:
            raise DataError(f"--moments must be at least 1, got {moments}")
        r = self.reader
        if not r.videos:
            raise DataError(f"{r.root}: the index holds no searchable video"
                            + (f" ({len(r.failed)} file(s) failed to decode)" if r.failed else ""))
        text = self.encode_queries(queries)
        if self._want_ann(ann):
            return self._search_ann(queries, text, top_k, ann_candidates, moments)
        results: list[QueryResult] = []
        all_segs = np.arange(r.num_segments)
        per_query = 4 * r.num_segments * (2 if self.rt.bundle.has_uncertainty else 1)
        qb = max(1, min(QUERY_BLOCK, SCORE_BYTES // max(1, per_query)))
        for q0 in range(0, len(queries), qb):
            s, u = self.score_segments(text, slice(q0, q0 + qb))
            for i in range(s.shape[0]):
                q = q0 + i
                hits, unranked = self._rank(s[i], None if u is None else u[i], all_segs, text.unit[q], top_k, moments)
                results.append(QueryResult(queries[q], bool(text.truncated[q]), hits, r.num_segments, False, unranked))
        return results

    def _search_ann(self, queries: Sequence[str], text: _Text, top_k: int, ann_candidates: int,
                    moments: int) -> list[QueryResult]:
        """Two-stage search (module docstring): every segment of the candidates' videos re-scored."""
        r = self.reader
        k = int(min(r.num_segments, max(ann_candidates, top_k)))
        _, cand = self.ann_stage().search(text.unit, k)
        results = []
        for q in range(len(queries)):
            c = cand[q][cand[q] >= 0]
            vids = np.unique(r.seg_video[c])
            segs = np.concatenate([np.arange(r.video_offsets[v], r.video_offsets[v + 1]) for v in vids])
            s, u = self._score_rows(text.select(slice(q, q + 1)), segs)
            hits, unranked = self._rank(s[0], None if u is None else u[0], segs, text.unit[q], top_k, moments)
            results.append(QueryResult(queries[q], bool(text.truncated[q]), hits, len(segs), True, unranked))
        return results

    def _rank(self, seg_scores: np.ndarray, seg_unc: np.ndarray | None, segs: np.ndarray, unit_text: np.ndarray,
              top_k: int, moments: int = 1) -> tuple[list[Hit], list[str]]:
        """Per-video best segment among ``segs`` (positions in reader order, grouped by video in
        ascending order), then the top ``top_k`` videos, ties by path; and the videos left out
        for having no finite score."""
        r = self.reader
        seg_scores, unranked = self._finite_scores(seg_scores, segs)
        vid = r.seg_video[segs]
        starts = np.concatenate([[0], np.nonzero(np.diff(vid))[0] + 1])
        ends = np.concatenate([starts[1:], [len(segs)]])
        vscores = np.maximum.reduceat(seg_scores, starts)
        vids = vid[starts]
        rankable = np.nonzero(np.isfinite(vscores))[0]
        k = min(top_k, len(rankable))
        part = rankable
        if len(rankable) > 4 * k:
            part = rankable[np.argpartition(-vscores[rankable], k - 1)[:k]]
            part = rankable[vscores[rankable] >= vscores[part].min()]  # keep every tie at the boundary
        order = part[np.lexsort((vids[part], -vscores[part]))][:k]  # videos are sorted by path
        hits = []
        for rank, j in enumerate(order, 1):
            a, b = int(starts[j]), int(ends[j])
            best = a + int(np.argmax(seg_scores[a:b]))
            found = self._moments(segs[a:b], seg_scores[a:b], best - a, unit_text, moments)
            unc = None if seg_unc is None or not np.isfinite(seg_unc[best]) else float(seg_unc[best])
            hits.append(Hit(rank=rank, path=r.videos[int(vids[j])].path, score=float(seg_scores[best]),
                            uncertainty=unc, start=found[0].start, end=found[0].end, best_time=found[0].best_time,
                            segment=int(r.seg_index[int(segs[best])]), moments=found))
        return hits, unranked

    def _finite_scores(self, seg_scores: np.ndarray, segs: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """``seg_scores`` with NaN and inf made -inf (never ranked), and the paths of the videos
        that have no finite score left (module docstring)."""
        bad = ~np.isfinite(seg_scores)
        if not bad.any():
            return seg_scores, []
        r = self.reader
        if bad.all():
            raise self._not_finite_error(segs)
        bad_videos = np.unique(r.seg_video[segs[bad]])
        good_videos = np.unique(r.seg_video[segs[~bad]])
        unranked = [r.videos[int(v)].path for v in np.setdiff1d(bad_videos, good_videos)]
        self.say(f"warning: {int(bad.sum())} segment(s) of {len(bad_videos)} video(s) scored NaN or inf and were "
                 f"not ranked ({len(unranked)} video(s) left out entirely"
                 + (f", e.g. {unranked[0]!r}" if unranked else "") + "): the index or the model is damaged; "
                 "`probret index --rebuild` re-encodes the videos")
        return np.where(bad, -np.inf, seg_scores).astype(np.float32), unranked

    def _not_finite_error(self, segs: np.ndarray) -> Exception:
        """Every score is NaN or inf: the stored rows' fault (IndexStoreError) or the model's."""
        sample = segs[:64]
        stored = _as_float32(self.reader.gather(self.video_names, sample))
        if not all(np.isfinite(v).all() for v in stored.values()):
            return IndexStoreError(f"{self.reader.root}: stored features hold NaN or inf (a damaged index): rebuild it "
                                   "with `probret index --rebuild`")
        name = getattr(self.rt.bundle, "path", None) or getattr(self.rt.bundle, "method", "the model")
        return ModelError(f"model {name}: the pair graph scored every segment NaN or inf from finite features: "
                          "check or re-export the model")

    def _moments(self, pos: np.ndarray, scores: np.ndarray, best: int, unit_text: np.ndarray, n: int) -> list[Moment]:
        """The top ``n`` moments of one video from its segments ``pos`` (reader positions, in
        time order), their head ``scores`` and its ``best`` segment (engine/moments.py)."""
        r = self.reader
        if "frame_features" not in r.layout:  # no frames stored: the best windows are the moments
            order = [int(i) for i in np.argsort(-scores, kind="stable")[:n] if np.isfinite(scores[i])]
            return [Moment(float(r.seg_start[pos[i]]), float(r.seg_end[pos[i]]), None, float(scores[i]))
                    for i in order]
        frames = r.gather(["frame_features"], pos)["frame_features"]
        stamps = [r.timestamps(int(p)) for p in pos]
        sims = l2_normalize(frames) @ unit_text.astype(np.float32)  # (n_seg, T)
        sims = np.where(np.isfinite(sims), sims, -1.0)  # a damaged frame matches nothing
        times = np.concatenate(stamps)
        flat = np.concatenate([sims[i, :len(t)] for i, t in enumerate(stamps)])
        frame_segment = np.repeat(np.arange(len(pos)), [len(t) for t in stamps])
        if not len(times):
            return [Moment(float(r.seg_start[pos[best]]), float(r.seg_end[pos[best]]), None, float(scores[best]))]
        if len(pos) == 1:  # a clip of one window is one moment: the clip (a smaller --window cuts finer)
            return [Moment(float(r.seg_start[pos[0]]), float(r.seg_end[pos[0]]), float(times[int(np.argmax(flat))]),
                           float(scores[0]))]
        span = (float(r.seg_start[pos[0]]), float(r.seg_end[pos[-1]]))
        found = find_moments(times, flat, frame_segment, scores, span, best, n)
        return [m for m in found if np.isfinite(m.score)] or found[:1]

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
