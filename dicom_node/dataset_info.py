"""Read and check the identifying attributes of a received instance.

The C-STORE handler must decide quickly whether it accepts what it received.
:func:`inspect_encoded` parses the bytes exactly as they will be stored (no
pixel decoding), checks the structure, and returns the few attributes that
persistence and routing need.

Truncated bytes (a value shorter than its declared length, an undefined-length
element cut before its delimiter, bytes the parser never reached) are
undecodable (0xC210). An image (a dataset with Pixel Data) is refused as
non-conformant (0xA900) when it has fewer than :data:`MIN_IMAGE_SIZE` rows or
columns, or when native Pixel Data is longer or shorter than its attributes
need (one padding byte after an odd length allowed). Objects without Pixel
Data (SR, KOS…) are not checked for size.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_node.provenance import produced_by_node

__all__ = [
    "MIN_IMAGE_SIZE",
    "InstanceInfo",
    "NonConformantError",
    "UndecodableError",
    "check_image_header",
    "info_from_dataset",
    "inspect_encoded",
    "inspect_file",
    "is_valid_uid",
    "produced_by_node",
]

MIN_IMAGE_SIZE = 64
"""Fewest rows and columns of an image the node accepts (smaller ones are refused)."""

_UNDEFINED_LENGTH = 0xFFFFFFFF
_DELIMITER_LENGTH = 8
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class UndecodableError(ValueError):
    """The bytes are not a decodable DICOM dataset (truncated, corrupt)."""


class NonConformantError(ValueError):
    """The dataset decodes but lacks or corrupts an identifying attribute."""


@dataclass(frozen=True)
class InstanceInfo:
    """What the node needs to know about an instance to store and route it."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    body_part_examined: str = ""
    view_position: str = ""
    series_description: str = ""
    patient_id: str = ""
    accession_number: str = ""
    produced_by_node: bool = False
    """Whether the instance is this node's own output
    (:func:`dicom_node.provenance.produced_by_node`, re-exported here)."""


def is_valid_uid(value: str) -> bool:
    """Return whether `value` is a syntactically valid DICOM UID."""
    return 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise NonConformantError(f"The dataset has no {keyword}.")
    if not is_valid_uid(value):
        raise NonConformantError(f"{keyword} {value!r} is not a valid UID.")
    return value


