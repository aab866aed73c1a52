"""What a training run records: ``log.jsonl`` (one JSON object per event, always) and TensorBoard
event files in ``RUN/tensorboard/`` when the ``tensorboard`` package is installed
(``pip install 'probret[tensorboard]'``; without it nothing changes and nothing is said).

Scalars in TensorBoard: ``train/<loss name>`` and ``train/lr/<param group>`` per logged step,
``val/<direction>/<metric>`` (R1, R5, R10, MdR, MnR) per evaluation. ``log.jsonl`` has the same
numbers and more (epochs, elapsed seconds, the best step); it is the record the tests read.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("probret.train")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class RunLog:
    """The run's records; ``RunLog(None)`` (ranks other than 0) records nothing."""

    def __init__(self, out: Path | None, *, tensorboard: bool | None = None):
        self.path = out / "log.jsonl" if out is not None else None
        self.writer = None
        if out is not None and (tensorboard if tensorboard is not None else tensorboard_available()):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def event(self, kind: str, **fields) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), "event": kind, **fields}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def train_step(self, step: int, *, epoch: int, lr: list[float], losses: dict[str, float], elapsed: float) -> None:
        self.event("train", step=step, epoch=epoch, lr=lr, **losses, elapsed=elapsed)
        if self.writer is not None:
            for name, value in losses.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            for i, value in enumerate(lr):
                self.writer.add_scalar(f"train/lr/{i}", value, step)

    def evaluation(self, step: int, *, epoch: int, split: str, metrics: dict, improved: bool) -> None:
        self.event("eval", split=split, step=step, epoch=epoch, metrics=metrics, improved=improved)
        if self.writer is not None:
            for direction, values in metrics.items():
                for name, value in values.items():
                    self.writer.add_scalar(f"val/{direction}/{name}", float(value), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
