"""IHE IOCM rejection notes: take a recalled model's output back out of a PACS.

When a model turns out to be faulty, every image it derived must disappear
from the reading room. IHE Imaging Object Change Management (IOCM) defines
how: a Key Object Selection (KOS) document titled (113037, DCM, "Rejected for
Patient Safety Reasons"), in the same study as the images it rejects, that
references each of them. A PACS that supports IOCM hides or deletes the
referenced instances; one that does not still files the note next to them,
where a reader sees it.

:func:`build_rejection_notes` makes one note per study from the headers of
the derived instances (no pixel data is needed). Its UIDs are derived from
the recall's identifier and the study, so building the notes again (a retry,
a restart) gives the same objects and a PACS stores them once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_node import PRODUCT_NAME, __version__

REJECTED_FOR_PATIENT_SAFETY = codes.DCM.RejectedForPatientSafetyReasons
"""The document title IOCM gives a note that rejects objects for patient safety (113037, DCM)."""

NOTE_SERIES_NUMBER = 9999
"""Series Number of the notes' series (after the node's derived series)."""

MAX_DESCRIPTION = 1024
"""The reason is cut to this many characters in the note (a TEXT content item)."""


@dataclass(frozen=True)
class RejectionNote:
    """One built note and what it rejects.

    Attributes
    ----------
    dataset : pydicom.dataset.Dataset
        The KOS document, ready to be written or sent.
    study_instance_uid : str
        The study it belongs to (that of every instance it references).
    rejected : tuple of str
        The SOP Instance UIDs it references, sorted.
    """

    dataset: Dataset
    study_instance_uid: str
    rejected: tuple[str, ...]


def _uid(recall_id: str, study_instance_uid: str, kind: str) -> str:
    return str(generate_uid(entropy_srcs=["rejection-note", recall_id, study_instance_uid, kind]))


def build_rejection_notes(
    derived: Sequence[Dataset],
    *,
    recall_id: str,
    reason: str,
    manufacturer: str = PRODUCT_NAME,
) -> list[RejectionNote]:
    """One IOCM rejection note per study, referencing every derived instance given.

    Parameters
    ----------
    derived : sequence of pydicom.dataset.Dataset
        Headers of the instances to reject (the node's own derived objects;
        pixel data is not read). They carry the patient and study attributes
        the note copies.
    recall_id : str
        Identifies the recall (e.g. the model's SHA-256 and the time of the
        recall): the notes' UIDs derive from it.
    reason : str
        Why the instances are rejected; written as the note's Key Object
        Description.
    manufacturer : str, optional
        Manufacturer of the note.

    Returns
    -------
    list of RejectionNote
        Sorted by Study Instance UID.

    Raises
    ------
    ValueError
        If `derived` is empty, the reason is blank, or one SOP instance is given twice.
    """
    if not derived:
        raise ValueError("A rejection note needs at least one instance to reject.")
    if not reason.strip():
        raise ValueError("A rejection note needs a reason; it is shown to whoever reads the note.")
    seen: set[str] = set()
    by_study: dict[str, list[Dataset]] = defaultdict(list)
    for ds in derived:
        uid = str(ds.SOPInstanceUID)
        if uid in seen:
            raise ValueError(f"The instance {uid} is listed twice in one recall.")
        seen.add(uid)
        by_study[str(ds.StudyInstanceUID)].append(ds)
    notes = []
    for study_uid in sorted(by_study):
        instances = sorted(by_study[study_uid], key=lambda d: str(d.SOPInstanceUID))
        content = hd.ko.KeyObjectSelection(
            document_title=REJECTED_FOR_PATIENT_SAFETY,
            referenced_objects=instances,
            description=reason.strip()[:MAX_DESCRIPTION],
        )
        document = hd.ko.KeyObjectSelectionDocument(
            evidence=instances,
            content=content,
            series_instance_uid=_uid(recall_id, study_uid, "series"),
            series_number=NOTE_SERIES_NUMBER,
            sop_instance_uid=_uid(recall_id, study_uid, "instance"),
            instance_number=1,
            manufacturer=manufacturer,
        )
        document.SeriesDescription = "REJECTED FOR PATIENT SAFETY (AI RECALL)"
        document.SoftwareVersions = __version__
        notes.append(
            RejectionNote(
                dataset=document,
                study_instance_uid=study_uid,
                rejected=tuple(str(d.SOPInstanceUID) for d in instances),
            )
        )
    return notes
