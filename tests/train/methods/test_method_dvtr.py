"""DVTR head (paper 004): equations on hand-made tensors, noise contract, split, training."""

import math

import pytest
import torch

from probret.train.methods import create_head
from probret.train.methods.base import TextFeatures, symmetric_infonce
from probret.train.methods.dvtr import DVTRHead, debiased_contrastive, debiased_triplet, wasserstein2_sq

from method_features import D, T, features, losses_over_adam


def test_wasserstein_zero_for_identical_and_closed_form():
    mu = torch.tensor([[0.3, -1.0, 2.0]])
    var = torch.tensor([[0.5, 2.0, 1.0]])
    assert wasserstein2_sq(mu, var, mu, var).item() == pytest.approx(0.0, abs=1e-6)
    # N((0,0), diag(1,1)) vs N((3,0), diag(1,9)): 3^2 + (sqrt(9) - sqrt(1))^2 = 13
    w = wasserstein2_sq(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]),
                        torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 9.0]]))
    assert w.item() == pytest.approx(13.0)


def test_debiased_contrastive_reduces_to_infonce_and_downweights_soft_positives():
    s = torch.tensor([[0.9, 0.7, 0.1], [0.2, 0.8, 0.3], [0.6, 0.0, 0.5]], requires_grad=True)
    scale = torch.tensor(10.0)
    ones = torch.ones(3, 3)
    assert debiased_contrastive(s, ones, scale).item() == pytest.approx(symmetric_infonce(scale * s).item(), rel=1e-6)
    # Eq. 13 written out for row 0 with eta_01 = 0.2, eta_02 = 1
    eta = ones.clone()
    eta[0, 1] = 0.2
    e = [math.exp(10 * x) for x in (0.9, 0.7, 0.1)]
    row0 = -math.log(e[0] / (e[0] + 0.2 * e[1] + e[2]))
    rows = torch.nn.functional.cross_entropy(10 * s + torch.log(eta), torch.arange(3), reduction="none")
    assert rows[0].item() == pytest.approx(row0, rel=1e-6)
    # the soft positive (low eta = low mismatch probability) is pushed less than with eta = 1
    g_full = torch.autograd.grad(debiased_contrastive(s, ones, scale), s)[0]
    g_soft = torch.autograd.grad(debiased_contrastive(s, eta, scale), s)[0]
    assert 0 < g_soft[0, 1] < g_full[0, 1]
    assert debiased_contrastive(s, eta, scale) < debiased_contrastive(s, ones, scale)


def test_debiased_triplet_hand_computed():
    s = torch.tensor([[0.5, 0.6], [0.1, 0.4]])
    eta = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    # t2v: [0.5*0.6 - 0.5 + 0.5]_+ = 0.3 ; [0.1 - 0.4 + 0.5]_+ = 0.2
    # v2t: video 0 vs text 1: [0.1 - 0.5 + 0.5]_+ = 0.1 ; video 1 vs text 0: [0.3 - 0.4 + 0.5]_+ = 0.4
    assert debiased_triplet(s, eta, 0.5).item() == pytest.approx(0.5 * (0.25 + 0.25))
    assert debiased_triplet(s, torch.ones(2, 2), 0.5).item() == pytest.approx(0.5 * ((0.6 + 0.2) / 2 + (0.1 + 0.7) / 2))


def test_eta_is_a_probability_increasing_in_wasserstein_distance():
    head = create_head("dvtr", embed_dim=D, num_frames=T)
    with torch.no_grad():
        head.log_a.fill_(math.log(3.0))
        head.b.fill_(0.5)
    eta = torch.sigmoid(head.eta_logits(torch.tensor([0.0, 0.5, 1.0, 3.0])))
    assert eta[1].item() == pytest.approx(0.5)
    assert torch.all(eta[1:] > eta[:-1]) and torch.all((eta > 0) & (eta < 1))


def test_registry_split_rectangular_and_deterministic_score():
    head = create_head("dvtr", embed_dim=D, num_frames=T, objective="triplet")
    assert isinstance(head, DVTRHead) and head.config.margin == 0.5
    assert head.draw_noise(3, 5, generator=torch.Generator().manual_seed(0)) == {}
    text, frames = features(3, 5)
    out = head.score(text, frames)
    assert out.scores.shape == (3, 5) and out.uncertainty.shape == (3, 5)
    split = head.pair_side(text, head.video_side(frames))
    assert torch.equal(out.scores, split.scores) and torch.equal(out.uncertainty, split.uncertainty)
    assert torch.equal(out.scores, head.score(text, frames).scores)
    with pytest.raises(ValueError):
        create_head("dvtr", embed_dim=D, num_frames=T, objective="hinge")


def test_training_noise_determinism():
    head = create_head("dvtr", embed_dim=D, num_frames=T)
    text, frames = features(4, 4)
    scale = torch.tensor(14.0)
    a = head.loss(text, frames, logit_scale=scale, generator=torch.Generator().manual_seed(5))["loss"]
    b = head.loss(text, frames, logit_scale=scale, generator=torch.Generator().manual_seed(5))["loss"]
    nz = head.draw_noise(4, 4, generator=torch.Generator().manual_seed(5), training=True)
    assert nz["text"].shape == (4, 7, D)
    c = head.loss(text, frames, logit_scale=scale, noise=nz)["loss"]
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("objective", ["contrastive", "triplet"])
def test_loss_decreases_and_calibration_separates(objective):
    torch.manual_seed(0)
    head = create_head("dvtr", embed_dim=D, num_frames=T, objective=objective)
    text, frames = features(8, 8, seed=2)
    params = [torch.nn.Parameter(x.clone()) for x in (text.sentence, text.tokens, frames)]
    noise = head.draw_noise(8, 8, generator=torch.Generator().manual_seed(0), training=True)

    def step():
        return head.loss(TextFeatures(params[0], params[1], text.mask), params[2],
                         logit_scale=torch.tensor(20.0), noise=noise)["loss"]

    first, last = losses_over_adam(list(head.parameters()) + params, step, lr=2e-2)
    assert last < first - 0.5
    eta = head.score(TextFeatures(params[0], params[1], text.mask), params[2]).uncertainty
    assert eta.diagonal().mean() < eta[~torch.eye(8, dtype=torch.bool)].mean()  # positives: low mismatch prob.
