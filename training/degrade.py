"""The degradation model: a clean radiograph → a plausible lower-quality acquisition.

Everything works on intensities in the node's pixel convention (float32 in
[0, 1], MONOCHROME2, see :mod:`dicom_node.pixels`). The steps, in order:

1. exposure (optional): ``x ↦ x ** gamma`` plus a smooth, low-frequency
   offset field (scatter-like), clipped to [0, 1];
2. unsharpness: Gaussian blur with standard deviation ``blur_sigma`` pixels;
3. resolution loss (optional): 2×2 area downsampling and bilinear upsampling
   back to the original size;
4. reduced dose: additive noise whose standard deviation is
   ``sqrt(a · x + b)`` with ``x`` the signal after steps 1-3 (``a`` models the
   signal-dependent quantum noise, ``b`` the electronic noise). The noise
   field is white noise filtered by a Gaussian detector point-spread function
   of standard deviation ``noise_correlation`` pixels (0: white), rescaled to
   unit variance, so that ``a`` and ``b`` keep their meaning per pixel while
   the grain becomes coarser, the way a scintillator correlates it;
5. quantisation back to the source bit depth, then clipping to [0, 1].

For training, :func:`degrade_pair` applies step 1 to the *reference* as well:
exposure and scatter are variations of a good image that the model must
leave alone, not faults it should undo. An *identity* degradation
(:meth:`Degradation.identity`) changes nothing, so a share of the training
pairs teaches the model to leave a good image as it is.

The result depends only on the image, the parameters and the seed. The
README of the package documents the model and its defaults.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from dicom_node.pixels import quantize
from training.random_fields import correlated_noise, smooth_field
from training.structures import MAX_STRUCTURES, insert_faint_structures

logger = logging.getLogger(__name__)

NOISE_A_RANGE = (0.0005, 0.005)
NOISE_B_RANGE = (1e-6, 1e-4)
BLUR_SIGMA_RANGE = (0.0, 1.5)
GAMMA_RANGE = (0.8, 1.2)
NOISE_CORRELATION_RANGE = (0.0, 1.5)

SeedLike = int | np.random.Generator


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int or a numpy Generator; got {type(seed).__name__}.")
    return np.random.default_rng(int(seed))


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}.")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}]; got {value}.")


@dataclass(frozen=True)
class Degradation:
    """One fully specified degradation.

    Attributes
    ----------
    noise_a : float
        Signal-dependent noise variance per unit intensity (0 to 0.05).
    noise_b : float
        Signal-independent (electronic) noise variance (0 to 0.01).
    blur_sigma : float
        Gaussian blur standard deviation in pixels (0 to 5; 0 disables).
    downsample : bool
        Whether to downsample by 2 and back.
    gamma : float
        Exposure gamma (0.5 to 2; 1 disables).
    offset : float
        Peak amplitude of the smooth offset field (0 to 0.2; 0 disables).
    bits : int or None
        Bit depth to quantise the result to (1 to 16); None keeps float values.
    noise_correlation : float
        Standard deviation in pixels of the Gaussian point-spread function
        that correlates the noise (0 to 3; 0 gives white noise).
    structures : int
        Number of faint thin structures (:func:`training.structures.insert_faint_structures`)
        added to the clean image before anything else, so that the input and
        the reference both carry them (0 to 8; 0 adds none).
    """

    noise_a: float = 0.002
    noise_b: float = 2e-5
    blur_sigma: float = 0.8
    downsample: bool = False
    gamma: float = 1.0
    offset: float = 0.0
    bits: int | None = None
    noise_correlation: float = 0.0
    structures: int = 0

    @classmethod
    def identity(cls, bits: int | None = None) -> Degradation:
        """The degradation that changes nothing (apart from quantising to `bits`)."""
        return cls(noise_a=0.0, noise_b=0.0, blur_sigma=0.0, bits=bits)

    @property
    def is_identity(self) -> bool:
        """Whether this degradation leaves the image unchanged."""
        return (
            self.noise_a == 0.0
            and self.noise_b == 0.0
            and self.blur_sigma == 0.0
            and not self.downsample
            and self.gamma == 1.0
            and self.offset == 0.0
        )

    def __post_init__(self) -> None:
        _check_range("noise_a", self.noise_a, 0.0, 0.05)
        _check_range("noise_correlation", self.noise_correlation, 0.0, 3.0)
        _check_range("noise_b", self.noise_b, 0.0, 0.01)
        _check_range("blur_sigma", self.blur_sigma, 0.0, 5.0)
        _check_range("gamma", self.gamma, 0.5, 2.0)
        _check_range("offset", self.offset, 0.0, 0.2)
        if not isinstance(self.downsample, bool):
            raise TypeError(f"downsample must be a bool; got {type(self.downsample).__name__}.")
        if isinstance(self.structures, bool) or not isinstance(self.structures, int):
            raise TypeError(f"structures must be an int; got {self.structures!r}.")
        _check_range("structures", self.structures, 0, 8)
        if self.bits is not None and (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not 1 <= self.bits <= 16
        ):
            raise ValueError(f"bits must be None or an int from 1 to 16; got {self.bits!r}.")

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (JSON-serialisable)."""
        return asdict(self)

    def label(self) -> str:
        """Short human-readable label, e.g. ``a=0.002 b=2e-05 σ=0.8``."""
        if self.is_identity:
            return "identity (clean input)"
        parts = [f"a={self.noise_a:g}", f"b={self.noise_b:g}", f"σ={self.blur_sigma:g}"]
        if self.noise_correlation:
            parts.append(f"corr={self.noise_correlation:g}px")
        if self.downsample:
            parts.append("down2")
        if self.gamma != 1.0:
            parts.append(f"γ={self.gamma:g}")
        if self.offset:
            parts.append(f"offset={self.offset:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class DegradationRange:
    """The distribution training samples a :class:`Degradation` from.

    With probability ``identity_probability`` the draw is the identity (a
    clean input). Otherwise ``noise_a`` and ``noise_b`` are drawn
    log-uniformly, ``blur_sigma`` and ``noise_correlation`` uniformly;
    resolution loss and the exposure change are applied with the given
    probabilities, gamma then uniform in ``gamma`` and the offset amplitude
    uniform in [0, ``offset_max``]. The exposure change may accompany an
    identity draw (it applies to the reference too, see :func:`degrade_pair`).
    """

    noise_a: tuple[float, float] = NOISE_A_RANGE
    noise_b: tuple[float, float] = NOISE_B_RANGE
    blur_sigma: tuple[float, float] = BLUR_SIGMA_RANGE
    downsample_probability: float = 0.0
    exposure_probability: float = 0.0
    gamma: tuple[float, float] = GAMMA_RANGE
    offset_max: float = 0.05
    noise_correlation: tuple[float, float] = (0.0, 0.0)
    identity_probability: float = 0.0
    structure_probability: float = 0.0

    def __post_init__(self) -> None:
        for name, lo_limit, hi_limit in (
            ("noise_a", 0.0, 0.05),
            ("noise_b", 0.0, 0.01),
            ("blur_sigma", 0.0, 5.0),
            ("gamma", 0.5, 2.0),
            ("noise_correlation", 0.0, 3.0),
        ):
            pair = getattr(self, name)
            if len(pair) != 2:
                raise ValueError(f"{name} must be a (low, high) pair; got {pair!r}.")
            _check_range(f"{name} low", pair[0], lo_limit, hi_limit)
            _check_range(f"{name} high", pair[1], lo_limit, hi_limit)
            if pair[0] > pair[1]:
                raise ValueError(f"{name} must be (low, high) with low <= high; got {pair!r}.")
        if self.noise_a[0] <= 0.0 or self.noise_b[0] <= 0.0:
            raise ValueError("noise_a and noise_b ranges must start above 0 (drawn log-uniformly).")
        _check_range("downsample_probability", self.downsample_probability, 0.0, 1.0)
        _check_range("exposure_probability", self.exposure_probability, 0.0, 1.0)
        _check_range("offset_max", self.offset_max, 0.0, 0.2)
        _check_range("identity_probability", self.identity_probability, 0.0, 1.0)
        _check_range("structure_probability", self.structure_probability, 0.0, 1.0)

    def sample(self, rng: np.random.Generator, bits: int | None = None) -> Degradation:
        """Draw one degradation; `bits` is the source bit depth to quantise to."""

        def log_uniform(pair: tuple[float, float]) -> float:
            return float(math.exp(rng.uniform(math.log(pair[0]), math.log(pair[1]))))

        # Every draw consumes the same random numbers, so a change of one
        # probability does not shift the rest of the stream.
        identity = bool(rng.random() < self.identity_probability)
        noise_a = log_uniform(self.noise_a)
        noise_b = log_uniform(self.noise_b)
        blur = float(rng.uniform(*self.blur_sigma))
        correlation = float(rng.uniform(*self.noise_correlation))
        downsample = bool(rng.random() < self.downsample_probability)
        exposure = bool(rng.random() < self.exposure_probability)
        gamma = float(rng.uniform(*self.gamma))
        offset = float(rng.uniform(0.0, self.offset_max))
        structures = 0
        if self.structure_probability > 0.0 and rng.random() < self.structure_probability:
            structures = int(rng.integers(1, MAX_STRUCTURES + 1))
        if not exposure:
            gamma, offset = 1.0, 0.0
        if identity:
            return Degradation(0.0, 0.0, 0.0, False, gamma, offset, bits, 0.0, structures)
        return Degradation(
            noise_a, noise_b, blur, downsample, gamma, offset, bits, correlation, structures
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (JSON-serialisable)."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationRange:
        """Rebuild from :meth:`as_dict` output."""

        def pair(key: str) -> tuple[float, float]:
            low, high = data[key]
            return float(low), float(high)

        return cls(
            noise_a=pair("noise_a"),
            noise_b=pair("noise_b"),
            blur_sigma=pair("blur_sigma"),
            downsample_probability=float(data["downsample_probability"]),
            exposure_probability=float(data["exposure_probability"]),
            gamma=pair("gamma"),
            offset_max=float(data["offset_max"]),
            noise_correlation=pair("noise_correlation") if "noise_correlation" in data else (0, 0),
            identity_probability=float(data.get("identity_probability", 0.0)),
            structure_probability=float(data.get("structure_probability", 0.0)),
        )


def _down_up(image: np.ndarray) -> np.ndarray:
    rows, cols = image.shape
    padded = np.pad(image, ((0, rows % 2), (0, cols % 2)), mode="edge")
    small = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))
    # Pixel centres of the small image sit at 0.5, 2.5, ... in the big one.
    grid_r = (np.arange(padded.shape[0]) - 0.5) / 2.0
    grid_c = (np.arange(padded.shape[1]) - 0.5) / 2.0
    coords = np.meshgrid(grid_r, grid_c, indexing="ij")
    big = ndimage.map_coordinates(small, coords, order=1, mode="nearest")
    return big[:rows, :cols]


