"""Layers point one way (cli -> train/export -> engine): engine/ never names probret.train or
probret.export, not even in a docstring or a lazy import (issue 13's done-when grep)."""

from __future__ import annotations

import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
UPWARD = re.compile(r"probret\.(train|export)")


def test_engine_never_names_the_layers_above_it():
    hits = [f"{p.relative_to(ENGINE.parent)}:{n}: {line.strip()}"
            for p in sorted(ENGINE.rglob("*")) if p.suffix in (".py", ".html") and p.is_file()
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if UPWARD.search(line)]
    assert any(ENGINE.rglob("*.py"))
    assert not hits, "engine/ refers upward:\n" + "\n".join(hits)
