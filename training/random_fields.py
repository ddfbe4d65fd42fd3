"""Random fields for the degradation model: smooth exposure offsets and correlated noise.

Both are drawn from a :class:`numpy.random.Generator`, so the same state gives
the same field (:mod:`training.degrade` uses them).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, order: int = 2) -> np.ndarray:
    """A random smooth field in [-1, 1]: a sum of low-order 2-D cosines.

    Parameters
    ----------
    shape : tuple[int, int]
        (rows, columns).
    rng : numpy.random.Generator
        Source of the coefficients.
    order : int
        Highest cosine order along each axis (2 gives at most one full period).
    """
    rows = np.linspace(0.0, math.pi, shape[0], dtype=np.float64)[:, None]
    cols = np.linspace(0.0, math.pi, shape[1], dtype=np.float64)[None, :]
    field = np.zeros(shape, dtype=np.float64)
    for i in range(order + 1):
        for j in range(order + 1):
            if i == j == 0:
                continue
            field += rng.normal() / (i + j) * np.cos(i * rows) * np.cos(j * cols)
    peak = float(np.abs(field).max())
    return field / peak if peak > 0 else field


def correlated_noise(
    shape: tuple[int, int], correlation: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit-variance Gaussian noise, correlated by a Gaussian PSF of `correlation` pixels.

    White noise is filtered with the same discrete kernel that
    :func:`scipy.ndimage.gaussian_filter` uses (truncated at 4 σ) and divided
    by the kernel's L2 norm, so every pixel keeps variance 1.
    """
    white = rng.standard_normal(shape)
    if correlation <= 0.0:
        return white
    radius = int(4.0 * correlation + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / correlation) ** 2)
    kernel /= kernel.sum()
    norm = float(np.sum(kernel**2))  # 2-D separable kernel: its squared L2 norm is norm²
    filtered = ndimage.gaussian_filter(white, correlation, mode="wrap", truncate=4.0)
    return filtered / norm
