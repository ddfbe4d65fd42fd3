"""One training example (:class:`PairRecord`) and the rule that a patient has one split.

Every pair source (:mod:`training.sources`) yields :class:`PairRecord` rows;
duplicate handling (:mod:`training.dedup`) and the split
(:mod:`training.split`) read and rewrite them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.errors import PairSourceError

SPLITS = ("train", "val", "test")
"""The three splits, in this order."""


@dataclass(frozen=True)
class PairRecord:
    """One training example: a reference image and, for real pairs, its low-quality twin.

    Attributes
    ----------
    high : str
        Path of the reference (high-quality) image.
    low : str or None
        Path of the real low-quality acquisition; None when the degraded copy
        is synthesised by :mod:`training.degrade`.
    group : str
        Hashed patient (or file) key made by :func:`training.sources.patient_key`;
        all records of a group share a split.
    split : str or None
        ``train``, ``val`` or ``test`` when fixed by the source, else None.

    Raises
    ------
    PairSourceError
        If `high` is empty or `split` is not one of :data:`SPLITS`.
    """

    high: str
    low: str | None
    group: str
    split: str | None = None

    def __post_init__(self) -> None:
        if not self.high:
            raise PairSourceError("A pair record needs a reference (high) image path.")
        if self.split is not None and self.split not in SPLITS:
            raise PairSourceError(
                f"Split {self.split!r} of {self.high} is not one of {', '.join(SPLITS)}."
            )

    @property
    def name(self) -> str:
        """File name of the reference image."""
        return Path(self.high).name


def fixed_splits(records: Sequence[PairRecord]) -> dict[str, str]:
    """The split each group's sources fixed, from any of its records.

    A group's split is the one any of its records carries, not necessarily
    its first record's: a patient whose first image has no split and a later
    one has ``test`` is a test patient.

    Parameters
    ----------
    records : Sequence[PairRecord]
        Records of any number of groups.

    Returns
    -------
    dict[str, str]
        Group key to split, for the groups that have one fixed.

    Raises
    ------
    PairSourceError
        If one group has records fixed to two different splits.
    """
    fixed: dict[str, str] = {}
    for record in records:
        if record.split is None:
            continue
        previous = fixed.setdefault(record.group, record.split)
        if previous != record.split:
            raise PairSourceError(
                f"One patient has images in both the {previous} and the {record.split} split "
                f"(e.g. {record.name}); a patient must belong to one split."
            )
    return fixed
