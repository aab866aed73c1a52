"""Indexing benchmark: end-to-end ``update_index`` against the encoder alone, stage by stage.

    python bench/indexing.py --out bench/results/indexing.json      # full run (~3-5 min, 2 cores)
    python bench/indexing.py --quick                                 # smoke run (seconds)

Issue 6, target 3: end-to-end indexing videos/s >= 90 % of encoder-only throughput on the same
videos, i.e. decoding and resizing hidden behind inference. Everything is measured in ONE run
(docs/benchmarks_indexing.md holds the table and the notes):

* **clips**: ``--videos`` procedural clips (train/world.py, what ``probret synth`` writes) of
  ``--seconds`` s at ``--resolution``, 8 fps H.264 (GOP 16 frames, B-frames), the "short" set;
  and ``--long-videos`` clips of ``--long-seconds`` s, the "long" set, which the default 30 s
  window cuts into several segments and where engine/video.py's per-target seek-or-continue
  choice (``decode="auto"``) seeks to some targets and decodes through to others. Cached in
  ``--workdir``.
* **decode alone** (one thread, as the pipeline decodes: one ``open_video`` pass per file,
  FFmpeg threading off, unneeded non-reference frames dropped) and, for comparison, the way it
  decoded before (probe, then one ``sample_frames`` per segment with FFmpeg's frame + slice
  threads and every frame decoded). Per file: the decode mode used (``linear``: one forward
  pass; ``seek``: at least one seek), seeks, frames decoded / sampled, wall and CPU ms.
* **preprocess alone** (one thread): engine/preprocess.py on the decoded frames (Pillow-exact
  resize, crop, normalise), wall and CPU.
* **encoder only**: ``encode_videos`` + ``video_side`` + the ANN embedding on the pre-decoded
  pixels, in batches of ``--batch`` segments: what the pipeline's calling thread must do anyway.
* **end to end**: ``engine.pipeline.update_index`` into a fresh index (decoding threads
  overlapped with batched encoding, writes, fsync), its per-stage seconds (``IndexReport.stages``:
  decode, preprocess, encode, head, write, wait) and decode-mode counts.

Encoder-only and end-to-end runs alternate ``--repeats`` times, so load from other processes hits
both alike; the ratio is median(encoder-only s) / median(end-to-end s) (videos/s ratio). Also
printed: the **overlap bound** enc / (enc + (decode CPU + preprocess CPU) / cores), what a
perfectly overlapped pipeline reaches when the encoder already keeps every core busy (ONNX
Runtime's intra-op pool uses them all): decoding is then hidden only to the extent it is cheap.

Model ``--model`` (default ``ViT-B-32:random``: ViT-B/32 size, random weights, zero-shot meanP,
exported once into the probret model cache: ``$PROBRET_CACHE``, see engine/cache.py); ``--quick``
uses the shipped demo model and tiny clips. ``--variant NAME=k=v,...`` adds end-to-end runs with
other ``PipelineOptions`` (e.g. ``--variant w1=workers=1``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, machine, print_targets, say  # noqa: E402


def make_clips(root: Path, name: str, videos: int, seconds: int, resolution: tuple[int, int], seed: int) -> Path:
    """A folder of procedural clips (train/world.py), generated once and cached."""
    from probret.train.world import generate_world

    folder = root / f"{name}-{resolution[0]}x{resolution[1]}-{videos}x{seconds}s-seed{seed}"
    if not (folder / "world.json").is_file():
        say(f"[clips] generating {videos} procedural clips of {seconds} s at {resolution[0]}x{resolution[1]} ({name})")
        shutil.rmtree(folder, ignore_errors=True)
        generate_world(folder, videos=videos, seed=seed, resolution=resolution, frames=8 * seconds, fps=8,
                       splits=(0.0, 0.0, 1.0), workers=len(os.sched_getaffinity(0)))
    return folder / "videos"


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    return time.perf_counter() - t[0], time.process_time() - t[1]


def decode_alone(files: list[Path], settings, T: int, size: int) -> dict:
    """Decode (pipeline's way, and the previous way) and preprocess every file on one thread."""
    from probret.engine import video as video_mod
    from probret.engine.pipeline import _decode_chunk, _use_decoder_resize, _windows, plan_segments
    from probret.engine.preprocess import preprocess_frames

    rows, pixels = [], []
    tot = {"decode_s": 0.0, "decode_cpu_s": 0.0, "before_s": 0.0, "before_cpu_s": 0.0, "preprocess_s": 0.0,
           "preprocess_cpu_s": 0.0}
    for f in files:
        f.read_bytes()  # in the page cache for both ways (the end-to-end runs find it there too)
        # the pipeline's decode: one open, one pass, no FFmpeg threads, non-reference frames dropped
        t = _clock()
        with video_mod.open_video(f, thread_type="NONE") as v:
            info = v.info
            segs = plan_segments(info.duration, settings.window)
            rs = size if _use_decoder_resize(info, size, settings.resize) else None
            sampled, stats = v.sample(_windows(info, segs), T, size=rs)
        dec = _since(t)
        # the previous decode: probe, then one sample_frames per segment, frame + slice threads,
        # every frame decoded
        t = _clock()
        video_mod.probe_video(f)
        before_frames = 0
        for s, e in _windows(info, segs):
            sf, st = video_mod._sample(f, T, start=s, end=e, size=rs, skip_nonref=False)
            before_frames += st.frames_decoded
        bef = _since(t)
        frames = np.concatenate([x.frames for x in sampled])
        t = _clock()
        px = preprocess_frames(frames, size=size, mean=settings.mean, std=settings.std)
        pre = _since(t)
        px = px.reshape(len(segs), T, *px.shape[1:])
        # the pipeline's own decode function gives the same pixels
        same = np.array_equal(px, _decode_chunk(f, segs, num_frames=T, image_size=size, mean=settings.mean,
                                                std=settings.std, resize=settings.resize).pixels)
        pixels.append(px)
        tot["decode_s"] += dec[0]
        tot["decode_cpu_s"] += dec[1]
        tot["before_s"] += bef[0]
        tot["before_cpu_s"] += bef[1]
        tot["preprocess_s"] += pre[0]
        tot["preprocess_cpu_s"] += pre[1]
        rows.append({"file": f.name, "duration_s": round(info.duration, 2), "segments": len(segs),
                     "mode": "seek" if stats.seeks else "linear", "policy": stats.strategy, "seeks": stats.seeks,
                     "frames_decoded": stats.frames_decoded, "frames_decoded_before": before_frames,
                     "frames_sampled": len(segs) * T, "packets_skippable": stats.packets_skippable,
                     "decode_ms": dec[0] * 1e3, "decode_before_ms": bef[0] * 1e3, "preprocess_ms": pre[0] * 1e3,
                     "pixels_equal_pipeline": same})
    return {"file_rows": rows, **tot, "pixels": np.concatenate(pixels)}


def encoder_only(rt, pixels: np.ndarray, batch: int) -> dict:
    from probret.engine.pipeline import ann_embedding

    t = time.perf_counter()
    enc = head = 0.0
    for i in range(0, len(pixels), batch):
        t1 = time.perf_counter()
        frames = rt.encode_videos(pixels[i:i + batch])
        t2 = time.perf_counter()
        rt.video_side(frames)
        ann_embedding(frames)
        enc += t2 - t1
        head += time.perf_counter() - t2
    return {"seconds": time.perf_counter() - t, "frame_encoder_s": enc, "head_s": head}


def end_to_end(folder: Path, rt, settings, meta, workdir: Path, opts: dict) -> dict:
    from probret.engine.index import IndexWriter
    from probret.engine.pipeline import PipelineOptions, update_index

    index_dir = workdir / "bench-index"
    shutil.rmtree(index_dir, ignore_errors=True)
    with IndexWriter(index_dir, settings, model=meta, rebuild=True) as writer:
        report = update_index(folder, rt, writer, PipelineOptions(progress=False, **opts))
    shutil.rmtree(index_dir, ignore_errors=True)
    if report.failed:
        raise RuntimeError(f"indexing failed for {report.failed}")
    return {"seconds": report.seconds, "videos": report.encoded_videos, "segments": report.encoded_segments,
            "videos_per_s": report.videos_per_s, "stages_s": report.stages, "decode": report.decode}


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=k=v,k=v`` -> (NAME, PipelineOptions overrides typed like the defaults)."""
    from probret.engine.pipeline import PipelineOptions

    defaults = PipelineOptions()
    name, _, spec = text.partition("=")
    opts = {}
    for kv in filter(None, spec.split(",")):
        k, _, v = kv.partition("=")
        kind = type(getattr(defaults, k))
        opts[k] = v.lower() in ("1", "true", "yes") if kind is bool else kind(v)
    return name, opts


def bench_set(name: str, folder: Path, rt, settings, meta, workdir: Path, args, variants: dict) -> dict:
    files = sorted(folder.glob("*.mp4"))
    T, size, batch = rt.bundle.num_frames, settings.image_size, args.batch
    say(f"[{name}] decode + preprocess alone, one thread ({len(files)} files)")
    d = decode_alone(files, settings, T, size)
    pixels = d.pop("pixels")
    n_seg = len(pixels)
    rt.video_side(rt.encode_videos(pixels[:1]))  # sessions open, not timed
    base = {"batch_segments": batch}
    runs: dict[str, list] = {"encoder_only": [], "end_to_end": [], **{v: [] for v in variants}}
    for r in range(args.repeats):
        say(f"[{name}] repeat {r + 1}/{args.repeats}: encoder only ({n_seg} segments), end to end"
            + (f", variants {', '.join(variants)}" if variants else ""))
        runs["encoder_only"].append(encoder_only(rt, pixels, batch))
        runs["end_to_end"].append(end_to_end(folder, rt, settings, meta, workdir, base))
        for v, opts in variants.items():
            runs[v].append(end_to_end(folder, rt, settings, meta, workdir, {**base, **opts}))
    del pixels
    enc = statistics.median(x["seconds"] for x in runs["encoder_only"])
    e2e = statistics.median(x["seconds"] for x in runs["end_to_end"])
    cores = len(os.sched_getaffinity(0))
    side_cpu = d["decode_cpu_s"] + d["preprocess_cpu_s"]
    out = {"files": len(files), "segments": n_seg, "frames_per_segment": T, **d,
           "runs": runs, "encoder_only_s": enc, "end_to_end_s": e2e,
           "encoder_only_videos_per_s": len(files) / enc, "end_to_end_videos_per_s": len(files) / e2e,
           "encoder_frames_per_s": n_seg * T / enc,
           "ratio": enc / e2e,
           "ratio_per_repeat": [a["seconds"] / b["seconds"] for a, b in zip(runs["encoder_only"], runs["end_to_end"])],
           "overlap_bound": enc / (enc + side_cpu / cores),
           "decode_vs_before": d["decode_cpu_s"] / d["before_cpu_s"] if d["before_cpu_s"] else None}
    for v in variants:
        out[f"ratio_{v}"] = enc / statistics.median(x["seconds"] for x in runs[v])
    return out


def print_set(name: str, s: dict, verbose_files: bool) -> None:
    e = s["runs"]["end_to_end"]
    stages = {k: statistics.median(r["stages_s"][k] for r in e) for k in e[0]["stages_s"]}
    dec = e[0]["decode"]
    print(f"\n{name}: {s['files']} files, {s['segments']} segments x {s['frames_per_segment']} frames")
    print(f"  end to end    {s['end_to_end_videos_per_s']:.3f} videos/s (median {s['end_to_end_s']:.2f} s; stages: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()) + ")")
    print(f"  encoder only  {s['encoder_only_videos_per_s']:.3f} videos/s (median {s['encoder_only_s']:.2f} s, "
          f"{s['encoder_frames_per_s']:.1f} frames/s)")
    print(f"  decode alone  {s['decode_s']:.2f} s wall / {s['decode_cpu_s']:.2f} s CPU on one thread "
          f"(the previous way: {s['before_s']:.2f} s / {s['before_cpu_s']:.2f} s CPU)")
    print(f"  preprocess    {s['preprocess_s']:.2f} s wall / {s['preprocess_cpu_s']:.2f} s CPU on one thread")
    print(f"  decode modes  {dec['files_linear']} linear, {dec['files_seek']} with seeks ({dec['seeks']} seeks); "
          f"{dec['frames_decoded']} frames decoded for {dec['frames_sampled']} sampled")
    print(f"  ratio         {s['ratio']:.3f} (per repeat: " + ", ".join(f"{x:.3f}" for x in s["ratio_per_repeat"])
          + f"); overlap bound {s['overlap_bound']:.3f}")
    for k, v in s.items():
        if k.startswith("ratio_") and k != "ratio_per_repeat":
            print(f"  variant {k[6:]:>6} ratio {v:.3f}")
    fr = s["file_rows"]
    rows = fr if verbose_files else [r for r in fr if r["segments"] > 1 or r["mode"] == "seek"][:10]
    if not verbose_files:
        lin = [r for r in fr if r["segments"] == 1 and r["mode"] == "linear"]
        if lin:
            print(f"  {len(lin)} one-segment files decoded linearly: {np.mean([r['frames_decoded'] for r in lin]):.0f} "
                  f"frames decoded (previously {np.mean([r['frames_decoded_before'] for r in lin]):.0f}) for "
                  f"{lin[0]['frames_sampled']} sampled, {np.mean([r['decode_ms'] for r in lin]):.1f} ms each "
                  f"(previously {np.mean([r['decode_before_ms'] for r in lin]):.1f} ms)")
    for r in rows:
        print(f"    {r['file']:>14} {r['duration_s']:>7.1f} s {r['segments']:>3} seg  {r['mode']:>6} {r['seeks']:>3} seeks  "
              f"{r['frames_decoded']:>5} frames decoded (previously {r['frames_decoded_before']}) for "
              f"{r['frames_sampled']} sampled  {r['decode_ms']:.0f} ms (previously {r['decode_before_ms']:.0f} ms)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: demo model, tiny clips, one repeat")
    p.add_argument("--model", default=None, help="--model spec (default ViT-B-32:random; --quick: the demo model)")
    p.add_argument("--videos", type=int, default=None, help="short clips (default 24)")
    p.add_argument("--seconds", type=int, default=None, help="length of the short clips (default 10)")
    p.add_argument("--long-videos", type=int, default=None, help="long clips (default 3)")
    p.add_argument("--long-seconds", type=int, default=None, help="length of the long clips (default 120)")
    p.add_argument("--resolution", default=None, help="WxH (default 320x240)")
    p.add_argument("--batch", type=int, default=16, help="segments per encoder call (both sides)")
    p.add_argument("--repeats", type=int, default=None, help="alternating encoder-only / end-to-end runs (default 3)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=k=v,...",
                   help="extra end-to-end runs with other PipelineOptions")
    p.add_argument("--verbose-files", action="store_true", help="print every file's decode row")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "probret-bench-indexing"))
    a = p.parse_args(argv)
    q = a.quick
    a.videos = a.videos or (4 if q else 24)
    a.seconds = a.seconds or (2 if q else 10)
    a.long_videos = a.long_videos if a.long_videos is not None else (1 if q else 3)
    a.long_seconds = a.long_seconds or (20 if q else 120)
    a.resolution = a.resolution or ("64x64" if q else "320x240")
    a.repeats = a.repeats or (1 if q else 3)
    if a.model is None and not q:
        a.model = "ViT-B-32:random"
    w, h = (int(x) for x in a.resolution.split("x"))
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    variants = dict(parse_variant(v) for v in a.variant)

    from probret.engine.index import IndexSettings
    from probret.export.resolve import resolve_model
    from probret.engine.runtime import BundleRuntime

    t0 = time.perf_counter()
    res = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "machine": machine(), "settings": {k: v for k, v in vars(a).items() if k not in ("out", "workdir")}}
    short = make_clips(workdir, "short", a.videos, a.seconds, (w, h), seed=7)
    long_ = make_clips(workdir, "long", a.long_videos, a.long_seconds, (w, h), seed=8) if a.long_videos else None
    resolved = resolve_model(a.model, say=say)
    b = resolved.bundle
    rt = BundleRuntime(b, device="cpu")
    settings = IndexSettings.for_bundle(b)
    res["model"] = resolved.to_meta()
    res["window_s"] = settings.window
    res["sets"] = {"short": bench_set("short", short, rt, settings, resolved.to_meta(), workdir, a, variants)}
    if long_ is not None:
        res["sets"]["long"] = bench_set("long", long_, rt, settings, resolved.to_meta(), workdir, a, variants)

    def targets(res: dict) -> list[dict]:
        return [{"target": f"indexing end to end >= 90% of encoder-only ({what})",
                 "measured": f"{100 * s['ratio']:.0f}% (overlap bound {100 * s['overlap_bound']:.0f}%)",
                 "status": "met" if s["ratio"] >= 0.9 else "short"}
                for name, what in (("short", "short clips"), ("long", "long clips, seeking"))
                if (s := res["sets"].get(name)) is not None]

    def print_tables(res: dict) -> None:
        m = res["machine"]
        print(f"machine: {m['nproc']} CPU(s), {m['cpu']}; load {tuple(round(x, 2) for x in m['loadavg_start'])} -> "
              f"{tuple(round(x, 2) for x in m['loadavg_end'])}; {m['date']}")
        print(f"model: {resolved.description}; {b.num_frames} frames x {settings.image_size}^2 per segment, "
              f"window {settings.window} s, batches of {a.batch} segments, {a.repeats} repeat(s)")
        for name, sset in res["sets"].items():
            print_set(name, sset, a.verbose_files)
        print_targets(res["targets"])

    finish(res, t0, a.out, print_tables, targets)


if __name__ == "__main__":
    main()
