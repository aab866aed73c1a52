"""Random backbone outputs shared by the uncertainty-method tests (DUQ, DVTR, ProTA): N_text
captions with 5 token slots (the last two padding) and N_video videos of 4 frames, D = 16."""

import torch

from probret.train.methods.base import TextFeatures

D, T, L = 16, 4, 5


def features(n_text, n_video, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n_text, L, dtype=torch.bool)
    mask[:, 3:] = False
    text = TextFeatures(torch.randn(n_text, D, generator=g), torch.randn(n_text, L, D, generator=g), mask)
    return text, torch.randn(n_video, T, D, generator=g)


def losses_over_adam(params, loss, *, lr: float, train_loss=None, steps: int = 30) -> tuple[float, float]:
    """``loss()`` before and after ``steps`` Adam steps on ``params``; the steps minimise
    ``train_loss()`` (default: ``loss``), e.g. with fresh noise while ``loss`` holds it fixed."""
    train_loss = train_loss or loss
    opt = torch.optim.Adam(params, lr=lr)
    first = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        train_loss().backward()
        opt.step()
    return first, loss().item()


def sentence_text(n, d, g):
    """``n`` random sentences of width ``d`` with two random, unmasked token slots."""
    sentence, tokens = torch.randn(n, d, generator=g), torch.randn(n, 2, d, generator=g)
    return TextFeatures(sentence, tokens, torch.ones(n, 2, dtype=torch.bool))


def perturb(module, g, std):
    """Add ``std`` N(0, 1) noise to every parameter: moves a head off its symmetric initial values."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return module
