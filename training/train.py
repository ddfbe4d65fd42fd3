"""The training loop: pix2pix (L1 + vanilla GAN) or L1 only, on one or many devices.

One process per device. Under ``torchrun`` the process group is read from
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and both networks
are wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`; each rank
draws a disjoint share of every epoch's crops. On CUDA the forward passes
run under bf16 autocast in channels_last layout; on CPU in float32.

Rank 0 validates after every epoch (PSNR/SSIM on the full-size validation
images at one fixed degradation), writes ``log.csv`` and TensorBoard events,
and keeps ``last.pt`` (everything needed to resume) and ``best.pt`` (the
generator with the best validation PSNR) in the run directory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from dicom_node.model_meta import file_sha256
from dicom_node.tiling import crop as crop_padding
from dicom_node.tiling import pad_to_multiple
from training.data import CropDataset, Example, load_images, make_examples, record_paths
from training.degrade import Degradation, DegradationRange
from training.metrics import psnr, ssim
from training.networks import (
    SIZE_MULTIPLE,
    GeneratorConfig,
    PatchDiscriminator,
    ResidualEnhancer,
    apply_spectral_norm,
    count_parameters,
    init_generator,
    init_weights,
)
from training.pairs import Split
from training.provenance import code_fingerprint, git_commit
from training.quality import hf_power_ratio

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
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


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``).

    Attributes
    ----------
    epochs : int
        Epochs at the initial learning rate.
    epochs_decay : int
        Further epochs over which the learning rate decays linearly to 0.
    batch_size : int
        Crops per step and device.
    crop : int
        Crop side (a multiple of 256).
    crops_per_image : int
        Crops drawn from each training image per epoch.
    lr, beta1 : float
        Adam learning rate and first-moment decay (both networks).
    lr_d : float or None
        Learning rate of the discriminator when it differs from `lr`. A
        discriminator that learns as fast as a generator trained at a high
        rate can win outright, after which its gradient swamps the L1 term.
    lambda_l1 : float
        Weight of the L1 term against the GAN term.
    l1_only : bool
        Train the generator on L1 alone, without a discriminator.
    generator : GeneratorConfig
        Generator hyper-parameters.
    ndf : int
        Discriminator width.
    degradations : DegradationRange
        Distribution of synthetic degradations for training.
    val_degradation : Degradation
        The fixed degradation of the validation images.
    seed : int
        Seed of initialisation, crops and degradations.
    workers : int
        DataLoader worker processes per rank.
    val_max_images : int
        Validate on at most this many images, spread evenly over the
        validation split (0: all).
    crop_sizes : tuple[int, ...]
        Crop sides used in turn, one per epoch (empty: `crop` only). An epoch
        of larger crops draws fewer of them, so that every epoch covers about
        the same number of pixels as one of `crop`-sized crops.
    gan_loss : str
        ``"vanilla"`` (BCE, as pix2pix) or ``"lsgan"`` (least squares, Mao
        et al. 2017), which gives the generator a gradient even when the
        discriminator is sure.
    spectral_norm : bool
        Spectral normalisation on the discriminator's convolutions (Miyato et
        al. 2018), which bounds how fast it can win.
    select : str
        How ``best.pt`` is chosen: ``"psnr"`` (highest validation PSNR) or
        ``"texture"`` (among epochs within `max_psnr_loss` dB of the starting
        generator's validation PSNR, the one whose power above half Nyquist
        is closest to the references', see
        :func:`training.quality.hf_power_ratio`).
    max_psnr_loss : float
        PSNR (dB) the ``"texture"`` selection may give up.
    """

    epochs: int = 100
    epochs_decay: int = 100
    batch_size: int = 1
    crop: int = 256
    crops_per_image: int = 1
    lr: float = 2e-4
    lr_d: float | None = None
    beta1: float = 0.5
    lambda_l1: float = 100.0
    l1_only: bool = False
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ndf: int = 64
    degradations: DegradationRange = field(default_factory=DegradationRange)
    val_degradation: Degradation = field(default_factory=Degradation)
    seed: int = 0
    workers: int = 0
    val_max_images: int = 0
    crop_sizes: tuple[int, ...] = ()
    gan_loss: str = "vanilla"
    spectral_norm: bool = False
    select: str = "psnr"
    max_psnr_loss: float = 0.3

    def __post_init__(self) -> None:
        for name in ("epochs_decay", "workers", "val_max_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative; got {getattr(self, name)}.")
        for name in ("epochs", "batch_size", "crops_per_image", "ndf"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}.")
        for size in (self.crop, *self.crop_sizes):
            if size < 256 or size % 256:
                raise ValueError(f"crop must be a positive multiple of 256; got {size}.")
        if self.gan_loss not in ("vanilla", "lsgan"):
            raise ValueError(f"gan_loss must be 'vanilla' or 'lsgan'; got {self.gan_loss!r}.")
        if self.select not in ("psnr", "texture"):
            raise ValueError(f"select must be 'psnr' or 'texture'; got {self.select!r}.")
        if not 0 <= self.max_psnr_loss <= 10:
            raise ValueError(f"max_psnr_loss must be in [0, 10] dB; got {self.max_psnr_loss}.")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1); got {self.lr}.")
        if self.lr_d is not None and not 0 < self.lr_d < 1:
            raise ValueError(f"lr_d must be in (0, 1); got {self.lr_d}.")
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 must be in [0, 1); got {self.beta1}.")
        if self.lambda_l1 <= 0:
            raise ValueError(f"lambda_l1 must be positive; got {self.lambda_l1}.")

    @property
    def total_epochs(self) -> int:
        """Constant plus decaying epochs."""
        return self.epochs + self.epochs_decay

    def crop_for(self, epoch: int) -> int:
        """Crop side of `epoch` (0-based)."""
        sizes = self.crop_sizes or (self.crop,)
        return sizes[epoch % len(sizes)]

    def items_for(self, epoch: int, train_images: int) -> int:
        """Crops drawn in `epoch`: as many pixels as ``crops_per_image`` crops of `crop`."""
        scale = (self.crop / self.crop_for(epoch)) ** 2
        return max(1, round(train_images * self.crops_per_image * scale))

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        out = asdict(self)
        out["generator"] = self.generator.as_dict()
        out["degradations"] = self.degradations.as_dict()
        out["val_degradation"] = self.val_degradation.as_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`as_dict` output."""
        values = dict(data)
        values["generator"] = GeneratorConfig.from_dict(values["generator"])
        values["degradations"] = DegradationRange.from_dict(values["degradations"])
        values["val_degradation"] = Degradation(**values["val_degradation"])
        values["crop_sizes"] = tuple(values.get("crop_sizes", ()))
        return cls(**values)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank, world, local)


def select_device(info: Distributed) -> torch.device:
    """CUDA device of this rank when a GPU is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


