"""Checks of real pairs: the same size, and registered well enough to train on.

:func:`check_pairs` verifies every real pair of a manifest
(:func:`training.sources.manifest_records`): two images of different sizes
are an error; a pair whose phase-correlation shift exceeds a pixel or whose
correlation after smoothing is low is reported as misregistered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.pixels import NormalizedImage, read_any
from training.errors import PairSourceError
from training.records import PairRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairCheck:
    """Result of checking one real pair.

    Attributes
    ----------
    high, low : str
        The two paths.
    shift : tuple[float, float]
        Estimated (rows, columns) translation of ``low`` against ``high`` in pixels.
    correlation : float
        Correlation of the two images after smoothing.
    misregistered : bool
        Whether the shift exceeds the tolerance or the correlation is too low.
    """

    high: str
    low: str
    shift: tuple[float, float]
    correlation: float
    misregistered: bool


def check_pair(
    high: NormalizedImage,
    low: NormalizedImage,
    names: tuple[str, str] = ("high", "low"),
    max_shift: float = 1.0,
    min_correlation: float = 0.9,
) -> PairCheck:
    """Check that a real pair has the same size and looks registered.

    The shift is estimated by phase correlation on the images smoothed and
    downsampled by up to 4 (to 1/4-pixel precision there); the correlation is
    computed on the same smoothed images.

    Raises
    ------
    PairSourceError
        If the two images differ in size.
    """
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    if high.shape != low.shape:
        raise PairSourceError(
            f"The pair {names[0]} / {names[1]} has different sizes: {high.shape} and {low.shape}."
        )
    factor = max(1, min(4, min(high.shape) // 128))

    def prepare(image: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.0 * factor)
        return smooth[::factor, ::factor]

    a, b = prepare(high.pixels), prepare(low.pixels)
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=4, normalization=None)
    shift_px = (float(shift[0]) * factor, float(shift[1]) * factor)
    a0, b0 = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a0**2).sum() * (b0**2).sum()))
    correlation = float((a0 * b0).sum() / denominator) if denominator > 0 else 0.0
    bad = max(abs(shift_px[0]), abs(shift_px[1])) > max_shift or correlation < min_correlation
    return PairCheck(names[0], names[1], shift_px, correlation, bad)


def check_pairs(records: Iterable[PairRecord]) -> list[PairCheck]:
    """Check every real pair; log a warning for each that looks misregistered.

    Raises
    ------
    PairSourceError
        If a pair's images differ in size.
    dicom_node.pixels.PixelDataError
        If an image cannot be read.
    """
    checks: list[PairCheck] = []
    for record in records:
        if record.low is None:
            continue
        check = check_pair(
            read_any(Path(record.high)), read_any(Path(record.low)), (record.high, record.low)
        )
        if check.misregistered:
            logger.warning(
                "The pair %s / %s looks misregistered (shift %.1f, %.1f px; correlation %.3f).",
                Path(record.high).name,
                Path(record.low).name,
                check.shift[0],
                check.shift[1],
                check.correlation,
            )
        checks.append(check)
    return checks
