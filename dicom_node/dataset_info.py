"""Read and check the identifying attributes of a received instance.

The C-STORE handler must decide quickly whether it accepts what it received.
:func:`inspect_encoded` parses the bytes exactly as they will be stored (no
pixel decoding), checks the structure, and returns the few attributes that
persistence and routing need.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicom_node.provenance import produced_by_node

__all__ = [
    "InstanceInfo",
    "NonConformantError",
    "UndecodableError",
    "info_from_dataset",
    "inspect_encoded",
    "inspect_file",
    "is_valid_uid",
    "produced_by_node",
]

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


def _expected_native_length(ds: Dataset) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    total_bits = rows * cols * bits * spp * frames
    return (total_bits + 7) // 8


def info_from_dataset(ds: Dataset, transfer_syntax_uid: str) -> InstanceInfo:
    """Extract :class:`InstanceInfo` from a decoded dataset.

    Raises
    ------
    NonConformantError
        If a required UID is missing or invalid, or uncompressed pixel data
        is shorter than Rows × Columns × BitsAllocated says.
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
    pixel_data = ds.get((0x7FE0, 0x0010))
    if pixel_data is not None and not UID(transfer_syntax_uid).is_compressed:
        expected = _expected_native_length(ds)
        actual = len(pixel_data.value or b"")
        if expected is not None and actual < expected:
            raise NonConformantError(
                f"Pixel Data holds {actual} bytes but the image attributes need {expected}."
            )
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
        If identifying attributes are missing or invalid.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        # Touch every top-level element so truncation surfaces now, not later.
        for _elem in ds:
            pass
        ts = str(ds.file_meta.TransferSyntaxUID)
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
