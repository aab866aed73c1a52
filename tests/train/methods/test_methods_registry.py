"""The method registry (train/methods/__init__.py, base.register_method) and the contract every
registered head declares: its inference noise is what ``draw_noise`` really draws."""

from __future__ import annotations

import pytest
import torch

from probret.train.methods import create_head, get_head_class, list_methods
from probret.train.methods.base import RetrievalHead, ScoreOutput, register_method

D, T = 32, 4
# every method with its defaults, plus the configurations that change the declared noise
VARIANTS = [(name, {}) for name in list_methods()] + [
    ("tmass", {"prior": "gaussian", "prior_std": 0.5, "num_samples": 5}),
    ("tmass", {"inference": "mean"}),
    ("spem", {"inference": "mean"}),
    ("duq", {"num_samples": 3}),
]


def test_the_seven_methods_are_registered_under_their_names():
    assert list_methods() == ["duq", "dvtr", "meanp", "prota", "spem", "tmass", "xpool"]
    for name in list_methods():
        cls = get_head_class(name)
        assert cls.name == name and issubclass(cls, RetrievalHead)
        assert get_head_class(name.upper()) is cls


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="unknown method 'bogus'; choose one of duq, dvtr"):
        get_head_class("bogus")
    with pytest.raises(ValueError, match="no hyperparameter"):
        create_head("spem", embed_dim=D, num_frames=T, alfa=1.0)


def test_a_head_without_video_side_and_pair_side_cannot_be_built():
    class Incomplete(RetrievalHead):
        def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
            return {}

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(D, T)


def test_register_method_rejects_bad_names_and_duplicates():
    with pytest.raises(ValueError, match="lower-case"):
        register_method("Bad-Name")
    with pytest.raises(ValueError, match="registered twice"):
        @register_method("spem")
        class Other(RetrievalHead):
            def video_side(self, frames):
                return {}

            def pair_side(self, text, video, *, noise=None, generator=None):
                return ScoreOutput(torch.zeros(1, 1))

            def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
                return {}


@pytest.mark.parametrize("name,hp", VARIANTS, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in h.items()) or 'default'}"
                                                    for n, h in VARIANTS])
def test_declared_inference_noise_is_what_draw_noise_draws(name, hp):
    head = create_head(name, embed_dim=D, num_frames=T, **hp).eval()
    n_text, n_video = 40, 50
    drawn = head.draw_noise(n_text, n_video, generator=torch.Generator().manual_seed(0), training=False)
    specs = head.inference_noise()
    assert [s.key for s in specs] == sorted(drawn), "declare every key draw_noise draws, sorted by key"
    for spec in specs:
        x = drawn[spec.key]
        n = n_text if spec.side == "text" else n_video
        assert tuple(x.shape) == spec.shape[:spec.axis] + (n,) + spec.shape[spec.axis:]
        x = x.double() / spec.scale  # back to U[0, 1) or N(0, 1); >= 24k numbers each
        if spec.distribution == "uniform":
            assert x.min() >= 0 and x.max() < 1
            assert abs(x.mean() - 0.5) < 0.01 and abs(x.var() - 1 / 12) < 0.003
        else:
            assert x.min() < 0 < x.max()
            assert abs(x.mean()) < 0.03 and abs(x.std() - 1) < 0.03


@pytest.fixture
def new_method():
    """A method defined the way a new file in train/methods/ defines one (removed afterwards)."""
    from dataclasses import dataclass

    from probret.train.methods.base import REGISTRY, NoiseSpec, l2n, symmetric_infonce

    @register_method("noisymean")
    class NoisyMeanHead(RetrievalHead):
        @dataclass
        class Config:
            num_samples: int = 3

        def draw_noise(self, n_text, n_video, *, generator=None, training=False):
            m = 1 if training else self.config.num_samples
            return {"eps": torch.randn(m, n_video, self.embed_dim, generator=generator)}

        def inference_noise(self):
            return [NoiseSpec("eps", "gaussian", 1.0, (self.config.num_samples, self.embed_dim), "video", 1)]

        def video_side(self, frames):
            return {"video": l2n(frames.mean(1))}

        def pair_side(self, text, video, *, noise=None, generator=None):
            eps = self._noise(noise, len(text), video["video"].shape[0], generator, False)["eps"]
            samples = l2n(video["video"][None] + 0.1 * eps)  # (M, N_v, D)
            return ScoreOutput(torch.einsum("ad,mvd->mav", l2n(text.sentence), samples).amax(0))

        def loss(self, text, frames, *, logit_scale, noise=None, generator=None):
            return {"loss": symmetric_infonce(logit_scale * self.pair_side(text, self.video_side(frames)).scores)}

    yield NoisyMeanHead
    REGISTRY.pop("noisymean")


def test_a_new_method_needs_nothing_outside_its_own_file(new_method):
    """Registered: the config accepts it, export builds its form and noise banks from what it declares."""
    from probret.export.forms import GenericForm, create_form
    from probret.train.config import ExperimentConfig, apply_overrides
    from probret.train.methods.base import TextFeatures

    assert "noisymean" in list_methods()
    config = apply_overrides(ExperimentConfig(), ["model.method=noisymean", "model.head.num_samples=5"])
    assert config.model.method == "noisymean"
    head = create_head("noisymean", embed_dim=D, num_frames=T, num_samples=5).eval()
    form = create_form(head)
    assert isinstance(form, GenericForm) and [s.key for s in form.noise_specs] == ["eps"]
    g = torch.Generator().manual_seed(0)
    text = TextFeatures(torch.randn(3, D, generator=g), torch.randn(3, 2, D, generator=g), torch.ones(3, 2, dtype=bool))
    frames = torch.randn(4, T, D, generator=g)
    banks = {"eps": torch.randn(5, D, generator=g)}
    with torch.no_grad():
        scores, _ = form.score(text, frames, banks)
        ref = form.reference(text, frames, banks)
    torch.testing.assert_close(scores, ref.scores)
