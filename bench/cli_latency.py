"""CLI latency: one ``probret search FOLDER "q" --no-update`` on an indexed folder of 10,000 videos,
timed side by side with ``python -c "import numpy, onnxruntime"`` (issue 14 §4: target <= 1.5x).

    OMP_NUM_THREADS=1 python bench/cli_latency.py [--videos 10000] [--reps 15] [--out bench/results/cli_latency.json]

The index is real: 8 procedural videos are indexed by ``probret index`` with the default model
(the shipped demo bundle), then the real ``IndexWriter`` writes 10,000 videos whose features are
those 8 videos' features plus small noise (N(0, 0.01) per element), each video a hard link to one
of the 8 files, so a search without ``--no-update`` finds every file unchanged (its walk is
measured too), and the same rows are written once more as a float32 index beside it (searched
with ``--index``: what a stored float32 matrix would save, no row converting). ``PROBRET_CACHE``
is the work dir's own.

Runs alternate between the commands (baseline, search, baseline, ...) so load from other
processes hits both alike; the ratio is of medians. Wall time is what a user waits for; CPU
time (user + sys of the child) is printed beside it because it is steadier on a shared machine.

Two more commands isolate the console script's fast exit (cli/main.py's ``main``): the same
search run through ``cli()`` (Python's ordinary interpreter teardown) and through ``main()``.
One more runs it through ``main()`` with the third pass switched back (``_WITHOUT_PASS``: the
readers' table snapshot, the tokenizer's hashed merge table and the cached noise banks replaced
by the work they save, the text session spinning, ORT's memory pattern on), the before of that
pass's after in one run.

Then the means, each measured on its own (best of ``--reps``, CPU seconds; "fresh" ones as
medians of new interpreters): opening the index with its table snapshot and from SQLite rows,
the tokenizer with its hashed merge table and with dict tables, the noise banks read back and
drawn (fresh), the tokenizer (its tables built with whole-string operations vs
the former loop over every merge line, vs Hugging Face ``tokenizers`` from its cached
tokenizer.json, and the ftfy + regex imports a plain query skips), the ORT sessions of the text
and pair graphs (optimising at load, the cached optimised graph with its weights inside it, and
with its weights in a data file beside it), hashing every bundle file against loading the
bundle with its verification record, ``import`` of the CLI module, the ``ldconfig`` probe for
libcuda and numpy 2's first ``np.unique`` (fresh), one exact scan with each block converted to
float32 first against the rows converted tile by tile and against the float32 copy's rows (no
conversion), and the search with the folder walk (no ``--no-update``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, finish, machine, print_targets, say  # noqa: E402

PY = sys.executable
PROBRET = str(Path(sys.executable).with_name("probret"))
QUERY = "a red circle moves left"
TARGET_RATIO = 1.5
#: ``python -c`` running the ``probret`` command through one of cli/main.py's two entry points.
_VIA = "import sys; from probret.cli.main import {0}; sys.argv[0] = 'probret'; {0}()"
#: Run before _VIA: the search as it was before the third pass (the readers' table snapshot, the
#: tokenizer's hashed merge table, the cached noise banks, each switched back to the work it
#: replaced, the text session spinning again and ORT's memory pattern on), so that the pair
#: measures them together in the same run. (The lazy imports of the index package cannot be
#: switched back; they are ~1 ms.)
_WITHOUT_PASS = ("import probret.engine.index.snapshot as s, probret.engine.tokenizer as t, "
                 "probret.engine.runtime as r; s.load = lambda *a: None; t._load_table = lambda *a: None; "
                 "r.cached_noise = r.draw_noise; o = r.OrtGraph.__init__; r.OrtGraph.__init__ = lambda g, *a, **k: "
                 "o(g, *a, **{**k, 'mem_pattern': None, **({'spinning': None} if k.get('name') == 'text_encoder' "
                 "else {})}); ")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags)
    except OSError:
        pass
    return "?"


# --------------------------------------------------------------------------------------------
# the folder and its index
# --------------------------------------------------------------------------------------------
def _f32_index(work: Path, n_videos: int) -> Path:
    """The same videos and features stored as float32 (``--full``): what a search gains when no
    stored row needs converting (docs/benchmarks.md, "CLI latency")."""
    return work / f"index-{n_videos}-float32"


def _indexed(index: Path) -> int:
    """Videos in the index at ``index`` (0 when there is none: a build cut short is built again)."""
    db = index / "index.db"
    if not db.is_file():
        return 0
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM videos WHERE status = 'ok'").fetchone()[0]
    except sqlite3.DatabaseError:
        return 0
    finally:
        con.close()


def _snapshot(index: Path) -> None:
    """The readers' table snapshot of ``index``, as its writer leaves it at close (written only
    when the one there is missing or stale: engine/index/reader.py's save_snapshot)."""
    from probret.engine.index.reader import save_snapshot
    from probret.engine.index.schema import connect

    con = connect(index / "index.db", writer=False)
    try:
        save_snapshot(index, con)
    finally:
        con.close()


