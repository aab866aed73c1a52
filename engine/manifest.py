"""The bundle manifest (``manifest.json``), defined once: the exporter writes it through
:meth:`Manifest.to_dict` and the engine reads it through :func:`parse_manifest` (torch-free).

Every field is a typed dataclass field; :func:`parse_manifest` checks each one against its type
and its bounds (``bounded``: ranges, choices, paths inside the bundle) and refuses unknown keys,
so a damaged or hand-edited manifest fails at load with a :class:`ModelError` that names the key
(``manifest key 'graphs.pair_score.inputs[1].shape'``) instead of misleading the engine later.
The meaning of every key is in docs/export.md ("The manifest").

Extending it: add a field to the dataclass it belongs to, with a type (``int``, ``float``,
``str``, ``bool``, a dataclass, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``X | None``,
or ``dict[str, Any]`` for a free-form JSON object) and, when it may be absent, a default.
Bundles keep loading while the new field is optional; when readers must rely on it, bump
``FORMAT_VERSION`` and teach :func:`_migrate` how to read (or why to refuse) the older version.

Format history:

1. the first format (no schema version of its own beyond this number); int8 bundles had
   full-range int8 weights and no fp32 encoders;
2. this schema: int8 graphs name their ``fp32_file`` and the ``quantization`` records the scheme
   and the load-time ``probe``; ``calibration`` and ``domain`` may be present. Version 1 bundles
   without int8 graphs read as version 2 (nothing else changed); version 1 int8 bundles are
   refused with the command that re-exports them.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import PurePosixPath
from typing import Any, Union

from probret.engine.errors import ModelError

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "GRAPH_NAMES", "GRAPH_PRECISIONS", "TensorSpec",
           "GraphEntry", "FileEntry", "Source", "Preprocessing", "TokenizerEntry", "NoiseEntry", "Sampling",
           "EngineEntry", "ParitySummary", "Int8Probe", "Quantization", "Domain", "Manifest", "parse_manifest",
           "check_relative_path"]

FORMAT = "probret-bundle"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: The four graphs of every bundle, in pipeline order.
GRAPH_NAMES = ("text_encoder", "frame_encoder", "video_side", "pair_score")
GRAPH_PRECISIONS = ("fp32", "int8")
TENSOR_DTYPES = ("float32", "float16", "float64", "int32", "int64", "bool")
#: Bounds that no real model comes near; a value beyond them is a damaged manifest, not a model.
_MAX_DIM = 1 << 20
_MAX_BYTES = 1 << 44
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def bounded(default: Any = MISSING, *, lo: float | None = None, hi: float | None = None,
            choices: tuple | None = None, path: bool = False, sha256: bool = False, default_factory: Any = MISSING):
    """A dataclass field with the checks :func:`parse_manifest` applies to its values."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "path": path, "sha256": sha256}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# the schema
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: dims are ints (fixed) or strings (dynamic, e.g. "N_t")."""

    name: str
    dtype: str = bounded(choices=TENSOR_DTYPES)
    shape: tuple[int | str, ...] = bounded(lo=0, hi=_MAX_DIM)

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return _parse(cls, d, "tensor")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(kw_only=True)
class GraphEntry:
    file: str = bounded(path=True)
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    dynamic_axes: dict[str, dict[str, str]] = field(default_factory=dict)
    precision: str | None = bounded(None, choices=GRAPH_PRECISIONS)  # None: fp32
    fp32_file: str | None = bounded(None, path=True)  # int8 graphs: the fp32 graph beside it


@dataclass(kw_only=True)
class FileEntry:
    sha256: str = bounded(sha256=True)
    bytes: int = bounded(lo=0, hi=_MAX_BYTES)


@dataclass(kw_only=True)
class Source:
    checkpoint: str
    config_sha256: str = bounded(sha256=True)
    weights_sha256: str = bounded(sha256=True)


@dataclass(kw_only=True)
class Preprocessing:
    image_size: int = bounded(lo=1, hi=8192)
    mean: list[float] = bounded(lo=-1e3, hi=1e3)
    std: list[float] = bounded(lo=1e-6, hi=1e3)
    frames: int = bounded(lo=1, hi=4096)
    frame_sampling: str = "uniform (segment midpoints)"
    resize: str = "shortest side, bicubic"
    crop: str = "center"
    interpolation: str = "bicubic"


@dataclass(kw_only=True)
class TokenizerEntry:
    type: str = bounded(choices=("clip-bpe",))
    file: str = bounded(path=True)
    context_length: int = bounded(lo=2, hi=1 << 16)
    sot_token_id: int | None = bounded(None, lo=0, hi=1 << 31)
    eot_token_id: int | None = bounded(None, lo=0, hi=1 << 31)
    pad_token_id: int = bounded(0, lo=0, hi=1 << 31)
    input_dtype: str = bounded("int32", choices=("int32",))


@dataclass(kw_only=True)
class NoiseEntry:
    name: str
    key: str
    distribution: str = bounded(choices=("uniform", "gaussian"))
    scale: float = bounded(1.0, lo=0.0, hi=1e6)
    shape: list[int] = bounded(lo=1, hi=_MAX_DIM)
    side: str = bounded(choices=("text", "video"))
    axis: int = bounded(lo=0, hi=16)


@dataclass(kw_only=True)
class Sampling:
    mode: str = bounded(choices=("noise-input", "fixed-seed", "deterministic"))
    samples: int | None = bounded(None, lo=1, hi=1 << 16)
    seed: int | None = bounded(None, lo=0, hi=(1 << 63) - 1)
    generator: str = ""
    noise: list[NoiseEntry] = field(default_factory=list)
    reduction: str | None = None
    shared: str = ""


@dataclass(kw_only=True)
class EngineEntry:
    file: str = bounded(path=True)
    precision: str = bounded(choices=("fp32", "fp16"))
    profiles: dict[str, list[list[int]]] = bounded(lo=0, hi=_MAX_DIM, default_factory=dict)
    layers_kept_fp32: int = bounded(0, lo=0, hi=1 << 24)
    tensorrt: str = ""
    gpu: str = ""
    build_seconds: float = bounded(0.0, lo=0.0, hi=1e7)


@dataclass(kw_only=True)
class ParitySummary:
    file: str = bounded(path=True)
    passed: bool = False
    max_score_err: float = bounded(0.0, lo=0.0)
    topk_identical: float = bounded(0.0, lo=0.0, hi=1.0)
    R1_t2v: float = bounded(0.0, lo=0.0, hi=100.0)
    R1_t2v_pytorch: float = bounded(0.0, lo=0.0, hi=100.0)


@dataclass(kw_only=True)
class Int8Probe:
    """Inputs and fp32 reference outputs, stored at export, that the engine replays through the
    int8 encoders on the CPU it runs on (engine/int8_probe.py). Arrays (``.npz``, no pickles):
    ``<graph>.<input or output name>``."""

    file: str = bounded(path=True)
    tolerance: float = bounded(lo=1e-9, hi=1.0)
    measure: str = "max |int8 - fp32| / max(1, max |fp32|), per output"


@dataclass(kw_only=True)
class Quantization:
    mode: str = bounded(choices=("int8",))
    graphs: list[str] = bounded(choices=GRAPH_NAMES, default_factory=list)
    name: str = ""
    tool: str = ""
    ops: list[str] = field(default_factory=list)
    weights: str = ""
    activations: str = ""
    saturation: str = ""
    runs_on: str = ""
    measured: dict[str, Any] | None = None
    probe: Int8Probe | None = None


@dataclass(kw_only=True)
class Domain:
    """What the bundle's numbers (calibration, parity) were measured on."""

    dataset: str
    split: str | None = None
    gallery_size: int | None = bounded(None, lo=1, hi=1 << 40)


