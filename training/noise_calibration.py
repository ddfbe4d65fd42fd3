"""The noise calibration a model carries: when the node applies it, and how much.

A blind generator cannot tell a clean image from a noisy one and smooths
both (the 2.0.0 candidate's identity and blur-only rows, ``training/results``).
The node therefore measures each image's noise (:func:`dicom_node.noise.estimate_noise`)
and scales the strength between two levels stored in the model's metadata
(:class:`dicom_node.noise.NoiseCalibration`): ``floor``, at or below which
an image is left alone, and ``full``, from which it gets the whole strength.

:func:`calibrate_noise` measures both on the **validation** split (never the
test split the evaluation reports): ``floor`` is a high percentile of the
clean references' noise (they are what the model is trained to produce),
``full`` a low percentile of the noise of the same images degraded at the
given settings (white and detector-correlated noise at the acceptance
setting by default). The measurements go into ``noise_calibration.json``;
``dicom-node-train export --noise-calibration`` writes the two levels into
the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.noise import KEY_NOISE_FLOOR, KEY_NOISE_FULL, NoiseCalibration, estimate_noise
from training.degrade import Degradation, degrade
from training.errors import TrainingError

CLEAN_PERCENTILE = 90.0
"""``floor``: this percentile of the clean validation images' noise."""

NOISY_PERCENTILE = 10.0
"""``full``: this percentile of the degraded validation images' noise."""

DEFAULT_SETTINGS = (
    Degradation(noise_a=0.002, noise_b=2e-5, blur_sigma=0.8),
    Degradation(noise_a=0.002, noise_b=2e-5, blur_sigma=0.8, noise_correlation=1.0),
)
"""The acceptance setting with white and with 1-px correlated noise."""


class CalibrationError(TrainingError, ValueError):
    """The clean and the degraded images cannot be told apart by their noise."""


def _central(image: np.ndarray, size: int) -> np.ndarray:
    rows, cols = image.shape
    top, left = max(0, (rows - size) // 2), max(0, (cols - size) // 2)
    return image[top : top + size, left : left + size]


def calibrate_noise(
    images: Sequence[np.ndarray],
    settings: Sequence[Degradation] = DEFAULT_SETTINGS,
    seed: int = 0,
    crop: int = 1024,
) -> dict[str, Any]:
    """Measure the noise of clean and degraded validation images; choose the two levels.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Clean validation images in [0, 1] (float).
    settings : sequence of Degradation
        What a noisy input looks like.
    seed : int
        Seeds the degradations (image ``i`` under setting ``j`` uses ``seed + 1000 j + i``).
    crop : int
        Central crop measured (the whole image when smaller); keeps it fast.

    Returns
    -------
    dict
        ``noise_floor``, ``noise_full`` and the measured values per group.

    Raises
    ------
    CalibrationError
        If there is no image, or the levels do not separate (``floor >= full``).
    """
    if not images:
        raise CalibrationError("Noise calibration needs at least one validation image.")
    crops = [_central(np.asarray(image, dtype=np.float32), crop) for image in images]
    clean = [estimate_noise(c) for c in crops]
    degraded: dict[str, list[float]] = {}
    for j, setting in enumerate(settings):
        degraded[setting.label()] = [
            estimate_noise(degrade(c, setting, seed + 1000 * j + i)) for i, c in enumerate(crops)
        ]
    noisy = [value for values in degraded.values() for value in values]
    floor = float(np.percentile(clean, CLEAN_PERCENTILE))
    full = float(np.percentile(noisy, NOISY_PERCENTILE)) if noisy else floor
    try:
        NoiseCalibration(floor, full)
    except ValueError as exc:
        raise CalibrationError(
            f"The clean images' noise (percentile {CLEAN_PERCENTILE:g}: {floor:.5f}) is not below "
            f"the degraded ones' (percentile {NOISY_PERCENTILE:g}: {full:.5f}): {exc}"
        ) from exc
    return {
        KEY_NOISE_FLOOR: round(floor, 6),
        KEY_NOISE_FULL: round(full, 6),
        "clean": {"images": len(clean), "values": [round(v, 6) for v in clean]},
        "degraded": {k: [round(v, 6) for v in values] for k, values in degraded.items()},
        "percentiles": {"clean": CLEAN_PERCENTILE, "degraded": NOISY_PERCENTILE},
        "crop": crop,
        "seed": seed,
    }


def read_calibration(path: Path) -> NoiseCalibration:
    """The two levels of a ``noise_calibration.json``.

    Raises
    ------
    CalibrationError
        If the file cannot be read or holds invalid levels.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return NoiseCalibration(float(data[KEY_NOISE_FLOOR]), float(data[KEY_NOISE_FULL]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"The noise calibration {path} cannot be used: {exc}") from exc
