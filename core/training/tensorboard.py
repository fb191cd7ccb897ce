"""train.py --tensorboard: what a run logs for TensorBoard, in <run>/tensorboard/.

    python train.py -m ResNet18 --tensorboard
    tensorboard --logdir storage/

Per step: ``train/loss`` (that step's mean loss, this process's batch) and ``train/lr``; per epoch:
``epoch/{train,valid}_{loss,acc}`` and the valid confusion matrix as an image. Every tag's x axis is
the training step (an epoch's values sit at its last step), so a resumed run can drop what it redoes.
Step losses stay on the device and are read in one go every FLUSH_EVERY steps: no per-step host sync.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from core.evaluation.metrics import draw_confusion, normalise_rows
from core.extras import require

FLUSH_EVERY = 50  # steps between reads of the buffered step losses (each read is a host sync)
EPOCH_SCALARS = ("train_loss", "train_acc", "valid_loss", "valid_acc")


def require_tensorboard() -> None:
    """MissingExtra (one line) unless the tensorboard package is installed."""
    require("tensorboard", "train.py --tensorboard")


class TensorBoardLog:
    """Writes one run's scalars and confusion matrices; ``start_step`` hides what a resumed run redoes."""

    def __init__(self, run_dir: Path, classes: Sequence[str], steps_per_epoch: int, start_step: int = 0) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.classes = tuple(classes)
        self.steps_per_epoch = steps_per_epoch
        # Steps are counted from 1; what an interrupted run logged after step ``start_step`` (its
        # checkpoint) is done again, so TensorBoard is told to drop the old copies.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        print(f"TensorBoard logs -> {run_dir / 'tensorboard'}; to view them: "
              f"tensorboard --logdir {shlex.quote(str(run_dir.parent))}", flush=True)
        self._pending: list[tuple[int, float, torch.Tensor]] = []  # (global step, lr, step loss on the device)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # running sums (loss, seen) after the last step

    def start_epoch(self, loss_sum: torch.Tensor, seen: torch.Tensor) -> None:
        """The epoch's running sums before its next step (zeros, or those of a resumed epoch)."""
        self._last = (loss_sum.clone(), seen.clone())

    def step(self, global_step: int, lr: float, loss_sum: torch.Tensor, seen: torch.Tensor) -> None:
        """After a step: its mean loss is the growth of the running sums (kept on the device)."""
        if self._last is None:
            self.start_epoch(torch.zeros_like(loss_sum), torch.zeros_like(seen))
        last_loss, last_seen = self._last
        self._pending.append((global_step, lr, (loss_sum - last_loss) / (seen - last_seen).clamp_min(1)))
        self._last = (loss_sum.clone(), seen.clone())
        if len(self._pending) >= FLUSH_EVERY:
            self.flush_steps()

    def flush_steps(self) -> None:
        """Write the buffered step scalars (one host sync)."""
        if not self._pending:
            return
        losses = torch.stack([loss for _, _, loss in self._pending]).tolist()
        for (global_step, lr, _), loss in zip(self._pending, losses):
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)
        self._pending.clear()

    def epoch(self, row: dict[str, float], confusion: np.ndarray) -> None:
        """An epoch's history row (train/valid loss and accuracy) and its valid confusion matrix (counts)."""
        self.flush_steps()
        epoch = int(row["epoch"])
        step = epoch * self.steps_per_epoch
        for name in EPOCH_SCALARS:
            self.writer.add_scalar(f"epoch/{name}", row[name], step)
        self.writer.add_figure("valid/confusion_matrix", confusion_figure(confusion, self.classes, epoch), step)
        self.writer.flush()

    def close(self) -> None:
        self.flush_steps()
        self.writer.close()


def confusion_figure(counts: np.ndarray, classes: Sequence[str], epoch: int) -> plt.Figure:
    """The valid confusion matrix drawn as eval.py draws it (add_figure closes it)."""
    size = 3.2 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), layout="constrained")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    draw_confusion(ax, counts, normalise_rows(counts), classes, f"valid, epoch {epoch} (accuracy {accuracy:.2%})")
    return fig
