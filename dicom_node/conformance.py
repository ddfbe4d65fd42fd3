"""The DICOM conformance statement, generated from the node's own tables.

``python -m dicom_node.conformance > docs/conformance.md`` writes it;
``tests/test_conformance.py`` regenerates it and fails when the committed
document and the code disagree. It follows the structure of DICOM PS3.2
(implementation model, AE specifications, SOP classes as SCP and SCU,
transfer syntaxes, association policies, network and security, character
sets, and the IOD contents of the objects the node creates). Every table
comes from the code: the SCP's presentation contexts and statuses
(:mod:`dicom_node.scp`), the SCU's context policy (:mod:`dicom_node.scu`),
the configuration's defaults and limits (:mod:`dicom_node.config`), and the
attribute lists of a derived Secondary Capture and of a rejection note built
here by the node's own code from a synthetic source.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts

from dicom_node import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PRODUCT_NAME,
    __version__,
)
from dicom_node.config import NodeSettings, OutputSettings
from dicom_node.derive import build_derived
from dicom_node.model_meta import ModelMetadata
from dicom_node.pixels import normalize_dataset
from dicom_node.rejection_note import build_rejection_notes
from dicom_node.scp import ACCEPTED_TRANSFER_SYNTAXES, STORE_STATUSES
from dicom_node.scu import MAX_CONTEXTS, SUCCESS_STATUSES, UNCOMPRESSED

VERIFICATION = "1.2.840.10008.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
PRINTED_VRS = {"CS", "US", "SS", "IS"}
"""Attribute values shown in the IOD tables (fixed codes and numbers, never names or dates)."""
_FIXED_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _name(uid: str) -> str:
    return UID(uid).name


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)
    return lines


def _synthetic_source() -> Dataset:
    """A CR chest image with the attributes a modality sends (no real patient)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.3"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = "CONFORMANCE^EXAMPLE", "EXAMPLE"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20000101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
    ds.StudyDescription, ds.SeriesDescription = "CHEST", "PA"
    ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = "CR", "CHEST", 1, 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 512, 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ramp = np.add.outer(np.arange(512), np.arange(512)).astype(np.uint16) * 4
    ds.PixelData = ramp.tobytes()
    return ds


def _example_model() -> ModelMetadata:
    return ModelMetadata(
        name="cxr-pix2pix", version="X.Y.Z", size_multiple=256, sha256="0" * 64, path=Path("m")
    )


def _same(a: object, b: object) -> bool:
    return a == b or str(a) == str(b)


def _iod_rows(created: Dataset, source: Dataset, copied: str) -> list[tuple[str, ...]]:
    """One row per top-level attribute of `created`: where its value comes from, and the value
    when it is a code, a number or the SOP class (never a name, a date or an identifier)."""
    rows: list[tuple[str, ...]] = []
    for element in created:
        if element.tag.group == 0x0002 or element.keyword in ("PixelData", ""):
            continue
        keyword = element.keyword
        if keyword in source and _same(source[keyword].value, element.value):
            origin = copied
        elif element.VR == "SQ":
            origin = f"set by the node ({len(element.value)} item(s))"
        else:
            origin = "set by the node"
        value = ""
        if origin.startswith("set") and (element.VR in PRINTED_VRS or keyword == "SOPClassUID"):
            items = element.value if element.VM > 1 else [element.value]
            value = "\\".join(str(v) for v in items)
        tag = f"({element.tag.group:04X},{element.tag.element:04X})"
        rows.append((tag, keyword, origin, value))
    return rows


def derived_example(
    label: Literal["burned_in", "overlay", "none"] = "burned_in",
) -> tuple[Dataset, Dataset]:
    """A synthetic source and the Secondary Capture the node derives from it."""
    source = _synthetic_source()
    image = normalize_dataset(source)
    settings = OutputSettings(label=label)
    derived = build_derived(source, image, image.pixels, _example_model(), settings, _FIXED_TIME)
    return source, derived


