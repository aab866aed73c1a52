"""train/interrupt.py: signals become a saved stop; DataLoader workers survive a terminal's Ctrl-C."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from probret.train.interrupt import StopSignals, ignore_stop_signals


class _Slow(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        time.sleep(0.02)
        return torch.tensor([i])


def _read_all_after_signalling_the_worker(worker_init_fn) -> list[int]:
    loader = DataLoader(_Slow(), batch_size=1, num_workers=1, worker_init_fn=worker_init_fn)
    it = iter(loader)
    seen = [int(next(it))]
    (worker,) = it._workers
    os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.3)
    seen += [int(b) for b in it]
    return seen


def test_workers_ignore_sigint():
    assert _read_all_after_signalling_the_worker(ignore_stop_signals) == list(range(12))


def test_without_it_a_worker_dies_of_sigint_and_the_loader_fails():
    """The failure ignore_stop_signals prevents (so the test above can fail). The worker's death is
    noticed by the loader's watchdog, which can miss it on a loaded machine when the worker dies
    after queueing everything: so the failure must show in at least one of three tries."""
    # a forked worker inherits this process's SIGINT disposition: an earlier test (or the runner)
    # that left it ignored would make the worker immune, so set Python's default for this test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for _ in range(3):
            try:
                _read_all_after_signalling_the_worker(None)
            except RuntimeError as exc:
                assert "exited unexpectedly" in str(exc)
                return
    finally:
        signal.signal(signal.SIGINT, previous)
    pytest.fail("a worker without ignore_stop_signals survived SIGINT three times")


def test_first_signal_is_recorded_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
