"""The enhanced Secondary Capture: the derived object a radiologist finds next to the original.

:func:`build_derived` writes, with highdicom, a Secondary Capture Image
(Explicit VR Little Endian, MONOCHROME2, 16 bit) with the source's patient
and study, a new series, the source's valid geometry (orientation, spacing,
laterality) and a display window for the derived values. Everything that
says where the object came from (UIDs, labels, equipment, references to the
source) comes from :func:`dicom_node.provenance.build_provenance`.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from typing import Any, cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DS

from dicom_node.config import OutputSettings
from dicom_node.model_meta import ModelMetadata
from dicom_node.pixels import NormalizedImage, quantize
from dicom_node.provenance import MANUFACTURER, build_provenance
from dicom_node.strength import DEFAULT_STRENGTH

OUTPUT_BITS = 16
OUTPUT_MAX = 2**OUTPUT_BITS - 1
_BIPED = set("APRLHF")
_MAX_IS = 2**31 - 1


def _positive_pair(value: object) -> tuple[float, float] | None:
    try:
        first, second = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(first) and math.isfinite(second)) or first <= 0 or second <= 0:
        return None
    return first, second


def source_pixel_spacing(source: Dataset) -> tuple[tuple[float, float], str] | None:
    """The source's pixel spacing, if valid, and the attribute it came from.

    Pixel Spacing is preferred and goes to the derived Pixel Spacing; a CR/DX
    image often has only Imager Pixel Spacing (at the detector), which goes to
    the SC image's Nominal Scanned Pixel Spacing. Zero or malformed values (RG1
    has ``0\\0``) are not carried over.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in source:
            pair = _positive_pair(source.get(keyword))
            if pair is not None:
                return pair, keyword
    return None


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation if it is two valid biped directions (e.g. ``L\\F``)."""
    value = source.get("PatientOrientation")
    if value is None:
        return None
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    parts = [str(v).strip().upper() for v in items]
    if len(parts) != 2 or not all(parts) or not all(set(p) <= _BIPED for p in parts):
        return None
    return parts[0], parts[1]


def _set(ds: Dataset, keyword: str, value: object) -> None:
    # pydicom's per-keyword type hints know no multi-valued or empty (type 2) values.
    setattr(ds, keyword, value)


def _text(source: Dataset, keyword: str) -> str:
    value = source.get(keyword)
    return "" if value is None else str(value).strip()


def _series_number(source: Dataset, offset: int) -> int:
    try:
        base = int(source.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        base = 0
    number = base + offset
    return number if 0 < number <= _MAX_IS else offset


def _instance_number(source: Dataset) -> int:
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        number = 1
    return number if 0 < number <= _MAX_IS else 1


def series_description(source: Dataset, settings: OutputSettings) -> str:
    """``<source SeriesDescription or "CHEST"> ENHANCED (AI)`` (configurable), at most 64 chars."""
    suffix = settings.series_description.format(source="")
    base = _text(source, "SeriesDescription") or "CHEST"
    room = 64 - len(suffix)
    return settings.series_description.format(source=base[: max(0, room)]).strip()[:64]


def _first_number(value: object) -> float:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def display_window(
    source: Dataset, image: NormalizedImage, enhanced: np.ndarray
) -> tuple[float, float, str]:
    """Window Center/Width for the derived pixel values, and how they were chosen.

    The source's first VOI window (in its modality units) is mapped through
    the same normalisation as the pixels, so the default display looks like
    the source's. Without a usable source window, the 0.5th–99.5th percentile
    range of the derived image is used. The source's Rescale and VOI LUT are
    never copied: they do not apply to the derived values.
    """
    center = _first_number(source.get("WindowCenter"))
    width = _first_number(source.get("WindowWidth"))
    if math.isfinite(center) and math.isfinite(width) and width > 0:
        ends = image.to_unit(np.array([center - width / 2, center + width / 2]))
        lo, hi = max(float(np.min(ends)), 0.0), min(float(np.max(ends)), 1.0)
        if hi > lo:
            return (lo + hi) / 2 * OUTPUT_MAX, (hi - lo) * OUTPUT_MAX, "SOURCE WINDOW MAPPED"
    lo, hi = (float(v) for v in np.percentile(enhanced, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = 0.0, 1.0
    return (lo + hi) / 2 * OUTPUT_MAX, (hi - lo) * OUTPUT_MAX, "PERCENTILES 0.5-99.5"


def build_derived(
    source: Dataset,
    image: NormalizedImage,
    enhanced: np.ndarray,
    model: ModelMetadata,
    settings: OutputSettings,
    now: dt.datetime | None = None,
    *,
    strength: float = DEFAULT_STRENGTH,
) -> hd.sc.SCImage:
    """Build the derived Secondary Capture image of `source`.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The received image.
    image : NormalizedImage
        The source as the model saw it (for the display window).
    enhanced : numpy.ndarray
        The pixels to store: the generator's output blended with the source
        at `strength` (:func:`dicom_node.strength.blend`), float32 (Rows,
        Columns) in [0, 1], MONOCHROME2.
    model : ModelMetadata
        The model that produced `enhanced`.
    settings : OutputSettings
        Series number offset and description template.
    now : datetime.datetime, optional
        Contribution time (default: now, UTC).
    strength : float, optional
        The strength `enhanced` was made with; recorded in the provenance
        and part of the UIDs (default :data:`~dicom_node.strength.DEFAULT_STRENGTH`).

    Returns
    -------
    highdicom.sc.SCImage
        A valid object, ready to be written with Explicit VR Little Endian.

    Raises
    ------
    ValueError
        If `enhanced` does not have the source's Rows and Columns, the
        source lacks a valid UID, or `strength` is outside [0, 1].
    TypeError
        If `strength` is not a number.
    """
    rows, cols = int(source.Rows), int(source.Columns)
    if enhanced.shape != (rows, cols):
        raise ValueError(
            f"The enhanced image has shape {enhanced.shape}; the source has ({rows}, {cols})."
        )
    provenance = build_provenance(source, model, strength, now)
    orientation = _patient_orientation(source)
    spacing = source_pixel_spacing(source)
    laterality = _text(source, "Laterality").upper() or None
    if laterality not in (None, "R", "L"):
        laterality = None
    pixels = quantize(enhanced, OUTPUT_BITS)
    with warnings.catch_warnings():
        # highdicom warns about unusual person names copied from the source; they
        # are the source's values and are kept as they are.
        warnings.simplefilter("ignore", UserWarning)
        derived = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation="MONOCHROME2",
            bits_allocated=OUTPUT_BITS,
            coordinate_system="PATIENT",
            series_instance_uid=provenance.uids.series_instance_uid,
            series_number=_series_number(source, settings.series_number_offset),
            sop_instance_uid=provenance.uids.sop_instance_uid,
            instance_number=_instance_number(source),
            manufacturer=MANUFACTURER,
            # highdicom annotates pixel_spacing as integers; it takes floats.
            pixel_spacing=cast(
                Any, spacing[0] if spacing and spacing[1] == "PixelSpacing" else None
            ),
            laterality=laterality,
            # Validated and set below: highdicom accepts only single-letter directions.
            patient_orientation=("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[provenance.contributing_equipment()],
        )

    # Type 2: the source's value, or present and empty rather than invented.
    _set(derived, "PatientOrientation", list(orientation) if orientation else None)
    if spacing is not None and spacing[1] == "ImagerPixelSpacing":
        # Spacing at the detector, not calibrated to the patient: the SC image's
        # Nominal Scanned Pixel Spacing is the attribute with that meaning.
        derived.NominalScannedPixelSpacing = [DS(v, auto_format=True) for v in spacing[0]]
    provenance.apply(derived)
    derived.ConversionType = "WSD"
    derived.SeriesDescription = series_description(source, settings)
    derived.BurnedInAnnotation = "NO"
    derived.LossyImageCompression = "01" if _text(source, "LossyImageCompression") == "01" else "00"
    for keyword in ("Modality", "BodyPartExamined", "StudyDescription", "StudyID"):
        value = _text(source, keyword)
        if value:
            setattr(derived, keyword, value)
    if "BodyPartExamined" not in derived and "Laterality" not in derived:
        # Type 2C: without a body part the condition (paired structure) cannot be
        # ruled out, so the attribute is present and empty (unknown).
        _set(derived, "Laterality", None)
    center, width, explanation = display_window(source, image, enhanced)
    derived.WindowCenter = DS(round(center, 1), auto_format=True)
    derived.WindowWidth = DS(round(max(width, 1.0), 1), auto_format=True)
    derived.WindowCenterWidthExplanation = explanation

    return derived
