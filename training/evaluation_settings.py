"""What an evaluation runs: degradation settings, row names and :class:`EvaluationSettings`.

A *setting* is ``(a, b, sigma, correlation)`` (:func:`setting_degradation`);
each evaluated setting is one row group of the tables, and its kind
(:class:`GroupKind`) decides what the baselines and targets do with it. The
rows of a group are named by the method constants (:data:`INPUT`,
:data:`NLM`, ...) and :func:`strength_label`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.strength import check_strength
from training.baselines import BM3DProfileValues
from training.degrade import Degradation

logger = logging.getLogger(__name__)

Setting = tuple[float, float, float, float]
"""A degradation setting: (noise_a, noise_b, blur_sigma, noise_correlation)."""

ACCEPTANCE: Setting = (0.002, 2e-5, 0.8, 0.0)
"""White noise at the acceptance setting."""
CORRELATED: Setting = (0.002, 2e-5, 0.8, 1.0)
"""The acceptance setting with the noise correlated by a 1-px Gaussian."""
BLUR_ONLY: Setting = (0.0, 0.0, 1.2, 0.0)
IDENTITY: Setting = (0.0, 0.0, 0.0, 0.0)
MILDER: Setting = (0.001, 1e-5, 0.5, 0.0)
HARSHER: Setting = (0.004, 5e-5, 1.2, 0.0)
DEFAULT_SETTINGS: tuple[Setting, ...] = (ACCEPTANCE, CORRELATED, BLUR_ONLY, IDENTITY)
"""Default row groups; :data:`MILDER` and :data:`HARSHER` are added with ``--setting``."""
DEFAULT_BM3D_SETTINGS: tuple[Setting, ...] = (ACCEPTANCE, CORRELATED)
"""Where BM3D runs by default (it costs about 25 s per 800×800 crop on one core)."""

DEFAULT_CROP = 768
DEFAULT_CONTEXT = 32
DEFAULT_DETAIL_IMAGES = 8
INPUT = "degraded input"
NLM = "NLM (tuned on val)"
BM3D = "BM3D (tuned on val)"
L1 = "L1-only generator"
PIX2PIX = "pix2pix generator"
NODE = "pix2pix, node (noise-adaptive)"
"""The generator as the node applies it to a calibrated model: the strength scaled by the
image's noise (:func:`dicom_node.noise.adapt_strength`, requested strength 1)."""
REAL_PAIRS = "real pairs"


class GroupKind(enum.StrEnum):
    """What a row group degrades."""

    WHITE = "white noise"
    CORRELATED = "correlated noise"
    BLUR = "blur only"
    IDENTITY = "identity"
    REAL = "real pairs"


def normalise_setting(values: Sequence[float]) -> Setting:
    """``(a, b, sigma)`` or ``(a, b, sigma, correlation)`` as a 4-tuple of floats.

    Raises
    ------
    ValueError
        If there are not 3 or 4 values, or they make no valid :class:`Degradation`.
    """
    numbers = tuple(float(v) for v in values)
    if len(numbers) == 3:
        numbers = (*numbers, 0.0)
    if len(numbers) != 4:
        raise ValueError(f"A setting is A,B,SIGMA[,CORRELATION]; got {values!r}.")
    setting: Setting = (numbers[0], numbers[1], numbers[2], numbers[3])
    setting_degradation(setting)
    return setting


def setting_degradation(setting: Sequence[float]) -> Degradation:
    """The :class:`Degradation` of a setting; all zeros give :meth:`Degradation.identity`.

    Raises
    ------
    ValueError, TypeError
        As :class:`Degradation`.
    """
    a, b, sigma, *rest = (float(v) for v in setting)
    correlation = rest[0] if rest else 0.0
    if a == b == sigma == 0.0:
        return Degradation.identity()
    return Degradation(noise_a=a, noise_b=b, blur_sigma=sigma, noise_correlation=correlation)


def setting_kind(setting: Setting) -> GroupKind:
    """White noise, correlated noise, blur only or identity."""
    degradation = setting_degradation(setting)
    if degradation.is_identity:
        return GroupKind.IDENTITY
    if degradation.noise_a == 0.0 and degradation.noise_b == 0.0:
        return GroupKind.BLUR
    if degradation.noise_correlation > 0.0:
        return GroupKind.CORRELATED
    return GroupKind.WHITE


def strength_label(strength: float) -> str:
    """Row name of the pix2pix generator blended at `strength` (``pix2pix generator @0.8``)."""
    return f"{PIX2PIX} @{strength:g}"


