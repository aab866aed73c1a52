"""Resolve ``--model`` to a verified export bundle (torch-free; torch only when a checkpoint or an
open_clip model must be exported, imported lazily inside the function that does it).

``--model`` accepts, in this order:

* a **bundle** directory (``manifest.json``, written by ``probret-export``): used as it is;
* a **checkpoint** directory (``config.json`` + ``model.safetensors``, written by
  ``probret-train``): exported once through PyTorch (``probret.export``), which the caller is
  told, and cached under ``CACHE/bundles/ckpt-<name>-<hash>``; the hash covers the graph revision (engine.bundle.GRAPHS_REVISION), the checkpoint's
  config and weights, so a retrained checkpoint is exported again. Without PyTorch installed
  this fails with a message saying what to install or to export elsewhere;
* ``NAME:TAG``, an **open_clip** model and pretrained tag (``ViT-B-32:openai``, or a local weights
  file as the tag) for zero-shot use: mean pooling of frames over the pretrained CLIP
  (CLIP4Clip's meanP), saved as a checkpoint and exported once like the above. ``NAME:random``
  gives random weights (benchmarks, tests);
* nothing: the model the index was last built with (when an index exists and its model is
  still at hand), else the **shipped demo model** (``train/pretrained/demo-spem``, a tiny SPEM
  trained on the procedural world), exported once and cached, so search works offline.

CACHE is ``$PROBRET_CACHE``, else ``$XDG_CACHE_HOME/probret``, else ``~/.cache/probret``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from probret.engine.bundle import GRAPHS_REVISION, Bundle, is_bundle, load_bundle, sha256_file
from probret.engine.errors import ModelError

__all__ = ["ResolvedModel", "cache_dir", "demo_checkpoint", "resolve_model", "is_checkpoint", "DEMO_NAME"]

log = logging.getLogger(__name__)

DEMO_NAME = "demo-spem"
_OPEN_CLIP_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*):(?P<tag>.+)$")
#: Frames per clip of zero-shot open_clip models (the X-Pool / T-MASS protocol).
ZERO_SHOT_FRAMES = 12


@dataclass
class ResolvedModel:
    kind: str  # "bundle" | "checkpoint" | "open_clip" | "demo"
    spec: str  # what to pass as --model to get this model again (absolute path or NAME:TAG; "" = demo)
    bundle: Bundle
    description: str

    def to_meta(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "bundle": str(self.bundle.path),
                "bundle_sha256": self.bundle.sha256, "description": self.description, "method": self.bundle.method}


def cache_dir() -> Path:
    env = os.environ.get("PROBRET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "probret"


def demo_checkpoint() -> Path | None:
    """Where the shipped demo checkpoint lives (inside the installed probret.train), or None when
    probret.train is not installed."""
    try:
        spec = importlib.util.find_spec("probret.train")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained" / DEMO_NAME


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _checkpoint_key(ckpt: Path) -> str:
    h = hashlib.sha256()
    h.update(f"graphs-{GRAPHS_REVISION}".encode())
    h.update((ckpt / "config.json").read_bytes())
    h.update(sha256_file(ckpt / "model.safetensors").encode())
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "model"


class _FileLock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _load_cached(out: Path, say) -> Bundle | None:
    if not is_bundle(out):
        return None
    try:
        return load_bundle(out)
    except ModelError as exc:
        say(f"cached bundle {out} is damaged ({exc}); exporting again")
        return None


def export_cached(ckpt: Path, name: str, say: Callable[[str], None], *, what: str = "checkpoint") -> Bundle:
    """The bundle of checkpoint ``ckpt`` from the cache, exporting it through PyTorch first if needed."""
    try:
        key = _checkpoint_key(ckpt)
    except OSError as exc:
        raise ModelError(f"{ckpt}: cannot read the checkpoint ({exc})") from None
    root = cache_dir() / "bundles"
    out = root / f"{_slug(name)}-{key[:16]}"
    bundle = _load_cached(out, say)
    if bundle is not None:
        return bundle
    try:
        from probret.export.exporter import ExportOptions, export_checkpoint
    except ImportError as exc:
        raise ModelError(f"{ckpt} is a PyTorch {what}; running it needs a one-time export to an ONNX bundle, which "
                         f"needs PyTorch ({exc}). Install it (pip install 'probret[train,export]') or export elsewhere "
                         "with `probret-export CKPT --out DIR` and pass --model DIR") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the model cache {root} ({exc.strerror}); set PROBRET_CACHE to a writable "
                         "directory") from None
    with _FileLock(root / f".{out.name}.lock"):
        bundle = _load_cached(out, say)  # another process may have finished it meanwhile
        if bundle is not None:
            return bundle
        say(f"exporting {what} {ckpt} to an ONNX bundle with PyTorch (once; cached in {out})")
        export_checkpoint(ckpt, out, ExportOptions(benchmark_videos=8), progress=lambda m: log.info("export: %s", m))
    return load_bundle(out)


def _open_clip_checkpoint(name: str, tag: str, say: Callable[[str], None]) -> Path:
    out = cache_dir() / "checkpoints" / f"openclip-{_slug(name)}-{_slug(tag)}"
    if is_checkpoint(out):
        return out
    try:
        from probret.train.checkpoint import save_checkpoint
        from probret.train.config import ModelConfig
        from probret.train.model import RetrievalModel
    except ImportError as exc:
        raise ModelError(f"--model {name}:{tag}: zero-shot open_clip models are exported once with PyTorch and "
                         f"open_clip ({exc}); install them (pip install 'probret[train,export]') or pass a bundle") from None
    say(f"building zero-shot model {name} with pretrained weights {tag!r} (mean pooling of {ZERO_SHOT_FRAMES} frames)")
    pretrained = None if tag.lower() in ("random", "none") else tag
    model = RetrievalModel.from_config(ModelConfig(backbone=name, pretrained=pretrained, method="meanp",
                                                   num_frames=ZERO_SHOT_FRAMES, head={}))
    save_checkpoint(out, model, extra={"zero_shot": {"open_clip": name, "pretrained": tag}})
    return out


def _from_path(path: Path, say) -> ResolvedModel:
    if is_bundle(path):
        b = load_bundle(path.resolve())
        return ResolvedModel("bundle", str(path.resolve()), b, f"bundle {path} ({b.method})")
    if path.is_dir() and (path / "config.json").is_file():
        if not (path / "model.safetensors").is_file():
            raise ModelError(f"{path}: checkpoint has no model.safetensors")
        b = export_cached(path, f"ckpt-{path.resolve().parent.name}-{path.name}", say)
        return ResolvedModel("checkpoint", str(path.resolve()), b, f"checkpoint {path} ({b.method}, via bundle {b.path})")
    if path.is_dir():
        raise ModelError(f"{path}: neither a bundle (manifest.json) nor a checkpoint (config.json + model.safetensors)")
    raise ModelError(f"{path}: a model is a directory (a bundle from probret-export or a checkpoint from "
                     "probret-train), not a file")


def _demo(say) -> ResolvedModel:
    ckpt = demo_checkpoint()
    if ckpt is None or not is_checkpoint(ckpt):
        cached = sorted((cache_dir() / "bundles").glob(f"{DEMO_NAME}-*"), key=lambda p: p.stat().st_mtime)
        for c in reversed(cached):
            b = _load_cached(c, say)
            if b is not None:
                return ResolvedModel("demo", "", b, f"shipped demo model ({b.method}, cached bundle {b.path})")
        raise ModelError(f"the shipped demo model is missing ({ckpt or 'probret.train is not installed'}); rebuild "
                         "it with `make demo-model`, or pass --model BUNDLE|CHECKPOINT|NAME:TAG")
    b = export_cached(ckpt, DEMO_NAME, say, what="demo model")
    return ResolvedModel("demo", "", b, f"shipped demo model ({b.method}, bundle {b.path})")


def resolve_model(spec: str | None, *, say: Callable[[str], None] | None = None,
                  previous: dict | None = None) -> ResolvedModel:
    """``--model`` (module docstring) -> a verified bundle. ``previous``: the model meta an existing
    index recorded, used when ``spec`` is None."""
    say = say or (lambda msg: log.info(msg))
    if spec is None or spec == "":
        if previous and previous.get("kind") in ("bundle", "checkpoint", "open_clip") and previous.get("spec"):
            try:
                r = resolve_model(previous["spec"], say=say)
                r.description += " (the index's model)"
                return r
            except ModelError as exc:
                say(f"the index's model {previous['spec']} is not usable ({exc}); using the shipped demo model")
        return _demo(say)
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path, say)
    m = _OPEN_CLIP_SPEC.match(spec)
    if m and "/" not in m.group("name"):
        name, tag = m.group("name"), m.group("tag")
        ckpt = _open_clip_checkpoint(name, tag, say)
        b = export_cached(ckpt, f"openclip-{name}-{tag}", say, what="zero-shot model")
        return ResolvedModel("open_clip", spec, b, f"open_clip {name} ({tag}), zero-shot meanP")
    raise ModelError(f"--model {spec}: no such bundle or checkpoint directory (for a zero-shot open_clip model give "
                     "NAME:TAG, e.g. ViT-B-32:openai)")
