"""Export forms (export/forms.py) against the PyTorch heads, and their per-pair cost."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from probret.export.forms import FusedXPool, GenericForm, create_form
from probret.train.methods import create_head
from probret.train.methods.base import TextFeatures

D, T = 64, 4

VARIANTS = [
    ("meanp", {}),
    ("xpool", {}),
    ("xpool", {"num_heads": 4}),
    ("tmass", {}),
    ("tmass", {"radius": "scalar", "prior": "gaussian", "prior_std": 0.5, "num_samples": 5}),
    ("tmass", {"inference": "mean"}),
    ("spem", {}),
    ("spem", {"inference": "expected", "sort_frame_sims": False, "num_heads": 2}),
    ("spem", {"inference": "mean"}),
    ("spem", {"content": True}),
    ("spem", {"content": True, "inference": "mean"}),
    ("spem", {"variance": "item"}),
    ("spem", {"variance": "item", "inference": "expected"}),
    ("spem", {"variance": "item", "inference": "mean"}),
    ("duq", {}),
    ("duq", {"rerank": "paper"}),
    ("dvtr", {}),
    ("prota", {}),
]


def _head(name, embed_dim=D, **hp):
    torch.manual_seed(1)
    head = create_head(name, embed_dim=embed_dim, num_frames=T, **hp).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return head


def _inputs(form, n_text=3, n_video=5, length=7, embed_dim=D):
    g = torch.Generator().manual_seed(2)
    mask = torch.arange(length)[None] < torch.tensor([2, length, 4][:n_text])[:, None]
    text = TextFeatures(3 * torch.randn(n_text, embed_dim, generator=g), torch.randn(n_text, length, embed_dim, generator=g), mask)
    frames = 2 * torch.randn(n_video, T, embed_dim, generator=g) + torch.randn(n_video, 1, embed_dim, generator=g)
    noise = {s.key: (torch.rand(s.shape, generator=g) if s.distribution == "uniform"
                     else s.scale * torch.randn(s.shape, generator=g)) for s in form.noise_specs}
    return text, frames, noise


@pytest.mark.parametrize("name,hp", VARIANTS, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in h.items()) or 'default'}"
                                                    for n, h in VARIANTS])
def test_form_equals_head(name, hp):
    head = _head(name, **hp)
    form = create_form(head)
    text, frames, noise = _inputs(form)
    with torch.no_grad():
        ref = form.reference(text, frames, noise)
        scores, unc = form.score(text, frames, noise)
    assert scores.shape == ref.scores.shape == (3, 5)
    assert torch.allclose(scores, ref.scores, atol=1e-5, rtol=0), (scores - ref.scores).abs().max()
    assert (unc is None) == (ref.uncertainty is None)
    if unc is not None:
        assert torch.allclose(unc, ref.uncertainty, atol=1e-5, rtol=1e-5)
    # every stored tensor has N_v first
    with torch.no_grad():
        vs = form.video_side(frames)
    assert set(vs) == set(form.video_names)
    assert all(v.shape[0] == 5 for v in vs.values())


def test_noise_specs_follow_the_heads_layout():
    tm = create_form(_head("tmass", num_samples=6))
    (eps,) = tm.noise_specs
    assert (eps.key, eps.shape, eps.side, eps.axis, eps.distribution) == ("eps", (6, D), "text", 1, "uniform")
    sp = create_form(_head("spem"))
    assert [(s.key, s.side, s.shape) for s in sp.noise_specs] == [("eps_t", "text", (20, D)), ("eps_v", "video", (20, D))]
    duq = create_form(_head("duq"))
    assert [(s.key, s.axis, s.shape) for s in duq.noise_specs] == [("text", 0, (7, D)), ("video", 0, (7, D))]
    assert create_form(_head("xpool")).noise_specs == []


def test_generic_form_matches_for_any_head():
    """The fallback (head's own video_side / pair_side) is exact too."""
    head = _head("spem")
    form = create_form(head, generic=True)
    assert isinstance(form, GenericForm) and not form.optimized
    text, frames, noise = _inputs(form)
    with torch.no_grad():
        ref = form.reference(text, frames, noise)
        scores, _ = form.score(text, frames, noise)
    assert torch.allclose(scores, ref.scores, atol=1e-6)


def test_fused_xpool_reproduces_the_fused_embedding():
    head = _head("xpool", num_heads=2)
    fx = FusedXPool(head.fusion)
    text, frames, _ = _inputs(create_form(head))
    with torch.no_grad():
        ref = head.fusion.pair_side(text.sentence, head.fusion.video_side(frames))  # (N_t, N_v, D)
        got = fx.fused(text.sentence, fx.video_side(frames, gram=False)).transpose(0, 1)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("name", ["xpool", "tmass", "spem", "duq"])
def test_pair_cost_is_linear_in_d(name):
    """Per-pair matmul FLOPs grow ~linearly with D for the export forms (O(T'd + Md)), ~quadratically
    for the heads' own pair sides (linear_proj is a d x d matrix per pair)."""

    def per_pair(embed_dim, use_form):
        head = _head(name, embed_dim=embed_dim)
        form = create_form(head)
        text, frames16, noise = _inputs(form, n_text=3, n_video=16, embed_dim=embed_dim)

        def run(n_t, n_v):
            fr = frames16[:n_v]
            with torch.no_grad():
                if use_form:
                    vs = form.video_side(fr)
                    counter_fn = lambda: form.pair(text, vs, noise)  # noqa: E731
                else:
                    vs = head.video_side(fr)
                    hn = form.head_noise(noise, 3, n_v)
                    counter_fn = lambda: head.pair_side(text, vs, noise=hn)  # noqa: E731
                with FlopCounterMode(display=False) as c:
                    counter_fn()
            return c.get_total_flops()

        return (run(3, 16) - run(3, 8)) / (3 * 8)

    form_small, form_big = per_pair(128, True), per_pair(512, True)
    head_small, head_big = per_pair(128, False), per_pair(512, False)
    assert form_big / form_small < 4.8, (form_small, form_big)  # linear: x4 for x4 D
    assert head_big / head_small > 8, (head_small, head_big)  # the heads carry a d^2 term
    assert form_big < head_big / 2


def test_every_registered_method_is_in_the_form_parity_test():
    from probret.train.methods import list_methods

    assert {name for name, _ in VARIANTS} == set(list_methods())


def test_each_head_gets_the_form_it_declares():
    from probret.train.methods import list_methods

    for name in list_methods():
        head = _head(name)
        form = create_form(head)
        assert type(form).__name__ == head.export_form
        assert form.needs_tokens == head.needs_tokens


def test_a_head_whose_draw_noise_disagrees_with_its_declaration_is_refused():
    from probret.engine.errors import ModelError

    head = _head("spem")
    head.inference_noise = lambda: []  # declares nothing, but draws eps_t / eps_v
    with pytest.raises(ModelError, match="declares"):
        create_form(head)
    head = _head("duq")
    real = head.inference_noise()
    head.inference_noise = lambda: [dataclasses.replace(s, axis=1) for s in real]
    with pytest.raises(ModelError, match="declared as"):
        create_form(head)