def _check_inputs(image: np.ndarray, params: Degradation) -> np.ndarray:
    if not isinstance(params, Degradation):
        raise TypeError(f"params must be a Degradation; got {type(params).__name__}.")
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array; got shape {array.shape}.")
    return np.clip(array, 0.0, 1.0)


def apply_exposure(image: np.ndarray, params: Degradation, rng: np.random.Generator) -> np.ndarray:
    """Step 1 alone: gamma and the smooth scatter-like offset, clipped to [0, 1] (float64)."""
    x = np.asarray(image, dtype=np.float64)
    if params.gamma != 1.0:
        x = x**params.gamma
    if params.offset > 0.0:
        x = x + params.offset * smooth_field(x.shape, rng)
    return np.clip(x, 0.0, 1.0)


def _degrade_exposed(x: np.ndarray, params: Degradation, rng: np.random.Generator) -> np.ndarray:
    """Steps 2 to 5 on an image that already went through step 1."""
    if params.blur_sigma > 0.0:
        x = ndimage.gaussian_filter(x, params.blur_sigma, mode="reflect", truncate=4.0)
    if params.downsample:
        x = _down_up(x)
    if params.noise_a > 0.0 or params.noise_b > 0.0:
        std = np.sqrt(params.noise_a * np.clip(x, 0.0, 1.0) + params.noise_b)
        x = x + std * correlated_noise(x.shape, params.noise_correlation, rng)
    x = np.clip(x, 0.0, 1.0)
    if params.bits is not None:
        x = quantize(x, params.bits).astype(np.float64) / float(2**params.bits - 1)
    return x.astype(np.float32)


