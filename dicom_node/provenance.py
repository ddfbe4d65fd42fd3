"""Provenance of the node's derived objects: built in one place, recognised in one place.

:func:`build_provenance` makes, from the source, the model and the strength,
everything a derived object says about where it came from: its deterministic
series and instance UIDs, the Derivation Description, the node and model in
Contributing Equipment (purpose "Processing Equipment", DCM 109102) and
Software Versions, the image comment that labels it as AI-derived, and the
references back to the source image and series.
:meth:`Provenance.contributing_equipment` and :meth:`Provenance.apply` put
them on the object that :mod:`dicom_node.derive` builds.

:func:`produced_by_node` is the other side of the same contract: an object
whose Contributing Equipment names this node as processing equipment is the
node's own output and is never processed again (loop prevention, see
:mod:`dicom_node.routing`).

UIDs are derived from the source UIDs, the model's SHA-256 and the strength,
so processing the same image with the same model and strength again gives
the same object identity and the PACS gets no duplicates, while another
strength gives another series.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from dicom_node import PRODUCT_NAME, __version__
from dicom_node.strength import DEFAULT_STRENGTH, check_strength, format_strength

if TYPE_CHECKING:
    import highdicom as hd

    from dicom_node.model_meta import ModelMetadata
    from dicom_node.noise import AppliedStrength

MANUFACTURER = PRODUCT_NAME
"""Manufacturer of the derived object and of its Contributing Equipment item."""

PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
"""Purpose of reference of the node's Contributing Equipment item."""

PROCESSING_EQUIPMENT_CODE = PROCESSING_EQUIPMENT.value

SOURCE_IMAGE_PURPOSE = Code("121322", "DCM", "Source image for image processing operation")
"""Purpose of reference of the derived object's Source Image Sequence item."""

DERIVATION_CODES = (
    Code("113087", "DCM", "Smoothing"),
    Code("113086", "DCM", "Edge enhancement"),
)
"""DerivationCodeSequence items, from CID 7203 (Image Derivation): the generator removes
noise (113087, Smoothing) and restores sharpness (113086, Edge enhancement)."""

IMAGE_TYPE = ("DERIVED", "SECONDARY")

_UID_NAMESPACE = "dicom-node-cxr"
"""First entropy source of the derived UIDs: fixed, since changing it changes every identity."""

_SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class DerivedUIDs:
    """Identity of a derived instance."""

    series_instance_uid: str
    sop_instance_uid: str


def derived_uids(
    source: Dataset, model_sha256: str, strength: float = DEFAULT_STRENGTH
) -> DerivedUIDs:
    """Deterministic UIDs for the derived series and instance.

    The series UID depends only on the source series, the model and the
    strength, so all images of one source series processed by one model at
    one strength land in one derived series; the instance UID depends on the
    source instance, the model and the strength. Strength 1 (the generator's
    output as it is) adds nothing to the entropy, so those objects keep the
    UIDs they had before the strength existed; any other strength gives
    other UIDs.

    Raises
    ------
    TypeError, ValueError
        If `strength` is not a number from 0 to 1.
    """
    value = check_strength(strength)
    extra = [] if value == 1.0 else [f"strength={value!r}"]
    series_entropy = [f"{_UID_NAMESPACE}/series", str(source.SeriesInstanceUID), model_sha256]
    instance_entropy = [f"{_UID_NAMESPACE}/instance", str(source.SOPInstanceUID), model_sha256]
    series = generate_uid(entropy_srcs=[*series_entropy, *extra])
    instance = generate_uid(entropy_srcs=[*instance_entropy, *extra])
    return DerivedUIDs(series_instance_uid=str(series), sop_instance_uid=str(instance))


def derivation_description(
    model: ModelMetadata,
    strength: float = DEFAULT_STRENGTH,
    adaptation: AppliedStrength | None = None,
) -> str:
    """DerivationDescription: the model, its version, its hash prefix and the strength.

    When the image's noise decided the strength (`adaptation`), the requested
    strength and the measured noise follow in parentheses.

    Model name and version have at most 64 characters each
    (:class:`~dicom_node.model_meta.ModelMetadata`), so the text stays far
    below the 1024 characters of VR ST (DerivationDescription and
    ContributionDescription).
    """
    text = (
        f"AI enhancement (pix2pix generator) by model {model.name} version {model.version}, "
        f"ONNX SHA-256 {model.short_hash}, strength {format_strength(strength)}"
    )
    if adaptation is not None and adaptation.noise_sd is not None:
        text += (
            f" (requested {format_strength(adaptation.requested)}, "
            f"scaled to the image noise SD {adaptation.noise_sd:.4f})"
        )
    return text


def software_versions(model: ModelMetadata) -> tuple[str, str]:
    """Software Versions: the node and the model, each at most 64 characters (VR LO)."""
    return f"{PRODUCT_NAME} {__version__}"[:64], f"{model.name} {model.version}"[:64]


