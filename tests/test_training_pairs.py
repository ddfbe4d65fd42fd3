"""Pair sources, pair checks, duplicate handling and the patient-level split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import CR, CT, save, xray
from PIL import Image
from scipy import ndimage

from dicom_node.pixels import NormalizedImage
from training.data import load_images, record_paths
from training.dedup import resolve_duplicates
from training.errors import PairSourceError
from training.pair_checks import check_pair
from training.records import PairRecord
from training.sources import (
    archive_records,
    folder_records,
    manifest_records,
    patient_key,
    read_groups,
)
from training.split import Split, split_records


def _texture(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((rows, cols)), 3.0)


def _png(path: Path, array: np.ndarray, bits: int = 8) -> Path:
    scaled = (array - array.min()) / (np.ptp(array) or 1.0)
    if bits == 8:
        Image.fromarray(np.rint(scaled * 255).astype(np.uint8)).save(path)
    else:
        Image.fromarray(np.rint(scaled * (2**bits - 1)).astype(np.uint16)).save(path)
    return path


def _unit(array: np.ndarray) -> NormalizedImage:
    return NormalizedImage(array.astype(np.float32), 16, 0.0, 1.0, False)


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


def test_pair_check_finds_size_mismatch_and_misregistration() -> None:
    base = _texture(256, 256, 0)
    noisy = base + np.random.default_rng(1).normal(0, 0.002, base.shape)
    good = check_pair(_unit(base), _unit(noisy))
    assert not good.misregistered and good.correlation > 0.95
    shifted = check_pair(_unit(base), _unit(np.roll(noisy, (0, 6), axis=(0, 1))))
    assert shifted.misregistered
    assert abs(shifted.shift[1]) == pytest.approx(6.0, abs=1.0)
    with pytest.raises(PairSourceError, match="different sizes"):
        check_pair(_unit(base), _unit(base[:200]))


def test_folder_groups_from_csv_then_dicom_patient_then_file(tmp_path: Path) -> None:
    _png(tmp_path / "one.png", _texture(64, 64, 1))
    _png(tmp_path / "two.png", _texture(64, 64, 2))
    _png(tmp_path / "three.png", _texture(64, 64, 3))
    save(xray(rows=64, cols=64, PatientID="PAT9"), tmp_path / "four.dcm")
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    sub = tmp_path / "nested"
    sub.mkdir()
    _png(sub / "five.png", _texture(64, 64, 5))
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


def test_duplicates_are_used_once_and_rescaled_copies_share_a_group(tmp_path: Path) -> None:
    chest = _texture(200, 180, 7)
    _png(tmp_path / "a_original.png", chest)
    _png(tmp_path / "b_copy.png", chest)  # same size: a duplicate
    small = ndimage.zoom(chest, 0.5, order=1)
    _png(tmp_path / "c_small.png", small, bits=16)  # another resolution: same group
    _png(tmp_path / "d_other.png", _texture(200, 180, 8))
    records = folder_records([tmp_path])
    images = load_images(record_paths(records))
    resolved = resolve_duplicates(records, images)
    names = {r.name: r for r in resolved}
    assert set(names) == {"a_original.png", "c_small.png", "d_other.png"}
    assert names["a_original.png"].group == names["c_small.png"].group
    assert names["d_other.png"].group != names["a_original.png"].group


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
