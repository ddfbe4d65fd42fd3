"""Honest evaluation on the held-out test split, against simple baselines.

For each degradation setting the test images of a run's ``split.json`` (never
seen in training or model selection) are degraded with a fixed seed; test
records that are real acquired pairs form one more row group, ``real pairs``,
with their own low-quality images. Every group is restored by:

* nothing (the degraded input itself);
* non-local means (scikit-image ``denoise_nl_means``, 5×5 patches, search
  distance 6, fast mode) with ``h = k · σ̂``, where ``σ̂`` is scikit-image's
  ``estimate_sigma`` of the degraded image and ``k`` is tuned on the
  validation split for that setting;
* BM3D (PyPI ``bm3d``) with ``sigma_psd = k · σ̂``, ``k`` tuned the same way;
* the L1-only generator, when given;
* the pix2pix generator.

PSNR and SSIM (data range 1.0, see :mod:`training.metrics`) are averaged
over the test images. Tuning uses the central 512×512 crops of a few
validation images to keep it affordable on a CPU; testing uses full images.
A PNG grid per setting shows degraded | baselines | generators | reference |
absolute difference for a few test cases.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.model_meta import file_sha256
from training.data import Example, load_images, make_examples, record_paths
from training.degrade import Degradation
from training.metrics import METRIC_DEFINITIONS, psnr, ssim
from training.pairs import Split

logger = logging.getLogger(__name__)

Restorer = Callable[[np.ndarray], np.ndarray]

DEFAULT_SETTINGS: tuple[tuple[float, float, float], ...] = (
    (0.001, 1e-5, 0.5),
    (0.002, 2e-5, 0.8),
    (0.004, 5e-5, 1.2),
)
"""Default (a, b, blur sigma) settings: milder, the acceptance setting, harsher."""

NLM_FACTORS = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5)
BM3D_FACTORS = (0.75, 1.0, 1.3)
GRID_STEP = 1.4
"""Factor between successive grid points when a tuning grid is extended past an edge."""
MAX_GRID_EXTENSIONS = 4
TUNE_CROP = 512
INPUT = "degraded input"
NLM = "NLM (tuned on val)"
BM3D = "BM3D (tuned on val)"
L1 = "L1-only generator"
PIX2PIX = "pix2pix generator"
REAL_PAIRS = "real pairs"
DIFF_GAIN = 10.0
"""The absolute-difference panel of the grids is multiplied by this."""


@dataclass(frozen=True)
class EvaluationSettings:
    """What to evaluate.

    Attributes
    ----------
    settings : tuple of (a, b, sigma)
        Degradation settings, each a row group of the table.
    bm3d : bool
        Include the BM3D baseline (skipped with a warning if not installed).
    bm3d_settings : tuple of (a, b, sigma) or None
        Run BM3D only at these settings (None: at every setting). BM3D takes
        about a minute per 1024×1024 image on one CPU core.
    max_images : int
        Evaluate at most this many test images (0: all).
    tune_images : int
        Validation images used to tune the baselines.
    grid_cases : int
        Test cases drawn in each PNG grid (0: no grid).
    seed : int
        Seed of the degradations.
    threads : int or None
        CPU threads for PyTorch (checkpoints and the baselines run in this process).
    """

    settings: tuple[tuple[float, float, float], ...] = DEFAULT_SETTINGS
    bm3d: bool = True
    bm3d_settings: tuple[tuple[float, float, float], ...] | None = None
    max_images: int = 0
    tune_images: int = 6
    grid_cases: int = 3
    seed: int = 1234
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("At least one degradation setting is needed.")
        for setting in self.settings:
            Degradation(*setting)  # validates the values
        for setting in self.bm3d_settings or ():
            if setting not in self.settings:
                raise ValueError(f"The BM3D setting {setting} is not one of the settings.")
        if self.max_images < 0 or self.grid_cases < 0 or self.tune_images < 1:
            raise ValueError(
                "max_images and grid_cases must be >= 0 and tune_images >= 1; got "
                f"{self.max_images}, {self.grid_cases}, {self.tune_images}."
            )


@dataclass
class EvaluationResult:
    """Scores per setting and method, and how the baselines were tuned."""

    test_images: int
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    per_image: dict[str, list[dict[str, float | str]]] = field(default_factory=dict)
    nlm: dict[str, dict[str, float]] = field(default_factory=dict)
    bm3d: dict[str, dict[str, float]] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)

    def table(self) -> str:
        """The results as a Markdown table."""
        lines = [
            f"Test split: {self.test_images} images. PSNR in dB and SSIM, data range 1.0; "
            "mean ± standard deviation over images.",
            "",
            "| setting | method | PSNR (dB) | SSIM | ΔPSNR vs input | ΔPSNR vs NLM |",
            "|---|---|---|---|---|---|",
        ]
        for setting, methods in self.results.items():
            base = methods[INPUT]["psnr"]
            nlm = methods.get(NLM, {}).get("psnr", math.nan)
            for method, score in methods.items():
                lines.append(
                    f"| {setting} | {method} | {score['psnr']:.2f} ± {score['psnr_sd']:.2f} | "
                    f"{score['ssim']:.4f} ± {score['ssim_sd']:.4f} | "
                    f"{score['psnr'] - base:+.2f} | {score['psnr'] - nlm:+.2f} |"
                )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (written as ``evaluation.json``)."""
        return {
            "test_images": self.test_images,
            "metric_definitions": METRIC_DEFINITIONS,
            "results": self.results,
            "nlm": self.nlm,
            "bm3d": self.bm3d,
            "models": self.models,
            "per_image": self.per_image,
        }


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


