"""engine/manifest.py: one schema for the exporter and the engine. Every class of malformed
manifest (wrong type, unknown key, absurd or negative size, path leaving the bundle, symlink,
missing key, bad version) is refused at load with a ModelError that names the key."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from probret.engine.bundle import load_bundle
from probret.engine.errors import ModelError
from probret.engine.manifest import FORMAT_VERSION, Manifest, parse_manifest


@pytest.fixture(scope="module")
def exported(make_spem_bundle, tmp_path_factory) -> Path:
    _, bundle = make_spem_bundle(tmp_path_factory.mktemp("manifest"), seed=0, benchmark_videos=4)
    return bundle


@pytest.fixture()
def bundle(exported, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(exported, dst)
    return dst


def _edit(bundle: Path, change) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def _set(path: str, value):
    """A change that sets the manifest key ``path`` ("a.b[0].c") to ``value``."""
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]

    def change(m):
        node = m
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value

    return change


def _delete(path: str):
    parts = path.split(".")

    def change(m):
        node = m
        for p in parts[:-1]:
            node = node[p]
        del node[parts[-1]]

    return change


def test_writer_and_reader_share_the_schema(exported):
    """What the exporter wrote parses, and parses back to the very same JSON."""
    raw = json.loads((exported / "manifest.json").read_text())
    spec = parse_manifest(raw)
    assert isinstance(spec, Manifest) and spec.format_version == FORMAT_VERSION == raw["format_version"]
    assert spec.to_dict() == raw
    b = load_bundle(exported)
    assert b.spec.to_dict() == raw and b.calibration is None


CASES = [
    # wrong types
    (_set("embed_dim", "64"), "embed_dim", "expected int"),
    (_set("uncertainty", "yes"), "uncertainty", "expected bool"),
    (_set("graphs.pair_score.inputs[0].shape[1]", 1.5), r"graphs.pair_score.inputs[0].shape[1]", "expected int or str"),
    (_set("preprocessing.mean", "imagenet"), "preprocessing.mean", "expected a list"),
    (_set("sampling.noise", {"a": 1}), "sampling.noise", "expected a list"),
    (_set("model", [1, 2]), "model", "expected an object"),
    (_set("embed_dim", True), "embed_dim", "expected int"),
    # unknown keys
    (_set("colour", "red"), "colour", "unknown key"),
    (_set("preprocessing.colour", "red"), "preprocessing.colour", "unknown key"),
    (_set("graphs.pair_score.speed", 1), "graphs.pair_score.speed", "unknown key"),
    (_set("graphs.ranker", {"file": "pair_score.onnx"}), "graphs.ranker", "unknown graph"),
    # absurd or negative sizes
    (_set("embed_dim", -1), "embed_dim", "outside"),
    (_set("num_frames", 10 ** 9), "num_frames", "outside"),
    (_set("preprocessing.image_size", 0), "preprocessing.image_size", "outside"),
    (_set("tokenizer.context_length", 10 ** 12), "tokenizer.context_length", "outside"),
    (_set("sampling.samples", 0), "sampling.samples", "outside"),
    (_set("sampling.noise[0].shape[0]", -3), "sampling.noise[0].shape[0]", "outside"),
    (_set("graphs.video_side.outputs[0].shape[1]", -1), "graphs.video_side.outputs[0].shape[1]", "outside"),
    (_set("preprocessing.std", [0.0, 1.0, 1.0]), "preprocessing.std[0]", "outside"),
    (_set("preprocessing.mean", [math.nan, 0.0, 0.0]), "preprocessing.mean[0]", "not a finite number"),
    # bad values
    (_set("sampling.mode", "random"), "sampling.mode", "not one of"),
    (_set("tokenizer.type", "sentencepiece"), "tokenizer.type", "not one of"),
    (_set("graphs.pair_score.inputs[0].dtype", "complex128"), "graphs.pair_score.inputs[0].dtype", "not one of"),
    (_set("source.weights_sha256", "xyz"), "source.weights_sha256", "not a lowercase hex sha256"),
    (_set("preprocessing.frames", 99), "preprocessing.frames", "!= num_frames"),
    (_set("preprocessing.mean", [0.5]), "preprocessing.mean", "per RGB channel"),
    # paths that leave the bundle
    (_set("tokenizer.file", "../vocab.txt.gz"), "tokenizer.file", "not a path inside the bundle"),
    (_set("graphs.text_encoder.file", "/etc/passwd"), "graphs.text_encoder.file", "not a path inside the bundle"),
    (_set("parity.file", "~/parity.json"), "parity.file", "not a path inside the bundle"),
    (_set("graphs.frame_encoder.file", "x\\..\\..\\y"), "graphs.frame_encoder.file", "not a path inside the bundle"),
    # missing keys
    (_delete("method"), "method", "missing"),
    (_delete("graphs.video_side"), "graphs.video_side", "missing"),
    (_delete("tokenizer.context_length"), "tokenizer.context_length", "missing"),
    (_delete("files"), "graphs.text_encoder.file", "not among the hashed files"),
    # the sections other helpers fill in are validated too
    (_set("calibration", "platt"), "calibration", "expected an object"),
    (_set("calibration", {"a": math.inf}), "calibration.a", "not a finite number"),
    (_set("domain", {"dataset": "msrvtt", "gallery_size": -1}), "domain.gallery_size", "outside"),
    (_set("domain", {"dataset": "msrvtt", "size": 10}), "domain.size", "unknown key"),
]


@pytest.mark.parametrize("change,key,problem", CASES, ids=[c[1] + ":" + c[2] for c in CASES])
def test_malformed_manifest_is_refused_naming_the_key(bundle, change, key, problem):
    _edit(bundle, change)
    with pytest.raises(ModelError) as err:
        load_bundle(bundle)
    msg = str(err.value)
    assert f"manifest key '{key}'" in msg and problem in msg, msg
    assert "\n" not in msg and "re-export" in msg


def test_files_key_leaving_the_bundle_is_refused(bundle):
    def change(m):
        m["files"]["a/../../outside.onnx"] = m["files"].pop("pair_score.onnx")

    _edit(bundle, change)
    with pytest.raises(ModelError, match=r"manifest key 'files\.a/\.\./\.\./outside\.onnx'.*not a path inside"):
        load_bundle(bundle)


def test_file_entry_with_negative_size_is_refused(bundle):
    _edit(bundle, lambda m: m["files"]["parity.json"].update(bytes=-5))
    with pytest.raises(ModelError, match=r"manifest key 'files\.parity\.json\.bytes'.*outside"):
        load_bundle(bundle)


def test_symlinked_file_is_refused(bundle, tmp_path):
    """A link with the right content (so the hash matches) still does not belong to the bundle."""
    vocab = next((bundle / "tokenizer").iterdir())
    outside = tmp_path / "elsewhere.gz"
    shutil.copyfile(vocab, outside)
    vocab.unlink()
    vocab.symlink_to(outside)
    with pytest.raises(ModelError, match=r"tokenizer/bpe_simple_vocab_16e6\.txt\.gz is a symlink"):
        load_bundle(bundle)


def test_symlinked_directory_is_refused(bundle, tmp_path):
    shutil.move(bundle / "tokenizer", tmp_path / "tok")
    (bundle / "tokenizer").symlink_to(tmp_path / "tok", target_is_directory=True)
    with pytest.raises(ModelError, match=r"is a symlink \(tokenizer\)"):
        load_bundle(bundle)


def test_symlinked_manifest_is_refused(bundle, tmp_path):
    shutil.move(bundle / "manifest.json", tmp_path / "m.json")
    (bundle / "manifest.json").symlink_to(tmp_path / "m.json")
    with pytest.raises(ModelError, match="symlink"):
        load_bundle(bundle)


@pytest.mark.parametrize("version,match", [(99, "newer than this probret"), (0, "bad format_version"),
                                           ("2", "bad format_version"), (None, "bad format_version")])
def test_bad_format_versions(bundle, version, match):
    _edit(bundle, _set("format_version", version))
    with pytest.raises(ModelError, match=match):
        load_bundle(bundle)


def test_format_1_fp32_bundle_is_migrated(bundle):
    _edit(bundle, _set("format_version", 1))
    b = load_bundle(bundle)
    assert b.spec.format_version == FORMAT_VERSION and b.method == "spem"


def test_format_1_int8_bundle_is_refused_with_the_command_to_run(bundle):
    def change(m):
        m["format_version"] = 1
        m["quantization"] = {"mode": "int8", "graphs": ["text_encoder", "frame_encoder"]}

    _edit(bundle, change)
    with pytest.raises(ModelError, match=r"re-export it with `probret-export .*ckpt --out DIR --quantize int8`"):
        load_bundle(bundle)


def test_int8_graph_without_quantization_entry_is_refused(bundle):
    _edit(bundle, _set("graphs.text_encoder.precision", "int8"))
    with pytest.raises(ModelError, match=r"manifest key 'graphs\.text_encoder\.precision'"):
        load_bundle(bundle)


def test_calibration_and_domain_are_carried_through(bundle):
    cal = {"method": "platt", "a": -3.5, "b": 0.25, "bins": [0.1, 0.2]}
    domain = {"dataset": "procedural world", "split": "val", "gallery_size": 24}

    def change(m):
        m["calibration"], m["domain"] = cal, domain

    _edit(bundle, change)
    b = load_bundle(bundle)
    assert b.calibration == cal and b.spec.domain.gallery_size == 24
    assert b.spec.to_dict()["calibration"] == cal and b.spec.to_dict()["domain"] == domain


def test_parse_manifest_refuses_non_objects():
    for data in ([], "x", None, {"format": "other"}):
        with pytest.raises(ModelError, match="not a probret bundle manifest"):
            parse_manifest(data)


def test_every_schema_rule_applies_to_a_manifest_in_memory(exported):
    """parse_manifest alone (no files) names the key too: the exporter's and the reader's check."""
    raw = json.loads((exported / "manifest.json").read_text())
    bad = copy.deepcopy(raw)
    bad["sampling"]["noise"][0]["distribution"] = "cauchy"
    with pytest.raises(ModelError, match=r"manifest key 'sampling\.noise\[0\]\.distribution'"):
        parse_manifest(bad)
