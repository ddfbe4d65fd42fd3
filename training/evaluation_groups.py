"""Row groups of an evaluation: the test images and how each group degrades them.

One group per evaluated setting degrades every synthetic test image (the
clean high-quality image) with the setting's :class:`Degradation` and its
own seed; test records that are real acquired pairs form one more group,
:data:`REAL_PAIRS`, whose degraded images are their own low-quality images.
Each group also carries the validation examples its baselines are tuned on
and, once tuned, the baselines themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dicom_node.pixels import NormalizedImage
from training.baselines import Baseline
from training.crops import Window, central_window, context_window
from training.data import Example, make_examples
from training.degrade import Degradation, degrade
from training.evaluation_settings import (
    REAL_PAIRS,
    EvaluationSettings,
    GroupKind,
    Setting,
    normalise_setting,
    setting_degradation,
    setting_kind,
)
from training.records import PairRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalImage:
    """One test image: its clean reference, real low image if any, and its windows.

    Attributes
    ----------
    name : str
        The record's name.
    position : int
        Index in its group's list (seeds the degradation and the inserts).
    reference : numpy.ndarray
        The whole clean image.
    low : numpy.ndarray or None
        The whole real low-quality image of a real pair.
    bits : int
        Bits stored of the reference (the degradation quantises to them).
    window : Window
        The crop every method is scored on.
    context : Window
        The crop plus the margin the baselines see.
    """

    name: str
    position: int
    reference: np.ndarray
    low: np.ndarray | None
    bits: int
    window: Window
    context: Window


@dataclass
class Group:
    """One row group: a setting (None for real pairs), its images and its baselines."""

    label: str
    kind: GroupKind
    setting: Setting | None
    degradation: Degradation | None
    seed: int
    images: list[EvalImage]
    val: list[Example]
    with_bm3d: bool
    baselines: dict[str, tuple[Baseline, float]] = field(default_factory=dict)
    detail_positions: frozenset[int] = frozenset()

    def degraded(self, image: EvalImage, clean: np.ndarray | None = None) -> np.ndarray:
        """The whole degraded image (the real low image for a real pair).

        `clean` replaces the reference as the source (the reference with
        inserts); the noise realisation is the same.
        """
        if image.low is not None:
            return image.low
        assert self.degradation is not None
        params = Degradation(**{**self.degradation.as_dict(), "bits": image.bits})
        source = image.reference if clean is None else clean
        return degrade(source, params, np.random.default_rng([self.seed, image.position]))

    def info(self) -> dict[str, Any]:
        """What ``evaluation.json`` records of the group."""
        return {
            "kind": str(self.kind),
            "setting": list(self.setting) if self.setting else None,
            "degradation": self.degradation.as_dict() if self.degradation else None,
            "seed": self.seed,
            "bm3d": self.with_bm3d,
            "detail_images": len(self.detail_positions),
        }


def eval_images(
    records: Sequence[PairRecord], images: dict[str, NormalizedImage], crop: int, margin: int
) -> list[EvalImage]:
    """The records' images with their central `crop` window and `margin` of context."""
    out = []
    for position, record in enumerate(records):
        high = images[record.high]
        low = images[record.low].pixels if record.low is not None else None
        window = central_window(high.pixels.shape, crop)
        out.append(
            EvalImage(
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


def detail_positions(count: int, wanted: int) -> frozenset[int]:
    """`wanted` positions spread evenly over `count` images (all if fewer)."""
    if wanted <= 0 or count == 0:
        return frozenset()
    return frozenset(
        int(i) for i in np.unique(np.linspace(0, count - 1, min(wanted, count)).round())
    )


def build_groups(
    settings: EvaluationSettings,
    test: Sequence[PairRecord],
    val: Sequence[PairRecord],
    images: dict[str, NormalizedImage],
    bm3d_at: Sequence[Setting],
) -> list[Group]:
    """One group per setting over the synthetic test records, then the real pairs if any.

    Parameters
    ----------
    settings : EvaluationSettings
        The settings, seed, crop, context and detail images.
    test, val : sequence of PairRecord
        Test records and the validation records the baselines are tuned on.
    images : dict
        The loaded images by path.
    bm3d_at : sequence of settings
        Where BM3D runs, empty if it is not installed (the real pairs get
        BM3D when this is not empty).
    """
    synthetic_test = [r for r in test if r.low is None]
    synthetic_val = [r for r in val if r.low is None] or list(val)
    synthetic_images = eval_images(synthetic_test, images, settings.crop, settings.context)
    detail_at = settings.detail_at()
    groups: list[Group] = []
    for index, raw in enumerate(settings.settings):
        if not synthetic_test:
            break
        setting = normalise_setting(raw)
        degradation = setting_degradation(setting)
        seed = settings.seed + 1000 * index
        groups.append(
            Group(
                label=degradation.label(),
                kind=setting_kind(setting),
                setting=setting,
                degradation=degradation,
                seed=seed,
                images=synthetic_images,
                val=make_examples(synthetic_val, images, degradation, seed=seed + 1),
                with_bm3d=setting in bm3d_at,
                detail_positions=(
                    detail_positions(len(synthetic_images), settings.detail_images)
                    if setting == detail_at
                    else frozenset()
                ),
            )
        )
    real_test = [r for r in test if r.low is not None]
    if real_test:
        real_val = [r for r in val if r.low is not None] or list(val)
        degradation = setting_degradation(settings.settings[0])  # synthetic val fallback only
        groups.append(
            Group(
                label=REAL_PAIRS,
                kind=GroupKind.REAL,
                setting=None,
                degradation=None,
                seed=settings.seed - 1,
                images=eval_images(real_test, images, settings.crop, settings.context),
                val=make_examples(real_val, images, degradation, seed=settings.seed - 1),
                with_bm3d=bool(bm3d_at),
            )
        )
    return groups
