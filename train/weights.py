"""Where a backbone's pretrained weights come from, and what to say when they cannot be had.

``resolve_weights(name, pretrained)`` turns what a user wrote (an open_clip tag, a local weight
file, an ``hf-hub:`` / ``local-dir:`` name, or None) into a :class:`WeightPlan`: what to pass to
``open_clip.create_model``, whether the weight host is reachable, and the activation the weights
were trained with. ``train/backbone.py`` builds the model from the plan.

Policy, in one place:

* Weights are never unpickled as arbitrary objects: ``.safetensors`` files are read with
  safetensors, anything else (``.bin``/``.pt``/``.pth``) only through
  ``torch.load(weights_only=True)``, checked here before open_clip reads the file (which closes
  open_clip's fallback to a full unpickle).
* An unreachable host (no network, ``HF_HUB_OFFLINE``) is detected with one TCP probe, so the
  Hub answers from its cache at once instead of retrying for ~45 s; a miss says what to download.
* QuickGELU: OpenAI's CLIP weights were trained with QuickGELU, open_clip's plain ``ViT-B-32``
  config uses GELU, and open_clip only warns on a mismatch. The ``openai`` tag carries the flag
  (``quick_gelu`` in its pretrained config) and gets QuickGELU. A local *file* carries no such
  flag: a file whose path names OpenAI (``openai`` anywhere in it, as in the Hugging Face cache
  folder ``models--timm--vit_base_patch32_clip_224.openai``) gets QuickGELU too; any other file
  loaded into an architecture that has a ``-quickgelu`` variant gets a warning that names the
  fix (use ``ViT-B-32-quickgelu``). Naming the ``-quickgelu`` architecture is always exact.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import open_clip
import torch

from probret.engine.errors import ModelError

log = logging.getLogger("probret.train.backbone")

__all__ = ["WeightPlan", "check_architecture", "hf_offline_env", "network_guard", "resolve_weights", "unreachable_message",
           "NETWORK_PROBE_TIMEOUT"]

#: Seconds to wait for a TCP connection to the weight host before declaring it unreachable.
NETWORK_PROBE_TIMEOUT = float(os.environ.get("PROBRET_NETWORK_TIMEOUT", "5"))
#: Per-socket-operation timeout while open_clip downloads from a plain URL (urllib has none).
DOWNLOAD_SOCKET_TIMEOUT = 60.0

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
QUICKGELU_SUFFIX = "-quickgelu"


@dataclass
class WeightPlan:
    """What ``open_clip.create_model`` gets for one backbone.

    name: the open_clip model name; pretrained: None, a tag or an absolute local file;
    schema: None, "hf-hub" or "local-dir"; what: a human description of the download (for
    errors); offline: the weight host is unreachable (look in caches only);
    open_clip_kwargs: extra create_model arguments (``force_quick_gelu``)."""

    name: str
    pretrained: str | None
    schema: str | None = None
    what: str = ""
    offline: bool = False
    open_clip_kwargs: dict = field(default_factory=dict)

    @property
    def wants_weights(self) -> bool:
        return self.pretrained is not None or self.schema is not None

    @property
    def quick_gelu(self) -> bool:
        return bool(self.open_clip_kwargs.get("force_quick_gelu")) or bool(
            (open_clip.get_model_config(self.name) or {}).get("quick_gelu", False))


# --------------------------------------------------------------------------------------------
# files and hosts
# --------------------------------------------------------------------------------------------
def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or (os.altsep is not None and os.altsep in s)
        or s.startswith((".", "~"))
        or s.lower().endswith(_WEIGHT_SUFFIXES)
    )


def _check_weights_file(path: str) -> None:
    """Refuse a local weight file that is not a plain tensor container.

    ``.safetensors`` cannot hold code. Anything else must load with ``weights_only=True``;
    doing that here (memory-mapped when the file allows it) means open_clip's own loader, which
    falls back to a full unpickle on a ``TypeError``, only ever sees a file that is safe.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - any failure means unusable weights
            raise ModelError(f"{path}: not a readable .safetensors file ({e})") from e
        return
    if p.suffix in (".npz", ".npy"):
        return  # numpy (big_vision) weights: open_clip reads them without pickle
    try:
        try:
            torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            torch.load(str(p), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"{path}: refusing to load: it is not a plain weights file readable with "
            f"torch.load(weights_only=True) ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "probret never unpickles arbitrary objects; convert it to .safetensors "
            "(safetensors.torch.save_file(state_dict, 'open_clip_model.safetensors')) on a machine you trust."
        ) from e


