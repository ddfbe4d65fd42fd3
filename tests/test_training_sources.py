"""Pair sources (manifest, folders, archive), one patient key for all of them, the chest filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import CR, CT, save, xray
from PIL import Image
from scipy import ndimage

from dicom_node.config import CHEST_BODY_PARTS
from training.errors import PairSourceError
from training.sources import (
    archive_records,
    folder_records,
    is_chest,
    manifest_records,
    patient_key,
    read_groups,
)
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
    assert ((body_part or "").upper() in CHEST_BODY_PARTS) is accepted


def test_unreadable_file_is_not_a_chest(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert not is_chest(tmp_path / "junk.dcm")


def test_manifest_reads_pairs_patients_and_splits(tmp_path: Path) -> None:
    (tmp_path / "a_low.png").touch()
    (tmp_path / "manifest.csv").write_text(
        "low,high,split,patient_id\n"
        "a_low.png,a_high.png,test,P1\n"
        "b_low.png,b_high.png,,P1\n"
        "c_low.png,/abs/c_high.png,,\n",
        encoding="utf-8",
    )
    records = manifest_records(tmp_path / "manifest.csv")
    assert records[0].low == str(tmp_path / "a_low.png")
    assert records[2].high == "/abs/c_high.png"
    assert records[0].group == records[1].group == patient_key("P1", "")
    assert records[2].group != records[0].group
    assert records[0].split == "test" and records[1].split is None
    # Patient P1 is fixed to test, so its other pair follows.
    split = split_records(records, seed=0)
    assert {r.split for r in split.records if r.group == patient_key("P1", "")} == {"test"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("high\nx.png\n", "lacks the column"),
        ("low,high\n,x.png\n", "both low and high"),
        ("low,high,split\na,b,holdout\n", "not one of"),
        ("low,high,split,patient_id\na,b,train,P\nc,d,test,P\n", "both the train and the test"),
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PairSourceError, match=message):
        manifest_records(path)


def test_folder_groups_from_csv_then_dicom_patient_then_file(tmp_path: Path) -> None:
    _png(tmp_path / "one.png", 1)
    _png(tmp_path / "two.png", 2)
    _png(tmp_path / "three.png", 3)
    save(xray(rows=64, cols=64, PatientID="PAT9"), tmp_path / "four.dcm")
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    sub = tmp_path / "nested"
    sub.mkdir()
    _png(sub / "five.png", 5)
    (tmp_path / "groups.csv").write_text("file,group\none.png,G1\ntwo.png,G1\n", encoding="utf-8")
    groups = read_groups(tmp_path / "groups.csv")
    records = folder_records([tmp_path], groups)
    by_name = {r.name: r for r in records}
    assert set(by_name) == {"one.png", "two.png", "three.png", "four.dcm"}
    assert by_name["one.png"].group == by_name["two.png"].group == patient_key("G1", "")
    assert by_name["four.dcm"].group == patient_key("PAT9", "")
    assert by_name["three.png"].group not in (by_name["one.png"].group, by_name["four.dcm"].group)
    assert all(r.low is None for r in records)
    assert "five.png" in {r.name for r in folder_records([tmp_path], recursive=True)}
    with pytest.raises(PairSourceError, match="neither a folder nor a file"):
        folder_records([tmp_path / "missing"])


def test_archive_source_reads_cr_dx_chest_images_from_the_node_database(tmp_path: Path) -> None:
    from sqlalchemy.orm import Session

    from dicom_node.config import load_config
    from dicom_node.db import Instance, Series, Study, make_engine

    config_path = tmp_path / "node.toml"
    config_path.write_text(f'[storage]\ndata_dir = "{tmp_path / "var"}"\n', encoding="utf-8")
    config = load_config(config_path, environ={})
    spool = config.storage.spool_dir / "received"
    spool.mkdir(parents=True)
    files = {
        "chest": save(xray(rows=64, cols=64, body_part="CHEST"), spool / "chest.dcm"),
        "hand": save(xray(rows=64, cols=64, body_part="HAND"), spool / "hand.dcm"),
    }
    engine = make_engine(config.storage)
    with Session(engine) as session:
        study = Study(study_instance_uid="1.2.3", patient_id="PAT1")
        series = Series(series_instance_uid="1.2.3.4", study=study, modality="CR")
        for index, (name, sop_class) in enumerate(
            [("chest", CR), ("hand", CR), ("chest", CT), ("gone", CR)]
        ):
            path = files.get(name, spool / "gone.dcm")
            session.add(
                Instance(
                    sop_instance_uid=f"1.2.3.4.{index}",
                    sop_class_uid=sop_class,
                    series=series,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=str(path),
                    size_bytes=1,
                    calling_aet="TEST",
                )
            )
        session.commit()
    engine.dispose()
    records = archive_records(config_path)
    assert [Path(r.high).name for r in records] == ["chest.dcm"]
    assert records[0].group == patient_key("PAT1", "")
