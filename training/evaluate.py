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
contrast (the fraction of the clean insert's contrast in the output: 1 for a
perfect restorer, below 1 for the blurred input's thin lines, whose values
are reported beside every method's) and the CNR of every insert for every
method.

**Targets** (pass/fail in ``evaluation.json``): the acceptance gains, the
retained contrast of 2-px lines at 4 % and 8-px discs at 2 % (≥ 0.8), the
period-2 ratio (≤ 2 on every image) and, with ``--l1-model``, the GAN model
against its L1-only twin (HF ratio and GMS closer to the reference for at
most 0.3 dB of PSNR).

NLM and BM3D can run in worker processes (``workers``) while the generators
run in the main process; results do not depend on the number of workers.

**Modules.** This module runs the whole evaluation (:func:`run_evaluation`)
and re-exports the public names of its parts:

* :mod:`training.evaluation_settings`: settings, row names, :class:`EvaluationSettings`;
* :mod:`training.restorers`: the generators under test (ONNX or checkpoint);
* :mod:`training.baselines`: NLM, BM3D, σ̂, factor tuning, the worker pool;
* :mod:`training.crops`: the scored window and the baselines' context;
* :mod:`training.evaluation_groups`: the row groups and their test images;
* :mod:`training.evaluation_scores`: the scores of one output and their summaries;
* :mod:`training.evaluation_run`: tuning, restoring, scoring and detail of one run;
* :mod:`training.grids`: the PNG grids;
* :mod:`training.evaluation_targets`: the targets and the GAN-vs-L1 comparison;
* :mod:`training.evaluation_report`: :class:`EvaluationResult`, its tables and JSON.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from dicom_node.model_meta import file_sha256
from dicom_node.noise import NoiseCalibration
from training.baselines import (
    BM3D_FACTORS,
    BM3D_TUNE_CROP,
    GRID_STEP,
    MAX_GRID_EXTENSIONS,
    NLM_FACTORS,
    TUNE_CROP,
    Baseline,
    BaselineRunner,
    BM3DProfileValues,
    bm3d_available,
    bm3d_denoise,
    nlm,
    sigma_estimate_response,
    tune_factor,
)
from training.crops import Window, central_window, context_window
from training.data import load_images, record_paths
from training.errors import EvaluationError
from training.evaluation_groups import build_groups
from training.evaluation_report import EvaluationResult
from training.evaluation_run import EvaluationRun
from training.evaluation_scores import SCORE_KEYS
from training.evaluation_settings import (
    ACCEPTANCE,
    BLUR_ONLY,
    BM3D,
    CORRELATED,
    DEFAULT_BM3D_SETTINGS,
    DEFAULT_CONTEXT,
    DEFAULT_CROP,
    DEFAULT_DETAIL_IMAGES,
    DEFAULT_SETTINGS,
    HARSHER,
    IDENTITY,
    INPUT,
    L1,
    MILDER,
    NLM,
    PIX2PIX,
    REAL_PAIRS,
    EvaluationSettings,
    GroupKind,
    Setting,
    normalise_setting,
    setting_degradation,
    setting_kind,
    strength_label,
)
from training.evaluation_targets import (
    DETAIL_TARGETS,
    INPUT_GAIN_TARGET,
    L1_PSNR_LOSS,
    NLM_GAIN_TARGET,
    PERIOD2_TARGET,
    RETAINED_TARGET,
    check_targets,
    compare_with_l1,
)
from training.export_metadata import read_metadata
from training.grids import DIFF_GAIN, save_grid
from training.restorers import Restorer, checkpoint_restorer, load_restorer, onnx_restorer
from training.split import Split

__all__ = [
    "ACCEPTANCE",
    "BLUR_ONLY",
    "BM3D",
    "BM3D_FACTORS",
    "BM3D_TUNE_CROP",
    "CORRELATED",
    "DEFAULT_BM3D_SETTINGS",
    "DEFAULT_CONTEXT",
    "DEFAULT_CROP",
    "DEFAULT_DETAIL_IMAGES",
    "DEFAULT_SETTINGS",
    "DETAIL_TARGETS",
    "DIFF_GAIN",
    "GRID_STEP",
    "HARSHER",
    "IDENTITY",
    "INPUT",
    "INPUT_GAIN_TARGET",
    "L1",
    "L1_PSNR_LOSS",
    "MAX_GRID_EXTENSIONS",
    "MILDER",
    "NLM",
    "NLM_FACTORS",
    "NLM_GAIN_TARGET",
    "PERIOD2_TARGET",
    "PIX2PIX",
    "REAL_PAIRS",
    "RETAINED_TARGET",
    "SCORE_KEYS",
    "TUNE_CROP",
    "BM3DProfileValues",
    "Baseline",
    "EvaluationResult",
    "EvaluationSettings",
    "GroupKind",
    "Restorer",
    "Setting",
    "Window",
    "bm3d_available",
    "bm3d_denoise",
    "central_window",
    "checkpoint_restorer",
    "context_window",
    "load_restorer",
    "nlm",
    "normalise_setting",
    "onnx_restorer",
    "run_evaluation",
    "save_grid",
    "setting_degradation",
    "setting_kind",
    "sigma_estimate_response",
    "strength_label",
    "tune_factor",
]

logger = logging.getLogger(__name__)


def _protocol(settings: EvaluationSettings) -> dict[str, Any]:
    """How the methods were run and scored (``protocol`` in ``evaluation.json``)."""
    crop_text = (
        "whole images"
        if settings.crop == 0
        else f"the central crop of at most {settings.crop}×{settings.crop} px of each image"
    )
    return {
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
    EvaluationError
        If the split has no test (or no validation) image or a model cannot
        be loaded.
    training.errors.SplitError
        If the run's ``split.json`` cannot be read.
    """
    started = time.perf_counter()
    settings = settings or EvaluationSettings()
    timings: dict[str, float] = {}
    split = Split.load(run_dir / "split.json")
    test, val = split.subset("test"), split.subset("val")
    if not test:
        raise EvaluationError(f"The split of {run_dir} has no test images.")
    if not val:
        raise EvaluationError(
            f"The split of {run_dir} has no validation images to tune the baselines."
        )
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
    groups = build_groups(settings, test, val, images, bm3d_at if use_bm3d else ())
    for group in groups:
        result.groups[group.label] = group.info()
    result.protocol = _protocol(settings)
    runner = BaselineRunner(settings.workers)
    evaluation = EvaluationRun(settings, generators, groups, output_dir, runner, result)
    if model.suffix.lower() == ".onnx":
        evaluation.calibration = NoiseCalibration.from_props(read_metadata(model))
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
    result.comparison = compare_with_l1(result.results)
    result.targets = check_targets(
        result.results, result.groups, result.detail, result.comparison, settings.strengths
    )
    timings["total"] = time.perf_counter() - started
    result.timings = timings
    logger.info("stage total: %.1f s", timings["total"])
    (output_dir / "evaluation.json").write_text(
        json.dumps(result.as_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    (output_dir / "evaluation.md").write_text(result.report() + "\n", encoding="utf-8")
    return result
