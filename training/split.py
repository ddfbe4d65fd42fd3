"""The patient-level train/val/test split of a run, saved as ``split.json``.

:func:`split_records` assigns whole groups (patients, or files without a
patient) to train/val/test; :class:`Split` is saved in the run directory so
evaluation and the export parity check only ever see held-out patients.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import SplitError
from training.records import SPLITS, PairRecord, fixed_splits

SPLIT_VERSION = 1


@dataclass
class Split:
    """The train/val/test assignment of a run, saved as ``split.json``."""

    seed: int
    fractions: tuple[float, float, float]
    records: list[PairRecord] = field(default_factory=list)

    def subset(self, name: str) -> list[PairRecord]:
        """Records of one split (``train``, ``val`` or ``test``).

        Raises
        ------
        ValueError
            If `name` is not one of :data:`training.records.SPLITS`.
        """
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {name!r}.")
        return [r for r in self.records if r.split == name]

    def summary(self) -> dict[str, Any]:
        """Counts of images and groups per split."""
        out: dict[str, Any] = {}
        for name in SPLITS:
            subset = self.subset(name)
            out[name] = {
                "images": len(subset),
                "groups": len({r.group for r in subset}),
                "real_pairs": sum(r.low is not None for r in subset),
            }
        return out

    def save(self, path: Path) -> None:
        """Write the split as JSON."""
        payload = {
            "version": SPLIT_VERSION,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "summary": self.summary(),
            "records": [asdict(r) for r in self.records],
        }
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a split written by :meth:`save`.

        Raises
        ------
        SplitError
            If the file is missing or malformed.
        """
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("version") != SPLIT_VERSION:
                raise SplitError(
                    f"{path} has split version {payload.get('version')!r}; expected "
                    f"{SPLIT_VERSION}."
                )
            records = [PairRecord(**r) for r in payload["records"]]
            fractions = tuple(float(f) for f in payload["fractions"])
            seed = int(payload["seed"])
        except SplitError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SplitError(f"The split file {path} cannot be read: {exc}") from exc
        if len(fractions) != 3:
            raise SplitError(f"The split file {path} needs three fractions.")
        return cls(seed, (fractions[0], fractions[1], fractions[2]), records)


def split_records(
    records: Sequence[PairRecord],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Split:
    """Assign whole groups to train/val/test.

    Groups whose split a source fixed keep it, whichever of their records
    carries it (:func:`training.records.fixed_splits`). The others are
    shuffled with `seed` and dealt so that the image counts of val and test
    come closest to their fractions of all images; the rest is train. Every
    record ends in exactly one split.

    Parameters
    ----------
    records : Sequence[PairRecord]
        The records to split, in a stable order.
    fractions : tuple[float, float, float]
        Train, val and test shares of the images.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    Split

    Raises
    ------
    ValueError
        If the fractions are not three non-negative numbers summing to 1.
    SplitError
        If there are fewer than three groups to split and none is fixed.
    training.errors.PairSourceError
        If a group has records fixed to two different splits.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1; got {fractions}."
        )
    fixed = fixed_splits(records)
    by_group: dict[str, list[PairRecord]] = {}
    for record in records:
        by_group.setdefault(record.group, []).append(record)
    free = sorted(g for g in by_group if g not in fixed)
    if len(by_group) < 3 and not fixed:
        raise SplitError(
            f"At least three patients/groups are needed to split; got {len(by_group)}."
        )
    rng = np.random.default_rng(seed)
    order = [free[i] for i in rng.permutation(len(free))]
    total = len(records)
    counts = {name: sum(len(by_group[g]) for g, s in fixed.items() if s == name) for name in SPLITS}
    assignment = dict(fixed)
    for name, fraction in (("test", fractions[2]), ("val", fractions[1])):
        target = fraction * total
        while order and fraction > 0:
            size = len(by_group[order[0]])
            if counts[name] + size / 2 > target and counts[name] > 0:
                break
            group = order.pop(0)
            assignment[group] = name
            counts[name] += size
    for group in order:
        assignment[group] = "train"
    out = [replace(r, split=assignment[r.group]) for r in records]
    return Split(seed, (fractions[0], fractions[1], fractions[2]), out)
