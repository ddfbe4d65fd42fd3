"""What a training run reports as it goes: ``log.csv``, TensorBoard, a progress bar or the log.

The :class:`~training.trainer.Trainer` calls every :class:`Callback` at the
start, after every step, after every epoch (rank 0 only) and at the end. None
of them changes the training.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_FIELDS = (
    "epoch",
    "step",
    "lr",
    "loss_l1",
    "loss_gan",
    "loss_d",
    "val_psnr",
    "val_ssim",
    "val_hf_ratio",
    "crop",
    "epoch_seconds",
    "images_per_second",
)
"""The columns of ``log.csv``, one row per epoch (also kept in the checkpoint's history)."""

TENSORBOARD_EVERY = 10
"""Steps between two training-loss points in TensorBoard."""


class Callback:
    """Hooks of a training run; every method does nothing unless overridden."""

    def on_train_start(self, total_steps: int) -> None:
        """Called once before the first step, with the number of steps still to run."""

    def on_step(self, step: int, epoch: int, losses: dict[str, float]) -> None:
        """Called after every step with its losses (`epoch` is 0-based)."""

    def on_epoch_end(self, row: dict[str, Any], message: str) -> None:
        """Called on rank 0 after an epoch is validated and saved, with its log row."""

    def on_train_end(self) -> None:
        """Called once after the last epoch."""


class CsvLog(Callback):
    """Appends every epoch's row to ``log.csv`` (:data:`LOG_FIELDS`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, row: dict[str, Any], message: str) -> None:
        """Append `row`, writing the header first into a new file."""
        new = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})


class TensorBoard(Callback):
    """TensorBoard events in ``RUN/tensorboard``: losses, validation, learning rate, speed."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.step = 0

    @classmethod
    def create(cls, run_dir: Path) -> TensorBoard | None:
        """A writer in ``run_dir/tensorboard``; None (with a warning) without tensorboard."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is part of the train extra, but stay usable without it
            logger.warning("TensorBoard is not installed; logging to log.csv only.")
            return None
        return cls(SummaryWriter(log_dir=str(run_dir / "tensorboard")))

    def on_step(self, step: int, epoch: int, losses: dict[str, float]) -> None:
        """Every :data:`TENSORBOARD_EVERY` steps, the step's losses."""
        self.step = step
        if step % TENSORBOARD_EVERY == 0:
            for key, value in losses.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def on_epoch_end(self, row: dict[str, Any], message: str) -> None:
        """Validation PSNR/SSIM, learning rate and speed of the epoch."""
        step = int(row["step"])
        self.writer.add_scalar("val/psnr", row["val_psnr"], step)
        self.writer.add_scalar("val/ssim", row["val_ssim"], step)
        self.writer.add_scalar("train/lr", row["lr"], step)
        self.writer.add_scalar("train/images_per_second", row["images_per_second"], step)
        self.writer.flush()

    def on_train_end(self) -> None:
        """Close the event file."""
        self.writer.close()


class ProgressBar(Callback):
    """A tqdm bar over the run's steps; epoch summaries are written above it."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_train_start(self, total_steps: int) -> None:
        """Open the bar (nothing when no step is left)."""
        if total_steps <= 0:
            return
        from tqdm import tqdm

        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if interactive else 30.0,
            desc="train",
        )

    def on_step(self, step: int, epoch: int, losses: dict[str, float]) -> None:
        """Advance and show the step's losses."""
        if self.bar is None:
            return
        self.bar.update(1)
        self.bar.set_postfix(
            epoch=epoch + 1,
            l1=f"{losses['loss_l1']:.4f}",
            gan=f"{losses['loss_gan']:.3f}",
            d=f"{losses['loss_d']:.3f}",
            refresh=False,
        )

    def on_epoch_end(self, row: dict[str, Any], message: str) -> None:
        """Write the epoch summary above the bar (or to the log without one)."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            logger.info(message)

    def on_train_end(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


class LogSummary(Callback):
    """The epoch summary as an INFO log line (when there is no progress bar)."""

    def on_epoch_end(self, row: dict[str, Any], message: str) -> None:
        """Log `message`."""
        logger.info(message)
