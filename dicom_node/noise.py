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
"""

from __future__ import annotations

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
