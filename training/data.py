"""Images in memory and the random crops the generator trains on.

Every image is read with the node's own pixel pipeline
(:func:`dicom_node.pixels.read_any`), so training sees exactly the
intensities the node will feed the model, at full bit depth.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dicom_node.pixels import NormalizedImage, read_any
from training.degrade import Degradation, DegradationRange, degrade, degrade_pair
from training.errors import SplitError
from training.records import PairRecord

logger = logging.getLogger(__name__)

BLUR_MARGIN = 8
"""Extra pixels around a crop before degrading, so blur sees real context."""


def load_images(paths: Iterable[str]) -> dict[str, NormalizedImage]:
    """Read every distinct path once.

    Raises
    ------
    dicom_node.pixels.PixelDataError
        If a file cannot be read as a grayscale image.
    """
    images: dict[str, NormalizedImage] = {}
    for path in paths:
        if path not in images:
            images[path] = read_any(Path(path))
    return images


def record_paths(records: Iterable[PairRecord]) -> list[str]:
    """All image paths of `records` (reference and real low-quality images)."""
    out: list[str] = []
    for record in records:
        out.append(record.high)
        if record.low is not None:
            out.append(record.low)
    return out


@dataclass(frozen=True)
class Example:
    """One evaluation example: the degraded input and its reference, full size."""

    name: str
    degraded: np.ndarray
    reference: np.ndarray
    bits: int


def make_examples(
    records: Iterable[PairRecord],
    images: dict[str, NormalizedImage],
    degradation: Degradation,
    seed: int,
) -> list[Example]:
    """Full-size (degraded, reference) examples for validation or testing.

    Real pairs use their low-quality image. Synthetic pairs are degraded with
    `degradation`, quantised to the image's own bit depth, seeded by `seed`
    and the position of the record, so every call gives the same inputs.
    """
    out: list[Example] = []
    for index, record in enumerate(records):
        high = images[record.high]
        if record.low is not None:
            low = images[record.low].pixels
        else:
            params = Degradation(**{**degradation.as_dict(), "bits": high.bits_stored})
            low = degrade(high.pixels, params, np.random.default_rng([seed, index]))
        out.append(Example(record.name, low, high.pixels, high.bits_stored))
    return out


class CropDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random native-resolution crops of training pairs, degraded on the fly.

    Item ``i`` of epoch ``e`` depends only on (seed, e, i): the record
    (``i`` modulo the number of records, so every image is seen equally
    often), the crop position, the flips and the degradation drawn from
    `degradations`. Call :meth:`set_epoch` before each epoch.

    Parameters
    ----------
    records : list[PairRecord]
        Training records.
    images : dict[str, NormalizedImage]
        Decoded images by path.
    crop : int
        Crop side in pixels (a multiple of 256 for unet_256).
    degradations : DegradationRange
        Distribution of the synthetic degradations.
    length : int
        Items per epoch.
    seed : int
        Base seed.

    Raises
    ------
    training.errors.SplitError
        If `records` is empty.
    """

    def __init__(
        self,
        records: list[PairRecord],
        images: dict[str, NormalizedImage],
        crop: int,
        degradations: DegradationRange,
        length: int,
        seed: int,
    ) -> None:
        if not records:
            raise SplitError("The training split is empty; add images or change the fractions.")
        self.records = records
        self.images = images
        self.degradations = degradations
        self.seed = seed
        self.set_epoch(0, crop, length)

    def set_epoch(self, epoch: int, crop: int | None = None, length: int | None = None) -> None:
        """Select the random stream of `epoch`, and optionally its crop size and length.

        Raises
        ------
        ValueError
            If `crop` is below 16 pixels or `length` below 1.
        """
        self.epoch = epoch
        if crop is not None:
            if crop < 16:
                raise ValueError(f"crop must be at least 16 pixels; got {crop}.")
            self.crop = crop
        if length is not None:
            if length < 1:
                raise ValueError(f"length must be at least 1; got {length}.")
            self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        record = self.records[index % len(self.records)]
        high = self.images[record.high]
        if record.low is not None:
            low_full = self.images[record.low].pixels
            window = _random_window(high.shape, self.crop, 0, rng)
            low, ref = _cut(low_full, window), _cut(high.pixels, window)
        else:
            window = _random_window(high.shape, self.crop, BLUR_MARGIN, rng)
            context = _cut(high.pixels, window)
            params = self.degradations.sample(rng, bits=high.bits_stored)
            degraded, reference = degrade_pair(context, params, rng)
            inner = slice(window.margin, window.margin + self.crop)
            low, ref = degraded[inner, inner], reference[inner, inner]
        if rng.random() < 0.5:
            low, ref = low[:, ::-1], ref[:, ::-1]
        if rng.random() < 0.5:
            low, ref = low[::-1, :], ref[::-1, :]
        return _tensor(low), _tensor(ref)


@dataclass(frozen=True)
class _Window:
    top: int
    left: int
    size: int
    margin: int


def _random_window(
    shape: tuple[int, int], crop: int, margin: int, rng: np.random.Generator
) -> _Window:
    size = crop + 2 * margin
    top = int(rng.integers(0, max(shape[0] - size, 0) + 1))
    left = int(rng.integers(0, max(shape[1] - size, 0) + 1))
    return _Window(top, left, size, margin)


def _cut(image: np.ndarray, window: _Window) -> np.ndarray:
    part = image[window.top : window.top + window.size, window.left : window.left + window.size]
    short_r, short_c = window.size - part.shape[0], window.size - part.shape[1]
    if short_r > 0 or short_c > 0:
        part = np.pad(part, ((0, max(short_r, 0)), (0, max(short_c, 0))), mode="reflect")
    return part


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
