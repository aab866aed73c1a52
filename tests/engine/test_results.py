"""engine/results.py: display-safe names, bytes-exact paths, JSON without NaN."""

from __future__ import annotations

import base64
import json
import os

import pytest

from probret.engine.results import Hit, Moment, SearchResult, SkippedFile, UpdateReport, display_safe


def test_display_safe_escapes_what_a_terminal_would_act_on():
    assert display_safe("plain name.mp4") == "plain name.mp4"
    assert display_safe("caf\u00e9 \u6f22\u5b57.mp4") == "caf\u00e9 \u6f22\u5b57.mp4"  # printable unicode stays
    assert display_safe("a\nb\tc\x1b[31m\x7f\x9b") == "a\\nb\\tc\\x1b[31m\\x7f\\x9b"
    assert display_safe("\u202egpj.exe") == "\\u202egpj.exe"  # a bidirectional override
    assert display_safe(os.fsdecode(b"caf\xe9.mp4")) == "caf\\xe9.mp4"  # an undecodable byte


def test_a_hit_keeps_the_exact_bytes():
    raw = b"dir/\xff\xfe\n.mp4"
    hit = Hit(path=os.fsdecode(raw), rank=1, score=0.5, confidence=None, uncertainty=0.1,
              moments=[Moment(0.0, 2.0, 1.0, 0.5)])
    assert hit.path_bytes == raw and hit.display_path == "dir/\\xff\\xfe\\n.mp4"
    d = hit.to_json()
    text = json.dumps(d, allow_nan=False)
    assert d["path"] == "dir/\\xff\\xfe\\n.mp4"
    assert base64.b64decode(d["path_b64"]) == raw and text.isascii()
    assert (d["start"], d["end"], d["best_time"]) == (0.0, 2.0, 1.0)
    clean = Hit(path="a.mp4", rank=1, score=0.5, confidence=0.9, uncertainty=None, moments=[Moment(0, 1, None, 0.5)])
    assert "path_b64" not in clean.to_json() and clean.to_json()["confidence"] == 0.9


def test_nan_never_reaches_json():
    bad = Hit(path="a.mp4", rank=1, score=float("nan"), confidence=None, uncertainty=None,
              moments=[Moment(0, 1, None, float("nan"))])
    with pytest.raises(ValueError, match="non-finite"):
        SearchResult("q", [bad]).to_json()


def test_update_report_json():
    r = UpdateReport(added=2, removed=1, failed=[SkippedFile("x\n.mp4", "no video stream")],
                     skipped=[SkippedFile("fifo.mp4", "not a regular file")], encoded_videos=2, seconds=2.0)
    d = r.to_json()
    assert d["failed"] == [{"path": "x\\n.mp4", "error": "no video stream"}] and d["videos_per_s"] == 1.0
    assert d["skipped"][0]["error"] == "not a regular file"
    json.dumps(d, allow_nan=False)
