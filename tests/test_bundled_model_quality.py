"""What a reader would see of the shipped model, through the node's own Enhancer.

Each test runs the bundled ONNX model exactly as the node does (padding,
whole image or tiles, cropping back) on a synthetic input that exposes one
known failure of image-to-image generators: a fixed period-2 pattern on flat
areas and on noise, ringing or checkering beside 1-px lines at the image
border and in the middle, and changes to an image that needs no help.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_node.config import ModelSettings
from dicom_node.inference import Enhancer, bundled_model_path
from dicom_node.pixels import read_any
from dicom_node.strength import blend
from training.metrics import psnr
from training.quality import period2_amplitude, period2_peak

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def enhancer() -> Enhancer:
    return Enhancer(ModelSettings(path=bundled_model_path()))


@pytest.mark.parametrize("level", [0.1, 0.45, 0.8])
def test_flat_images_come_back_flat(enhancer: Enhancer, level: float) -> None:
    flat = np.full((600, 700), level, dtype=np.float32)
    out, _ = enhancer.enhance(flat)
    # No period-2 pattern: below a 16-bit step (1.5e-5) in amplitude.
    assert period2_amplitude(out)["max"] < 1.5e-5
    # And no other structure either (a tenth of an 8-bit step).
    assert float(np.abs(out - level).max()) < 4e-4


def test_noise_keeps_its_period_2_power(enhancer: Enhancer) -> None:
    # Output power at the period-2 frequencies (rows, columns, diagonal), against
    # the input's, for pure-noise images: at most 2×.
    rng = np.random.default_rng(0)
    output_peaks, input_peaks = [], []
    for sigma in (0.01, 0.03, 0.06):
        for _ in range(2):
            noise = np.clip(0.5 + sigma * rng.standard_normal((512, 512)), 0, 1)
            noise = noise.astype(np.float32)
            out, _ = enhancer.enhance(noise)
            output_peaks.append(period2_peak(out)["max"])
            input_peaks.append(period2_peak(noise)["max"])
    assert np.mean(output_peaks) <= 2.0 * np.mean(input_peaks), (output_peaks, input_peaks)
    assert max(o / i for o, i in zip(output_peaks, input_peaks, strict=True)) <= 2.0


@pytest.mark.parametrize("column", [0, 1, 300, 511])
def test_one_pixel_lines_neither_ring_nor_checker(enhancer: Enhancer, column: int) -> None:
    # A synthetic image with a faint 1-px line at the border (columns 0 and 511)
    # or in the middle, on a smooth background with mild noise.
    rng = np.random.default_rng(column)
    rows = np.linspace(0.35, 0.55, 512, dtype=np.float32)[:, None]
    image = np.repeat(rows, 512, axis=1) + 0.004 * rng.standard_normal((512, 512))
    image[:, column] += 0.05
    image = np.clip(image, 0, 1).astype(np.float32)
    out, _ = enhancer.enhance(image)
    change = out - image
    lo, hi = max(column - 6, 0), min(column + 7, 512)
    strip = change[16:-16, lo:hi]
    # No pattern alternating along the line (rows) or in a checkerboard beside it:
    # measured against the noise-free expectation, well below an 8-bit step.
    amplitude = period2_amplitude(strip)
    assert amplitude["rows"] < 5e-4 and amplitude["diagonal"] < 5e-4, amplitude
    # The line keeps most of its contrast against its neighbours.
    beside = [c for c in (column - 3, column + 3) if 0 <= c < 512]
    kept = float(out[16:-16, column].mean() - np.mean([out[16:-16, c].mean() for c in beside]))
    assert kept > 0.7 * 0.05
    # No overshoot band (ringing) beside the line: neighbours stay within the noise.
    for c in beside:
        assert abs(float(change[16:-16, c].mean())) < 0.004


def test_a_clean_radiograph_is_left_nearly_alone(enhancer: Enhancer) -> None:
    # Identity: an image that needs no help comes back within 40 dB (the model card
    # reports the test-split figure), and blending at a lower strength only helps.
    image = read_any(SHARED / "cxr" / "nih_00000353_000.png").pixels
    out, _ = enhancer.enhance(image)
    full = psnr(image, out)
    assert full >= 40.0
    assert psnr(image, blend(image, out, 0.5)) > full + 5.0
