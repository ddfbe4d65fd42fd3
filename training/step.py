"""One optimisation step of pix2pix (or of L1 alone), and the learning-rate schedule."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn


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
