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

Every function takes 2-D float images in the node's [0, 1] convention.
"""

from __future__ import annotations

import logging

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
    window = np.outer(np.hanning(out.shape[0]), np.hanning(out.shape[1]))

    def band(image: np.ndarray) -> float:
        spectrum = np.fft.fftshift(np.fft.fft2((image - image.mean()) * window))
        freqs, profile = radial_profile(np.abs(spectrum) ** 2)
        return float(profile[freqs > cutoff].sum())

    reference_power = band(ref)
    if reference_power <= 0:
        raise ValueError("The reference has no power above the cut-off (a flat image).")
    return band(out) / reference_power


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
