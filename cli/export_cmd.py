"""``probret-export`` / ``probret export``: checkpoint -> ONNX (+ TensorRT) bundle with parity gates.

Progress goes to stderr, the final summary to stdout (``--json`` for a machine-readable one).
Exit codes: 0 bundle written; 4 model problem (unreadable checkpoint, --trt without TensorRT or a
GPU, a failed parity gate: then no bundle is written); 2 bad usage.
"""

from __future__ import annotations

import json
import time

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=True, file_okay=False),
              help="Bundle directory to write (an existing bundle there is replaced).")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (needs TensorRT >= 10 and a CUDA GPU).")
@click.option("--fp16", is_flag=True, help="Build the encoder engines in fp16 (with --trt; LayerNorm/softmax/exp stay fp32).")
@click.option("--sampling", type=click.Choice(["noise-input", "fixed-seed"]), default="noise-input", show_default=True,
              help="noise-input: noise is a graph input drawn by the engine from --seed; fixed-seed: drawn once now "
                   "and stored in the graph as a constant.")
@click.option("--samples", type=int, default=None, help="M, samples per pair for best-of-M (default: the checkpoint's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise (and of the parity inputs).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--benchmark", type=click.Path(file_okay=False, exists=True), default=None,
              help="A procedural world (probret synth) whose test split is the retrieval parity benchmark "
                   "(default: a small world generated on the fly).")
@click.option("--benchmark-videos", type=int, default=24, show_default=True, help="Videos in the retrieval benchmark.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="int8 text / frame encoders for ONNX Runtime on the CPU (dynamic, per-channel weights; "
                   "gated against fp32: <= 1 pt R@1 loss). About 4x faster on CPUs with VNNI/AMX.")
@click.option("--calibrate", "calibrate", type=click.Path(file_okay=False, exists=True), default=None,
              help="Dataset root: fit the per-hit confidence calibrator on its validation split and store it in "
                   "the bundle (export/calibrate.py; never on test).")
@click.option("--calibrate-split", default="val", show_default=True, help="Split to fit on (test is refused).")
@click.option("--calibrate-dataset", default="procedural", show_default=True, help="Dataset reader of --calibrate.")
@click.option("--calibrate-gallery", type=click.IntRange(min=2), default=None,
              help="Fit on galleries of this many videos cut from the split (confidence depends on gallery size; "
                   "default: the whole split as one gallery).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def export(checkpoint, out, trt, fp16, sampling, samples, seed, opset, benchmark, benchmark_videos, quantize,
           calibrate, calibrate_split, calibrate_dataset, calibrate_gallery, as_json, quiet):
    """Export CHECKPOINT (a directory written by probret-train) to an ONNX / TensorRT bundle."""
    if trt:  # before torch is even imported: a missing TensorRT / GPU fails at once
        from probret.export.trt import require_tensorrt

        require_tensorrt()
    from probret.export.exporter import ExportOptions, export_checkpoint

    from probret.cli.logs import setup_logging

    setup_logging(quiet=quiet)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - t0:6.1f}s] {msg}", err=True)

    options = ExportOptions(trt=trt, fp16=fp16, sampling=sampling, samples=samples, seed=seed, opset=opset,
                            benchmark=benchmark, benchmark_videos=benchmark_videos, quantize=quantize,
                            calibrate=calibrate, calibrate_split=calibrate_split,
                            calibrate_dataset=calibrate_dataset, calibrate_gallery=calibrate_gallery)
    result = export_checkpoint(checkpoint, out, options, progress=progress)
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    r = s["retrieval"]
    errs = s["max_err"]
    feat = max((v for k, v in errs.items() if k.startswith(("text_encoder", "frame_encoder"))), default=0.0)
    video = max((v for k, v in errs.items() if k.startswith("video_side")), default=0.0)
    sampling_line = (f"{s['sampling']}, M={s['samples']}, seed={s['seed']}" if s["samples"] is not None
                     else s["sampling"])
    lines = [
        ("bundle", s["bundle"]),
        ("method", f"{s['method']} ({s['export_form']})"),
        ("sampling", sampling_line),
        ("graphs", ", ".join(f"{g}.onnx" for g in ("text_encoder", "frame_encoder", "video_side", "pair_score"))),
        ("parity", f"passed: max |err| features {feat:.1e}, video side {video:.1e} (relative), "
                   f"scores {errs.get('pair_score.scores', 0.0):.1e} (ONNX Runtime vs PyTorch)"),
        ("retrieval", f"top-10 identical for {100 * r['topk_identical']:.0f}% of {r['queries']} queries x "
                      f"{r['videos']} videos; R@1 t2v {r['R1_t2v']:.1f} (PyTorch {r['R1_t2v_ref']:.1f}), "
                      f"v2t {r['R1_v2t']:.1f} (PyTorch {r['R1_v2t_ref']:.1f})"),
    ]
    if "tensorrt" in s:
        t = s["tensorrt"]
        lines.append(("tensorrt", f"{', '.join(s['engines'])} ({t['precision']}): top-10 overlap "
                                  f"{t['topk_overlap']:.3f}, delta R@1 t2v {t['delta_R1_t2v']:+.1f}, "
                                  f"v2t {t['delta_R1_v2t']:+.1f}"))
    lines.append(("time", f"{s['seconds']:.1f} s"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{k:<{width}}  {v}")


def main() -> None:
    """Console entry point of ``probret-export``."""
    from probret.cli.main import run_guarded

    run_guarded(export, prog_name="probret-export")


if __name__ == "__main__":
    main()
