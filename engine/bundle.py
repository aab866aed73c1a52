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

``manifest.json`` lists every other file with its sha256 and size. :func:`load_bundle` checks
all of them before anything is used and refuses a bundle whose files are missing, altered or
not listed where the manifest points, with a :class:`~probret.engine.errors.ModelError` that
names the file and says why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from probret.engine._version import __version__
from probret.engine.errors import ModelError

__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "GRAPH_NAMES", "TensorSpec", "GraphSpec", "Bundle",
           "load_bundle", "sha256_file", "is_bundle"]

BUNDLE_FORMAT = "probret-bundle"
BUNDLE_FORMAT_VERSION = 1
#: Revision of the graphs the exporter writes (same format, different nodes: e.g. 2 = ViT towers
#: traced as single Gemms, SPEM pair side with batched bank products). Part of the model cache's
#: key (export/resolve.py), so bundles exported by older graph code are exported again. Bump it
#: whenever export/graphs.py or export/forms.py changes the graphs.
GRAPHS_REVISION = 2
MANIFEST = "manifest.json"
#: The four graphs of every bundle, in pipeline order.
GRAPH_NAMES = ("text_encoder", "frame_encoder", "video_side", "pair_score")


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
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: dims are ints (fixed) or strings (dynamic, e.g. "N_t")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass
class Bundle:
    """A verified bundle. ``manifest`` is the parsed manifest.json; the rest are views of it."""

    path: Path
    manifest: dict[str, Any]
    graphs: dict[str, GraphSpec]
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- convenience views ----------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def num_frames(self) -> int:
        return int(self.manifest["num_frames"])

    @property
    def context_length(self) -> int:
        return int(self.manifest["tokenizer"]["context_length"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.manifest["preprocessing"]

    @property
    def sampling(self) -> dict[str, Any]:
        return self.manifest["sampling"]

    @property
    def noise_specs(self) -> list[dict[str, Any]]:
        """Noise inputs of the pair graph, in drawing order (empty unless mode noise-input)."""
        s = self.sampling
        return list(s.get("noise", [])) if s.get("mode") == "noise-input" else []

    @property
    def video_outputs(self) -> list[str]:
        """Names of the per-video tensors the video-side graph produces (what an index stores)."""
        return self.graphs["video_side"].output_names

    @property
    def has_uncertainty(self) -> bool:
        return "uncertainty" in self.graphs["pair_score"].output_names

    @property
    def tokenizer_file(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]

    @property
    def sha256(self) -> str:
        """One hash for the whole bundle: sha256 of manifest.json (which pins every file)."""
        return sha256_file(self.path / MANIFEST)

    def graph_path(self, name: str) -> Path:
        return self.graphs[name].file

    def engine_path(self, name: str) -> Path | None:
        e = self.engines.get(name)
        return None if e is None else self.path / e["file"]


def _safe_relative(bundle: Path, rel: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ModelError(f"bundle {bundle}: manifest names the file {rel!r}, which is not a path inside the bundle")
    return bundle.joinpath(*p.parts)


def _read_manifest(path: Path) -> dict:
    if not path.exists():
        raise ModelError(f"{path}: no such bundle directory")
    if not path.is_dir():
        raise ModelError(f"{path}: a bundle is a directory (written by probret-export), not a file")
    mf = path / MANIFEST
    if not mf.is_file():
        raise ModelError(f"{path}: not a probret bundle (no {MANIFEST}); create one with probret-export CKPT --out DIR")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{mf}: unreadable or not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{mf}: not a probret bundle manifest (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelError(f"{mf}: bad format_version {version!r}")
    if version > BUNDLE_FORMAT_VERSION:
        raise ModelError(f"{mf}: bundle format {version} is newer than this probret ({__version__}) reads "
                         f"(format {BUNDLE_FORMAT_VERSION}); upgrade probret")
    for key in ("files", "graphs", "tokenizer", "preprocessing", "sampling", "method", "embed_dim", "num_frames"):
        if key not in manifest:
            raise ModelError(f"{mf}: manifest has no {key!r} entry (damaged or hand-edited)")
    return manifest


def _verify_files(path: Path, manifest: dict) -> None:
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise ModelError(f"bundle {path}: manifest lists no files")
    for rel, meta in sorted(files.items()):
        f = _safe_relative(path, rel)
        if not f.is_file():
            raise ModelError(f"bundle {path}: {rel} is listed in {MANIFEST} but missing; the bundle is incomplete, re-export it")
        try:
            expected = str(meta["sha256"]).lower()
        except (KeyError, TypeError):
            raise ModelError(f"bundle {path}: {MANIFEST} has no sha256 for {rel}") from None
        size = meta.get("bytes") if isinstance(meta, dict) else None
        actual_size = f.stat().st_size
        if size is not None and int(size) != actual_size:
            raise ModelError(f"bundle {path}: {rel} has {actual_size} bytes but {MANIFEST} says {size}: "
                             "the file was modified or truncated after export; re-export the checkpoint")
        actual = sha256_file(f)
        if actual != expected:
            raise ModelError(f"bundle {path}: {rel} does not match {MANIFEST} (sha256 {actual[:16]}..., expected "
                             f"{expected[:16]}...): the file was modified or corrupted after export, or the manifest "
                             "was edited; re-export the checkpoint")


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read ``path/manifest.json`` and (``verify=True``, the default) check every file's size and
    sha256 against it. Raises ModelError naming the file and the reason on any mismatch."""
    path = Path(path)
    manifest = _read_manifest(path)
    if verify:
        _verify_files(path, manifest)
    files = manifest["files"]
    graphs: dict[str, GraphSpec] = {}
    for name in GRAPH_NAMES:
        g = manifest["graphs"].get(name)
        if g is None:
            raise ModelError(f"bundle {path}: {MANIFEST} has no {name} graph")
        rel = g.get("file")
        if rel not in files:
            raise ModelError(f"bundle {path}: graph {name} points at {rel!r}, which is not among the hashed files")
        try:
            graphs[name] = GraphSpec(name, _safe_relative(path, rel),
                                     tuple(TensorSpec.from_dict(t) for t in g["inputs"]),
                                     tuple(TensorSpec.from_dict(t) for t in g["outputs"]))
        except (KeyError, TypeError) as exc:
            raise ModelError(f"bundle {path}: graph {name} has a malformed entry in {MANIFEST} ({exc})") from None
    engines = dict(manifest.get("engines") or {})
    for name, e in engines.items():
        if e.get("file") not in files:
            raise ModelError(f"bundle {path}: TensorRT engine {name} points at {e.get('file')!r}, which is not among the hashed files")
    tok = manifest["tokenizer"].get("file")
    if tok not in files:
        raise ModelError(f"bundle {path}: tokenizer file {tok!r} is not among the hashed files")
    return Bundle(path=path, manifest=manifest, graphs=graphs, engines=engines)