def build(work: Path, n_videos: int, env: dict) -> Path:
    """work/videos: ``n_videos`` hard links to 8 procedural mp4s, indexed (module docstring)."""
    from probret.engine.index import EncodedVideo, IndexReader, IndexSettings, IndexWriter, read_header
    from probret.engine.index.schema import path_of
    from probret.train.world import generate_world

    folder = work / f"videos-{n_videos}"
    small = work / "small"
    if not (small / ".probret-index" / "index.db").is_file():
        shutil.rmtree(work / "world", ignore_errors=True)
        generate_world(work / "world", videos=8, seed=11, resolution=(112, 112), frames=32, splits=(0.0, 0.0, 1.0))
        shutil.copytree(work / "world" / "videos", small, dirs_exist_ok=True)
    subprocess.run([PROBRET, "index", str(small), "-q"], check=True, env=env)  # re-encodes for a new demo model
    header = read_header(small / ".probret-index")
    built = [read_header(i) for i in (folder / ".probret-index", _f32_index(work, n_videos))]
    if (_indexed(folder / ".probret-index") == _indexed(_f32_index(work, n_videos)) == n_videos
            and all(h and h["model"] == header["model"] for h in built)):
        for index in (folder / ".probret-index", _f32_index(work, n_videos)):
            _snapshot(index)  # an index written before the table snapshot existed
        return folder
    stored = {k: v for k, v in header["settings"].items() if k in IndexSettings.__dataclass_fields__}
    settings = IndexSettings(**{**stored, "mean": tuple(stored["mean"]), "std": tuple(stored["std"])})
    con = sqlite3.connect(small / ".probret-index" / "index.db")
    rows = con.execute("SELECT v.path, v.duration, v.fps, v.width, v.height, s.start, s.stop, s.timestamps, s.shard, "
                       "s.row FROM videos v JOIN segments s ON s.video_id = v.id WHERE v.status = 'ok' "
                       "ORDER BY v.path, s.seg").fetchall()
    con.close()
    with IndexReader(small / ".probret-index") as r:
        names = list(r.layout)
        pool = [{n: np.asarray(r.tensor(shard, n)[row], np.float32) for n in names} for *_, shard, row in rows]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    f32 = IndexSettings(**{**settings.__dict__, "dtype": "float32"})
    with IndexWriter(folder / ".probret-index", settings, model=header["model"], rebuild=True) as w, \
            IndexWriter(_f32_index(work, n_videos), f32, model=header["model"], rebuild=True) as w32:
        for lo in range(0, n_videos, 1000):
            batch = []
            for i in range(lo, min(n_videos, lo + 1000)):
                k = i % len(rows)
                path, duration, fps, width, height, start, stop, ts, *_ = rows[k]
                link = folder / f"clip{i:05d}.mp4"
                if not link.exists():
                    os.link(small / path_of(path), link)
                st = link.stat()
                # rounded to float16 first, so both indexes hold the same values
                tensors = {n: (pool[k][n] + 0.01 * rng.standard_normal(pool[k][n].shape, dtype=np.float32))[None]
                           .astype(np.float16).astype(np.float32) for n in names}
                batch.append(EncodedVideo(path=link.name, size=st.st_size, mtime_ns=st.st_mtime_ns, duration=duration,
                                          fps=fps, width=width, height=height, segments=[(start, stop)],
                                          timestamps=np.frombuffer(ts, "<f8")[None], tensors=tensors))
            w.add(batch)
            w32.add(batch)
    say(f"wrote an index of {n_videos:,} videos (and its float32 copy) in {time.perf_counter() - t0:.1f} s")
    return folder


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall s, child CPU s) of one run; fails loudly on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def side_by_side(commands: dict[str, list[str]], env: dict, reps: int) -> dict:
    for cmd in commands.values():  # warm the page cache and the probret caches once
        timed(cmd, env)
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for _ in range(reps):
        for k, cmd in commands.items():
            runs[k].append(timed(cmd, env))
    return {k: {"wall_median_s": statistics.median(w for w, _ in v), "cpu_median_s": statistics.median(c for _, c in v),
                "wall_min_s": min(w for w, _ in v), "runs": v} for k, v in runs.items()}


