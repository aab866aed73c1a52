"""Checkpoint -> bundle: graphs, manifest, parity gates, optional TensorRT engines.

``export_checkpoint(ckpt, out, ExportOptions(...))`` does, in order:

1. checks the options, and with ``trt=True`` that TensorRT and a GPU are there (fails at once);
2. loads the checkpoint, applies ``samples`` (M), builds the method's export form (``_load``);
3. describes the bundle as an ``engine.manifest.Manifest`` (``_describe``) and writes the four
   ONNX graphs and the tokenizer vocabulary into a temporary sibling directory of ``out``
   (``.NAME.tmp-XXXX``);
4. runs the parity gates through ``engine/`` (ONNX Runtime, CPU) against PyTorch, on the bundle
   as described in memory (``engine.bundle.Bundle.from_manifest``);
5. with ``quantize="int8"``: adds int8 text and frame encoders beside the fp32 ones
   (``graphs.quantize_int8``: dynamic quantisation of their MatMul / Gemm weights, 7-bit so that
   no CPU's int16 pair sums can saturate) and gates them against the fp32 graphs under ONNX
   Runtime: features within ``parity.INT8_TOLERANCES`` and, on the mini-benchmark, an R@1 loss of
   at most 1 pt both ways (``RETRIEVAL_GATES``); the measured R@1 change goes into the manifest's
   ``quantization``. Then it stores the probe the engine replays at load on other CPUs
   (engine/int8_probe.py) and checks that it passes here. CPU only: it excludes ``trt``;
6. with ``trt=True``: builds the engines and gates them against ONNX Runtime;
7. writes ``parity.json`` and, once, the manifest (every file's sha256), verifies the bundle with
   ``engine.bundle.load_bundle``, and only then renames the directory to ``out`` (replacing an
   older bundle there). A failing gate raises :class:`ParityError` and leaves nothing behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from probret.engine import __version__ as probret_version
from probret.engine.bundle import GRAPH_NAMES, Bundle, is_bundle, load_bundle, sha256_file
from probret.engine.errors import ModelError
from probret.engine.fsutil import atomic_write_json, atomic_write_text, fsync_dir
from probret.engine.int8_probe import probe_errors
from probret.engine.manifest import (FORMAT, FORMAT_VERSION, MANIFEST, EngineEntry, FileEntry, GraphEntry, Int8Probe,
                                     Manifest, NoiseEntry, ParitySummary, Preprocessing, Quantization, Sampling, Source,
                                     TokenizerEntry)
from probret.engine.runtime import BundleRuntime, draw_noise
from probret.export.calibrate import calibration_for_export
from probret.export.forms import create_form, set_num_samples
from probret.export.graphs import (INT8_GRAPHS, INT8_SCHEME, FrameEncoderGraph, PairGraph, TextEncoderGraph,
                                   VideoSideGraph, export_onnx, onnx_io, quantize_int8)
from probret.export import parity as P

__all__ = ["ExportOptions", "ExportResult", "ParityError", "export_checkpoint", "SAMPLING_MODES", "MIN_OPSET",
           "QUANTIZE_MODES"]

SAMPLING_MODES = ("noise-input", "fixed-seed")
QUANTIZE_MODES = ("int8",)
MIN_OPSET = 17
TOKENIZER_DIR = "tokenizer"
INT8_PROBE_FILE = "int8_probe.npz"


class ParityError(ModelError):
    """An exported graph (or engine) does not reproduce PyTorch within the gates."""


@dataclass
class ExportOptions:
    trt: bool = False
    fp16: bool = False
    sampling: str = "noise-input"
    samples: int | None = None  # None: the checkpoint's M
    seed: int = 0
    opset: int = MIN_OPSET
    benchmark: str | Path | None = None  # a procedural world; None: generate a small one
    benchmark_videos: int = 24
    generic: bool = False  # force the head's own video_side/pair_side (GenericForm)
    workspace_gib: float = 4.0
    quantize: str | None = None  # None (fp32) or "int8": int8 text / frame encoders for ONNX Runtime CPU
    calibrate: str | Path | None = None  # dataset root: fit the confidence calibrator (export/calibrate.py)
    calibrate_split: str = "val"  # never test (refused)
    calibrate_dataset: str = "procedural"
    calibrate_gallery: int | None = None  # fit on galleries of this many videos; None: the whole split

    @property
    def benchmark_path(self) -> Path | None:
        return Path(self.benchmark) if self.benchmark else None


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    parity: dict
    seconds: float
    summary: dict = field(default_factory=dict)


@dataclass
class _Model:
    """What every stage of one export works from: the checkpoint's model and its export form."""

    checkpoint: Path
    model: Any  # RetrievalModel, eval mode
    config: dict
    form: Any  # an export form (export/forms.py)
    samples: int | None
    banks: dict[str, np.ndarray]  # the noise banks by graph input name (engine.runtime.draw_noise)
    image_size: int

    @property
    def torch_banks(self) -> dict[str, torch.Tensor]:
        return {s.key: torch.from_numpy(self.banks[s.name]) for s in self.form.noise_specs}