def nlm(image: np.ndarray, factor: float) -> np.ndarray:
    """Non-local means with ``h = factor · σ̂`` (σ̂ from ``estimate_sigma``)."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(estimate_sigma(image))
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


def bm3d_denoise(image: np.ndarray, factor: float) -> np.ndarray:
    """BM3D with ``sigma_psd = factor · σ̂`` (σ̂ from ``estimate_sigma``)."""
    import bm3d
    from skimage.restoration import estimate_sigma

    sigma = max(float(estimate_sigma(image)), 1e-4)
    out = bm3d.bm3d(image.astype(np.float64), sigma_psd=factor * sigma)
    return np.clip(np.asarray(out), 0.0, 1.0).astype(np.float32)


def _centre(image: np.ndarray, size: int) -> np.ndarray:
    rows, cols = min(size, image.shape[0]), min(size, image.shape[1])
    top, left = (image.shape[0] - rows) // 2, (image.shape[1] - cols) // 2
    return image[top : top + rows, left : left + cols]


def tune_factor(
    method: Callable[[np.ndarray, float], np.ndarray],
    examples: Sequence[Example],
    factors: Sequence[float],
    max_extensions: int = MAX_GRID_EXTENSIONS,
) -> tuple[float, dict[str, float]]:
    """The factor with the best mean PSNR on the central crops of `examples`.

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
    crops = [(_centre(e.degraded, TUNE_CROP), _centre(e.reference, TUNE_CROP)) for e in examples]

    def score(factor: float) -> float:
        return float(np.mean([psnr(ref, method(low, factor)) for low, ref in crops]))

    scores = {float(factor): score(float(factor)) for factor in factors}
    for _ in range(max_extensions):
        best = max(scores, key=lambda key: scores[key])
        if best == min(scores):
            candidate = round(best / GRID_STEP, 4)
        elif best == max(scores):
            candidate = round(best * GRID_STEP, 4)
        else:
            break
        scores[candidate] = score(candidate)
    best = max(scores, key=lambda key: scores[key])
    if len(scores) > 1 and best in (min(scores), max(scores)):
        logger.warning("The best factor %g is at the edge of the range searched.", best)
    return best, {f"{factor:g}": scores[factor] for factor in sorted(scores)}


# --------------------------------------------------------------------------- run


def _summary(values: list[tuple[float, float]]) -> dict[str, float]:
    p = np.array([v[0] for v in values], dtype=np.float64)
    s = np.array([v[1] for v in values], dtype=np.float64)
    return {
        "psnr": float(p.mean()),
        "psnr_sd": float(p.std()),
        "ssim": float(s.mean()),
        "ssim_sd": float(s.std()),
    }


