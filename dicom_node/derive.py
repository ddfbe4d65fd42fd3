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
import re
import warnings
from typing import Any, cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DS

from dicom_node.character_set import derived_character_set
from dicom_node.config import OutputSettings
from dicom_node.errors import PermanentError
from dicom_node.label import Label, LabelMode, burn_in, label_lines, overlay_attributes, place
from dicom_node.model_meta import ModelMetadata
from dicom_node.noise import AppliedStrength
from dicom_node.pixels import NormalizedImage, quantize
from dicom_node.provenance import MANUFACTURER, build_provenance
from dicom_node.strength import DEFAULT_STRENGTH

SPACING_FROM_IMAGER = (
    "Pixel Spacing is the source's Imager Pixel Spacing: at the detector, "
    "not corrected for geometric magnification."
)
"""Added to Image Comments when the derived Pixel Spacing comes from Imager Pixel Spacing."""

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

    Pixel Spacing is preferred; a CR/DX image often has only Imager Pixel
    Spacing (at the detector). Either becomes the derived Pixel Spacing, so
    that a viewer measures the same millimetres on both images (see
    :func:`build_derived` for how the second case is labelled). Zero or
    malformed values (RG1 has ``0\\0``) are not carried over.
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


def _place_label(pixels: np.ndarray, lines: tuple[str, ...]) -> Label:
    try:
        return place(pixels, lines)
    except ValueError as exc:
        # An unlabelled AI image must never reach a reader: fail the job instead.
        raise PermanentError(f"{exc} The derived image is not written without it.") from exc


def burned_in_annotation(source: Dataset, *, label_burned_in: bool) -> str:
    """BurnedInAnnotation of the derived image: true, whatever the source claims.

    ``YES`` when the node burned its label in, or when the source says
    ``YES`` or does not say (text burned into a source, a laterality marker or
    a name, is in the derived pixels too, so an unknown source must not be
    declared clean); ``NO`` only when the source says ``NO`` and no label was
    burned in.
    """
    if label_burned_in:
        return "YES"
    return "NO" if _text(source, "BurnedInAnnotation").upper() == "NO" else "YES"


_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def _source_offset(source: Dataset) -> dt.timezone | None:
    match = _OFFSET.match(_text(source, "TimezoneOffsetFromUTC"))
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
    if delta > dt.timedelta(hours=14) or int(minutes) >= 60:
        return None
    return dt.timezone(-delta if sign == "-" else delta)


def _set_processing_times(derived: Dataset, source: Dataset, now: dt.datetime | None) -> None:
    """Series, content, instance-creation and capture date/time: when the node made the image.

    In the source's time zone when it states one (Timezone Offset From UTC is
    then copied, so the study's and the node's times read alike), else in the
    node host's local time, as the source's own dates are.
    """
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    offset = _source_offset(source)
    local = moment.astimezone(offset) if offset is not None else moment.astimezone()
    if offset is not None:
        derived.TimezoneOffsetFromUTC = _text(source, "TimezoneOffsetFromUTC")
    date, time = local.strftime("%Y%m%d"), local.strftime("%H%M%S.%f")
    for prefix in ("Series", "Content", "InstanceCreation"):
        setattr(derived, f"{prefix}Date", date)
        setattr(derived, f"{prefix}Time", time)
    derived.DateOfSecondaryCapture = date
    derived.TimeOfSecondaryCapture = time


