"""Evaluation on the held-out test split: what a reader of the output would see.

The test images of a run's ``split.json`` (never seen in training or model
selection) are degraded at each *setting* with a fixed seed; test records
that are real acquired pairs form one more row group, ``real pairs``, with
their own low-quality images. A setting is ``(a, b, sigma, correlation)``
(:func:`setting_degradation`); the default groups are

* **white noise** at the acceptance setting (a = 0.002, b = 2e-5, blur 0.8);
* **correlated noise**, the same with the noise correlated by a 1-px Gaussian;
* **blur only** (no noise, blur 1.2);
* **identity**: the clean image itself, to see what the methods do to an
  image that needs nothing.

Every group is restored by the degraded input itself (no method), non-local
means and BM3D with a strength tuned on validation images (``h`` and
``sigma_psd`` are ``k · σ̂``, see :func:`nlm`), the L1-only generator when
given, the pix2pix generator and, optionally, the pix2pix generator blended
with its input at the node's ``strength`` values (:func:`dicom_node.strength.blend`).

**Crops.** To fit a CPU budget every method is scored on the same central
crop of each test image, at most ``crop`` × ``crop`` pixels (768 by default;
0 scores whole images). The generators run on the whole degraded image,
exactly as the node runs them, and their output is cropped; NLM and BM3D run
on the crop plus a ``context`` margin (32 px) that is cut away afterwards, so
their borders do not enter the scores. The degradation itself is applied to
the whole image, so every method sees the same pixels.

**Scores** of every output against the clean reference, on the crop:
PSNR and SSIM (:mod:`training.metrics`), the power above half Nyquist
relative to the reference's (``hf_ratio``, below 1 = smoother / waxy), the
gradient-magnitude similarity (``gms``), the period-2 artefact
``period2_peak(output) / period2_peak(input)`` (``period2_ratio``), and per
region (lung, dense; :func:`training.quality.region_masks`) the residual
noise relative to the input's and the fine-detail power relative to the
reference's (:class:`training.quality.RegionScorer`).

**Detail retention** (:mod:`training.detail`) inserts faint discs and lines
into a subset of the clean test images, degrades them with the same noise
realisation as the images without inserts, and measures the retained
contrast and the CNR of every insert for every method.

**Targets** (pass/fail in ``evaluation.json``): the acceptance gains, the
retained contrast of 2-px lines at 4 % and 8-px discs at 2 % (≥ 0.8), the
period-2 ratio (≤ 2 on every image) and, with ``--l1-model``, the GAN model
against its L1-only twin (HF ratio and GMS closer to the reference for at
most 0.3 dB of PSNR).

NLM and BM3D can run in worker processes (``workers``) while the generators
run in the main process; results do not depend on the number of workers.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import math
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.model_meta import file_sha256
from dicom_node.pixels import NormalizedImage
from dicom_node.strength import blend, check_strength
from training import detail
from training.data import Example, load_images, make_examples, record_paths
from training.degrade import Degradation, correlated_noise, degrade
from training.metrics import METRIC_DEFINITIONS, psnr, ssim
from training.pairs import PairRecord, Split
from training.quality import (
    RegionScorer,
    gradient_similarity,
    hf_power,
    period2_peak,
)

logger = logging.getLogger(__name__)

Restorer = Callable[[np.ndarray], np.ndarray]
Baseline = Callable[[np.ndarray, float], np.ndarray]
Setting = tuple[float, float, float, float]
"""A degradation setting: (noise_a, noise_b, blur_sigma, noise_correlation)."""

ACCEPTANCE: Setting = (0.002, 2e-5, 0.8, 0.0)
"""White noise at the acceptance setting."""
CORRELATED: Setting = (0.002, 2e-5, 0.8, 1.0)
"""The acceptance setting with the noise correlated by a 1-px Gaussian."""
BLUR_ONLY: Setting = (0.0, 0.0, 1.2, 0.0)
IDENTITY: Setting = (0.0, 0.0, 0.0, 0.0)
MILDER: Setting = (0.001, 1e-5, 0.5, 0.0)
HARSHER: Setting = (0.004, 5e-5, 1.2, 0.0)
DEFAULT_SETTINGS: tuple[Setting, ...] = (ACCEPTANCE, CORRELATED, BLUR_ONLY, IDENTITY)
"""Default row groups; :data:`MILDER` and :data:`HARSHER` are added with ``--setting``."""
DEFAULT_BM3D_SETTINGS: tuple[Setting, ...] = (ACCEPTANCE, CORRELATED)
"""Where BM3D runs by default (it costs about 25 s per 800×800 crop on one core)."""

NLM_FACTORS = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5)
BM3D_FACTORS = (0.75, 1.0, 1.3)
GRID_STEP = 1.4
"""Factor between successive grid points when a tuning grid is extended past an edge."""
MAX_GRID_EXTENSIONS = 4
TUNE_CROP = 512
"""Side of the central validation crops NLM is tuned on."""
BM3D_TUNE_CROP = 256
"""Side of the central validation crops BM3D is tuned on (it is 25 times slower than NLM)."""
DEFAULT_CROP = 768
DEFAULT_CONTEXT = 32
DEFAULT_DETAIL_IMAGES = 8
INPUT = "degraded input"
NLM = "NLM (tuned on val)"
BM3D = "BM3D (tuned on val)"
L1 = "L1-only generator"
PIX2PIX = "pix2pix generator"
REAL_PAIRS = "real pairs"
DIFF_GAIN = 10.0
"""The absolute-difference panel of the grids is multiplied by this."""

RETAINED_TARGET = 0.8
PERIOD2_TARGET = 2.0
L1_PSNR_LOSS = 0.3
INPUT_GAIN_TARGET = 3.0
NLM_GAIN_TARGET = 0.5
DETAIL_TARGETS: tuple[detail.Insert, ...] = (
    detail.Insert(detail.InsertKind.LINE, 2.0, 0.04),
    detail.Insert(detail.InsertKind.DISC, 8.0, 0.02),
)
"""Inserts whose retained contrast must reach :data:`RETAINED_TARGET`."""

SCORE_KEYS = (
    "psnr",
    "ssim",
    "hf_ratio",
    "gms",
    "period2_ratio",
    "lung_residual",
    "dense_residual",
    "lung_hf",
    "dense_hf",
)


class GroupKind(enum.StrEnum):
    """What a row group degrades."""

    WHITE = "white noise"
    CORRELATED = "correlated noise"
    BLUR = "blur only"
    IDENTITY = "identity"
    REAL = "real pairs"


class BM3DProfileValues(enum.StrEnum):
    """BM3D profiles of the ``bm3d`` package that the evaluation offers."""

    NORMAL = "np"
    LOW_COMPLEXITY = "lc"


def normalise_setting(values: Sequence[float]) -> Setting:
    """``(a, b, sigma)`` or ``(a, b, sigma, correlation)`` as a 4-tuple of floats.

    Raises
    ------
    ValueError
        If there are not 3 or 4 values, or they make no valid :class:`Degradation`.
    """
    numbers = tuple(float(v) for v in values)
    if len(numbers) == 3:
        numbers = (*numbers, 0.0)
    if len(numbers) != 4:
        raise ValueError(f"A setting is A,B,SIGMA[,CORRELATION]; got {values!r}.")
    setting: Setting = (numbers[0], numbers[1], numbers[2], numbers[3])
    setting_degradation(setting)
    return setting


def setting_degradation(setting: Sequence[float]) -> Degradation:
    """The :class:`Degradation` of a setting; all zeros give :meth:`Degradation.identity`.

    Raises
    ------
    ValueError, TypeError
        As :class:`Degradation`.
    """
    a, b, sigma, *rest = (float(v) for v in setting)
    correlation = rest[0] if rest else 0.0
    if a == b == sigma == 0.0:
        return Degradation.identity()
    return Degradation(noise_a=a, noise_b=b, blur_sigma=sigma, noise_correlation=correlation)


def setting_kind(setting: Setting) -> GroupKind:
    """White noise, correlated noise, blur only or identity."""
    degradation = setting_degradation(setting)
    if degradation.is_identity:
        return GroupKind.IDENTITY
    if degradation.noise_a == 0.0 and degradation.noise_b == 0.0:
        return GroupKind.BLUR
    if degradation.noise_correlation > 0.0:
        return GroupKind.CORRELATED
    return GroupKind.WHITE


def strength_label(strength: float) -> str:
    """Row name of the pix2pix generator blended at `strength` (``pix2pix generator @0.8``)."""
    return f"{PIX2PIX} @{strength:g}"


@dataclass(frozen=True)
class EvaluationSettings:
    """What to evaluate.

    Attributes
    ----------
    settings : tuple of settings
        ``(a, b, sigma[, correlation])`` per row group; all zeros is the
        identity (clean input).
    bm3d : bool
        Include the BM3D baseline (skipped with a warning if not installed).
    bm3d_settings : tuple of settings or None
        Run BM3D only at these settings. None: at those of
        :data:`DEFAULT_BM3D_SETTINGS` that are evaluated, or, if none is, at
        every setting with noise.
    bm3d_profile : BM3DProfileValues
        ``np`` (the package's normal profile) or ``lc`` (low complexity:
        about 3 times faster, about 0.1 dB lower PSNR).
    max_images : int
        Evaluate at most this many test images (0: all).
    tune_images : int
        Validation images used to tune the baselines.
    grid_cases : int
        Test cases drawn in each PNG grid (0: no grid).
    seed : int
        Seed of the degradations and of the insert positions.
    threads : int or None
        CPU threads for PyTorch (checkpoints run in this process).
    crop : int
        Side of the central crop every method is scored on (0: whole images; else >= 64).
    context : int
        Margin around the crop that NLM and BM3D see and that is cut away.
    strengths : tuple of float
        Extra rows: the pix2pix generator blended with its input at these strengths.
    detail_images : int
        Test images that get the detail-retention inserts (0: none).
    detail_setting : setting or None
        Where detail retention is measured (one of `settings`); None: the
        acceptance setting if evaluated, else the first setting with noise.
    workers : int
        Processes for NLM and BM3D (1: in this process).

    Raises
    ------
    ValueError
        If a value is out of range or a BM3D or detail setting is not one of
        the settings.
    """

    settings: tuple[Sequence[float], ...] = DEFAULT_SETTINGS
    bm3d: bool = True
    bm3d_settings: tuple[Sequence[float], ...] | None = None
    bm3d_profile: BM3DProfileValues = BM3DProfileValues.NORMAL
    max_images: int = 0
    tune_images: int = 6
    grid_cases: int = 3
    seed: int = 1234
    threads: int | None = None
    crop: int = DEFAULT_CROP
    context: int = DEFAULT_CONTEXT
    strengths: tuple[float, ...] = ()
    detail_images: int = DEFAULT_DETAIL_IMAGES
    detail_setting: Sequence[float] | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("At least one degradation setting is needed.")
        settings = tuple(normalise_setting(s) for s in self.settings)
        if len(set(settings)) != len(settings):
            raise ValueError(f"A setting is given twice: {settings}.")
        object.__setattr__(self, "settings", settings)
        if self.bm3d_settings is not None:
            chosen = tuple(normalise_setting(s) for s in self.bm3d_settings)
            for setting in chosen:
                if setting not in settings:
                    raise ValueError(f"The BM3D setting {setting} is not one of the settings.")
            object.__setattr__(self, "bm3d_settings", chosen)
        if self.detail_setting is not None:
            chosen_detail = normalise_setting(self.detail_setting)
            if chosen_detail not in settings:
                raise ValueError(f"The detail setting {chosen_detail} is not one of the settings.")
            object.__setattr__(self, "detail_setting", chosen_detail)
        object.__setattr__(self, "bm3d_profile", BM3DProfileValues(self.bm3d_profile))
        object.__setattr__(
            self, "strengths", tuple(check_strength(s, "strength") for s in self.strengths)
        )
        if self.max_images < 0 or self.grid_cases < 0 or self.tune_images < 1:
            raise ValueError(
                "max_images and grid_cases must be >= 0 and tune_images >= 1; got "
                f"{self.max_images}, {self.grid_cases}, {self.tune_images}."
            )
        if self.crop != 0 and self.crop < 64:
            raise ValueError(f"crop must be 0 (whole images) or at least 64; got {self.crop}.")
        if self.context < 0 or self.detail_images < 0 or self.workers < 1:
            raise ValueError(
                "context and detail_images must be >= 0 and workers >= 1; got "
                f"{self.context}, {self.detail_images}, {self.workers}."
            )

    def bm3d_at(self) -> tuple[Setting, ...]:
        """The settings where BM3D runs (before checking that it is installed)."""
        if not self.bm3d:
            return ()
        if self.bm3d_settings is not None:
            return tuple(normalise_setting(s) for s in self.bm3d_settings)
        settings = [normalise_setting(s) for s in self.settings]
        chosen = tuple(s for s in settings if s in DEFAULT_BM3D_SETTINGS)
        noisy = tuple(
            s for s in settings if setting_kind(s) in (GroupKind.WHITE, GroupKind.CORRELATED)
        )
        return chosen or noisy

    def detail_at(self) -> Setting | None:
        """The setting where detail retention is measured (None: not measured)."""
        if self.detail_images == 0:
            return None
        if self.detail_setting is not None:
            return normalise_setting(self.detail_setting)
        settings = [normalise_setting(s) for s in self.settings]
        if ACCEPTANCE in settings:
            return ACCEPTANCE
        noisy = [s for s in settings if setting_kind(s) in (GroupKind.WHITE, GroupKind.CORRELATED)]
        return noisy[0] if noisy else None


# --------------------------------------------------------------------------- formatting


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return format(value, spec)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (strict JSON); tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclass
class EvaluationResult:
    """Scores per group and method, detail retention, targets, and how it was run."""

    test_images: int
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    per_image: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    nlm: dict[str, dict[str, Any]] = field(default_factory=dict)
    bm3d: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The main table: PSNR, SSIM, HF ratio, GMS and period-2 ratio per group and method."""
        lines = [
            f"Test split: {self.test_images} images, scored on "
            f"{self.protocol.get('crop_text', 'whole images')}. PSNR in dB and SSIM (data "
            "range 1.0), mean ± SD over images; HF ratio = power above half Nyquist over the "
            "reference's (< 1 smoother); GMS = gradient-magnitude similarity (1 = same edges); "
            "period-2 = period2_peak(output) / period2_peak(input), mean / worst image.",
            "",
            "| setting | method | PSNR (dB) | SSIM | ΔPSNR vs input | ΔPSNR vs NLM | HF ratio "
            "| GMS | period-2 ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for setting, methods in self.results.items():
            base = methods.get(INPUT, {}).get("psnr", math.nan)
            nlm_psnr = methods.get(NLM, {}).get("psnr", math.nan)
            for method, s in methods.items():
                lines.append(
                    f"| {setting} | {method} | {_fmt(s['psnr'], '.2f')} ± "
                    f"{_fmt(s['psnr_sd'], '.2f')} | {_fmt(s['ssim'], '.4f')} ± "
                    f"{_fmt(s['ssim_sd'], '.4f')} | {_fmt(s['psnr'] - base, '+.2f')} | "
                    f"{_fmt(s['psnr'] - nlm_psnr, '+.2f')} | {_fmt(s['hf_ratio'], '.3f')} | "
                    f"{_fmt(s['gms'], '.4f')} | {_fmt(s['period2_ratio'], '.2f')} / "
                    f"{_fmt(s['period2_ratio_max'], '.2f')} |"
                )
        return "\n".join(lines)

    def region_table(self) -> str:
        """Residual noise and fine-detail power in the lung and dense regions."""
        lines = [
            "Residual noise = SD of highpass(output − reference, 2 px) over the region, relative "
            "to the input's (0.2 = 80 % removed); HF = mean highpass(output, 1 px)² over the "
            "region relative to the reference's (< 1 smoother). Lung: smoothed reference below "
            "its 35th percentile, dense: above its 60th, central area only.",
            "",
            "| setting | method | lung: residual noise | dense: residual noise | lung: HF "
            "| dense: HF |",
            "|---|---|---|---|---|---|",
        ]
        for setting, methods in self.results.items():
            for method, s in methods.items():
                lines.append(
                    f"| {setting} | {method} | {_fmt(s['lung_residual'], '.3f')} | "
                    f"{_fmt(s['dense_residual'], '.3f')} | {_fmt(s['lung_hf'], '.3f')} | "
                    f"{_fmt(s['dense_hf'], '.3f')} |"
                )
        return "\n".join(lines)

    def detail_tables(self) -> str:
        """Retained contrast and CNR by insert (rows) and method (columns)."""
        inserts = self.detail.get("inserts", {})
        if not inserts:
            return "Detail retention was not measured."
        methods = list(next(iter(inserts.values())))
        header = "| insert | " + " | ".join(methods) + " |"
        rule = "|---|" + "---|" * len(methods)
        counts = sorted({str(by_method[methods[0]]["n"]) for by_method in inserts.values()})
        retained = [
            f"Retained contrast at {self.detail['setting']} on {len(self.detail['images'])} "
            f"images: {self.detail['template']} Mean ± SD over inserts ({'/'.join(counts)} "
            "per row).",
            "",
            header,
            rule,
        ]
        cnr_lines = [
            "CNR of each insert in the output with it: (mean over its core − mean over a ring "
            "around it) / SD over the ring, of output − clean reference. Mean over inserts.",
            "",
            header,
            rule,
        ]
        for label, by_method in inserts.items():
            retained.append(
                f"| {label} | "
                + " | ".join(
                    f"{_fmt(by_method[m]['retained'], '.2f')} ± "
                    f"{_fmt(by_method[m]['retained_sd'], '.2f')}"
                    for m in methods
                )
                + " |"
            )
            cnr_lines.append(
                f"| {label} | "
                + " | ".join(_fmt(by_method[m]["cnr"], ".1f") for m in methods)
                + " |"
            )
        return "\n".join(retained) + "\n\n" + "\n".join(cnr_lines)

    def comparison_table(self) -> str:
        """The pix2pix generator against its L1-only twin, per group."""
        if not self.comparison:
            return "No L1-only generator was given (--l1-model): no GAN vs L1 comparison."
        lines = [
            f"pix2pix vs its L1-only twin: it should be closer to the reference in texture "
            f"(|HF ratio − 1| smaller) and edges (GMS higher) while losing at most "
            f"{L1_PSNR_LOSS} dB of PSNR.",
            "",
            "| setting | PSNR L1 | PSNR pix2pix | Δ | HF L1 | HF pix2pix | GMS L1 | GMS pix2pix "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for setting, c in self.comparison.items():
            lines.append(
                f"| {setting} | {_fmt(c['psnr_l1'], '.2f')} | {_fmt(c['psnr_pix2pix'], '.2f')} "
                f"| {_fmt(c['psnr_delta'], '+.2f')} | {_fmt(c['hf_l1'], '.3f')} | "
                f"{_fmt(c['hf_pix2pix'], '.3f')} | {_fmt(c['gms_l1'], '.4f')} | "
                f"{_fmt(c['gms_pix2pix'], '.4f')} | {c['verdict']} |"
            )
        return "\n".join(lines)

    def targets_table(self) -> str:
        """Every target with its value and whether it is met."""
        if not self.targets:
            return "No target could be checked with these settings."
        lines = [
            "| target | method | setting | value | required | met |",
            "|---|---|---|---|---|---|",
        ]
        for t in self.targets:
            met = "—" if t["passed"] is None else ("yes" if t["passed"] else "**no**")
            lines.append(
                f"| {t['name']} | {t['method']} | {t['setting']} | {_fmt(t['value'], '.3f')} | "
                f"{t['required']} | {met} |"
            )
        return "\n".join(lines)

    def notes(self) -> str:
        """How the baselines were tuned and where the time went."""
        lines = []
        for label, info in self.nlm.items():
            source = f" (the factor of {info['from']})" if "from" in info else ""
            lines.append(f"* {label}: NLM h = {info['factor']:g}·σ̂{source}.")
        for label, info in self.bm3d.items():
            source = f" (the factor of {info['from']})" if "from" in info else ""
            lines.append(
                f"* {label}: BM3D sigma = {info['factor']:g}·σ̂{source}, profile "
                f"{self.protocol.get('bm3d_profile')}."
            )
        for key in ("crop_text", "generator_input", "baseline_input", "sigma_estimate"):
            if key in self.protocol:
                lines.append(f"* {key.replace('_', ' ')}: {self.protocol[key]}")
        if self.timings:
            spent = ", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items())
            lines.append(f"* time: {spent}.")
        return "\n".join(lines)

    def report(self) -> str:
        """Every table, in Markdown (written as ``evaluation.md`` and printed)."""
        sections = [
            ("Scores on the test split", self.table()),
            ("Noise in lung and dense regions", self.region_table()),
            ("Detail retention", self.detail_tables()),
            ("pix2pix vs L1-only generator", self.comparison_table()),
            ("Targets", self.targets_table()),
            ("Notes", self.notes()),
        ]
        return "\n\n".join(f"## {title}\n\n{body}" for title, body in sections)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (written as ``evaluation.json``); NaN is written as null."""
        return _json_safe(
            {
                "test_images": self.test_images,
                "metric_definitions": {
                    **METRIC_DEFINITIONS,
                    "hf_ratio": "training.quality.hf_power_ratio(output, reference), cut-off "
                    "0.25 cycles/pixel, Hann window",
                    "gms": "training.quality.gradient_similarity(output, reference)['gms']",
                    "period2_ratio": "period2_peak(output)['max'] / period2_peak(input)['max']",
                    "lung_residual/dense_residual": "training.quality.RegionScorer residual",
                    "lung_hf/dense_hf": "training.quality.RegionScorer hf",
                    "seconds_per_image": "NLM/BM3D: CPU seconds in their process; "
                    "generators: wall seconds of the whole image",
                },
                "protocol": self.protocol,
                "groups": self.groups,
                "results": self.results,
                "nlm": self.nlm,
                "bm3d": self.bm3d,
                "models": self.models,
                "detail": self.detail,
                "comparison": self.comparison,
                "targets": self.targets,
                "timings": self.timings,
                "per_image": self.per_image,
            }
        )


# --------------------------------------------------------------------------- restorers


def onnx_restorer(path: Path) -> Restorer:
    """Run an exported model exactly as the node does.

    The node's own :class:`dicom_node.inference.Enhancer` loads the model
    (checking its metadata), reflect-pads each image to the size multiple and,
    for large images, runs overlapping tiles.

    Raises
    ------
    ValueError
        If the node refuses or cannot load the model.
    """
    from dicom_node.config import ModelSettings
    from dicom_node.errors import ModelError
    from dicom_node.inference import Enhancer

    try:
        enhancer = Enhancer(ModelSettings(path=path, provider="auto", warmup=False))
    except ModelError as exc:
        raise ValueError(str(exc)) from exc

    def run(image: np.ndarray) -> np.ndarray:
        return enhancer.enhance(np.asarray(image, dtype=np.float32))[0]

    return run


def checkpoint_restorer(path: Path) -> Restorer:
    """Run the generator of a training checkpoint with PyTorch (CPU).

    Images are padded and cropped with the node's own functions
    (:mod:`dicom_node.tiling`), so a checkpoint scores like its ONNX export
    run by the node.
    """
    import torch

    from dicom_node.tiling import crop, pad_to_multiple
    from training.networks import SIZE_MULTIPLE
    from training.train import load_generator

    generator, _ = load_generator(path)

    def run(image: np.ndarray) -> np.ndarray:
        padded, pad = pad_to_multiple(np.asarray(image, dtype=np.float32), SIZE_MULTIPLE)
        with torch.no_grad():
            out = generator(torch.from_numpy(np.ascontiguousarray(padded))[None, None])
        return np.asarray(crop(out[0, 0].numpy(), pad), dtype=np.float32)

    return run


def load_restorer(path: Path) -> Restorer:
    """An ONNX model (``.onnx``, run by the node's code) or a checkpoint (PyTorch).

    Raises
    ------
    ValueError
        If the file does not exist or cannot be loaded.
    """
    if not path.is_file():
        raise ValueError(f"The model {path} does not exist.")
    if path.suffix.lower() == ".onnx":
        return onnx_restorer(path)
    return checkpoint_restorer(path)


@functools.cache
def sigma_estimate_response(correlation: float) -> float:
    """What ``estimate_sigma`` reports for unit-variance noise of this correlation.

    scikit-image's estimator looks at the finest wavelet band, where noise
    correlated by a Gaussian PSF has little power: for a 1-px PSF it reports
    about 0.14 of the true standard deviation. Dividing σ̂ by this keeps the
    baselines' ``k`` comparable across settings. 1 for white noise.
    """
    if correlation <= 0.0:
        return 1.0
    from skimage.restoration import estimate_sigma

    noise = correlated_noise((256, 256), correlation, np.random.default_rng(0))
    return float(estimate_sigma(noise))


def nlm(image: np.ndarray, factor: float, sigma_scale: float = 1.0) -> np.ndarray:
    """Non-local means with ``h = factor · σ̂``.

    σ̂ is scikit-image's ``estimate_sigma`` divided by `sigma_scale`
    (:func:`sigma_estimate_response` of the noise correlation). 5×5
    patches, search distance 6, fast mode.
    """
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(estimate_sigma(image)) / sigma_scale
    out = denoise_nl_means(
        image.astype(np.float64),
        h=factor * sigma,
        sigma=sigma,
        patch_size=5,
        patch_distance=6,
        fast_mode=True,
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def bm3d_available() -> bool:
    """Whether the ``bm3d`` package can be imported."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def bm3d_denoise(
    image: np.ndarray,
    factor: float,
    sigma_scale: float = 1.0,
    profile: str = BM3DProfileValues.NORMAL,
) -> np.ndarray:
    """BM3D with ``sigma_psd = factor · σ̂`` (σ̂ as for :func:`nlm`), white-noise model.

    The package's correlated-noise mode (a noise PSD) fails with NumPy 2
    (``bm4d`` calls ``np.trapz``), so correlated noise is treated as white
    with a tuned level.
    """
    import bm3d
    from skimage.restoration import estimate_sigma

    sigma = max(float(estimate_sigma(image)) / sigma_scale, 1e-4)
    chosen: Any = (
        bm3d.BM3DProfileLC()
        if BM3DProfileValues(profile) is BM3DProfileValues.LOW_COMPLEXITY
        else "np"
    )
    out = bm3d.bm3d(image.astype(np.float64), sigma_psd=factor * sigma, profile=chosen)
    return np.clip(np.asarray(out), 0.0, 1.0).astype(np.float32)


def _centre(image: np.ndarray, size: int) -> np.ndarray:
    rows, cols = min(size, image.shape[0]), min(size, image.shape[1])
    top, left = (image.shape[0] - rows) // 2, (image.shape[1] - cols) // 2
    return image[top : top + rows, left : left + cols]


# --------------------------------------------------------------------------- workers


class _Runner:
    """Runs jobs in this process (``workers`` = 1) or in a pool of spawned processes."""

    def __init__(self, workers: int = 1) -> None:
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn")
            )

    @property
    def parallel(self) -> bool:
        return self._executor is not None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _tune_score(method: Baseline, factor: float, low: np.ndarray, ref: np.ndarray) -> float:
    return psnr(ref, method(low, factor))


def _run_baseline(
    method: Baseline, factor: float, context: np.ndarray, inner: tuple[slice, slice]
) -> tuple[np.ndarray, float]:
    started = time.process_time()
    out = np.ascontiguousarray(method(context, factor)[inner])
    return out, time.process_time() - started


def tune_factor(
    method: Baseline,
    examples: Sequence[Example],
    factors: Sequence[float],
    max_extensions: int = MAX_GRID_EXTENSIONS,
    crop: int = TUNE_CROP,
    runner: _Runner | None = None,
) -> tuple[float, dict[str, float]]:
    """The factor with the best mean PSNR on the central `crop` crops of `examples`.

    A baseline tuned on a grid whose best point is the grid's edge is not
    tuned: the optimum may lie outside. The grid is therefore extended
    geometrically (by :data:`GRID_STEP`) past an edge that wins, up to
    `max_extensions` times; a factor still at the edge after that is logged
    as a warning.

    Returns
    -------
    tuple[float, dict[str, float]]
        The best factor and the mean PSNR of every factor tried.
    """
    runner = runner or _Runner(1)
    crops = [(_centre(e.degraded, crop), _centre(e.reference, crop)) for e in examples]

    def score(chosen: Sequence[float]) -> dict[float, float]:
        futures = {
            f: [runner.submit(_tune_score, method, f, low, ref) for low, ref in crops]
            for f in chosen
        }
        return {f: float(np.mean([x.result() for x in fs])) for f, fs in futures.items()}

    scores = score([float(f) for f in factors])
    for _ in range(max_extensions):
        best = max(scores, key=lambda key: scores[key])
        if best == min(scores):
            candidate = round(best / GRID_STEP, 4)
        elif best == max(scores):
            candidate = round(best * GRID_STEP, 4)
        else:
            break
        scores.update(score([candidate]))
    best = max(scores, key=lambda key: scores[key])
    if len(scores) > 1 and best in (min(scores), max(scores)):
        logger.warning("The best factor %g is at the edge of the range searched.", best)
    return best, {f"{factor:g}": scores[factor] for factor in sorted(scores)}


# --------------------------------------------------------------------------- images and groups


@dataclass(frozen=True)
class Window:
    """A rectangle of an image: first row and column, height and width."""

    top: int
    left: int
    rows: int
    cols: int

    def cut(self, image: np.ndarray) -> np.ndarray:
        """The part of `image` inside the window."""
        return image[self.top : self.top + self.rows, self.left : self.left + self.cols]

    def inside(self, outer: Window) -> tuple[slice, slice]:
        """Slices that cut this window out of an array covering `outer`."""
        top, left = self.top - outer.top, self.left - outer.left
        return slice(top, top + self.rows), slice(left, left + self.cols)


def central_window(shape: tuple[int, ...], crop: int) -> Window:
    """The central `crop` × `crop` window of an image (whole for crop 0 or a smaller image)."""
    rows, cols = int(shape[0]), int(shape[1])
    height = rows if crop == 0 else min(crop, rows)
    width = cols if crop == 0 else min(crop, cols)
    return Window((rows - height) // 2, (cols - width) // 2, height, width)


def context_window(shape: tuple[int, ...], window: Window, margin: int) -> Window:
    """`window` grown by `margin` on every side, within the image."""
    top, left = max(window.top - margin, 0), max(window.left - margin, 0)
    bottom = min(window.top + window.rows + margin, int(shape[0]))
    right = min(window.left + window.cols + margin, int(shape[1]))
    return Window(top, left, bottom - top, right - left)


@dataclass(frozen=True)
class _TestImage:
    name: str
    position: int
    reference: np.ndarray
    low: np.ndarray | None
    bits: int
    window: Window
    context: Window


@dataclass
class _Group:
    label: str
    kind: GroupKind
    setting: Setting | None
    degradation: Degradation | None
    seed: int
    images: list[_TestImage]
    val: list[Example]
    with_bm3d: bool
    baselines: dict[str, tuple[Baseline, float]] = field(default_factory=dict)
    detail_positions: frozenset[int] = frozenset()

    def degraded(self, image: _TestImage, clean: np.ndarray | None = None) -> np.ndarray:
        """The whole degraded image (the real low image for a real pair)."""
        if image.low is not None:
            return image.low
        assert self.degradation is not None
        params = Degradation(**{**self.degradation.as_dict(), "bits": image.bits})
        source = image.reference if clean is None else clean
        return degrade(source, params, np.random.default_rng([self.seed, image.position]))


def _test_images(
    records: Sequence[PairRecord], images: dict[str, NormalizedImage], crop: int, margin: int
) -> list[_TestImage]:
    out = []
    for position, record in enumerate(records):
        high = images[record.high]
        low = images[record.low].pixels if record.low is not None else None
        window = central_window(high.pixels.shape, crop)
        out.append(
            _TestImage(
                record.name,
                position,
                high.pixels,
                low,
                high.bits_stored,
                window,
                context_window(high.pixels.shape, window, margin),
            )
        )
    return out


def _detail_positions(count: int, wanted: int) -> frozenset[int]:
    if wanted <= 0 or count == 0:
        return frozenset()
    return frozenset(
        int(i) for i in np.unique(np.linspace(0, count - 1, min(wanted, count)).round())
    )


# --------------------------------------------------------------------------- scoring


class _Scorer:
    """Scores outputs of one image of one group against its reference (crops)."""

    def __init__(self, reference: np.ndarray, degraded: np.ndarray) -> None:
        self.reference = reference
        ref_hf = hf_power(reference)
        self.reference_hf = ref_hf if ref_hf > 0 else math.nan
        peak = period2_peak(degraded)["max"]
        self.input_peak = peak if peak > 0 else math.nan
        self.regions = RegionScorer(reference, degraded)

    def score(self, output: np.ndarray) -> dict[str, float]:
        return {
            "psnr": psnr(self.reference, output),
            "ssim": ssim(self.reference, output),
            "hf_ratio": hf_power(output) / self.reference_hf,
            "gms": gradient_similarity(output, self.reference)["gms"],
            "period2_ratio": period2_peak(output)["max"] / self.input_peak,
            **self.regions.score(output),
        }


def _mean(values: Sequence[float]) -> float:
    """Mean over the values that are not NaN (NaN if none is)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else math.nan


def _sd(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.std()) if finite.size else math.nan


def _summary(scores: dict[str, list[float]], seconds: float, count: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in SCORE_KEYS:
        values = scores.get(key, [])
        out[key] = _mean(values)
        if key in ("psnr", "ssim", "hf_ratio", "gms"):
            out[f"{key}_sd"] = _sd(values)
        if key == "period2_ratio":
            finite = [v for v in values if not math.isnan(v)]
            out["period2_ratio_max"] = max(finite) if finite else math.nan
    out["images"] = float(count)
    out["seconds_per_image"] = seconds / max(count, 1)
    return out


# --------------------------------------------------------------------------- grids


def save_grid(panels: list[list[np.ndarray]], labels: Sequence[str], path: Path) -> None:
    """Write rows of equally cropped panels side by side as an 8-bit PNG with a header."""
    from PIL import Image, ImageDraw

    size = 384
    crops = [[_centre(p, size) for p in row] for row in panels]
    height = max(c.shape[0] for row in crops for c in row)
    width = max(c.shape[1] for row in crops for c in row)
    header, gap = 16, 4
    columns = len(labels)
    canvas = np.full(
        (header + len(crops) * (height + gap), columns * (width + gap)), 255, dtype=np.uint8
    )
    for r, row in enumerate(crops):
        for c, panel in enumerate(row):
            top, left = header + r * (height + gap), c * (width + gap)
            values = np.rint(np.clip(panel, 0.0, 1.0) * 255).astype(np.uint8)
            canvas[top : top + panel.shape[0], left : left + panel.shape[1]] = values
    image = Image.fromarray(canvas, mode="L")
    draw = ImageDraw.Draw(image)
    for c, label in enumerate(labels):
        draw.text((c * (width + gap) + 2, 2), label, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# --------------------------------------------------------------------------- the run


class _Evaluation:
    """One evaluation run; :func:`run_evaluation` is its public face."""

    def __init__(
        self,
        settings: EvaluationSettings,
        generators: dict[str, Restorer],
        groups: list[_Group],
        output_dir: Path,
        runner: _Runner,
        result: EvaluationResult,
    ) -> None:
        self.settings = settings
        self.generators = generators
        self.groups = groups
        self.output_dir = output_dir
        self.runner = runner
        self.result = result
        self.placements: dict[str, list[detail.Placement]] = {}
        self.prefetched: dict[tuple[int, int, bool], dict[str, Future[Any]]] = {}

    # ---------------------------------------------------------------- tuning

    def tune(self) -> None:
        """Tune NLM (and BM3D) per group; the identity group takes a noisy group's factors."""
        noisy = [g for g in self.groups if g.kind is not GroupKind.IDENTITY]
        source = next((g for g in noisy if g.setting == ACCEPTANCE), None) or next(
            (g for g in noisy if g.kind in (GroupKind.WHITE, GroupKind.CORRELATED)), None
        )
        profile = self.settings.bm3d_profile
        for group in self.groups:
            scale = sigma_estimate_response(group.setting[3] if group.setting else 0.0)
            method_nlm: Baseline = functools.partial(nlm, sigma_scale=scale)
            method_bm3d: Baseline = functools.partial(
                bm3d_denoise, sigma_scale=scale, profile=str(profile)
            )
            if group.kind is GroupKind.IDENTITY and source is not None:
                continue
            factor, scores = tune_factor(method_nlm, group.val, NLM_FACTORS, runner=self.runner)
            self.result.nlm[group.label] = {
                "factor": factor,
                **{f"val_psnr@{k}": v for k, v in scores.items()},
            }
            group.baselines[NLM] = (method_nlm, factor)
            logger.info("%s: NLM h = %.3g·σ̂ (val PSNR %s)", group.label, factor, scores)
            if group.with_bm3d:
                factor, scores = tune_factor(
                    method_bm3d,
                    group.val,
                    BM3D_FACTORS,
                    crop=BM3D_TUNE_CROP,
                    runner=self.runner,
                )
                self.result.bm3d[group.label] = {
                    "factor": factor,
                    **{f"val_psnr@{k}": v for k, v in scores.items()},
                }
                group.baselines[BM3D] = (method_bm3d, factor)
                logger.info("%s: BM3D σ = %.3g·σ̂ (val PSNR %s)", group.label, factor, scores)
        if source is None:
            return
        for group in self.groups:
            if group.kind is not GroupKind.IDENTITY:
                continue
            for name, record in ((NLM, self.result.nlm), (BM3D, self.result.bm3d)):
                if name == BM3D and not group.with_bm3d:
                    continue
                if name not in source.baselines:
                    logger.warning(
                        "%s: no %s factor at %s to borrow; %s is skipped here.",
                        group.label,
                        name,
                        source.label,
                        name,
                    )
                    continue
                method, factor = source.baselines[name]
                group.baselines[name] = (method, factor)
                record[group.label] = {"factor": factor, "from": source.label}

    # ---------------------------------------------------------------- baselines

    def _inserts(self, image: _TestImage) -> list[detail.Placement]:
        """Placements of the inserts in crop coordinates (cached per image)."""
        if image.name not in self.placements:
            rng = np.random.default_rng([self.settings.seed, 7, image.position])
            self.placements[image.name] = detail.place_inserts(
                image.window.cut(image.reference), detail.DEFAULT_INSERTS, rng
            )
        return self.placements[image.name]

    def _with_inserts(self, group: _Group, image: _TestImage) -> np.ndarray:
        window = image.window
        placements = [p.shifted(window.top, window.left) for p in self._inserts(image)]
        return group.degraded(image, detail.add_inserts(image.reference, placements))

    def _submit(
        self, group: _Group, image: _TestImage, degraded: np.ndarray
    ) -> dict[str, Future[Any]]:
        context = np.ascontiguousarray(image.context.cut(degraded))
        inner = image.window.inside(image.context)
        return {
            name: self.runner.submit(_run_baseline, method, factor, context, inner)
            for name, (method, factor) in group.baselines.items()
        }

    def prefetch(self) -> None:
        """With worker processes: queue every baseline job now, so they overlap the generators."""
        if not self.runner.parallel:
            return
        for g, group in enumerate(self.groups):
            for i, image in enumerate(group.images):
                self.prefetched[(g, i, False)] = self._submit(group, image, group.degraded(image))
                if image.position in group.detail_positions:
                    self.prefetched[(g, i, True)] = self._submit(
                        group, image, self._with_inserts(group, image)
                    )

    def _outputs(
        self, key: tuple[int, int, bool], group: _Group, image: _TestImage, degraded: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Every method's output on the crop, in table order, and the seconds each took."""
        futures = self.prefetched.pop(key, None)
        if futures is None:
            futures = self._submit(group, image, degraded)
        low = image.window.cut(degraded)
        generated: dict[str, np.ndarray] = {}
        seconds: dict[str, float] = {}
        for name, generator in self.generators.items():
            started = time.perf_counter()
            generated[name] = image.window.cut(generator(degraded))
            seconds[name] = time.perf_counter() - started
        outputs: dict[str, np.ndarray] = {INPUT: low}
        for name, future in futures.items():
            outputs[name], seconds[name] = future.result()
        outputs.update(generated)
        if PIX2PIX in outputs:
            for strength in self.settings.strengths:
                if strength != 1.0:
                    outputs[strength_label(strength)] = blend(low, outputs[PIX2PIX], strength)
        return outputs, seconds

    # ---------------------------------------------------------------- groups

    def run_group(self, g: int, group: _Group) -> None:
        scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        seconds: dict[str, float] = defaultdict(float)
        rows: list[dict[str, Any]] = []
        panels: list[list[np.ndarray]] = []
        names: list[str] = []
        blur = group.degradation.blur_sigma if group.degradation is not None else 0.0
        for i, image in enumerate(group.images):
            degraded = group.degraded(image)
            outputs, spent = self._outputs((g, i, False), group, image, degraded)
            for name, value in spent.items():
                seconds[name] += value
            reference = image.window.cut(image.reference)
            scorer = _Scorer(reference, outputs[INPUT])
            row: dict[str, Any] = {"image": image.name, "crop": list(_window_tuple(image.window))}
            for name, output in outputs.items():
                if name == INPUT and group.kind is GroupKind.IDENTITY:
                    continue  # the input is the reference
                values = scorer.score(output)
                for key, value in values.items():
                    scores[name][key].append(value)
                    row[f"{name} {key}"] = value
            rows.append(row)
            if image.position in group.detail_positions:
                self._detail(g, i, group, image, outputs, blur)
            if len(panels) < self.settings.grid_cases:
                shown = [n for n in outputs if n in (INPUT, NLM, BM3D, L1, PIX2PIX)]
                names = shown
                last = outputs[shown[-1]]
                panels.append(
                    [*(outputs[n] for n in shown), reference, np.abs(last - reference) * DIFF_GAIN]
                )
        count = len(group.images)
        self.result.results[group.label] = {
            name: _summary(values, seconds.get(name, 0.0), count) for name, values in scores.items()
        }
        self.result.per_image[group.label] = rows
        if panels:
            labels = [*names, "reference", f"|{names[-1]} - ref| x{DIFF_GAIN:g}"]
            short = [name.split(" (")[0].replace(" generator", "") for name in labels]
            save_grid(panels, short, self.output_dir / f"grid_{g + 1}.png")

    def _detail(
        self,
        g: int,
        i: int,
        group: _Group,
        image: _TestImage,
        without: dict[str, np.ndarray],
        blur: float,
    ) -> None:
        placements = self._inserts(image)
        if not placements:
            return
        degraded = self._with_inserts(group, image)
        outputs, _ = self._outputs((g, i, True), group, image, degraded)
        reference = image.window.cut(image.reference)
        rows = self.result.detail.setdefault("per_insert", [])
        for placement in placements:
            row: dict[str, Any] = {
                "image": image.name,
                "insert": placement.insert.label,
                "row": placement.row + image.window.top,
                "col": placement.col + image.window.left,
                "angle": round(placement.angle, 2),
            }
            for name, output in outputs.items():
                row[f"{name} retained"] = detail.retained_contrast(
                    placement, output, without[name], blur
                )
                row[f"{name} cnr"] = detail.cnr(placement, output, reference)
            rows.append(row)

    def summarise_detail(self, group: _Group | None) -> None:
        rows = self.result.detail.get("per_insert", [])
        if group is None or not rows:
            self.result.detail = {}
            return
        methods = [key[: -len(" retained")] for key in rows[0] if key.endswith(" retained")]
        inserts: dict[str, dict[str, dict[str, float]]] = {}
        for insert in detail.DEFAULT_INSERTS:
            chosen = [r for r in rows if r["insert"] == insert.label]
            if not chosen:
                continue
            inserts[insert.label] = {
                m: {
                    "retained": _mean([r[f"{m} retained"] for r in chosen]),
                    "retained_sd": _sd([r[f"{m} retained"] for r in chosen]),
                    "cnr": _mean([r[f"{m} cnr"] for r in chosen]),
                    "cnr_sd": _sd([r[f"{m} cnr"] for r in chosen]),
                    "n": len(chosen),
                }
                for m in methods
            }
        blur = group.degradation.blur_sigma if group.degradation is not None else 0.0
        self.result.detail = {
            "setting": group.label,
            "images": list(dict.fromkeys(r["image"] for r in rows)),
            "template": (
                f"template = the insert's pixel coverage blurred by the degradation's Gaussian "
                f"(sigma {blur:g} px), so the degraded input scores about 1."
            ),
            "inserts": inserts,
            "per_insert": rows,
        }


def _window_tuple(window: Window) -> tuple[int, int, int, int]:
    return window.top, window.left, window.rows, window.cols


def _comparison(result: EvaluationResult) -> None:
    for label, methods in result.results.items():
        if L1 not in methods or PIX2PIX not in methods:
            continue
        l1, gan = methods[L1], methods[PIX2PIX]
        delta = gan["psnr"] - l1["psnr"]
        hf_closer = abs(gan["hf_ratio"] - 1.0) < abs(l1["hf_ratio"] - 1.0)
        gms_higher = gan["gms"] > l1["gms"]
        psnr_ok = delta >= -L1_PSNR_LOSS
        if not all(
            _finite(v) for v in (delta, gan["hf_ratio"], l1["hf_ratio"], gan["gms"], l1["gms"])
        ):
            verdict = "n/a"
        elif hf_closer and gms_higher and psnr_ok:
            verdict = "pix2pix better"
        else:
            failed = [
                text
                for ok, text in (
                    (hf_closer, "HF not closer"),
                    (gms_higher, "GMS not higher"),
                    (psnr_ok, f"PSNR loss > {L1_PSNR_LOSS} dB"),
                )
                if not ok
            ]
            verdict = "; ".join(failed)
        result.comparison[label] = {
            "psnr_l1": l1["psnr"],
            "psnr_pix2pix": gan["psnr"],
            "psnr_delta": delta,
            "hf_l1": l1["hf_ratio"],
            "hf_pix2pix": gan["hf_ratio"],
            "gms_l1": l1["gms"],
            "gms_pix2pix": gan["gms"],
            "hf_closer": hf_closer,
            "gms_higher": gms_higher,
            "psnr_within": psnr_ok,
            "verdict": verdict,
        }


def _target(
    name: str, method: str, setting: str, value: float, required: str, passed: bool | None
) -> dict[str, Any]:
    return {
        "name": name,
        "method": method,
        "setting": setting,
        "value": value,
        "required": required,
        "passed": passed,
    }


def _targets(result: EvaluationResult, groups: list[_Group], strengths: Sequence[float]) -> None:
    rows = [PIX2PIX, *(strength_label(s) for s in strengths if s != 1.0)]
    acceptance = next((g.label for g in groups if g.setting == ACCEPTANCE), None)
    if acceptance is not None:
        methods = result.results[acceptance]
        for row in rows:
            if row not in methods:
                continue
            for name, baseline, required in (
                ("ΔPSNR vs input", INPUT, INPUT_GAIN_TARGET),
                ("ΔPSNR vs NLM", NLM, NLM_GAIN_TARGET),
            ):
                if baseline not in methods:
                    continue
                value = methods[row]["psnr"] - methods[baseline]["psnr"]
                ok = bool(value >= required) if _finite(value) else None
                result.targets.append(
                    _target(name, row, acceptance, value, f">= {required:+g} dB", ok)
                )
    inserts = result.detail.get("inserts", {})
    for insert in DETAIL_TARGETS:
        by_method = inserts.get(insert.label)
        if by_method is None:
            continue
        for row in rows:
            if row not in by_method:
                continue
            value = by_method[row]["retained"]
            ok = bool(value >= RETAINED_TARGET) if _finite(value) else None
            result.targets.append(
                _target(
                    f"retained contrast, {insert.label}",
                    row,
                    result.detail["setting"],
                    value,
                    f">= {RETAINED_TARGET:g}",
                    ok,
                )
            )
    for label, methods in result.results.items():
        if PIX2PIX not in methods:
            continue
        value = methods[PIX2PIX]["period2_ratio_max"]
        ok = bool(value <= PERIOD2_TARGET) if _finite(value) else None
        result.targets.append(
            _target(
                "period-2 ratio, worst image", PIX2PIX, label, value, f"<= {PERIOD2_TARGET:g}", ok
            )
        )
    noisy = {g.label for g in groups if g.kind in (GroupKind.WHITE, GroupKind.CORRELATED)}
    for label, c in result.comparison.items():
        if c["verdict"] == "n/a" or label not in noisy:
            continue  # the twins are compared on noise; blur and identity are in the table
        result.targets.append(
            _target(
                "vs L1 twin: HF and GMS closer, PSNR loss within limit",
                PIX2PIX,
                label,
                c["psnr_delta"],
                f"HF closer, GMS higher, Δ >= -{L1_PSNR_LOSS:g} dB",
                bool(c["hf_closer"] and c["gms_higher"] and c["psnr_within"]),
            )
        )


def run_evaluation(
    run_dir: Path,
    model: Path,
    output_dir: Path,
    settings: EvaluationSettings | None = None,
    l1_model: Path | None = None,
) -> EvaluationResult:
    """Evaluate a generator (and baselines) on the test split of a run.

    Parameters
    ----------
    run_dir : pathlib.Path
        The training run; its ``split.json`` gives the val and test images.
    model : pathlib.Path
        The pix2pix generator (``.onnx`` or a checkpoint).
    output_dir : pathlib.Path
        Where ``evaluation.json``, ``evaluation.md`` and the grids go.
    settings : EvaluationSettings, optional
        Degradation settings and options.
    l1_model : pathlib.Path, optional
        An L1-only generator to compare.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    ValueError
        If the split has no test (or no validation) image or a model cannot
        be loaded.
    """
    started = time.perf_counter()
    settings = settings or EvaluationSettings()
    timings: dict[str, float] = {}
    split = Split.load(run_dir / "split.json")
    test, val = split.subset("test"), split.subset("val")
    if not test:
        raise ValueError(f"The split of {run_dir} has no test images.")
    if not val:
        raise ValueError(f"The split of {run_dir} has no validation images to tune the baselines.")
    if settings.max_images:
        test = test[: settings.max_images]
    val = val[: settings.tune_images]
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    generators: dict[str, Restorer] = {}
    models: dict[str, dict[str, str]] = {}
    if l1_model is not None:
        generators[L1] = load_restorer(l1_model)
        models[L1] = {"path": str(l1_model), "sha256": file_sha256(l1_model)}
    generators[PIX2PIX] = load_restorer(model)
    models[PIX2PIX] = {"path": str(model), "sha256": file_sha256(model)}
    stage = time.perf_counter()
    images = load_images(record_paths(test + val))
    timings["load images"] = time.perf_counter() - stage
    logger.info("stage load images: %.1f s (%d files)", timings["load images"], len(images))
    bm3d_at = settings.bm3d_at()
    use_bm3d = bool(bm3d_at) and bm3d_available()
    if bm3d_at and not use_bm3d:
        logger.warning("bm3d is not installed; the BM3D baseline is skipped.")
    result = EvaluationResult(test_images=len(test), models=models)
    output_dir.mkdir(parents=True, exist_ok=True)

    synthetic_test = [r for r in test if r.low is None]
    synthetic_val = [r for r in val if r.low is None] or val
    test_images = _test_images(synthetic_test, images, settings.crop, settings.context)
    detail_at = settings.detail_at()
    groups: list[_Group] = []
    for index, raw in enumerate(settings.settings):
        if not synthetic_test:
            break
        setting = normalise_setting(raw)
        degradation = setting_degradation(setting)
        seed = settings.seed + 1000 * index
        groups.append(
            _Group(
                label=degradation.label(),
                kind=setting_kind(setting),
                setting=setting,
                degradation=degradation,
                seed=seed,
                images=test_images,
                val=make_examples(synthetic_val, images, degradation, seed=seed + 1),
                with_bm3d=use_bm3d and setting in bm3d_at,
                detail_positions=(
                    _detail_positions(len(test_images), settings.detail_images)
                    if setting == detail_at
                    else frozenset()
                ),
            )
        )
    real_test = [r for r in test if r.low is not None]
    if real_test:
        real_val = [r for r in val if r.low is not None] or val
        degradation = setting_degradation(settings.settings[0])  # synthetic val fallback only
        groups.append(
            _Group(
                label=REAL_PAIRS,
                kind=GroupKind.REAL,
                setting=None,
                degradation=None,
                seed=settings.seed - 1,
                images=_test_images(real_test, images, settings.crop, settings.context),
                val=make_examples(real_val, images, degradation, seed=settings.seed - 1),
                with_bm3d=use_bm3d,
            )
        )
    for group in groups:
        result.groups[group.label] = {
            "kind": str(group.kind),
            "setting": list(group.setting) if group.setting else None,
            "degradation": group.degradation.as_dict() if group.degradation else None,
            "seed": group.seed,
            "bm3d": group.with_bm3d,
            "detail_images": len(group.detail_positions),
        }
    crop_text = (
        "whole images"
        if settings.crop == 0
        else f"the central crop of at most {settings.crop}×{settings.crop} px of each image"
    )
    result.protocol = {
        "crop": settings.crop,
        "context": settings.context,
        "crop_text": crop_text,
        "generator_input": "the whole degraded image, as the node runs it; output cropped",
        "baseline_input": f"the crop plus {settings.context} px of context, cut away after",
        "sigma_estimate": "σ̂ = skimage estimate_sigma / its response to unit noise of the "
        "setting's correlation (0.14 for 1 px, 1 for white noise)",
        "bm3d_profile": str(settings.bm3d_profile),
        "strengths": list(settings.strengths),
        "workers": settings.workers,
        "seed": settings.seed,
        "regions": "training.quality.region_masks: Gaussian 1/48 of the shorter side, central "
        "area (10 % border left out), lung < 35th percentile, dense > 60th",
        "identity_baselines": "NLM/BM3D at the identity setting use the factor tuned at the "
        "acceptance (or first noisy) setting",
    }
    runner = _Runner(settings.workers)
    evaluation = _Evaluation(settings, generators, groups, output_dir, runner, result)
    try:
        stage = time.perf_counter()
        evaluation.tune()
        timings["tuning"] = time.perf_counter() - stage
        logger.info("stage tuning: %.1f s", timings["tuning"])
        stage = time.perf_counter()
        evaluation.prefetch()
        for g, group in enumerate(groups):
            group_started = time.perf_counter()
            evaluation.run_group(g, group)
            timings[group.label] = time.perf_counter() - group_started
            summary = result.results[group.label]
            logger.info(
                "stage %s: %.1f s; PSNR %s",
                group.label,
                timings[group.label],
                {k: round(v["psnr"], 3) for k, v in summary.items()},
            )
    finally:
        runner.close()
    detail_group = next((g for g in groups if g.detail_positions), None)
    evaluation.summarise_detail(detail_group)
    _comparison(result)
    _targets(result, groups, settings.strengths)
    timings["total"] = time.perf_counter() - started
    result.timings = timings
    logger.info("stage total: %.1f s", timings["total"])
    (output_dir / "evaluation.json").write_text(
        json.dumps(result.as_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    (output_dir / "evaluation.md").write_text(result.report() + "\n", encoding="utf-8")
    return result
