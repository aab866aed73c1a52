"""No function in the four code folders is longer than ~80 lines (issue 13).

A reader should be able to hold a unit in mind; long functions are split by meaning (see
docs/internals.md). The limit counts every line from ``def`` to the last line of the body,
docstring and comments included, so a function cannot pass by moving text into one line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engine", "train", "export", "cli")
LIMIT = 80


def _long_functions() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > LIMIT:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_the_limit():
    assert not _long_functions(), "functions over %d lines:\n" % LIMIT + "\n".join(_long_functions())


def test_the_walk_sees_the_code_folders():
    # guards the test above against passing vacuously (a moved root, an empty glob)
    assert all(any((ROOT / f).rglob("*.py")) for f in FOLDERS)
