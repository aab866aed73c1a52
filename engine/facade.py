"""The engine's front door: open a folder with a bundle, keep its index up to date, search it.

    from probret.engine import load_bundle, open_folder

    with open_folder("videos/", bundle="bundles/spem") as vf:
        for hit in vf.search("a red circle moves left", top_k=5)[0].hits:
            print(hit.rank, hit.display_path, hit.score, hit.moment.start, hit.moment.end)

``probret search``/``index``/``demo``, ``probret serve`` and the benches all go through this
module; they do not wire the index, pipeline and searcher themselves. What it composes:

* engine/index.py: the index (``IndexWriter`` for an update, ``IndexReader`` for searching);
* engine/pipeline.py: decoding and encoding new or changed files (engine/distributed.py on Ray);
* engine/search.py: ranking; engine/calibration.py (when the bundle carries a calibrator):
  confidences. Results are engine/results.py's types.

Settings that define an index (segment window, storage dtype, resize mode): ``None`` means the
setting the index already stores, else the default (:data:`DEFAULT_WINDOW`, :data:`DEFAULT_DTYPE`,
``"auto"``); an explicit different value rebuilds the index, which is said on the notes logger.
An update plans first without the writer's lock (engine/index's ``plan_update``); a search
with nothing to index then opens only a reader (see :meth:`VideoFolder.update`). With
``update=False`` the folder is never walked and no lock is taken; a setting that differs
from the stored one is then a usage error rather than a silent mismatch.

User-facing notes (what is being indexed, a rebuild, a one-time export) go to the
``probret.notes`` logger at INFO; details go to the module loggers (the CLI shows them with
``-v``). Bad options raise engine/errors.py's ``UsageError`` via engine/options.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from probret.engine.bundle import Bundle, load_bundle
from probret.engine.errors import DataError, IndexStoreError, UsageError
from probret.engine.options import IndexOptions, SearchOptions
from probret.engine.results import (CaptionHit, CaptionResult, Hit, Moment, SearchResult, SkippedFile,
                                    UpdateReport, fs_path)

__all__ = ["open_folder", "recorded_model", "VideoFolder", "DEFAULT_WINDOW", "DEFAULT_DTYPE", "NOTES_LOGGER"]

NOTES_LOGGER = "probret.notes"
notes = logging.getLogger(NOTES_LOGGER)
log = logging.getLogger(__name__)

#: Seconds per segment when neither the caller nor the index says (docs/search.md, "Long videos").
DEFAULT_WINDOW = 30.0
#: Storage dtype of a new index: half the disk and scan bytes, rankings measured unchanged
#: (docs/benchmarks_memory.md).
DEFAULT_DTYPE = "float16"
DEFAULT_RESIZE = "auto"


def open_folder(folder: str | os.PathLike, *, bundle: Bundle | str | os.PathLike, index: str | os.PathLike | None = None,
                device: str = "auto", window: float | None = None, dtype: str | None = None,
                workers: int | None = None, batch: int | None = None, rebuild: bool = False, update: bool = True,
                progress: bool | None = None, resize: str | None = None, model: dict | None = None,
                wait: bool = False, retry_failed: bool = False, runtime=None,
                ray_address: str | None = None, write: bool = False) -> "VideoFolder":
    """A :class:`VideoFolder` for ``folder`` searched with ``bundle`` (module docstring).

    ``index``: the index directory (default ``FOLDER/.probret-index``); ``update``: index new or
    changed files now (``False``: search the index as it is, no folder walk); ``progress``: a
    progress bar on stderr (None: when stderr is a terminal); ``model``: what the index records
    about the model (export/resolve.py's ``ResolvedModel.to_meta()``; default: the bundle);
    ``wait``: wait for another writer instead of failing; ``runtime``: an open ``BundleRuntime``
    of ``bundle`` to reuse; ``ray_address``: index on a Ray cluster (docs/scaling.md); ``write``:
    open the writer even when there is nothing to index (``probret index``: it also repairs a
    damaged shard and cleans up after a crash), see :meth:`VideoFolder.update`."""
    options = IndexOptions(window=window, dtype=dtype, resize=resize, workers=workers, batch=batch)
    vf = VideoFolder(folder, bundle, index=index, device=device, options=options, model=model, wait=wait,
                     retry_failed=retry_failed, runtime=runtime)
    try:
        if update:
            vf.update(progress=progress, rebuild=rebuild, ray_address=ray_address, write=write)
        else:
            if rebuild:
                raise UsageError("--rebuild builds the index again, which --no-update forbids; drop one of them")
            vf.check_searchable()
            notes.info(f"model: {vf.model.get('description')}")
    except BaseException:
        vf.close()
        raise
    return vf


def recorded_model(folder: str | os.PathLike, index: str | os.PathLike | None = None) -> dict | None:
    """The model meta the index of ``folder`` recorded when it was built (None: no index yet).
    export/resolve.py turns it back into a bundle when no ``--model`` is given."""
    from probret.engine.index import INDEX_DIRNAME, read_header

    header = read_header(Path(index) if index is not None else Path(folder) / INDEX_DIRNAME)
    return (header or {}).get("model") or None


class VideoFolder:
    """A folder of videos, its index and a model (module docstring). Use :func:`open_folder`."""

    def __init__(self, folder, bundle, *, index=None, device="auto", options: IndexOptions = IndexOptions(),
                 model: dict | None = None, wait: bool = False, retry_failed: bool = False, runtime=None):
        from probret.engine.index import INDEX_DIRNAME, read_header

        self.folder = Path(folder)
        if not self.folder.exists():
            raise DataError(f"{self.folder}: no such folder")
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: not a folder; give the directory that holds the videos")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.index_dir = Path(index) if index is not None else self.folder / INDEX_DIRNAME
        self.options = options
        self.model = dict(model or {"kind": "bundle", "spec": str(self.bundle.path), "bundle": str(self.bundle.path),
                                    "bundle_sha256": self.bundle.sha256, "method": self.bundle.method,
                                    "description": f"bundle {self.bundle.path} ({self.bundle.method})"})
        self.wait = wait
        self.retry_failed = retry_failed
        self._header = read_header(self.index_dir)
        self.settings = self._settings()
        self._device = device
        self._runtime = runtime
        self._reader = None
        self._searcher = None
        self._calibrator = None
        self._domain_noted = False
        self.last_update: UpdateReport | None = None

    # -- settings ------------------------------------------------------------------------------
    def _stored(self) -> dict:
        return (self._header or {}).get("settings") or {}

    def _settings(self):
        from probret.engine.index import IndexSettings

        stored, o = self._stored(), self.options
        return IndexSettings.for_bundle(
            self.bundle, window=float(o.window if o.window is not None else stored.get("window", DEFAULT_WINDOW)),
            resize=o.resize or stored.get("resize", DEFAULT_RESIZE), dtype=o.dtype or stored.get("dtype", DEFAULT_DTYPE))

    def check_searchable(self) -> None:
        """For ``update=False``: the index exists and matches this model and the settings asked for."""
        if self._header is None:
            self._raise_unreadable()
        stored = self._stored()
        if stored.get("bundle_sha256") != self.bundle.sha256:
            raise IndexStoreError(f"{self.index_dir} was built with another model "
                                  f"({(self._header.get('model') or {}).get('description')}); search without "
                                  "--no-update to rebuild it for this model")
        asked = {"--window": (self.options.window, stored.get("window")),
                 "--half/--full": (self.options.dtype, stored.get("dtype")),
                 "--resize": (self.options.resize, stored.get("resize"))}
        for flag, (want, have) in asked.items():
            if want is not None and have is not None and want != have:
                raise UsageError(f"{flag}: the index {self.index_dir} was built with {have}, not {want}; search "
                                 "without --no-update to rebuild it, or leave the option out to use the index as it is")

    def _raise_unreadable(self) -> None:
        """No header could be read: say why. Only a missing or empty directory is "no index";
        a damaged, foreign or too old one is opened so that the reader says what is wrong."""
        from probret.engine.index import IndexReader
        from probret.engine.index.directory import foreign_entries

        root = self.index_dir
        if os.path.lexists(root) and (not root.is_dir() or root.is_symlink() or any(root.iterdir())):
            foreign = [] if not root.is_dir() or root.is_symlink() else foreign_entries(root)
            if foreign and not os.path.lexists(root / "index.db"):
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise IndexStoreError(f"{root}: not a probret index ({shown}); give --index a directory probret "
                                      "made, or search without --index")
            IndexReader(root).close()  # raises the true reason
        raise IndexStoreError(f"{self.index_dir}: no index here; run `probret index {self.folder}` (or search "
                                  "without --no-update)")

    # -- the runtime ---------------------------------------------------------------------------
    @property
    def runtime(self):
        if self._runtime is None:
            from probret.engine.runtime import BundleRuntime

            self._runtime = BundleRuntime(self.bundle, device=self._device)
        return self._runtime

    @property
    def providers(self) -> str:
        """The execution providers the sessions opened so far run on (e.g. ``CPU``)."""
        names = sorted(set(getattr(self._runtime, "providers", {}).values()))
        return ", ".join(n.replace("ExecutionProvider", "") for n in names) or "?"

    # -- updating ------------------------------------------------------------------------------
    def update(self, progress: bool | None = None, *, rebuild: bool = False,
               ray_address: str | None = None, write: bool = False) -> UpdateReport:
        """Index new and changed files, drop removed ones. ``ray_address``:
        run on a Ray cluster (engine/distributed.py; "" = the default cluster).

        The walk is planned first without the writer's lock (``plan_update``): when there is
        nothing to encode, drop or rebuild, no writer is opened, so any number of searches run
        at once, next to a writer and on an index they cannot write (docs/reliability.md §3).
        ``write`` (and ``rebuild``) open the writer all the same: its opening repairs a shard
        cut short and removes what a crash left behind."""
        from probret.engine.index import plan_update

        self._close_reader()
        if not (rebuild or write):
            plan = plan_update(self.folder, self.index_dir, self.settings, retry_failed=self.retry_failed)
            if plan.up_to_date:
                if not plan.total_videos:
                    raise self._no_videos()
                notes.info(f"model: {self.model.get('description')}")
                self.last_update = _plan_report(plan, self.folder, self.index_dir)
                return self.last_update
        return self._write_update(progress, rebuild=rebuild, ray_address=ray_address)

    def _write_update(self, progress: bool | None, *, rebuild: bool, ray_address: str | None) -> UpdateReport:
        """The update itself, under the writer's lock (the plan said there is work)."""
        from probret.engine.index import IndexWriter, read_header
        from probret.engine.pipeline import PipelineOptions, update_index

        rebuilt: list[str] = []

        def say(msg: str) -> None:
            if "rebuilding" in msg:
                rebuilt.append(msg)
            notes.info(msg)

        o = self.options
        with IndexWriter(self.index_dir, self.settings, model=self.model, wait=self.wait, rebuild=rebuild,
                         say=say) as writer:
            scan = writer.scan(self.folder, retry_failed=self.retry_failed)
            if not scan.total_videos:
                raise self._no_videos()
            notes.info(f"model: {self.model.get('description')}")
            if scan.todo or scan.removed:
                notes.info(f"index {self.index_dir}: {len(scan.new)} new, {len(scan.changed)} changed, "
                           f"{len(scan.removed)} removed, {scan.unchanged} unchanged")
            popts = PipelineOptions(workers=o.workers or 0, batch_segments=o.batch or 16, retry_failed=self.retry_failed,
                                    progress=_show_progress(progress))
            if ray_address is None:
                report = update_index(self.folder, self.runtime, writer, popts, say=say, scan=scan)
            else:  # docs/scaling.md
                from probret.engine.distributed import update_index_ray

                report = update_index_ray(self.folder, self.runtime, writer, popts, say=say, scan=scan,
                                          address=ray_address)
        self._header = read_header(self.index_dir)
        self.last_update = _update_report(report, scan, rebuilt[0] if rebuilt else None)
        return self.last_update

    def _no_videos(self) -> DataError:
        from probret.engine.index import VIDEO_EXTENSIONS

        return DataError(f"{self.folder}: no videos found (looked for {', '.join(sorted(VIDEO_EXTENSIONS))}; hidden "
                         "files and folders are skipped)")

    # -- reading -------------------------------------------------------------------------------
    @property
    def reader(self):
        """The open ``IndexReader`` (a snapshot; reopened after :meth:`update`)."""
        if self._reader is None:
            from probret.engine.index import IndexReader

            self._reader = IndexReader(self.index_dir)
        return self._reader

    @property
    def searcher(self):
        if self._searcher is None:
            from probret.engine.search import Searcher

            self._searcher = Searcher(self.runtime, self.reader, say=notes.info)
        return self._searcher

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = self._searcher = None

    def close(self) -> None:
        self._close_reader()

    def __enter__(self) -> "VideoFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.reader.videos)

    @property
    def failed(self) -> list[SkippedFile]:
        """Files of the index that could not be decoded (in any update so far)."""
        return [SkippedFile(fs_path(p), str(e)) for p, e in self.reader.failed]

    def require_videos(self) -> None:
        r = self.reader
        if r.videos:
            return
        if not r.failed:
            raise DataError(f"{self.index_dir}: the index holds no searchable video yet (run `probret index "
                            f"{self.folder}`, or search without --no-update)")
        first = "; ".join(f"{f.display_path}: {f.reason}" for f in self.failed[:3])
        raise DataError(f"{self.folder}: none of the {len(r.failed)} video file(s) could be decoded "
                        f"({first}{'; ...' if len(r.failed) > 3 else ''})")

    # -- calibration ---------------------------------------------------------------------------
    @property
    def calibrator(self):
        """The bundle's confidence calibrator (engine/calibration.py), or None when it has none."""
        if self._calibrator is None:
            data = getattr(self.bundle, "calibration", None) or self.bundle.manifest.get("calibration")
            if not data:
                self._calibrator = False
            else:
                from probret.engine.calibration import Calibrator

                self._calibrator = Calibrator.from_dict(data)
        return self._calibrator or None

    def _confidences(self, scores: np.ndarray, uncertainty: np.ndarray | None) -> list[float | None]:
        """Calibrated confidence of each ranked hit (``scores`` best first). The signals come from
        engine/calibration.py's ``hit_signals``, the same function the calibrator was fitted with;
        the top hit's margin needs the runner-up, so the caller passes one score more than it shows."""
        cal = self.calibrator
        if cal is None or not len(scores):
            return [None] * len(scores)
        from probret.engine.calibration import hit_signals

        self._note_calibration_domain(cal)
        signals = hit_signals(scores, None if uncertainty is None or "uncertainty" not in cal.signals else uncertainty)
        return [float(c) for c in np.asarray(cal.confidence(signals), dtype=np.float64)]

    def _note_calibration_domain(self, cal) -> None:
        """One line when the folder is far from the gallery the calibrator was fitted on: a
        confidence holds for the gallery size it was fitted at (a bigger gallery has more
        near-misses), so a gallery 4x larger or smaller makes it a rough guide only."""
        if self._domain_noted:
            return
        self._domain_noted = True
        fitted = (cal.domain or {}).get("gallery_size")
        here = len(self.reader.videos)
        if fitted and here and not 0.25 <= here / fitted <= 4:
            where = ", ".join(f"{k} {cal.domain[k]}" for k in ("dataset", "split") if k in cal.domain)
            log.warning(f"confidence was calibrated on a gallery of {fitted} videos ({where}); this index holds "
                        f"{here}, so read it as a rough guide")

    # -- text -> video -------------------------------------------------------------------------
    def search(self, queries: str | Sequence[str], *, top_k: int = 10, min_confidence: float | None = None,
               moments: int = 1, ann: bool | None = None, ann_candidates: int = 1000) -> list[SearchResult]:
        """Rank the indexed videos for each query (one :class:`SearchResult` per query, in order).
        ``moments``: up to this many moments per hit, best first; ``min_confidence``: hide hits
        whose calibrated confidence is lower (needs a bundle with a calibrator); ``ann``: the
        faiss first stage (None: automatic by size, engine/search.py)."""
        o = SearchOptions(top_k=top_k, min_confidence=min_confidence, moments=moments, ann=ann,
                          ann_candidates=ann_candidates)
        qs = [queries] if isinstance(queries, str) else list(queries)
        if not qs:
            raise UsageError("give at least one query")
        for i, q in enumerate(qs):
            if not isinstance(q, str) or not q.strip():
                raise UsageError(f"query {i + 1} is empty")
        if o.min_confidence is not None and self.calibrator is None:
            raise UsageError(f"--min-confidence needs a model that carries a confidence calibrator; "
                             f"{self.model.get('description') or self.bundle.path} has none")
        self.require_videos()
        raw = _search_raw(self.searcher, qs, o, extra=0 if self.calibrator is None else 1)
        self._warn_truncated(qs, [r.truncated for r in raw], "query")
        return [self._result(r, o) for r in raw]

    def _warn_truncated(self, texts: list[str], flags, what: str) -> None:
        """One warning per text cut to the model's context, showing what the model saw."""
        rt, length = self.runtime, self.bundle.context_length
        eot = int(self.bundle.manifest["tokenizer"].get("eot_token_id", 49407))
        for i, (text, cut) in enumerate(zip(texts, flags)):
            if cut:
                ids = rt.tokenize([text])[0][0]
                kept = rt.tokenizer.decode([int(t) for t in ids[1:] if int(t) not in (0, eot)])
                log.warning(f"{what} {i + 1} is longer than the model's {length}-token context; it was cut to: {kept!r}")

    def _result(self, r, o: SearchOptions) -> SearchResult:
        scores = np.array([h.score for h in r.hits], dtype=np.float64)
        unc = None if not r.hits or r.hits[0].uncertainty is None else np.array([h.uncertainty for h in r.hits])
        conf = self._confidences(scores, unc)
        shown = r.hits[:o.top_k]  # _search_raw asked for one more when a calibrator needs the runner-up
        hits = [Hit(path=fs_path(h.path), rank=h.rank, score=float(h.score), confidence=c,
                    uncertainty=None if h.uncertainty is None else float(h.uncertainty),
                    moments=_moments(h, o.moments)) for h, c in zip(shown, conf)]
        note = None
        if o.min_confidence is not None:
            kept = [h for h in hits if h.confidence is not None and h.confidence >= o.min_confidence]
            if not kept:
                note = f"no confident match (no hit reaches confidence {o.min_confidence:g})"
            hits = kept
        return SearchResult(query=r.query, hits=hits, note=note, truncated=bool(r.truncated), ann=bool(r.ann),
                            candidates=int(r.candidates))

    # -- video -> text -------------------------------------------------------------------------
    def rank_captions(self, captions: Sequence[str], *, video: str | os.PathLike | int,
                      top_k: int | None = None) -> CaptionResult:
        """Rank ``captions`` for one video: an indexed one (its path, inside the folder, or its
        position in the index) or any other file, decoded and encoded now with the index's
        settings (so it scores as it would from the index)."""
        captions = list(captions)
        if not captions:
            raise UsageError("no captions to rank")
        if top_k is not None:
            SearchOptions(top_k=top_k)
        pos, shown = self._video_position(video)
        if pos is not None:
            hits, truncated = self.searcher.rank_captions(captions, video=pos, top_k=top_k)
            source = "index"
        else:
            path = Path(os.fsdecode(video))
            if not path.is_file():
                raise DataError(f"--video {path}: no such file")
            tensors, segments = self._encode_now(path)
            hits, truncated = self.searcher.rank_captions(captions, tensors=tensors, segments=segments, top_k=top_k)
            source = "encoded now (not in the index)"
        self._warn_truncated(captions, truncated, "caption")
        # confidence stays None here: the calibrator was fitted on text -> video rankings, and a
        # caption ranking for one video is another distribution of scores and margins
        out = [CaptionHit(caption=h.caption, rank=h.rank, score=float(h.score), confidence=None,
                          uncertainty=None if h.uncertainty is None else float(h.uncertainty),
                          moment=Moment(float(h.start), float(h.end), None, float(h.score)))
               for h in hits]
        return CaptionResult(video=shown, source=source, hits=out, truncated=[bool(t) for t in truncated])

    def _video_position(self, video) -> tuple[int | None, str]:
        if isinstance(video, (int, np.integer)):
            if not 0 <= int(video) < len(self.reader.videos):
                raise UsageError(f"video {video}: the index holds {len(self.reader.videos)} videos")
            return int(video), fs_path(self.reader.videos.path(int(video)))
        path = Path(os.fsdecode(video))
        try:
            rel = Path(os.path.relpath(path.resolve(), self.folder.resolve())).as_posix()
        except ValueError:
            return None, str(path)
        if rel.startswith("../"):
            return None, str(path)
        return self.reader.video_index(rel), str(path)

    def _encode_now(self, path: Path):
        from probret.engine.pipeline import decode_windows, encode_segments

        b, s = self.bundle, self.reader.settings
        size = b.preprocessing["image_size"]
        d = decode_windows(path, float(s.get("window", DEFAULT_WINDOW)), num_frames=b.num_frames,
                           image_size=size if isinstance(size, int) else int(size[0]),
                           mean=b.preprocessing["mean"], std=b.preprocessing["std"],
                           resize=s.get("resize", DEFAULT_RESIZE))
        return encode_segments(self.runtime, d.pixels), d.segments

    # -- text embeddings -----------------------------------------------------------------------
    def encode_text(self, texts: str | Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None,
                    convert_to_numpy: bool = True, normalize_embeddings: bool = False):
        """Sentence embeddings of ``texts`` with sentence-transformers' ``encode`` contract: a
        str gives one (D,) vector, a list an (N, D) float32 array (a list of (D,) arrays with
        ``convert_to_numpy=False``); ``normalize_embeddings`` makes them unit length."""
        from probret.engine.options import BATCH

        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        batch_size = BATCH.check(batch_size)
        starts = range(0, len(items), batch_size)
        if _show_progress(show_progress_bar) and len(items) > batch_size:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches", unit="batch")
        parts = [self.runtime.encode_text(items[i:i + batch_size])["text_sentence"] for i in starts]
        dim = self.bundle.embed_dim
        out = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
        if normalize_embeddings:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _search_raw(searcher, queries: list[str], o: SearchOptions, *, extra: int = 0):
    """engine/search.py's ranking, ``extra`` hits beyond ``top_k`` (the calibrator's runner-up)."""
    return searcher.search(queries, top_k=o.top_k + extra, ann=o.ann, ann_candidates=o.ann_candidates,
                           moments=o.moments)


def _moments(h, limit: int) -> list[Moment]:
    """engine/search.py's hit -> its moments, best first: several when search.py gives them
    (``h.moments``), else the hit's one window."""
    many = getattr(h, "moments", None)
    if many:
        return [Moment(float(m.start), float(m.end), None if m.best_time is None else float(m.best_time),
                       float(getattr(m, "score", h.score))) for m in list(many)[:limit]]
    return [Moment(float(h.start), float(h.end), None if h.best_time is None else float(h.best_time), float(h.score))]


def _files(pairs) -> list[SkippedFile]:
    return [SkippedFile(fs_path(p), str(e)) for p, e in pairs or ()]


def _update_report(report, scan, rebuilt: str | None) -> UpdateReport:
    """engine/pipeline.py's IndexReport -> the facade's UpdateReport. What the walk found and
    never tried (not regular files, folders it could not list) comes from the scan itself."""
    return UpdateReport(added=report.added, removed=report.removed, failed=_files(report.failed),
                        skipped=_files(scan.skipped), unlisted=[fs_path(p) for p in scan.unlisted],
                        updated=report.updated, unchanged=report.unchanged, failed_before=_files(report.failed_before),
                        total_videos=report.total_videos, ignored=report.ignored,
                        encoded_videos=report.encoded_videos, encoded_segments=report.encoded_segments,
                        seconds=report.seconds, stages=dict(report.stages), decode=dict(report.decode),
                        compacted=report.compacted, rebuilt=rebuilt, folder=str(report.folder),
                        index=str(report.index))


def _plan_report(plan, folder: Path, index: Path) -> UpdateReport:
    """The report of an update that had nothing to do (no writer was opened)."""
    return UpdateReport(added=0, removed=0, failed=[], skipped=_files(plan.skipped),
                        unlisted=[fs_path(p) for p in plan.unlisted], unchanged=plan.unchanged,
                        failed_before=_files(plan.failed_before), total_videos=plan.total_videos,
                        ignored=plan.ignored, folder=str(folder), index=str(index))
