"""How noisy an image is: one robust number the node can act on.

The generator should change a noisy image and leave a clean one alone. A
blind model cannot tell them apart (see the 2.0.0 candidate's identity and
blur-only results in ``training/results``), so the node measures the noise
itself and scales the enhancement by it (:mod:`dicom_node.strength`).

:func:`estimate_noise` is Immerkær's fast noise estimator (J. Immerkær, "Fast
Noise Variance Estimation", CVIU 64(2), 1996: the image convolved with the
difference of two Laplacians, a kernel that cancels every locally planar
signal) made robust with the median absolute value instead of the mean (a
minority of edge pixels does not move it), and applied to the image binned
2 × 2: a detector's scintillator correlates noise over about a pixel, which
hides it from a pixel-scale kernel but not from one at twice the scale.
Pixels at the ends of the range (collimator, burned-out background) carry no
noise and are left out.

:func:`adapt_strength` turns the estimate into the strength applied to one
image, with the model's :class:`NoiseCalibration` (measured at training time
and stored in the model's metadata): none on an image as clean as the
training references, all of it on one as noisy as the training inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

KERNEL_NORM = 6.0
"""L2 norm of the kernel [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]: white noise of SD σ gives SD 6σ."""

MAD_TO_SD = 0.6745
"""Median absolute deviation of a unit normal variable."""

CLIP_MARGIN = 0.004
"""Binned pixels within this distance of 0 or 1 are treated as clipped and ignored."""

MIN_PIXELS = 64
"""Fewer usable binned pixels than this and the estimate is 0 (nothing to measure)."""


def _bin2(image: np.ndarray) -> np.ndarray:
    rows, cols = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    view = image[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2)
    return view.mean(axis=(1, 3), dtype=np.float64)


def _residual(x: np.ndarray) -> np.ndarray:
    """The kernel's response on the interior (no padding, so no border artefacts)."""
    centre = x[1:-1, 1:-1]
    edges = x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:]
    corners = x[:-2, :-2] + x[:-2, 2:] + x[2:, :-2] + x[2:, 2:]
    return 4.0 * centre - 2.0 * edges + corners


def estimate_noise(image: np.ndarray) -> float:
    """Standard deviation of the noise of `image`, in its own units.

    Parameters
    ----------
    image : numpy.ndarray
        A 2-D float image in the node's [0, 1] convention (pixels at 0 or 1
        count as clipped).

    Returns
    -------
    float
        The estimated SD of the pixel noise at full resolution, for white
        noise; spatially correlated noise reads lower than its per-pixel SD
        but far above a clean image. 0 when the image has too few unclipped
        pixels to measure.

    Raises
    ------
    ValueError
        If `image` is not 2-D or is smaller than 8 × 8.
    """
    array = np.asarray(image)
    if array.ndim != 2 or min(array.shape) < 8:
        raise ValueError(
            f"The noise of an image needs a 2-D image of at least 8 x 8, not {array.shape}."
        )
    binned = _bin2(array.astype(np.float32, copy=False))
    response = _residual(binned)
    centre = binned[1:-1, 1:-1]
    usable = (centre > CLIP_MARGIN) & (centre < 1.0 - CLIP_MARGIN)
    if int(usable.sum()) < MIN_PIXELS:
        return 0.0
    mad = float(np.median(np.abs(response[usable])))
    # Binning 2 x 2 halves the SD of white noise: scale back to full resolution.
    return 2.0 * mad / MAD_TO_SD / KERNEL_NORM


KEY_NOISE_FLOOR = "noise_floor"
KEY_NOISE_FULL = "noise_full"
"""Model metadata keys of :class:`NoiseCalibration` (written by ``dicom-node-train export``)."""


@dataclass(frozen=True)
class NoiseCalibration:
    """How a model's strength follows the image's noise: none at `floor`, all of it at `full`.

    Both are :func:`estimate_noise` values measured at training time on the
    validation split (clean images read below `floor`, degraded ones above
    `full`); in between the strength rises linearly.
    """

    floor: float
    full: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.floor < self.full <= 0.5):
            raise ValueError(
                f"A noise calibration needs 0 <= floor < full <= 0.5; got floor {self.floor!r} "
                f"and full {self.full!r}."
            )

    def scale(self, noise_sd: float) -> float:
        """The share of the strength an image of noise SD `noise_sd` gets (0 to 1)."""
        return min(1.0, max(0.0, (noise_sd - self.floor) / (self.full - self.floor)))

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> NoiseCalibration | None:
        """Read it from model metadata; ``None`` when the model has none.

        Raises
        ------
        ValueError
            If only one key is present or a value is not a valid number.
        """
        present = [key for key in (KEY_NOISE_FLOOR, KEY_NOISE_FULL) if key in props]
        if not present:
            return None
        if len(present) == 1:
            raise ValueError(f"The model has {present[0]} without its pair; export it again.")
        try:
            return cls(float(props[KEY_NOISE_FLOOR]), float(props[KEY_NOISE_FULL]))
        except ValueError as exc:
            raise ValueError(f"The model's noise calibration is invalid: {exc}") from exc


@dataclass(frozen=True)
class AppliedStrength:
    """The strength an image was enhanced with, and why.

    Attributes
    ----------
    requested : float
        The configured strength (the rule's, else ``[model] strength``, or ``--strength``).
    applied : float
        What was applied: `requested` scaled by the image's noise when the
        model is calibrated and adaptation is on, else `requested`.
    noise_sd : float or None
        The image's :func:`estimate_noise` when it was measured.
    """

    requested: float
    applied: float
    noise_sd: float | None = None

    @property
    def adapted(self) -> bool:
        """Whether the image's noise decided the applied strength."""
        return self.noise_sd is not None


def adapt_strength(
    requested: float, image: np.ndarray, calibration: NoiseCalibration | None
) -> AppliedStrength:
    """Scale `requested` by the noise of `image` (unchanged without a calibration).

    A clean image (noise at or below the calibration's floor) is left as it
    is; a noisy one (at or above its full level) gets the whole strength.
    """
    if calibration is None:
        return AppliedStrength(requested, requested)
    noise_sd = estimate_noise(image)
    applied = round(requested * calibration.scale(noise_sd), 4)
    return AppliedStrength(requested, applied, round(noise_sd, 6))