class _RankSampler(Sampler[int]):
    """Every ``world_size``-th index of each epoch, offset by the rank, in a shuffled order."""

    def __init__(self, length: int, info: Distributed, seed: int) -> None:
        self.length = length
        self.info = info
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.length)
        return iter(int(i) for i in order[self.info.rank :: self.info.world_size])

    def __len__(self) -> int:
        return self.share(self.length)

    def share(self, length: int) -> int:
        """How many of `length` items of an epoch this rank draws."""
        return len(range(self.info.rank, length, self.info.world_size))


def lr_factor(epoch: int, epochs: int, epochs_decay: int) -> float:
    """Learning-rate multiplier of `epoch` (0-based): 1, then a linear decay towards 0."""
    if epoch < epochs:
        return 1.0
    return max(0.0, 1.0 - (epoch - epochs + 1) / (epochs_decay + 1))


def train_step(
    generator: nn.Module,
    discriminator: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
    low: torch.Tensor,
    high: torch.Tensor,
    lambda_l1: float,
    autocast: AbstractContextManager[Any] | None = None,
    gan_loss: str = "vanilla",
) -> dict[str, float]:
    """One optimisation step of pix2pix (or of L1 alone without a discriminator).

    The discriminator is updated first on the real pair and the detached
    fake (in one forward pass, which DistributedDataParallel requires), with
    the GAN loss halved as in pix2pix; then the generator on
    ``GAN + lambda_l1 · L1``. `gan_loss` is ``"vanilla"`` (BCE on logits)
    or ``"lsgan"`` (squared error to 1 and 0).

    Returns
    -------
    dict[str, float]
        ``loss_l1``, ``loss_gan`` and ``loss_d`` of this step.
    """
    context = autocast or nullcontext()
    bce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
        nn.functional.mse_loss
        if gan_loss == "lsgan"
        else nn.functional.binary_cross_entropy_with_logits
    )
    with context:
        fake = generator(low)
    loss_d = torch.zeros((), device=low.device)
    if discriminator is not None and opt_d is not None:
        with context:
            logits = discriminator(torch.cat([low, low]), torch.cat([high, fake.detach()])).float()
        real_logits, fake_logits = logits.chunk(2)
        loss_d = 0.5 * (
            bce(real_logits, torch.ones_like(real_logits))
            + bce(fake_logits, torch.zeros_like(fake_logits))
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
    loss_l1 = nn.functional.l1_loss(fake.float(), high.float())
    loss_gan = torch.zeros((), device=low.device)
    if discriminator is not None:
        with context:
            fake_logits = discriminator(low, fake).float()
        loss_gan = bce(fake_logits, torch.ones_like(fake_logits))
    opt_g.zero_grad(set_to_none=True)
    (loss_gan + lambda_l1 * loss_l1).backward()
    opt_g.step()
    return {
        "loss_l1": float(loss_l1.detach()),
        "loss_gan": float(loss_gan.detach()),
        "loss_d": float(loss_d.detach()),
    }


@torch.no_grad()
def enhance(generator: nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Run the generator on a full-size [0, 1] image, padded exactly as the node pads it.

    The padding is :func:`dicom_node.tiling.pad_to_multiple` (reflection,
    split evenly between both sides), so validation sees what the node does.
    """
    padded, pad = pad_to_multiple(np.asarray(image, dtype=np.float32), SIZE_MULTIPLE)
    tensor = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device)
    was_training = generator.training
    generator.eval()
    out = generator(tensor)
    generator.train(was_training)
    return np.ascontiguousarray(crop_padding(out[0, 0].float().cpu().numpy(), pad))


def validate(
    generator: nn.Module, examples: list[Example], device: torch.device
) -> dict[str, float]:
    """Mean PSNR, SSIM and power ratio above half Nyquist of the outputs against the references.

    ``hf_ratio`` is the geometric mean over images of
    :func:`training.quality.hf_power_ratio` (1: the output keeps the
    reference's fine texture; below 1: smoother).
    """
    if not examples:
        return {"psnr": float("nan"), "ssim": float("nan"), "hf_ratio": float("nan")}
    scores = [
        (psnr(e.reference, out), ssim(e.reference, out), hf_power_ratio(out, e.reference))
        for e in examples
        for out in [enhance(generator, e.degraded, device)]
    ]
    return {
        "psnr": float(np.mean([s[0] for s in scores])),
        "ssim": float(np.mean([s[1] for s in scores])),
        "hf_ratio": float(np.exp(np.mean([np.log(max(s[2], 1e-12)) for s in scores]))),
    }


def spread(items: list[Any], count: int) -> list[Any]:
    """At most `count` items, evenly spread over `items` (all of them when count is 0)."""
    if count <= 0 or count >= len(items):
        return list(items)
    positions = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[int(i)] for i in positions]


def selection_score(metrics: dict[str, float], select: str, floor: float) -> float:
    """How good an epoch is for `select`; higher is better, ``-inf`` when not eligible.

    ``"psnr"``: the validation PSNR. ``"texture"``: minus the distance of the
    log high-frequency power ratio from 0, for epochs whose PSNR is at
    least `floor`.
    """
    value = metrics.get("psnr", float("nan"))
    if math.isnan(value):
        return -math.inf
    if select == "psnr":
        return value
    ratio = metrics.get("hf_ratio", float("nan"))
    if value < floor or math.isnan(ratio) or ratio <= 0:
        return -math.inf
    return -abs(math.log(ratio))


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def load_generator(
    path: Path, device: torch.device | None = None
) -> tuple[ResidualEnhancer, dict[str, Any]]:
    """Load the generator of a checkpoint written by :func:`train`.

    Returns
    -------
    tuple[ResidualEnhancer, dict]
        The generator in eval mode and the checkpoint's other entries
        (config, metrics, epoch, provenance).

    Raises
    ------
    ValueError
        If the file is not a checkpoint of this package.
    """
    try:
        payload = torch.load(path, map_location=device or "cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"The checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is not a dicom-node-train checkpoint (version {CHECKPOINT_VERSION})."
        )
    config = GeneratorConfig.from_dict(payload["generator_config"])
    generator = ResidualEnhancer(config)
    generator.load_state_dict(payload["generator"])
    generator.eval()
    if device is not None:
        generator.to(device)
    meta = {k: v for k, v in payload.items() if k not in ("generator", "discriminator")}
    return generator, meta


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    last_losses: dict[str, float]
    history: list[dict[str, float]]
    images_per_second: float


def train(
    config: TrainConfig,
    split: Split,
    run_dir: Path,
    resume: Path | None = None,
    start_from: Path | None = None,
    data_summary: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a generator and keep its best checkpoint.

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
    ValueError
        If the training split is empty or the checkpoint does not match the
        configuration.
    dicom_node.pixels.PixelDataError
        If an image cannot be read.
    """
    info = setup_distributed()
    device = select_device(info)
    cuda = device.type == "cuda"
    torch.manual_seed(config.seed + info.rank)
    run_dir.mkdir(parents=True, exist_ok=True)

    train_records, val_records = split.subset("train"), split.subset("val")
    val_records = spread(val_records, config.val_max_images)
    images = load_images(record_paths(train_records + val_records))
    dataset = CropDataset(
        train_records,
        images,
        config.crop_for(0),
        config.degradations,
        length=config.items_for(0, len(train_records)),
        seed=config.seed,
    )
    sampler = _RankSampler(len(dataset), info, config.seed)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=len(sampler) >= config.batch_size,
        pin_memory=cuda,
        persistent_workers=config.workers > 0,
    )
    val_examples = (
        make_examples(val_records, images, config.val_degradation, seed=config.seed + 1)
        if info.is_main
        else []
    )

    enhancer = ResidualEnhancer(config.generator)
    init_generator(enhancer)
    start_info: dict[str, str] | None = None
    if start_from is not None and resume is None:
        pretrained, pretrained_meta = load_generator(start_from)
        if pretrained.config != config.generator:
            raise ValueError(
                f"The generator of {start_from} is {pretrained.config.as_dict()}, which differs "
                f"from the requested {config.generator.as_dict()}."
            )
        enhancer.load_state_dict(pretrained.state_dict())
        start_info = {
            "checkpoint": str(start_from),
            "sha256": file_sha256(start_from),
            "epoch": str(pretrained_meta.get("epoch", "")),
            "l1_only": str(pretrained_meta.get("train_config", {}).get("l1_only", "")),
        }
        logger.info("Generator initialised from %s.", start_from)
    generator: nn.Module = enhancer
    discriminator: nn.Module | None = None
    if not config.l1_only:
        discriminator = PatchDiscriminator(config.ndf)
        init_weights(discriminator)
        if config.spectral_norm:
            apply_spectral_norm(discriminator)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    generator.to(device)
    if discriminator is not None:
        discriminator.to(device)
    if cuda:
        generator.to(memory_format=memory_format)  # type: ignore[call-overload]
        if discriminator is not None:
            discriminator.to(memory_format=memory_format)  # type: ignore[call-overload]
    betas = (config.beta1, 0.999)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = (
        torch.optim.Adam(discriminator.parameters(), lr=config.lr_d or config.lr, betas=betas)
        if discriminator is not None
        else None
    )

    start_epoch, best, best_epoch, history = 0, -math.inf, -1, []
    # The PSNR the texture selection may not fall below: the starting generator's.
    floor = -math.inf
    best_metrics: dict[str, float] = {}
    if resume is not None:
        state = torch.load(resume, map_location=device, weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{resume} is not a dicom-node-train checkpoint.")
        if state["generator_config"] != config.generator.as_dict():
            raise ValueError(
                f"The checkpoint {resume} has generator {state['generator_config']}, which differs "
                f"from the requested {config.generator.as_dict()}."
            )
        if (state.get("discriminator") is None) != (discriminator is None):
            raise ValueError(
                f"The checkpoint {resume} was trained with "
                f"l1_only={state['discriminator'] is None}."
            )
        generator.load_state_dict(state["generator"])
        opt_g.load_state_dict(state["opt_g"])
        if discriminator is not None and opt_d is not None:
            discriminator.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["opt_d"])
        start_epoch = int(state["epoch"]) + 1
        best = float(state["best_psnr"])
        best_epoch = int(state["best_epoch"])
        best_metrics = dict(state.get("best_metrics", {}))
        floor = float(state.get("psnr_floor", -math.inf))
        history = list(state.get("history", []))
        start_info = state.get("start_from")
        logger.info("Resuming %s at epoch %d.", resume, start_epoch)

    if info.world_size > 1:
        ids = [info.local_rank] if cuda else None
        generator = DistributedDataParallel(generator, device_ids=ids)
        if discriminator is not None:
            discriminator = DistributedDataParallel(discriminator, device_ids=ids)

    provenance = {
        "training_commit": git_commit(),
        "start_from": start_info,
        "training_code_sha256": code_fingerprint(),
        "torch": torch.__version__,
        "device": str(device) if not cuda else torch.cuda.get_device_name(device),
        "world_size": info.world_size,
    }
    if info.is_main:
        split.save(run_dir / "split.json")
        (run_dir / "config.json").write_text(
            json.dumps(
                {"train": config.as_dict(), "data": data_summary or {}, **provenance}, indent=1
            )
            + "\n",
            encoding="utf-8",
        )
        logger.info(
            "Generator %s: %d parameters; discriminator: %s; %d train crops/epoch, %d val images; "
            "device %s × %d.",
            config.generator.as_dict(),
            count_parameters(_unwrap(generator)),
            "none (L1 only)" if discriminator is None else count_parameters(_unwrap(discriminator)),
            len(dataset),
            len(val_examples),
            provenance["device"],
            info.world_size,
        )

    if info.is_main and config.select == "texture" and resume is None:
        start_metrics = validate(_unwrap(generator), val_examples, device)
        floor = start_metrics["psnr"] - config.max_psnr_loss
        logger.info(
            "Starting generator: val PSNR %.3f dB, HF ratio %.3f; texture selection keeps epochs "
            "at or above %.3f dB.",
            start_metrics["psnr"],
            start_metrics["hf_ratio"],
            floor,
        )
    writer = _tensorboard(run_dir) if info.is_main else None

    def steps(epoch: int) -> int:
        drawn = sampler.share(config.items_for(epoch, len(train_records)))
        full, rest = divmod(drawn, config.batch_size)
        return full + (1 if rest and not loader.drop_last else 0)

    total_steps = sum(steps(e) for e in range(start_epoch, config.total_epochs))
    bar = _progress(total_steps, enabled=progress and info.is_main)
    autocast: AbstractContextManager[Any] = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    )
    step = int(history[-1]["step"]) if history else 0
    last: dict[str, float] = {}
    rate = 0.0
    for epoch in range(start_epoch, config.total_epochs):
        factor = lr_factor(epoch, config.epochs, config.epochs_decay)
        for optimizer, base_lr in ((opt_g, config.lr), (opt_d, config.lr_d or config.lr)):
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * factor
        epoch_crop = config.crop_for(epoch)
        dataset.set_epoch(epoch, epoch_crop, config.items_for(epoch, len(train_records)))
        sampler.length = len(dataset)
        sampler.set_epoch(epoch)
        generator.train()
        sums = {"loss_l1": 0.0, "loss_gan": 0.0, "loss_d": 0.0}
        count, seen, started = 0, 0, time.perf_counter()
        for low, high in loader:
            low = low.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            high = high.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            values = train_step(
                generator,
                discriminator,
                opt_g,
                opt_d,
                low,
                high,
                config.lambda_l1,
                autocast,
                config.gan_loss,
            )
            for key, value in values.items():
                sums[key] += value
            count += 1
            seen += int(low.shape[0]) * info.world_size
            step += 1
            if writer is not None and step % 10 == 0:
                for key, value in values.items():
                    writer.add_scalar(f"train/{key}", value, step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch + 1,
                    l1=f"{values['loss_l1']:.4f}",
                    gan=f"{values['loss_gan']:.3f}",
                    d=f"{values['loss_d']:.3f}",
                    refresh=False,
                )
        elapsed = time.perf_counter() - started
        rate = seen / elapsed if elapsed > 0 else 0.0
        last = {k: v / max(count, 1) for k, v in sums.items()}
        if info.is_main:
            metrics = validate(_unwrap(generator), val_examples, device)
            row = {
                "epoch": epoch + 1,
                "step": step,
                "lr": config.lr * factor,
                **last,
                "val_psnr": metrics["psnr"],
                "val_ssim": metrics["ssim"],
                "val_hf_ratio": metrics["hf_ratio"],
                "crop": epoch_crop,
                "epoch_seconds": elapsed,
                "images_per_second": rate,
            }
            history.append(row)
            _append_csv(run_dir / "log.csv", row)
            if writer is not None:
                writer.add_scalar("val/psnr", metrics["psnr"], step)
                writer.add_scalar("val/ssim", metrics["ssim"], step)
                writer.add_scalar("train/lr", config.lr * factor, step)
                writer.add_scalar("train/images_per_second", rate, step)
                writer.flush()
            score = selection_score(metrics, config.select, floor)
            if score > best or best_epoch < 0:
                best, best_epoch = score, epoch + 1
                best_metrics = {
                    "val_psnr": metrics["psnr"],
                    "val_ssim": metrics["ssim"],
                    "val_hf_ratio": metrics["hf_ratio"],
                }
            payload = {
                "version": CHECKPOINT_VERSION,
                "epoch": epoch,
                "generator": _unwrap(generator).state_dict(),
                "generator_config": config.generator.as_dict(),
                "discriminator": (
                    _unwrap(discriminator).state_dict() if discriminator is not None else None
                ),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict() if opt_d is not None else None,
                "best_psnr": best,
                "psnr_floor": floor,
                "best_epoch": best_epoch,
                "best_metrics": best_metrics,
                "history": history,
                "train_config": config.as_dict(),
                "data": data_summary or {},
                **provenance,
            }
            _save(payload, run_dir / "last.pt")
            if best_epoch == epoch + 1:
                best_payload = {
                    k: v for k, v in payload.items() if k not in ("discriminator", "opt_g", "opt_d")
                }
                best_payload["metrics"] = best_metrics
                _save(best_payload, run_dir / "best.pt")
            message = (
                f"epoch {epoch + 1}/{config.total_epochs}: l1 {last['loss_l1']:.5f} "
                f"gan {last['loss_gan']:.3f} d {last['loss_d']:.3f} | val PSNR "
                f"{metrics['psnr']:.3f} dB SSIM {metrics['ssim']:.4f} HF {metrics['hf_ratio']:.3f}"
                f" | crop {epoch_crop} {rate:.2f} img/s"
                f"{' *best*' if best_epoch == epoch + 1 else ''}"
            )
            if bar is not None:
                bar.write(message)
            else:
                logger.info(message)
        if info.world_size > 1:
            dist.barrier()
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return TrainResult(run_dir, best_epoch, best_metrics, last, history, rate)


def _save(payload: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is part of the train extra, but stay usable without it
        logger.warning("TensorBoard is not installed; logging to log.csv only.")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total <= 0:
        return None
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 30.0,
        desc="train",
    )