# --------------------------------------------------------------------------------------------
# the means, one by one
# --------------------------------------------------------------------------------------------
def _best_cpu(fn, reps: int) -> float:
    return best_time(fn, reps, clock=time.process_time)


def _fresh_inner_cpu(setup: str, code: str, env: dict, reps: int) -> float:
    """Median CPU seconds of ``code`` alone, each run in a new interpreter after ``setup``: the
    first call's cost, its imports included, without the interpreter's own start-up noise."""
    prog = f"import time; {setup}; t = time.process_time(); {code}; print(time.process_time() - t)"
    return statistics.median(float(subprocess.run([PY, "-c", prog], env=env, check=True, capture_output=True,
                                                  text=True).stdout.split()[-1]) for _ in range(reps))


def _fresh_cpu(code: str, env: dict, reps: int) -> float:
    """Median child CPU seconds of ``python -c code`` (fresh interpreters: import costs included)."""
    return statistics.median(timed([PY, "-c", code], env)[1] for _ in range(reps))


def means(folder: Path, work: Path, env: dict, reps: int) -> dict:
    from probret.engine.bundle import load_bundle
    from probret.engine.index import read_header
    from probret.engine.tokenizer import Tokenizer

    out: dict = {}
    bundle = load_bundle(read_header(folder / ".probret-index")["model"]["bundle"])
    vocab = bundle.tokenizer_file
    os.environ["PROBRET_CACHE"] = env["PROBRET_CACHE"]
    out.update(_cache_means(folder, vocab, env, reps))
    out["tokenizer_python_tables_cpu_s"] = _best_cpu(lambda: Tokenizer(vocab)._build_tables(), reps)
    out["tokenizer_python_tables_per_line_cpu_s"] = _best_cpu(lambda: _tables_per_line(Tokenizer, vocab), reps)
    Tokenizer(vocab, backend="tokenizers")  # converts once into the cache
    out["tokenizer_hf_from_cache_cpu_s"] = _best_cpu(lambda: Tokenizer(vocab, backend="tokenizers"), reps)
    n = min(reps, 7)
    base = _fresh_cpu("import numpy", env, n)
    out["import_ftfy_regex_cpu_s"] = _fresh_cpu("import numpy, ftfy, regex", env, n) - base
    out["import_tokenizers_cpu_s"] = _fresh_cpu("import numpy, tokenizers", env, n) - base
    out["import_cli_search_cpu_s"] = _fresh_cpu("import numpy, onnxruntime, probret.cli.search_cmd", env, n) - \
        _fresh_cpu("import numpy, onnxruntime", env, n)
    # what engine/runtime.py's cuda_device_count no longer does on Linux, and what np.unique costs
    # a fresh process under numpy 2 (it imports numpy.ma)
    out["find_library_cuda_cpu_s"] = _fresh_cpu("import ctypes.util; ctypes.util.find_library('cuda')", env, n) - \
        _fresh_cpu("import ctypes", env, n)
    files = bundle.manifest["files"]
    out["np_unique_first_call_cpu_s"] = _fresh_cpu("import numpy; numpy.unique(numpy.zeros(3))", env, n) - base
    from probret.engine.bundle import sha256_file

    path = bundle.path
    out["bundle_hash_every_file_cpu_s"] = _best_cpu(lambda: [sha256_file(path / rel) for rel in files], reps)
    load_bundle(path)  # leaves the verification record (engine/bundle.py)
    out["bundle_load_with_record_cpu_s"] = _best_cpu(lambda: load_bundle(path), reps)
    out.update(_session_means(bundle, work, reps))
    out.update(_scan_means(folder, bundle, reps, _f32_index(work, int(folder.name.rsplit("-", 1)[1]))))
    return out


