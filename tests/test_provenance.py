"""Provenance: deterministic UIDs, the attributes naming node and model, own-output test."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from dicom_factory import RG1, xray
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node import PRODUCT_NAME, __version__
from dicom_node.config import OutputSettings
from dicom_node.dataset_info import info_from_dataset
from dicom_node.dataset_info import produced_by_node as produced_by_node_reexport
from dicom_node.derive import build_derived
from dicom_node.model_meta import ModelMetadata
from dicom_node.pixels import normalize_dataset
from dicom_node.provenance import (
    PROCESSING_EQUIPMENT,
    build_provenance,
    derivation_description,
    derived_uids,
    produced_by_node,
)

MODEL = ModelMetadata(
    name="cxr-pix2pix",
    version="2.1.0",
    size_multiple=256,
    sha256="ab" * 32,
    path=Path("/models/cxr.onnx"),
)
NOW = dt.datetime(2026, 12, 2, 18, 30, 5, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def rg1() -> Dataset:
    return pydicom.dcmread(RG1)


@pytest.fixture(scope="module")
def rg1_derived(rg1: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    image = normalize_dataset(rg1)
    derived = build_derived(rg1, image, image.pixels, MODEL, OutputSettings(), strength=0.8)
    path = tmp_path_factory.mktemp("p") / "derived.dcm"
    derived.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_build_is_deterministic(rg1: Dataset) -> None:
    assert build_provenance(rg1, MODEL, 0.8, NOW) == build_provenance(rg1, MODEL, 0.8, NOW)
    other_model = build_provenance(rg1, replace(MODEL, sha256="cd" * 32), 0.8, NOW)
    assert (
        other_model.uids.series_instance_uid
        != build_provenance(rg1, MODEL, 0.8).uids.series_instance_uid
    )
    assert (
        other_model.uids.sop_instance_uid != build_provenance(rg1, MODEL, 0.8).uids.sop_instance_uid
    )


def test_strength_changes_the_uids(rg1: Dataset) -> None:
    at_08 = derived_uids(rg1, MODEL.sha256, 0.8)
    assert derived_uids(rg1, MODEL.sha256, 0.8) == at_08
    for other in (0.7, 0.0, 1.0, 0.80001):
        uids = derived_uids(rg1, MODEL.sha256, other)
        assert uids.series_instance_uid != at_08.series_instance_uid, other
        assert uids.sop_instance_uid != at_08.sop_instance_uid, other
    assert derived_uids(rg1, MODEL.sha256, 1) == derived_uids(rg1, MODEL.sha256, 1.0)
    with pytest.raises(ValueError, match="from 0 to 1"):
        derived_uids(rg1, MODEL.sha256, 1.5)


def test_full_strength_keeps_the_uids_made_before_strength_existed(rg1: Dataset) -> None:
    # Objects already in a PACS were made at strength 1 with this entropy: the same
    # image and model must still give the same identity, not a duplicate series.
    series = ["dicom-node-cxr/series", str(rg1.SeriesInstanceUID), MODEL.sha256]
    instance = ["dicom-node-cxr/instance", str(rg1.SOPInstanceUID), MODEL.sha256]
    uids = build_provenance(rg1, MODEL, 1.0).uids
    assert uids.series_instance_uid == generate_uid(entropy_srcs=series)
    assert uids.sop_instance_uid == generate_uid(entropy_srcs=instance)


def test_one_series_per_source_series_and_model_and_strength() -> None:
    a = xray(SeriesInstanceUID="1.2.3.4", InstanceNumber=1)
    b = xray(SeriesInstanceUID="1.2.3.4", InstanceNumber=2)
    ua, ub = derived_uids(a, MODEL.sha256), derived_uids(b, MODEL.sha256)
    assert ua.series_instance_uid == ub.series_instance_uid
    assert ua.sop_instance_uid != ub.sop_instance_uid


def test_attributes_name_the_node_model_and_strength(rg1: Dataset) -> None:
    p = build_provenance(rg1, MODEL, 0.8, NOW)
    assert p.derivation_description == (
        "AI enhancement (pix2pix generator) by model cxr-pix2pix version 2.1.0, "
        f"ONNX SHA-256 {'ab' * 8}, strength 0.80"
    )
    assert p.software_versions == (f"{PRODUCT_NAME} {__version__}", "cxr-pix2pix 2.1.0")
    assert "NOT FOR PRIMARY DIAGNOSIS" in p.image_comment
    assert p.contribution_datetime == dt.datetime(2026, 12, 2, 18, 30, 5)
    equipment = p.contributing_equipment()
    assert equipment.Manufacturer == PRODUCT_NAME
    assert equipment.ContributionDescription == p.derivation_description
    (purpose,) = equipment.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    # Within VR ST (1024 characters) even with the longest name and version.
    longest = replace(MODEL, name="n" * 64, version="v" * 64)
    assert len(derivation_description(longest, 0.125)) <= 1024
    assert all(len(v) <= 64 for v in build_provenance(rg1, longest).software_versions)


def test_apply_references_the_source(rg1: Dataset) -> None:
    derived = Dataset()
    build_provenance(rg1, MODEL, 0.5).apply(derived)
    assert list(derived.ImageType) == ["DERIVED", "SECONDARY"]
    (source_ref,) = derived.SourceImageSequence
    assert source_ref.ReferencedSOPInstanceUID == rg1.SOPInstanceUID
    assert source_ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    (series_ref,) = derived.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == rg1.SeriesInstanceUID
    assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPClassUID == rg1.SOPClassUID
    assert "strength 0.50" in derived.DerivationDescription


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_a_source_without_a_valid_uid_is_refused(keyword: str) -> None:
    source = xray()
    del source[keyword]
    with pytest.raises(ValueError, match=f"The source's {keyword} is missing or invalid"):
        build_provenance(source, MODEL)


def test_the_derived_object_carries_this_provenance(rg1: Dataset, rg1_derived: Dataset) -> None:
    p = build_provenance(rg1, MODEL, 0.8)
    assert rg1_derived.SeriesInstanceUID == p.uids.series_instance_uid
    assert rg1_derived.SOPInstanceUID == p.uids.sop_instance_uid
    assert rg1_derived.DerivationDescription == p.derivation_description
    assert tuple(rg1_derived.SoftwareVersions) == p.software_versions


def test_own_output_is_recognised(rg1: Dataset, rg1_derived: Dataset) -> None:
    assert produced_by_node(rg1_derived)
    assert not produced_by_node(rg1)
    # ingest and routing see it through InstanceInfo, with the same test.
    assert produced_by_node_reexport is produced_by_node
    ts = str(rg1_derived.file_meta.TransferSyntaxUID)
    assert info_from_dataset(rg1_derived, ts).produced_by_node
    assert not info_from_dataset(rg1, str(rg1.file_meta.TransferSyntaxUID)).produced_by_node


def test_other_equipment_is_not_own_output() -> None:
    other = Dataset()
    other.ContributingEquipmentSequence = [Dataset()]
    item = other.ContributingEquipmentSequence[0]
    item.Manufacturer = "Some Vendor"
    code = Dataset()
    code.CodeValue = PROCESSING_EQUIPMENT.value
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = PROCESSING_EQUIPMENT.meaning
    item.PurposeOfReferenceCodeSequence = [code]
    assert not produced_by_node(other)
    # The node's name with another purpose (e.g. acquisition) is not processing either.
    item.Manufacturer = PRODUCT_NAME
    code.CodeValue = "109101"
    assert not produced_by_node(other)
