"""bench/quality_pretrain.py: the shared backbone pre-trains in stages and a run killed after a
stage resumes from it (the stage is not trained again) and ends with every stage recorded; its
key follows what decides the weights and nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import quality_pretrain as qp  # noqa: E402
import quality_v2 as q2  # noqa: E402


def test_key_follows_the_backbone_sections_only():
    protocol, _ = q2.load_protocol(q2.PROTOCOL, quick=True)
    key = qp.pretrain_key(protocol)
    assert qp.pretrain_key(json.loads(json.dumps(protocol))) == key
    other = json.loads(json.dumps(protocol))
    other["finetune"]["steps"] += 1
    other["comparisons"] = []
    assert qp.pretrain_key(other) == key  # fine-tuning and the report do not move the backbone
    other["pretrain"]["steps"] += 1
    assert qp.pretrain_key(other) != key


@pytest.mark.slow
def test_a_killed_pretraining_resumes_from_its_last_stage(tmp_path, monkeypatch):
    protocol, _ = q2.load_protocol(q2.PROTOCOL, quick=True)
    protocol["pretrain"].update(steps=4, stages=[2])
    world = q2.ensure_world(protocol, tmp_path)
    job = {"kind": "pretrain", "method": "meanp", "seed": 0, "world": str(world), "dir": str(tmp_path / "run")}
    Path(job["dir"]).mkdir()
    calls = []
    real = qp.validation_gap

    def killed_after_first_stage(model, world_dir):
        if calls:
            raise KeyboardInterrupt("session ended")
        calls.append(1)
        return real(model, world_dir)

    monkeypatch.setattr(qp, "validation_gap", killed_after_first_stage)
    with pytest.raises(KeyboardInterrupt):
        qp.pretrain_job(protocol, job)
    rows = json.loads((Path(job["dir"]) / qp.STAGES_FILE).read_text())
    assert [r["steps"] for r in rows] == [2]
    monkeypatch.setattr(qp, "validation_gap", real)
    trained = []
    import probret.train.trainer as trainer

    original = trainer.train
    monkeypatch.setattr(trainer, "train", lambda *a, **kw: trained.append(kw) or original(*a, **kw))
    result = qp.pretrain_job(protocol, job)
    assert [kw["stop_after"] for kw in trained] == [4] and trained[0]["resume"] is True
    assert [r["steps"] for r in result["stages"]] == [2, 4] and result["steps"] == 4
    for row in result["stages"]:  # the caption swap check is recorded beside the gate at every stage
        assert set(row["swap"]) == {"shape", "color", "direction", "motion_verb"}
        assert all(0 <= v["prefers_own"] <= 1 and v["captions"] > 0 and -1 <= v["text_cos"] <= 1
                   for v in row["swap"].values())
    assert (Path(job["dir"]) / "backbone.safetensors").is_file()


def test_the_committed_pretraining_asks_for_shape_and_motion_through_swapped_negatives(tmp_path):
    from probret.train.config import ExperimentConfig, apply_overrides
    from probret.train.world.grammar import canonical_verb
    from probret.train.world.vocabulary import MOTIONS, SHAPES, TRANSLATIONS

    protocol, _ = q2.load_protocol(q2.PROTOCOL, quick=False)
    job = {"method": "meanp", "world": str(tmp_path), "dir": str(tmp_path / "run"), "seed": 0}
    config = apply_overrides(ExperimentConfig(), qp.overrides(protocol, job, protocol["pretrain"]))
    # setting 10: the directions and the canonical motion verbs as the world's captions spell them
    verbs = [canonical_verb(m) for m in MOTIONS if m not in TRANSLATIONS]
    assert config.train.negative_swaps == [list(SHAPES), list(TRANSLATIONS), verbs]
    assert config.train.negative_weight == 1.0
    tuned = apply_overrides(ExperimentConfig(), qp.overrides(protocol, job, protocol["finetune"]))
    assert tuned.train.negative_swaps == []  # fine-tuning is every head's own loss, unchanged
    # setting 7: the pre-training trains every frame alone (CLIP's objective); fine-tuning's meanP does not
    assert config.model.method == "meanp" and config.model.head == {"objective": "frames"}
    assert tuned.model.head == {}


def test_the_pretraining_objective_is_part_of_the_backbone_key():
    protocol, _ = q2.load_protocol(q2.PROTOCOL, quick=True)
    other = json.loads(json.dumps(protocol))
    other["pretrain"]["head"] = {"objective": "video"}
    assert qp.pretrain_key(other) != qp.pretrain_key(protocol)


def test_the_vision_warm_start_trains_only_the_vision_tower_and_is_what_pretraining_starts_from(tmp_path):
    import torch
    from safetensors.torch import load_file

    import vision_warmstart as vw
    from probret.train.backbone import create_backbone

    protocol, _ = q2.load_protocol(q2.PROTOCOL, quick=True)
    world = q2.ensure_world(protocol, tmp_path)
    frames, labels = vw.single_object_frames(world, "train", True, ("shape", "color"))
    assert frames.dtype == np.uint8 and len(frames) == len(labels["shape"]) == len(labels["color"]) > 0
    out = vw.warm_start_file(protocol, world, tmp_path / "ws.safetensors")
    record = json.loads(out.with_suffix(".json").read_text())
    assert [r["step"] for r in record["rows"]] == [2] and set(record["majority"]) == {"shape", "color"}
    torch.manual_seed(protocol["pretrain"]["seed"])
    fresh = create_backbone(protocol["backbone"]["name"]).clip.state_dict()
    warm = load_file(str(out))
    assert warm.keys() == fresh.keys()
    changed = {k for k in warm if not torch.equal(warm[k], fresh[k])}
    assert changed and all(k.startswith("visual.") for k in changed)  # the text tower is the random init
    stamp = out.stat().st_mtime_ns
    assert vw.warm_start_file(protocol, world, out) == out and out.stat().st_mtime_ns == stamp  # reused
    # the contrastive pre-training loads it as its pretrained file
    job = {"method": "meanp", "world": str(world), "dir": str(tmp_path / "run"), "seed": 0, "backbone_file": str(out)}
    assert f"model.pretrained={out}" in qp.overrides(protocol, job, protocol["pretrain"])