def _cache_means(folder: Path, vocab, env: dict, reps: int) -> dict:
    """This pass's caches, each against the work it replaces (CPU seconds, best of ``reps``):
    opening the index with its table snapshot and from SQLite rows; a tokenizer with the hashed
    merge table and with the dict tables; and (medians of the first call in fresh interpreters)
    the noise banks read back against drawn with numpy.random."""
    from probret.engine import tokenizer as tokenizer_module
    from probret.engine.bundle import load_bundle
    from probret.engine.index import IndexReader, read_header, snapshot

    out: dict = {}
    index = folder / ".probret-index"
    with IndexReader(index) as r:
        assert r.from_snapshot, "no valid table snapshot"
    out["open_index_snapshot_cpu_s"] = _best_cpu(lambda: IndexReader(index).close(), reps)
    load, snapshot.load = snapshot.load, lambda *a: None
    try:
        out["open_index_sqlite_rows_cpu_s"] = _best_cpu(lambda: IndexReader(index).close(), reps)
    finally:
        snapshot.load = load
    assert tokenizer_module.Tokenizer(vocab)._table is not None, "no hashed merge table"
    out["tokenizer_hashed_table_cpu_s"] = _best_cpu(lambda: tokenizer_module.Tokenizer(vocab), reps)
    table, tokenizer_module._load_table = tokenizer_module._load_table, lambda *a: None
    try:
        out["tokenizer_dict_tables_cpu_s"] = _best_cpu(lambda: tokenizer_module.Tokenizer(vocab), reps)
    finally:
        tokenizer_module._load_table = table
    bundle = read_header(index)["model"]["bundle"]
    specs = load_bundle(bundle).noise_specs
    n = min(reps, 7)
    for kind, fn in (("cached", "cached_noise"), ("drawn", "draw_noise")):
        setup = f"import json; from probret.engine.runtime import {fn}; specs = json.loads({json.dumps(specs)!r})"
        out[f"noise_banks_{kind}_fresh_cpu_s"] = _fresh_inner_cpu(setup, f"{fn}(specs, 0)", env, max(n, 9))
    return out


def _scan_means(folder: Path, bundle, reps: int, f32_index: Path) -> dict:
    """One exact scan of the float16 index (the pair graph over every video): each block converted
    to float32 first, as engine/search.py did, against the stored rows handed to
    ``BundleRuntime.score``, which converts them tile by tile in its pair workers; and the same
    scan of the float32 copy (no conversion: what the pair graph's runs cost on their own)."""
    from probret.engine.index import IndexReader
    from probret.engine.runtime import BundleRuntime, _as_float32
    from probret.engine.search import SCAN_BLOCK_BYTES

    rt = BundleRuntime(bundle, device="cpu")
    text = rt.encode_text([QUERY])
    with IndexReader(folder / ".probret-index") as r:
        names = list(bundle.video_outputs)

        def scan(first: bool) -> None:
            for _, tensors in r.blocks(names, release=True, max_bytes=SCAN_BLOCK_BYTES):
                rt.score(text, _as_float32(tensors, {}) if first else tensors)

        scan(False)
        out = {"scan_block_converted_first_cpu_s": _best_cpu(lambda: scan(True), reps),
               "scan_converted_per_tile_cpu_s": _best_cpu(lambda: scan(False), reps)}
    with IndexReader(f32_index) as r:
        def scan32() -> None:
            for _, tensors in r.blocks(names, release=True, max_bytes=SCAN_BLOCK_BYTES):
                rt.score(text, tensors)

        scan32()
        out["scan_float32_rows_cpu_s"] = _best_cpu(scan32, reps)
    return out


