"""``dicom-node model recall``: the model is refused, its outputs get IOCM rejection notes.

In process (:mod:`harness`): the node enhances images of two studies and sends
them to a sink, the model is recalled with the command line, and the pumped
queue sends one Key Object Selection per study referencing exactly that
study's derived instances (each checked with dciodvfy). The last test does the
same with ``dicom-node serve`` as a process and Orthanc as the PACS.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from harness import InProcessNode, SinkSCP
from helpers.dicom_files import SampleFile
from helpers.peers import DICOM_NODE, NodeProcess, Orthanc, storescu
from onnx_models import make_smoothing_model
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from test_derive import MODEL, dciodvfy_errors, derive
from test_worker import ENHANCE_ALL

from dicom_node import jobs_report
from dicom_node.cli import main
from dicom_node.db import DerivedInstance, Dispatch, Job, Recall
from dicom_node.errors import ConfigError
from dicom_node.jobs import retry
from dicom_node.model_meta import file_sha256
from dicom_node.recall_report import KnownModel, match_model

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
REASON = "Stripe artefacts over the mediastinum."


@pytest.fixture
def sinks() -> Iterator[tuple[SinkSCP, SinkSCP]]:
    first, second = SinkSCP("PACS_A").start(), SinkSCP("PACS_B").start()
    yield first, second
    first.stop()
    second.stop()


def _source(template: Dataset, study_instance_uid: str) -> Dataset:
    ds = copy.deepcopy(template)
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _referenced(note: Dataset) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def _recall(node: InProcessNode, prefix: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["model", "recall", prefix, "--reason", REASON, "--config", str(node.config_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DICOM_NODE, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_recall_sends_one_note_per_study_and_destination_set(
    tmp_path: Path,
    sinks: tuple[SinkSCP, SinkSCP],
    small_dataset: Dataset,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink_a, sink_b = sinks
    model = make_smoothing_model(tmp_path / "smoother.onnx")
    rules = [
        # Study one goes to both PACS; study two only to PACS_A.
        {**ENHANCE_ALL[0], "name": "both", "calling_aet": ["BOTH"], "destinations": ["a", "b"]},
        {**ENHANCE_ALL[0], "name": "a-only", "destinations": ["a"]},
    ]
    node = InProcessNode(
        tmp_path / "node",
        rules=rules,
        destinations=[sink_a.destination("a"), sink_b.destination("b")],
        model=model,
    )
    try:
        study_one, study_two = generate_uid(), generate_uid()
        for ds, caller in (
            (_source(small_dataset, study_one), "BOTH"),
            (_source(small_dataset, study_one), "BOTH"),
            (_source(small_dataset, study_two), "MODALITY"),
        ):
            assert node.store(ds, calling_ae=caller) == 0x0000
        node.pump()
        assert (len(sink_a.received), len(sink_b.received)) == (3, 2)
        derived = {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID) for ds in sink_a.received}

        sha = file_sha256(model)
        out = _recall(node, sha[:12].upper(), capsys)
        assert "Rejection notes: 2, referencing 3 derived instance(s)." in out
        assert "  a: 2 note(s), 3 instance(s); dispatches pending 2" in out
        assert "  b: 1 note(s), 2 instance(s); dispatches pending 1" in out
        assert "WARNING" not in out

        node.pump()
        notes_a = [ds for ds in sink_a.received if ds.SOPClassUID == KOS]
        notes_b = [ds for ds in sink_b.received if ds.SOPClassUID == KOS]
        assert len(notes_a) == 2 and len(notes_b) == 1
        for note in notes_a + notes_b:
            expected = {uid for uid, study in derived.items() if study == note.StudyInstanceUID}
            assert _referenced(note) == expected
            title = note.ConceptNameCodeSequence[0]
            assert (title.CodeValue, title.CodingSchemeDesignator) == ("113037", "DCM")
            path = tmp_path / f"{note.SOPInstanceUID}.dcm"
            note.save_as(path, enforce_file_format=True)
            assert dciodvfy_errors(path) == []
        # PACS_B stored the same instances of study one as PACS_A: the same note.
        assert notes_b[0].SOPInstanceUID in {n.SOPInstanceUID for n in notes_a}

        # The notes are jobs of the queue: listed, shown per destination, done.
        rows = [r for r in jobs_report.list_jobs(node.runtime) if r["action"] == "reject"]
        assert [r["state"] for r in rows] == ["done", "done"]
        details = [
            jobs_report.format_detail(jobs_report.show_job(node.runtime, row["id"]) or {})
            for row in rows
        ]
        assert all("(reject, rule recall " in d and "-> a: sent" in d for d in details)
        assert sum("-> b: sent" in d for d in details) == 1
        with node.runtime.session() as session:
            recall = session.scalars(select(Recall)).one()
            assert recall.model_sha256 == sha and recall.reason == REASON
            assert "@" in recall.recalled_by and recall.missing == []

        # Idempotent: recalling again queues nothing and says when it was recalled.
        again = _recall(node, sha[:16], capsys)
        assert "was recalled" in again and "nothing new was queued" in again
        assert node.pump() == 0
        assert (len(sink_a.received), len(sink_b.received)) == (5, 3)

        # A running node fails new enhance jobs with the recalled model.
        assert node.store(_source(small_dataset, study_two)) == 0x0000
        node.pump()
        with node.runtime.session() as session:
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
            assert job is not None and job.state == "failed" and "recalled" in (job.error or "")
        assert len(sink_a.received) == 5

        # serve, enhance and model info refuse or flag the model.
        served = _cli(node.config_path, "serve")
        assert served.returncode == 2
        # Log lines (the model was loaded) may come first; the error is one line.
        (line,) = [x for x in served.stderr.splitlines() if x.startswith("dicom-node: error")]
        assert line.startswith("dicom-node: error: model: ") and "recalled" in line
        assert REASON in line
        source = tmp_path / "in.dcm"
        small_dataset.save_as(source, enforce_file_format=True)
        enhanced = _cli(node.config_path, "enhance", str(source), "-o", str(tmp_path / "out"))
        assert enhanced.returncode == 2 and "recalled" in enhanced.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
        info = _cli(node.config_path, "model", "info")
        assert info.returncode == 0 and "recalled " in info.stdout and REASON in info.stdout
    finally:
        node.close()


def test_a_purged_derived_file_is_reported_not_silently_skipped(
    tmp_path: Path, small_dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = SinkSCP().start()
    model = make_smoothing_model(tmp_path / "smoother.onnx")
    node = InProcessNode(
        tmp_path / "node", rules=ENHANCE_ALL, destinations=[sink.destination()], model=model
    )
    try:
        for _ in range(2):
            assert node.store(_source(small_dataset, generate_uid())) == 0x0000
        node.pump()
        with node.runtime.session() as session:
            purged, kept = session.scalars(select(DerivedInstance).order_by(DerivedInstance.id))
        Path(purged.path).unlink()
        out = _recall(node, file_sha256(model)[:10], capsys)
        assert "Rejection notes: 1, referencing 1 derived instance(s)." in out
        assert "WARNING: 1 derived instance(s) could not be referenced" in out
        assert purged.sop_instance_uid in out
        node.pump()
        (note,) = [ds for ds in sink.received if ds.SOPClassUID == KOS]
        assert _referenced(note) == {kept.sop_instance_uid}
        with node.runtime.session() as session:
            assert session.scalars(select(Recall.missing)).one() == [purged.sop_instance_uid]
    finally:
        node.close()
        sink.stop()


def test_outputs_not_sent_yet_are_cancelled_not_sent_later(
    tmp_path: Path, small_dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = SinkSCP(status=0xA700).start()  # the PACS refuses: the output stays pending
    model = make_smoothing_model(tmp_path / "smoother.onnx")
    node = InProcessNode(
        tmp_path / "node", rules=ENHANCE_ALL, destinations=[sink.destination()], model=model
    )
    try:
        assert node.store(_source(small_dataset, generate_uid())) == 0x0000
        node.pump()
        assert sink.received == []
        out = _recall(node, file_sha256(model)[:8], capsys)
        assert "Rejection notes: 0, referencing 0 derived instance(s)." in out
        assert "1 output(s) of the model not yet sent were cancelled." in out
        sink.status = 0x0000
        time.sleep(0.2)  # past the retry's backoff
        node.pump()
        assert sink.received == []
        with node.runtime.session() as session:
            (dispatch,) = session.scalars(select(Dispatch)).all()
            assert dispatch.state == "dead" and "recalled" in (dispatch.last_error or "")
            (job,) = session.scalars(select(Job)).all()
            assert job.state == "dead_lettered"
        # jobs retry never re-sends a recalled output: it processes the source again,
        # which the recalled model refuses.
        assert retry(node.runtime, job.id) == f"Job {job.id} re-queued for processing."
        node.pump()
        assert sink.received == []
        with node.runtime.session() as session:
            again = session.get(Job, job.id)
            assert again is not None and again.state == "failed"
            assert "was recalled" in (again.error or "")
    finally:
        node.close()
        sink.stop()


def test_unknown_short_and_ambiguous_prefixes_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = SinkSCP().start()
    node = InProcessNode(tmp_path / "node", rules=ENHANCE_ALL, destinations=[sink.destination()])
    try:
        for prefix, message in (
            ("0123456789abcdef", "matches no model this node knows"),
            ("abc", "is not 8 to 64 hexadecimal digits"),
            ("zzzzzzzzzz", "is not 8 to 64 hexadecimal digits"),
        ):
            code = main(
                ["model", "recall", prefix, "--reason", "x", "--config", str(node.config_path)]
            )
            err = capsys.readouterr().err
            assert code == 2
            (line,) = err.splitlines()
            assert line.startswith("dicom-node: error: SHA256_PREFIX: ") and message in line
        blank = main(
            ["model", "recall", "0123456789", "--reason", " ", "--config", str(node.config_path)]
        )
        assert blank == 2 and "--reason" in capsys.readouterr().err
        with node.runtime.session() as session:
            assert session.scalars(select(Recall)).all() == []
    finally:
        node.close()
        sink.stop()
    known = {
        sha: KnownModel(sha, None, None, "installed")
        for sha in ("abcdef01" + "0" * 56, "abcdef01" + "1" * 56)
    }
    with pytest.raises(ConfigError, match="'abcdef01' is ambiguous; it matches abcdef0100000000"):
        match_model("abcdef01", known)
    assert match_model("ABCDEF011", known).sha256 == "abcdef01" + "1" * 56


def test_reprocessing_with_another_model_gives_new_uids(small_dataset: Dataset) -> None:
    other = dataclasses.replace(MODEL, sha256="cd" * 32)
    first, again, reprocessed = (
        derive(small_dataset),
        derive(small_dataset),
        derive(small_dataset, other),
    )
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert reprocessed.SOPInstanceUID != first.SOPInstanceUID
    assert reprocessed.SeriesInstanceUID != first.SeriesInstanceUID


@pytest.mark.network
@pytest.mark.slow
def test_rejection_notes_reach_orthanc(
    node: Callable[..., NodeProcess],
    orthanc: Orthanc,
    small_copies: Callable[..., list[SampleFile]],
    tmp_path: Path,
) -> None:
    model = make_smoothing_model(tmp_path / "smoother.onnx")
    serving = node(destinations=[orthanc], rules=ENHANCE_ALL, extra={"model": {"path": str(model)}})
    files = small_copies(1) + small_copies(1)  # two studies
    sent = storescu(serving.port, [f.path for f in files], called=serving.ae_title)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    serving.wait_jobs(2, timeout=120)
    rows = serving.sql("SELECT sop_instance_uid, study_instance_uid FROM derived_instances")
    derived = {row["sop_instance_uid"]: row["study_instance_uid"] for row in rows}
    assert len(derived) == 2 and len(set(derived.values())) == 2

    recalled = serving.cli("model", "recall", file_sha256(model)[:16], "--reason", REASON)
    assert recalled.returncode == 0, recalled.stderr
    assert "Rejection notes: 2, referencing 2 derived instance(s)." in recalled.stdout

    ids = orthanc.wait_for_count(4, timeout=120)
    stored = [pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in ids]
    notes = [ds for ds in stored if ds.SOPClassUID == KOS]
    assert len(notes) == 2
    for note in notes:
        expected = {uid for uid, study in derived.items() if study == note.StudyInstanceUID}
        assert _referenced(note) == expected
    jobs = serving.wait_jobs(4, timeout=60)
    assert sorted(job["action"] for job in jobs) == ["enhance", "enhance", "reject", "reject"]
    listed = serving.cli("jobs", "list")
    assert listed.returncode == 0 and listed.stdout.count(" reject ") == 2
