"""The derived Secondary Capture: labels, provenance, UIDs, display, and dciodvfy."""

from __future__ import annotations

import copy
import io
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import DX_PRESENTATION, RG1, xray
from pydicom.dataset import Dataset

from dicom_node import PRODUCT_NAME, __version__
from dicom_node.config import OutputSettings
from dicom_node.derive import build_derived
from dicom_node.model_meta import ModelMetadata
from dicom_node.pixels import normalize_dataset
from dicom_node.provenance import derived_uids, produced_by_node

MODEL = ModelMetadata(
    name="cxr-pix2pix",
    version="2.1.0",
    size_multiple=256,
    sha256="ab" * 32,
    path=Path("/models/cxr.onnx"),
)


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of dciodvfy's output that report an error (it exits 0 either way)."""
    result = subprocess.run(
        ["/usr/bin/dciodvfy", str(path)],
        capture_output=True,
        text=True,
        # It echoes values in the object's own character set, not always UTF-8.
        encoding="utf-8",
        errors="replace",
        timeout=60,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def derive(
    source: Dataset, model: ModelMetadata = MODEL, strength: float = 1.0, **output: object
) -> Dataset:
    image = normalize_dataset(source)
    enhanced = np.clip(image.pixels * 0.9 + 0.05, 0, 1)
    settings = OutputSettings(**output)  # type: ignore[arg-type]
    return build_derived(source, image, enhanced, model, settings, strength=strength)


def write_read(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def rg1() -> Dataset:
    return pydicom.dcmread(RG1)


@pytest.fixture(scope="module")
def rg1_derived(rg1: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return write_read(derive(rg1), tmp_path_factory.mktemp("d") / "rg1.dcm")


def test_object_type_and_pixels(rg1: Dataset, rg1_derived: Dataset) -> None:
    d = rg1_derived
    assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert d.PhotometricInterpretation == "MONOCHROME2"
    assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 16, 15, 0)
    assert (d.Rows, d.Columns) == (rg1.Rows, rg1.Columns)
    assert d.pixel_array.dtype == np.uint16
    # Full 16-bit output, not 8 bits in disguise.
    assert len(np.unique(d.pixel_array)) > 1000


def test_patient_and_study_are_the_sources(rg1: Dataset, rg1_derived: Dataset) -> None:
    d = rg1_derived
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "StudyDescription",
        "BodyPartExamined",
        "Modality",
    ):
        assert d.get(keyword) == rg1.get(keyword), keyword
    assert d.SeriesInstanceUID != rg1.SeriesInstanceUID
    assert d.SOPInstanceUID != rg1.SOPInstanceUID
    assert d.SeriesNumber == int(rg1.SeriesNumber) + 1000
    assert d.InstanceNumber == rg1.InstanceNumber
    assert list(d.PatientOrientation) == ["L", "F"]


def test_labelled_as_ai_derived(rg1_derived: Dataset) -> None:
    d = rg1_derived
    assert d.SeriesDescription == "CHEST ENHANCED (AI)"
    assert list(d.ImageType) == ["DERIVED", "SECONDARY"]
    assert "AI-ENHANCED DERIVED IMAGE" in d.ImageComments
    assert "NOT FOR PRIMARY DIAGNOSIS" in d.ImageComments
    assert "cxr-pix2pix 2.1.0" in d.ImageComments
    assert d.DerivationDescription == (
        "AI enhancement (pix2pix generator) by model cxr-pix2pix version 2.1.0, "
        f"ONNX SHA-256 {'ab' * 8}, strength 1.00"
    )
    # RG1 does not say whether it carries burned-in text, and the label is burned in.
    assert d.BurnedInAnnotation == "YES"
    # RG1 went through lossy JPEG 2000 once: the derived image must say so too.
    assert d.LossyImageCompression == "01"


def test_references_the_source(rg1: Dataset, rg1_derived: Dataset) -> None:
    (source_ref,) = rg1_derived.SourceImageSequence
    assert source_ref.ReferencedSOPClassUID == rg1.SOPClassUID
    assert source_ref.ReferencedSOPInstanceUID == rg1.SOPInstanceUID
    (purpose,) = source_ref.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "121322",
        "DCM",
        "Source image for image processing operation",
    )
    (series_ref,) = rg1_derived.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == rg1.SeriesInstanceUID
    (instance_ref,) = series_ref.ReferencedInstanceSequence
    assert instance_ref.ReferencedSOPInstanceUID == rg1.SOPInstanceUID


