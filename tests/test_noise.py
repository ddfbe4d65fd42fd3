"""The noise estimate the node scales its enhancement by."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from dicom_node.noise import NoiseCalibration, adapt_strength, estimate_noise


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


# ---------------------------------------------------------------- noise-adaptive strength


def test_the_calibration_ramps_from_floor_to_full_and_checks_itself() -> None:
    calibration = NoiseCalibration(0.01, 0.03)
    scales = [calibration.scale(v) for v in (0.0, 0.01, 0.02, 0.03, 0.5)]
    assert scales == pytest.approx([0, 0, 0.5, 1, 1])
    for floor, full in ((0.03, 0.01), (-0.1, 0.2), (0.1, 0.6)):
        with pytest.raises(ValueError, match="floor < full"):
            NoiseCalibration(floor, full)
    assert NoiseCalibration.from_props({}) is None
    assert NoiseCalibration.from_props({"noise_floor": "0.01", "noise_full": "0.03"}) == calibration
    with pytest.raises(ValueError, match="without its pair"):
        NoiseCalibration.from_props({"noise_floor": "0.01"})
    with pytest.raises(ValueError, match="invalid"):
        NoiseCalibration.from_props({"noise_floor": "x", "noise_full": "0.03"})


def test_a_clean_image_gets_no_strength_and_a_noisy_one_all_of_it() -> None:
    calibration = NoiseCalibration(0.004, 0.015)
    rng = np.random.default_rng(4)
    clean = _anatomy()
    noisy = clean + 0.03 * rng.standard_normal(clean.shape)
    assert adapt_strength(0.8, clean, calibration).applied == 0.0
    loud = adapt_strength(0.8, noisy, calibration)
    assert loud.applied == 0.8 and loud.requested == 0.8 and loud.adapted
    assert loud.noise_sd == pytest.approx(0.03, rel=0.15)
    plain = adapt_strength(0.8, noisy, None)
    assert (plain.applied, plain.noise_sd, plain.adapted) == (0.8, None, False)


def test_the_node_leaves_a_clean_image_alone_with_a_calibrated_model(tmp_path: Path) -> None:
    from onnx_models import make_smoothing_model

    from dicom_node.config import ModelSettings
    from dicom_node.inference import Enhancer
    from dicom_node.pipeline import apply_model

    calibrated = make_smoothing_model(
        tmp_path / "c.onnx", extra={"noise_floor": "0.004", "noise_full": "0.015"}
    )
    enhancer = Enhancer(ModelSettings(path=calibrated, warmup=False))
    assert enhancer.metadata.noise_calibration == NoiseCalibration(0.004, 0.015)
    clean = _anatomy().astype(np.float32)
    out, _, applied = apply_model(enhancer, clean, 1.0)
    assert applied.applied == 0.0 and np.array_equal(out, clean)
    noisy = (clean + 0.03 * np.random.default_rng(5).standard_normal(clean.shape)).clip(0, 1)
    out, _, applied = apply_model(enhancer, noisy.astype(np.float32), 1.0)
    assert applied.applied == 1.0 and not np.array_equal(out, noisy)
    # A site that wants the configured strength everywhere turns adaptation off.
    fixed = Enhancer(ModelSettings(path=calibrated, warmup=False, adapt_to_noise=False))
    out, _, applied = apply_model(fixed, clean, 1.0)
    assert applied.applied == 1.0 and not applied.adapted and not np.array_equal(out, clean)


def test_a_broken_calibration_is_a_model_error(tmp_path: Path) -> None:
    from onnx_models import make_smoothing_model

    from dicom_node.config import ModelSettings
    from dicom_node.errors import ModelError
    from dicom_node.inference import Enhancer

    broken = make_smoothing_model(tmp_path / "b.onnx", extra={"noise_floor": "0.02"})
    with pytest.raises(ModelError, match="without its pair"):
        Enhancer(ModelSettings(path=broken, warmup=False))
