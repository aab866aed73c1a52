"""train/negatives.py: NegCLIP-style word-swapped negative captions and their loss term."""

from __future__ import annotations

import json
import random

import pytest
import torch

from probret.engine.errors import DataError
from probret.train.negatives import check_swaps, negative_text_loss, swap_negatives

SHAPES = [["circle", "square", "triangle", "star", "cross"]]


def test_each_caption_with_a_group_word_gets_one_negative_differing_in_exactly_that_word():
    texts = ["a red circle moves left, then a square falls", "a blue shape grows", "A Star spins"]
    negatives = swap_negatives(texts, SHAPES, random.Random(0))
    assert len(negatives) == 2  # "a blue shape grows" has no shape noun to swap
    for source, neg in zip([texts[0], texts[2]], negatives):
        a, b = source.lower().split(), neg.lower().split()
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(changed) == 1
        old, new = (w.strip(",") for w in changed[0])
        assert old in SHAPES[0] and new in SHAPES[0] and old != new


def test_swaps_are_whole_words_and_reproducible():
    assert swap_negatives(["crossing the starboard"], SHAPES, random.Random(0)) == []
    texts = [f"a circle number {i}" for i in range(50)]
    assert swap_negatives(texts, SHAPES, random.Random(3)) == swap_negatives(texts, SHAPES, random.Random(3))
    # every other shape is drawn as the replacement
    seen = {n.split()[1] for n in swap_negatives(texts, SHAPES, random.Random(3))}
    assert seen == {"square", "triangle", "star", "cross"}


def test_each_group_a_caption_names_gets_its_own_negative():
    groups = SHAPES + [["left", "right", "up", "down"], ["grows", "shrinks", "rotates"]]
    texts = ["a red circle moves left, then a square grows", "a blue shape rotates", "nothing here"]
    negatives = swap_negatives(texts, groups, random.Random(0))
    # caption 0 names a shape, a direction and a verb (3 negatives); caption 1 a verb only
    assert len(negatives) == 4
    changed = []
    for source, neg in zip([texts[0]] * 3 + [texts[1]], negatives):
        diff = [(x, y) for x, y in zip(source.split(), neg.split()) if x != y]
        assert len(diff) == 1
        changed.append(diff[0][0].strip(","))
    group_of = {w: k for k, g in enumerate(groups) for w in g}
    assert [group_of[w] for w in changed] == [0, 1, 2, 2]  # caption order, then group order
    # a single group keeps the one-negative-per-caption rule of settings 5-9
    assert len(swap_negatives(texts, SHAPES, random.Random(0))) == 1


@pytest.mark.parametrize("groups, why", [
    ("circle", "must be a list"), ([["circle"]], "at least two words"), ([["circle", "a b"]], "one word"),
    ([["circle", "square"], ["square", "star"]], "only once"), ([["circle", "circle"]], "only once"),
])
def test_bad_swap_groups_are_named(groups, why):
    assert why in check_swaps(groups)


def test_the_config_refuses_bad_swap_groups_as_a_data_error():
    from probret.train.config import ExperimentConfig, apply_overrides

    with pytest.raises(DataError, match="train.negative_swaps: each group"):
        apply_overrides(ExperimentConfig(), ['train.negative_swaps=[["circle"]]'])
    config = apply_overrides(ExperimentConfig(), [f"train.negative_swaps={json.dumps(SHAPES)}"])
    assert config.train.negative_swaps == SHAPES


def test_the_loss_is_video_to_text_cross_entropy_over_captions_and_negatives():
    from probret.train.methods.base import TextFeatures
    from probret.train.methods.meanp import MeanPHead

    torch.manual_seed(0)
    head = MeanPHead(8, 2, MeanPHead.Config())
    frames = torch.randn(3, 2, 8)

    def feats(x):
        return TextFeatures(x, x[:, None], torch.ones(len(x), 1, dtype=torch.bool))

    text, neg = torch.randn(3, 8), torch.randn(2, 8)
    got = negative_text_loss(head, feats(text), feats(neg), frames, logit_scale=torch.tensor(10.0))
    v = torch.nn.functional.normalize(torch.nn.functional.normalize(frames, dim=-1).mean(1), dim=-1)
    cand = torch.nn.functional.normalize(torch.cat([text, neg]), dim=-1)
    want = torch.nn.functional.cross_entropy(10.0 * v @ cand.t(), torch.arange(3))
    torch.testing.assert_close(got, want)
    # every negative is one more candidate, so the term can only grow; one identical to the
    # true caption makes caption 0 and its copy tie for video 0
    base = torch.nn.functional.cross_entropy(10.0 * v @ cand[:3].t(), torch.arange(3))
    same = negative_text_loss(head, feats(text), feats(text[:1]), frames, logit_scale=torch.tensor(10.0))
    assert got > base and same > base

def test_training_with_negatives_logs_their_term_and_resumes_identically(tiny_world, tmp_path):
    from safetensors.torch import load_file

    from tests.train.test_trainer import tiny_config
    from probret.train.trainer import train

    swaps = {"negative_swaps": SHAPES, "eval_every": 100}
    train(tiny_config(tiny_world, tmp_path / "straight", **swaps), progress=False)
    events = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    parts = [e for e in events if e["event"] == "train"]
    assert parts and all("loss_negative" in e for e in parts)
    train(tiny_config(tiny_world, tmp_path / "cut", **swaps), progress=False, stop_after=4)
    train(tiny_config(tiny_world, tmp_path / "cut", **swaps), progress=False, resume=True)
    plain = tmp_path / "plain"
    train(tiny_config(tiny_world, plain, eval_every=100), progress=False)
    a, b, c = (load_file(str(tmp_path / d / "last" / "model.safetensors")) for d in ("straight", "cut", "plain"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert any(not torch.allclose(a[k], c[k]) for k in a)  # the term changes what is learned