def test_contributing_equipment_names_the_node_and_model(rg1_derived: Dataset) -> None:
    items = [
        item
        for item in rg1_derived.ContributingEquipmentSequence
        if item.Manufacturer == PRODUCT_NAME
    ]
    assert len(items) == 1
    (ours,) = items
    assert ours.ManufacturerModelName == "cxr-pix2pix"
    assert list(ours.SoftwareVersions) == [f"{PRODUCT_NAME} {__version__}", "cxr-pix2pix 2.1.0"]
    (purpose,) = ours.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    assert purpose.CodeMeaning == "Processing Equipment"
    assert len(str(ours.ContributionDateTime)) >= 14
    assert produced_by_node(rg1_derived)


def test_source_lut_and_invalid_spacing_are_not_copied(rg1_derived: Dataset) -> None:
    for keyword in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence", "VOILUTSequence"):
        assert keyword not in rg1_derived
    # RG1's Pixel Spacing is 0\0: invalid, so not carried over.
    assert "PixelSpacing" not in rg1_derived


def test_window_maps_the_sources_window(rg1_derived: Dataset) -> None:
    # RG1: WC 15000 / WW 30000 on a 15-bit MONOCHROME1 scale -> [0, 30000] inverted.
    lo, hi = 1 - 30000 / 32767, 1.0
    assert float(rg1_derived.WindowCenter) == pytest.approx((lo + hi) / 2 * 65535, abs=1)
    assert float(rg1_derived.WindowWidth) == pytest.approx((hi - lo) * 65535, abs=1)


def test_window_without_source_window_uses_the_image(tmp_path: Path) -> None:
    source = xray(bits=12)
    d = derive(source)
    assert d.WindowCenterWidthExplanation == "PERCENTILES 0.5-99.5"
    values = d.pixel_array
    assert values.min() <= float(d.WindowCenter) <= values.max()
    assert 0 < float(d.WindowWidth) <= 65535


def test_uids_are_deterministic(rg1: Dataset) -> None:
    first, second = derive(rg1), derive(rg1)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    other_model = derive(rg1, replace(MODEL, sha256="cd" * 32))
    assert other_model.SOPInstanceUID != first.SOPInstanceUID
    assert other_model.SeriesInstanceUID != first.SeriesInstanceUID


def test_derivation_description_records_the_strength(rg1: Dataset, tmp_path: Path) -> None:
    d = write_read(derive(rg1, strength=0.8), tmp_path / "s08.dcm")
    assert d.DerivationDescription == (
        "AI enhancement (pix2pix generator) by model cxr-pix2pix version 2.1.0, "
        f"ONNX SHA-256 {'ab' * 8}, strength 0.80"
    )
    (ours,) = [i for i in d.ContributingEquipmentSequence if i.Manufacturer == PRODUCT_NAME]
    assert ours.ContributionDescription == d.DerivationDescription
    assert "strength 0.00" in derive(rg1, strength=0.0).DerivationDescription
    assert dciodvfy_errors(tmp_path / "s08.dcm") == []


def test_strength_zero_is_still_a_derived_object(rg1: Dataset) -> None:
    image = normalize_dataset(rg1)
    d = build_derived(rg1, image, image.pixels, MODEL, OutputSettings(), strength=0.0)
    assert list(d.ImageType) == ["DERIVED", "SECONDARY"]
    assert d.SOPInstanceUID == derived_uids(rg1, MODEL.sha256, 0.0).sop_instance_uid
    assert d.SOPInstanceUID != rg1.SOPInstanceUID


def test_a_bad_strength_is_refused(rg1: Dataset) -> None:
    with pytest.raises(ValueError, match="from 0 to 1"):
        derive(rg1, strength=-0.5)


def test_one_derived_series_per_source_series() -> None:
    a = derive(xray(SeriesInstanceUID="1.2.3.4", InstanceNumber=1))
    b = derive(xray(SeriesInstanceUID="1.2.3.4", InstanceNumber=2))
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.InstanceNumber == 2


