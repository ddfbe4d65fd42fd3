"""Image-quality measures for what a reader sees, beyond PSNR and SSIM.

* :func:`period2_peak` measures a fixed period-2 pattern (row striping,
  column striping, checkerboard): the power at the three period-2
  frequencies against the spectral background right around them. A natural
  image or white noise gives about 1; the checkerboard of a transposed
  convolution gives a narrow spectral line, 100 or more.
* :func:`period2_amplitude` gives the amplitude, in intensity units, of the
  three period-2 patterns; for a flat input any value above zero is an
  artefact.
* :func:`hf_power_ratio` compares the power above half Nyquist (noise
  texture and fine edges) of an output with that of its reference: below 1
  the output is smoother ("waxy"), above 1 it is noisier or over-sharpened.
* :func:`gradient_similarity` is the gradient-magnitude similarity of
  Xue et al. (GMSD, 2014): mean similarity (1 = same edges) and its
  deviation.
* :func:`region_masks` splits a clean chest image into a *lung* (dark) and
  a *dense* (bright: mediastinum, heart, diaphragm, bone) region, and
  :class:`RegionScorer` measures, per region, the residual noise of an
  output relative to the input's and its fine-detail power relative to the
  reference's.

Every function takes 2-D float images in the node's [0, 1] convention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

PERIOD2_TARGETS = {"rows": (0.5, 0.0), "columns": (0.0, 0.5), "diagonal": (0.5, 0.5)}
"""Period-2 frequencies in cycles per pixel (vertical, horizontal)."""

GMS_CONSTANT = 0.0026
"""GMSD's stability constant for images in [0, 1] (170 / 255²)."""


def _check_image(name: str, image: np.ndarray, minimum: int = 16) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < minimum:
        raise ValueError(
            f"{name} must be a 2-D image of at least {minimum}×{minimum} pixels; "
            f"got shape {array.shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains values that are not finite.")
    return array


def _even(array: np.ndarray) -> np.ndarray:
    rows, cols = array.shape
    return array[: rows - rows % 2, : cols - cols % 2]


def power_spectrum(image: np.ndarray) -> np.ndarray:
    """|FFT|² of the mean-removed image, unwindowed, shifted so DC is at the centre.

    No window is applied: a window would spread an exact period-2 line over
    its neighbours. Sides are cut to even lengths so the period-2
    frequencies fall on exact bins.
    """
    array = _even(_check_image("image", image))
    spectrum = np.fft.fftshift(np.fft.fft2(array - array.mean()))
    return (np.abs(spectrum) ** 2) / array.size


