"""The pix2pix networks: a unet_256 generator and a conditional 70×70 PatchGAN.

The generator follows the unet_256 topology of pix2pix (Isola et al., 2017):
eight stride-2 4×4 convolutions down to 1/256 of the input size and eight
stride-2 4×4 transposed convolutions back up, each decoder level
concatenated with the encoder level of the same size. Two things differ from
the original, so that training and inference compute the same function and
the exported model is deterministic and tile-invariant:

* no dropout, and normalisation is either absent (``norm="none"``, the
  default and what the shipped model uses) or per-image InstanceNorm
  (``norm="instance"``); InstanceNorm statistics depend on the whole input,
  so a tiled image would not match the whole image;
* :class:`ResidualEnhancer` wraps the U-Net so that the network predicts a
  correction added to its input, with the [0, 1] → [-1, 1] scaling and the
  final clamp inside the module (and so inside the exported graph).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

NORMS = ("none", "instance")
"""Normalisation layers the networks accept."""

UNET_256_DEPTH = 8
"""Number of stride-2 levels of unet_256."""

SIZE_MULTIPLE = 2**UNET_256_DEPTH
"""Input height and width must be multiples of this (256)."""


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}.")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name} must be at least 1; got {value}.")


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of the generator, recorded in checkpoints and the ONNX metadata.

    Attributes
    ----------
    ngf : int
        Channels of the outermost encoder level; deeper levels have 2, 4 and
        then 8 times as many.
    norm : str
        ``"none"`` or ``"instance"``.
    residual_scale : float
        The U-Net's tanh output, times this, is added to the input in the
        [-1, 1] scale.
    """

    ngf: int = 16
    norm: str = "none"
    residual_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("ngf", self.ngf)
        _check_norm(self.norm)
        if not 0.0 < self.residual_scale <= 2.0:
            raise ValueError(f"residual_scale must be in (0, 2]; got {self.residual_scale}.")

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary, including the fixed parts of the topology."""
        out = asdict(self)
        out.update(
            {
                "topology": "unet_256",
                "depth": UNET_256_DEPTH,
                "dropout": False,
                "residual": True,
                "output_clamp": [0.0, 1.0],
            }
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Rebuild from :meth:`as_dict` output (extra keys are ignored)."""
        return cls(
            ngf=int(data["ngf"]),
            norm=str(data["norm"]),
            residual_scale=float(data.get("residual_scale", 1.0)),
        )


class UnetGenerator(nn.Module):
    """The unet_256 U-Net on [-1, 1] images, ending in tanh.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1 for radiographs).
    ngf : int
        Channels of the outermost level.
    norm : str
        ``"none"`` or ``"instance"``.

    Notes
    -----
    Height and width must be multiples of :data:`SIZE_MULTIPLE`; pad the
    input first (see :func:`pad_to_multiple`).
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, ngf: int = 16, norm: str = "none"
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("ngf", ngf)
        _check_norm(norm)
        widths = [ngf * min(2**level, 8) for level in range(UNET_256_DEPTH)]
        self.down = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            layers: list[nn.Module] = []
            if level > 0:
                layers.append(nn.LeakyReLU(0.2))
            layers.append(nn.Conv2d(previous, width, kernel_size=4, stride=2, padding=1))
            if 0 < level < UNET_256_DEPTH - 1:
                layers.append(_norm_layer(norm, width))
            self.down.append(nn.Sequential(*layers))
            previous = width
        self.up = nn.ModuleList()
        for level in reversed(range(UNET_256_DEPTH)):
            innermost = level == UNET_256_DEPTH - 1
            source = widths[level] if innermost else 2 * widths[level]
            target = out_channels if level == 0 else widths[level - 1]
            layers = [
                nn.ReLU(),
                nn.ConvTranspose2d(source, target, kernel_size=4, stride=2, padding=1),
            ]
            layers.append(nn.Tanh() if level == 0 else _norm_layer(norm, target))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, C, H, W) image in [-1, 1] to (N, out_channels, H, W) in [-1, 1]."""
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        y = skips.pop()
        for index, block in enumerate(self.up):
            if index > 0:
                y = torch.cat([y, skips.pop()], dim=1)
            y = block(y)
        return y


class ResidualEnhancer(nn.Module):
    """The generator as the node runs it: [0, 1] in, [0, 1] out.

    ``enhanced = clamp(((2x - 1) + s · unet(2x - 1) + 1) / 2, 0, 1)`` with
    ``s`` the residual scale. This is the module that is trained and exported.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UnetGenerator(1, 1, ngf=config.ngf, norm=config.norm)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Enhance a (N, 1, H, W) float image in [0, 1]; H, W multiples of 256."""
        scaled = image * 2.0 - 1.0
        corrected = scaled + self.config.residual_scale * self.unet(scaled)
        return torch.clamp((corrected + 1.0) * 0.5, 0.0, 1.0)