def _check_options(o: ExportOptions) -> None:
    if o.sampling not in SAMPLING_MODES:
        raise ModelError(f"--sampling must be one of {', '.join(SAMPLING_MODES)}, got {o.sampling!r}")
    if o.opset < MIN_OPSET:
        raise ModelError(f"--opset {o.opset}: probret graphs need opset >= {MIN_OPSET} (LayerNormalization)")
    if o.seed < 0:
        raise ModelError(f"--seed must be >= 0, got {o.seed}")
    if o.fp16 and not o.trt:
        raise ModelError("--fp16 applies to TensorRT engines: use it together with --trt")
    if o.benchmark_videos < 2:
        raise ModelError("the mini-benchmark needs at least 2 videos")
    if o.calibrate_gallery is not None and o.calibrate_gallery < 2:
        raise ModelError(f"--calibrate-gallery must be at least 2 videos, got {o.calibrate_gallery}")
    if o.quantize is not None and o.quantize not in QUANTIZE_MODES:
        raise ModelError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {o.quantize!r}")
    if o.quantize and o.trt:
        raise ModelError("--quantize int8 makes ONNX Runtime CPU graphs (MatMulInteger), which TensorRT does not "
                         "build; export TensorRT engines without it (--trt [--fp16])")


def _prepare_out(out: Path) -> None:
    if out.exists():
        if out.is_file():
            raise ModelError(f"--out {out} is a file; give a directory for the bundle")
        if not is_bundle(out) and any(out.iterdir()):
            raise ModelError(f"--out {out} exists, is not empty and is not a probret bundle; choose another "
                             "directory (an existing bundle there would be replaced)")
    out.parent.mkdir(parents=True, exist_ok=True)


