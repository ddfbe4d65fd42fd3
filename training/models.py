"""The networks of a run and their optimisers: built, initialised, resumed, distributed.

:class:`Networks` holds the generator (a
:class:`~training.networks.ResidualEnhancer`), the discriminator (None when
training on L1 alone) and their Adam optimisers, and moves state in and out
of a :class:`~training.checkpoint.Checkpoint`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dicom_node.model_meta import file_sha256
from training.checkpoint import Checkpoint, load_generator
from training.distributed import Distributed, unwrap
from training.errors import CheckpointError
from training.networks import (
    PatchDiscriminator,
    ResidualEnhancer,
    apply_spectral_norm,
    count_parameters,
    init_generator,
    init_weights,
)
from training.train_config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class Networks:
    """The generator, the discriminator and their optimisers.

    Attributes
    ----------
    generator : torch.nn.Module
        The generator (wrapped for DDP after :meth:`distribute`).
    discriminator : torch.nn.Module or None
        The PatchGAN discriminator; None for an L1-only run.
    opt_g, opt_d : torch.optim.Optimizer
        Their optimisers (`opt_d` None without a discriminator).
    memory_format : torch.memory_format
        channels_last on CUDA, contiguous on the CPU.
    start_from : dict[str, str] or None
        Which checkpoint initialised the generator (provenance).
    """

    generator: nn.Module
    discriminator: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    memory_format: torch.memory_format
    start_from: dict[str, str] | None = None

    @classmethod
    def build(
        cls, config: TrainConfig, device: torch.device, start_from: Path | None = None
    ) -> Networks:
        """Initialise both networks (the generator from `start_from` if given) on `device`.

        Raises
        ------
        CheckpointError
            If `start_from` cannot be read or has another generator configuration.
        """
        enhancer = ResidualEnhancer(config.generator)
        init_generator(enhancer)
        start_info = None
        if start_from is not None:
            start_info = initialise_from(enhancer, start_from, config)
        discriminator: nn.Module | None = None
        if not config.l1_only:
            discriminator = PatchDiscriminator(config.ndf)
            init_weights(discriminator)
            if config.spectral_norm:
                apply_spectral_norm(discriminator)
        cuda = device.type == "cuda"
        memory_format = torch.channels_last if cuda else torch.contiguous_format
        for network in (enhancer, discriminator):
            if network is not None:
                network.to(device)
                if cuda:
                    network.to(memory_format=memory_format)  # type: ignore[call-overload]
        betas = (config.beta1, 0.999)
        opt_g = torch.optim.Adam(enhancer.parameters(), lr=config.lr, betas=betas)
        opt_d = (
            torch.optim.Adam(discriminator.parameters(), lr=config.lr_d or config.lr, betas=betas)
            if discriminator is not None
            else None
        )
        return cls(enhancer, discriminator, opt_g, opt_d, memory_format, start_info)

    def resume(self, state: Checkpoint, source: Path, config: TrainConfig) -> None:
        """Load weights and optimiser state from a ``last.pt``.

        Raises
        ------
        CheckpointError
            If the checkpoint has another generator, another L1-only setting,
            or no resume state.
        """
        state.require_generator(config.generator, source)
        if state.opt_g is None or (state.discriminator is None) != (self.discriminator is None):
            raise CheckpointError(
                f"The checkpoint {source} cannot resume this run: it was trained with "
                f"l1_only={state.discriminator is None}, or is not a last.pt."
            )
        self.generator.load_state_dict(state.generator)
        self.opt_g.load_state_dict(state.opt_g)
        if self.discriminator is not None and self.opt_d is not None:
            self.discriminator.load_state_dict(state.discriminator or {})
            self.opt_d.load_state_dict(state.opt_d or {})
        start = state.provenance.get("start_from")
        self.start_from = start if isinstance(start, dict) else None

    def set_lr(self, config: TrainConfig, factor: float) -> None:
        """Set both learning rates to their base rate times `factor`."""
        for optimizer, base in ((self.opt_g, config.lr), (self.opt_d, config.lr_d or config.lr)):
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] = base * factor

    def distribute(self, info: Distributed, cuda: bool) -> None:
        """Wrap both networks in DistributedDataParallel when there are several ranks."""
        if info.world_size <= 1:
            return
        ids = [info.local_rank] if cuda else None
        self.generator = DistributedDataParallel(self.generator, device_ids=ids)
        if self.discriminator is not None:
            self.discriminator = DistributedDataParallel(self.discriminator, device_ids=ids)

    def describe(self) -> str:
        """Parameter counts, for the log."""
        disc = (
            "none (L1 only)"
            if self.discriminator is None
            else str(count_parameters(unwrap(self.discriminator)))
        )
        return f"{count_parameters(unwrap(self.generator))} parameters; discriminator: {disc}"


def initialise_from(enhancer: ResidualEnhancer, path: Path, config: TrainConfig) -> dict[str, str]:
    """Copy the generator weights of checkpoint `path` into `enhancer`.

    Returns
    -------
    dict[str, str]
        Provenance of the start: checkpoint path, its SHA-256, epoch and L1-only flag.

    Raises
    ------
    CheckpointError
        If the checkpoint cannot be read or has another generator configuration.
    """
    pretrained, checkpoint = load_generator(path)
    checkpoint.require_generator(config.generator, path)
    enhancer.load_state_dict(pretrained.state_dict())
    logger.info("Generator initialised from %s.", path)
    return {
        "checkpoint": str(path),
        "sha256": file_sha256(path),
        "epoch": str(checkpoint.epoch),
        "l1_only": str(checkpoint.train_config.get("l1_only", "")),
    }
