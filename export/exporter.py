"""Checkpoint -> bundle: graphs, manifest, parity gates, optional TensorRT engines.

``export_checkpoint(ckpt, out, ExportOptions(...))`` does, in order:

1. checks the options, and with ``trt=True`` that TensorRT and a GPU are there (fails at once);
2. loads the checkpoint, applies ``samples`` (M), builds the method's export form;
3. writes the four ONNX graphs, the tokenizer vocabulary and a manifest into a temporary sibling
   directory of ``out`` (``.NAME.tmp-XXXX``);
4. runs the parity gates through ``engine/`` (ONNX Runtime, CPU) against PyTorch;
5. with ``quantize="int8"``: replaces the text and frame encoders by int8 graphs
   (``graphs.quantize_int8``: dynamic quantisation of their MatMul / Gemm weights) and gates them
   against the fp32 graphs under ONNX Runtime: features within ``parity.INT8_TOLERANCES`` and, on
   the mini-benchmark, an R@1 loss of at most 1 pt both ways (``RETRIEVAL_GATES``); the measured
   R@1 change goes into the manifest's ``quantization``. CPU only: it excludes ``trt``;
6. with ``trt=True``: builds the engines and gates them against ONNX Runtime;
7. writes ``parity.json`` and the final manifest (every file's sha256), verifies the bundle with
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
from typing import Callable

import torch

from probret.engine import __version__ as probret_version
from probret.engine.bundle import (BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, GRAPH_NAMES, MANIFEST, is_bundle,
                                   load_bundle, sha256_file)
from probret.engine.errors import ModelError
from probret.engine.runtime import BundleRuntime, draw_noise
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


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    parity: dict
    seconds: float
    summary: dict = field(default_factory=dict)


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
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _versions() -> dict:
    import onnx
    import onnxruntime
    import open_clip

    return {"probret": probret_version, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "open_clip": open_clip.__version__}


def _write_manifest(tmp: Path, manifest: dict) -> None:
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = f.relative_to(tmp).as_posix()
        files[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest["files"] = files
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _graph_entry(path: Path, rel: str, dynamic: dict) -> dict:
    inputs, outputs = onnx_io(path)
    return {"file": rel, "inputs": [t.to_dict() for t in inputs], "outputs": [t.to_dict() for t in outputs],
            "dynamic_axes": dynamic}


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

    from probret.train.checkpoint import load_checkpoint

    say(f"loading checkpoint {checkpoint}")
    model, ckpt_config = load_checkpoint(checkpoint)
    model.eval()
    bb, head = model.backbone, model.head
    import open_clip

    if not isinstance(bb.tokenizer, open_clip.tokenizer.SimpleTokenizer):
        raise ModelError(f"{checkpoint}: backbone {bb.name} uses the tokenizer {type(bb.tokenizer).__name__}; "
                         "the engine's torch-free tokenizer covers CLIP's BPE (SimpleTokenizer) only")
    samples = set_num_samples(head, o.samples)
    form = create_form(head, generic=o.generic)
    size = bb.image_size if isinstance(bb.image_size, int) else int(bb.image_size[0])
    if not isinstance(bb.image_size, int) and bb.image_size[0] != bb.image_size[1]:
        raise ModelError(f"{bb.name}: non-square image size {bb.image_size} is not supported by the bundle format")
    L, D, T = bb.context_length, form.embed_dim, form.num_frames

    specs = [s.to_dict() for s in form.noise_specs]
    banks_np = draw_noise(specs, o.seed)
    banks = {s.key: torch.from_numpy(banks_np[s.name]) for s in form.noise_specs}

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # -- graphs ------------------------------------------------------------------------------
        graphs = {}
        ids = bb.tokenize(["a red circle moves left", "a blue square"]).to(torch.int32)
        text_graph = TextEncoderGraph(bb, form.needs_tokens)
        dyn = {"input_ids": {0: "N_t"}, **{n: {0: "N_t"} for n in text_graph.output_names}}
        say("exporting text_encoder.onnx")
        export_onnx(text_graph, (ids,), tmp / "text_encoder.onnx", input_names=["input_ids"],
                    output_names=text_graph.output_names, dynamic_axes=dyn, opset=o.opset)
        graphs["text_encoder"] = _graph_entry(tmp / "text_encoder.onnx", "text_encoder.onnx", dyn)

        frame_graph = FrameEncoderGraph(bb)
        dyn = {"pixels": {0: "N"}, "frame_features": {0: "N"}}
        say("exporting frame_encoder.onnx")
        export_onnx(frame_graph, (torch.randn(2, 3, size, size),), tmp / "frame_encoder.onnx",
                    input_names=["pixels"], output_names=frame_graph.output_names, dynamic_axes=dyn, opset=o.opset)
        graphs["frame_encoder"] = _graph_entry(tmp / "frame_encoder.onnx", "frame_encoder.onnx", dyn)

        video_graph = VideoSideGraph(form)
        frames = torch.randn(3, T, D)
        dyn = {"frames": {0: "N_v"}, **{n: {0: "N_v"} for n in video_graph.output_names}}
        say("exporting video_side.onnx")
        export_onnx(video_graph, (frames,), tmp / "video_side.onnx", input_names=["frames"],
                    output_names=video_graph.output_names, dynamic_axes=dyn, opset=o.opset)
        graphs["video_side"] = _graph_entry(tmp / "video_side.onnx", "video_side.onnx", dyn)

        pair_graph = PairGraph(form, fixed_noise=banks if o.sampling == "fixed-seed" else None)
        with torch.no_grad():
            tf = bb.encode_text(ids)
            vs = form.video_side(frames)
        example = {"text_sentence": tf.sentence, "text_tokens": tf.tokens, "text_mask": tf.mask,
                   **{f"video_{k}": vs[k] for k in form.video_names},
                   **{s.name: banks[s.key] for s in form.noise_specs}}
        args = tuple(example[n] for n in pair_graph.input_names)
        dyn = {**{n: {0: "N_t"} for n in pair_graph.text_names}, **{n: {0: "N_v"} for n in pair_graph.video_input_names},
               **{n: {0: "N_t", 1: "N_v"} for n in pair_graph.output_names}}
        say("exporting pair_score.onnx")
        export_onnx(pair_graph, args, tmp / "pair_score.onnx", input_names=pair_graph.input_names,
                    output_names=pair_graph.output_names, dynamic_axes=dyn, opset=o.opset)
        graphs["pair_score"] = _graph_entry(tmp / "pair_score.onnx", "pair_score.onnx", dyn)

        from probret.engine.tokenizer import default_vocab_path

        vocab = default_vocab_path()
        (tmp / TOKENIZER_DIR).mkdir()
        shutil.copyfile(vocab, tmp / TOKENIZER_DIR / vocab.name)

        # -- manifest ---------------------------------------------------------------------------
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "probret_version": probret_version,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "source": {"checkpoint": str(Path(checkpoint).resolve()),
                       "config_sha256": sha256_file(Path(checkpoint) / "config.json"),
                       "weights_sha256": sha256_file(Path(checkpoint) / "model.safetensors")},
            "model": {**ckpt_config.get("model", {}), "backbone_info": ckpt_config.get("backbone", {})},
            "method": head.name,
            "export_form": type(form).__name__,
            "pair_cost_per_pair": "O(T'd)" if form.optimized else "head's own pair_side",
            "embed_dim": D,
            "num_frames": T,
            "opset": o.opset,
            "preprocessing": {"image_size": size, "mean": list(bb.image_mean), "std": list(bb.image_std),
                              "frames": T, "frame_sampling": "uniform (segment midpoints)",
                              "resize": "shortest side, bicubic", "crop": "center",
                              "interpolation": getattr(bb, "image_interpolation", "bicubic")},
            "tokenizer": {"type": "clip-bpe", "file": f"{TOKENIZER_DIR}/{vocab.name}", "context_length": L,
                          "sot_token_id": bb.sot_token_id, "eot_token_id": bb.eot_token_id, "pad_token_id": 0,
                          "input_dtype": "int32"},
            "sampling": {
                "mode": o.sampling if specs else "deterministic",
                "samples": samples if specs else None,
                "seed": o.seed if specs else None,
                "generator": "numpy.random.Generator(numpy.random.PCG64(seed)); in 'noise' order: uniform -> "
                             "rng.random(shape, dtype=float32), gaussian -> rng.standard_normal(shape, dtype=float32), "
                             "then * scale",
                "noise": specs,
                "reduction": getattr(head.config, "inference", None),
                "shared": "each bank is shared by every query and every video (common random numbers)",
            },
            "graphs": graphs,
            "video_outputs": [f"video_{k}" for k in form.video_names],
            "uncertainty": form.has_uncertainty,
        }
        _write_manifest(tmp, manifest)

        # -- parity: ONNX Runtime vs PyTorch -----------------------------------------------------
        say("parity: ONNX Runtime vs PyTorch on fresh random inputs")
        ort_rt = BundleRuntime(load_bundle(tmp), device="cpu")
        checks = P.graph_parity(model, form, ort_rt, banks_np, seed=o.seed)
        say("parity: retrieval on a procedural mini-benchmark")
        retrieval = P.retrieval_parity(model, form, ort_rt, banks_np, seed=o.seed,
                                       benchmark=Path(o.benchmark) if o.benchmark else None, videos=o.benchmark_videos)
        report = {"onnxruntime": {"reference": "pytorch", "provider": ort_rt.providers, "tolerances":
                                  {k: list(v) for k, v in P.TOLERANCES.items()}, "graphs": checks,
                                  "retrieval": retrieval,
                                  "passed": all(c["passed"] for c in checks) and retrieval["passed"]}}

        # -- int8 encoders ----------------------------------------------------------------------
        if o.quantize == "int8" and report["onnxruntime"]["passed"]:
            report["int8"] = _quantize_encoders(tmp, manifest, model, form, ort_rt, banks_np, o, say)

        # -- TensorRT ---------------------------------------------------------------------------
        if o.trt and report["onnxruntime"]["passed"]:
            from probret.export import trt as T_

            (tmp / "trt").mkdir()
            engines = {}
            for name in GRAPH_NAMES:
                fp16 = o.fp16 and name in T_.FP16_GRAPHS
                say(f"building TensorRT engine trt/{name}.plan ({'fp16' if fp16 else 'fp32'})")
                inputs, _ = onnx_io(tmp / graphs[name]["file"])
                info = T_.build_engine(tmp / graphs[name]["file"], tmp / "trt" / f"{name}.plan",
                                       profiles=T_.profiles_for(name, inputs), fp16=fp16, workspace_gib=o.workspace_gib)
                engines[name] = {"file": f"trt/{name}.plan", **info}
            manifest["engines"] = engines
            _write_manifest(tmp, manifest)
            say("parity: TensorRT vs ONNX Runtime")
            trt_rt = BundleRuntime(load_bundle(tmp), device="tensorrt")
            table = P.FP16_TOLERANCES if o.fp16 else P.TRT_FP32_TOLERANCES
            tchecks = P.graph_parity(model, form, trt_rt, banks_np, seed=o.seed + 1, table=table, reference_rt=ort_rt)
            tret = P.retrieval_parity(model, form, trt_rt, banks_np, seed=o.seed,
                                      benchmark=Path(o.benchmark) if o.benchmark else None,
                                      videos=o.benchmark_videos, reference_rt=ort_rt, fp16=o.fp16)
            report["tensorrt"] = {"reference": "onnxruntime", "device": trt_info, "precision": "fp16" if o.fp16 else "fp32",
                                  "tolerances": {k: list(v) for k, v in table.items()}, "graphs": tchecks,
                                  "retrieval": tret, "passed": all(c["passed"] for c in tchecks) and tret["passed"]}
        passed = all(v["passed"] for v in report.values())
        report = {"passed": passed, "seed": o.seed, "sampling": manifest["sampling"]["mode"], **report}
        (tmp / "parity.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        manifest["parity"] = {"file": "parity.json", "passed": passed,
                              "max_score_err": max((c.get("max_abs_err", 0.0) for c in checks
                                                    if c["output"] == "scores"), default=0.0),
                              "topk_identical": retrieval["topk_identical"],
                              "R1_t2v": retrieval["R1_t2v"], "R1_t2v_pytorch": retrieval["R1_t2v_ref"]}
        _write_manifest(tmp, manifest)
        if not passed:
            raise ParityError(_failure_message(report))
        load_bundle(tmp)  # the final check: every hash as written
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it 0700
        _atomic_replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    summary = _summary(out, manifest, report, seconds)
    say(f"bundle written to {out} ({seconds:.1f} s)")
    return ExportResult(out=out, manifest=manifest, parity=report, seconds=seconds, summary=summary)


def _quantize_encoders(tmp: Path, manifest: dict, model, form, ort_rt, banks_np: dict, o: ExportOptions,
                       say: Callable[[str], None]) -> dict:
    """Swap the fp32 encoders of the bundle in ``tmp`` for int8 ones and gate them against
    ``ort_rt`` (the fp32 graphs, whose sessions are open already). Returns the report section."""
    graphs = manifest["graphs"]
    for name in INT8_GRAPHS:
        ort_rt.session(name)  # the fp32 reference keeps its session after its file is removed
        src, rel = tmp / graphs[name]["file"], f"{name}.int8.onnx"
        say(f"quantizing {name} to int8 ({rel})")
        quantize_int8(src, tmp / rel)
        graphs[name] = {**_graph_entry(tmp / rel, rel, graphs[name]["dynamic_axes"]), "precision": "int8",
                        "fp32_file": graphs[name]["file"]}
    manifest["quantization"] = {"mode": "int8", "graphs": list(INT8_GRAPHS), **INT8_SCHEME}
    _write_manifest(tmp, manifest)
    say("parity: int8 encoders vs fp32 (ONNX Runtime)")
    q_rt = BundleRuntime(load_bundle(tmp), device="cpu")
    checks = P.graph_parity(model, form, q_rt, banks_np, seed=o.seed + 2, table=P.INT8_TOLERANCES,
                            reference_rt=ort_rt)
    ret = P.retrieval_parity(model, form, q_rt, banks_np, seed=o.seed, benchmark=Path(o.benchmark) if o.benchmark
                             else None, videos=o.benchmark_videos, reference_rt=ort_rt, int8=True)
    manifest["quantization"]["measured"] = {
        "reference": "the fp32 graphs under ONNX Runtime, same benchmark", "benchmark": ret["benchmark"],
        "queries": ret["queries"], "videos": ret["videos"], "R1_t2v": ret["R1_t2v"], "R1_t2v_fp32": ret["R1_t2v_ref"],
        "R1_v2t": ret["R1_v2t"], "R1_v2t_fp32": ret["R1_v2t_ref"], "delta_R1_t2v": ret["delta_R1_t2v"],
        "delta_R1_v2t": ret["delta_R1_v2t"], "topk_overlap": ret["topk_overlap"],
        "max_feature_err": {f"{c['graph']}.{c['output']}": c.get("max_scaled_err") for c in checks
                            if c["graph"] in INT8_GRAPHS}}
    return {"reference": "onnxruntime fp32", "provider": q_rt.providers, "scheme": INT8_SCHEME,
            "tolerances": {k: list(v) for k, v in P.INT8_TOLERANCES.items()}, "graphs": checks, "retrieval": ret,
            "passed": all(c["passed"] for c in checks) and ret["passed"]}


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
        ret = r["retrieval"]
        if not ret["passed"]:
            lines.append(f"{backend}: retrieval gate failed ({ret['gate']}): {ret['topk_mismatches']} t2v and "
                         f"{ret.get('v2t_topk_mismatches', 0)} v2t rankings differ, top-k overlap "
                         f"{ret['topk_overlap']:.3f}, R@1 t2v {ret['R1_t2v']:.1f} vs {ret['R1_t2v_ref']:.1f}, "
                         f"tokenizer identical: {ret['tokenizer_identical']}")
    return "parity gate failed, no bundle written:\n  " + "\n  ".join(lines or ["(see report)"])


def _summary(out: Path, manifest: dict, report: dict, seconds: float) -> dict:
    ort = report["onnxruntime"]
    worst = {}  # the gated error of every output: abs, or scaled (|err| / max(1, |ref|)) for video-side tensors
    for c in ort["graphs"]:
        err = c.get("max_scaled_err" if c.get("kind") == "scaled" else "max_abs_err")
        if err is not None:
            worst[f"{c['graph']}.{c['output']}"] = err
    s = {"bundle": str(out), "method": manifest["method"], "export_form": manifest["export_form"],
         "sampling": manifest["sampling"]["mode"], "samples": manifest["sampling"]["samples"],
         "seed": manifest["sampling"]["seed"], "graphs": sorted(manifest["graphs"]),
         "engines": sorted(manifest.get("engines", {})), "parity_passed": report["passed"],
         "max_err": worst, "retrieval": {k: ort["retrieval"][k] for k in
                                             ("queries", "videos", "topk_identical", "R1_t2v", "R1_t2v_ref",
                                              "R1_v2t", "R1_v2t_ref")},
         "seconds": round(seconds, 2)}
    if "int8" in report:
        q = report["int8"]["retrieval"]
        s["int8"] = {"graphs": list(INT8_GRAPHS), "topk_overlap": q["topk_overlap"], "R1_t2v": q["R1_t2v"],
                     "R1_t2v_fp32": q["R1_t2v_ref"], "delta_R1_t2v": q["delta_R1_t2v"],
                     "delta_R1_v2t": q["delta_R1_v2t"]}
    if "tensorrt" in report:
        t = report["tensorrt"]["retrieval"]
        s["tensorrt"] = {"precision": report["tensorrt"]["precision"], "topk_overlap": t["topk_overlap"],
                         "delta_R1_t2v": t["delta_R1_t2v"], "delta_R1_v2t": t["delta_R1_v2t"]}
    return s
