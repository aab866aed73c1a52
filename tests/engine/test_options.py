"""engine/options.py: the bounds every entry point shares."""

from __future__ import annotations

import math

import pytest

from probret.engine.errors import UsageError
from probret.engine.options import (ANN_CANDIDATES, BATCH, RESIZE_MODES, TOP_K, WINDOW, WORKERS, IndexOptions,
                                    SearchOptions, parse_resolution)


@pytest.mark.parametrize("value", ["nan", float("nan"), math.inf, "-inf", -1, 0.5, 1e9, "ten", None, True])
def test_window_refuses(value):
    with pytest.raises(UsageError, match=r"--window must be a number from 1 to 86400 seconds, or 0 \(one segment"):
        WINDOW.check(value)


def test_window_accepts():
    assert WINDOW.check(0) == 0.0 and WINDOW.check("0") == 0.0  # documented: one segment per video
    assert WINDOW.check("10") == 10.0 and WINDOW.check(1) == 1.0 and WINDOW.check(86400) == 86400.0


@pytest.mark.parametrize("bound, good, bad", [
    (WORKERS, [0, 1, 256, "8"], [-1, 257, 1.5, "x"]), (BATCH, [1, 4096], [0, 4097, 2.5]),
    (TOP_K, [1, 100_000], [0, -3, 100_001]), (ANN_CANDIDATES, [1, 10_000_000], [0, 10_000_001]),
])
def test_integer_bounds(bound, good, bad):
    for v in good:
        assert bound.check(v) == int(float(v)) and isinstance(bound.check(v), int)
    for v in bad:
        with pytest.raises(UsageError, match=bound.flag):
            bound.check(v)


def test_dataclasses_validate_on_construction():
    assert IndexOptions(window="30", workers="2").window == 30.0
    with pytest.raises(UsageError, match="--batch"):
        IndexOptions(batch=0)
    with pytest.raises(UsageError, match="--resize"):
        IndexOptions(resize="nearest")
    assert SearchOptions(top_k="5").top_k == 5
    with pytest.raises(UsageError, match="--min-confidence"):
        SearchOptions(min_confidence=2)


def test_resolution():
    assert parse_resolution("112x64") == (112, 64) and parse_resolution(" 32 X 32 ") == (32, 32)
    for bad in ("33x32", "16x16", "8192x64", "big", "12"):
        with pytest.raises(UsageError, match="--resolution"):
            parse_resolution(bad)


def test_resize_modes_match_the_pipeline():
    from probret.engine import pipeline

    assert RESIZE_MODES == pipeline.RESIZE_MODES
