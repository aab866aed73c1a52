"""Run an export bundle without torch: ONNX Runtime / TensorRT sessions and the four-step pipeline.

    rt = BundleRuntime(load_bundle("bundle/"), device="auto")
    text = rt.encode_text(["a red circle moves left"])         # tokenizer + text graph
    frames = rt.encode_videos(pixels)                            # (N_v, T', 3, H, W) -> (N_v, T', D)
    video = rt.video_side(frames)                                # per-video tensors: store these
    scores, uncertainty = rt.score(text, video)                  # (N_t, N_v) each

Devices (``device=``):

* ``"auto"``: the bundle's TensorRT engines when it has them and TensorRT + a CUDA GPU are usable;
  otherwise ONNX Runtime with the provider chain TensorRT -> CUDA -> CPU, keeping only the
  providers that are installed *and* have a GPU to run on;
* ``"tensorrt"``: the bundle's engines (or ORT's TensorRT provider when it has none); an error if
  TensorRT or a GPU is missing;
* ``"cuda"``: ORT's CUDA provider (error if unusable); ``"cpu"``: ORT's CPU provider.

The provider each graph actually runs on is logged (logger ``probret.engine.runtime``) and kept in
``BundleRuntime.providers``.

Builds: ``onnxruntime`` (CPU, the core install) and ``onnxruntime-gpu`` (``probret[gpu]``) are two
packages that ship the same ``onnxruntime`` module, so ``pip install 'probret[gpu]'`` installs both
and the files of whichever pip wrote last are imported (measured with pip 23.2: the CPU build's,
leaving only CPUExecutionProvider); uninstalling either one then deletes files the other needs.
``ort_build()`` names the active build and what is installed; ``provider_chain`` logs it, warns
when a visible GPU is idle because the CPU build shadows onnxruntime-gpu, and its errors give the
repair (docs/install.md).

int8 bundles (``--quantize int8``): an int8 encoder is used only when the bundle's probe passes on
this machine; otherwise its fp32 graph runs, with one warning (engine/int8_probe.py; the verdict
is cached per bundle and CPU). ``BundleRuntime.precisions`` records the choice per graph.

Threads (keyword-only options of ``BundleRuntime``; measured in docs/benchmarks_search.md):

* ``threads``: ONNX Runtime intra-op threads of the encoder and video-side sessions (None: ORT's
  default, one per core);
* ``pair_workers``: on the CPU provider, how many pair-graph runs go at once. With more than one,
  the pair session gets ONE intra-op thread and ``score`` hands its (text block, video block)
  tiles to that many Python threads (``session.run`` releases the GIL and is thread-safe), so
  the cores work on different videos instead of splitting every small operator between them.
  Default: ``threads`` when given, else the number of usable cores. Measured on the 2-core
  machine (SPEM, d=512, 16,384 videos, 1 query, 1024-video tiles): 84.7 ms against 96.0 ms for
  one run at a time on a 2-thread session; the pair graph is ~160 small operators per run, and
  every one of them pays a thread-pool hand-off when the session has 2 threads. GPU providers
  and TensorRT engines always run one tile at a time;
* ``graph_cache``: on the CPU provider, ORT's optimised form of each graph is written once to
  CACHE/ort-optimized/ (or the folder given), keyed by the graph's sha256, the ONNX Runtime
  version and the CPU's model and flags, and later sessions load it with graph optimisation off:
  creating the demo model's text session measured 0.064 -> 0.028-0.056 s CPU and its pair
  session 0.036-0.051 -> 0.020-0.023 s (bench/cli_latency.py, docs/benchmarks.md). ``False`` turns it off. Outputs are the same: the cached file is the
  graph ORT would have run anyway (tests/engine/test_runtime.py checks equality). Its weights
  are written beside it (``KEY.onnx`` names its ``KEY.<writer>.data``) rather than inside it:
  ORT then reads them straight from that file instead of parsing them out of the protobuf,
  and the demo text session (13 MB of fp32 weights once optimised) loads in 0.008 s of CPU
  instead of 0.036 (17-29 ms instead of 48-77 of wall in a fresh process). The graph file is
  replaced atomically and names its own writer's data file, so a concurrent writer can never
  pair one graph with another's weights; the other writers' data files of the key are removed
  after the replace;
* ``spinning``: ``session.intra_op.allow_spinning`` of every multi-threaded session (None: ORT's
  default, spinning on, except for the text graph on the CPU). Turning it off measured slower for
  the pair graph on a quiet machine (102.8 ms against 93.8 ms above); it frees a core sooner on a
  machine shared with other work. The text graph's session is the exception by default: a search
  runs it once and then scores on the pair workers at once, and its idle threads spinning for
  their next run took those very cores. Measured on the 2-core machine with one core busy with
  other work (docs/benchmarks.md, "CLI latency"; three runs, medians of 11-15, side by side): a
  ``probret search --no-update`` of 10,000 videos 0.004-0.075 s less wall, 0.015-0.085 s less
  CPU; encoding 512 captions in a warm process 143 -> 80 ms, one query 0.20 -> 0.21 ms;
* ORT's memory pattern (``enable_mem_pattern``) is off for the text and pair graphs on the CPU: it
  plans the memory of a run from the first runs of each input shape, which a CLI search (a fresh
  process, ~10 runs of the pair graph on two workers) pays without reusing. Measured on the same
  machine: a ``probret search --no-update`` of 10,000 videos 0.012-0.054 s less wall (two A/B runs
  of 13-15 side by side); in a warm process the exact scan of 10,000 videos 53-59 -> 38-41 ms and
  encoding 512 captions 70-90 -> 67 ms (best of 5 and 3), so nothing is traded for it.

Scoring float16 rows (an index's default storage): ``score`` converts them to float32 tile by
tile, each tile by the pair worker that scores it, with ONNX Runtime's vectorised Cast into a
buffer that worker reuses (``_half_to_float``; exact, every float16 is a float32). Converting a
whole block first, then scoring it, wrote and read back a float32 copy twice the size of the
block, on one core: one exact scan of the demo model's 10,000 videos measured 0.039 s of CPU
against 0.047 (best of 15, bench/cli_latency.py, docs/benchmarks.md "CLI latency"), identical
scores, and a search no longer holds that float32 copy.

Noise (sampling methods, bundles exported with ``--sampling noise-input``): ``draw_noise`` draws
every noise input from ONE ``numpy.random.Generator(numpy.random.PCG64(seed))``, in manifest
order: ``uniform`` -> ``rng.random(shape, dtype=float32)``, ``gaussian`` ->
``rng.standard_normal(shape, dtype=float32)``, then multiplied by ``scale`` (when not 1). The
arrays are banks shared by every query and every video, so scores never depend on how queries
and videos are batched. The export's PyTorch reference uses exactly these numbers. A runtime
reads them back from CACHE/noise/ when an earlier process drew them (``cached_noise``: the same
bits, without importing ``numpy.random``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from probret.engine.bundle import Bundle, load_bundle
from probret.engine.errors import ModelError

__all__ = ["DEVICES", "BundleRuntime", "OrtGraph", "TrtGraph", "cuda_device_count", "cached_noise", "draw_noise",
           "ort_build", "optimized_graph_path", "provider_chain", "tensorrt_status", "open_runtime"]

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
#: Concurrent pair-graph tiles are never cut below this many videos: each run of the pair graph
#: has a fixed cost (~0.3 ms for SPEM at d=512 on this CPU), which small tiles would multiply.
MIN_PAIR_TILE_VIDEOS = 128
_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------
def draw_noise(specs: Sequence[dict[str, Any]], seed: int) -> dict[str, np.ndarray]:
    """The noise banks of a pair graph: {input name: float32 array}, drawn in ``specs`` order from
    one ``np.random.Generator(np.random.PCG64(seed))`` (module docstring)."""
    if not specs:
        return {}  # no numpy.random import (~40 ms) for bundles without noise inputs
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    out = {}
    for spec in specs:
        shape = tuple(int(s) for s in spec["shape"])
        dist = spec["distribution"]
        if dist == "uniform":
            x = rng.random(shape, dtype=np.float32)
        elif dist == "gaussian":
            x = rng.standard_normal(shape, dtype=np.float32)
        else:
            raise ModelError(f"unknown noise distribution {dist!r} for {spec.get('name')}")
        scale = float(spec.get("scale", 1.0))
        if scale != 1.0:
            x = x * np.float32(scale)
        out[spec["name"]] = x
    return out


def cached_noise(specs: Sequence[dict[str, Any]], seed: int) -> dict[str, np.ndarray]:
    """:func:`draw_noise`, bit for bit, from CACHE/noise/<key>.npy when an earlier process drew
    the same banks (the key hashes the specs, the seed and numpy's version, whose generator
    drew them). Why: importing ``numpy.random`` and drawing cost a fresh CLI search ~5-9 ms,
    reading the banks back well under one (docs/benchmarks.md, "CLI latency"). The file starts
    with the CRC32 of the rest; one that fails it, or holds other shapes, is drawn and written
    again; an unwritable cache only costs the draw."""
    if not specs:
        return {}
    import hashlib
    import io
    import json
    import zlib

    try:
        from probret.engine.cache import cache_dir

        key = hashlib.sha256(json.dumps([list(specs), int(seed), np.__version__], sort_keys=True,
                                        default=str).encode()).hexdigest()[:32]
        path = cache_dir() / "noise" / f"banks-{key}.npy"
    except Exception:  # noqa: BLE001 - no usable cache (no home directory): draw every time
        return draw_noise(specs, seed)
    sizes = [(spec["name"], tuple(int(d) for d in spec["shape"])) for spec in specs]
    total = sum(int(np.prod(shape, dtype=np.int64)) for _, shape in sizes)
    try:
        crc, _, body = path.read_bytes().partition(b"\n")
        flat = np.load(io.BytesIO(body), allow_pickle=False) if crc == b"%08x" % zlib.crc32(body) else None
    except (OSError, ValueError, EOFError):
        flat = None
    if flat is not None and flat.dtype == np.float32 and flat.shape == (total,):
        out, at = {}, 0
        for name, shape in sizes:
            n = int(np.prod(shape, dtype=np.int64))
            out[name], at = flat[at:at + n].reshape(shape), at + n
        return out
    out = draw_noise(specs, seed)
    buf = io.BytesIO()
    np.save(buf, np.concatenate([out[name].reshape(-1) for name, _ in sizes]), allow_pickle=False)
    try:
        from probret.engine.fsutil import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, b"%08x\n" % zlib.crc32(buf.getvalue()) + buf.getvalue())
    except OSError as exc:
        log.info("cannot cache the noise banks at %s (%s)", path, exc)
    return out


#: An ONNX graph of one node, Cast(float16 -> float32) over a 1-D tensor (opset 13, IR 8, made
#: with onnx.helper; 84 bytes, so that the engine needs no ``onnx`` package to have it).
_CAST_F16_ONNX = bytes.fromhex(
    "0808120770726f627265743a410a170a01781201792204436173742a090a02746f1801a001021208663136746f6633325a0d0a0178"
    "12080a06080a12020a00620d0a017912080a06080112020a0042040a00100d")
_caster = None


def _half_to_float(src: np.ndarray, dst: np.ndarray) -> None:
    """float16 ``src`` -> float32 ``dst`` (same shape). ONNX Runtime's Cast is vectorised (F16C):
    0.45 ns an element here against 1.15 for numpy's cast, the whole cost of float16 storage in
    an exact scan; numpy does it when ONNX Runtime cannot (non-contiguous or big-endian arrays,
    no onnxruntime). The conversion is exact either way (every float16 is a float32; ORT may
    return a signalling NaN quieted)."""
    global _caster
    if _caster is None:
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1  # memory-bound: a second thread measured slower
            opts.log_severity_level = 3
            _caster = ort.InferenceSession(_CAST_F16_ONNX, opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any failure means: use numpy
            _caster = False
    if (_caster is False or not src.flags.c_contiguous or not dst.flags.c_contiguous or src.dtype != np.float16
            or not src.dtype.isnative or dst.dtype != np.float32 or src.shape != dst.shape or not src.size):
        np.copyto(dst, src)
        return
    try:
        io = _caster.io_binding()
        io.bind_cpu_input("x", np.asarray(src).reshape(-1))
        io.bind_output("y", "cpu", 0, np.float32, [int(src.size)], dst.ctypes.data)
        _caster.run_with_iobinding(io)
    except Exception:  # noqa: BLE001
        np.copyto(dst, src)


def _as_float32(tensors: dict[str, np.ndarray], buffers: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Stored rows as float32: a no-op for float32 storage; for float16, one block at a time, so
    the head always computes in float32 whatever the storage dtype. ``buffers`` (name -> float32
    array, grown as needed) are reused from block to block: converting into memory already
    touched saves the page faults of a fresh array (1.15 against 1.75 ns an element with numpy)."""
    out = {}
    for k, v in tensors.items():
        if v.dtype == np.float32:
            out[k] = v
            continue
        if buffers is None:
            dst = np.empty(v.shape, dtype=np.float32)
        else:
            buf = buffers.get(k)
            if buf is None or buf.shape[0] < v.shape[0] or buf.shape[1:] != v.shape[1:]:
                buf = buffers[k] = np.empty(v.shape, dtype=np.float32)
            dst = buf[:v.shape[0]]
        if v.dtype == np.float16:
            _half_to_float(v, dst)
        else:
            np.copyto(dst, v)
        out[k] = dst
    return out


