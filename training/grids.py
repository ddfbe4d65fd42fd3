"""PNG grids of evaluation outputs, side by side, for looking at them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.crops import centre_crop

logger = logging.getLogger(__name__)

GRID_PANEL = 384
"""Side of the central crop of each panel, in pixels."""
DIFF_GAIN = 10.0
"""The absolute-difference panel of the grids is multiplied by this."""


def save_grid(panels: list[list[np.ndarray]], labels: Sequence[str], path: Path) -> None:
    """Write rows of equally cropped panels side by side as an 8-bit PNG with a header."""
    from PIL import Image, ImageDraw

    crops = [[centre_crop(p, GRID_PANEL) for p in row] for row in panels]
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