@dataclass(frozen=True)
class EvaluationSettings:
    """What to evaluate.

    Attributes
    ----------
    settings : tuple of settings
        ``(a, b, sigma[, correlation])`` per row group; all zeros is the
        identity (clean input).
    bm3d : bool
        Include the BM3D baseline (skipped with a warning if not installed).
    bm3d_settings : tuple of settings or None
        Run BM3D only at these settings. None: at those of
        :data:`DEFAULT_BM3D_SETTINGS` that are evaluated, or, if none is, at
        every setting with noise.
    bm3d_profile : BM3DProfileValues
        ``np`` (the package's normal profile) or ``lc`` (low complexity:
        about 3 times faster, about 0.1 dB lower PSNR).
    max_images : int
        Evaluate at most this many test images (0: all).
    tune_images : int
        Validation images used to tune the baselines.
    grid_cases : int
        Test cases drawn in each PNG grid (0: no grid).
    seed : int
        Seed of the degradations and of the insert positions.
    threads : int or None
        CPU threads for PyTorch (checkpoints run in this process).
    crop : int
        Side of the central crop every method is scored on (0: whole images; else >= 64).
    context : int
        Margin around the crop that NLM and BM3D see and that is cut away.
    strengths : tuple of float
        Extra rows: the pix2pix generator blended with its input at these strengths.
    detail_images : int
        Test images that get the detail-retention inserts (0: none).
    detail_setting : setting or None
        Where detail retention is measured (one of `settings`); None: the
        acceptance setting if evaluated, else the first setting with noise.
    workers : int
        Processes for NLM and BM3D (1: in this process).

    Raises
    ------
    ValueError
        If a value is out of range or a BM3D or detail setting is not one of
        the settings.
    """

    settings: tuple[Sequence[float], ...] = DEFAULT_SETTINGS
    bm3d: bool = True
    bm3d_settings: tuple[Sequence[float], ...] | None = None
    bm3d_profile: BM3DProfileValues = BM3DProfileValues.NORMAL
    max_images: int = 0
    tune_images: int = 6
    grid_cases: int = 3
    seed: int = 1234
    threads: int | None = None
    crop: int = DEFAULT_CROP
    context: int = DEFAULT_CONTEXT
    strengths: tuple[float, ...] = ()
    detail_images: int = DEFAULT_DETAIL_IMAGES
    detail_setting: Sequence[float] | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("At least one degradation setting is needed.")
        settings = tuple(normalise_setting(s) for s in self.settings)
        if len(set(settings)) != len(settings):
            raise ValueError(f"A setting is given twice: {settings}.")
        object.__setattr__(self, "settings", settings)
        if self.bm3d_settings is not None:
            chosen = tuple(normalise_setting(s) for s in self.bm3d_settings)
            for setting in chosen:
                if setting not in settings:
                    raise ValueError(f"The BM3D setting {setting} is not one of the settings.")
            object.__setattr__(self, "bm3d_settings", chosen)
        if self.detail_setting is not None:
            chosen_detail = normalise_setting(self.detail_setting)
            if chosen_detail not in settings:
                raise ValueError(f"The detail setting {chosen_detail} is not one of the settings.")
            object.__setattr__(self, "detail_setting", chosen_detail)
        object.__setattr__(self, "bm3d_profile", BM3DProfileValues(self.bm3d_profile))
        object.__setattr__(
            self, "strengths", tuple(check_strength(s, "strength") for s in self.strengths)
        )
        if self.max_images < 0 or self.grid_cases < 0 or self.tune_images < 1:
            raise ValueError(
                "max_images and grid_cases must be >= 0 and tune_images >= 1; got "
                f"{self.max_images}, {self.grid_cases}, {self.tune_images}."
            )
        if self.crop != 0 and self.crop < 64:
            raise ValueError(f"crop must be 0 (whole images) or at least 64; got {self.crop}.")
        if self.context < 0 or self.detail_images < 0 or self.workers < 1:
            raise ValueError(
                "context and detail_images must be >= 0 and workers >= 1; got "
                f"{self.context}, {self.detail_images}, {self.workers}."
            )

    def bm3d_at(self) -> tuple[Setting, ...]:
        """The settings where BM3D runs (before checking that it is installed)."""
        if not self.bm3d:
            return ()
        if self.bm3d_settings is not None:
            return tuple(normalise_setting(s) for s in self.bm3d_settings)
        settings = [normalise_setting(s) for s in self.settings]
        chosen = tuple(s for s in settings if s in DEFAULT_BM3D_SETTINGS)
        noisy = tuple(
            s for s in settings if setting_kind(s) in (GroupKind.WHITE, GroupKind.CORRELATED)
        )
        return chosen or noisy

    def detail_at(self) -> Setting | None:
        """The setting where detail retention is measured (None: not measured)."""
        if self.detail_images == 0:
            return None
        if self.detail_setting is not None:
            return normalise_setting(self.detail_setting)
        settings = [normalise_setting(s) for s in self.settings]
        if ACCEPTANCE in settings:
            return ACCEPTANCE
        noisy = [s for s in settings if setting_kind(s) in (GroupKind.WHITE, GroupKind.CORRELATED)]
        return noisy[0] if noisy else None