# --------------------------------------------------------------------------------------------
# hardware detection (no torch)
# --------------------------------------------------------------------------------------------
def _usable_cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


_cuda_count: int | None = None


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or a GPU). Uses libcuda via
    ctypes, so it needs neither torch nor cuda-python. ``CUDA_VISIBLE_DEVICES=""`` gives 0."""
    global _cuda_count
    if _cuda_count is not None:
        return _cuda_count
    count = 0
    # find_library, only when the usual names are not loadable, and never on Linux: there it runs
    # ldconfig (~25 ms of a CLI search on a machine without a GPU) to return a name that dlopen
    # has just failed to load, and ONNX Runtime's CUDA provider loads libcuda.so.1 by that name too
    names = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"]
    if not sys.platform.startswith("linux"):
        names.append(lambda: _find_library("cuda"))
    for name in names:
        name = name() if callable(name) else name
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) == 0:
                n = ctypes.c_int(0)
                if lib.cuDeviceGetCount(ctypes.byref(n)) == 0:
                    count = n.value
        except Exception:  # noqa: BLE001 - a broken driver means "no GPU"
            count = 0
        break
    _cuda_count = count
    return count


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT >= 10 importable, CUDA runtime bindings importable, and a GPU."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (missing libnvinfer)
        return False, (f"TensorRT is not installed ({type(exc).__name__}: {exc}); install it with "
                       "pip install 'tensorrt>=10' on a machine with an NVIDIA GPU and driver")
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < 10:
        return False, f"TensorRT {trt.__version__} is installed but probret needs TensorRT >= 10"
    try:
        _cudart()
    except ImportError as exc:
        return False, f"the CUDA runtime bindings are missing ({exc}); install cuda-python (pip install cuda-python)"
    if cuda_device_count() < 1:
        return False, "no CUDA GPU is visible (no NVIDIA driver, no device, or CUDA_VISIBLE_DEVICES hides them)"
    return True, f"TensorRT {trt.__version__}, {cuda_device_count()} GPU(s)"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu)") from exc
    if not hasattr(ort, "InferenceSession"):  # the other build's uninstall removed the shared files
        raise ModelError(f"the onnxruntime module is broken ({_ORT_COEXIST_FIX})")
    return ort


#: The repair when onnxruntime and onnxruntime-gpu are both installed (docs/install.md): they ship
#: the same ``onnxruntime`` module, so the files of the one installed last are the ones imported,
#: and uninstalling either deletes files the other needs.
_ORT_COEXIST_FIX = ("to run on the GPU: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu; "
                    "for the CPU build only: pip uninstall -y onnxruntime-gpu onnxruntime && pip install onnxruntime")


def ort_build() -> dict[str, Any]:
    """Which ONNX Runtime is active: ``{"version", "device" ("CPU"/"GPU"), "providers",
    "distributions" (installed onnxruntime* packages), "description"}``. Both ``onnxruntime`` and
    ``onnxruntime-gpu`` can be installed at once; ``device`` and ``providers`` say whose files won."""
    from importlib import metadata

    ort = _ort()
    dists = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            dists.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    providers = list(ort.get_available_providers())
    device = "GPU" if "CUDAExecutionProvider" in providers else "CPU"
    description = (f"onnxruntime {ort.__version__} ({device} build; providers {', '.join(providers)}; "
                   f"installed: {', '.join(dists) or 'unknown'})")
    return {"version": ort.__version__, "device": device, "providers": providers, "distributions": dists,
            "description": description}


def _report_build(device: str, gpu: bool) -> None:
    """Log the active build; warn when a GPU is idle because the CPU build shadows onnxruntime-gpu.
    Without a GPU only the version and providers are logged: reading the installed packages'
    metadata costs ~40 ms, which a CPU-only search does not need to pay."""
    if not gpu:
        if log.isEnabledFor(logging.INFO):
            ort = _ort()
            log.info("ONNX Runtime: onnxruntime %s (providers %s; no CUDA GPU visible)", ort.__version__,
                     ", ".join(ort.get_available_providers()))
        return
    build = ort_build()
    log.info("ONNX Runtime: %s", build["description"])
    shadowed = build["device"] == "CPU" and any(d.startswith("onnxruntime-gpu ") for d in build["distributions"])
    if gpu and device == "auto" and shadowed:
        log.warning("a CUDA GPU is visible but the active ONNX Runtime is the CPU build (%s); %s",
                    build["description"], _ORT_COEXIST_FIX)


def provider_chain(device: str = "auto", *, trt_cache: str | Path | None = None) -> list:
    """ONNX Runtime providers for ``device``: TensorRT -> CUDA -> CPU filtered by what is installed
    and whether a GPU exists. Raises ModelError when an explicitly asked-for device is unusable."""
    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    ort = _ort()
    available = set(ort.get_available_providers())
    gpu = cuda_device_count() > 0
    if device != "cpu":
        _report_build(device, gpu)
    trt_ok = "TensorrtExecutionProvider" in available and gpu and _trt_libs_present()
    cuda_ok = "CUDAExecutionProvider" in available and gpu
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if not cuda_ok:
            raise ModelError(_missing("cuda", available, gpu))
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_provider = ("TensorrtExecutionProvider", _trt_options(trt_cache))
    if device == "tensorrt":
        if not trt_ok:
            raise ModelError(_missing("tensorrt", available, gpu))
        return [trt_provider, "CUDAExecutionProvider", "CPUExecutionProvider"]
    chain: list = []
    if trt_ok:
        chain.append(trt_provider)
    if cuda_ok:
        chain.append("CUDAExecutionProvider")
    return chain + ["CPUExecutionProvider"]


def _find_library(name: str) -> str | None:
    import ctypes.util  # ~35 ms of imports (tempfile, shutil, subprocess): only when needed

    return ctypes.util.find_library(name)


def _trt_libs_present() -> bool:
    if _find_library("nvinfer"):
        return True
    try:
        import tensorrt  # noqa: F401  (the pip wheel ships libnvinfer next to it)
        return True
    except Exception:  # noqa: BLE001
        return False


def _trt_options(cache: str | Path | None) -> dict:
    from probret.engine.cache import cache_dir

    cache = Path(cache) if cache else cache_dir() / "ort-trt"
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": False}


def _cpu_signature() -> str:
    """The CPU model and instruction-set flags: ORT's optimised graphs hold kernels laid out for them
    (e.g. NCHWc blocks sized for AVX-512), so a cached graph is only reused on the same kind of CPU."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(("flags", "Features"))), "")
    except OSError:
        model, flags = platform.processor(), ""
    return f"{platform.machine()}|{model}|{' '.join(sorted(flags.split()))}"