def _tables_per_line(tokenizer_cls, vocab) -> None:
    """The tokenizer tables as engine/tokenizer.py built them before (a Python loop over the merge
    lines), for the before/after pair of the means."""
    from probret.engine.tokenizer import _merge_lines

    tok = tokenizer_cls.__new__(tokenizer_cls)
    merges = [tuple(line.split()) for line in _merge_lines(Path(vocab))]
    from probret.engine.tokenizer import _byte_alphabet

    base = sorted(_byte_alphabet())
    symbols = base + [ch + "</w>" for ch in base] + [a + b for a, b in merges] + ["<start_of_text>", "<end_of_text>"]
    tok._tables = ({s: i for i, s in enumerate(symbols)}, symbols, {pair: r for r, pair in enumerate(merges)})


def _session_means(bundle, work: Path, reps: int) -> dict:
    """The text and pair sessions: optimising at load, the cached optimised graph with its weights
    inside it (as cached before), and the cache as it is now (weights in a data file beside it)."""
    import onnxruntime as ort

    from probret.engine.runtime import OrtGraph, optimized_graph_path

    out = {}
    files = bundle.manifest["files"]
    for graph in ("text_encoder", "pair_score"):
        path = bundle.graph_path(graph)
        sha = files[path.relative_to(bundle.path).as_posix()]["sha256"]
        cached = optimized_graph_path(sha, work / "graph-cache")
        OrtGraph(path, ["CPUExecutionProvider"], optimized=cached)
        inline = work / "graph-cache" / f"{graph}-weights-inside.onnx"
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(inline)
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out[f"session_{graph}_optimise_cpu_s"] = _best_cpu(lambda: OrtGraph(path, ["CPUExecutionProvider"]), reps)
        out[f"session_{graph}_cached_weights_inside_cpu_s"] = _best_cpu(
            lambda: OrtGraph(inline, ["CPUExecutionProvider"], optimized=inline), reps)
        out[f"session_{graph}_cached_cpu_s"] = _best_cpu(
            lambda: OrtGraph(path, ["CPUExecutionProvider"], optimized=cached), reps)
    return out


