"""The pix2pix networks: a unet_256 generator and a conditional 70×70 PatchGAN.

The generator keeps the unet_256 topology of pix2pix (Isola et al., 2017):
eight stride-2 4×4 convolutions down to 1/256 of the input size, eight
decoder levels back up, each decoder level concatenated with the encoder
level of the same size. What differs from the original:

* **no transposed convolutions.** A stride-2 transposed convolution gives
  the even and the odd output pixels different kernels, which is the source
  of pix2pix's fixed period-2 pattern (checkerboard and row striping, Odena
  et al., "Deconvolution and checkerboard artifacts", 2016). Every decoder
  level here is a 3×3 convolution followed by bilinear ×2 upsampling, whose
  frequency response is zero at the period-2 frequencies, so no layer can
  create energy there. Detail at the full pixel scale comes from a
  full-resolution head: the upsampled features are concatenated with the
  input image and two 3×3 convolutions produce the correction;
* convolutions pad by reflection (replication where a feature map is a
  single pixel), so image borders and lines on them are not darkened or
  ringed by zero padding;
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
    head : int
        Channels of the full-resolution head.
    """

    ngf: int = 16
    norm: str = "none"
    residual_scale: float = 1.0
    head: int = 8

    def __post_init__(self) -> None:
        _check_positive("ngf", self.ngf)
        _check_positive("head", self.head)
        _check_norm(self.norm)
        if not 0.0 < self.residual_scale <= 2.0:
            raise ValueError(f"residual_scale must be in (0, 2]; got {self.residual_scale}.")

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary, including the fixed parts of the topology."""
        out = asdict(self)
        out.update(
            {
                "topology": "unet_256",
                "decoder": "conv3x3 + bilinear x2 (no transposed convolution)",
                "padding": "reflect",
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
            head=int(data.get("head", 8)),
        )


class PaddedConv(nn.Module):
    """A stride-1 or stride-2 convolution that pads by reflection (or replication).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride : int
        As for :class:`torch.nn.Conv2d`; padding is ``kernel_size // 2`` for odd
        kernels and 1 for the 4×4 stride-2 encoder kernels.
    mode : str
        ``"reflect"`` or ``"replicate"`` (needed where a map can be 1 pixel wide).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        mode: str = "reflect",
    ) -> None:
        super().__init__()
        if mode not in ("reflect", "replicate"):
            raise ValueError(f"mode must be 'reflect' or 'replicate'; got {mode!r}.")
        self.pad = kernel_size // 2 if kernel_size % 2 else 1
        self.mode = mode
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, then convolve."""
        pads = (self.pad, self.pad, self.pad, self.pad)
        return self.conv(nn.functional.pad(x, pads, mode=self.mode))


class UnetGenerator(nn.Module):
    """The unet_256 U-Net on [-1, 1] images, ending in tanh, without transposed convolutions.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1 for radiographs).
    ngf : int
        Channels of the outermost level.
    norm : str
        ``"none"`` or ``"instance"``.
    head : int
        Channels of the full-resolution head.

    Notes
    -----
    Height and width must be multiples of :data:`SIZE_MULTIPLE`; the node
    pads with :func:`dicom_node.tiling.pad_to_multiple`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = 16,
        norm: str = "none",
        head: int = 8,
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("ngf", ngf)
        _check_positive("head", head)
        _check_norm(norm)
        widths = [ngf * min(2**level, 8) for level in range(UNET_256_DEPTH)]
        self.down = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            layers: list[nn.Module] = []
            if level > 0:
                layers.append(nn.LeakyReLU(0.2))
            layers.append(PaddedConv(previous, width, kernel_size=4, stride=2))
            if 0 < level < UNET_256_DEPTH - 1:
                layers.append(_norm_layer(norm, width))
            self.down.append(nn.Sequential(*layers))
            previous = width
        self.up = nn.ModuleList()
        for level in reversed(range(UNET_256_DEPTH)):
            innermost = level == UNET_256_DEPTH - 1
            source = widths[level] if innermost else 2 * widths[level]
            target = ngf if level == 0 else widths[level - 1]
            layers = [
                nn.ReLU(),
                # The innermost map is 1×1 for a 256×256 input: reflection needs 2 pixels.
                PaddedConv(source, target, 3, mode="replicate" if innermost else "reflect"),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
            if level > 0:
                layers.append(_norm_layer(norm, target))
            self.up.append(nn.Sequential(*layers))
        self.head = nn.Sequential(
            PaddedConv(ngf + in_channels, head, 3),
            nn.LeakyReLU(0.2),
            PaddedConv(head, out_channels, 3),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, C, H, W) image in [-1, 1] to (N, out_channels, H, W) in [-1, 1]."""
        image = x
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        y = skips.pop()
        for index, block in enumerate(self.up):
            if index > 0:
                y = torch.cat([y, skips.pop()], dim=1)
            y = block(y)
        return self.head(torch.cat([y, image], dim=1))


class ResidualEnhancer(nn.Module):
    """The generator as the node runs it: [0, 1] in, [0, 1] out.

    ``enhanced = clamp(((2x - 1) + s · unet(2x - 1) + 1) / 2, 0, 1)`` with
    ``s`` the residual scale. This is the module that is trained and exported;
    in training mode the clamp passes its gradient straight through.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UnetGenerator(1, 1, ngf=config.ngf, norm=config.norm, head=config.head)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Enhance a (N, 1, H, W) float image in [0, 1]; H, W multiples of 256."""
        scaled = image * 2.0 - 1.0
        corrected = scaled + self.config.residual_scale * self.unet(scaled)
        out = (corrected + 1.0) * 0.5
        if self.training:
            # Clamped values with a straight-through gradient: a plain clamp has no
            # gradient outside [0, 1], so one step that pushes every pixel out of range
            # stalls the training at a constant output (seen on CPU at lr 5e-4).
            return out + (out.clamp(0.0, 1.0) - out).detach()
        return torch.clamp(out, 0.0, 1.0)


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
    last = [m for m in generator.unet.head.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(0.1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def apply_spectral_norm(module: nn.Module) -> None:
    """Wrap every convolution of `module` in spectral normalisation (Miyato et al., 2018).

    Used on the discriminator only, to bound how quickly it can overpower the
    generator; the generator is never normalised this way, so its exported
    graph is unchanged.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            apply_spectral_norm(child)
