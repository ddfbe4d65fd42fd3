"""Pair sources: one patient key for every source, and the node's chest filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import save, xray
from PIL import Image
from scipy import ndimage

from dicom_node.config import CHEST_BODY_PARTS, DEFAULT_RULES
from training.sources import folder_records, is_chest, manifest_records, patient_key, read_groups
from training.split import split_records


def _png(path: Path, seed: int) -> Path:
    texture = ndimage.gaussian_filter(np.random.default_rng(seed).random((64, 64)), 3.0)
    scaled = (texture - texture.min()) / np.ptp(texture)
    Image.fromarray(np.rint(scaled * 255).astype(np.uint8)).save(path)
    return path


def test_patient_key_is_the_patient_when_known_else_the_file() -> None:
    assert patient_key("PAT7", "/a.png") == patient_key(" PAT7 ", "/b.dcm")
    assert patient_key("PAT7", "/a.png") != patient_key("PAT8", "/a.png")
    assert patient_key(None, "/a.png") == patient_key("", "/a.png") == patient_key("  ", "/a.png")
    assert patient_key(None, "/a.png") != patient_key(None, "/b.png")
    # A file without a patient never collides with a patient of the same name.
    assert patient_key(None, "PAT7") != patient_key("PAT7", "x")
    assert len(patient_key("PAT7", "")) == 16 and "PAT7" not in patient_key("PAT7", "")


def test_one_patient_through_dicom_groups_csv_and_manifest_is_one_group_in_one_split(
    tmp_path: Path,
) -> None:
    # Regression (B2): DICOM and archive keys were prefixed "patient:", groups CSV and
    # manifest keys were not, so one patient became two groups that could be split
    # between train and test.
    images = tmp_path / "images"
    images.mkdir()
    save(xray(rows=64, cols=64, PatientID="PAT7"), images / "pat7.dcm")
    _png(images / "pat7_scan.png", 1)
    for index in range(8):
        _png(images / f"other_{index}.png", 10 + index)
    (tmp_path / "groups.csv").write_text("file,group\npat7_scan.png,PAT7\n", encoding="utf-8")
    (tmp_path / "pairs.csv").write_text(
        "low,high,split,patient_id\nlow7.png,high7.png,test,PAT7\n", encoding="utf-8"
    )
    found = folder_records([images], read_groups(tmp_path / "groups.csv"))
    real = manifest_records(tmp_path / "pairs.csv")
    by_name = {r.name: r for r in found + real}
    groups = {by_name[name].group for name in ("pat7.dcm", "pat7_scan.png", "high7.png")}
    assert groups == {patient_key("PAT7", "")}
    # The folder images come first and carry no split; the manifest fixes PAT7 to test.
    split = split_records(found + real, (0.6, 0.2, 0.2), seed=0)
    pat7 = [r for r in split.records if r.group == patient_key("PAT7", "")]
    assert len(pat7) == 3 and {r.split for r in pat7} == {"test"}
    assert sum(len(split.subset(name)) for name in ("train", "val", "test")) == len(found) + 1


@pytest.mark.parametrize(
    ("body_part", "accepted"),
    [("CHEST", True), ("", True), (None, True), ("THORAX", False), ("HAND", False)],
)
def test_chest_filter_is_the_node_rule(
    tmp_path: Path, body_part: str | None, accepted: bool
) -> None:
    path = save(xray(rows=32, cols=32, body_part=body_part), tmp_path / "image.dcm")
    assert is_chest(path) is accepted
    assert DEFAULT_RULES[0].body_part_examined == CHEST_BODY_PARTS


def test_unreadable_file_is_not_a_chest(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert not is_chest(tmp_path / "junk.dcm")
