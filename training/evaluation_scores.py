"""Scores of one output against its clean reference, and their summaries over images.

Per output (:class:`ImageScorer`): PSNR and SSIM (:mod:`training.metrics`),
the HF power ratio, GMS, the period-2 ratio against the degraded input and
the per-region residual noise and fine detail
(:class:`training.quality.RegionScorer`). Per method and group
(:func:`summarise`): the mean over images (NaN left out), the SD of the
main scores and the worst period-2 ratio.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from training.metrics import psnr, ssim
from training.quality import RegionScorer, gradient_similarity, hf_power, period2_peak

logger = logging.getLogger(__name__)

SCORE_KEYS = (
    "psnr",
    "ssim",
    "hf_ratio",
    "gms",
    "period2_ratio",
    "period2_vs_input",
    "lung_residual",
    "dense_residual",
    "lung_hf",
    "dense_hf",
)


class ImageScorer:
    """Scores outputs of one image of one group against its reference (crops).

    Parameters
    ----------
    reference : numpy.ndarray
        The clean crop.
    degraded : numpy.ndarray
        The degraded input's crop (the residual-noise ratios are relative to
        it).

    Notes
    -----
    ``period2_ratio`` is the output's period-2 peak over the larger of the
    input's and the reference's: a generator that restores a detector's own
    row pattern, which the added noise hid in the input, adds nothing that
    was not in the image. ``period2_vs_input`` is the plain ratio to the
    input's peak.
    """

    def __init__(self, reference: np.ndarray, degraded: np.ndarray) -> None:
        self.reference = reference
        ref_hf = hf_power(reference)
        self.reference_hf = ref_hf if ref_hf > 0 else math.nan
        peak = period2_peak(degraded)["max"]
        self.input_peak = peak if peak > 0 else math.nan
        own = max(peak, period2_peak(reference)["max"])
        self.image_peak = own if own > 0 else math.nan
        self.regions = RegionScorer(reference, degraded)

    def score(self, output: np.ndarray) -> dict[str, float]:
        """Every key of :data:`SCORE_KEYS` for `output`."""
        return {
            "psnr": psnr(self.reference, output),
            "ssim": ssim(self.reference, output),
            "hf_ratio": hf_power(output) / self.reference_hf,
            "gms": gradient_similarity(output, self.reference)["gms"],
            "period2_ratio": (out_peak := period2_peak(output)["max"]) / self.image_peak,
            "period2_vs_input": out_peak / self.input_peak,
            **self.regions.score(output),
        }


def nan_mean(values: Sequence[float]) -> float:
    """Mean over the values that are not NaN (NaN if none is)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else math.nan


def finite_sd(values: Sequence[float]) -> float:
    """Standard deviation over the finite values (NaN if none is)."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.std()) if finite.size else math.nan


def summarise(
    scores: Mapping[str, Sequence[float]], seconds: float, count: int
) -> dict[str, float]:
    """One method's summary over `count` images: means, SDs, worst period-2, time per image."""
    out: dict[str, float] = {}
    for key in SCORE_KEYS:
        values = scores.get(key, [])
        out[key] = nan_mean(values)
        if key in ("psnr", "ssim", "hf_ratio", "gms"):
            out[f"{key}_sd"] = finite_sd(values)
        if key == "period2_ratio":
            finite = [v for v in values if not math.isnan(v)]
            out["period2_ratio_max"] = max(finite) if finite else math.nan
    out["images"] = float(count)
    out["seconds_per_image"] = seconds / max(count, 1)
    return out