def breakdown(folder: Path, env: dict, reps: int) -> dict:
    """Where one search's time goes after the imports, in this (warm) process, wall seconds, best
    of ``reps``: opening the index, the two ORT sessions (cached optimised graphs), the tokenizer
    tables, then one query (tokenize, text graph, scoring every video, ranking)."""
    from probret.engine.facade import VideoFolder
    from probret.engine.index import read_header
    from probret.engine.runtime import BundleRuntime

    os.environ["PROBRET_CACHE"] = env["PROBRET_CACHE"]
    meta = read_header(folder / ".probret-index")["model"]
    out = {"open_index_s": [], "sessions_s": [], "tokenizer_s": [], "first_query_s": [], "next_query_s": []}
    for _ in range(min(reps, 5)):
        rt = BundleRuntime(meta["bundle"], device="cpu")
        t0 = time.perf_counter()
        vf = VideoFolder(folder, rt.bundle, model=meta, runtime=rt)
        len(vf)  # opens the reader
        t1 = time.perf_counter()
        rt.session("text_encoder"), rt.session("pair_score")
        t2 = time.perf_counter()
        rt.tokenizer
        t3 = time.perf_counter()
        vf.search(QUERY)
        t4 = time.perf_counter()
        vf.search(QUERY + " again")
        t5 = time.perf_counter()
        vf.close()
        for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            out[k].append(v)
    return {k: min(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
def targets(res: dict) -> list[dict]:
    r = res["ratio_wall"]
    return [{"target": f"search --no-update <= {TARGET_RATIO}x import numpy, onnxruntime (wall medians)",
             "measured": f"{r:.2f}x", "status": "met" if r <= TARGET_RATIO else "NOT met"}]


def print_tables(res: dict) -> None:
    e = res["end_to_end"]
    print(f"\nCLI latency, {res['videos']:,} indexed videos, query {QUERY!r} "
          f"({res['machine']['cpu']}, {res['machine']['nproc']} cores, flags: {res['cpu_flags']})")
    w = max(len(k) for k in e)
    print(f"{'command':<{w}} {'wall median':>12} {'wall min':>9} {'CPU median':>11}")
    for k, v in e.items():
        print(f"{k:<{w}} {v['wall_median_s']:>10.3f} s {v['wall_min_s']:>7.3f} s {v['cpu_median_s']:>9.3f} s")
    print(f"ratio search --no-update / import numpy, onnxruntime: wall {res['ratio_wall']:.2f}x, "
          f"CPU {res['ratio_cpu']:.2f}x (target <= {TARGET_RATIO}x)")
    print("\nmeans (CPU seconds):")
    for k, v in res["means"].items():
        print(f"  {k:<50} {v:.4f}")
    print("\none search in a warm process (wall seconds, best of 5):")
    for k, v in res["breakdown"].items():
        print(f"  {k:<44} {v:.4f}")
    print_targets(res["targets"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "probret-cli-latency")
    ap.add_argument("--out", default=None, help="results JSON (e.g. bench/results/cli_latency.json)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    a.work.mkdir(parents=True, exist_ok=True)
    # a pip install compiles every module to bytecode; PYTHONDONTWRITEBYTECODE (set on some dev
    # machines) would make each run compile probret again and measure that instead
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "PROBRET_CACHE": str(a.work / "cache")}
    res = {"machine": machine(), "cpu_flags": _cpu_flags(), "videos": a.videos, "query": QUERY, "reps": a.reps}
    folder = build(a.work, a.videos, env)
    search = ["search", str(folder), QUERY, "--no-update", "-q"]
    commands = {
        'python -c "import numpy, onnxruntime"': [PY, "-c", "import numpy, onnxruntime"],
        f'probret search FOLDER "{QUERY}" --no-update': [PROBRET, *search],
        f'probret search FOLDER "{QUERY}" (walks the folder)': [PROBRET, *search[:3], "-q"],
        # the fast exit on its own: the same search through cli() (Python's ordinary teardown) and main()
        "the same --no-update search through cli(): ordinary interpreter exit": [PY, "-c", _VIA.format("cli"), *search],
        "the same --no-update search through main(): the console script's exit": [PY, "-c", _VIA.format("main"),
                                                                                  *search],
        "the same through main() as before the third pass (no snapshot, merge table, noise cache; ORT as it was)": [
            PY, "-c", _WITHOUT_PASS + _VIA.format("main"), *search],
        "the same --no-update search of the float32 copy of the index (--index)": [
            PROBRET, *search, "--index", str(_f32_index(a.work, a.videos))],
    }
    say(f"timing {len(commands)} commands x {a.reps} runs, interleaved")
    res["end_to_end"] = side_by_side(commands, env, a.reps)
    base, ours = (res["end_to_end"][k] for k in list(commands)[:2])
    res["ratio_wall"] = ours["wall_median_s"] / base["wall_median_s"]
    res["ratio_cpu"] = ours["cpu_median_s"] / base["cpu_median_s"]
    res["means"] = means(folder, a.work, env, a.reps)
    res["breakdown"] = breakdown(folder, env, a.reps)
    finish(res, t0, a.out, print_tables, targets)


if __name__ == "__main__":
    main()