def _weights_source(name: str, tag: str) -> tuple[str, str]:
    """(URL whose host serves the weights, human description of what to download) for a tag,
    following open_clip's preference for the Hugging Face Hub over a plain URL."""
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    hf = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hf and open_clip.pretrained.has_hf_hub():
        # open_clip's convention: 'org/repo/' (default file name) or 'org/repo/file.bin'
        repo, filename = os.path.split(hf)
        files = filename or "open_clip_model.safetensors or open_clip_pytorch_model.bin"
        return _hf_endpoint(), f"the Hugging Face repo {repo} (file {files})"
    if url:
        return url, url
    return "", f"the '{tag}' weights of {name}"


def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # noqa: BLE001
        return "https://huggingface.co"


def hf_offline_env() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:  # noqa: BLE001
        return False


def _proxy_configured() -> bool:
    return any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                            "ALL_PROXY", "all_proxy"))


def _host_reachable(host: str, port: int = 443, timeout: float = NETWORK_PROBE_TIMEOUT) -> bool:
    """One TCP connection attempt, so that an unreachable hub fails in seconds rather than after
    huggingface_hub's ~45 s of retries. Behind a proxy we cannot tell, and assume reachable."""
    if not host or _proxy_configured():
        return True
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _url_reachable(url: str) -> bool:
    if not url:
        return True
    parts = urlparse(url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    return _host_reachable(parts.hostname or "", port)


@contextlib.contextmanager
def network_guard(offline: bool) -> Iterator[None]:
    """While open_clip resolves weights: give plain-URL downloads (urllib, no timeout of its own)
    a socket timeout, and, when the host is known to be unreachable, put huggingface_hub in
    offline mode so that it answers from its cache (or fails) at once instead of retrying.
    Note: the socket default timeout is process-wide while this runs."""
    old_timeout = socket.getdefaulttimeout()
    if old_timeout is None:
        socket.setdefaulttimeout(NETWORK_PROBE_TIMEOUT if offline else DOWNLOAD_SOCKET_TIMEOUT)
    hf_constants = None
    old_offline = None
    if offline:
        try:
            from huggingface_hub import constants as hf_constants

            old_offline = hf_constants.HF_HUB_OFFLINE
            hf_constants.HF_HUB_OFFLINE = True
        except Exception:  # noqa: BLE001
            hf_constants = None
    try:
        yield
    finally:
        if old_timeout is None:
            socket.setdefaulttimeout(None)
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = old_offline


def unreachable_message(name: str, pretrained: str | None, what: str, cause: BaseException | str) -> str:
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:"):]
        fix = (
            f"download the repo {repo} on a machine with internet "
            f"(e.g. `huggingface-cli download {repo} --local-dir ./{repo.split('/')[-1]}`) and pass "
            f"local-dir:/path/to/it as the backbone name, or set HF_HOME (or HF_HUB_CACHE / cache_dir) "
            f"to a Hugging Face cache that has it"
        )
    else:
        fix = (
            f"download {what} on a machine with internet and give the file as the weights "
            f"(probret-train --set model.pretrained=/path/to/open_clip_model.safetensors, probret search "
            f"--model {name}:/path/to/open_clip_model.safetensors), or set HF_HOME (or HF_HUB_CACHE) to a "
            f"cache that has it"
        )
    src = name if pretrained is None else f"{name} with pretrained='{pretrained}'"
    first = str(cause).strip().splitlines()[0].rstrip(". ") if str(cause).strip() else type(cause).__name__
    return f"cannot load pretrained weights for {src}: {first}. To fix: {fix}."


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------
def resolve_weights(name: str, pretrained: str | os.PathLike | None, *,
                    open_clip_kwargs: dict | None = None) -> WeightPlan:
    """Check ``name`` / ``pretrained`` and decide how open_clip loads them (module docstring).
    Raises ModelError naming the fix when the name is unknown or the weights cannot be used."""
    pretrained = _normalise_pretrained(pretrained)
    plan = WeightPlan(name, pretrained, open_clip_kwargs=dict(open_clip_kwargs or {}))
    for prefix in ("hf-hub:", "local-dir:"):
        if name.startswith(prefix):
            plan.schema = prefix[:-1]
    if pretrained is not None and pretrained.startswith(("hf-hub:", "local-dir:")):
        raise ModelError(
            f"pretrained='{pretrained}': pass '{pretrained}' as the backbone name instead "
            "(it carries its own config); pretrained is for a tag or a weight file"
        )
    if plan.schema is not None and pretrained is not None:
        raise ModelError(f"{name} brings its own weights; pretrained must be None (got '{pretrained}')")
    if plan.schema == "hf-hub":
        plan.what = f"the Hugging Face repo {name[len('hf-hub:'):]}"
        plan.offline = hf_offline_env() or not _url_reachable(_hf_endpoint())
    elif plan.schema == "local-dir":
        _check_local_dir(name)
    else:
        arch = check_architecture(name)
        if pretrained is not None and open_clip.get_pretrained_cfg(arch, pretrained):
            _plan_tag(plan, arch)
        elif pretrained is not None:
            _plan_file(plan, arch)
    return plan


def check_architecture(name: str) -> str:
    """The open_clip architecture of a plain backbone name; ModelError with suggestions if unknown."""
    arch = name.replace("/", "-")
    if open_clip.get_model_config(arch) is None:
        close = difflib.get_close_matches(arch, list(open_clip.list_models()), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(
            f"unknown backbone '{name}'. {hint}Known include test-vit-tiny, test-vit-small, ViT-B-32, "
            "ViT-B-16, ViT-L-14 (all: probret.train.backbone.list_backbones()), or use an "
            "hf-hub:org/repo or local-dir:/path name"
        )
    return arch


def _normalise_pretrained(pretrained) -> str | None:
    if pretrained is None:
        return None
    pretrained = os.fspath(pretrained)
    return None if pretrained == "" or pretrained.lower() == "none" else pretrained


def _plan_tag(plan: WeightPlan, arch: str) -> None:
    tag_cfg = open_clip.get_pretrained_cfg(arch, plan.pretrained)
    source_url, plan.what = _weights_source(arch, plan.pretrained)
    if tag_cfg.get("quick_gelu", False) and not open_clip.get_model_config(arch).get("quick_gelu", False):
        # The weights were trained with QuickGELU; open_clip >= 2.x only warns about it.
        plan.open_clip_kwargs.setdefault("force_quick_gelu", True)
    plan.offline = hf_offline_env() or not _url_reachable(source_url)


def _plan_file(plan: WeightPlan, arch: str) -> None:
    pretrained = plan.pretrained
    expanded = os.path.expanduser(pretrained)
    if os.path.isdir(expanded):
        raise ModelError(
            f"pretrained='{pretrained}' is a folder: pass the weight file inside it "
            f"(e.g. {os.path.join(pretrained, 'open_clip_model.safetensors')}), or "
            f"local-dir:{pretrained} as the backbone name if it holds open_clip_config.json"
        )
    if not os.path.isfile(expanded):
        tags = list(open_clip.list_pretrained_tags_by_model(arch))
        if _looks_like_path(pretrained):
            raise ModelError(
                f"weight file not found: {pretrained}. Download the open_clip weights of {plan.name} on a machine "
                "with internet and give that file (probret-train --set model.pretrained=/path/to/file.safetensors; "
                f"probret search --model {plan.name}:/path/to/file.safetensors)"
            )
        raise ModelError(
            f"'{pretrained}' is neither a pretrained tag of {plan.name} nor an existing file. "
            f"Tags of {plan.name}: {', '.join(tags) if tags else '(none)'}"
        )
    plan.pretrained = expanded
    _check_weights_file(expanded)
    _plan_file_activation(plan, arch)


def _plan_file_activation(plan: WeightPlan, arch: str) -> None:
    """QuickGELU for a local weight file (module docstring)."""
    if "force_quick_gelu" in plan.open_clip_kwargs or open_clip.get_model_config(arch).get("quick_gelu", False):
        return  # the caller or the architecture's name says which activation
    sibling = arch + QUICKGELU_SUFFIX
    if open_clip.get_model_config(sibling) is None:
        return  # no QuickGELU variant of this architecture was ever released
    if "openai" in str(Path(plan.pretrained).resolve()).lower():
        plan.open_clip_kwargs["force_quick_gelu"] = True
        log.info("%s: OpenAI weights, building %s with QuickGELU (as %s)", plan.pretrained, arch, sibling)
    else:
        log.warning("%s is loaded into %s with GELU. If these are OpenAI's CLIP weights (trained with QuickGELU) "
                    "use the backbone %s instead; LAION / DataComp weights of %s use GELU and are right as they are",
                    plan.pretrained, arch, sibling, arch)


def _check_local_dir(name: str) -> None:
    folder = Path(name[len("local-dir:"):]).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise ModelError(f"{name}: no open_clip_config.json in {folder}")
    for f in folder.iterdir():
        if f.suffix in (".bin", ".pt", ".pth"):
            _check_weights_file(str(f))
