"""Detail retention: does a restorer keep faint, small structures?

Low-contrast *inserts* (discs like small nodules, thin lines like septal
lines or fissures) are added to a clean image, which is then degraded twice
with the same noise realisation (same seed): once with the inserts and once
without. Both are restored. Because the noise is the same, the difference
``restored_with − restored_without`` contains the inserts as the restorer
passed them, and hardly any noise. For each insert:

* **retained contrast** is the least-squares amplitude of a template in that
  difference, over a 64×64 patch around the insert, divided by the inserted
  amplitude. The template is the clean insert itself, its pixel coverage
  without any blur, so the measure answers "how much of the real insert's
  contrast is in the output": a perfect restorer scores 1, one that smooths
  the insert away less, one that exaggerates it more. The degraded input,
  blurred by the degradation, already scores below 1 for thin structures
  (about 0.6 for a 1-px line, 0.77 for a 2-px line and 0.95 for a 16-px
  disc at blur sigma 0.8), so what a restorer gained is its score minus the
  input's; the evaluation reports the input's score beside every method's;
* **CNR** is measured in the restored image *with* the insert, with the clean
  reference (without insert) subtracted to remove the anatomy:
  ``(mean over the insert's core − mean over a ring around it) / standard
  deviation over the ring``. The core is where the insert covers at least
  half as much as its most covered pixel; the ring lies 3 px beyond the
  insert's edge and is up to 9 px wide (see :func:`masks`).

Inserts are placed by :func:`place_inserts` in cells of a grid over the image,
one insert per cell, in the central area, away from strong edges (tubes,
wires, labels) and where the added contrast cannot clip. The contrast is an
addition to the clean intensity (MONOCHROME2: brighter = denser, like a
nodule or a septal line).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

CELL = 64
"""Side of the square cell (and of the measurement patch) of one insert, in pixels."""
LINE_LENGTH = 40.0
"""Length of a line insert in pixels."""
SUPERSAMPLE = 8
"""Sub-samples per pixel and axis when rendering the inserts' coverage (anti-aliasing)."""
RING_GAP = 3.0
"""The CNR ring starts this many pixels beyond the insert's edge."""
RING_WIDTH = 6.0
"""Minimum width of the CNR ring in pixels (a disc's ring is as wide as its radius, at most 9)."""
CENTRAL_BORDER = 0.1
"""Cell centres lie inside the image minus this fraction of its height and width on each side."""
EDGE_PERCENTILE = 90.0
"""Cells whose strongest smoothed gradient is above this percentile of all cells are skipped."""
SAFE_RANGE = (0.02, 0.98)
"""A cell is used only if its clean values, with the insert added, stay inside this range."""


class InsertKind(enum.StrEnum):
    """Shapes of the inserts."""

    DISC = "disc"
    LINE = "line"


@dataclass(frozen=True)
class Insert:
    """One kind of insert.

    Attributes
    ----------
    kind : InsertKind
        Disc or line.
    size : float
        Disc diameter or line width in pixels (0.5 to 32).
    contrast : float
        Added intensity, as a fraction of full scale (0 to 0.2).

    Raises
    ------
    TypeError
        If `kind` is not an :class:`InsertKind`.
    ValueError
        If `size` or `contrast` is out of range.
    """

    kind: InsertKind
    size: float
    contrast: float

    def __post_init__(self) -> None:
        if not isinstance(self.kind, InsertKind):
            raise TypeError(f"kind must be an InsertKind; got {self.kind!r}.")
        if not 0.5 <= float(self.size) <= 32.0:
            raise ValueError(f"size must be from 0.5 to 32 pixels; got {self.size!r}.")
        if not 0.0 < float(self.contrast) <= 0.2:
            raise ValueError(f"contrast must be in (0, 0.2]; got {self.contrast!r}.")

    @property
    def label(self) -> str:
        """E.g. ``disc 8 px 2%`` or ``line 2 px 4%``."""
        return f"{self.kind.value} {self.size:g} px {self.contrast * 100:g}%"


DISC_DIAMETERS = (4.0, 8.0, 16.0)
DISC_CONTRASTS = (0.01, 0.02, 0.04)
LINE_WIDTHS = (1.0, 2.0, 3.0)
LINE_CONTRASTS = (0.02, 0.03, 0.04, 0.05)

DEFAULT_INSERTS: tuple[Insert, ...] = tuple(
    Insert(InsertKind.DISC, d, c) for d in DISC_DIAMETERS for c in DISC_CONTRASTS
) + tuple(Insert(InsertKind.LINE, w, c) for w in LINE_WIDTHS for c in LINE_CONTRASTS)
"""Discs of 4, 8 and 16 px at 1, 2 and 4 %; lines 1, 2 and 3 px wide at 2 to 5 %."""