@dataclass(kw_only=True)
class Manifest:
    format: str = bounded(choices=(FORMAT,))
    format_version: int = bounded(lo=1, hi=FORMAT_VERSION)
    probret_version: str = ""
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    source: Source | None = None
    model: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    export_form: str = ""
    pair_cost_per_pair: str = ""
    embed_dim: int = bounded(lo=1, hi=1 << 16)
    num_frames: int = bounded(lo=1, hi=4096)
    opset: int = bounded(17, lo=17, hi=1000)
    preprocessing: Preprocessing | None = None
    tokenizer: TokenizerEntry | None = None
    sampling: Sampling | None = None
    graphs: dict[str, GraphEntry] = field(default_factory=dict)
    video_outputs: list[str] = field(default_factory=list)
    uncertainty: bool = False
    engines: dict[str, EngineEntry] | None = None
    quantization: Quantization | None = None
    parity: ParitySummary | None = None
    calibration: dict[str, Any] | None = None  # engine/calibration.py reads it (Calibrator.from_dict)
    domain: Domain | None = None
    files: dict[str, FileEntry] = bounded(path=True, default_factory=dict)  # keys: paths inside the bundle

    def to_dict(self) -> dict:
        """The JSON object of ``manifest.json``: fields whose value is None and whose default is
        None are left out (absent means the default)."""
        return _dump(self)

    def referenced_files(self) -> dict[str, str]:
        """{manifest key: bundle-relative path} of every file a field points at."""
        refs = {f"graphs.{n}.file": g.file for n, g in self.graphs.items()}
        refs.update({f"graphs.{n}.fp32_file": g.fp32_file for n, g in self.graphs.items() if g.fp32_file})
        refs.update({f"engines.{n}.file": e.file for n, e in (self.engines or {}).items()})
        if self.tokenizer is not None:
            refs["tokenizer.file"] = self.tokenizer.file
        if self.parity is not None:
            refs["parity.file"] = self.parity.file
        if self.quantization is not None and self.quantization.probe is not None:
            refs["quantization.probe.file"] = self.quantization.probe.file
        return refs


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def parse_manifest(data: Any, *, where: str = MANIFEST) -> Manifest:
    """The validated :class:`Manifest` of a parsed ``manifest.json`` (older formats migrated);
    ModelError naming the key for anything the schema does not allow."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else None
        raise ModelError(f"{where}: not a probret bundle manifest (format={got!r})")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{where}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        from probret.engine._version import __version__

        raise ModelError(f"{where}: bundle format {version} is newer than this probret ({__version__}) reads "
                         f"(format {FORMAT_VERSION}); upgrade probret")
    data = _migrate(data, version, where)
    try:
        manifest = _parse(Manifest, data, "")
    except _SchemaError as exc:
        raise ModelError(f"{where}: manifest key {exc.key!r}: {exc.problem}; the manifest is damaged or was "
                         "edited by hand: re-export the checkpoint with probret-export") from None
    _check_consistency(manifest, where)
    return manifest


def _migrate(data: dict, version: int, where: str) -> dict:
    if version == 1:
        if data.get("quantization"):
            ckpt = (data.get("source") or {}).get("checkpoint", "CHECKPOINT")
            raise ModelError(f"{where}: an int8 bundle of format 1: its full-range int8 weights can saturate on "
                             "AVX2 CPUs without VNNI and it has no fp32 encoders to fall back to; re-export it with "
                             f"`probret-export {ckpt} --out DIR --quantize int8`")
        data = {**data, "format_version": FORMAT_VERSION}  # nothing else changed for fp32 bundles
    return data


def check_relative_path(rel: Any, key: str) -> str:
    """``rel`` when it is a relative POSIX path that stays inside the bundle (no ``..``, not
    absolute, no backslash or NUL); :class:`_SchemaError` otherwise."""
    if not isinstance(rel, str) or not rel:
        raise _SchemaError(key, f"expected a file path inside the bundle, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel or rel.startswith("~"):
        raise _SchemaError(key, f"{rel!r} is not a path inside the bundle")
    return rel


def _check_consistency(m: Manifest, where: str) -> None:
    def bad(key: str, problem: str) -> ModelError:
        return ModelError(f"{where}: manifest key {key!r}: {problem}; re-export the checkpoint with probret-export")

    for name in GRAPH_NAMES:
        if name not in m.graphs:
            raise bad(f"graphs.{name}", "missing: every bundle has the graphs " + ", ".join(GRAPH_NAMES))
    for name in m.graphs:
        if name not in GRAPH_NAMES:
            raise bad(f"graphs.{name}", "unknown graph")
    for name in m.engines or {}:
        if name not in GRAPH_NAMES:
            raise bad(f"engines.{name}", "unknown graph")
    for key, rel in m.referenced_files().items():
        if rel not in m.files:
            raise bad(key, f"{rel!r} is not among the hashed files")
    for key in ("source", "preprocessing", "tokenizer", "sampling"):
        if getattr(m, key) is None:
            raise bad(key, "missing")
    if not m.method:
        raise bad("method", "missing")
    if m.preprocessing.frames != m.num_frames:
        raise bad("preprocessing.frames", f"{m.preprocessing.frames} != num_frames {m.num_frames}")
    if len(m.preprocessing.mean) != 3 or len(m.preprocessing.std) != 3:
        raise bad("preprocessing.mean", "mean and std need one value per RGB channel")
    _check_quantization(m, bad)


def _check_quantization(m: Manifest, bad) -> None:
    q = m.quantization
    int8 = {n for n, g in m.graphs.items() if g.precision == "int8"}
    if q is None:
        if int8:
            raise bad(f"graphs.{sorted(int8)[0]}.precision", "int8 graph without a 'quantization' entry")
        return
    if set(q.graphs) != int8:
        raise bad("quantization.graphs", f"{q.graphs} but the int8 graphs are {sorted(int8)}")
    for name in q.graphs:
        if m.graphs[name].fp32_file is None:
            raise bad(f"graphs.{name}.fp32_file", "an int8 graph needs its fp32 graph beside it (the fallback)")
    if q.probe is None:
        raise bad("quantization.probe", "missing: an int8 bundle carries the probe its load-time check replays")


# --------------------------------------------------------------------------------------------
# the generic, type-driven checker
# --------------------------------------------------------------------------------------------
class _SchemaError(Exception):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _parse(tp: Any, value: Any, key: str, meta: dict | None = None) -> Any:
    meta = meta or {}
    if is_dataclass(tp):
        return _parse_dataclass(tp, value, key)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _parse_union(args, value, key, meta)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _SchemaError(key, f"expected a list, got {type(value).__name__}")
        items = [_parse(args[0], v, f"{key}[{i}]", meta) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _SchemaError(key, f"expected an object, got {type(value).__name__}")
        if args[1] is Any:
            return _check_json(value, key)
        if meta.get("path"):
            [check_relative_path(k, _join(key, k)) for k in value]
        return {k: _parse(args[1], v, _join(key, k), meta) for k, v in value.items()}
    if tp is Any:
        return _check_json(value, key)
    return _parse_scalar(tp, value, key, meta)


def _parse_dataclass(cls: type, value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        raise _SchemaError(key or "(top level)", f"expected an object, got {type(value).__name__}")
    known = {f.name: f for f in fields(cls)}
    for k in value:
        if k not in known:
            raise _SchemaError(_join(key, str(k)), "unknown key")
    hints, kwargs = _hints(cls), {}
    for name, f in known.items():
        if name not in value:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _SchemaError(_join(key, name), "missing")
            continue
        kwargs[name] = _parse(hints[name], value[name], _join(key, name), dict(f.metadata))
    return cls(**kwargs)


def _parse_union(args: tuple, value: Any, key: str, meta: dict) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _SchemaError(key, "must not be null")
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return _parse(options[0], value, key, meta)
    for a in options:  # int | str (tensor dims): the value's own type decides
        if _matches(a, value):
            return _parse(a, value, key, meta)
    raise _SchemaError(key, f"expected {' or '.join(a.__name__ for a in options)}, got {type(value).__name__}")


def _matches(tp: Any, value: Any) -> bool:
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else False


def _parse_scalar(tp: Any, value: Any, key: str, meta: dict) -> Any:
    if not _matches(tp, value):
        raise _SchemaError(key, f"expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r:.60}")
    if tp in (int, float):
        if tp is float:
            value = float(value)
            if not math.isfinite(value):
                raise _SchemaError(key, f"{value} is not a finite number")
        lo, hi = meta.get("lo"), meta.get("hi")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _SchemaError(key, f"{value} is outside [{lo}, {hi}]")
    if tp is str:
        if meta.get("path"):
            check_relative_path(value, key)
        if meta.get("sha256") and not _SHA256.match(value):
            raise _SchemaError(key, f"{value!r:.80} is not a lowercase hex sha256")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise _SchemaError(key, f"{value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _check_json(value: Any, key: str, depth: int = 0) -> Any:
    """A JSON value without NaN / infinity, nested at most 32 deep."""
    if depth > 32:
        raise _SchemaError(key, "nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json(v, _join(key, str(k)), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{key}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _SchemaError(key, f"{value} is not a finite number")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise _SchemaError(key, f"{type(value).__name__} is not JSON")
    return value


def _dump(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _dump(getattr(obj, f.name)) for f in fields(obj)
                if not (getattr(obj, f.name) is None and f.default is None)}
    if isinstance(obj, dict):
        return {k: _dump(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_dump(v) for v in obj]
    return obj
