"""The result of an evaluation: its tables (Markdown) and ``evaluation.json``.

:class:`EvaluationResult` holds the summary scores per row group and method,
the per-image and per-insert rows, the baselines' tuning, the twin
comparison, the targets, the timings and the protocol; :meth:`~EvaluationResult.report`
writes every table and :meth:`~EvaluationResult.as_dict` the JSON (NaN and
infinities as null).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.evaluation_settings import INPUT, NLM
from training.evaluation_targets import L1_PSNR_LOSS
from training.metrics import METRIC_DEFINITIONS

logger = logging.getLogger(__name__)


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
    adaptive_strength: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per group: mean, min and max strength the node applied (noise-adaptive row)."""

    def table(self) -> str:
        """The main table: PSNR, SSIM, HF ratio, GMS and period-2 ratio per group and method."""
        lines = [
            f"Test split: {self.test_images} images, scored on "
            f"{self.protocol.get('crop_text', 'whole images')}. PSNR in dB and SSIM (data "
            "range 1.0), mean ± SD over images; HF ratio = power above half Nyquist over the "
            "reference's (< 1 smoother); GMS = gradient-magnitude similarity (1 = same edges); "
            "period-2 = period2_peak(output) / max(period2_peak(input), period2_peak(reference)), "
            "mean / worst image.",
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
        for label, values in self.adaptive_strength.items():
            lines.append(
                f"* strength the node applied ({label}): mean {values['mean']:.2f}, "
                f"min {values['min']:.2f}, max {values['max']:.2f}."
            )
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
                    "period2_ratio": "period2_peak(output)['max'] / "
                    "max(period2_peak(input)['max'], period2_peak(reference)['max'])",
                    "period2_vs_input": "period2_peak(output)['max'] / period2_peak(input)['max']",
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
                "adaptive_strength": self.adaptive_strength,
                "per_image": self.per_image,
            }
        )