def _copy_spacing_calibration(
    source: Dataset, derived: Dataset, spacing: tuple[tuple[float, float], str] | None
) -> None:
    """Say where the derived Pixel Spacing came from, truthfully.

    From the source's Pixel Spacing: its calibration type and description
    are copied when valid. From Imager Pixel Spacing (the distance at the
    detector, not corrected for magnification): no calibration type, whose
    two enumerated values (GEOMETRY, FIDUCIAL) would both claim a correction
    that was not made, and so no calibration description either (DICOM
    allows it only with a type); instead the SC's Nominal Scanned Pixel
    Spacing carries the same values, Image Comments say where they came
    from, and an Estimated Radiographic Magnification Factor of the source is
    kept (a standard attribute outside the SC IOD: dciodvfy notes the object
    as Standard Extended).
    """
    if spacing is None:
        return
    if spacing[1] == "PixelSpacing":
        kind = _text(source, "PixelSpacingCalibrationType").upper()
        if kind in ("GEOMETRY", "FIDUCIAL"):
            derived.PixelSpacingCalibrationType = kind
            description = _text(source, "PixelSpacingCalibrationDescription")
            if description:
                derived.PixelSpacingCalibrationDescription = description[:64]
        return
    derived.NominalScannedPixelSpacing = [DS(v, auto_format=True) for v in spacing[0]]
    derived.ImageComments = f"{derived.ImageComments} {SPACING_FROM_IMAGER}"
    factor = _first_number(source.get("EstimatedRadiographicMagnificationFactor"))
    if math.isfinite(factor) and factor > 0:
        derived.EstimatedRadiographicMagnificationFactor = DS(factor, auto_format=True)


def build_derived(
    source: Dataset,
    image: NormalizedImage,
    enhanced: np.ndarray,
    model: ModelMetadata,
    settings: OutputSettings,
    now: dt.datetime | None = None,
    *,
    strength: float = DEFAULT_STRENGTH,
    adaptation: AppliedStrength | None = None,
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
    adaptation : AppliedStrength, optional
        How the image's noise chose `strength` (recorded in the description).

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
    provenance = build_provenance(source, model, strength, now, adaptation)
    orientation = _patient_orientation(source)
    spacing = source_pixel_spacing(source)
    laterality = _text(source, "Laterality").upper() or None
    if laterality not in (None, "R", "L"):
        laterality = None
    pixels = quantize(enhanced, OUTPUT_BITS)
    center, width, explanation = display_window(source, image, enhanced)
    mode = LabelMode(settings.label)
    lines = label_lines(model.name, model.version)
    label = _place_label(pixels, lines) if mode is not LabelMode.NONE else None
    burned = label is not None and mode is LabelMode.BURNED_IN
    if label is not None and burned:
        bright = round(min(center + width / 2, OUTPUT_MAX))
        dark = round(max(center - width / 2, 0))
        pixels = burn_in(pixels, label, bright=bright, dark=dark)
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
            pixel_spacing=cast(Any, spacing[0] if spacing else None),
            laterality=laterality,
            # Validated and set below: highdicom accepts only single-letter directions.
            patient_orientation=("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[provenance.contributing_equipment()],
            # Set below: highdicom refuses an empty first value (``\ISO 2022 IR 87``).
            specific_character_set=None,
        )
    character_set = derived_character_set(source)
    if character_set is not None:
        _set(derived, "SpecificCharacterSet", character_set)

    # Type 2: the source's value, or present and empty rather than invented.
    _set(derived, "PatientOrientation", list(orientation) if orientation else None)
    provenance.apply(derived)
    _copy_spacing_calibration(source, derived, spacing)
    derived.ConversionType = "WSD"
    derived.SeriesDescription = series_description(source, settings)
    _set_processing_times(derived, source, now)
    derived.BurnedInAnnotation = burned_in_annotation(source, label_burned_in=burned)
    if label is not None and mode is LabelMode.OVERLAY:
        overlay_attributes(derived, label, (rows, cols), " ".join(lines))
    derived.LossyImageCompression = "01" if _text(source, "LossyImageCompression") == "01" else "00"
    for keyword in ("Modality", "BodyPartExamined", "StudyDescription", "StudyID"):
        value = _text(source, keyword)
        if value:
            setattr(derived, keyword, value)
    if "BodyPartExamined" not in derived and "Laterality" not in derived:
        # Type 2C: without a body part the condition (paired structure) cannot be
        # ruled out, so the attribute is present and empty (unknown).
        _set(derived, "Laterality", None)
    derived.WindowCenter = DS(round(center, 1), auto_format=True)
    derived.WindowWidth = DS(round(max(width, 1.0), 1), auto_format=True)
    derived.WindowCenterWidthExplanation = explanation

    return derived