def _image_attribute(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NonConformantError(f"The image's {keyword} {value!r} is not a number.") from None
    if number < 1:
        raise NonConformantError(f"The image's {keyword} {number} is not positive.")
    return number


def check_image_header(ds: Dataset, transfer_syntax_uid: str) -> None:
    """Check an image's size and, for native Pixel Data, its length, from the header.

    Datasets without Pixel Data (SR, KOS and other non-image objects) pass.

    Raises
    ------
    NonConformantError
        If the image has fewer than :data:`MIN_IMAGE_SIZE` rows or columns,
        lacks a valid Rows, Columns or Bits Allocated, or its native Pixel
        Data is longer or shorter than Rows × Columns × Samples per Pixel ×
        Bits Allocated / 8 × Number of Frames (plus one padding byte after an
        odd length).
    """
    pixel_data = ds.get((0x7FE0, 0x0010))
    if pixel_data is None:
        return
    rows = _image_attribute(ds, "Rows")
    cols = _image_attribute(ds, "Columns")
    if rows < MIN_IMAGE_SIZE or cols < MIN_IMAGE_SIZE:
        raise NonConformantError(
            f"The image is {rows} × {cols} pixels; the node accepts images of at least "
            f"{MIN_IMAGE_SIZE} × {MIN_IMAGE_SIZE}."
        )
    if UID(transfer_syntax_uid).is_encapsulated:
        return
    bits = _image_attribute(ds, "BitsAllocated")
    samples = _image_attribute(ds, "SamplesPerPixel", 1)
    frames = _image_attribute(ds, "NumberOfFrames", 1) if ds.get("NumberOfFrames") else 1
    expected = (rows * cols * samples * bits * frames + 7) // 8
    actual = len(pixel_data.value or b"")
    allowed = (expected, expected + 1) if expected % 2 else (expected,)
    if actual not in allowed:
        raise NonConformantError(
            f"Pixel Data holds {actual} bytes but the image attributes need {expected}."
        )


def _check_complete(ds: Dataset, data_length: int, deflated: bool) -> None:
    """Raise :class:`UndecodableError` if the parsed dataset shows the bytes were truncated.

    pydicom keeps a value cut short by the end of the bytes, and drops an
    undefined-length element whose delimiter never came, without an error:
    both are found here, before the elements are converted.
    """
    last_end = 0
    last_is_sequence = False
    for part in (ds.file_meta, ds):
        for tag in part.keys():  # noqa: SIM118 - iterating a Dataset converts its elements
            raw = part.get_item(tag)
            if not isinstance(raw, RawDataElement) or raw.value_tell is None:
                continue
            value = raw.value if isinstance(raw.value, bytes) else b""
            if raw.length == _UNDEFINED_LENGTH:
                end = raw.value_tell + len(value) + _DELIMITER_LENGTH
            else:
                if isinstance(raw.value, bytes) and len(value) < raw.length:
                    raise UndecodableError(
                        f"The dataset is truncated: element {tag} declares {raw.length} "
                        f"bytes but only {len(value)} were received."
                    )
                end = raw.value_tell + raw.length
            last_end, last_is_sequence = end, raw.VR == "SQ"
    if not deflated and not last_is_sequence and last_end < data_length:
        raise UndecodableError(
            f"The dataset is truncated or corrupt: {data_length - last_end} bytes after "
            "the last element could not be parsed."
        )


def info_from_dataset(ds: Dataset, transfer_syntax_uid: str) -> InstanceInfo:
    """Extract :class:`InstanceInfo` from a decoded dataset.

    Raises
    ------
    NonConformantError
        If a required UID is missing or invalid, or the image fails
        :func:`check_image_header` (too small, native Pixel Data of the
        wrong length).
    """
    try:
        info = InstanceInfo(
            sop_class_uid=_required_uid(ds, "SOPClassUID"),
            sop_instance_uid=_required_uid(ds, "SOPInstanceUID"),
            study_instance_uid=_required_uid(ds, "StudyInstanceUID"),
            series_instance_uid=_required_uid(ds, "SeriesInstanceUID"),
            transfer_syntax_uid=transfer_syntax_uid,
            modality=_text(ds, "Modality").upper(),
            body_part_examined=_text(ds, "BodyPartExamined").upper(),
            view_position=_text(ds, "ViewPosition").upper(),
            series_description=_text(ds, "SeriesDescription"),
            patient_id=_text(ds, "PatientID"),
            accession_number=_text(ds, "AccessionNumber"),
            produced_by_node=produced_by_node(ds),
        )
    except NonConformantError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt element values
        raise UndecodableError(f"The dataset cannot be decoded: {exc}.") from exc
    check_image_header(ds, transfer_syntax_uid)
    return info


def inspect_encoded(data: bytes) -> tuple[InstanceInfo, Dataset]:
    """Parse a DICOM Part 10 byte string and return its :class:`InstanceInfo`.

    Parameters
    ----------
    data : bytes
        Preamble, file meta information and dataset, as they will be stored.

    Returns
    -------
    tuple[InstanceInfo, pydicom.dataset.Dataset]
        The attributes and the parsed dataset (pixel data not decoded).

    Raises
    ------
    UndecodableError
        If the bytes are not a DICOM dataset or are truncated.
    NonConformantError
        If identifying attributes are missing or invalid, or an image is
        too small or its native Pixel Data has the wrong length.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        ts = str(ds.file_meta.TransferSyntaxUID)
        _check_complete(ds, len(data), deflated=ts == DeflatedExplicitVRLittleEndian)
        # Touch every top-level element so truncation surfaces now, not later.
        for _elem in ds:
            pass
    except UndecodableError:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        raise UndecodableError(f"The dataset cannot be decoded: {exc}.") from exc
    except Exception as exc:
        raise UndecodableError(f"The dataset cannot be decoded: {exc}.") from exc
    return info_from_dataset(ds, ts), ds


def inspect_file(path: Path) -> tuple[InstanceInfo, Dataset]:
    """Like :func:`inspect_encoded`, for a file on disk.

    Raises
    ------
    UndecodableError, NonConformantError
        As :func:`inspect_encoded`; an unreadable file is undecodable.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UndecodableError(f"{path} cannot be read: {exc.strerror or exc}.") from exc
    return inspect_encoded(data)