@dataclass(frozen=True)
class Placement:
    """An insert at a position: centre pixel (row, col) and, for a line, its angle in degrees."""

    insert: Insert
    row: int
    col: int
    angle: float = 0.0

    @property
    def top(self) -> int:
        """First row of the insert's CELL×CELL patch."""
        return self.row - CELL // 2

    @property
    def left(self) -> int:
        """First column of the insert's CELL×CELL patch."""
        return self.col - CELL // 2

    def shifted(self, rows: int, cols: int) -> Placement:
        """The same placement moved by (rows, cols), e.g. from crop into image coordinates."""
        return replace(self, row=self.row + rows, col=self.col + cols)

    def patch(self, image: np.ndarray) -> np.ndarray:
        """The CELL×CELL patch of `image` centred on the insert.

        Raises
        ------
        ValueError
            If the patch is not fully inside the image.
        """
        top, left = self.top, self.left
        if top < 0 or left < 0 or top + CELL > image.shape[0] or left + CELL > image.shape[1]:
            raise ValueError(
                f"The patch of the insert at ({self.row}, {self.col}) is not inside an "
                f"image of shape {image.shape}."
            )
        return np.asarray(image[top : top + CELL, left : left + CELL], dtype=np.float64)


def _coordinates(placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """Along- and across-axis coordinates (pixels) of the sub-samples of the patch.

    Arrays of shape (CELL, S, CELL, S), S = SUPERSAMPLE; pixel centres are
    integers and the insert's centre is the centre of pixel (CELL//2, CELL//2).
    """
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    pixels = np.arange(CELL, dtype=np.float64) - CELL // 2
    y = (pixels[:, None] + offsets[None, :])[:, :, None, None]
    x = (pixels[:, None] + offsets[None, :])[None, None, :, :]
    theta = math.radians(placement.angle)
    along = x * math.cos(theta) + y * math.sin(theta)
    across = -x * math.sin(theta) + y * math.cos(theta)
    return along, across


def coverage(placement: Placement) -> np.ndarray:
    """Fraction (0 to 1) of each pixel of the CELL×CELL patch that the insert covers."""
    along, across = _coordinates(placement)
    insert = placement.insert
    if insert.kind is InsertKind.DISC:
        inside = along**2 + across**2 <= (insert.size / 2.0) ** 2
    else:
        inside = (np.abs(across) <= insert.size / 2.0) & (np.abs(along) <= LINE_LENGTH / 2.0)
    return np.asarray(inside.mean(axis=(1, 3)), dtype=np.float64)


def masks(placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """(core, ring) boolean masks of the patch for the CNR.

    The core is where the coverage is at least half its maximum. The ring
    holds the pixel centres from ``RING_GAP`` px beyond the insert's edge to
    ``RING_GAP + width`` px, ``width`` being the disc's radius clamped to
    [``RING_WIDTH``, 9] or ``RING_WIDTH`` for a line (beside the line, within
    its length).
    """
    cover = coverage(placement)
    core = cover >= 0.5 * cover.max()
    pixels = np.arange(CELL, dtype=np.float64) - CELL // 2
    y, x = pixels[:, None], pixels[None, :]
    theta = math.radians(placement.angle)
    along = x * math.cos(theta) + y * math.sin(theta)
    across = -x * math.sin(theta) + y * math.cos(theta)
    half = placement.insert.size / 2.0
    if placement.insert.kind is InsertKind.DISC:
        distance = np.hypot(along, across) - half
        width = min(max(RING_WIDTH, half), 9.0)
        ring = (distance >= RING_GAP) & (distance <= RING_GAP + width)
    else:
        distance = np.abs(across) - half
        ring = (
            (distance >= RING_GAP)
            & (distance <= RING_GAP + RING_WIDTH)
            & (np.abs(along) <= LINE_LENGTH / 2.0)
        )
    return core, ring


def add_inserts(image: np.ndarray, placements: Sequence[Placement]) -> np.ndarray:
    """A float32 copy of `image` with every insert added (clipped to [0, 1]).

    Raises
    ------
    ValueError
        If a placement's patch is not inside the image.
    """
    out = np.asarray(image, dtype=np.float64).copy()
    for placement in placements:
        placement.patch(out)  # checks the bounds
        window = (
            slice(placement.top, placement.top + CELL),
            slice(placement.left, placement.left + CELL),
        )
        out[window] += placement.insert.contrast * coverage(placement)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def retained_contrast(
    placement: Placement,
    restored_with: np.ndarray,
    restored_without: np.ndarray,
) -> float:
    """How much of the clean insert's contrast is in ``restored_with − restored_without``.

    The least-squares amplitude of the insert's clean coverage
    (:func:`coverage`, no blur) in the difference of the two patches, over
    the inserted contrast: 1 when the output holds the insert exactly as it
    was inserted, less when the insert is blurred or smoothed away (a blurred
    input too), 0 when the restorer removed it.

    Parameters
    ----------
    placement : Placement
        The insert (image coordinates of the two images).
    restored_with, restored_without : numpy.ndarray
        The restorer's outputs for the inputs with and without the inserts
        (same noise realisation).

    Returns
    -------
    float
        The retained fraction of the inserted contrast.

    Raises
    ------
    ValueError
        If the insert's patch is not inside the images.
    """
    difference = placement.patch(restored_with) - placement.patch(restored_without)
    shape = coverage(placement)
    amplitude = float((difference * shape).sum() / (shape * shape).sum())
    return amplitude / placement.insert.contrast


def cnr(placement: Placement, restored_with: np.ndarray, reference: np.ndarray) -> float:
    """Contrast-to-noise ratio of the insert in `restored_with` (see the module docstring).

    `reference` is the clean image without the insert; NaN when the ring
    has no variation (a noiseless output).
    """
    residual = placement.patch(restored_with) - placement.patch(reference)
    core, ring = masks(placement)
    noise = float(residual[ring].std())
    if noise <= 1e-6:  # float32 rounding, far below one 16-bit step
        return math.nan
    return float(residual[core].mean() - residual[ring].mean()) / noise


def place_inserts(
    reference: np.ndarray,
    inserts: Sequence[Insert],
    rng: np.random.Generator,
) -> list[Placement]:
    """Put each insert in its own suitable cell of a CELL-pixel grid over `reference`.

    A cell is suitable when its centre lies in the central area (a border of
    ``CENTRAL_BORDER`` of each side left out), its clean values stay inside
    ``SAFE_RANGE`` with the strongest insert added, its mean lies between the
    10th and 95th percentiles of the image (neither the air outside the body
    nor the brightest bone or labels), and its strongest gradient (Gaussian
    1.5 px) is not above the ``EDGE_PERCENTILE`` of the cells (tubes,
    wires, borders of the collimation). Suitable cells are shuffled with
    `rng`, the inserts too, and paired off; inserts beyond the number of
    suitable cells are left out (logged). Lines get a random angle.

    Returns
    -------
    list[Placement]
        In the coordinates of `reference`, at most one per cell.

    Raises
    ------
    ValueError
        If `reference` is not a 2-D image.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2:
        raise ValueError(f"reference must be a 2-D image; got shape {ref.shape}.")
    rows, cols = ref.shape
    n_rows, n_cols = rows // CELL, cols // CELL
    if not inserts or n_rows == 0 or n_cols == 0:
        return []
    top0, left0 = (rows - n_rows * CELL) // 2, (cols - n_cols * CELL) // 2
    smooth = ndimage.gaussian_filter(ref, 1.5)
    gradient = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1)) / 8.0
    low_level, high_level = np.percentile(ref, [10.0, 95.0])
    strongest = max(insert.contrast for insert in inserts)
    candidates: list[tuple[int, int, float]] = []
    for i in range(n_rows):
        for j in range(n_cols):
            top, left = top0 + i * CELL, left0 + j * CELL
            centre = (top + CELL // 2, left + CELL // 2)
            if not (
                rows * CENTRAL_BORDER <= centre[0] <= rows * (1 - CENTRAL_BORDER)
                and cols * CENTRAL_BORDER <= centre[1] <= cols * (1 - CENTRAL_BORDER)
            ):
                continue
            cell = ref[top : top + CELL, left : left + CELL]
            if cell.min() < SAFE_RANGE[0] or cell.max() + strongest > SAFE_RANGE[1]:
                continue
            if not low_level <= cell.mean() <= high_level:
                continue
            edge = float(gradient[top : top + CELL, left : left + CELL].max())
            candidates.append((centre[0], centre[1], edge))
    if candidates:
        limit = np.percentile([c[2] for c in candidates], EDGE_PERCENTILE)
        candidates = [c for c in candidates if c[2] <= limit]
    order = rng.permutation(len(candidates))
    shuffled = [inserts[k] for k in rng.permutation(len(inserts))]
    placements = []
    for insert, index in zip(shuffled, order, strict=False):
        row, col, _ = candidates[int(index)]
        angle = float(rng.uniform(0.0, 180.0)) if insert.kind is InsertKind.LINE else 0.0
        placements.append(Placement(insert, row, col, angle))
    if len(placements) < len(inserts):
        logger.info(
            "Only %d of %d inserts fit into an image of %d×%d pixels.",
            len(placements),
            len(inserts),
            rows,
            cols,
        )
    return placements
