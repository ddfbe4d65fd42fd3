"""The training loop: pix2pix (L1 + GAN) or L1 only, on one or many devices.

One process per device (:mod:`training.distributed`); both networks are
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` under
``torchrun``. On CUDA the forward passes run under bf16 autocast in
channels_last layout; on CPU in float32.

:class:`Trainer` sets a run up (data, networks, optimisers, resume state),
runs its epochs, validates on rank 0 after each, and saves ``last.pt`` and
``best.pt`` (:mod:`training.checkpoint`); ``log.csv``, TensorBoard and the
progress bar are :mod:`training.callbacks`. :func:`train` is the one call.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from training.callbacks import Callback, CsvLog, LogSummary, ProgressBar, TensorBoard
from training.checkpoint import Checkpoint
from training.data import CropDataset, load_images, make_examples, record_paths
from training.distributed import RankSampler, barrier, select_device, setup_distributed, unwrap
from training.models import Networks
from training.provenance import code_fingerprint, git_commit
from training.split import Split
from training.step import lr_factor, train_step
from training.train_config import TrainConfig
from training.validation import selection_score, spread, validate

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    last_losses: dict[str, float]
    history: list[dict[str, Any]]
    images_per_second: float


class Trainer:
    """One training run: :meth:`setup`, then :meth:`run` (epochs, validation, checkpoints).

    Parameters
    ----------
    config : TrainConfig
        The run's hyper-parameters.
    split : Split
        Train/val/test assignment (saved to ``run_dir/split.json``).
    run_dir : pathlib.Path
        Where logs and checkpoints go.
    resume : pathlib.Path, optional
        A ``last.pt`` to continue from.
    start_from : pathlib.Path, optional
        A checkpoint whose generator initialises this run (ignored when resuming).
    data_summary : dict, optional
        Description of the training data, kept with the checkpoints.
    progress : bool
        Show a progress bar (rank 0).
    """

    def __init__(
        self,
        config: TrainConfig,
        split: Split,
        run_dir: Path,
        resume: Path | None = None,
        start_from: Path | None = None,
        data_summary: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.split = split
        self.run_dir = run_dir
        self.resume = resume
        self.start_from = start_from if resume is None else None
        self.data_summary = data_summary or {}
        self.progress = progress
        self.callbacks: list[Callback] = []
        self.start_epoch, self.step = 0, 0
        self.best_score, self.best_epoch, self.floor = -math.inf, -1, -math.inf
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Join the process group, load the images, build networks and optimisers, resume.

        Raises
        ------
        training.errors.SplitError
            If the training split is empty.
        CheckpointError
            If `resume` or `start_from` does not match the configuration.
        dicom_node.pixels.PixelDataError
            If an image cannot be read.
        """
        config = self.config
        self.info = setup_distributed()
        self.device = select_device(self.info)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(config.seed + self.info.rank)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._setup_data()
        self.nets = Networks.build(config, self.device, self.start_from)
        if self.resume is not None:
            self._load_resume_state(self.resume)
        self.nets.distribute(self.info, self.cuda)
        self.provenance = {
            "training_commit": git_commit(),
            "start_from": self.nets.start_from,
            "training_code_sha256": code_fingerprint(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(self.device) if self.cuda else str(self.device),
            "world_size": self.info.world_size,
        }
        if self.info.is_main:
            self._write_run_files()
            self.callbacks = [CsvLog(self.run_dir / "log.csv")]
            board = TensorBoard.create(self.run_dir)
            if board is not None:
                self.callbacks.append(board)
            self.callbacks.append(ProgressBar() if self.progress else LogSummary())
        if self.info.is_main and config.select == "texture" and self.resume is None:
            start = validate(unwrap(self.nets.generator), self.val_examples, self.device)
            self.floor = start["psnr"] - config.max_psnr_loss
            logger.info(
                "Starting generator: val PSNR %.3f dB, HF ratio %.3f; texture selection keeps "
                "epochs at or above %.3f dB.",
                start["psnr"],
                start["hf_ratio"],
                self.floor,
            )

    def _setup_data(self) -> None:
        config = self.config
        self.train_records = self.split.subset("train")
        val_records = spread(self.split.subset("val"), config.val_max_images)
        images = load_images(record_paths(self.train_records + val_records))
        self.dataset = CropDataset(
            self.train_records,
            images,
            config.crop_for(0),
            config.degradations,
            length=config.items_for(0, len(self.train_records)),
            seed=config.seed,
        )
        self.sampler = RankSampler(len(self.dataset), self.info, config.seed)
        self.loader = DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.workers,
            drop_last=len(self.sampler) >= config.batch_size,
            pin_memory=self.cuda,
            persistent_workers=config.workers > 0,
        )
        self.val_examples = (
            make_examples(val_records, images, config.val_degradation, seed=config.seed + 1)
            if self.info.is_main
            else []
        )

    def _load_resume_state(self, path: Path) -> None:
        state = Checkpoint.load(path, self.device)
        self.nets.resume(state, path, self.config)
        self.start_epoch = state.epoch + 1
        self.best_score, self.best_epoch = state.best_score, state.best_epoch
        self.best_metrics, self.floor = dict(state.best_metrics), state.psnr_floor
        self.history = list(state.history)
        self.step = int(self.history[-1]["step"]) if self.history else 0
        logger.info("Resuming %s at epoch %d.", path, self.start_epoch)

    def _write_run_files(self) -> None:
        self.split.save(self.run_dir / "split.json")
        saved = {"train": self.config.as_dict(), "data": self.data_summary, **self.provenance}
        (self.run_dir / "config.json").write_text(
            json.dumps(saved, indent=1) + "\n", encoding="utf-8"
        )
        logger.info(
            "Generator %s: %s; %d train crops/epoch, %d val images; device %s × %d.",
            self.config.generator.as_dict(),
            self.nets.describe(),
            len(self.dataset),
            len(self.val_examples),
            self.provenance["device"],
            self.info.world_size,
        )

    # ------------------------------------------------------------------ loop

    def steps_in(self, epoch: int) -> int:
        """Steps this rank runs in `epoch` (its share of the crops, the loader's drop_last)."""
        drawn = self.sampler.share(self.config.items_for(epoch, len(self.train_records)))
        full, rest = divmod(drawn, self.config.batch_size)
        return full + (1 if rest and not self.loader.drop_last else 0)

    def run(self) -> TrainResult:
        """Run the remaining epochs (after :meth:`setup`)."""
        total = sum(self.steps_in(e) for e in range(self.start_epoch, self.config.total_epochs))
        for callback in self.callbacks:
            callback.on_train_start(total)
        last: dict[str, float] = {}
        rate = 0.0
        for epoch in range(self.start_epoch, self.config.total_epochs):
            last, elapsed, rate = self.train_epoch(epoch)
            if self.info.is_main:
                metrics = self.validate()
                self.finish_epoch(epoch, last, metrics, elapsed, rate)
            barrier(self.info)
        for callback in self.callbacks:
            callback.on_train_end()
        return TrainResult(
            self.run_dir, self.best_epoch, self.best_metrics, last, self.history, rate
        )

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], float, float]:
        """Train one epoch (0-based); its mean losses, seconds and images per second."""
        config = self.config
        factor = lr_factor(epoch, config.epochs, config.epochs_decay)
        self.nets.set_lr(config, factor)
        self.dataset.set_epoch(
            epoch, config.crop_for(epoch), config.items_for(epoch, len(self.train_records))
        )
        self.sampler.length = len(self.dataset)
        self.sampler.set_epoch(epoch)
        self.nets.generator.train()
        autocast: AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        )
        sums = {"loss_l1": 0.0, "loss_gan": 0.0, "loss_d": 0.0}
        count, seen, started = 0, 0, time.perf_counter()
        fmt, nets = self.nets.memory_format, self.nets
        for low, high in self.loader:
            low = low.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
            high = high.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
            values = train_step(
                nets.generator,
                nets.discriminator,
                nets.opt_g,
                nets.opt_d,
                low,
                high,
                config.lambda_l1,
                autocast,
                config.gan_loss,
            )
            for key, value in values.items():
                sums[key] += value
            count += 1
            seen += int(low.shape[0]) * self.info.world_size
            self.step += 1
            for callback in self.callbacks:
                callback.on_step(self.step, epoch, values)
        elapsed = time.perf_counter() - started
        rate = seen / elapsed if elapsed > 0 else 0.0
        return {k: v / max(count, 1) for k, v in sums.items()}, elapsed, rate

    def validate(self) -> dict[str, float]:
        """PSNR, SSIM and HF power ratio of the current generator on the validation images."""
        return validate(unwrap(self.nets.generator), self.val_examples, self.device)

    def finish_epoch(
        self,
        epoch: int,
        losses: dict[str, float],
        metrics: dict[str, float],
        elapsed: float,
        rate: float,
    ) -> None:
        """Record the epoch, update the best one, save the checkpoints, tell the callbacks."""
        config = self.config
        row = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": config.lr * lr_factor(epoch, config.epochs, config.epochs_decay),
            **losses,
            "val_psnr": metrics["psnr"],
            "val_ssim": metrics["ssim"],
            "val_hf_ratio": metrics["hf_ratio"],
            "crop": config.crop_for(epoch),
            "epoch_seconds": elapsed,
            "images_per_second": rate,
        }
        self.history.append(row)
        score = selection_score(metrics, config.select, self.floor)
        is_best = score > self.best_score or self.best_epoch < 0
        if is_best:
            self.best_score, self.best_epoch = score, epoch + 1
            self.best_metrics = {
                "val_psnr": metrics["psnr"],
                "val_ssim": metrics["ssim"],
                "val_hf_ratio": metrics["hf_ratio"],
            }
        self.save(epoch, is_best)
        message = (
            f"epoch {epoch + 1}/{config.total_epochs}: l1 {losses['loss_l1']:.5f} "
            f"gan {losses['loss_gan']:.3f} d {losses['loss_d']:.3f} | val PSNR "
            f"{metrics['psnr']:.3f} dB SSIM {metrics['ssim']:.4f} HF {metrics['hf_ratio']:.3f}"
            f" | crop {row['crop']} {rate:.2f} img/s{' *best*' if is_best else ''}"
        )
        for callback in self.callbacks:
            callback.on_epoch_end(row, message)

    def checkpoint(self, epoch: int) -> Checkpoint:
        """The resumable checkpoint of the state after `epoch` (0-based)."""
        nets = self.nets
        return Checkpoint(
            epoch=epoch,
            generator=unwrap(nets.generator).state_dict(),
            generator_config=self.config.generator,
            train_config=self.config.as_dict(),
            best_epoch=self.best_epoch,
            best_score=self.best_score,
            psnr_floor=self.floor,
            best_metrics=dict(self.best_metrics),
            history=list(self.history),
            data=self.data_summary,
            provenance=self.provenance,
            discriminator=(
                unwrap(nets.discriminator).state_dict() if nets.discriminator is not None else None
            ),
            opt_g=nets.opt_g.state_dict(),
            opt_d=nets.opt_d.state_dict() if nets.opt_d is not None else None,
        )

    def save(self, epoch: int, is_best: bool) -> None:
        """Write ``last.pt``, and ``best.pt`` when `epoch` is the best so far."""
        state = self.checkpoint(epoch)
        state.save(self.run_dir / "last.pt")
        if is_best:
            state.best().save(self.run_dir / "best.pt")