def test_a_source_without_valid_uids_is_refused() -> None:
    source = xray()
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="The source's SOPInstanceUID is missing or invalid"):
        derive(source)


def test_strength_is_in_the_built_objects_uids(rg1: Dataset) -> None:
    built = derive(rg1, strength=0.8)
    uids = derived_uids(rg1, MODEL.sha256, 0.8)
    assert (built.SeriesInstanceUID, built.SOPInstanceUID) == (
        uids.series_instance_uid,
        uids.sop_instance_uid,
    )


def test_series_number_and_description_settings() -> None:
    source = xray(SeriesDescription="PA ERECT", SeriesNumber=7)
    d = derive(source, series_number_offset=500, series_description="AI: {source}")
    assert d.SeriesNumber == 507
    assert d.SeriesDescription == "AI: PA ERECT"
    long = derive(xray(SeriesDescription="X" * 64))
    assert len(long.SeriesDescription) <= 64
    assert long.SeriesDescription.endswith(" ENHANCED (AI)")


def test_a_viewer_measures_the_same_millimetres_on_the_derived_image(tmp_path: Path) -> None:
    # Only Imager Pixel Spacing (a DX): the derived Pixel Spacing has its values,
    # and the object says where they came from.
    source = xray(sop_class_uid=DX_PRESENTATION, modality="DX", bits=14)
    source.EstimatedRadiographicMagnificationFactor = "1.1"
    dx = write_read(derive(source), tmp_path / "dx.dcm")
    assert [float(v) for v in dx.PixelSpacing] == [float(v) for v in source.ImagerPixelSpacing]
    assert [float(v) for v in dx.NominalScannedPixelSpacing] == [0.148, 0.148]
    assert "Imager Pixel Spacing" in dx.ImageComments
    assert "PixelSpacingCalibrationType" not in dx  # GEOMETRY/FIDUCIAL would both be untrue
    assert float(dx.EstimatedRadiographicMagnificationFactor) == 1.1
    assert dciodvfy_errors(tmp_path / "dx.dcm") == []
    # Read back the way viewers do: highdicom's pixel measures.
    import highdicom as hd

    image = hd.Image.from_dataset(dx)
    assert image.PixelSpacing == dx.PixelSpacing
    # Pixel Spacing in the source: copied, with a valid calibration.
    valid = derive(
        xray(
            PixelSpacing=[0.2, 0.21],
            PixelSpacingCalibrationType="GEOMETRY",
            PixelSpacingCalibrationDescription="SID 180 cm",
        )
    )
    assert [float(v) for v in valid.PixelSpacing] == [0.2, 0.21]
    assert valid.PixelSpacingCalibrationType == "GEOMETRY"
    assert valid.PixelSpacingCalibrationDescription == "SID 180 cm"
    assert "NominalScannedPixelSpacing" not in valid


def test_shape_mismatch_is_refused(rg1: Dataset) -> None:
    image = normalize_dataset(rg1)
    with pytest.raises(ValueError, match="shape"):
        build_derived(rg1, image, image.pixels[:-1], MODEL, OutputSettings())


def test_round_trip_through_bytes(rg1_derived: Dataset) -> None:
    buffer = io.BytesIO()
    rg1_derived.save_as(buffer, enforce_file_format=True)
    again = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    np.testing.assert_array_equal(again.pixel_array, rg1_derived.pixel_array)
    assert again.SOPInstanceUID == rg1_derived.SOPInstanceUID


@pytest.mark.parametrize(
    "label",
    [
        "rg1",
        "dx-14bit-spacing",
        "cr-8bit-no-orientation",
        "cr-odd-size",
        "no-body-part",
        "mono1-12bit-window",
    ],
)
def test_dciodvfy_reports_no_errors(label: str, rg1: Dataset, tmp_path: Path) -> None:
    sources = {
        "rg1": lambda: rg1,
        "dx-14bit-spacing": lambda: xray(sop_class_uid=DX_PRESENTATION, modality="DX", bits=14),
        "cr-8bit-no-orientation": lambda: xray(
            bits=8, PatientOrientation=None, SeriesDescription=None
        ),
        "cr-odd-size": lambda: xray(rows=131, cols=157, bits=10),
        "no-body-part": lambda: xray(body_part=None, Laterality=None),
        "mono1-12bit-window": lambda: xray(
            bits=12, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=3000
        ),
    }
    for mode in ("burned_in", "overlay", "none"):
        path = tmp_path / f"{label}-{mode}.dcm"
        derive(sources[label](), label=mode).save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], mode


