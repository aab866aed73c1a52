"""Every message that suggests a flag names a real one.

Two checks: (1) every ``--flag`` written in a string of engine/, export/ or cli/ (error messages,
warnings, help texts) is an option of some probret command; (2) the errors ``probret search``
really prints for a missing model or weights file name only options that ``probret search`` has
(the offline-weights error used to advise ``--pretrained``, which it lacks).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[2]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
PROBRET = Path(sys.executable).with_name("probret")


def _commands() -> dict[str, click.Command]:
    from probret.cli.export_cmd import export
    from probret.cli.main import SUBCOMMANDS, _group
    from probret.cli.train_cmd import train

    ctx = click.Context(_group)
    found = {f"probret {name}": _group.get_command(ctx, name) for name in SUBCOMMANDS}
    found.update({"probret-train": train, "probret-export": export})
    return {k: v for k, v in found.items() if v is not None}


def _options(command: click.Command) -> set[str]:
    names = {"--help"}
    if isinstance(command, click.Group):  # `probret data convert-msvd|check`: the subcommands' options
        names.update(*(_options(sub) for sub in command.commands.values()))
    for p in command.params:
        if isinstance(p, click.Option):
            names.update(o for o in p.opts + p.secondary_opts if o.startswith("--"))
    return names


def _strings(path: Path):
    """(line, text) of every string constant, except the old text of a ``.replace(old, new)``
    (a wrong flag being corrected is not one being suggested)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    replaced = {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args
                and isinstance(n.func, ast.Attribute) and n.func.attr == "replace"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in replaced:
            yield node.lineno, node.value


def _argparse_flags(path: Path) -> set[str]:
    """Options of a module that still parses its own arguments (``add_argument("--x")``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {a.value for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "add_argument" for a in n.args
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("--")}


def test_every_flag_in_the_code_exists():
    known = set().union(*(_options(c) for c in _commands().values()))
    files = [p for folder in ("engine", "export", "cli") for p in sorted((ROOT / folder).rglob("*.py"))]
    known |= set().union(*(_argparse_flags(p) for p in files))
    wrong = []
    for path in files:
        for line, text in _strings(path):
            for flag in FLAG.findall(text):
                if flag not in known:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {flag}")
    assert not wrong, "messages name options no probret command has:\n" + "\n".join(wrong)


@pytest.mark.skipif(not PROBRET.exists(), reason="the probret entry point is not installed")
@pytest.mark.parametrize("model", ["test-vit-tiny:/nonexistent/open_clip_model.safetensors", "no-such-dir/bundle"])
def test_search_errors_suggest_search_options(tmp_path, model):
    (tmp_path / "videos").mkdir()
    env = {**os.environ, "PROBRET_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([str(PROBRET), "search", str(tmp_path / "videos"), "a query", "--model", model],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 4 and "Traceback" not in p.stderr, p.stderr
    error = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1
    suggested = set(FLAG.findall(error[0]))
    assert suggested, error[0]  # each of these errors says what to pass
    assert suggested <= _options(_commands()["probret search"]), (suggested, error[0])
