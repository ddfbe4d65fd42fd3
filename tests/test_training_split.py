"""The patient-level split: whole patients, seeded, fixed splits kept, saved and read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.records import PairRecord
from training.sources import patient_key
from training.split import Split, split_records


def test_split_keeps_patients_together_is_seeded_and_round_trips(tmp_path: Path) -> None:
    records = [
        PairRecord(f"/data/{p}_{k}.png", None, patient_key(f"P{p}", ""))
        for p in range(40)
        for k in range(1 + p % 3)
    ]
    split = split_records(records, (0.7, 0.15, 0.15), seed=3)
    assert split_records(records, (0.7, 0.15, 0.15), seed=3).records == split.records
    assert split_records(records, (0.7, 0.15, 0.15), seed=4).records != split.records
    per_group: dict[str, set[str | None]] = {}
    for record in split.records:
        per_group.setdefault(record.group, set()).add(record.split)
    assert all(len(s) == 1 for s in per_group.values())
    counts = split.summary()
    assert sum(counts[name]["images"] for name in counts) == len(records)
    assert 8 <= counts["test"]["images"] <= 16 and 8 <= counts["val"]["images"] <= 16
    split.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert loaded.records == split.records and loaded.seed == 3
    with pytest.raises(ValueError, match="summing to 1"):
        split_records(records, (0.5, 0.2, 0.2))


def test_a_group_keeps_its_fixed_split_even_when_its_first_record_has_none() -> None:
    # Regression: the split of a group was read from its first record only, so a
    # patient whose first record carried no split (and a later one did) ended up
    # in none of train, val and test.
    group = patient_key("patient-with-two-sources", "")
    records = [
        PairRecord("/data/a_first.png", None, group, None),
        PairRecord("/data/a_second.png", "/data/a_low.png", group, "test"),
        *[PairRecord(f"/data/p{i}.png", None, patient_key(f"P{i}", "")) for i in range(10)],
    ]
    split = split_records(records, (0.7, 0.15, 0.15), seed=0)
    assert len(split.records) == len(records)
    assert {r.split for r in split.records if r.group == group} == {"test"}
    assert sum(len(split.subset(name)) for name in ("train", "val", "test")) == len(records)