#: Part of the cache key: 2 = weights in a data file beside the graph (module docstring), so a
#: cache written by an older probret (weights inside) is optimised once more in the new form.
_GRAPH_CACHE_FORMAT = 2


def optimized_graph_path(graph_sha256: str, cache: str | Path | None = None) -> Path:
    """Where ORT's optimised form of the graph with this sha256 is cached for the active ONNX
    Runtime version and this CPU (CACHE/ort-optimized/; CACHE as in engine/cache.py)."""
    import hashlib

    from probret.engine.cache import cache_dir

    ort = _ort()
    key = hashlib.sha256(f"{graph_sha256}|onnxruntime {ort.__version__}|{_cpu_signature()}|"
                         f"cache {_GRAPH_CACHE_FORMAT}".encode()).hexdigest()
    return (Path(cache) if cache else cache_dir() / "ort-optimized") / f"{key[:40]}.onnx"


def _missing(device: str, available: set, gpu: bool) -> str:
    provider = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[device]
    if not gpu:
        return f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu (or auto)"
    if provider not in available:
        build = ort_build()
        if any(d.startswith("onnxruntime-gpu ") for d in build["distributions"]):
            return f"--device {device}: the active ONNX Runtime is {build['description']}; {_ORT_COEXIST_FIX}"
        return (f"--device {device}: the active ONNX Runtime is {build['description']}, without {provider}; "
                "install the GPU build: pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
    return f"--device {device}: TensorRT libraries are not installed (pip install 'tensorrt>=10')"


# --------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------
class OrtGraph:
    """One ONNX graph in an ONNX Runtime session. ``run(feeds) -> {output name: array}``."""

    def __init__(self, path: str | Path, providers: list, *, name: str = "", threads: int | None = None,
                 spinning: bool | None = None, optimized: str | Path | None = None, mem_pattern: bool | None = None):
        """``optimized``: where ORT's optimised form of this graph is cached (``optimized_graph_path``);
        loaded with graph optimisation off when it exists, written by this session otherwise.
        ``mem_pattern``: ORT's ``enable_mem_pattern`` (None: its default, on)."""
        self.threads, self.spinning, self.mem_pattern = threads, spinning, mem_pattern
        self.optimized_from_cache = False
        optimized = Path(optimized) if optimized else None
        if optimized is not None and optimized.is_file():
            try:
                self.session = self._session(optimized, providers, cached=True)
                self.optimized_from_cache = True
            except ModelError as exc:  # a damaged cache file: optimise the bundle's graph again
                log.warning("%s; optimising %s again", exc, path)
        if not self.optimized_from_cache:
            self.session = self._session(Path(path), providers, save_to=optimized)
        self.name = name or Path(path).stem
        self.provider = self.session.get_providers()[0]
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._dtypes = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}

    def _session(self, path: Path, providers: list, *, cached: bool = False, save_to: Path | None = None):
        ort = _ort()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        if self.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.mem_pattern is not None:
            opts.enable_mem_pattern = bool(self.mem_pattern)
        if cached:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        tmp = data = None
        if save_to is not None:
            try:
                save_to.parent.mkdir(parents=True, exist_ok=True)
                tmp = save_to.with_name(f".{save_to.stem}.{os.getpid()}.{id(self)}.onnx")
                data = f"{save_to.stem}.{os.urandom(6).hex()}.data"  # its weights, a name of its own (module docstring)
                opts.optimized_model_filepath = str(tmp)
                opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", data)
                opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                              "1024")
            except OSError as exc:
                log.info("cannot cache optimised graphs in %s (%s)", save_to.parent, exc)
                tmp = None
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load this graph ({exc})") from exc
        if tmp is not None:
            _publish_cached_graph(tmp, save_to, data)
        return session

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ModelError(f"graph {self.name}: missing input(s) {missing}")
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self.inputs}
        return dict(zip(self.output_names, self.session.run(self.output_names, arrays)))


