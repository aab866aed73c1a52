"""Shared by every method test: the tensors are tiny, so one intra-op thread is fastest and does
not fight other jobs for the cores (measured ~27x faster than two threads on a loaded 2-core box)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and does not fight other jobs for cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
