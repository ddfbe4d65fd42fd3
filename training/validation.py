"""Validation: the generator on full-size images, padded as the node pads them, and scored.

Rank 0 validates after every epoch (PSNR/SSIM and the power ratio above half
Nyquist on the full-size validation images at one fixed degradation);
:func:`selection_score` decides which epoch becomes ``best.pt``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dicom_node.tiling import crop as crop_padding
from dicom_node.tiling import pad_to_multiple
from training.data import Example
from training.metrics import psnr, ssim
from training.networks import SIZE_MULTIPLE
from training.quality import hf_power_ratio


@torch.no_grad()
def enhance(generator: nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Run the generator on a full-size [0, 1] image, padded exactly as the node pads it.

    The padding is :func:`dicom_node.tiling.pad_to_multiple` (reflection,
    split evenly between both sides), so validation sees what the node does.
    """
    padded, pad = pad_to_multiple(np.asarray(image, dtype=np.float32), SIZE_MULTIPLE)
    tensor = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device)
    was_training = generator.training
    generator.eval()
    out = generator(tensor)
    generator.train(was_training)
    return np.ascontiguousarray(crop_padding(out[0, 0].float().cpu().numpy(), pad))


def validate(
    generator: nn.Module, examples: list[Example], device: torch.device
) -> dict[str, float]:
    """Mean PSNR, SSIM and power ratio above half Nyquist of the outputs against the references.

    ``hf_ratio`` is the geometric mean over images of
    :func:`training.quality.hf_power_ratio` (1: the output keeps the
    reference's fine texture; below 1: smoother).
    """
    if not examples:
        return {"psnr": float("nan"), "ssim": float("nan"), "hf_ratio": float("nan")}
    scores = [
        (psnr(e.reference, out), ssim(e.reference, out), hf_power_ratio(out, e.reference))
        for e in examples
        for out in [enhance(generator, e.degraded, device)]
    ]
    return {
        "psnr": float(np.mean([s[0] for s in scores])),
        "ssim": float(np.mean([s[1] for s in scores])),
        "hf_ratio": float(np.exp(np.mean([np.log(max(s[2], 1e-12)) for s in scores]))),
    }


def spread(items: list[Any], count: int) -> list[Any]:
    """At most `count` items, evenly spread over `items` (all of them when count is 0)."""
    if count <= 0 or count >= len(items):
        return list(items)
    positions = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[int(i)] for i in positions]


def selection_score(metrics: dict[str, float], select: str, floor: float) -> float:
    """How good an epoch is for `select`; higher is better, ``-inf`` when not eligible.

    ``"psnr"``: the validation PSNR. ``"texture"``: minus the distance of the
    log high-frequency power ratio from 0, for epochs whose PSNR is at
    least `floor`.
    """
    value = metrics.get("psnr", float("nan"))
    if math.isnan(value):
        return -math.inf
    if select == "psnr":
        return value
    ratio = metrics.get("hf_ratio", float("nan"))
    if value < floor or math.isnan(ratio) or ratio <= 0:
        return -math.inf
    return -abs(math.log(ratio))
