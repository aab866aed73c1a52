"""SIGINT / SIGTERM during training: finish the step in flight, save, say how to resume.

``with StopSignals() as signals:`` replaces the two handlers with one that only records the
signal (``signals.received`` becomes "SIGINT" or "SIGTERM"); the trainer checks it after every
optimizer step, so what it saves is a consistent state, the same as ``--stop-after`` would save
there. A second signal restores the previous handlers' behaviour (Ctrl-C twice: stop now, lose
the step). Outside the main thread signals cannot be caught, and nothing is installed.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("probret.train")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second one: behave as if we had never been here
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        log.warning("%s: saving after the current step (send it again to stop at once)", self.received)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self.restore()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``DataLoader(worker_init_fn=...)``: workers ignore SIGINT / SIGTERM. A terminal's Ctrl-C (and
    a scheduler's SIGTERM) reaches every process of the job; a worker that died of it would make the
    main process fail with "DataLoader worker exited unexpectedly" instead of saving. The main
    process shuts its workers down itself."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
