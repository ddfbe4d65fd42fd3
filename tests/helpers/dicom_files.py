"""Test instances: copies of the real chest x-ray with new UIDs, and small crops of it.

The real image (``RG1_UNCI.dcm``: CR, 1955 × 1841, 15-bit MONOCHROME1, 7 MB)
is read-only and never copied into the repository; copies go to pytest's
temporary directories.
"""

from __future__ import annotations

import copy
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from helpers.peers import DCMCJPEG, DCMCONV, require_executable
from helpers.shared_data import rg1_path

RG1_PATH = rg1_path()
"""The real test image (:mod:`helpers.shared_data`; ``DICOM_NODE_TEST_IMAGE`` points elsewhere)."""

DEFLATED = "1.2.840.10008.1.2.1.99"
RG1_PATIENT_NAME = "CompressedSamples^RG1"
RG1_PATIENT_ID = "9RG1"


@dataclass(frozen=True)
class SampleFile:
    """A DICOM file written for a test, with its identifying UIDs."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str


def require_rg1() -> Path:
    """Path of the real test image; a missing file fails the test (never skips it)."""
    if not RG1_PATH.is_file():
        raise AssertionError(f"The test image {RG1_PATH} is missing (set DICOM_NODE_TEST_IMAGE).")
    return RG1_PATH


def describe(path: Path) -> SampleFile:
    """Read the UIDs of a DICOM file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return SampleFile(
        path=path,
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
    )


def write_copies(
    template: Dataset,
    directory: Path,
    count: int,
    *,
    prefix: str = "img",
    new_study: bool = True,
) -> list[SampleFile]:
    """Write `count` copies of `template`, each with a new SOP Instance UID.

    All copies share one new series (in a new study unless `new_study` is false).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ds = copy.deepcopy(template)
    if new_study:
        ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    written = []
    for index in range(count):
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = index + 1
        path = directory / f"{prefix}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(
            SampleFile(
                path=path,
                sop_instance_uid=uid,
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
            )
        )
    return written


def small_template(rg1: Dataset, size: int = 128) -> Dataset:
    """A `size` × `size` crop of the real image with its full header (fast to send)."""
    ds = copy.deepcopy(rg1)
    pixels = ds.pixel_array
    top = (pixels.shape[0] - size) // 2
    left = (pixels.shape[1] - size) // 2
    crop = pixels[top : top + size, left : left + size].copy()
    ds.Rows, ds.Columns = crop.shape
    ds.PixelData = crop.astype("<u2").tobytes()
    return ds


def jpeg_lossless_copy(source: Path, target: Path) -> SampleFile:
    """A JPEG Lossless (process 14, SV1) copy of `source` with a new SOP Instance UID (dcmcjpeg)."""
    require_executable(DCMCJPEG, "dcmtk")
    subprocess.run(
        [DCMCJPEG, "+e1", "+ua", str(source), str(target)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return describe(target)


def dataset_offset(data: bytes) -> int:
    """Offset of the dataset in a Part 10 byte string (after preamble and file meta)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    # (0002,0000) UL, explicit VR: tag 4 bytes, VR 2, length 2, value 4.
    tag = struct.unpack("<HH", data[132:136])
    if tag != (0x0002, 0x0000):
        raise ValueError("the file meta has no group length")
    group_length = struct.unpack("<I", data[140:144])[0]
    return 144 + group_length


def dataset_bytes(data: bytes) -> bytes:
    """The encoded dataset of a Part 10 byte string, without preamble and file meta.

    A deflated dataset is inflated, so that two encodings of the same bytes
    compare equal whatever the padding of the zlib stream.
    """
    raw = data[dataset_offset(data) :]
    if _transfer_syntax(data) == DEFLATED:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw)
    return raw


def _transfer_syntax(data: bytes) -> str:
    meta = data[: dataset_offset(data)]
    start = meta.find(b"\x02\x00\x10\x00UI")
    if start < 0:
        raise ValueError("the file meta has no Transfer Syntax UID")
    length = struct.unpack("<H", meta[start + 6 : start + 8])[0]
    return meta[start + 8 : start + 8 + length].rstrip(b"\x00 ").decode("ascii")


def dcmtk_wire_dataset(path: Path) -> bytes:
    """The dataset bytes DCMTK's storescu puts on the wire for the file at `path`.

    storescu re-encodes what it reads (sequences and items get explicit
    lengths), so the bytes a node receives are those of ``dcmconv`` (same
    transfer syntax), not those of the file.
    """
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "wire.dcm"
        subprocess.run(
            [require_executable(DCMCONV, "dcmtk"), str(path), str(target)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return dataset_bytes(target.read_bytes())
