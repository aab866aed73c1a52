"""Export bundles: read and verify (torch-free).

A bundle is the directory ``probret-export`` writes (docs/export.md)::

    BUNDLE/manifest.json              what everything is (format below); not hashed itself
    BUNDLE/text_encoder.onnx          token ids -> sentence (+ token) features
    BUNDLE/frame_encoder.onnx         pixels -> frame features
    BUNDLE/video_side.onnx            frame features -> the per-video tensors an index stores
    BUNDLE/pair_score.onnx            text features + stored video tensors (+ noise) -> scores
    BUNDLE/tokenizer/bpe_simple_vocab_16e6.txt.gz
    BUNDLE/parity.json                the parity report of the export
    BUNDLE/trt/*.plan                 TensorRT engines (only with --trt)
BUNDLE/*.int8.onnx, int8_probe.npz  int8 encoders and their load-time probe (only with --quantize int8)

``manifest.json`` (schema: engine/manifest.py) lists every other file with its sha256 and size.
:func:`load_bundle` validates every manifest key, then checks every file before anything is used,
and refuses a bundle whose files are missing, altered, symlinks, or not listed where the manifest
points, with a :class:`~probret.engine.errors.ModelError` that names the key or file and says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from probret.engine.errors import ModelError
from probret.engine.manifest import (FORMAT as BUNDLE_FORMAT, FORMAT_VERSION as BUNDLE_FORMAT_VERSION, GRAPH_NAMES,
                                     MANIFEST, Manifest, TensorSpec, parse_manifest)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "GRAPH_NAMES", "GRAPHS_REVISION", "MANIFEST", "TensorSpec",
           "GraphSpec", "Bundle", "load_bundle", "sha256_file", "is_bundle"]

#: Revision of the graphs the exporter writes (same format, different nodes: e.g. 2 = ViT towers
#: traced as single Gemms, SPEM pair side with batched bank products). Part of the model cache's
#: key (export/resolve.py), so bundles exported by older graph code are exported again. Bump it
#: whenever export/graphs.py or export/forms.py changes the graphs.
GRAPHS_REVISION = 2


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def is_bundle(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a manifest.json of this format (not verified)."""
    p = Path(path) / MANIFEST
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str = "fp32"
    fp32_file: Path | None = None  # int8 graphs: the fp32 graph the runtime falls back to

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass
class Bundle:
    """A verified bundle. ``spec`` is the validated manifest (engine/manifest.py), ``manifest``
    the same as a JSON dict; the rest are views of it."""

    path: Path
    manifest: dict[str, Any]
    graphs: dict[str, GraphSpec]
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    spec: Manifest | None = None

    @classmethod
    def from_manifest(cls, path: str | Path, spec: Manifest) -> "Bundle":
        """The bundle ``spec`` describes at ``path``, files not verified (the exporter opens its
        graphs this way before it hashes them)."""
        path = Path(path)
        graphs = {}
        for name in GRAPH_NAMES:
            g = spec.graphs[name]
            graphs[name] = GraphSpec(name, _inside(path, g.file), tuple(g.inputs), tuple(g.outputs),
                                     g.precision or "fp32", _inside(path, g.fp32_file) if g.fp32_file else None)
        engines = {n: asdict(e) for n, e in (spec.engines or {}).items()}
        return cls(path=path, manifest=spec.to_dict(), graphs=graphs, engines=engines, spec=spec)

    # -- convenience views ----------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def num_frames(self) -> int:
        return self.spec.num_frames

    @property
    def context_length(self) -> int:
        return self.spec.tokenizer.context_length

    @property
    def preprocessing(self) -> dict[str, Any]:
        return asdict(self.spec.preprocessing)

    @property
    def sampling(self) -> dict[str, Any]:
        return asdict(self.spec.sampling)

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The confidence calibration fitted at export (engine/calibration.py), or None."""
        return self.spec.calibration

    @property
    def noise_specs(self) -> list[dict[str, Any]]:
        """Noise inputs of the pair graph, in drawing order (empty unless mode noise-input)."""
        s = self.spec.sampling
        return [asdict(n) for n in s.noise] if s.mode == "noise-input" else []

    @property
    def video_outputs(self) -> list[str]:
        """Names of the per-video tensors the video-side graph produces (what an index stores)."""
        return self.graphs["video_side"].output_names

    @property
    def has_uncertainty(self) -> bool:
        return "uncertainty" in self.graphs["pair_score"].output_names

    @property
    def tokenizer_file(self) -> Path:
        return _inside(self.path, self.spec.tokenizer.file)

    @property
    def int8_probe(self) -> tuple[Path, float] | None:
        """(probe file, tolerance) of an int8 bundle, else None (engine/int8_probe.py)."""
        q = self.spec.quantization
        if q is None or q.probe is None:
            return None
        return _inside(self.path, q.probe.file), q.probe.tolerance

    @property
    def sha256(self) -> str:
        """One hash for the whole bundle: sha256 of manifest.json (which pins every file)."""
        return sha256_file(self.path / MANIFEST)

    def graph_path(self, name: str) -> Path:
        return self.graphs[name].file

    def engine_path(self, name: str) -> Path | None:
        e = self.engines.get(name)
        return None if e is None else _inside(self.path, e["file"])


def _inside(bundle: Path, rel: str) -> Path:
    """``bundle/rel`` for a path the manifest schema already checked (relative, no ``..``)."""
    return bundle.joinpath(*PurePosixPath(rel).parts)


def _read_manifest(path: Path) -> Manifest:
    if not path.exists():
        raise ModelError(f"{path}: no such bundle directory")
    if not path.is_dir():
        raise ModelError(f"{path}: a bundle is a directory (written by probret-export), not a file")
    mf = path / MANIFEST
    if not mf.is_file():
        raise ModelError(f"{path}: not a probret bundle (no {MANIFEST}); create one with probret-export CKPT --out DIR")
    if mf.is_symlink():
        raise ModelError(f"{mf}: is a symlink; a bundle's files are its own, not links (re-export the checkpoint)")
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{mf}: unreadable or not valid JSON ({exc})") from None
    return parse_manifest(data, where=str(mf))


def _check_no_symlink(path: Path, rel: str) -> Path:
    """``path/rel``, refusing a symlink anywhere along it inside the bundle (a link could point
    outside the bundle, at files the manifest's hashes were never meant to vouch for)."""
    f = path
    for part in PurePosixPath(rel).parts:
        f = f / part
        try:
            st = os.lstat(f)
        except FileNotFoundError:
            raise ModelError(f"bundle {path}: {rel} is listed in {MANIFEST} but missing; the bundle is incomplete, "
                             "re-export it") from None
        if stat.S_ISLNK(st.st_mode):
            raise ModelError(f"bundle {path}: {rel} is a symlink ({f.relative_to(path)}); a bundle holds its own "
                             "files, re-export the checkpoint instead of linking")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"bundle {path}: {rel} is not a regular file")
    return f