def degrade(image: np.ndarray, params: Degradation, seed: SeedLike) -> np.ndarray:
    """Apply a degradation to a clean image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float array in [0, 1] (MONOCHROME2).
    params : Degradation
        What to apply.
    seed : int or numpy.random.Generator
        The same image, parameters and integer seed always give the same result.

    Returns
    -------
    numpy.ndarray
        float32, same shape, in [0, 1]; multiples of ``1 / (2**bits - 1)`` when
        ``params.bits`` is set.

    Raises
    ------
    TypeError
        If `params` is not a :class:`Degradation` or `seed` has a wrong type.
    ValueError
        If `image` is not a non-empty 2-D array.
    """
    x = _check_inputs(image, params)
    rng = _rng(seed)
    return _degrade_exposed(apply_exposure(x, params, rng), params, rng)


def degrade_pair(
    image: np.ndarray, params: Degradation, seed: SeedLike
) -> tuple[np.ndarray, np.ndarray]:
    """A training pair (input, reference) from a clean image.

    The exposure change (step 1) goes into both, the other steps into the
    input only: the model learns to remove noise and blur, not to re-tone a
    differently exposed image. The reference is quantised like the input.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        float32 (degraded input, reference), same shape as `image`.

    Raises
    ------
    TypeError, ValueError
        As :func:`degrade`.
    """
    x = _check_inputs(image, params)
    rng = _rng(seed)
    if params.structures:
        x = insert_faint_structures(x, params.structures, rng)
    exposed = apply_exposure(x, params, rng)
    reference = exposed
    if params.bits is not None:
        reference = quantize(exposed, params.bits).astype(np.float64) / float(2**params.bits - 1)
    return _degrade_exposed(exposed, params, rng), reference.astype(np.float32)


def expected_noise_variance(x: np.ndarray | float, params: Degradation) -> np.ndarray:
    """The model's noise variance ``a · x + b`` at clean intensity `x` (no blur)."""
    return params.noise_a * np.asarray(x, dtype=np.float64) + params.noise_b
