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
``test-vit-small``, ``test-rn-small``, ``test-cnn-small``; ``train/backbone_configs/*.json``) with
open_clip, so ``open_clip.create_model_and_transforms("test-vit-tiny")`` works after it, and
probret's own timm image towers (``train/vision_towers.py``; ``test-cnn-small`` names one).

Where the weights come from (tags, files, the Hub, offline caches), how they are checked before
open_clip reads them, and which activation (GELU / QuickGELU) they need is ``train/weights.py``;
this module builds and wraps the model. See docs/backbone.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import Tensor, nn

from probret.engine.errors import ModelError
from probret.train import vision_towers  # noqa: F401 - registers probret's timm towers (test-cnn-small)
from probret.train.methods.base import TextFeatures
from probret.train.weights import WeightPlan, hf_offline_env, network_guard, resolve_weights, unreachable_message

log = logging.getLogger(__name__)

__all__ = [
    "Backbone",
    "create_backbone",
    "list_backbones",
    "list_pretrained_tags",
    "register_backbone_configs",
    "BACKBONE_CONFIG_DIR",
    "FREEZE_MODES",
]

BACKBONE_CONFIG_DIR = Path(__file__).resolve().parent / "backbone_configs"
#: Vocabulary size of open_clip's default tokenizer (SimpleTokenizer, OpenAI's BPE).
SIMPLE_TOKENIZER_VOCAB = 49408
FREEZE_MODES = ("none", "all", "text", "vision", "partial:N")



# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def register_backbone_configs() -> None:
    """Register ``train/backbone_configs/*.json`` with open_clip (idempotent; done on import)."""
    paths = getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])
    if any(Path(p).resolve() == BACKBONE_CONFIG_DIR for p in paths):
        return
    open_clip.add_model_config(BACKBONE_CONFIG_DIR)


register_backbone_configs()


def list_backbones() -> list[str]:
    """Every architecture open_clip knows, probret's ``test-vit-*`` configs included."""
    return list(open_clip.list_models())


def list_pretrained_tags(name: str) -> list[str]:
    """The pretrained tags open_clip knows for an architecture (e.g. ``openai``)."""
    return list(open_clip.list_pretrained_tags_by_model(name))


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------
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

    name: an open_clip architecture (``ViT-B-32``, ``ViT-B-32-quickgelu``, ``test-vit-tiny``, see
        :func:`list_backbones`), ``hf-hub:org/repo`` (config and weights from the Hub) or
        ``local-dir:/path`` (a folder with ``open_clip_config.json`` and weights).
    pretrained: None (random init), an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...) or a
        local weight file (``.safetensors`` preferred; ``.bin``/``.pt``/``.pth`` only if they load
        with ``torch.load(weights_only=True)``). Must be None for ``hf-hub:``/``local-dir:`` names.
        Where the weights come from and which activation they need: ``train/weights.py``.
    cache_dir: download cache (passed to open_clip / huggingface_hub); default: HF_HUB_CACHE /
        HF_HOME for Hub downloads, ~/.cache/clip for plain URLs.
    freeze: "none" | "all" | "text" | "vision" | "partial:N" (see :meth:`Backbone.set_freeze`).
    precision: open_clip precision ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16", ...).
    open_clip_kwargs: extra keyword arguments for ``open_clip.create_model`` (``force_quick_gelu``,
        ``force_custom_text``, ``force_image_size``, ...).

    Raises ModelError when the name is unknown or the weights cannot be found, reached or read.
    """
    register_backbone_configs()
    parse_freeze(freeze)  # fail before building anything
    plan = resolve_weights(name, pretrained, open_clip_kwargs=open_clip_kwargs)
    model, tokenizer = _build_open_clip(plan, cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                                        device=device, precision=precision)
    backbone = Backbone(model, tokenizer, name=name, pretrained=plan.pretrained, precision=precision)
    backbone.set_freeze(freeze)
    return backbone


def _build_open_clip(plan: WeightPlan, *, cache_dir: str | None, device, precision: str):
    """open_clip's model and tokenizer for a plan; every failure becomes a ModelError that says why."""
    if plan.offline and not hf_offline_env():
        log.warning("weight host unreachable (no network?): looking for %s in the local caches only",
                    plan.what or plan.name)
    try:
        with network_guard(plan.offline), _quiet_random_init(not plan.wants_weights), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
            model = open_clip.create_model(
                plan.name,
                pretrained=plan.pretrained,
                precision=precision,
                device=device,
                cache_dir=cache_dir,
                require_pretrained=plan.wants_weights,
                weights_only=True,
                **plan.open_clip_kwargs,
            )
            tokenizer = open_clip.get_tokenizer(plan.name, context_length=_context_length_of(model), cache_dir=cache_dir)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/FileNotFoundError/OSError/...
        if plan.pretrained is not None and os.path.isfile(plan.pretrained):
            raise ModelError(
                f"cannot load weights {plan.pretrained} into {plan.name}: "
                f"{str(e).splitlines()[0] if str(e) else e!r} (is it an open_clip checkpoint of this architecture?)"
            ) from e
        if plan.wants_weights:
            raise ModelError(unreachable_message(plan.name, plan.pretrained, plan.what, e)) from e
        raise ModelError(f"cannot build backbone {plan.name}: {e}") from e
    return model, tokenizer


def parse_freeze(mode: str) -> tuple[str, int]:
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
        kind, keep = parse_freeze(mode)
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
