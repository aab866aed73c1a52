"""engine.bundle.load_bundle refuses altered bundles, naming the file and the reason."""

from __future__ import annotations

import json
import shutil

import pytest

from probret.engine.bundle import load_bundle
from probret.engine.errors import ModelError
from probret.engine.runtime import open_runtime


@pytest.fixture()
def bundle(bundles, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundles("xpool").out, dst)
    load_bundle(dst)  # intact copy verifies
    return dst


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, m):
    (path / "manifest.json").write_text(json.dumps(m, indent=2))


def test_flipped_graph_byte_is_refused(bundle):
    f = bundle / "pair_score.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"pair_score\.onnx does not match manifest\.json \(sha256") as err:
        load_bundle(bundle)
    assert "modified or corrupted" in str(err.value)
    with pytest.raises(ModelError, match="pair_score.onnx"):
        open_runtime(bundle, device="cpu")  # the runtime verifies before it runs anything


def test_truncated_file_is_refused(bundle):
    f = bundle / "frame_encoder.onnx"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ModelError, match=r"frame_encoder\.onnx has \d+ bytes but manifest\.json says"):
        load_bundle(bundle)


def test_edited_manifest_hash_is_refused(bundle):
    m = _manifest(bundle)
    sha = m["files"]["text_encoder.onnx"]["sha256"]
    m["files"]["text_encoder.onnx"]["sha256"] = ("0" if sha[0] != "0" else "1") + sha[1:]
    _write_manifest(bundle, m)
    with pytest.raises(ModelError, match=r"text_encoder\.onnx does not match manifest\.json"):
        load_bundle(bundle)


def test_edited_vocabulary_is_refused(bundle):
    f = bundle / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    f.write_bytes(f.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="bpe_simple_vocab_16e6.txt.gz"):
        load_bundle(bundle)


def test_missing_file_is_refused(bundle):
    (bundle / "video_side.onnx").unlink()
    with pytest.raises(ModelError, match=r"video_side\.onnx is listed in manifest\.json but missing"):
        load_bundle(bundle)


def test_graph_outside_the_hashed_files_is_refused(bundle):
    m = _manifest(bundle)
    shutil.copyfile(bundle / "pair_score.onnx", bundle / "other.onnx")
    m["graphs"]["pair_score"]["file"] = "other.onnx"
    _write_manifest(bundle, m)
    with pytest.raises(ModelError, match="not among the hashed files"):
        load_bundle(bundle)


def test_path_escaping_the_bundle_is_refused(bundle):
    m = _manifest(bundle)
    m["files"]["../outside.onnx"] = m["files"].pop("pair_score.onnx")
    _write_manifest(bundle, m)
    with pytest.raises(ModelError, match="not a path inside the bundle"):
        load_bundle(bundle)


def test_not_a_bundle_and_bad_manifest(tmp_path, bundle):
    with pytest.raises(ModelError, match="no such bundle"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a probret bundle"):
        load_bundle(tmp_path / "empty")
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_bundle(bundle)


def test_newer_format_is_refused(bundle):
    m = _manifest(bundle)
    m["format_version"] = 99
    _write_manifest(bundle, m)
    with pytest.raises(ModelError, match="newer than this probret"):
        load_bundle(bundle)


def test_verified_files_are_hashed_again_only_when_one_changes(bundle, monkeypatch, tmp_path):
    """engine/bundle.py's verification record: a bundle whose files hashed right is not hashed
    again while no file changes (size, mtime, ctime, inode, device); a changed byte is refused
    as ever, and files changed just before their hash are never vouched for by a record."""
    import time

    from probret.engine import bundle as B

    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(B, "_STAMP_SETTLE_NS", 0)
    hashed = []
    real = B.sha256_file
    monkeypatch.setattr(B, "sha256_file", lambda p, *a: hashed.append(p.name) or real(p, *a))
    load_bundle(bundle)
    n = len(hashed)
    assert n == len(_manifest(bundle)["files"])
    (record,) = (tmp_path / "cache" / "bundle-verified").glob("*.json")
    load_bundle(bundle)
    assert len(hashed) == n  # nothing hashed again
    time.sleep(0.05)  # past the file system clock's tick
    f = bundle / "pair_score.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))  # same size: only the hash can tell
    with pytest.raises(ModelError, match=r"pair_score\.onnx does not match manifest\.json"):
        load_bundle(bundle)
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    monkeypatch.setattr(B, "_STAMP_SETTLE_NS", 10**12)  # every file "changed just now"
    record.unlink()
    load_bundle(bundle)
    k = len(hashed)
    load_bundle(bundle)
    assert len(hashed) == k + n and not record.exists()  # hashed each time, never recorded