@pytest.mark.parametrize(
    ("source_flag", "mode", "expected"),
    [
        ("NO", "burned_in", "YES"),
        ("NO", "overlay", "NO"),
        ("NO", "none", "NO"),
        ("YES", "overlay", "YES"),
        ("YES", "none", "YES"),
        (None, "none", "YES"),  # unknown: the source may carry burned-in text
    ],
)
def test_burned_in_annotation_is_true(source_flag: str | None, mode: str, expected: str) -> None:
    source = xray(rows=400, cols=400)
    if source_flag is not None:
        source.BurnedInAnnotation = source_flag
    assert derive(source, label=mode).BurnedInAnnotation == expected


def test_series_content_and_creation_times_are_the_processing_time(rg1: Dataset) -> None:
    import datetime as dt

    now = dt.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=dt.UTC)
    source = copy.deepcopy(rg1)
    image = normalize_dataset(source)
    d = build_derived(source, image, image.pixels, MODEL, OutputSettings(), now)
    # RG1 states Timezone Offset From UTC -0400: the node's times are in it too.
    assert rg1.TimezoneOffsetFromUTC == "-0400" and d.TimezoneOffsetFromUTC == "-0400"
    for prefix in ("Series", "Content", "InstanceCreation"):
        assert (d.get(f"{prefix}Date"), d.get(f"{prefix}Time")) == ("20260304", "010607.890000")
    assert (d.DateOfSecondaryCapture, d.TimeOfSecondaryCapture) == ("20260304", "010607.890000")
    # The study's own date and time are unchanged.
    assert (str(d.StudyDate), str(d.StudyTime)) == (rg1.StudyDate, rg1.StudyTime)
    del source.TimezoneOffsetFromUTC
    local = build_derived(source, image, image.pixels, MODEL, OutputSettings(), now)
    assert "TimezoneOffsetFromUTC" not in local
    assert local.SeriesDate == now.astimezone().strftime("%Y%m%d")


def test_derivation_codes_come_from_cid_7203(rg1_derived: Dataset) -> None:
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in rg1_derived.DerivationCodeSequence]
    assert codes == [("113087", "DCM"), ("113086", "DCM")]


def _render(path: Path, tmp_path: Path) -> np.ndarray:
    """The image as DCMTK's dcm2pnm shows it at the object's own window (overlays on)."""
    png = tmp_path / f"{path.stem}.png"
    subprocess.run(
        ["dcm2pnm", "+Wi", "1", "+O", "0", "+on", str(path), str(png)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    from PIL import Image

    return np.asarray(Image.open(png))


@pytest.mark.parametrize("mode", ["burned_in", "overlay"])
def test_the_label_is_visible_where_a_viewer_renders_it(
    mode: str, rg1: Dataset, tmp_path: Path
) -> None:
    from dicom_node.label import label_lines, place

    plain = write_read(derive(rg1, label="none"), tmp_path / "none.dcm")
    labelled = write_read(derive(rg1, label=mode), tmp_path / f"{mode}.dcm")
    label = place(plain.pixel_array, label_lines(MODEL.name, MODEL.version))
    before, after = (
        _render(tmp_path / "none.dcm", tmp_path),
        _render(tmp_path / f"{mode}.dcm", tmp_path),
    )
    glyphs = label.full_mask(before.shape, with_outline=False)
    # Every glyph pixel renders white at the derived window; nothing outside the label changes.
    assert after[glyphs].min() >= 250
    assert np.array_equal(
        after[~label.full_mask(before.shape)], before[~label.full_mask(before.shape)]
    )
    assert (after[glyphs] != before[glyphs]).mean() > 0.5
    if mode == "overlay":  # the pixels themselves are untouched
        np.testing.assert_array_equal(labelled.pixel_array, plain.pixel_array)
    else:
        assert labelled.BurnedInAnnotation == "YES"