def _atomic_replace(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _versions() -> dict:
    import onnx
    import onnxruntime
    import open_clip

    return {"probret": probret_version, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "open_clip": open_clip.__version__}


def export_checkpoint(checkpoint: str | Path, out: str | Path, options: ExportOptions | None = None, *,
                      progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``checkpoint`` to the bundle directory ``out`` (module docstring)."""
    o = options or ExportOptions()
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    _check_options(o)
    trt_info = None
    if o.trt:
        from probret.export.trt import require_tensorrt

        trt_info = require_tensorrt()
    out = Path(out)
    _prepare_out(out)
    m = _load(Path(checkpoint), o, say)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _describe(m, o)
        manifest.graphs = _export_graphs(tmp, m, o, say)
        manifest.tokenizer.file = _copy_vocabulary(tmp)
        report = _run_gates(tmp, manifest, m, o, trt_info, say)
        manifest.calibration = calibration_for_export(m.model, m.checkpoint, o, say)
        _finish(tmp, out, manifest, report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    summary = _summary(out, manifest, report, seconds)
    say(f"bundle written to {out} ({seconds:.1f} s)")
    return ExportResult(out=out, manifest=manifest.to_dict(), parity=report, seconds=seconds, summary=summary)


def _load(checkpoint: Path, o: ExportOptions, say: Callable[[str], None]) -> _Model:
    import open_clip

    from probret.train.checkpoint import load_checkpoint

    say(f"loading checkpoint {checkpoint}")
    model, ckpt_config = load_checkpoint(checkpoint)
    model.eval()
    bb = model.backbone
    if not isinstance(bb.tokenizer, open_clip.tokenizer.SimpleTokenizer):
        raise ModelError(f"{checkpoint}: backbone {bb.name} uses the tokenizer {type(bb.tokenizer).__name__}; "
                         "the engine's torch-free tokenizer covers CLIP's BPE (SimpleTokenizer) only")
    if not isinstance(bb.image_size, int) and bb.image_size[0] != bb.image_size[1]:
        raise ModelError(f"{bb.name}: non-square image size {bb.image_size} is not supported by the bundle format")
    samples = set_num_samples(model.head, o.samples)
    form = create_form(model.head, generic=o.generic)
    banks = draw_noise([s.to_dict() for s in form.noise_specs], o.seed)
    size = bb.image_size if isinstance(bb.image_size, int) else int(bb.image_size[0])
    return _Model(checkpoint, model, ckpt_config, form, samples, banks, size)


def _describe(m: _Model, o: ExportOptions) -> Manifest:
    """The manifest of the bundle being exported, but for what later stages add (graphs, files,
    quantization, engines, parity)."""
    bb, head, form, ckpt = m.model.backbone, m.model.head, m.form, m.checkpoint
    specs = [s.to_dict() for s in form.noise_specs]
    return Manifest(
        format=FORMAT, format_version=FORMAT_VERSION, probret_version=probret_version,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), versions=_versions(),
        source=Source(checkpoint=str(ckpt.resolve()), config_sha256=sha256_file(ckpt / "config.json"),
                      weights_sha256=sha256_file(ckpt / "model.safetensors")),
        model={**m.config.get("model", {}), "backbone_info": m.config.get("backbone", {})},
        method=head.name, export_form=type(form).__name__,
        pair_cost_per_pair="O(T'd)" if form.optimized else "head's own pair_side",
        embed_dim=form.embed_dim, num_frames=form.num_frames, opset=o.opset,
        preprocessing=Preprocessing(image_size=m.image_size, mean=[float(x) for x in bb.image_mean],
                                    std=[float(x) for x in bb.image_std], frames=form.num_frames,
                                    interpolation=getattr(bb, "image_interpolation", "bicubic")),
        tokenizer=TokenizerEntry(type="clip-bpe", file="", context_length=bb.context_length,
                                 sot_token_id=bb.sot_token_id, eot_token_id=bb.eot_token_id),
        sampling=Sampling(
            mode=o.sampling if specs else "deterministic", samples=m.samples if specs else None,
            seed=o.seed if specs else None,
            generator="numpy.random.Generator(numpy.random.PCG64(seed)); in 'noise' order: uniform -> "
                      "rng.random(shape, dtype=float32), gaussian -> rng.standard_normal(shape, dtype=float32), "
                      "then * scale",
            noise=[NoiseEntry(**s) for s in specs], reduction=getattr(head.config, "inference", None),
            shared="each bank is shared by every query and every video (common random numbers)"),
        video_outputs=[f"video_{k}" for k in form.video_names], uncertainty=form.has_uncertainty)


def _export_graph(tmp: Path, name: str, module, args: tuple, input_names: list[str], output_names: list[str],
                  dynamic: dict, o: ExportOptions, say: Callable[[str], None]) -> GraphEntry:
    rel = f"{name}.onnx"
    say(f"exporting {rel}")
    export_onnx(module, args, tmp / rel, input_names=input_names, output_names=output_names, dynamic_axes=dynamic,
                opset=o.opset)
    return _graph_entry(tmp / rel, rel, dynamic)


def _graph_entry(path: Path, rel: str, dynamic: dict, **extra) -> GraphEntry:
    inputs, outputs = onnx_io(path)
    axes = {t: {str(k): v for k, v in d.items()} for t, d in dynamic.items()}
    return GraphEntry(file=rel, inputs=inputs, outputs=outputs, dynamic_axes=axes, **extra)


def _export_graphs(tmp: Path, m: _Model, o: ExportOptions, say: Callable[[str], None]) -> dict[str, GraphEntry]:
    """The four ONNX graphs, traced on small example inputs (the gates use other sizes)."""
    bb, form = m.model.backbone, m.form
    ids = bb.tokenize(["a red circle moves left", "a blue square"]).to(torch.int32)
    text = TextEncoderGraph(bb, form.needs_tokens)
    graphs = {"text_encoder": _export_graph(
        tmp, "text_encoder", text, (ids,), ["input_ids"], text.output_names,
        {"input_ids": {0: "N_t"}, **{n: {0: "N_t"} for n in text.output_names}}, o, say)}
    frame = FrameEncoderGraph(bb)
    graphs["frame_encoder"] = _export_graph(
        tmp, "frame_encoder", frame, (torch.randn(2, 3, m.image_size, m.image_size),), ["pixels"],
        frame.output_names, {"pixels": {0: "N"}, "frame_features": {0: "N"}}, o, say)
    video = VideoSideGraph(form)
    frames = torch.randn(3, form.num_frames, form.embed_dim)
    graphs["video_side"] = _export_graph(
        tmp, "video_side", video, (frames,), ["frames"], video.output_names,
        {"frames": {0: "N_v"}, **{n: {0: "N_v"} for n in video.output_names}}, o, say)
    pair = PairGraph(form, fixed_noise=m.torch_banks if o.sampling == "fixed-seed" else None)
    with torch.no_grad():
        tf, vs = bb.encode_text(ids), form.video_side(frames)
    example = {"text_sentence": tf.sentence, "text_tokens": tf.tokens, "text_mask": tf.mask,
               **{f"video_{k}": vs[k] for k in form.video_names},
               **{s.name: m.torch_banks[s.key] for s in form.noise_specs}}
    dyn = {**{n: {0: "N_t"} for n in pair.text_names}, **{n: {0: "N_v"} for n in pair.video_input_names},
           **{n: {0: "N_t", 1: "N_v"} for n in pair.output_names}}
    graphs["pair_score"] = _export_graph(tmp, "pair_score", pair, tuple(example[n] for n in pair.input_names),
                                         pair.input_names, pair.output_names, dyn, o, say)
    return graphs


def _copy_vocabulary(tmp: Path) -> str:
    from probret.engine.tokenizer import default_vocab_path

    vocab = default_vocab_path()
    (tmp / TOKENIZER_DIR).mkdir()
    shutil.copyfile(vocab, tmp / TOKENIZER_DIR / vocab.name)
    return f"{TOKENIZER_DIR}/{vocab.name}"


# --------------------------------------------------------------------------------------------
# gates
# --------------------------------------------------------------------------------------------
def _run_gates(tmp: Path, manifest: Manifest, m: _Model, o: ExportOptions, trt_info: str | None,
               say: Callable[[str], None]) -> dict:
    """The parity report: ONNX Runtime vs PyTorch, then (when that passed) the int8 and TensorRT
    stages, each gated against ONNX Runtime fp32."""
    say("parity: ONNX Runtime vs PyTorch on fresh random inputs")
    ort_rt = BundleRuntime(Bundle.from_manifest(tmp, manifest), device="cpu")
    checks = P.graph_parity(m.model, m.form, ort_rt, m.banks, seed=o.seed)
    say("parity: retrieval on a procedural mini-benchmark")
    retrieval = P.retrieval_parity(m.model, m.form, ort_rt, m.banks, seed=o.seed, benchmark=o.benchmark_path,
                                   videos=o.benchmark_videos)
    report = {"onnxruntime": {"reference": "pytorch", "provider": ort_rt.providers,
                              "tolerances": {k: list(v) for k, v in P.TOLERANCES.items()}, "graphs": checks,
                              "retrieval": retrieval,
                              "passed": all(c["passed"] for c in checks) and retrieval["passed"]}}
    if o.quantize == "int8" and report["onnxruntime"]["passed"]:
        report["int8"] = _quantize_encoders(tmp, manifest, m, ort_rt, o, say)
    if o.trt and report["onnxruntime"]["passed"]:
        report["tensorrt"] = _build_engines(tmp, manifest, m, ort_rt, o, trt_info, say)
    passed = all(v["passed"] for v in report.values())
    return {"passed": passed, "seed": o.seed, "sampling": manifest.sampling.mode, **report}


def _quantize_encoders(tmp: Path, manifest: Manifest, m: _Model, ort_rt: BundleRuntime, o: ExportOptions,
                       say: Callable[[str], None]) -> dict:
    """Add int8 encoders beside the fp32 ones in ``tmp`` and gate them against ``ort_rt`` (the
    fp32 graphs); store the load-time probe. Returns the report section."""
    for name in INT8_GRAPHS:
        fp32 = manifest.graphs[name]
        rel = f"{name}.int8.onnx"
        say(f"quantizing {name} to int8 ({rel})")
        quantize_int8(tmp / fp32.file, tmp / rel)
        manifest.graphs[name] = _graph_entry(tmp / rel, rel, fp32.dynamic_axes, precision="int8", fp32_file=fp32.file)
    manifest.quantization = Quantization(mode="int8", graphs=list(INT8_GRAPHS), **INT8_SCHEME)
    say("parity: int8 encoders vs fp32 (ONNX Runtime)")
    q_rt = BundleRuntime(Bundle.from_manifest(tmp, manifest), device="cpu")
    checks = P.graph_parity(m.model, m.form, q_rt, m.banks, seed=o.seed + 2, table=P.INT8_TOLERANCES,
                            reference_rt=ort_rt)
    ret = P.retrieval_parity(m.model, m.form, q_rt, m.banks, seed=o.seed, benchmark=o.benchmark_path,
                             videos=o.benchmark_videos, reference_rt=ort_rt, int8=True)
    manifest.quantization.measured = {
        "reference": "the fp32 graphs under ONNX Runtime, same benchmark", "benchmark": ret["benchmark"],
        "queries": ret["queries"], "videos": ret["videos"], "R1_t2v": ret["R1_t2v"], "R1_t2v_fp32": ret["R1_t2v_ref"],
        "R1_v2t": ret["R1_v2t"], "R1_v2t_fp32": ret["R1_v2t_ref"], "delta_R1_t2v": ret["delta_R1_t2v"],
        "delta_R1_v2t": ret["delta_R1_v2t"], "topk_overlap": ret["topk_overlap"],
        "max_feature_err": {f"{c['graph']}.{c['output']}": c.get("max_scaled_err") for c in checks
                            if c["graph"] in INT8_GRAPHS}}
    probe = _write_probe(tmp, manifest, m, ort_rt, q_rt, o)
    return {"reference": "onnxruntime fp32", "provider": q_rt.providers, "scheme": INT8_SCHEME,
            "tolerances": {k: list(v) for k, v in P.INT8_TOLERANCES.items()}, "graphs": checks, "retrieval": ret,
            "probe": probe, "passed": all(c["passed"] for c in checks) and ret["passed"] and probe["passed"]}


def _write_probe(tmp: Path, manifest: Manifest, m: _Model, ort_rt: BundleRuntime, q_rt: BundleRuntime,
                 o: ExportOptions) -> dict:
    """Store fresh inputs and the fp32 encoders' outputs for them (engine/int8_probe.py), and
    replay them through the int8 encoders here, as the engine will on the CPU it runs on."""
    bb = m.model.backbone
    x = P.random_inputs(np.random.default_rng(o.seed + 104729), context_length=bb.context_length,
                        image_size=m.image_size, num_frames=m.form.num_frames, embed_dim=m.form.embed_dim,
                        n_text=4, n_images=4, sot=bb.sot_token_id or 49406, eot=bb.eot_token_id or 49407)
    arrays = {"text_encoder.input_ids": x["input_ids"], "frame_encoder.pixels": x["pixels"]}
    arrays.update({f"text_encoder.{k}": v for k, v in ort_rt.encode_text(x["input_ids"]).items()})
    arrays["frame_encoder.frame_features"] = ort_rt.encode_frames(x["pixels"])
    np.savez(tmp / INT8_PROBE_FILE, **arrays)
    tolerance = P.INT8_TOLERANCES["frame_features"][1]
    manifest.quantization.probe = Int8Probe(file=INT8_PROBE_FILE, tolerance=tolerance)
    errors = {}
    for name in INT8_GRAPHS:
        g = manifest.graphs[name]
        errors.update({f"{name}.{k}": v for k, v in probe_errors(
            q_rt.session(name).run, tmp / INT8_PROBE_FILE, name, [t.name for t in g.inputs],
            [t.name for t in g.outputs]).items()})
    return {"file": INT8_PROBE_FILE, "tolerance": tolerance, "errors": errors,
            "passed": all(e <= tolerance for e in errors.values())}


def _build_engines(tmp: Path, manifest: Manifest, m: _Model, ort_rt: BundleRuntime, o: ExportOptions,
                   trt_info: str | None, say: Callable[[str], None]) -> dict:
    """TensorRT engines of the four graphs, gated against ONNX Runtime. Returns the report section."""
    from probret.export import trt as T_

    (tmp / "trt").mkdir()
    engines = {}
    for name in GRAPH_NAMES:
        fp16 = o.fp16 and name in T_.FP16_GRAPHS
        graph = tmp / manifest.graphs[name].file
        say(f"building TensorRT engine trt/{name}.plan ({'fp16' if fp16 else 'fp32'})")
        inputs, _ = onnx_io(graph)
        info = T_.build_engine(graph, tmp / "trt" / f"{name}.plan", profiles=T_.profiles_for(name, inputs),
                               fp16=fp16, workspace_gib=o.workspace_gib)
        engines[name] = EngineEntry(file=f"trt/{name}.plan", **info)
    manifest.engines = engines
    say("parity: TensorRT vs ONNX Runtime")
    trt_rt = BundleRuntime(Bundle.from_manifest(tmp, manifest), device="tensorrt")
    table = P.FP16_TOLERANCES if o.fp16 else P.TRT_FP32_TOLERANCES
    checks = P.graph_parity(m.model, m.form, trt_rt, m.banks, seed=o.seed + 1, table=table, reference_rt=ort_rt)
    ret = P.retrieval_parity(m.model, m.form, trt_rt, m.banks, seed=o.seed, benchmark=o.benchmark_path,
                             videos=o.benchmark_videos, reference_rt=ort_rt, fp16=o.fp16)
    return {"reference": "onnxruntime", "device": trt_info, "precision": "fp16" if o.fp16 else "fp32",
            "tolerances": {k: list(v) for k, v in table.items()}, "graphs": checks, "retrieval": ret,
            "passed": all(c["passed"] for c in checks) and ret["passed"]}


# --------------------------------------------------------------------------------------------
# the bundle on disk
# --------------------------------------------------------------------------------------------
def _finish(tmp: Path, out: Path, manifest: Manifest, report: dict) -> None:
    """parity.json, then the manifest (written once, every file hashed), the final verification
    through the engine's reader, and the rename into place. A failed gate stops before."""
    ort = report["onnxruntime"]
    atomic_write_text(tmp / "parity.json", json.dumps(report, indent=2, default=float) + "\n")
    manifest.parity = ParitySummary(
        file="parity.json", passed=report["passed"],
        max_score_err=max((c.get("max_abs_err", 0.0) for c in ort["graphs"] if c["output"] == "scores"), default=0.0),
        topk_identical=ort["retrieval"]["topk_identical"], R1_t2v=ort["retrieval"]["R1_t2v"],
        R1_t2v_pytorch=ort["retrieval"]["R1_t2v_ref"])
    if not report["passed"]:
        raise ParityError(_failure_message(report))
    manifest.files = {f.relative_to(tmp).as_posix(): FileEntry(sha256=sha256_file(f), bytes=f.stat().st_size)
                      for f in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST)}
    atomic_write_json(tmp / MANIFEST, manifest.to_dict())
    load_bundle(tmp)  # the final check: the engine's reader, every hash as written
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it 0700
    _atomic_replace(tmp, out)


def _failure_message(report: dict) -> str:
    lines = []
    for backend in ("onnxruntime", "int8", "tensorrt"):
        r = report.get(backend)
        if not r or r["passed"]:
            continue
        for c in r["graphs"]:
            if not c["passed"]:
                value = {"exact": c.get("mismatches"), "scaled": c.get("max_scaled_err")}.get(c["kind"], c.get("max_abs_err"))
                err = c.get("error") or f"max {c['kind']} error {value:.3g} > tolerance {c['tolerance']:g}"
                lines.append(f"{backend}: {c['graph']}.{c['output']}: {err}")
        probe = r.get("probe")
        if probe and not probe["passed"]:
            worst = max(probe["errors"], key=probe["errors"].get)
            lines.append(f"{backend}: the load-time probe fails on this CPU ({worst}: error {probe['errors'][worst]:.3g} "
                         f"> tolerance {probe['tolerance']:g})")
        ret = r["retrieval"]
        if not ret["passed"]:
            lines.append(f"{backend}: retrieval gate failed ({ret['gate']}): {ret['topk_mismatches']} t2v and "
                         f"{ret.get('v2t_topk_mismatches', 0)} v2t rankings differ, top-k overlap "
                         f"{ret['topk_overlap']:.3f}, R@1 t2v {ret['R1_t2v']:.1f} vs {ret['R1_t2v_ref']:.1f}, "
                         f"tokenizer identical: {ret['tokenizer_identical']}")
    return "parity gate failed, no bundle written:\n  " + "\n  ".join(lines or ["(see report)"])


def _summary(out: Path, manifest: Manifest, report: dict, seconds: float) -> dict:
    ort = report["onnxruntime"]
    worst = {}  # the gated error of every output: abs, or scaled (|err| / max(1, |ref|)) for video-side tensors
    for c in ort["graphs"]:
        err = c.get("max_scaled_err" if c.get("kind") == "scaled" else "max_abs_err")
        if err is not None:
            worst[f"{c['graph']}.{c['output']}"] = err
    s = {"bundle": str(out), "method": manifest.method, "export_form": manifest.export_form,
         "sampling": manifest.sampling.mode, "samples": manifest.sampling.samples,
         "seed": manifest.sampling.seed, "graphs": sorted(manifest.graphs),
         "engines": sorted(manifest.engines or {}), "parity_passed": report["passed"],
         "max_err": worst, "retrieval": {k: ort["retrieval"][k] for k in
                                             ("queries", "videos", "topk_identical", "R1_t2v", "R1_t2v_ref",
                                              "R1_v2t", "R1_v2t_ref")},
         "seconds": round(seconds, 2)}
    if "int8" in report:
        q = report["int8"]["retrieval"]
        s["int8"] = {"graphs": list(INT8_GRAPHS), "scheme": INT8_SCHEME["name"], "topk_overlap": q["topk_overlap"],
                     "R1_t2v": q["R1_t2v"], "R1_t2v_fp32": q["R1_t2v_ref"], "delta_R1_t2v": q["delta_R1_t2v"],
                     "delta_R1_v2t": q["delta_R1_v2t"]}
    if "tensorrt" in report:
        t = report["tensorrt"]["retrieval"]
        s["tensorrt"] = {"precision": report["tensorrt"]["precision"], "topk_overlap": t["topk_overlap"],
                         "delta_R1_t2v": t["delta_R1_t2v"], "delta_R1_v2t": t["delta_R1_v2t"]}
    return s