def render() -> str:
    """The conformance statement as Markdown."""
    node = NodeSettings()
    storage = sorted(
        {str(c.abstract_syntax) for c in AllStoragePresentationContexts if c.abstract_syntax},
        key=lambda uid: tuple(int(part) for part in uid.split(".")),
    )
    out = [
        f"# DICOM Conformance Statement: {PRODUCT_NAME} {__version__}",
        "",
        "Generated by `python -m dicom_node.conformance` from the node's code; "
        "`tests/test_conformance.py` fails when this document and the code disagree.",
        "",
        "## 1 Overview",
        "",
        f"{PRODUCT_NAME} is a DICOM node that receives chest radiographs (C-STORE SCP), "
        "persists every instance before it answers, enhances CR/DX chest images with an ONNX "
        "generator, and sends a derived, labelled Secondary Capture series (and, for other "
        "routing rules, the received instance unchanged) to configured destinations "
        "(C-STORE SCU). When a model is recalled it sends IHE IOCM rejection notes (Key "
        "Object Selection). It verifies connectivity both ways (C-ECHO). It never modifies "
        "or replaces a received instance.",
        "",
        *_table(
            ("Network service", "SCU", "SCP"),
            [
                ("Verification", "Yes", "Yes"),
                ("Storage (every storage SOP class below)", "Yes (forwarding)", "Yes"),
                (_name(SECONDARY_CAPTURE), "Yes (derived series)", "Yes"),
                (_name(KEY_OBJECT_SELECTION), "Yes (rejection notes)", "Yes"),
            ],
        ),
        "",
        "Media interchange: not supported.",
        "",
        "## 2 Networking",
        "",
        "### 2.1 Implementation model",
        "",
        "One application entity (AE) per node process, with the configured AE title "
        f"(default `{node.ae_title}`), port (default {node.port}) and allowed callers. "
        "Real-world activities:",
        "",
        "1. *Receive*: a modality or PACS opens an association and sends instances; each is "
        "written to the spool and recorded in the database, then answered. A routing rule "
        "decides whether it is ignored, forwarded or enhanced.",
        "2. *Enhance*: a worker runs the generator on a chest CR/DX image and writes the "
        "derived Secondary Capture image (Annex A).",
        "3. *Send*: the dispatcher opens one association per destination and batch, and sends "
        "the derived (or forwarded) instances, retrying with backoff until the configured "
        "number of attempts, then dead-lettering.",
        "4. *Recall*: rejection notes (Annex B) for every instance a recalled model made are "
        "sent through the same dispatcher.",
        "",
        "### 2.2 AE specification",
        "",
        "#### SOP classes as SCP",
        "",
        f"Verification and the {len(storage)} storage SOP classes pynetdicom knows, each with "
        "every transfer syntax below:",
        "",
        *_table(
            ("SOP class", "UID"),
            [(_name(VERIFICATION), VERIFICATION)] + [(_name(u), u) for u in storage],
        ),
        "",
        "#### Transfer syntaxes accepted (storage)",
        "",
        *_table(
            ("Transfer syntax", "UID"), [(_name(u), str(u)) for u in ACCEPTED_TRANSFER_SYNTAXES]
        ),
        "",
        "Verification accepts Explicit and Implicit VR Little Endian.",
        "",
        "#### SOP classes as SCU",
        "",
        "The node sends what it made (Secondary Capture, Key Object Selection) and, under a "
        "forwarding rule, any storage SOP class it received. For every instance it proposes a "
        "presentation context with the instance's stored transfer syntax (when compressed) "
        "and one with the uncompressed syntaxes:",
        "",
        *_table(("Transfer syntax proposed", "UID"), [(_name(u), u) for u in UNCOMPRESSED]),
        "",
        f"At most {MAX_CONTEXTS} presentation contexts per association; larger batches are "
        "split. A file is sent byte for byte in the syntax it was stored in when the peer "
        "accepts it, else decompressed to an accepted uncompressed syntax.",
        "",
        "#### Association policies",
        "",
        *_table(
            ("Policy", "Value"),
            [
                ("Application context name", "1.2.840.10008.3.1.1.1"),
                ("Implementation class UID", IMPLEMENTATION_CLASS_UID),
                ("Implementation version name", IMPLEMENTATION_VERSION_NAME),
                ("Called AE title", "must equal the node's AE title, else rejected"),
                ("Calling AE titles", "`[node] allowed_calling_aets`; empty allows any"),
                (
                    "Simultaneous associations accepted",
                    f"`[node] max_associations` (default {node.max_associations})",
                ),
                ("Asynchronous operations", "not supported (one operation at a time)"),
                (
                    "Maximum PDU size received",
                    f"`[node] max_pdu_size` (default {node.max_pdu_size} bytes); "
                    "a longer PDU is answered with A-ABORT",
                ),
                (
                    "ACSE / DIMSE / network timeouts (s)",
                    f"{node.acse_timeout:g} / "
                    f"{node.dimse_timeout:g} / {node.network_timeout:g} (configurable)",
                ),
            ],
        ),
        "",
        "#### SOP-specific conformance: C-STORE SCP statuses",
        "",
        *_table(("Status", "Meaning"), [(f"0x{k:04X}", v) for k, v in STORE_STATUSES.items()]),
        "",
        "#### SOP-specific conformance: C-STORE SCU",
        "",
        "Statuses counted as stored: "
        + ", ".join(f"0x{s:04X}" for s in sorted(SUCCESS_STATUSES))
        + ". Any other status, a timeout or an abort is a failed attempt; it is retried with "
        "exponential backoff up to `[jobs] max_attempts`, then dead-lettered and shown in "
        "`dicom-node jobs`.",
        "",
        "### 2.3 Network interfaces and configuration",
        "",
        "TCP/IP (IPv4), the port and address of `[node]`; destinations in `[[destinations]]` "
        "(AE title, host, port). TLS is not supported: deploy the node on a trusted network "
        "segment or behind a TLS tunnel.",
        "",
        "## 3 Character sets",
        "",
        "Received instances are stored as received. A derived or rejection object copies the "
        "source's patient and study attributes with the source's Specific Character Set.",
        "",
        "## 4 Security",
        "",
        "Callers are restricted by AE title (no authentication beyond it). Logs at INFO carry "
        "UIDs, never patient names or IDs. Derived images carry a visible AI label and "
        "Burned In Annotation is stated truthfully (Annex A).",
        "",
        "## Annex A: the derived Secondary Capture image",
        "",
        f"SOP class {_name(SECONDARY_CAPTURE)} ({SECONDARY_CAPTURE}), Explicit VR Little "
        "Endian, in a new series of the source's study. Attributes of the object the node "
        "derives from a CR chest image with Imager Pixel Spacing (label burned in; values are "
        "shown for codes and numbers the node sets):",
        "",
    ]
    source, derived = derived_example()
    out += _table(
        ("Tag", "Attribute", "Origin", "Value"),
        _iod_rows(derived, source, "copied from the source"),
    )
    overlay = derived_example("overlay")[1]
    overlay_tags = sorted(
        f"({e.tag.group:04X},{e.tag.element:04X})" for e in overlay if e.tag.group == 0x6000
    )
    out += [
        "",
        'With `[output] label = "overlay"` the label is an Overlay Plane instead: '
        + ", ".join(overlay_tags)
        + ". With `none` there is no visible label (Burned In Annotation then follows the "
        "source: NO only when the source says NO).",
        "",
        "## Annex B: the IOCM rejection note",
        "",
        f"SOP class {_name(KEY_OBJECT_SELECTION)} ({KEY_OBJECT_SELECTION}), one per study, "
        'document title (113037, DCM, "Rejected for Patient Safety Reasons"), referencing '
        "every derived instance of the recalled model in that study:",
        "",
    ]
    note = build_rejection_notes([derived], recall_id="example", reason="Example recall.")[0]
    out += _table(
        ("Tag", "Attribute", "Origin", "Value"),
        _iod_rows(note.dataset, derived, "copied from the derived images"),
    )
    out.append("")
    return "\n".join(out)


def main() -> None:
    """Print the conformance statement."""
    print(render(), end="")


if __name__ == "__main__":
    main()