def image_comment(model: ModelMetadata) -> str:
    """Image Comments: the label that says the image is AI-derived, with node and model."""
    return (
        "AI-ENHANCED DERIVED IMAGE - NOT FOR PRIMARY DIAGNOSIS. "
        f"Produced by {PRODUCT_NAME} {__version__} with the pix2pix generator "
        f"{model.name} {model.version} (ONNX SHA-256 {model.short_hash}). "
        "The original image is unchanged in its own series."
    )


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


@dataclass(frozen=True)
class Provenance:
    """Every provenance attribute of one derived object (see :func:`build_provenance`)."""

    uids: DerivedUIDs
    strength: float
    derivation_description: str
    image_comment: str
    manufacturer_model_name: str
    software_versions: tuple[str, ...]
    contribution_datetime: dt.datetime
    source_sop_class_uid: str
    source_sop_instance_uid: str
    source_series_instance_uid: str

    def contributing_equipment(self) -> hd.ContributingEquipment:
        """The node's Contributing Equipment item (Processing Equipment, DCM 109102)."""
        import highdicom as hd

        return hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.manufacturer_model_name,
            software_versions=list(self.software_versions),
            contribution_datetime=self.contribution_datetime,
            contribution_description=self.derivation_description,
        )

    def apply(self, derived: Dataset) -> None:
        """Set the provenance attributes on `derived` (UIDs and equipment are set at build).

        Image Type, Derivation Description, Image Comments, Manufacturer's
        Model Name, Software Versions, the Source Image Sequence (purpose DCM
        121322) and the Referenced Series Sequence pointing at the source.
        """
        derived.ImageType = list(IMAGE_TYPE)
        derived.DerivationDescription = self.derivation_description
        derived.DerivationCodeSequence = [_code_item(code) for code in DERIVATION_CODES]
        derived.ImageComments = self.image_comment
        derived.ManufacturerModelName = self.manufacturer_model_name
        derived.SoftwareVersions = list(self.software_versions)

        reference = Dataset()
        reference.ReferencedSOPClassUID = self.source_sop_class_uid
        reference.ReferencedSOPInstanceUID = self.source_sop_instance_uid
        reference.PurposeOfReferenceCodeSequence = [_code_item(SOURCE_IMAGE_PURPOSE)]
        derived.SourceImageSequence = [reference]

        instance_ref = Dataset()
        instance_ref.ReferencedSOPClassUID = self.source_sop_class_uid
        instance_ref.ReferencedSOPInstanceUID = self.source_sop_instance_uid
        series_ref = Dataset()
        series_ref.SeriesInstanceUID = self.source_series_instance_uid
        series_ref.ReferencedInstanceSequence = [instance_ref]
        derived.ReferencedSeriesSequence = [series_ref]


def build_provenance(
    source: Dataset,
    model: ModelMetadata,
    strength: float = DEFAULT_STRENGTH,
    now: dt.datetime | None = None,
    adaptation: AppliedStrength | None = None,
) -> Provenance:
    """Build the provenance of the object derived from `source` by `model` at `strength`.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The received image; its study, series, instance and class UIDs must
        be valid.
    model : ModelMetadata
        The model that produced the derived pixels.
    strength : float, optional
        The strength they were made with (default
        :data:`~dicom_node.strength.DEFAULT_STRENGTH`).
    now : datetime.datetime, optional
        Contribution time (default: now, UTC); written without a time zone.
    adaptation : AppliedStrength, optional
        How `strength` was chosen from the image's noise, for the description.

    Returns
    -------
    Provenance

    Raises
    ------
    ValueError
        If a source UID is missing or invalid, or `strength` is outside [0, 1].
    TypeError
        If `strength` is not a number.
    """
    for keyword in _SOURCE_UIDS:
        if not UID(_text(source, keyword)).is_valid:
            raise ValueError(f"The source's {keyword} is missing or invalid.")
    value = check_strength(strength)
    moment = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
    return Provenance(
        uids=derived_uids(source, model.sha256, value),
        strength=value,
        derivation_description=derivation_description(model, value, adaptation),
        image_comment=image_comment(model),
        manufacturer_model_name=model.name[:64],
        software_versions=software_versions(model),
        contribution_datetime=moment,
        source_sop_class_uid=_text(source, "SOPClassUID"),
        source_sop_instance_uid=_text(source, "SOPInstanceUID"),
        source_series_instance_uid=_text(source, "SeriesInstanceUID"),
    )


def produced_by_node(ds: Dataset) -> bool:
    """Return whether `ds` is this node's output (it carries the node's provenance).

    The node lists itself in ContributingEquipmentSequence with Manufacturer
    :data:`MANUFACTURER` and the purpose :data:`PROCESSING_EQUIPMENT`
    (:meth:`Provenance.contributing_equipment`); any object with such an
    item is this node's output, whatever its SOP class.
    """
    for item in ds.get("ContributingEquipmentSequence", []):
        if str(item.get("Manufacturer", "")) != MANUFACTURER:
            continue
        purposes = item.get("PurposeOfReferenceCodeSequence", [])
        if any(str(code.get("CodeValue", "")) == PROCESSING_EQUIPMENT_CODE for code in purposes):
            return True
    return False
