"""Image quality metrics, always on the [0, 1] pixel convention (data range 1.0).

PSNR and SSIM are those of scikit-image with the data range declared
explicitly as 1.0 (the full range of :mod:`dicom_node.pixels`), never inferred
from the image. SSIM uses scikit-image's defaults: a 7×7 uniform window,
K1 = 0.01, K2 = 0.03, computed in float64.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DATA_RANGE = 1.0
"""Declared data range of every metric."""

METRIC_DEFINITIONS = {
    "psnr": "skimage peak_signal_noise_ratio, data_range=1.0, dB",
    "ssim": "skimage structural_similarity, data_range=1.0, 7x7 uniform window, K1=0.01, K2=0.03",
}


def _pair(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    img = np.asarray(image, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != img.shape:
        raise ValueError(
            f"Metrics need two 2-D images of the same shape; got {ref.shape} and {img.shape}."
        )
    return ref, img


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with data range 1.0 (inf for identical images)."""
    ref, img = _pair(reference, image)
    if np.array_equal(ref, img):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, img, data_range=DATA_RANGE))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Structural similarity with data range 1.0."""
    ref, img = _pair(reference, image)
    return float(structural_similarity(ref, img, data_range=DATA_RANGE))
