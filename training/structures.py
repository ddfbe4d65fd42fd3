"""Faint thin structures inserted into clean training images: signal the model must keep.

Used by :func:`training.degrade.degrade_pair` when a drawn
:class:`~training.degrade.Degradation` has ``structures`` > 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MAX_STRUCTURES = 4
"""At most this many faint structures go into one crop."""

STRUCTURE_CONTRAST = (0.01, 0.06)
"""Peak contrast of an inserted structure, in [0, 1] intensity units, either sign."""


def insert_faint_structures(image: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Add `count` faint thin curves and small blobs to a clean image (signal to keep).

    A blind denoiser trained only on anatomy learns to remove what looks like
    a faint thin line, because most faint thin things in a noisy crop are
    noise; a reader needs exactly those (vessels, fissures, tube walls,
    catheters). Each structure is, with equal chance, a smooth curve (a
    quadratic Bézier through the crop, 1 to 3 px wide, Gaussian profile) or
    a soft ellipse (radii 2 to 10 px), of peak contrast uniform in
    :data:`STRUCTURE_CONTRAST` and random sign. They are not the evaluation's
    straight lines and discs, so the detail-retention figures are not
    measured on the training shapes.

    Parameters
    ----------
    image : numpy.ndarray
        Clean 2-D image in [0, 1] (float64).
    count : int
        How many structures (0 returns a copy).
    rng : numpy.random.Generator
        Source of every random choice (deterministic for a given state).

    Returns
    -------
    numpy.ndarray
        float64, same shape, clipped to [0, 1].
    """
    rows, cols = image.shape
    out = np.array(image, dtype=np.float64, copy=True)
    for _ in range(count):
        contrast = float(rng.uniform(*STRUCTURE_CONTRAST)) * (1.0 if rng.random() < 0.5 else -1.0)
        canvas = np.zeros((rows, cols), dtype=np.float64)
        if rng.random() < 0.5:
            ends = rng.uniform(0.0, 1.0, size=(3, 2)) * np.array([rows - 1, cols - 1])
            steps = int(2 * (rows + cols))
            t = np.linspace(0.0, 1.0, steps)[:, None]
            points = (1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * ends[1] + t**2 * ends[2]
            index = np.round(points).astype(int)
            canvas[index[:, 0].clip(0, rows - 1), index[:, 1].clip(0, cols - 1)] = 1.0
            width = float(rng.uniform(0.4, 1.2))
        else:
            centre = rng.uniform(0.0, 1.0, size=2) * np.array([rows - 1, cols - 1])
            radii = rng.uniform(2.0, 10.0, size=2)
            rr, cc = np.ogrid[:rows, :cols]
            inside = ((rr - centre[0]) / radii[0]) ** 2 + ((cc - centre[1]) / radii[1]) ** 2 <= 1
            canvas[inside] = 1.0
            width = 0.7
        canvas = ndimage.gaussian_filter(canvas, width, mode="constant", truncate=3.0)
        peak = float(canvas.max())
        if peak > 0.0:
            out += contrast * canvas / peak
    return np.clip(out, 0.0, 1.0)
