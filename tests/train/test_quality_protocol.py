"""Quality protocol v2 (bench/quality_v2.py, quality_stats.py, quality_finetune.py): per-query scoring against
match sets, the floor ranker, the paired bootstrap, the committed protocol file, and the --quick
smoke run end to end (keyed runs reused on a second run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import quality_stats as qs  # noqa: E402
import quality_v2 as q2  # noqa: E402


def test_per_query_hit_counts_ties_and_match_sets():
    sims = np.array([[3.0, 3.0, 1.0, 3.0],    # three tie at the top, one of them relevant
                     [0.0, 2.0, 5.0, 1.0],    # top is video 2, relevant {1, 2}
                     [4.0, 1.0, 2.0, 3.0]])   # relevant {3}: one irrelevant above it
    out = qs.per_query(sims, [[0], [1, 2], [3]])
    assert out["hit1"] == pytest.approx([1 / 3, 1.0, 0.0])
    assert out["rank"] == pytest.approx([1 + 2 / 2, 1.0, 2.0])


def test_floor_ranker_uses_only_background_and_colour_words():
    records = [{"background": "striped", "objects": [{"color": "red"}]},
               {"background": "dotted", "objects": [{"color": "red"}, {"color": "blue"}]}]
    sims = qs.floor_scores(["a red circle moves left", "a blue star on a striped background", "a square spins"],
                           records, ["red", "blue"], ["striped", "dotted"])
    assert sims.tolist() == [[1, 1], [1, 1], [0, 0]]


def test_paired_bootstrap_interval_and_seed_std():
    rng = np.random.default_rng(0)
    diff = 5 + rng.normal(0, 1, (5, 400))
    ci = qs.paired_bootstrap(diff, reps=300, level=0.95, seed=0)
    assert ci["lo"] < 5 < ci["hi"] and ci["lo"] > 4 and ci["hi"] < 6
    assert ci["seed_std"] == pytest.approx(diff.mean(1).std(ddof=1))
    zero = qs.paired_bootstrap(rng.normal(0, 1, (5, 400)), reps=300, level=0.95, seed=0)
    assert zero["lo"] < 0 < zero["hi"]


def test_linear_probe_beats_majority_on_separable_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = rng.normal(0, 1, (300, 8)) + 3 * np.eye(8)[y]
    res = qs.linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert res["accuracy"] > 0.9 and res["majority"] < 0.5


def test_samples_show_the_frames_at_their_segment_midpoints():
    assert qs.shown_video_frames(8, 16, 8.0).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert qs.shown_video_frames(4, 16, 8.0).tolist() == [2, 6, 10, 14]


def _actor_world(rng, videos: int, actor_visibility: str):
    """Frame features of two-event clips: the first actor moves (label = its direction, +1 or
    -1 along one feature axis) during its event, frames 0-7; then it holds still ('clip') or
    leaves the screen while a second actor with a random direction takes over ('own_event')."""
    shown = qs.shown_video_frames(8, 16, 8.0)
    frames, records, labels = np.zeros((videos, 8, 4)), [], []
    for v in range(videos):
        sign, start = rng.choice([-1.0, 1.0]), rng.normal(0, 1)
        pos = start + sign * np.minimum(shown, 8) / 8
        frames[v, :, 0] = pos if actor_visibility == "clip" else np.where(shown < 8, pos, 0.0)
        if actor_visibility == "own_event":
            frames[v, :, 1] = np.where(shown >= 8, rng.normal(0, 1) + rng.choice([-1, 1]) * shown / 8, 0.0)
        frames[v] += rng.normal(0, 0.05, frames[v].shape)
        records.append({"events": [{"start_frame": 0, "end_frame": 8}, {"start_frame": 8, "end_frame": 16}]})
        labels.append(int(sign > 0))
    return frames, records, np.asarray(labels), shown


def test_event_span_probe_reads_only_the_first_events_frames():
    rng = np.random.default_rng(0)
    frames, records, _, shown = _actor_world(rng, 3, "own_event")
    out = qs.event_span_halves(frames, records, shown)
    assert out.shape == (3, 12)
    np.testing.assert_allclose(out, qs.clip_halves(frames[:, :4]))
    changed = frames.copy()
    changed[:, 4:] += 10.0                         # after the first event: must not matter
    np.testing.assert_allclose(qs.event_span_halves(changed, records, shown), out)
    one_sample = [{"events": [{"start_frame": 0, "end_frame": 2}]}] * 3
    np.testing.assert_allclose(qs.event_span_halves(frames, one_sample, shown), qs.clip_halves(frames))


def test_event_span_probe_sees_motion_where_clip_halves_lose_it():
    rng = np.random.default_rng(1)
    scores = {}
    for visibility in ("clip", "own_event"):
        x, records, y, shown = _actor_world(rng, 400, visibility)
        for name, feats in (("halves", qs.clip_halves(x)), ("span", qs.event_span_halves(x, records, shown))):
            scores[visibility, name] = qs.linear_probe(feats[:300], y[:300], feats[300:], y[300:])["accuracy"]
    assert scores["clip", "halves"] > 0.9 and scores["clip", "span"] > 0.9
    assert scores["own_event", "span"] > 0.9
    assert scores["own_event", "halves"] < scores["own_event", "span"] - 0.2


def test_committed_protocol_is_pre_registered():
    protocol, sha = q2.load_protocol(q2.PROTOCOL, quick=False)
    assert len(sha) == 64
    assert set(q2.method_list(protocol)) >= {"meanp", "xpool", "tmass", "spem", "duq", "dvtr", "prota"}
    assert len(protocol["seeds"]) == 5
    w = protocol["world"]
    assert round(w["videos"] * w["splits"][2] / sum(w["splits"])) >= 1000  # test queries
    assert round(w["videos"] * w["splits"][1] / sum(w["splits"])) >= 300  # validation queries
    ids = {c["id"]: c for c in protocol["comparisons"]}
    assert ids["world_has_phenomenon"]["a"] == "xpool" and ids["world_has_phenomenon"]["kind"] == "partial"
    for kind in ("all", "partial", "short"):
        spem = next(c for c in ids.values() if c["a"] == "spem" and c["kind"] == kind)
        assert spem["b"] == "max(xpool, meanp)" and spem["min_diff"] == 2.0 and spem["family"] == "primary"


def test_finetuning_runs_are_keyed_by_the_finetuning_code_not_the_report():
    assert "bench/quality_finetune.py" in q2.CODE_FILES and "bench/quality_v2.py" not in q2.CODE_FILES
    assert all((q2.REPO / f).is_file() for f in q2.CODE_FILES)
    assert not hasattr(q2, "finetune_job")  # one copy: bench/quality_finetune.py


@pytest.mark.slow
def test_quick_run_end_to_end_and_keyed_reuse(tmp_path, capsys):
    q2.main(["--quick", "--out", str(tmp_path), "--parallel", "2"])
    res = json.loads((tmp_path / "results.json").read_text())
    a = res["analysis"]
    methods = q2.method_list(q2.load_protocol(q2.PROTOCOL, quick=True)[0])
    assert sorted(a["complete_methods"]) == sorted(methods)
    n = len(res["kinds"])
    assert all(len(r["queries"]["test"]["hit1"]) == n for r in res["runs"].values())
    # the uncertainty half: val, test and calibration per-query signals in every run, tables and plots
    quick = q2.load_protocol(q2.PROTOCOL, quick=True)[0]
    gallery = quick["calibration"]["gallery"]
    ranked_against = q2.gallery_size(quick) or gallery  # videos per gallery the calibrators are fitted at
    for r in res["runs"].values():
        assert len(r["queries"]["calibration"]["hit1"]) == gallery
        assert r["queries"]["calibration"]["gallery_videos"] == ranked_against
        # with galleries, test's whole-split records are kept beside them (the secondary table)
        assert ("test_whole_split" in r["queries"]) == (q2.gallery_size(quick) is not None)
        for split in ("val", "test", "calibration"):
            q = r["queries"][split]
            assert {len(q[k]) for k in ("hit1", "rank", "top1", "margin", "match_set_size")} == {len(q["hit1"])}
            assert (q["uncertainty_top1"] is None) == (r["method"] in ("meanp", "xpool"))
    for split in ("val", "calibration"):
        one = json.loads(next((tmp_path / "runs").glob("spem-s0-*/result.json")).read_text())["queries"][split]
        assert len(one["topk_scores"][0]) == 10 and len(one["topk_relevant"]) == len(one["hit1"])
    unc = a["uncertainty"]
    assert sorted(unc["methods"]) == sorted(methods)
    for m, s in unc["methods"].items():
        assert s["seeds"] == 2 and set(s["ece"]) == {"platt_score", "platt_margin", "confidence", "product"}
        assert ("uncertainty" in s["signals"]) == (m not in ("meanp", "xpool")) and "meanp_margin" in s["signals"]
        assert set(s["targets"]) == {"auroc_over_margin", "confidence_ece_max", "abstention_gain_min"}
        # fitted on the calibration gallery (setting 10 on), recorded with its size
        assert all(c["product"]["domain"]["split"] == "calibration" and c["product"]["domain"]["gallery_size"] == ranked_against
                   for k, c in unc["calibrators"].items() if k.startswith(m))
    assert unc["fitted_on"] == ["calibration"]
    for png in ("risk_coverage.png", "reliability.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert "Confidence ECE on test (15 equal-width bins" in summary and "Targets (issue 11)" in summary
    assert "every calibrator fitted on the calibration gallery" in summary
    assert set(a["gate"]["probes"]) == {"background", "color", "shape", "motion"}
    assert {c["id"] for c in a["comparisons"]} >= {"world_has_phenomenon", "spem_overall"}
    assert "Encoder gate" in summary
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    # same protocol and code: every run is reused, nothing new is trained
    q2.main(["--quick", "--out", str(tmp_path), "--gate-only"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["pretrain"] == res["pretrain"]
    # a report on a subset of the seeds reuses their runs and says it is partial
    q2.main(["--quick", "--out", str(tmp_path), "--seeds", "0", "--max-runs", "0"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs
    part = json.loads((tmp_path / "results.json").read_text())
    assert set(part["runs"]) == {f"{m}-s0" for m in methods} and part["meta"]["seeds"] == [0]
    assert "Partial report: seeds 0 of the protocol's" in (tmp_path / "summary.md").read_text()
    _finetune_ahead_uses_the_same_keys(tmp_path, runs, capsys)


def _finetune_ahead_uses_the_same_keys(out: Path, runs: list[str], capsys):
    """--finetune-from a bit-identical copy of the backbone finds every run finished; a backbone
    that differs by one weight starts new runs beside them; neither prints a test number."""
    from safetensors.torch import load_file, save_file

    backbone = next((out / "runs").glob("pretrain-*/backbone.safetensors"))
    copy = out / "copy.safetensors"
    copy.write_bytes(backbone.read_bytes())
    capsys.readouterr()
    q2.main(["--quick", "--out", str(out), "--finetune-from", str(copy)])
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs
    weights = load_file(str(backbone))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(out / "other.safetensors"))
    q2.main(["--quick", "--out", str(out), "--finetune-from", str(out / "other.safetensors"), "--seeds", "0",
             "--max-runs", "1", "--parallel", "1"])
    new = sorted(set(p.name for p in (out / "runs").iterdir()) - set(runs))
    assert len(new) == 1 and (out / "runs" / new[0] / "result.json").is_file()
    printed = capsys.readouterr()
    assert "R@1" not in printed.out + printed.err and "starting 1" in printed.out + printed.err
    with pytest.raises(SystemExit, match="--finetune-from"):
        q2.main(["--quick", "--out", str(out), "--finetune-from", str(out / "missing.safetensors")])


def test_seeds_outside_the_protocol_are_refused():
    protocol = {"seeds": [0, 1, 2]}
    assert q2.chosen_seeds(protocol, None) == [0, 1, 2] and q2.chosen_seeds(protocol, "2,0") == [0, 2]
    for bad in ("3", "0,x", ""):
        with pytest.raises(SystemExit, match="--seeds"):
            q2.chosen_seeds(protocol, bad)


def test_the_backbone_travels_as_parts_under_the_file_limit_and_comes_back_bit_identical(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=2 * q2.PART_BYTES + 123, dtype=np.uint8).tobytes()
    (tmp_path / q2.BACKBONE).write_bytes(data)
    q2.split_backbone(tmp_path)
    parts = sorted(tmp_path.glob(q2.BACKBONE + ".part*"))
    assert len(parts) == 3 and all(p.stat().st_size <= q2.PART_BYTES for p in parts)
    (tmp_path / q2.BACKBONE).unlink()  # a fresh clone: the whole file is not committed
    q2.join_backbone(tmp_path)
    assert (tmp_path / q2.BACKBONE).read_bytes() == data
    (tmp_path / q2.BACKBONE).unlink()
    parts[1].write_bytes(parts[1].read_bytes()[:-1])
    with pytest.raises(SystemExit, match="do not add up"):
        q2.join_backbone(tmp_path)
    assert not (tmp_path / q2.BACKBONE).exists()


def test_the_calibration_gallery_is_the_first_videos_with_match_sets_cut_to_them():
    import quality_finetune as qf

    from probret.train.datasets import RetrievalSplit, VideoRecord

    videos = [VideoRecord(video_id=f"v{i}", path=f"/w/v{i}.mp4", captions=[f"t{i}"]) for i in range(5)]
    data = RetrievalSplit(name="procedural", split="val", videos=videos, texts=[f"t{i}" for i in range(5)],
                          text_video_index=np.arange(5), missing=["/w/v1.mp4", "/w/v4.mp4"],
                          relevant=[[0, 4], [1, 2], [2], [3, 0], [4]])
    sub = qf.first_videos(data, 3)
    assert [v.video_id for v in sub.videos] == ["v0", "v1", "v2"] and sub.texts == ["t0", "t1", "t2"]
    assert sub.relevant == [[0], [1, 2], [2]] and sub.missing == ["/w/v1.mp4"]
    with pytest.raises(SystemExit, match="a gallery of 6 videos"):
        qf.first_videos(data, 6)


def test_a_second_world_may_not_repeat_the_protocols_seed(tmp_path):
    protocol, _ = q2.load_protocol(q2.PROTOCOL, quick=True)
    with pytest.raises(SystemExit, match="would repeat the protocol's own world"):
        q2.ensure_world(protocol, tmp_path, prefix="diag-world", seed=protocol["world"]["seed"], videos=10)


def test_galleries_rank_each_query_against_its_own_videos_block_only():
    import quality_finetune as qf

    sims = np.arange(20, dtype=np.float64).reshape(5, 4)  # 5 queries x 4 videos, galleries of 2
    unc = -sims
    index = np.array([0, 1, 2, 3, 0])
    relevant = [[0, 3], [1], [2, 0], [3], [0, 1]]
    sub, local, sub_unc = qf.confine_to_galleries(sims, relevant, index, 2, unc)
    assert sub.tolist() == [[0, 1], [4, 5], [10, 11], [14, 15], [16, 17]]
    assert local == [[0], [1], [0], [1], [0, 1]]  # match sets cut to the block, indices local to it
    assert sub_unc.tolist() == (-sub).tolist()
    rec = qf.query_records(sub, local, sub_unc)
    # the query of video 2 is ranked among videos 2 and 3 only: video 3 scores higher, video 0 is out
    assert rec["hit1"] == [0.0, 1.0, 0.0, 1.0, 1.0] and rec["gallery_videos"] == 2
    with pytest.raises(SystemExit, match="do not tile a split of 4 videos"):
        qf.confine_to_galleries(sims, relevant, index, 3)


def test_the_floor_is_scored_in_the_protocols_galleries():
    records = [{"background": "sky", "objects": [{"color": c}]} for c in ("red", "blue", "red", "blue")]
    queries = {"texts": ["a red thing", "a blue thing", "a red thing", "a blue thing"], "records": records,
               "relevant": [[0, 2], [1, 3], [2, 0], [3, 1]], "text_video_index": np.arange(4),
               "vocabulary": {"colors": ["red", "blue"], "backgrounds": ["sky"]}}
    # one gallery of 4: two videos share the top score and both match
    assert q2.floor_hit1({}, queries).tolist() == [1.0, 1.0, 1.0, 1.0]
    queries["relevant"] = [[0], [1], [2], [3]]  # now only one of the two does
    assert q2.floor_hit1({}, queries).tolist() == [0.5, 0.5, 0.5, 0.5]
    # galleries of 2: each red query sees one red video, its own
    assert q2.floor_hit1({"galleries": {"size": 2}}, queries).tolist() == [1.0, 1.0, 1.0, 1.0]
