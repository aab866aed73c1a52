"""Resolve ``--model`` to a verified export bundle. This sits above the engine (which only opens
bundles): importing it needs no torch, and torch is imported, lazily, only where a checkpoint or
an open_clip model has to be exported.

``--model`` accepts, in this order:

* a **bundle** directory (``manifest.json``, written by ``probret-export``): used as it is;
* a **checkpoint** directory (``config.json`` + ``model.safetensors``, written by
  ``probret-train``): exported once through PyTorch (``probret.export``), which the caller is
  told, and cached under ``CACHE/bundles/ckpt-<name>-<hash>``; the hash covers the graph revision
  (engine.bundle.GRAPHS_REVISION), the checkpoint's config and weights, so a retrained checkpoint
  is exported again. Without PyTorch installed this fails with a message saying what to install
  or to export elsewhere;
* ``NAME:TAG``, an **open_clip** model and pretrained tag (``ViT-B-32:openai``, or a local weights
  file as the tag) for zero-shot use: mean pooling of frames over the pretrained CLIP
  (CLIP4Clip's meanP), saved as a checkpoint and exported once like the above. The cache key of a
  weights file is its content's sha256 (memoised per path, size and mtime), so replacing the file
  builds the model again. ``NAME:random`` gives random weights (benchmarks, tests);
* nothing: the model the index was built with (``previous``: when it cannot be found that is an
  error naming it, never a silent rebuild with another model), else the **shipped demo model**:
  the bundle in ``probret/export/pretrained/demo-spem`` (exported from
  ``train/pretrained/demo-spem`` by ``make demo-bundle``, see export/demo_bundle.py), which runs
  without torch.

CACHE is engine/cache.py's ``cache_dir()``.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from probret.engine.bundle import GRAPHS_REVISION, Bundle, is_bundle, load_bundle, sha256_file
from probret.engine.cache import cache_dir
from probret.engine.errors import ModelError
from probret.engine.fsutil import atomic_write_text

__all__ = ["ResolvedModel", "resolve_model", "is_checkpoint", "demo_checkpoint", "demo_caveat", "DEMO_NAME",
           "SHIPPED_DEMO_BUNDLE", "MODEL_KINDS"]

log = logging.getLogger("probret.notes")

DEMO_NAME = "demo-spem"
#: The shipped demo bundle (package data of probret.export; torch-free to run).
SHIPPED_DEMO_BUNDLE = Path(__file__).resolve().parent / "pretrained" / DEMO_NAME
MODEL_KINDS = ("bundle", "checkpoint", "open_clip", "demo")
_OPEN_CLIP_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*):(?P<tag>.+)$")
#: Frames per clip of zero-shot open_clip models (the X-Pool / T-MASS protocol).
ZERO_SHOT_FRAMES = 12

Say = Callable[[str], None]


@dataclass
class ResolvedModel:
    kind: str  # one of MODEL_KINDS
    spec: str  # what to pass as --model to get this model again (absolute path or NAME:TAG; "" = demo)
    bundle: Bundle
    description: str

    def to_meta(self) -> dict:
        """What an index records about its model (engine/facade.py stores it, this module reads
        it back as ``previous``)."""
        return {"kind": self.kind, "spec": self.spec, "bundle": str(self.bundle.path),
                "bundle_sha256": self.bundle.sha256, "description": self.description, "method": self.bundle.method}


def demo_checkpoint() -> Path | None:
    """The shipped demo checkpoint (inside the installed probret.train), or None when
    probret.train is not installed. Found without importing probret.train."""
    import importlib.util

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
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def content_digest(path: Path) -> str:
    """sha256 of a (large) weights file, memoised in the cache per (real path, inode, size,
    mtime), so a replaced file is hashed again and an unchanged one costs a stat."""
    real = path.resolve()
    st = real.stat()
    key = hashlib.sha256(f"{real}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir() / "digests" / key
    try:
        text = memo.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", text):
            return text
    except OSError:
        pass
    digest = sha256_file(real)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, digest + "\n")
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return digest


def _load_cached(out: Path, say: Say) -> Bundle | None:
    if not is_bundle(out):
        return None
    try:
        return load_bundle(out)
    except ModelError as exc:
        say(f"cached bundle {out} is damaged ({exc}); exporting again")
        return None


def _import_exporter(ckpt: Path, what: str):
    try:
        from probret.export.exporter import ExportOptions, export_checkpoint
    except ImportError as exc:
        raise ModelError(f"{ckpt} is a PyTorch {what}; running it needs a one-time export to an ONNX bundle, which "
                         f"needs PyTorch ({exc}). Install it (pip install 'probret[train,export]') or export elsewhere "
                         "with `probret-export CKPT --out DIR` and pass --model DIR") from None
    return ExportOptions, export_checkpoint


def export_cached(ckpt: Path, name: str, say: Say, *, what: str = "checkpoint") -> Bundle:
    """The bundle of checkpoint ``ckpt`` from the cache, exporting it through PyTorch first if
    needed (progress lines go to ``say``)."""
    try:
        key = _checkpoint_key(ckpt)
    except OSError as exc:
        raise ModelError(f"{ckpt}: cannot read the checkpoint ({exc})") from None
    root = cache_dir() / "bundles"
    out = root / f"{_slug(name)}-{key[:16]}"
    bundle = _load_cached(out, say)
    if bundle is not None:
        return bundle
    ExportOptions, export_checkpoint = _import_exporter(ckpt, what)
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
        t0 = time.perf_counter()
        export_checkpoint(ckpt, out, ExportOptions(benchmark_videos=8),
                          progress=lambda m: say(f"  export [{time.perf_counter() - t0:5.1f} s]: {m}"))
    return load_bundle(out)


def _tag_key(tag: str) -> str:
    """Cache key of an open_clip pretrained tag: a file's content hash, else the tag itself."""
    path = Path(tag).expanduser()
    if path.is_file():
        try:
            return "file-" + content_digest(path)[:24]
        except OSError as exc:
            raise ModelError(f"--model weights file {tag}: unreadable ({exc.strerror})") from None
    return _slug(tag) + "-" + hashlib.sha256(tag.encode()).hexdigest()[:8]


