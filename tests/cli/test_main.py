"""cli/main.py's two entry points: ``cli()`` (in process) and ``main()`` (the ``probret`` console
script), which after ``search`` leaves with ``os._exit`` once stdout and stderr are flushed. The
fast exit must change nothing a user or a pipe can see: the same output, every byte of it, the
same exit codes and messages, and other subcommands exit as before. The model is the shipped
demo bundle, so nothing is exported here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(an indexed folder of 3 procedural videos, a function running the command through cli() or main())"""
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("main")
    generate_world(root / "world", videos=3, seed=4, resolution=(64, 64), frames=16, splits=(0.0, 0.0, 1.0))
    shutil.copytree(root / "world" / "videos", root / "videos")
    env = {**os.environ, "PROBRET_CACHE": str(root / "cache"), "COLUMNS": "200"}

    def entry(fn: str, *args) -> subprocess.CompletedProcess:
        code = f"import sys; from probret.cli.main import {fn}; sys.argv[0] = 'probret'; {fn}()"
        return subprocess.run([sys.executable, "-c", code, *map(os.fsdecode, args)], capture_output=True, text=True,
                              env=env, timeout=300)

    p = entry("main", "index", root / "videos", "-q")
    assert p.returncode == 0, p.stderr
    return root / "videos", entry


def test_fast_exit_prints_everything_with_the_same_codes(world, tmp_path):
    from probret.cli.main import EXIT_FAST

    folder, entry = world
    assert EXIT_FAST == {"search"}
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(f"a red circle moves left, take {i}\n" for i in range(400)))
    runs = {fn: entry(fn, "search", folder, "--queries", queries, "--json", "-q", "--no-update") for fn in ("cli", "main")}
    for p in runs.values():
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert runs["cli"].stderr == runs["main"].stderr  # warnings (-q keeps them) arrive alike
    assert len(runs["main"].stdout) > 1 << 17  # more than a pipe holds: written out in full before the exit
    a, b = (json.loads(runs[fn].stdout) for fn in ("cli", "main"))
    assert a["queries"] == b["queries"] and len(b["queries"]) == 400
    # notes on stderr (not quiet) arrive in full too
    a, b = (entry(fn, "search", folder, "a red circle", "--no-update") for fn in ("cli", "main"))
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and "searched 3 video(s)" in b.stderr
    assert a.stderr.splitlines()[:-1] == b.stderr.splitlines()[:-1]  # the last note holds the time taken
    # usage errors (2) and probret's own errors (an index that is not there: 5) keep their code and line
    for args in (["search", folder, "  "], ["search", tmp_path, "a query", "--no-update"]):
        a, b = entry("cli", *args), entry("main", *args)
        assert a.returncode == b.returncode != 0 and a.stderr == b.stderr and "Traceback" not in b.stderr


def test_other_subcommands_exit_as_before(world):
    _, entry = world
    a, b = entry("cli", "synth", "--help"), entry("main", "synth", "--help")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and "Usage" in b.stdout
    a, b = entry("cli", "--version"), entry("main", "--version")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