#: A file changed less than this long before it was hashed is not vouched for by its stamps: file
#: times tick coarsely (a few ms), so a change right after the hash could leave them equal.
_STAMP_SETTLE_NS = 2_000_000_000
_VERIFIED_FORMAT = "probret-bundle-verified"


def _verify_files(path: Path, spec: Manifest) -> None:
    """Every listed file: no symlink, its size, its sha256. The hashing is skipped when a record in
    CACHE/bundle-verified/ (keyed by the bundle's real path and the manifest's files table) says
    these very files were hashed and found right, and none has changed since: same size, mtime,
    ctime, inode and device. Any write to a file moves its ctime, which no unprivileged process
    can set back (the index's shard check, engine/index/layout.py, rests on the same rule). Why:
    hashing the demo bundle's 8 MB took ~10 ms of every CLI search (docs/benchmarks.md)."""
    if not spec.files:
        raise ModelError(f"bundle {path}: manifest lists no files")
    stamps = {}
    for rel, meta in sorted(spec.files.items()):
        f = _check_no_symlink(path, rel)
        st = f.stat()
        if meta.bytes != st.st_size:
            raise ModelError(f"bundle {path}: {rel} has {st.st_size} bytes but {MANIFEST} says {meta.bytes}: "
                             "the file was modified or truncated after export; re-export the checkpoint")
        stamps[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    record = _verified_record(path, spec)
    if record is not None and _read_stamps(record) == stamps:
        return
    for rel, meta in sorted(spec.files.items()):
        f = path / rel
        actual = sha256_file(f)
        if actual != meta.sha256:
            raise ModelError(f"bundle {path}: {rel} does not match {MANIFEST} (sha256 {actual[:16]}..., expected "
                             f"{meta.sha256[:16]}...): the file was modified or corrupted after export, or the manifest "
                             "was edited; re-export the checkpoint")
    _record_stamps(record, stamps)


def _verified_record(path: Path, spec: Manifest) -> Path | None:
    try:
        from probret.engine.cache import cache_dir

        files = json.dumps({rel: [m.sha256, m.bytes] for rel, m in sorted(spec.files.items())})
        key = hashlib.sha256(f"{os.path.realpath(path)}\n{files}".encode("utf-8", "surrogateescape")).hexdigest()
        return cache_dir() / "bundle-verified" / f"{key[:40]}.json"
    except Exception:  # noqa: BLE001 - no usable cache: hash every time
        return None


def _read_stamps(record: Path) -> dict | None:
    from probret.engine.fsutil import read_versioned_json

    data = read_versioned_json(record, fmt=_VERIFIED_FORMAT, version=1)
    return data.get("stamps") if data else None


def _record_stamps(record: Path | None, stamps: dict) -> None:
    """Remember that the files with these stamps hashed right, unless one changed too recently
    for its stamps to vouch for it (_STAMP_SETTLE_NS)."""
    import time

    if record is None or any(s[2] > time.time_ns() - _STAMP_SETTLE_NS for s in stamps.values()):
        return
    try:
        from probret.engine.fsutil import atomic_write_json

        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, {"format": _VERIFIED_FORMAT, "format_version": 1, "stamps": stamps})
    except OSError:
        pass  # an unwritable cache only costs hashing again next time


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and validate ``path/manifest.json`` (engine/manifest.py) and (``verify=True``, the
    default) check every file's size and sha256 against it. Raises ModelError naming the key or
    the file and the reason on any problem."""
    path = Path(path)
    spec = _read_manifest(path)
    if verify:
        _verify_files(path, spec)
    return Bundle.from_manifest(path, spec)