def train(
    config: TrainConfig,
    split: Split,
    run_dir: Path,
    resume: Path | None = None,
    start_from: Path | None = None,
    data_summary: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a generator and keep its best checkpoint (see :class:`Trainer`).

    Parameters
    ----------
    config : TrainConfig
        The run's hyper-parameters.
    split : Split
        Train/val/test assignment (saved to ``run_dir/split.json``).
    run_dir : pathlib.Path
        Where logs and checkpoints go.
    resume : pathlib.Path, optional
        A ``last.pt`` to continue from.
    start_from : pathlib.Path, optional
        A checkpoint whose generator weights initialise this run (for example
        an L1-only run, fine-tuned here with the GAN loss). The discriminator,
        optimisers and schedule start afresh; ignored when resuming.
    data_summary : dict, optional
        Description of the training data, kept with the checkpoints.
    progress : bool
        Show a progress bar (rank 0).

    Returns
    -------
    TrainResult

    Raises
    ------
    training.errors.SplitError
        If the training split is empty.
    CheckpointError
        If a checkpoint cannot be read or does not match the configuration.
    dicom_node.pixels.PixelDataError
        If an image cannot be read.
    """
    trainer = Trainer(config, split, run_dir, resume, start_from, data_summary, progress)
    trainer.setup()
    return trainer.run()
