"""The hyper-parameters of a training run (:class:`TrainConfig`, saved as ``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from training.degrade import Degradation, DegradationRange
from training.networks import GeneratorConfig


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
