"""IOCM rejection notes (KOS) for a recalled model's derived instances, checked with dciodvfy."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from helpers.dicom_files import small_template
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from test_derive import MODEL, dciodvfy_errors

from dicom_node.config import OutputSettings
from dicom_node.derive import build_derived
from dicom_node.pixels import normalize_dataset
from dicom_node.rejection_note import build_rejection_notes

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def derived(rg1_dataset: Dataset) -> list[Dataset]:
    """Three derived instances: two in RG1's study, one in another study."""
    template = small_template(rg1_dataset)
    out = []
    for index in range(3):
        source = copy.deepcopy(template)
        source.SOPInstanceUID = generate_uid()
        if index == 2:
            source.StudyInstanceUID = generate_uid()
        image = normalize_dataset(source)
        out.append(build_derived(source, image, image.pixels, MODEL, OutputSettings()))
    return out


def test_one_note_per_study_referencing_exactly_its_instances(
    derived: list[Dataset], tmp_path: Path
) -> None:
    notes = build_rejection_notes(derived, recall_id="r1", reason="Model recalled: stripes.")
    assert len(notes) == 2
    by_study: dict[str, set[str]] = {}
    for ds in derived:
        by_study.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    for note in notes:
        doc = note.dataset
        assert doc.SOPClassUID == KOS and doc.Modality == "KO"
        assert doc.StudyInstanceUID == note.study_instance_uid
        assert doc.PatientID == derived[0].PatientID
        title = doc.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator) == ("113037", "DCM")
        evidence = {
            item.ReferencedSOPInstanceUID
            for study in doc.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }
        assert evidence == by_study[note.study_instance_uid] == set(note.rejected)
        path = tmp_path / f"{note.study_instance_uid}.dcm"
        doc.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
        text = [item for item in pydicom.dcmread(path).ContentSequence if item.ValueType == "TEXT"]
        assert text[0].TextValue == "Model recalled: stripes."


def test_the_same_recall_builds_the_same_uids_and_another_recall_new_ones(
    derived: list[Dataset],
) -> None:
    first = build_rejection_notes(derived, recall_id="r1", reason="x")
    again = build_rejection_notes(list(reversed(derived)), recall_id="r1", reason="x")
    other = build_rejection_notes(derived, recall_id="r2", reason="x")
    uids = [n.dataset.SOPInstanceUID for n in first]
    assert uids == [n.dataset.SOPInstanceUID for n in again]
    assert not set(uids) & {n.dataset.SOPInstanceUID for n in other}


def test_bad_requests_are_refused(derived: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="at least one instance"):
        build_rejection_notes([], recall_id="r", reason="x")
    with pytest.raises(ValueError, match="needs a reason"):
        build_rejection_notes(derived, recall_id="r", reason="  ")
    with pytest.raises(ValueError, match="listed twice"):
        build_rejection_notes([derived[0], derived[0]], recall_id="r", reason="x")