def _open_clip_checkpoint(name: str, tag: str, say: Say) -> Path:
    out = cache_dir() / "checkpoints" / f"openclip-{_slug(name)}-{_tag_key(tag)}"
    if is_checkpoint(out):
        return out
    try:
        from probret.train.checkpoint import save_checkpoint
        from probret.train.config import ModelConfig
        from probret.train.model import RetrievalModel
    except ImportError as exc:
        raise ModelError(f"--model {name}:{tag}: zero-shot open_clip models are exported once with PyTorch and "
                         f"open_clip ({exc}); install them (pip install 'probret[train,export]') or pass a bundle") from None
    say(f"building zero-shot model {name} with pretrained weights {tag!r} (mean pooling of {ZERO_SHOT_FRAMES} frames; "
        "once, then cached)")
    t0 = time.perf_counter()
    pretrained = None if tag.lower() in ("random", "none") else tag
    try:
        model = RetrievalModel.from_config(ModelConfig(backbone=name, pretrained=pretrained, method="meanp",
                                                       num_frames=ZERO_SHOT_FRAMES, head={}))
    except ModelError as exc:
        # train/weights.py gives advice for both probret-train and probret search; keep search's
        advice = re.sub(r"probret-train --set model\.pretrained=[^,;)\s]+[,;]?\s*", "", str(exc))
        raise ModelError(f"--model {name}:{tag}: " + advice.replace("pass --pretrained ", f"pass --model {name}:")) from None
    save_checkpoint(out, model, extra={"zero_shot": {"open_clip": name, "pretrained": tag}})
    say(f"  built {name} in {time.perf_counter() - t0:.1f} s")
    return out


def _from_path(path: Path, say: Say) -> ResolvedModel:
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


def _demo(say: Say) -> ResolvedModel:
    if is_bundle(SHIPPED_DEMO_BUNDLE):
        b = load_bundle(SHIPPED_DEMO_BUNDLE)
        return ResolvedModel("demo", "", b, f"shipped demo model ({b.method})")
    ckpt = demo_checkpoint()  # a source tree whose shipped bundle is not built yet
    if ckpt is None or not is_checkpoint(ckpt):
        raise ModelError(f"the shipped demo model is missing ({SHIPPED_DEMO_BUNDLE}); rebuild it with "
                         "`make demo-bundle`, or pass --model BUNDLE|CHECKPOINT|NAME:TAG")
    b = export_cached(ckpt, DEMO_NAME, say, what="demo model")
    return ResolvedModel("demo", "", b, f"shipped demo model ({b.method}, bundle {b.path})")


def demo_caveat(folder: str | os.PathLike) -> str | None:
    """One line for a folder the demo model was not made for: it only knows the procedural world
    (a folder written by ``probret synth`` has ``world.json`` beside or above its videos)."""
    folder = Path(folder)
    if any((d / "world.json").is_file() for d in (folder, folder.parent)):
        return None
    return ("the default model is the tiny demo model, which only knows the procedural world's shapes, colours and "
            f"motions; for real footage use an open_clip model: probret search {folder} QUERY --model ViT-B-32:openai")


def _previous(previous: dict, say: Say) -> ResolvedModel:
    """The model an index recorded; an error naming it when it is gone."""
    spec = previous.get("spec")
    what = previous.get("description") or spec
    try:
        r = resolve_model(spec, say=say)
    except ModelError as exc:
        raise ModelError(f"the index was built with {what}, which cannot be used now ({exc}); make it available "
                         "again, or pass --model with another model to re-index the folder with it") from None
    r.description += " (the index's model)"
    return r


def resolve_model(spec: str | None, *, say: Say | None = None, previous: dict | None = None) -> ResolvedModel:
    """``--model`` (module docstring) -> a verified bundle. ``previous``: the model meta an existing
    index recorded, used when ``spec`` is None."""
    say = say or log.info
    if spec is None or spec == "":
        if previous and previous.get("kind") in ("bundle", "checkpoint", "open_clip") and previous.get("spec"):
            return _previous(previous, say)
        return _demo(say)
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path, say)
    m = _OPEN_CLIP_SPEC.match(spec)
    if m and "/" not in m.group("name"):
        name, tag = m.group("name"), m.group("tag")
        ckpt = _open_clip_checkpoint(name, tag, say)
        b = export_cached(ckpt, f"openclip-{name}", say, what="zero-shot model")
        return ResolvedModel("open_clip", spec, b, f"open_clip {name} ({tag}), zero-shot meanP")
    raise ModelError(f"--model {spec}: no such bundle or checkpoint directory (for a zero-shot open_clip model give "
                     "NAME:TAG, e.g. ViT-B-32:openai)")
