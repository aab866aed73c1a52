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