def period2_peak(image: np.ndarray, window: int = 0) -> dict[str, float]:
    """Mean power at each period-2 frequency (5×5 bins) over the mean power around it.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, at least 16×16.
    window : int
        Half-size in frequency bins of the neighbourhood that gives the
        background; 0 chooses ``max(6, min(rows, cols) // 32)``.

    Returns
    -------
    dict[str, float]
        ``rows``, ``columns``, ``diagonal`` and their ``max``. About 1 for
        an image without a fixed period-2 pattern.

    Raises
    ------
    ValueError
        If the image is not 2-D, is smaller than 16×16 or is not finite.
    """
    power = power_spectrum(image)
    rows, cols = power.shape
    half = window or max(6, min(rows, cols) // 32)
    # After fftshift, frequency 0 sits at index n // 2 and -0.5 (= +0.5) at index 0.
    # Rolling by n // 2 puts the period-2 frequency at the centre instead.
    out: dict[str, float] = {}
    for name, (fy, fx) in PERIOD2_TARGETS.items():
        shifted = np.roll(power, (rows // 2 if fy else 0, cols // 2 if fx else 0), axis=(0, 1))
        cy, cx = rows // 2, cols // 2
        patch = shifted[cy - half : cy + half + 1, cx - half : cx + half + 1]
        centre = patch[half - 2 : half + 3, half - 2 : half + 3]
        mask = np.ones(patch.shape, dtype=bool)
        mask[half - 2 : half + 3, half - 2 : half + 3] = False
        background = float(patch[mask].mean())
        peak = float(centre.mean())
        out[name] = peak / background if background > 0 else (0.0 if peak == 0 else np.inf)
    out["max"] = max(out.values())
    return out


def period2_amplitude(image: np.ndarray) -> dict[str, float]:
    """Amplitude (intensity units) of the row, column and checkerboard period-2 patterns.

    For an image ``c · (-1)**row`` the ``rows`` value is ``|c|``.
    """
    array = _even(_check_image("image", image, minimum=2))
    r = (-1.0) ** np.arange(array.shape[0])[:, None]
    c = (-1.0) ** np.arange(array.shape[1])[None, :]
    centred = array - array.mean()
    out = {
        "rows": float(abs((centred * r).mean())),
        "columns": float(abs((centred * c).mean())),
        "diagonal": float(abs((centred * r * c).mean())),
    }
    out["max"] = max(out.values())
    return out


def radial_profile(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power by frequency (cycles per pixel, 0 to 0.5)."""
    rows, cols = power.shape
    fy = (np.arange(rows) - rows // 2) / rows
    fx = (np.arange(cols) - cols // 2) / cols
    radius = np.hypot(fy[:, None], fx[None, :])
    bins = np.linspace(0.0, 0.5, 65)
    index = np.digitize(radius.ravel(), bins) - 1
    valid = (index >= 0) & (index < len(bins) - 1)
    sums = np.bincount(index[valid], weights=power.ravel()[valid], minlength=len(bins) - 1)
    counts = np.bincount(index[valid], minlength=len(bins) - 1)
    centres = 0.5 * (bins[1:] + bins[:-1])
    return centres, sums / np.maximum(counts, 1)


def hf_power_ratio(output: np.ndarray, reference: np.ndarray, cutoff: float = 0.25) -> float:
    """Power above `cutoff` cycles/pixel (half Nyquist) of `output` over that of `reference`.

    Both images get the same Hann window, so borders do not leak power into
    high frequencies. 1 means the output keeps the reference's fine texture.

    Raises
    ------
    ValueError
        If the shapes differ or an image is unusable.
    """
    out = _check_image("output", output)
    ref = _check_image("reference", reference)
    if out.shape != ref.shape:
        raise ValueError(f"Shapes differ: output {out.shape}, reference {ref.shape}.")
    reference_power = hf_power(ref, cutoff)
    if reference_power <= 0:
        raise ValueError("The reference has no power above the cut-off (a flat image).")
    return hf_power(out, cutoff) / reference_power


def hf_power(image: np.ndarray, cutoff: float = 0.25) -> float:
    """Hann-windowed power of `image` above `cutoff` cycles/pixel (see :func:`hf_power_ratio`).

    ``hf_power(a) / hf_power(b)`` equals ``hf_power_ratio(a, b)``; computing
    the reference's power once saves an FFT per method.
    """
    array = _check_image("image", image)
    window = np.outer(np.hanning(array.shape[0]), np.hanning(array.shape[1]))
    spectrum = np.fft.fftshift(np.fft.fft2((array - array.mean()) * window))
    freqs, profile = radial_profile(np.abs(spectrum) ** 2)
    return float(profile[freqs > cutoff].sum())


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    gy = ndimage.prewitt(image, axis=0, mode="reflect") / 3.0
    gx = ndimage.prewitt(image, axis=1, mode="reflect") / 3.0
    return np.hypot(gx, gy)


def gradient_similarity(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Gradient-magnitude similarity of `output` to `reference` (GMSD, Xue et al. 2014).

    Returns
    -------
    dict[str, float]
        ``gms`` (mean similarity, 1 = identical gradients) and ``gmsd``
        (its standard deviation, 0 = identical).
    """
    out = _check_image("output", output, minimum=3)
    ref = _check_image("reference", reference, minimum=3)
    if out.shape != ref.shape:
        raise ValueError(f"Shapes differ: output {out.shape}, reference {ref.shape}.")
    g_out, g_ref = _gradient_magnitude(out), _gradient_magnitude(ref)
    gms = (2.0 * g_out * g_ref + GMS_CONSTANT) / (g_out**2 + g_ref**2 + GMS_CONSTANT)
    return {"gms": float(gms.mean()), "gmsd": float(gms.std())}


# --------------------------------------------------------------------------- regions

REGION_SMOOTHING = 1.0 / 48.0
"""Gaussian sigma of the region split, as a fraction of the image's shorter side."""
LUNG_PERCENTILE = 35.0
"""Lung: smoothed reference below this percentile of the central area."""
DENSE_PERCENTILE = 60.0
"""Dense: smoothed reference above this percentile of the central area."""
CENTRAL_BORDER = 0.1
"""The central area leaves out this fraction of the height and width on each side."""
UNCLIPPED = (0.02, 0.98)
"""Reference values outside this range are left out: noise is clipped there."""
NOISE_HIGHPASS_SIGMA = 2.0
"""Residual noise is measured on ``x − Gaussian(x, 2 px)``, which drops slow intensity bias."""
DETAIL_HIGHPASS_SIGMA = 1.0
"""Fine-detail power is measured on ``x − Gaussian(x, 1 px)`` (mostly above 0.2 cycles/pixel)."""


def highpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image − gaussian_filter(image, sigma)`` in float64 (reflecting borders)."""
    array = np.asarray(image, dtype=np.float64)
    return array - ndimage.gaussian_filter(array, sigma, mode="reflect")


@dataclass(frozen=True)
class RegionMasks:
    """Boolean masks of the lung and dense regions of one image (same shape as it)."""

    lung: np.ndarray
    dense: np.ndarray


def region_masks(
    reference: np.ndarray,
    lung_percentile: float = LUNG_PERCENTILE,
    dense_percentile: float = DENSE_PERCENTILE,
) -> RegionMasks:
    """Split a clean MONOCHROME2 chest image into lung (dark) and dense (bright) regions.

    The reference is smoothed with a Gaussian of ``REGION_SMOOTHING`` times
    its shorter side (16 px for 768 px), so the split follows anatomy, not
    texture. Only the *central area* counts (``CENTRAL_BORDER`` of each side
    left out: collimation, burned-in labels and air outside the body sit
    there), and only pixels whose reference value is not near 0 or 1.
    Inside it, *lung* is below the `lung_percentile` of the smoothed values
    and *dense* above the `dense_percentile`; the band between is neither.

    Returns
    -------
    RegionMasks
        Either mask can be empty for an image without contrast.

    Raises
    ------
    ValueError
        If the image is unusable or the percentiles are not
        ``0 < lung <= dense < 100``.
    """
    ref = _check_image("reference", reference)
    if not 0.0 < lung_percentile <= dense_percentile < 100.0:
        raise ValueError(
            "The percentiles must satisfy 0 < lung <= dense < 100; got "
            f"{lung_percentile} and {dense_percentile}."
        )
    rows, cols = ref.shape
    smooth = ndimage.gaussian_filter(ref, max(2.0, min(rows, cols) * REGION_SMOOTHING))
    central = np.zeros(ref.shape, dtype=bool)
    top, left = int(rows * CENTRAL_BORDER), int(cols * CENTRAL_BORDER)
    central[top : rows - top, left : cols - left] = True
    valid = central & (ref > UNCLIPPED[0]) & (ref < UNCLIPPED[1])
    if not valid.any():
        empty = np.zeros(ref.shape, dtype=bool)
        return RegionMasks(empty, empty.copy())
    lung_level, dense_level = np.percentile(smooth[valid], [lung_percentile, dense_percentile])
    return RegionMasks(valid & (smooth < lung_level), valid & (smooth > dense_level))


class RegionScorer:
    """Per-region noise and detail scores of outputs against one reference and input.

    For each region (``lung``, ``dense``):

    * ``residual``: the standard deviation of ``highpass(output − reference,
      2 px)`` over the region, divided by that of the input. 1 = no noise
      removed, 0.2 = 80 % of the residual noise (and high-pass error) removed;
    * ``hf``: the mean of ``highpass(output, 1 px)²`` over the region divided
      by that of the reference: below 1 the region is smoother than the
      reference ("waxy"), above 1 noisier or over-sharpened.

    A value is NaN where it is undefined (empty region, or an input equal to
    the reference as for the identity setting).

    Parameters
    ----------
    reference, degraded : numpy.ndarray
        The clean reference and the input the methods were given (same shape).
    masks : RegionMasks, optional
        Default: :func:`region_masks` of the reference.
    """

    REGIONS = ("lung", "dense")

    def __init__(
        self, reference: np.ndarray, degraded: np.ndarray, masks: RegionMasks | None = None
    ) -> None:
        self.reference = _check_image("reference", reference)
        low = _check_image("degraded", degraded)
        if low.shape != self.reference.shape:
            raise ValueError(
                f"Shapes differ: degraded {low.shape}, reference {self.reference.shape}."
            )
        self.masks = masks or region_masks(self.reference)
        residual_in = highpass(low - self.reference, NOISE_HIGHPASS_SIGMA)
        detail_ref = highpass(self.reference, DETAIL_HIGHPASS_SIGMA) ** 2
        self._input_std: dict[str, float] = {}
        self._reference_hf: dict[str, float] = {}
        for name in self.REGIONS:
            mask = self._mask(name)
            self._input_std[name] = float(residual_in[mask].std()) if mask.any() else np.nan
            self._reference_hf[name] = float(detail_ref[mask].mean()) if mask.any() else np.nan

    def _mask(self, name: str) -> np.ndarray:
        return self.masks.lung if name == "lung" else self.masks.dense

    def score(self, output: np.ndarray) -> dict[str, float]:
        """``lung_residual``, ``dense_residual``, ``lung_hf`` and ``dense_hf`` of `output`."""
        out = _check_image("output", output)
        if out.shape != self.reference.shape:
            raise ValueError(
                f"Shapes differ: output {out.shape}, reference {self.reference.shape}."
            )
        residual = highpass(out - self.reference, NOISE_HIGHPASS_SIGMA)
        detail = highpass(out, DETAIL_HIGHPASS_SIGMA) ** 2
        scores: dict[str, float] = {}
        for name in self.REGIONS:
            mask = self._mask(name)
            if not mask.any():
                scores[f"{name}_residual"] = scores[f"{name}_hf"] = np.nan
                continue
            base, ref_hf = self._input_std[name], self._reference_hf[name]
            std = float(residual[mask].std())
            scores[f"{name}_residual"] = std / base if base > 0 else np.nan
            scores[f"{name}_hf"] = float(detail[mask].mean()) / ref_hf if ref_hf > 0 else np.nan
        return scores