class PatchDiscriminator(nn.Module):
    """The conditional 70×70 PatchGAN discriminator of pix2pix.

    It scores overlapping 70×70 patches of the pair (condition, image), both
    (N, 1, H, W) in [0, 1], and returns raw logits of shape (N, 1, H', W').

    Parameters
    ----------
    ndf : int
        Channels of the first layer (64 in pix2pix).
    norm : str
        ``"instance"`` (default) or ``"none"``; the discriminator is never
        exported, so per-image statistics are harmless here.
    """

    def __init__(self, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        _check_positive("ndf", ndf)
        _check_norm(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(2, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = ndf
        for stride in (2, 2, 1):
            nxt = min(width * 2, ndf * 8)
            layers += [
                nn.Conv2d(width, nxt, kernel_size=4, stride=stride, padding=1),
                _norm_layer(norm, nxt),
                nn.LeakyReLU(0.2),
            ]
            width = nxt
        layers.append(nn.Conv2d(width, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Patch logits for `image` given `condition` (both in [0, 1])."""
        return self.model(torch.cat([condition, image], dim=1) * 2.0 - 1.0)


def init_weights(module: nn.Module, scheme: str = "normal", gain: float = 0.02) -> None:
    """Initialise convolution weights; biases start at zero.

    Parameters
    ----------
    module : torch.nn.Module
        Network to initialise in place.
    scheme : str
        ``"normal"``: N(0, gain²) as in pix2pix, suited to networks with
        normalisation layers. ``"kaiming"``: N(0, 2 / fan_in) (He et al.),
        which keeps activations from vanishing through the sixteen layers of
        a U-Net *without* normalisation; ``fan_in`` of a stride-s transposed
        convolution counts the C_in·k²/s² inputs that reach each output.
    gain : float
        Standard deviation of the ``"normal"`` scheme.

    Raises
    ------
    ValueError
        If `scheme` is unknown.
    """
    if scheme not in ("normal", "kaiming"):
        raise ValueError(f"scheme must be 'normal' or 'kaiming'; got {scheme!r}.")
    for layer in module.modules():
        if not isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            continue
        if scheme == "normal":
            nn.init.normal_(layer.weight, 0.0, gain)
        else:
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            if isinstance(layer, nn.ConvTranspose2d):
                fan_in = layer.in_channels * kernel / (layer.stride[0] * layer.stride[1])
            else:
                fan_in = layer.in_channels * kernel
            nn.init.normal_(layer.weight, 0.0, (2.0 / fan_in) ** 0.5)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def init_generator(generator: ResidualEnhancer) -> None:
    """Initialise a generator for training.

    Without normalisation the layers use the ``"kaiming"`` scheme, with
    InstanceNorm the pix2pix ``"normal"`` one. The last layer is then scaled
    down by 10 so that the initial residual is small and the untrained
    generator is close to the identity.
    """
    init_weights(generator, "kaiming" if generator.config.norm == "none" else "normal")
    outermost = generator.unet.up[-1]
    last = outermost[1] if isinstance(outermost, nn.Sequential) else None
    if isinstance(last, nn.ConvTranspose2d):
        with torch.no_grad():
            last.weight.mul_(0.1)


def pad_to_multiple(
    image: torch.Tensor, multiple: int = SIZE_MULTIPLE
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two dimensions up to multiples of `multiple`.

    Returns
    -------
    tuple[torch.Tensor, tuple[int, int]]
        The padded tensor and the original (height, width), to crop back with
        ``out[..., :height, :width]``.

    Raises
    ------
    ValueError
        If `multiple` is not positive or the image is too small to reflect-pad
        (padding must be smaller than each dimension; such images are padded
        by repeating the reflection).
    """
    if multiple < 1:
        raise ValueError(f"multiple must be positive; got {multiple}.")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if height < 2 or width < 2:
        raise ValueError(f"The image must be at least 2×2 pixels; got {height}×{width}.")
    target_h = -(-height // multiple) * multiple
    target_w = -(-width // multiple) * multiple
    padded = image
    while padded.shape[-2] < target_h or padded.shape[-1] < target_w:
        pad_h = min(target_h - int(padded.shape[-2]), int(padded.shape[-2]) - 1)
        pad_w = min(target_w - int(padded.shape[-1]), int(padded.shape[-1]) - 1)
        padded = nn.functional.pad(padded, (0, pad_w, 0, pad_h), mode="reflect")
    return padded, (height, width)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
