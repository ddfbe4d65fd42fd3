"""Probe a model with synthetic inputs that expose what a reader would see.

``python -m training.probe MODEL.onnx [--image FILE ...]`` runs the model
through the node's own :class:`~dicom_node.inference.Enhancer` (padding,
tiles, cropping back) on:

* flat images (0.1, 0.45, 0.8): the amplitude of any period-2 pattern and
  the largest change (a flat image needs no help);
* pure noise around 0.5 (SD 0.01, 0.03, 0.06): the output's period-2 peak
  over the input's (:func:`training.quality.period2_peak`; at most 2 is the
  project's target);
* a faint 1-px line (5 % of full scale) on a smooth, almost noise-free
  ramp, at the left border, one pixel in, in the middle and at the right
  border: the share of its contrast the output keeps, and the row/diagonal
  period-2 amplitude of the change beside it (ringing or checkering);
* clean images given with ``--image``: PSNR of the output against the input
  (identity) and both period-2 peaks.

It prints one line per probe; nothing is written. The same probes run as
tests on the bundled model (``tests/test_bundled_model_quality.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dicom_node.config import ModelSettings
from dicom_node.inference import Enhancer, bundled_model_path
from dicom_node.pixels import PixelDataError, read_any
from training.metrics import psnr
from training.quality import period2_amplitude, period2_peak

FLAT_LEVELS = (0.1, 0.45, 0.8)
NOISE_SDS = (0.01, 0.03, 0.06)
LINE_COLUMNS = (0, 1, 300, 511)
LINE_CONTRAST = 0.05


def line_image(column: int, size: int = 512) -> np.ndarray:
    """A smooth vertical ramp with mild noise (SD 0.004) and a 1-px line at `column`."""
    rng = np.random.default_rng(column)
    rows = np.linspace(0.35, 0.55, size, dtype=np.float32)[:, None]
    image = np.repeat(rows, size, axis=1) + 0.004 * rng.standard_normal((size, size))
    image[:, column] += LINE_CONTRAST
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def line_scores(image: np.ndarray, output: np.ndarray, column: int) -> dict[str, float]:
    """Kept share of the line's contrast, mean change 3 px beside it, ringing amplitude."""
    size = image.shape[1]
    beside = [c for c in (column - 3, column + 3) if 0 <= c < size]
    inner = slice(16, -16)
    kept = float(
        output[inner, column].mean() - np.mean([output[inner, c].mean() for c in beside])
    ) / float(image[inner, column].mean() - np.mean([image[inner, c].mean() for c in beside]))
    change = output - image
    strip = change[inner, max(column - 6, 0) : min(column + 7, size)]
    amplitude = period2_amplitude(strip)
    return {
        "kept": kept,
        "beside": max(abs(float(change[inner, c].mean())) for c in beside),
        "rows": amplitude["rows"],
        "diagonal": amplitude["diagonal"],
    }


def probe(model: Path, images: list[Path]) -> list[str]:
    """Run every probe; one printable line per probe."""
    enhancer = Enhancer(ModelSettings(path=model))
    lines = [f"model {model} ({enhancer.metadata.name} {enhancer.metadata.version})"]
    for level in FLAT_LEVELS:
        out, _ = enhancer.enhance(np.full((600, 700), level, dtype=np.float32))
        lines.append(
            f"flat {level:g}: period-2 amplitude {period2_amplitude(out)['max']:.2e}, "
            f"largest change {float(np.abs(out - level).max()):.2e}"
        )
    rng = np.random.default_rng(0)
    for sd in NOISE_SDS:
        noise = np.clip(0.5 + sd * rng.standard_normal((512, 512)), 0, 1).astype(np.float32)
        out, _ = enhancer.enhance(noise)
        ratio = period2_peak(out)["max"] / period2_peak(noise)["max"]
        lines.append(f"noise SD {sd:g}: period-2 peak output/input {ratio:.2f}")
    for column in LINE_COLUMNS:
        image = line_image(column)
        out, _ = enhancer.enhance(image)
        s = line_scores(image, out, column)
        lines.append(
            f"1-px line {LINE_CONTRAST:.0%} at column {column}: kept {s['kept']:.2f} of its "
            f"contrast, change beside it {s['beside']:.4f}, period-2 beside it "
            f"{max(s['rows'], s['diagonal']):.1e}"
        )
    for path in images:
        try:
            clean = read_any(path).pixels
        except PixelDataError as exc:
            lines.append(f"{path.name}: skipped ({exc})")
            continue
        out, _ = enhancer.enhance(clean)
        lines.append(
            f"identity {path.name}: PSNR {psnr(clean, out):.2f} dB; period-2 peak "
            f"{period2_peak(out)['max']:.1f} (input {period2_peak(clean)['max']:.1f})"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m training.probe", description=__doc__)
    parser.add_argument("model", nargs="?", type=Path, default=None, help="ONNX model")
    parser.add_argument("--image", type=Path, action="append", default=[], help="clean image")
    args = parser.parse_args(argv)
    model = args.model or bundled_model_path()
    if not model.is_file():
        print(f"probe: error: the model {model} does not exist.", file=sys.stderr)
        return 2
    for line in probe(model, args.image):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