def _publish_cached_graph(tmp: Path, final: Path, data: str) -> None:
    """Move a freshly written optimised graph into place, then drop the data files of the same
    key that it does not name (older or concurrent writers'; a session that was loading one of
    them when it went falls back to optimising, with a warning)."""
    try:
        os.replace(tmp, final)
    except OSError as exc:
        log.info("cannot cache the optimised graph at %s (%s)", final, exc)
        for leftover in (tmp, final.with_name(data)):
            try:
                leftover.unlink()
            except OSError:
                pass
        return
    for other in final.parent.glob(f"{final.stem}.*.data"):
        if other.name != data:
            try:
                other.unlink()
            except OSError:
                pass


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


class TrtGraph:
    """A serialized TensorRT 10 engine (a ``.plan`` in the bundle), run with named I/O tensors.

    Needs ``tensorrt`` >= 10, ``cuda-python`` (runtime bindings) and a CUDA GPU; raises
    ModelError at construction otherwise. Device buffers are allocated per call (simple, safe
    with any batch size inside the engine's optimisation profile)."""

    def __init__(self, path: str | Path, *, name: str = "", profile: dict | None = None, device_id: int = 0):
        ok, reason = tensorrt_status()
        if not ok:
            raise ModelError(f"{path}: cannot run a TensorRT engine: {reason}")
        import tensorrt as trt

        self._trt = trt
        self._cudart = _cudart()
        self.name = name or Path(path).stem
        self.provider = "TensorRT"
        self.profile = profile or {}
        self._check(self._cudart.cudaSetDevice(device_id))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise ModelError(f"{path}: TensorRT cannot deserialize this engine (built with another TensorRT "
                             "version or GPU?); rebuild it with probret-export --trt on this machine")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.inputs, self.output_names, self._dtypes = [], [], {}
        for i in range(engine.num_io_tensors):
            n = engine.get_tensor_name(i)
            self._dtypes[n] = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                self.inputs.append(n)
            else:
                self.output_names.append(n)
        err, self._stream = self._cudart.cudaStreamCreate()
        self._check(err)

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def _check(self, result) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise ModelError(f"TensorRT engine {self.name}: CUDA error {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cu = self._cudart
        h2d = cu.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        buffers = []
        try:
            hosts = {}
            for n in self.inputs:
                arr = np.ascontiguousarray(feeds[n], dtype=self._dtypes[n])
                hosts[n] = arr
                if not self.context.set_input_shape(n, tuple(arr.shape)):
                    raise ModelError(f"TensorRT engine {self.name}: input {n} shape {arr.shape} is outside the "
                                     f"engine's optimisation profile {self.profile.get(n)}")
                ptr = self._check(cu.cudaMalloc(max(arr.nbytes, 1)))
                buffers.append(ptr)
                self._check(cu.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream))
                self.context.set_tensor_address(n, int(ptr))
            outs = {}
            for n in self.output_names:
                shape = tuple(self.context.get_tensor_shape(n))
                arr = np.empty(shape, dtype=self._dtypes[n])
                ptr = self._check(cu.cudaMalloc(max(arr.nbytes, 1)))
                buffers.append(ptr)
                self.context.set_tensor_address(n, int(ptr))
                outs[n] = (arr, ptr)
            if not self.context.execute_async_v3(int(self._stream)):
                raise ModelError(f"TensorRT engine {self.name}: execution failed")
            for n, (arr, ptr) in outs.items():
                self._check(cu.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, d2h, self._stream))
            self._check(cu.cudaStreamSynchronize(self._stream))
            return {n: arr for n, (arr, _) in outs.items()}
        finally:
            for ptr in buffers:
                cu.cudaFree(ptr)


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
class BundleRuntime:
    """The four graphs of a bundle behind four calls (module docstring). Sessions open lazily."""

    def __init__(self, bundle: Bundle | str | Path, *, device: str = "auto", seed: int | None = None,
                 threads: int | None = None, pair_workers: int | None = None, spinning: bool | None = None,
                 text_batch: int = 256, frame_batch: int = 256,
                 video_batch: int = 256, pair_text_batch: int = 64, pair_video_batch: int = 1024,
                 trt_cache: str | Path | None = None, graph_cache: bool | str | Path = True):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.graph_cache = graph_cache
        if device not in DEVICES:
            raise ModelError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        self.device = device
        self.threads = threads
        self.spinning = spinning
        if pair_workers is not None and int(pair_workers) < 1:
            raise ModelError(f"pair_workers must be >= 1, got {pair_workers}")
        self.pair_workers = int(pair_workers) if pair_workers else (int(threads) if threads else _usable_cores())
        self._pool = None
        self._use_engines = self._want_engines(device)
        self._trt_cache = trt_cache
        self._providers: list | None = None
        if not (self._use_engines and all(g in self.bundle.engines for g in self.bundle.graphs)):
            self._ort_providers()  # an unusable explicit device fails here, at once
        self._sessions: dict[str, Any] = {}
        self.providers: dict[str, str] = {}
        self.precisions: dict[str, str] = {}  # per opened ONNX graph: "fp32", or "int8" when its probe passed
        s = self.bundle.sampling
        self.seed = int(seed if seed is not None else s.get("seed", 0) or 0)
        self._noise_cache: dict[int, dict[str, np.ndarray]] = {}
        self._tokenizer = None
        self.batch = {"text": text_batch, "frame": frame_batch, "video": video_batch,
                      "pair_text": pair_text_batch, "pair_video": pair_video_batch}
        self._limit_batches_to_engines()

    # -- sessions ------------------------------------------------------------------------------
    def _want_engines(self, device: str) -> bool:
        if not self.bundle.engines or device in ("cpu", "cuda"):
            return False
        ok, reason = tensorrt_status()
        if device == "tensorrt" and not ok:
            raise ModelError(f"--device tensorrt: {reason}")
        return ok

    def _ort_providers(self) -> list:
        if self._providers is None:
            device = "auto" if self.device == "tensorrt" and self._use_engines else self.device
            self._providers = provider_chain(device, trt_cache=self._trt_cache)
        return self._providers

    def _optimized_path(self, path: Path) -> Path | None:
        """The cache file of graph file ``path``'s ORT-optimised form (module docstring), or None:
        caching off, a GPU provider in the chain (those optimise for their own kernels), or no
        sha256 to key by."""
        if not self.graph_cache or self._ort_providers() != ["CPUExecutionProvider"]:
            return None
        try:
            meta = (self.bundle.manifest.get("files") or {}).get(path.relative_to(self.bundle.path).as_posix())
        except ValueError:
            return None
        sha = meta.get("sha256") if isinstance(meta, dict) else None
        if not sha:
            return None
        return optimized_graph_path(str(sha), None if self.graph_cache is True else self.graph_cache)

    def _limit_batches_to_engines(self) -> None:
        if not self._use_engines:
            return
        limits = {"text": ("text_encoder", "input_ids", 0), "frame": ("frame_encoder", "pixels", 0),
                  "video": ("video_side", "frames", 0), "pair_text": ("pair_score", "text_sentence", 0)}
        for key, (graph, tensor, axis) in limits.items():
            prof = self.bundle.engines.get(graph, {}).get("profiles", {}).get(tensor)
            if prof:
                self.batch[key] = min(self.batch[key], int(prof[2][axis]))
        pair = self.bundle.engines.get("pair_score", {}).get("profiles", {})
        video_in = next((v for k, v in pair.items() if k.startswith("video_")), None)
        if video_in:
            self.batch["pair_video"] = min(self.batch["pair_video"], int(video_in[2][0]))

    def session(self, name: str):
        if name not in self._sessions:
            engine = self.bundle.engine_path(name) if self._use_engines else None
            sess = None
            if engine is not None:
                try:
                    sess = TrtGraph(engine, name=name, profile=self.bundle.engines[name].get("profiles"))
                except ModelError as exc:
                    if self.device != "auto":
                        raise
                    log.warning("%s; running %s with ONNX Runtime instead", exc, name)
            if sess is None:
                sess = self._open_checked(name)
            self._sessions[name] = sess
            self.providers[name] = sess.provider
            log.info("bundle %s: %s runs on %s", self.bundle.path, name, sess.provider)
        return self._sessions[name]

    def _open_ort(self, name: str, path: Path) -> "OrtGraph":
        threads, spinning = self.threads, self.spinning
        cpu = self._ort_providers()[0] == "CPUExecutionProvider"
        if name == "pair_score" and self.pair_workers > 1 and cpu:
            threads = 1  # tiles run concurrently instead (module docstring)
        if name == "text_encoder" and spinning is None and cpu:
            spinning = False  # idle, it would spin on the cores the pair workers score on next (module docstring)
        return OrtGraph(path, self._ort_providers(), name=name, threads=threads, spinning=spinning,
                        optimized=self._optimized_path(path),
                        mem_pattern=False if cpu and name in ("text_encoder", "pair_score") else None)

    def _open_checked(self, name: str) -> "OrtGraph":
        """The graph's ONNX Runtime session; an int8 graph only when it passes the bundle's probe
        on this machine, else its fp32 graph (engine/int8_probe.py). ``precisions`` records which."""
        spec = self.bundle.graphs[name]
        sess = self._open_ort(name, spec.file)
        self.precisions[name] = spec.precision
        if spec.precision == "int8" and spec.fp32_file is not None and self.bundle.int8_probe is not None:
            from probret.engine.int8_probe import int8_verdict

            if not int8_verdict(self.bundle, name, sess):
                sess = self._open_ort(name, spec.fp32_file)
                self.precisions[name] = "fp32"
        return sess

    # -- text ----------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from probret.engine.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.bundle.tokenizer_file, context_length=self.bundle.context_length)
        return self._tokenizer

    def tokenize(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 (N, L), truncated bool (N,)): the bundle's own vocabulary and context length."""
        ids, cut = self.tokenizer.encode_batch(texts, self.bundle.context_length)
        return ids.astype(np.int32), cut

    def encode_text(self, texts: str | Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
        """Texts (or token ids (N, L)) -> the text graph's outputs: text_sentence (N, D) and, for
        token-level methods, text_tokens (N, L, D) and text_mask (N, L)."""
        ids = texts if isinstance(texts, np.ndarray) else self.tokenize(texts)[0]
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        sess = self.session("text_encoder")
        return self._batched(sess, {"input_ids": ids}, self.batch["text"])

    # -- video ---------------------------------------------------------------------------------
    def preprocess(self, frames_uint8: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) RGB -> float32 (T, 3, S, S) with the bundle's size / mean / std."""
        from probret.engine.preprocess import preprocess_frames

        p = self.bundle.preprocessing
        size = p["image_size"]
        size = size if isinstance(size, int) else int(size[0])
        return preprocess_frames(frames_uint8, size=size, mean=p["mean"], std=p["std"])

    def encode_frames(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> frame features (N, D)."""
        sess = self.session("frame_encoder")
        return self._batched(sess, {"pixels": np.asarray(pixels, dtype=np.float32)}, self.batch["frame"])["frame_features"]

    def encode_videos(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N_v, T', 3, H, W) -> frame features (N_v, T', D)."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 5:
            raise ValueError(f"pixels must be (N_v, T, 3, H, W), got shape {pixels.shape}")
        n, t = pixels.shape[:2]
        return self.encode_frames(pixels.reshape(n * t, *pixels.shape[2:])).reshape(n, t, -1)

    def video_side(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Frame features (N_v, T', D) -> the per-video tensors (each N_v first) an index stores."""
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 3 or frames.shape[1] != self.bundle.num_frames:
            raise ValueError(f"frames must be (N_v, {self.bundle.num_frames}, D), got shape {frames.shape}")
        return self._batched(self.session("video_side"), {"frames": frames}, self.batch["video"])

    # -- scoring -------------------------------------------------------------------------------
    def noise(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """The noise banks fed to the pair graph (empty unless the bundle is noise-input)."""
        seed = self.seed if seed is None else int(seed)
        if seed not in self._noise_cache:
            self._noise_cache[seed] = cached_noise(self.bundle.noise_specs, seed)
        return self._noise_cache[seed]

    def score(self, text: dict[str, np.ndarray], video: dict[str, np.ndarray], *, seed: int | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (and uncertainty, or None) of every text against every video, (N_t, N_v) float32,
        in blocks of (pair_text_batch x pair_video_batch). Video tensors may be float16 (an index's
        stored rows): they are converted exactly, tile by tile (module docstring, "Scoring float16 rows")."""
        sess = self.session("pair_score")
        noise = self.noise(seed)
        names = sess.input_names
        text_in = [n for n in names if n.startswith("text_")]
        video_in = [n for n in names if n.startswith("video_")]
        for n in text_in + video_in:
            if n not in (text if n.startswith("text_") else video):
                raise ModelError(f"pair graph needs {n!r}, which the given {'text' if n.startswith('text_') else 'video'} features lack")
        n_t = text[text_in[0]].shape[0]
        n_v = video[video_in[0]].shape[0]
        scores = np.empty((n_t, n_v), dtype=np.float32)
        unc = np.empty((n_t, n_v), dtype=np.float32) if "uncertainty" in sess.output_names else None
        bt, bv = max(1, self.batch["pair_text"]), max(1, self.batch["pair_video"])
        workers = self.pair_workers if getattr(sess, "provider", "") == "CPUExecutionProvider" else 1
        if workers > 1:  # enough tiles for every worker, but not tiles so small that per-run costs dominate
            n_text_blocks = -(-n_t // bt)
            bv = min(bv, max(MIN_PAIR_TILE_VIDEOS, -(-n_v // max(1, workers // n_text_blocks))))
        noise_feeds = {n: noise[n] for n in names if n.startswith("noise_")}
        # stored float16 rows become float32 tile by tile, each by the worker that scores it, in a
        # buffer that worker reuses (module docstring, "Scoring float16 rows")
        halves = [n for n in video_in if video[n].dtype == np.float16
                  and np.dtype(getattr(sess, "_dtypes", {}).get(n, np.float32)) == np.float32]
        if halves:
            _half_to_float(np.zeros(1, np.float16), np.zeros(1, np.float32))  # the caster, once, here
        local = threading.local()

        def tile(ij: tuple[int, int]) -> None:
            i, j = ij
            rows = {n: video[n][j:j + bv] for n in video_in}
            if halves:
                if not hasattr(local, "buffers"):
                    local.buffers = {}
                rows.update(_as_float32({n: rows[n] for n in halves}, local.buffers))
            feeds = {**{n: text[n][i:i + bt] for n in text_in}, **rows, **noise_feeds}
            out = sess.run(feeds)
            scores[i:i + bt, j:j + bv] = out["scores"]
            if unc is not None:
                unc[i:i + bt, j:j + bv] = out["uncertainty"]

        tiles = [(i, j) for i in range(0, n_t, bt) for j in range(0, n_v, bv)]
        if workers > 1 and len(tiles) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.pair_workers, thread_name_prefix="probret-pair")
            list(self._pool.map(tile, tiles))  # re-raises a tile's exception here
        else:
            for ij in tiles:
                tile(ij)
        return scores, unc

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _batched(sess, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        n = next(iter(feeds.values())).shape[0]
        if n == 0:
            raise ValueError("empty batch")
        batch = max(1, int(batch))
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, n, batch):
            out = sess.run({k: v[i:i + batch] for k, v in feeds.items()})
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        return {k: v[0] if len(v) == 1 else np.concatenate(v, 0) for k, v in parts.items()}


def open_runtime(path: str | Path, *, device: str = "auto", **kwargs) -> BundleRuntime:
    """``load_bundle`` (verifying every file) + ``BundleRuntime``."""
    return BundleRuntime(load_bundle(path), device=device, **kwargs)
