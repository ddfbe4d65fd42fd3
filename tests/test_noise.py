"""The noise estimate the node scales its enhancement by."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicom_node.noise import estimate_noise


def _anatomy(shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """Smooth shading plus a few sharp edges, in [0.2, 0.8]."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    image = 0.4 + 0.2 * np.sin(3 * rows) * np.cos(2 * cols)
    image[100:300, 150:160] += 0.15  # a bright bar with two edges
    image[350:, :] -= 0.1
    return image


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.04])
def test_white_noise_is_measured_within_fifteen_percent(sigma: float) -> None:
    rng = np.random.default_rng(0)
    noisy = _anatomy() + sigma * rng.standard_normal((512, 512))
    assert estimate_noise(noisy) == pytest.approx(sigma, rel=0.15)


def test_correlated_noise_reads_far_above_a_clean_image() -> None:
    rng = np.random.default_rng(1)
    white = rng.standard_normal((512, 512))
    correlated = ndimage.gaussian_filter(white, 1.0)
    correlated /= correlated.std()
    noisy = _anatomy() + 0.03 * correlated
    clean = estimate_noise(_anatomy())
    assert clean < 0.001
    assert estimate_noise(noisy) > 0.4 * 0.03 > 10 * clean


def test_clipped_regions_do_not_pull_the_estimate_down() -> None:
    rng = np.random.default_rng(2)
    noisy = _anatomy() + 0.02 * rng.standard_normal((512, 512))
    noisy[:, :300] = 0.0  # a collimated, noiseless 60 % of the image
    assert estimate_noise(noisy) == pytest.approx(0.02, rel=0.15)
    assert estimate_noise(np.zeros((64, 64))) == 0.0


def test_deterministic_and_input_checked() -> None:
    rng = np.random.default_rng(3)
    noisy = (_anatomy() + 0.01 * rng.standard_normal((512, 512))).astype(np.float32)
    assert estimate_noise(noisy) == estimate_noise(noisy.copy())
    with pytest.raises(ValueError, match="at least 8 x 8"):
        estimate_noise(np.zeros((4, 100)))
    with pytest.raises(ValueError, match="2-D"):
        estimate_noise(np.zeros((8, 8, 3)))
