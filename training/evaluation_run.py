"""The work of one evaluation run: tune the baselines, restore, score, measure detail.

:class:`EvaluationRun` tunes NLM and BM3D per group (the identity group
borrows a noisy group's factors), queues the baseline jobs so that worker
processes overlap the generators, restores and scores every image of every
group, draws the grids, and measures detail retention
(:mod:`training.detail`) on the chosen images of the chosen group.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.noise import NoiseCalibration, adapt_strength
from dicom_node.strength import blend
from training import detail
from training.baselines import (
    BM3D_FACTORS,
    BM3D_TUNE_CROP,
    NLM_FACTORS,
    Baseline,
    BaselineRunner,
    bm3d_denoise,
    nlm,
    run_baseline,
    sigma_estimate_response,
    tune_factor,
)
from training.evaluation_groups import EvalImage, Group
from training.evaluation_report import EvaluationResult
from training.evaluation_scores import ImageScorer, finite_sd, nan_mean, summarise
from training.evaluation_settings import (
    ACCEPTANCE,
    BM3D,
    INPUT,
    L1,
    NLM,
    NODE,
    PIX2PIX,
    EvaluationSettings,
    GroupKind,
    strength_label,
)
from training.grids import DIFF_GAIN, save_grid
from training.restorers import Restorer

logger = logging.getLogger(__name__)


class EvaluationRun:
    """One evaluation run over its groups; :func:`training.evaluate.run_evaluation` drives it.

    Parameters
    ----------
    settings : EvaluationSettings
        What to evaluate.
    generators : dict
        The generators by row name, in table order.
    groups : list of Group
        The row groups (:func:`training.evaluation_groups.build_groups`).
    output_dir : pathlib.Path
        Where the grids go.
    runner : BaselineRunner
        Runs the NLM and BM3D jobs.
    result : EvaluationResult
        Filled in by the methods.
    """

    def __init__(
        self,
        settings: EvaluationSettings,
        generators: dict[str, Restorer],
        groups: list[Group],
        output_dir: Path,
        runner: BaselineRunner,
        result: EvaluationResult,
    ) -> None:
        self.settings = settings
        self.generators = generators
        self.groups = groups
        self.output_dir = output_dir
        self.runner = runner
        self.result = result
        self.calibration: NoiseCalibration | None = None
        """The pix2pix model's noise calibration: with one, the node's row is added."""
        self.applied: dict[str, list[float]] = defaultdict(list)
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

    def _inserts(self, image: EvalImage) -> list[detail.Placement]:
        """Placements of the inserts in crop coordinates (cached per image)."""
        if image.name not in self.placements:
            rng = np.random.default_rng([self.settings.seed, 7, image.position])
            self.placements[image.name] = detail.place_inserts(
                image.window.cut(image.reference), detail.DEFAULT_INSERTS, rng
            )
        return self.placements[image.name]

    def _with_inserts(self, group: Group, image: EvalImage) -> np.ndarray:
        window = image.window
        placements = [p.shifted(window.top, window.left) for p in self._inserts(image)]
        return group.degraded(image, detail.add_inserts(image.reference, placements))

    def _submit(
        self, group: Group, image: EvalImage, degraded: np.ndarray
    ) -> dict[str, Future[Any]]:
        context = np.ascontiguousarray(image.context.cut(degraded))
        inner = image.window.inside(image.context)
        return {
            name: self.runner.submit(run_baseline, method, factor, context, inner)
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
        self, key: tuple[int, int, bool], group: Group, image: EvalImage, degraded: np.ndarray
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
        if PIX2PIX in outputs and self.calibration is not None:
            applied = adapt_strength(1.0, degraded, self.calibration)
            outputs[NODE] = blend(low, outputs[PIX2PIX], applied.applied)
            self.applied[group.label].append(applied.applied)
        if PIX2PIX in outputs:
            for strength in self.settings.strengths:
                if strength != 1.0:
                    outputs[strength_label(strength)] = blend(low, outputs[PIX2PIX], strength)
        return outputs, seconds

    # ---------------------------------------------------------------- groups

    def run_group(self, g: int, group: Group) -> None:
        """Restore and score every image of group number `g`; draw its grid; measure detail."""
        scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        seconds: dict[str, float] = defaultdict(float)
        rows: list[dict[str, Any]] = []
        panels: list[list[np.ndarray]] = []
        names: list[str] = []
        for i, image in enumerate(group.images):
            degraded = group.degraded(image)
            outputs, spent = self._outputs((g, i, False), group, image, degraded)
            for name, value in spent.items():
                seconds[name] += value
            reference = image.window.cut(image.reference)
            scorer = ImageScorer(reference, outputs[INPUT])
            row: dict[str, Any] = {"image": image.name, "crop": image.window.as_list()}
            for name, output in outputs.items():
                if name == INPUT and group.kind is GroupKind.IDENTITY:
                    continue  # the input is the reference
                values = scorer.score(output)
                for key, value in values.items():
                    scores[name][key].append(value)
                    row[f"{name} {key}"] = value
            rows.append(row)
            if image.position in group.detail_positions:
                self._detail(g, i, group, image, outputs)
            if len(panels) < self.settings.grid_cases:
                shown = [n for n in outputs if n in (INPUT, NLM, BM3D, L1, PIX2PIX)]
                names = shown
                last = outputs[shown[-1]]
                panels.append(
                    [*(outputs[n] for n in shown), reference, np.abs(last - reference) * DIFF_GAIN]
                )
        count = len(group.images)
        self.result.results[group.label] = {
            name: summarise(values, seconds.get(name, 0.0), count)
            for name, values in scores.items()
        }
        self.result.per_image[group.label] = rows
        applied = self.applied.get(group.label)
        if applied:
            self.result.adaptive_strength[group.label] = {
                "mean": float(np.mean(applied)),
                "min": float(np.min(applied)),
                "max": float(np.max(applied)),
            }
        if panels:
            labels = [*names, "reference", f"|{names[-1]} - ref| x{DIFF_GAIN:g}"]
            short = [name.split(" (")[0].replace(" generator", "") for name in labels]
            save_grid(panels, short, self.output_dir / f"grid_{g + 1}.png")

    def _detail(
        self,
        g: int,
        i: int,
        group: Group,
        image: EvalImage,
        without: dict[str, np.ndarray],
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
                row[f"{name} retained"] = detail.retained_contrast(placement, output, without[name])
                row[f"{name} cnr"] = detail.cnr(placement, output, reference)
            rows.append(row)

    def summarise_detail(self, group: Group | None) -> None:
        """Mean retained contrast and CNR per insert and method into ``result.detail``."""
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
                    "retained": nan_mean([r[f"{m} retained"] for r in chosen]),
                    "retained_sd": finite_sd([r[f"{m} retained"] for r in chosen]),
                    "cnr": nan_mean([r[f"{m} cnr"] for r in chosen]),
                    "cnr_sd": finite_sd([r[f"{m} cnr"] for r in chosen]),
                    "n": len(chosen),
                }
                for m in methods
            }
        blur = group.degradation.blur_sigma if group.degradation is not None else 0.0
        self.result.detail = {
            "setting": group.label,
            "images": list(dict.fromkeys(r["image"] for r in rows)),
            "template": _template_text(blur),
            "inserts": inserts,
            "per_insert": rows,
        }


def _template_text(blur: float) -> str:
    """What the retained contrast compares with, for the detail table and the JSON."""
    if blur > 0.0:
        degraded = (
            f"the degraded input, blurred by the degradation's Gaussian (sigma {blur:g} px), "
            "scores below 1 for thin lines"
        )
    else:
        degraded = "the degraded input (no blur at this setting) scores about 1"
    return (
        "template = the clean insert's pixel coverage (no blur), so a perfect restorer "
        f"scores 1; {degraded}, and its column shows what each method gained over it."
    )