def evaluate_examples(
    examples: Sequence[Example],
    restorers: dict[str, Restorer],
    grid_cases: int = 0,
) -> tuple[dict[str, dict[str, float]], list[dict[str, float | str]], list[list[np.ndarray]]]:
    """Score every restorer on every example.

    Returns
    -------
    tuple
        Mean scores per method (the degraded input first), per-image rows and,
        for the first `grid_cases` examples, the panels of the grid.
    """
    scores: dict[str, list[tuple[float, float]]] = {INPUT: []}
    seconds: dict[str, float] = {}
    rows: list[dict[str, float | str]] = []
    panels: list[list[np.ndarray]] = []
    for index, example in enumerate(examples):
        row: dict[str, float | str] = {"image": example.name}
        outputs = {INPUT: example.degraded}
        for name, restore in restorers.items():
            started = time.perf_counter()
            outputs[name] = restore(example.degraded)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        for name, output in outputs.items():
            value = (psnr(example.reference, output), ssim(example.reference, output))
            scores.setdefault(name, []).append(value)
            row[f"{name} psnr"], row[f"{name} ssim"] = value
        rows.append(row)
        if index < grid_cases:
            last = outputs[list(outputs)[-1]]
            panels.append(
                [*outputs.values(), example.reference, np.abs(last - example.reference) * DIFF_GAIN]
            )
    summary = {name: _summary(values) for name, values in scores.items()}
    for name, total in seconds.items():
        summary[name]["seconds_per_image"] = total / max(len(examples), 1)
    return summary, rows, panels


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
    settings = settings or EvaluationSettings()
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
    images = load_images(record_paths(test + val))
    generators: dict[str, Restorer] = {}
    models: dict[str, dict[str, str]] = {}
    if l1_model is not None:
        generators[L1] = load_restorer(l1_model)
        models[L1] = {"path": str(l1_model), "sha256": file_sha256(l1_model)}
    generators[PIX2PIX] = load_restorer(model)
    models[PIX2PIX] = {"path": str(model), "sha256": file_sha256(model)}
    use_bm3d = settings.bm3d and bm3d_available()
    if settings.bm3d and not use_bm3d:
        logger.warning("bm3d is not installed; the BM3D baseline is skipped.")
    result = EvaluationResult(test_images=len(test), models=models)
    output_dir.mkdir(parents=True, exist_ok=True)
    synthetic_test = [r for r in test if r.low is None]
    synthetic_val = [r for r in val if r.low is None] or val
    groups: list[tuple[str, list[Example], list[Example], bool]] = []
    for index, (a, b, sigma) in enumerate(settings.settings):
        if not synthetic_test:
            break
        degradation = Degradation(noise_a=a, noise_b=b, blur_sigma=sigma)
        seed = settings.seed + 1000 * index
        groups.append(
            (
                degradation.label(),
                make_examples(synthetic_val, images, degradation, seed=seed + 1),
                make_examples(synthetic_test, images, degradation, seed=seed),
                settings.bm3d_settings is None or (a, b, sigma) in settings.bm3d_settings,
            )
        )
    real_test = [r for r in test if r.low is not None]
    if real_test:
        real_val = [r for r in val if r.low is not None] or val
        degradation = Degradation(*settings.settings[0])  # only for synthetic val fallbacks
        groups.append(
            (
                REAL_PAIRS,
                make_examples(real_val, images, degradation, seed=settings.seed - 1),
                make_examples(real_test, images, degradation, seed=settings.seed - 1),
                True,
            )
        )
    for index, (label, val_examples, test_examples, with_bm3d) in enumerate(groups):
        nlm_factor, nlm_scores = tune_factor(nlm, val_examples, NLM_FACTORS)
        result.nlm[label] = {
            "factor": nlm_factor,
            **{f"val_psnr@{k}": v for k, v in nlm_scores.items()},
        }
        logger.info("%s: NLM h = %.2f·σ̂ (val PSNR %s)", label, nlm_factor, nlm_scores)
        restorers: dict[str, Restorer] = {NLM: functools.partial(nlm, factor=nlm_factor)}
        if use_bm3d and with_bm3d:
            bm3d_factor, bm3d_scores = tune_factor(bm3d_denoise, val_examples, BM3D_FACTORS)
            result.bm3d[label] = {
                "factor": bm3d_factor,
                **{f"val_psnr@{k}": v for k, v in bm3d_scores.items()},
            }
            logger.info("%s: BM3D σ = %.2f·σ̂ (val PSNR %s)", label, bm3d_factor, bm3d_scores)
            restorers[BM3D] = functools.partial(bm3d_denoise, factor=bm3d_factor)
        restorers.update(generators)
        summary, rows, panels = evaluate_examples(test_examples, restorers, settings.grid_cases)
        result.results[label] = summary
        result.per_image[label] = rows
        logger.info("%s: %s", label, {k: round(v["psnr"], 3) for k, v in summary.items()})
        if panels:
            labels = [*summary.keys(), "reference", f"|{list(summary)[-1]} - ref| x{DIFF_GAIN:g}"]
            short = [name.split(" (")[0].replace(" generator", "") for name in labels]
            save_grid(panels, short, output_dir / f"grid_{index + 1}.png")
    (output_dir / "evaluation.json").write_text(
        json.dumps(result.as_dict(), indent=1) + "\n", encoding="utf-8"
    )
    (output_dir / "evaluation.md").write_text(result.table() + "\n", encoding="utf-8")
    return result
