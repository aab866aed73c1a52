"""Export end to end (in-process): every method passes the parity gates, the bundle is complete and
verified, a broken graph fails the gate and leaves nothing, both sampling modes are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probret.engine.bundle import GRAPH_NAMES, load_bundle
from probret.engine.errors import ModelError
from probret.engine.runtime import BundleRuntime, draw_noise
from probret.train.methods import list_methods

METHODS = list_methods()
BENCH_VIDEOS = 8  # as in conftest.py


@pytest.mark.parametrize("method", METHODS)
def test_export_passes_parity(bundles, method):
    res = bundles(method)
    report = res.parity
    assert report["passed"]
    ort = report["onnxruntime"]
    for check in ort["graphs"]:
        assert check["passed"], check
        if check["output"] in ("text_sentence", "frame_features", "scores"):
            assert check["max_abs_err"] <= 1e-4
    ret = ort["retrieval"]
    assert ret["topk_mismatches"] == 0 and ret["v2t_topk_mismatches"] == 0
    assert ret["tokenizer_identical"]
    assert ret["R1_t2v"] == ret["R1_t2v_ref"] and ret["R1_v2t"] == ret["R1_v2t_ref"]
    assert ret["videos"] == BENCH_VIDEOS
    # the report is in the bundle, and the bundle verifies
    bundle = load_bundle(res.out)
    assert json.loads((res.out / "parity.json").read_text())["passed"]
    assert bundle.method == method


def test_manifest_contents(bundles):
    res = bundles("spem", seed=5, samples=6)
    m = json.loads((res.out / "manifest.json").read_text())
    assert m["format"] == "probret-bundle" and m["format_version"] == 2 and m["probret_version"]
    assert m["model"]["method"] == "spem" and m["model"]["backbone"] == "test-vit-tiny"
    assert m["export_form"] == "SPEMForm" and m["pair_cost_per_pair"] == "O(T'd)"
    assert m["opset"] >= 17
    p = m["preprocessing"]
    assert p["image_size"] == 32 and p["frames"] == 4 and len(p["mean"]) == len(p["std"]) == 3
    s = m["sampling"]
    assert (s["mode"], s["samples"], s["seed"]) == ("noise-input", 6, 5)
    assert [n["name"] for n in s["noise"]] == ["noise_eps_t", "noise_eps_v"]
    assert all(n["shape"] == [6, 64] and n["distribution"] == "gaussian" for n in s["noise"])
    assert "PCG64" in s["generator"]
    tok = m["tokenizer"]
    assert tok["file"] == "tokenizer/bpe_simple_vocab_16e6.txt.gz" and tok["context_length"] == 32
    files = m["files"]
    for name in GRAPH_NAMES:
        g = m["graphs"][name]
        assert g["file"] in files and g["inputs"] and g["outputs"]
    assert set(files) >= {"parity.json", tok["file"]}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())
    pair = {t["name"]: t for t in m["graphs"]["pair_score"]["inputs"]}
    assert pair["noise_eps_t"]["shape"] == [6, 64]
    assert pair["text_sentence"]["shape"] == ["N_t", 64]
    assert pair["video_keys"]["shape"][0] == "N_v"
    ids = m["graphs"]["text_encoder"]["inputs"][0]
    assert ids == {"name": "input_ids", "dtype": "int32", "shape": ["N_t", 32]}
    outs = {t["name"]: t for t in m["graphs"]["pair_score"]["outputs"]}
    assert outs["scores"]["shape"] == ["N_t", "N_v"] and "uncertainty" in outs
    assert m["video_outputs"] == [t["name"] for t in m["graphs"]["video_side"]["outputs"]]


def test_token_level_methods_export_token_features(bundles):
    m = load_bundle(bundles("prota").out)
    assert m.graphs["text_encoder"].output_names == ["text_sentence", "text_tokens", "text_mask"]
    assert {"text_tokens", "text_mask"} <= set(m.graphs["pair_score"].input_names)
    assert load_bundle(bundles("xpool").out).graphs["text_encoder"].output_names == ["text_sentence"]


@pytest.mark.parametrize("method", ["tmass", "spem"])
def test_sampling_modes_reproducible_and_equal(bundles, checkpoints, method):
    """Repeated runs give identical scores; noise-input and fixed-seed with the same seed use the same
    numbers, so they give the same scores (and rankings); another seed gives other scores."""
    a = BundleRuntime(bundles(method, "noise-input", seed=0).out, device="cpu")
    b = BundleRuntime(bundles(method, "fixed-seed", seed=0).out, device="cpu")
    assert [t.name for t in b.bundle.graphs["pair_score"].inputs if t.name.startswith("noise_")] == []
    assert b.bundle.sampling["mode"] == "fixed-seed" and b.bundle.noise_specs == []
    rng = np.random.default_rng(0)
    texts = ["a red circle moves left", "a small blue square grows", "on a striped background, a star blinks"]
    frames = rng.standard_normal((6, 4, 64), dtype=np.float32)
    runs = []
    for rt in (a, a, b, b):
        s, u = rt.score(rt.encode_text(texts), rt.video_side(frames))
        runs.append((s, u))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[2][0], runs[3][0])
    np.testing.assert_allclose(runs[0][0], runs[2][0], atol=1e-6)
    assert (np.argsort(-runs[0][0], 1) == np.argsort(-runs[2][0], 1)).all()
    other, _ = a.score(a.encode_text(texts), a.video_side(frames), seed=1)
    assert not np.allclose(other, runs[0][0])

    # the same numbers in PyTorch give the same scores: the documented generator
    from probret.export.forms import create_form
    from probret.train.checkpoint import load_checkpoint
    from probret.train.methods.base import TextFeatures

    model, _ = load_checkpoint(checkpoints(method))
    form = create_form(model.head)
    banks = draw_noise(a.bundle.noise_specs, 0)
    with torch.no_grad():
        tf = model.encode_text(model.backbone.tokenize(texts))
        ref = form.reference(TextFeatures(tf.sentence, tf.tokens, tf.mask), torch.from_numpy(frames),
                             {s.key: torch.from_numpy(banks[s.name]) for s in form.noise_specs})
    np.testing.assert_allclose(runs[0][0], ref.scores.numpy(), atol=1e-5)


def test_scores_do_not_depend_on_batching(bundles):
    rt = BundleRuntime(bundles("spem").out, device="cpu")
    rng = np.random.default_rng(1)
    text = rt.encode_text(["a red circle", "a blue square", "a star", "a green cross"])
    video = rt.video_side(rng.standard_normal((7, 4, 64), dtype=np.float32))
    full, unc = rt.score(text, video)
    rt.batch.update(pair_text=3, pair_video=2)
    small, unc2 = rt.score(text, video)
    np.testing.assert_allclose(full, small, atol=1e-6)
    np.testing.assert_allclose(unc, unc2, atol=1e-6)


def test_runtime_matches_pytorch_end_to_end(bundles, checkpoints):
    """Pixels and texts through the bundle == the PyTorch model (its own scoring)."""
    from probret.export.forms import create_form
    from probret.train.checkpoint import load_checkpoint

    res = bundles("xpool")
    rt = BundleRuntime(res.out, device="cpu")
    model, _ = load_checkpoint(checkpoints("xpool"))
    rng = np.random.default_rng(2)
    pixels = rng.standard_normal((3, 4, 3, 32, 32), dtype=np.float32)
    texts = ["a white triangle slides right", "a purple star"]
    got, unc = rt.score(rt.encode_text(texts), rt.video_side(rt.encode_videos(pixels)))
    assert unc is None
    with torch.no_grad():
        ref = model.head.score(model.encode_text(model.backbone.tokenize(texts)),
                               model.encode_video(torch.from_numpy(pixels))).scores.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert create_form(model.head).optimized


def test_broken_graph_fails_the_gate_and_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    from probret.export import forms
    from probret.export.exporter import ExportOptions, ParityError, export_checkpoint

    original = forms.MeanPForm.pair

    def broken(self, text, video, noise):
        scores, unc = original(self, text, video, noise)
        return scores + 0.1, unc

    monkeypatch.setattr(forms.MeanPForm, "pair", broken)
    out = tmp_path / "sub" / "bundle"
    with pytest.raises(ParityError) as err:
        export_checkpoint(checkpoints("meanp"), out, ExportOptions(benchmark_videos=BENCH_VIDEOS))
    assert "pair_score.scores" in str(err.value) and "no bundle written" in str(err.value)
    assert not out.exists()
    assert list((tmp_path / "sub").iterdir()) == []  # no temp dir left either


def test_broken_graph_cli_exit_code(checkpoints, tmp_path, monkeypatch, capsys):
    """Through the CLI entry point: non-zero exit, the failing output named on stderr."""
    from probret.cli.export_cmd import main
    from probret.export import forms

    original = forms.SPEMForm.video_side

    def broken(self, frames):
        out = original(self, frames)
        return {**out, "frames": out["frames"] * 1.01}

    monkeypatch.setattr(forms.SPEMForm, "video_side", broken)
    monkeypatch.setattr("sys.argv", ["probret-export", str(checkpoints("spem")), "--out", str(tmp_path / "b"),
                                     "--benchmark-videos", str(BENCH_VIDEOS), "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 4
    err = capsys.readouterr().err
    assert "parity gate failed" in err and "pair_score.scores" in err
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_reexport_replaces_a_bundle_but_not_other_dirs(checkpoints, tmp_path):
    from probret.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path / "bundle"
    opts = ExportOptions(benchmark_videos=4)
    export_checkpoint(checkpoints("meanp"), out, opts)
    first = (out / "manifest.json").read_text()
    export_checkpoint(checkpoints("meanp"), out, ExportOptions(benchmark_videos=4, seed=1))
    assert (out / "manifest.json").read_text() != first
    load_bundle(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ModelError, match="not a probret bundle"):
        export_checkpoint(checkpoints("meanp"), other, opts)
    assert (other / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("kwargs,match", [
    ({"sampling": "random"}, "--sampling"),
    ({"opset": 13}, "opset"),
    ({"fp16": True}, "--fp16"),
    ({"samples": 0}, "--samples"),
])
def test_bad_options(checkpoints, tmp_path, kwargs, match):
    from probret.export.exporter import ExportOptions, export_checkpoint

    with pytest.raises(ModelError, match=match):
        export_checkpoint(checkpoints("tmass"), tmp_path / "b", ExportOptions(**kwargs))
    assert not (tmp_path / "b").exists()


def test_samples_rejected_for_deterministic_method(checkpoints, tmp_path):
    from probret.export.exporter import ExportOptions, export_checkpoint

    with pytest.raises(ModelError, match="does not sample"):
        export_checkpoint(checkpoints("xpool"), tmp_path / "b", ExportOptions(samples=4))


def test_benchmark_option_uses_a_given_world(checkpoints, tmp_path):
    from probret.export.exporter import ExportOptions, export_checkpoint
    from probret.train.world import generate_world

    generate_world(tmp_path / "world", videos=10, seed=9, resolution=(48, 48), frames=8)
    res = export_checkpoint(checkpoints("meanp"), tmp_path / "b",
                            ExportOptions(benchmark=tmp_path / "world", benchmark_videos=3))
    ret = res.parity["onnxruntime"]["retrieval"]
    assert ret["benchmark"] == str(tmp_path / "world") and ret["videos"] == 2  # the test split: 2 videos
    assert Path(res.out, "parity.json").is_file()


def test_generic_form_with_noise_exports_with_dynamic_sizes(checkpoints, tmp_path):
    """The fallback form (the head's own code in the graph) with noise banks: the parity gate runs
    other batch sizes than the tracing ones, so a size baked into the graph would fail it."""
    from probret.export.exporter import ExportOptions, export_checkpoint

    res = export_checkpoint(checkpoints("spem"), tmp_path / "b", ExportOptions(generic=True, benchmark_videos=4))
    assert res.parity["passed"] and res.manifest["export_form"] == "GenericForm"
    assert res.manifest["pair_cost_per_pair"] == "head's own pair_side"
