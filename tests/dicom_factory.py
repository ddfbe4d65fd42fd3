"""Synthetic DICOM objects for tests: small, valid, with controllable attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers.shared_data import rg1_path
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

RG1 = rg1_path()
"""The real CR chest image used across the tests (read-only; see :mod:`helpers.shared_data`)."""


def _base(sop_class_uid: str, modality: str, **overrides: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    sop_uid = str(overrides.pop("SOPInstanceUID", generate_uid()))
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = str(overrides.pop("StudyInstanceUID", generate_uid()))
    ds.SeriesInstanceUID = str(overrides.pop("SeriesInstanceUID", generate_uid()))
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = "Doctor^Test"
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.Manufacturer = "Synthetic"
    for key, value in overrides.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def gradient_image(rows: int, cols: int, bits: int, seed: int = 0) -> np.ndarray:
    """A smooth test image with some noise, using most of the `bits` range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = 0.15 + 0.7 * (
        0.5 + 0.5 * np.sin(x / max(cols, 1) * 6.0) * np.cos(y / max(rows, 1) * 4.0)
    )
    noisy = np.clip(base + rng.normal(0, 0.01, size=base.shape), 0, 1)
    top = 2**bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.rint(noisy * top).astype(dtype)


def xray(
    rows: int = 300,
    cols: int = 260,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    sop_class_uid: str = CR,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    pixels: np.ndarray | None = None,
    **overrides: object,
) -> Dataset:
    """A grayscale radiograph (CR by default) with `bits` bits stored."""
    ds = _base(sop_class_uid, modality, **overrides)
    if body_part is not None:
        ds.BodyPartExamined = body_part
    array = gradient_image(rows, cols, bits) if pixels is None else pixels
    allocated = 8 if bits <= 8 else 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = array.shape
    ds.BitsAllocated = allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    if sop_class_uid == DX_PRESENTATION:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.148, 0.148]
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.PixelData = array.astype(np.uint8 if allocated == 8 else np.uint16).tobytes()
    return ds


def ct(rows: int = 64, cols: int = 64) -> Dataset:
    """A small CT slice (signed, rescaled to HU)."""
    ds = _base(CT, "CT", BodyPartExamined="CHEST")
    array = (gradient_image(rows, cols, 12).astype(np.int16) - 1024).astype(np.int16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.PixelData = array.tobytes()
    return ds


def rgb_secondary_capture(rows: int = 32, cols: int = 48) -> Dataset:
    """An RGB Secondary Capture image (e.g. a screenshot)."""
    ds = _base(SC, "OT")
    rng = np.random.default_rng(1)
    array = rng.integers(0, 255, size=(rows, cols, 3), dtype=np.uint8)
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = array.tobytes()
    return ds


def basic_text_sr() -> Dataset:
    """A minimal Basic Text structured report."""
    ds = _base(BASIC_TEXT_SR, "SR")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContentSequence = []
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write `ds` as a DICOM Part 10 file and return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
