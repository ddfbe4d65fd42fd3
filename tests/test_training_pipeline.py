"""What ``train`` does before training: choose or build the split, refuse a run directory in use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from training.errors import RunError, TrainingError
from training.pipeline import DataSources, build_split, choose_split
from training.sources import patient_key


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        texture = ndimage.gaussian_filter(np.random.default_rng(index).random((64, 64)), 3.0)
        scaled = (texture - texture.min()) / np.ptp(texture)
        Image.fromarray(np.rint(scaled * 255).astype(np.uint8)).save(folder / f"i{index}.png")


def test_build_split_reads_sources_with_groups_and_summarises(tmp_path: Path) -> None:
    _images(tmp_path / "data", 6)
    (tmp_path / "a.csv").write_text("file,group\ni0.png,P1\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("file,patient_group\ni1.png,P1\n", encoding="utf-8")
    sources = DataSources(
        images=(tmp_path / "data",),
        groups=(tmp_path / "a.csv", tmp_path / "b.csv"),
        fractions=(0.6, 0.2, 0.2),
    )
    split, summary = build_split(sources, tmp_path / "run")
    assert summary["images"] == 6 and summary["groups"] == 5
    assert summary["bits_stored"] == {"8": 6} and summary["split"] == split.summary()
    p1 = {r.split for r in split.records if r.group == patient_key("P1", "")}
    assert len(p1) == 1
    (tmp_path / "c.csv").write_text("file,group\ni0.png,P2\n", encoding="utf-8")
    clash = DataSources(
        images=(tmp_path / "data",), groups=(tmp_path / "a.csv", tmp_path / "c.csv")
    )
    with pytest.raises(TrainingError, match=r"i0\.png has the group 'P1'"):
        build_split(clash, tmp_path / "run")


def test_choose_split_refuses_a_used_run_dir_and_reuses_saved_splits(tmp_path: Path) -> None:
    _images(tmp_path / "data", 5)
    sources = DataSources(images=(tmp_path / "data",), fractions=(0.6, 0.2, 0.2))
    first = tmp_path / "first"
    split, _ = choose_split(first, sources, resume=None, start_from=None)
    first.mkdir()
    split.save(first / "split.json")
    (first / "config.json").write_text(json.dumps({"data": {"images": 5}}), encoding="utf-8")
    (first / "last.pt").write_bytes(b"")
    with pytest.raises(RunError, match="already holds a run"):
        choose_split(first, sources, resume=None, start_from=None)
    with pytest.raises(RunError, match="does not exist"):
        choose_split(first, sources, resume=first / "missing.pt", start_from=None)
    resumed, summary = choose_split(first, sources, resume=first / "last.pt", start_from=None)
    assert resumed.records == split.records and summary == {"images": 5}
    tuned, summary = choose_split(tmp_path / "tuned", sources, None, first / "last.pt")
    assert tuned.records == split.records and summary == {"images": 5}
