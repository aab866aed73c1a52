"""The CLIP backbone: a thin wrapper over open_clip.

``create_backbone(name, pretrained)`` builds an open_clip model the standard open_clip way (a
built-in architecture name plus a pretrained tag or a local weight file, or an ``hf-hub:`` /
``local-dir:`` name) and wraps it in :class:`Backbone`, which gives the rest of probret the
two calls it needs:

* ``encode_text(token_ids) -> TextFeatures``: the sentence feature (exactly open_clip's
  ``encode_text``: the projected end-of-text feature, not normalised) plus the per-token features
  of the same pass (after ``ln_final`` and ``text_projection``) and a mask of the real tokens;
* ``encode_frames(pixels (B, T, 3, H, W)) -> (B, T, D)``: the image tower run once on B*T images.

Importing this module registers probret's tiny from-scratch configs (``test-vit-tiny``,
``test-vit-small``; ``train/model_configs/*.json``) with open_clip, so
``open_clip.create_model_and_transforms("test-vit-tiny")`` works after it.

Weights are never unpickled as arbitrary objects: ``.safetensors`` files are read with
safetensors, anything else (``.bin``/``.pt``/``.pth``) only through ``torch.load(weights_only=True)``
(a local file is checked that way by probret before open_clip reads it, which closes open_clip's
fallback to a full unpickle). When weights cannot be reached (no network, ``HF_HUB_OFFLINE``, a
missing file) a :class:`~probret.engine.errors.ModelError` says what to do. See docs/backbone.md.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import Tensor, nn

from probret.engine.errors import ModelError
from probret.train.methods.base import TextFeatures

log = logging.getLogger(__name__)

__all__ = [
    "Backbone",
    "create_backbone",
    "list_backbones",
    "list_pretrained_tags",
    "register_model_configs",
    "MODEL_CONFIG_DIR",
    "FREEZE_MODES",
]

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
#: Vocabulary size of open_clip's default tokenizer (SimpleTokenizer, OpenAI's BPE).
SIMPLE_TOKENIZER_VOCAB = 49408
FREEZE_MODES = ("none", "all", "text", "vision", "partial:N")

#: Seconds to wait for a TCP connection to the weight host before declaring it unreachable.
NETWORK_PROBE_TIMEOUT = float(os.environ.get("PROBRET_NETWORK_TIMEOUT", "5"))
#: Per-socket-operation timeout while open_clip downloads from a plain URL (urllib has none).
DOWNLOAD_SOCKET_TIMEOUT = 60.0

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def register_model_configs() -> None:
    """Register ``train/model_configs/*.json`` with open_clip (idempotent; done on import)."""
    paths = getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])
    if any(Path(p).resolve() == MODEL_CONFIG_DIR for p in paths):
        return
    open_clip.add_model_config(MODEL_CONFIG_DIR)


register_model_configs()


def list_backbones() -> list[str]:
    """Every architecture open_clip knows, probret's ``test-vit-*`` configs included."""
    return list(open_clip.list_models())


def list_pretrained_tags(name: str) -> list[str]:
    """The pretrained tags open_clip knows for an architecture (e.g. ``openai``)."""
    return list(open_clip.list_pretrained_tags_by_model(name))


# --------------------------------------------------------------------------------------------
# weight resolution
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


def _hf_offline_env() -> bool:
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
def _network_guard(offline: bool) -> Iterator[None]:
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


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(active: bool) -> Iterator[None]:
    """open_clip logs a root-logger warning on every random init; asked-for random init is no news."""
    if not active:
        yield
        return
    flt = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _unreachable_message(name: str, pretrained: str | None, what: str, cause: BaseException | str) -> str:
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
            f"download {what} on a machine with internet and pass --pretrained "
            f"/path/to/open_clip_model.safetensors, or set HF_HOME (or HF_HUB_CACHE / cache_dir) to a cache "
            f"that has it"
        )
    src = name if pretrained is None else f"{name} with pretrained='{pretrained}'"
    first = str(cause).strip().splitlines()[0].rstrip(". ") if str(cause).strip() else type(cause).__name__
    return f"cannot load pretrained weights for {src}: {first}. To fix: {fix}."


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------
def create_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    freeze: str = "none",
    precision: str = "fp32",
    open_clip_kwargs: dict | None = None,
) -> "Backbone":
    """Build an open_clip model and wrap it.

    name: an open_clip architecture (``ViT-B-32``, ``test-vit-tiny``, see :func:`list_backbones`),
        ``hf-hub:org/repo`` (config and weights from the Hub) or ``local-dir:/path`` (a folder with
        ``open_clip_config.json`` and weights).
    pretrained: None (random init), an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...) or a
        local weight file (``.safetensors`` preferred; ``.bin``/``.pt``/``.pth`` only if they load
        with ``torch.load(weights_only=True)``). Must be None for ``hf-hub:``/``local-dir:`` names.
    cache_dir: download cache (passed to open_clip / huggingface_hub); default: HF_HUB_CACHE /
        HF_HOME for Hub downloads, ~/.cache/clip for plain URLs.
    freeze: "none" | "all" | "text" | "vision" | "partial:N" (see :meth:`Backbone.set_freeze`).
    precision: open_clip precision ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16", ...).
    open_clip_kwargs: extra keyword arguments for ``open_clip.create_model`` (``force_quick_gelu``,
        ``force_custom_text``, ``force_image_size``, ...).

    Raises ModelError when the name is unknown or the weights cannot be found, reached or read.
    """
    register_model_configs()
    _parse_freeze(freeze)  # fail before building anything
    kwargs = dict(open_clip_kwargs or {})
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        if pretrained == "" or pretrained.lower() == "none":
            pretrained = None

    schema = None
    for prefix in ("hf-hub:", "local-dir:"):
        if name.startswith(prefix):
            schema = prefix[:-1]
    if pretrained is not None and pretrained.startswith(("hf-hub:", "local-dir:")):
        raise ModelError(
            f"pretrained='{pretrained}': pass '{pretrained}' as the backbone name instead "
            "(it carries its own config); pretrained is for a tag or a weight file"
        )
    if schema is not None and pretrained is not None:
        raise ModelError(f"{name} brings its own weights; pretrained must be None (got '{pretrained}')")

    offline = False
    what = ""
    if schema is None:
        arch = name.replace("/", "-")
        if open_clip.get_model_config(arch) is None:
            close = difflib.get_close_matches(arch, list_backbones(), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ModelError(
                f"unknown backbone '{name}'. {hint}Known include test-vit-tiny, test-vit-small, ViT-B-32, "
                "ViT-B-16, ViT-L-14 (all: probret.train.backbone.list_backbones()), or use an "
                "hf-hub:org/repo or local-dir:/path name"
            )
        if pretrained is not None:
            tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
            if tag_cfg:
                source_url, what = _weights_source(arch, pretrained)
                if tag_cfg.get("quick_gelu", False) and not open_clip.get_model_config(arch).get("quick_gelu", False):
                    # The weights were trained with QuickGELU; open_clip >= 2.x only warns about it.
                    kwargs.setdefault("force_quick_gelu", True)
                offline = _hf_offline_env() or not _url_reachable(source_url)
            else:
                expanded = os.path.expanduser(pretrained)
                if os.path.isdir(expanded):
                    raise ModelError(
                        f"pretrained='{pretrained}' is a folder: pass the weight file inside it "
                        f"(e.g. {os.path.join(pretrained, 'open_clip_model.safetensors')}), or "
                        f"local-dir:{pretrained} as the backbone name if it holds open_clip_config.json"
                    )
                if not os.path.isfile(expanded):
                    tags = list_pretrained_tags(arch)
                    if _looks_like_path(pretrained):
                        raise ModelError(
                            f"weight file not found: {pretrained}. Download the open_clip weights of {name} "
                            "on a machine with internet and pass --pretrained /path/to/open_clip_model.safetensors"
                        )
                    raise ModelError(
                        f"'{pretrained}' is neither a pretrained tag of {name} nor an existing file. "
                        f"Tags of {name}: {', '.join(tags) if tags else '(none)'}"
                    )
                pretrained = expanded
                _check_weights_file(pretrained)
    elif schema == "hf-hub":
        what = f"the Hugging Face repo {name[len('hf-hub:'):]}"
        offline = _hf_offline_env() or not _url_reachable(_hf_endpoint())
    else:  # local-dir
        folder = Path(name[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ModelError(f"{name}: no open_clip_config.json in {folder}")
        for f in folder.iterdir():
            if f.suffix in (".bin", ".pt", ".pth"):
                _check_weights_file(str(f))

    if offline and not _hf_offline_env():
        log.warning("weight host unreachable (no network?): looking for %s in the local caches only", what or name)
    wants_weights = pretrained is not None or schema is not None
    try:
        with _network_guard(offline), _quiet_random_init(not wants_weights), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
            model = open_clip.create_model(
                name,
                pretrained=pretrained,
                precision=precision,
                device=device,
                cache_dir=cache_dir,
                require_pretrained=wants_weights,
                weights_only=True,
                **kwargs,
            )
            tokenizer = open_clip.get_tokenizer(
                name, context_length=_context_length_of(model), cache_dir=cache_dir
            )
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/FileNotFoundError/OSError/...
        if pretrained is not None and os.path.isfile(pretrained):
            raise ModelError(
                f"cannot load weights {pretrained} into {name}: {str(e).splitlines()[0] if str(e) else e!r} "
                "(is it an open_clip checkpoint of this architecture?)"
            ) from e
        if wants_weights:
            raise ModelError(_unreachable_message(name, pretrained, what, e)) from e
        raise ModelError(f"cannot build backbone {name}: {e}") from e

    backbone = Backbone(model, tokenizer, name=name, pretrained=pretrained, precision=precision)
    backbone.set_freeze(freeze)
    return backbone


def _parse_freeze(mode: str) -> tuple[str, int]:
    """'none' | 'all' | 'text' | 'vision' -> (mode, 0); 'partial:N' -> ('partial', N)."""
    if mode in ("none", "all", "text", "vision"):
        return mode, 0
    if isinstance(mode, str) and mode.startswith("partial:"):
        try:
            keep = int(mode.split(":", 1)[1])
        except ValueError:
            keep = -1
        if keep < 0:
            raise ModelError(f"freeze='{mode}': N in partial:N must be an integer >= 0")
        return "partial", keep
    raise ModelError(f"unknown freeze mode '{mode}'; expected one of {', '.join(FREEZE_MODES)}")


def _context_length_of(model: nn.Module) -> int:
    if isinstance(model, CLIP):
        return int(model.context_length)
    text = getattr(model, "text", None)
    ctx = getattr(text, "context_length", None)
    if ctx is None:
        ctx = getattr(model, "context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    return int(ctx)


# --------------------------------------------------------------------------------------------
# the wrapper
# --------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """An open_clip model with probret's text / frame interface.

    Attributes: ``clip`` (the open_clip model), ``name``, ``pretrained``, ``embed_dim``,
    ``image_size`` (int, or (h, w) when not square), ``image_mean``, ``image_std`` (tuples of 3),
    ``context_length``, ``vocab_size``, ``sot_token_id``, ``eot_token_id``, ``logit_scale``
    (CLIP's log-space temperature Parameter: use ``logit_scale.exp()``), ``freeze_mode``.
    """

    def __init__(
        self, model: nn.Module, tokenizer, *, name: str, pretrained: str | None = None, precision: str = "fp32"
    ):
        super().__init__()
        if not isinstance(model, (CLIP, CustomTextCLIP)):
            raise ModelError(
                f"{name}: unsupported open_clip model class {type(model).__name__} "
                "(probret supports CLIP and CustomTextCLIP with an open_clip TextTransformer)"
            )
        if isinstance(model, CustomTextCLIP) and not isinstance(model.text, TextTransformer):
            raise ModelError(
                f"{name}: text tower {type(model.text).__name__} is not supported (probret needs per-token "
                "features from open_clip's own TextTransformer; Hugging Face text towers are not wired up)"
            )
        text = model if isinstance(model, CLIP) else model.text
        if getattr(text, "cls_emb", None) is not None:
            raise ModelError(f"{name}: text towers with an appended class token (CoCa) are not supported")
        pool = model.text_pool_type if isinstance(model, CLIP) else text.pool_type
        if pool not in ("argmax", "eos", "first", "last"):
            raise ModelError(f"{name}: text pool type '{pool}' gives no sentence feature")

        self.clip = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.freeze_mode = "none"
        self.precision = precision
        # dtype the image tower expects its pixels in (open_clip's convention per precision)
        self.input_dtype = open_clip.get_input_dtype(precision) or torch.float32

        self.context_length = _context_length_of(model)
        self.vocab_size = int(text.vocab_size) if hasattr(text, "vocab_size") else int(text.token_embedding.num_embeddings)
        self.sot_token_id = getattr(tokenizer, "sot_token_id", None)
        self.eot_token_id = getattr(tokenizer, "eot_token_id", None)
        if isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) and self.vocab_size != SIMPLE_TOKENIZER_VOCAB:
            raise ModelError(
                f"{name}: text vocab_size is {self.vocab_size} but open_clip's SimpleTokenizer has "
                f"{SIMPLE_TOKENIZER_VOCAB} tokens; set text_cfg.vocab_size to {SIMPLE_TOKENIZER_VOCAB}"
            )

        visual = model.visual
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", getattr(visual, "image_size", None))
        if isinstance(size, (tuple, list)):
            size = int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))
        self.image_size = size
        self.image_mean = tuple(float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.image_std = tuple(float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD))
        self.image_interpolation = pp.get("interpolation", "bicubic")
        self.image_resize_mode = pp.get("resize_mode", "shortest")

        proj = text.text_projection
        if proj is None:
            self.embed_dim = int(text.transformer.width)
        elif isinstance(proj, nn.Linear):
            self.embed_dim = int(proj.out_features)
        else:
            self.embed_dim = int(proj.shape[1])

    # -- properties --------------------------------------------------------------------------
    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def _text(self) -> nn.Module:
        return self.clip if isinstance(self.clip, CLIP) else self.clip.text

    def config(self) -> dict:
        """What a checkpoint's config.json needs to rebuild this backbone."""
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "freeze": self.freeze_mode,
        }

    # -- text --------------------------------------------------------------------------------
    def tokenize(self, texts: list[str] | str) -> Tensor:
        """open_clip's tokenizer for this model: LongTensor (N, context_length), on CPU."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts), context_length=self.context_length)

    def encode_text(self, token_ids: Tensor) -> TextFeatures:
        """Text tower on (N, L) token ids, L <= context_length.

        sentence (N, D): the projected pooled (end-of-text) feature, computed exactly as
            open_clip's ``encode_text`` (not normalised).
        tokens (N, L, D): every position after ``ln_final`` and the text projection; the pooled
            position holds exactly ``sentence``.
        mask (N, L) bool: positions up to and including the end-of-text token.

        With the causal mask of CLIP's text tower, a shorter L (padding cut off) gives the same
        features for the kept positions as the full context length.
        """
        if token_ids.dim() != 2:
            raise ValueError(f"token_ids must be (N, L), got shape {tuple(token_ids.shape)}")
        t = self._text()
        n, length = token_ids.shape
        if length > self.context_length:
            raise ValueError(f"token_ids has length {length} > context_length {self.context_length}")
        pool = self.clip.text_pool_type if isinstance(self.clip, CLIP) else t.pool_type
        eos_id = getattr(self.clip, "text_eos_id", None) if isinstance(self.clip, CLIP) else getattr(t, "eos_id", None)
        bidirectional = t.attn_mask is None and not getattr(t, "use_pad_mask", False)
        if (pool == "last" or bidirectional) and length != self.context_length:
            raise ValueError(
                "this text tower pools the last position or attends to padding: token_ids must have "
                f"the full context length {self.context_length}, got {length}"
            )
        token_ids = token_ids.to(self.device)

        cast_dtype = t.transformer.get_cast_dtype()
        x = t.token_embedding(token_ids).to(cast_dtype)
        x = x + t.positional_embedding[:length].to(cast_dtype)
        attn_mask = t.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length]
        if getattr(t, "use_pad_mask", False):
            add = t._build_additive_mask(token_ids, length, x.dtype)
            attn_mask = add if attn_mask is None else attn_mask.unsqueeze(0) + add
        x = t.transformer(x, attn_mask=attn_mask)
        x = t.ln_final(x)  # (N, L, width)

        rows = torch.arange(n, device=x.device)
        if pool == "argmax":
            idx = token_ids.argmax(dim=-1)
        elif pool == "eos":
            idx = (token_ids == eos_id).int().argmax(dim=-1)
        elif pool == "first":
            idx = torch.zeros(n, dtype=torch.long, device=x.device)
        else:  # last
            idx = torch.full((n,), length - 1, dtype=torch.long, device=x.device)

        pooled = x[rows, idx]  # same as open_clip.transformer.text_global_pool
        proj = t.text_projection
        if proj is None:
            sentence, tokens = pooled, x
        elif isinstance(proj, nn.Linear):
            sentence, tokens = proj(pooled), proj(x)
        else:
            sentence, tokens = pooled @ proj, x @ proj
        # The pooled position holds exactly the sentence feature (not a re-rounded copy).
        tokens = tokens.index_put((rows, idx), sentence)

        positions = torch.arange(length, device=x.device).unsqueeze(0)
        if pool in ("argmax", "eos"):
            mask = positions <= idx.unsqueeze(1)
        elif self.eot_token_id is not None:
            eot = (token_ids == self.eot_token_id).int().argmax(dim=-1)
            mask = positions <= eot.unsqueeze(1)
        else:
            mask = token_ids != getattr(t, "pad_id", 0)
        return TextFeatures(sentence=sentence, tokens=tokens, mask=mask)

    # -- frames ------------------------------------------------------------------------------
    def encode_frames(self, pixels: Tensor) -> Tensor:
        """Image tower on (B, T, 3, H, W) normalised pixels -> (B, T, D), not normalised.
        The tower runs once on the (B*T, 3, H, W) batch."""
        if pixels.dim() != 5:
            raise ValueError(f"pixels must be (B, T, 3, H, W), got shape {tuple(pixels.shape)}")
        b, t = pixels.shape[:2]
        flat = pixels.reshape(b * t, *pixels.shape[2:]).to(device=self.device, dtype=self.input_dtype)
        feats = self.clip.encode_image(flat, normalize=False)
        return feats.reshape(b, t, -1)

    def forward(self, token_ids: Tensor, pixels: Tensor) -> tuple[TextFeatures, Tensor]:
        return self.encode_text(token_ids), self.encode_frames(pixels)

    # -- freezing ----------------------------------------------------------------------------
    def _tower_params(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters by tower: 'text', 'vision', 'other' (logit_scale, logit_bias)."""
        out: dict[str, list[tuple[str, nn.Parameter]]] = {"text": [], "vision": [], "other": []}
        text_tops = {"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"}
        for pname, p in self.clip.named_parameters():
            top = pname.split(".")[0]
            if top == "visual":
                out["vision"].append((pname[len("visual."):], p))
            elif top == "text":
                out["text"].append((pname[len("text."):], p))
            elif isinstance(self.clip, CLIP) and top in text_tops:
                out["text"].append((pname, p))
            else:
                out["other"].append((pname, p))
        return out

    def set_freeze(self, mode: str = "none") -> None:
        """Set ``requires_grad`` on the towers.

        none: everything trains. all: both towers frozen. text / vision: that tower frozen.
        partial:N: in each tower, only the last N transformer blocks and what follows them
        (final LayerNorm, projection, attention pooler) train; embeddings, pre-norm and earlier
        blocks are frozen (partial:0 trains only final norms and projections).
        ``logit_scale`` (and ``logit_bias``) always stay trainable: set their ``requires_grad``
        yourself to fix the temperature.
        """
        kind, keep = _parse_freeze(mode)
        if kind == "partial" and not isinstance(self.clip.visual, VisionTransformer):
            raise ModelError(
                f"freeze='{mode}' needs an open_clip VisionTransformer image tower; "
                f"{self.name} has {type(self.clip.visual).__name__} (use 'vision' or 'none')"
            )
        groups = self._tower_params()
        for items in groups.values():
            for _, p in items:
                p.requires_grad_(True)
        if kind in ("all", "text", "vision"):
            towers = ("text", "vision") if kind == "all" else (kind,)
            for tower in towers:
                for _, p in groups[tower]:
                    p.requires_grad_(False)
        elif kind == "partial":
            self._partial(groups["text"], keep, pre={"token_embedding", "positional_embedding", "cls_emb"},
                          n_blocks=len(self._text().transformer.resblocks))
            self._partial(groups["vision"], keep,
                          pre={"conv1", "class_embedding", "positional_embedding", "ln_pre", "patch_dropout"},
                          n_blocks=len(self.clip.visual.transformer.resblocks))
        self.freeze_mode = mode

    @staticmethod
    def _partial(items, keep: int, *, pre: set[str], n_blocks: int) -> None:
        first_trainable = max(n_blocks - keep, 0)
        for pname, p in items:
            parts = pname.split(".")
            if parts[0] in pre:
                p.requires_grad_(False)
            elif parts[0] == "transformer":
                if len(parts) > 2 and parts[1] == "resblocks":
                    p.requires_grad_(int(parts[2]) >= first_trainable)
                else:
                    p.requires_grad_(keep > 0)
            # everything after the blocks (ln_final / ln_post, projections, attn_pool) trains

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, pretrained={self.pretrained!r}, embed_dim={self.embed_dim}, "
            f"image_size={self.image_size}, context_length={self.context_length}, freeze={self.freeze_mode!r}"
        )
