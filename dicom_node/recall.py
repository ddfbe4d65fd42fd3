"""Recalling a model: stop using it and take its outputs back out of the PACS.

``dicom-node model recall SHA256_PREFIX --reason TEXT`` (:func:`recall_model`)
records the recall in the ``recalls`` table (:class:`~dicom_node.db.Recall`);
from then on ``serve`` and ``enhance`` refuse the model (:func:`refuse_recalled`)
and a running node fails its enhance jobs. It then sends, to every destination
that stored outputs of the model, IHE IOCM rejection notes
(:mod:`dicom_node.rejection_note`): one Key Object Selection per study,
referencing every derived instance of that study the destination stored.
Destinations that stored the same instances of a study get the same note.

How a note travels: it is written atomically to the spool
(``spool/notes/<day>/``) and recorded exactly like a received instance: an
``instances`` row (in its study, in a new KO series, ``calling_aet`` the
node's own AE title) with a job whose action is ``reject``, created in state
``sending`` with one ``dispatches`` row per destination, and pointing at the
recall through ``jobs.recall_id``. This reuses, unchanged, everything the
queue already does for a job's outputs: batching, retries with backoff,
dead-lettering, ``jobs list|show|retry``, lease recovery, retention. (The
alternatives, derived-instance rows or a note table with dispatches that point
at it instead of at a job, would have needed every reader of
``dispatches.job_id`` to learn a second owner.)

Headers come from the derived files in the spool, read without pixel data. A
derived instance whose file has been purged cannot be referenced: it is listed
in the recall's ``missing`` and in the command's output, never dropped silently.
Outputs of the model that were still waiting to be sent are dead-lettered,
and ``jobs retry`` never re-queues them (it processes the source again).
Recalling a model again changes nothing and reports the first recall.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node import dispatch_queue
from dicom_node.config import Config
from dicom_node.db import DerivedInstance, Dispatch, Instance, Job, Recall, Series, Study, utcnow
from dicom_node.dispatch_queue import Output
from dicom_node.errors import ConfigError
from dicom_node.jobs import settle_jobs
from dicom_node.logs import log_event
from dicom_node.processes import this_host
from dicom_node.recall_report import describe_recall, find_recall, known_models, match_model
from dicom_node.rejection_note import build_rejection_notes
from dicom_node.runtime import Runtime
from dicom_node.spool import spool_path, write_atomic
from dicom_node.states import Action, DispatchState, JobState
from dicom_node.transitions import ANY_OWNER, transition

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoteSent:
    """One rejection note queued by a recall."""

    study_instance_uid: str
    sop_instance_uid: str
    destinations: tuple[str, ...]
    rejected: tuple[str, ...]
    job_id: int


@dataclass(frozen=True)
class RecallOutcome:
    """What :func:`recall_model` did (or found, when the model was recalled already)."""

    recall: Recall
    created: bool
    notes: list[NoteSent]
    cancelled: int
    """Dispatches of the model's outputs that were not sent yet and never will be."""


def _headers(derived: list[DerivedInstance]) -> tuple[dict[str, Dataset], list[str]]:
    """The derived files' headers by SOP Instance UID, and the UIDs whose file is gone."""
    headers: dict[str, Dataset] = {}
    missing: list[str] = []
    for row in derived:
        try:
            headers[row.sop_instance_uid] = pydicom.dcmread(row.path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            log_event(
                logger,
                "recall.file_missing",
                level=logging.WARNING,
                sop_instance_uid=row.sop_instance_uid,
                error=str(exc),
            )
            missing.append(row.sop_instance_uid)
    return headers, sorted(missing)


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _record_note(
    session: Session,
    config: Config,
    recall: Recall,
    note: Dataset,
    path: Path,
    size: int,
    destinations: tuple[str, ...],
    now: dt.datetime,
) -> int:
    """Insert the note's study, series, instance, job and dispatches; return the job id."""
    study_uid = str(note.StudyInstanceUID)
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        study = Study(study_instance_uid=study_uid, patient_id=note.get("PatientID") or None)
        session.add(study)
        session.flush()
    series = Series(
        series_instance_uid=str(note.SeriesInstanceUID), study_id=study.id, modality="KO"
    )
    session.add(series)
    session.flush()
    output = Output(
        path=str(path),
        sop_class_uid=str(note.SOPClassUID),
        sop_instance_uid=str(note.SOPInstanceUID),
        transfer_syntax_uid=str(note.file_meta.TransferSyntaxUID),
    )
    instance = Instance(
        sop_instance_uid=output.sop_instance_uid,
        sop_class_uid=output.sop_class_uid,
        series_id=series.id,
        transfer_syntax_uid=output.transfer_syntax_uid,
        path=output.path,
        size_bytes=size,
        calling_aet=config.node.ae_title[:16],
    )
    session.add(instance)
    session.flush()
    job = Job(
        instance_id=instance.id,
        action=Action.REJECT.value,
        rule=f"recall {recall.model_sha256[:16]}",
        destinations=list(destinations),
        state=JobState.SENDING.value,
        processed_at=now,
        recall_id=recall.id,
    )
    session.add(job)
    session.flush()
    dispatch_queue.enqueue(session, job.id, [output], destinations, now)
    return job.id


def _cancel_unsent(session: Session, sha256: str, reason: str) -> int:
    """Dead-letter the model's outputs still waiting to be sent; return how many.

    Their jobs are settled (``dead_lettered``); ``jobs retry`` then processes
    the source again (:func:`dicom_node.dispatch_queue.requeue_dead` never
    re-queues a recalled output).
    """
    pending = session.execute(
        select(Dispatch.id, Dispatch.job_id)
        .join(
            DerivedInstance,
            (DerivedInstance.job_id == Dispatch.job_id)
            & (DerivedInstance.sop_instance_uid == Dispatch.sop_instance_uid),
        )
        .where(
            DerivedInstance.model_sha256 == sha256,
            Dispatch.state == DispatchState.PENDING.value,
        )
    ).all()
    job_ids = {
        job_id
        for dispatch_id, job_id in pending
        if transition(
            session,
            Dispatch,
            dispatch_id,
            DispatchState.PENDING,
            DispatchState.DEAD,
            held_by=ANY_OWNER,
            last_error=f"not sent: model {sha256[:16]} was recalled ({reason})",
        )
    }
    settle_jobs(session, job_ids)
    return sum(1 for _dispatch_id, job_id in pending if job_id in job_ids)


Planned = tuple[Dataset, tuple[str, ...], tuple[str, ...], Path, int]
"""A note written to the spool: dataset, destinations, rejected UIDs, path, size."""


def _record_recall(
    runtime: Runtime, recall: Recall, planned: list[Planned], now: dt.datetime
) -> tuple[list[NoteSent], int]:
    """Insert the recall and its notes' rows, cancel unsent outputs, in one transaction."""
    config = runtime.config
    notes: list[NoteSent] = []
    with runtime.session() as session, session.begin():
        session.add(recall)
        session.flush()
        for dataset, targets, rejected, path, size in planned:
            job_id = _record_note(session, config, recall, dataset, path, size, targets, now)
            notes.append(
                NoteSent(
                    study_instance_uid=str(dataset.StudyInstanceUID),
                    sop_instance_uid=str(dataset.SOPInstanceUID),
                    destinations=targets,
                    rejected=rejected,
                    job_id=job_id,
                )
            )
        recall.notes = [
            {
                "study_instance_uid": n.study_instance_uid,
                "sop_instance_uid": n.sop_instance_uid,
                "destinations": list(n.destinations),
                "rejected": list(n.rejected),
                "job_id": n.job_id,
            }
            for n in notes
        ]
        cancelled = _cancel_unsent(session, recall.model_sha256, recall.reason)
    return notes, cancelled


def recall_model(
    runtime: Runtime,
    prefix: str,
    reason: str,
    *,
    recalled_by: str | None = None,
    now: dt.datetime | None = None,
) -> RecallOutcome:
    """Record the recall of a model and queue its rejection notes.

    Parameters
    ----------
    runtime : Runtime
        The process runtime.
    prefix : str
        At least 8 hex digits of the model's SHA-256 (:func:`match_model`).
    reason : str
        Why; recorded and written in every note.
    recalled_by : str, optional
        Who; default ``user@host``.
    now : datetime.datetime, optional
        Naive UTC time of the recall; default now.

    Returns
    -------
    RecallOutcome
        The recall and the notes queued (none when it existed already).

    Raises
    ------
    ConfigError
        If the reason is blank or the prefix matches no model or several.
    StorageError
        If a note cannot be written to the spool.
    """
    reason = " ".join(reason.split())
    if not reason:
        raise ConfigError("--reason: the reason is empty; say why the model is recalled.")
    config = runtime.config
    with runtime.session() as session:
        model = match_model(prefix, known_models(session, config))
        existing = find_recall(session, model.sha256)
        if existing is not None:
            return RecallOutcome(recall=existing, created=False, notes=[], cancelled=0)
        rows = session.execute(
            select(DerivedInstance, Dispatch.destination)
            .join(
                Dispatch,
                (Dispatch.job_id == DerivedInstance.job_id)
                & (Dispatch.sop_instance_uid == DerivedInstance.sop_instance_uid),
            )
            .where(
                DerivedInstance.model_sha256 == model.sha256,
                Dispatch.state == DispatchState.SENT.value,
            )
            .order_by(DerivedInstance.id)
        ).all()
    now = now or utcnow()
    derived = {row.sop_instance_uid: row for row, _dest in rows}
    headers, missing = _headers(list(derived.values()))
    # study -> destination -> the instances of that study the destination stored
    stored: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row, destination in rows:
        if row.sop_instance_uid in headers:
            stored[row.study_instance_uid][destination].add(row.sop_instance_uid)
    planned: list[Planned] = []
    for study_uid in sorted(stored):
        groups: dict[frozenset[str], list[str]] = defaultdict(list)
        for destination, uids in sorted(stored[study_uid].items()):
            groups[frozenset(uids)].append(destination)
        for members, names in groups.items():
            digest = hashlib.sha256("\\".join(sorted(members)).encode()).hexdigest()[:16]
            (note,) = build_rejection_notes(
                [headers[uid] for uid in sorted(members)],
                recall_id=f"{model.sha256}:{digest}",
                reason=reason,
            )
            data = _encode(note.dataset)
            path = spool_path(
                config.storage.spool_dir, "notes", str(note.dataset.SOPInstanceUID), now
            )
            write_atomic(path, data)
            planned.append((note.dataset, tuple(names), note.rejected, path, len(data)))
    recall = Recall(
        model_sha256=model.sha256,
        model_name=model.name,
        model_version=model.version,
        reason=reason,
        recalled_at=now,
        recalled_by=recalled_by or f"{getpass.getuser()}@{this_host()}",
        missing=missing,
    )
    try:
        notes, cancelled = _record_recall(runtime, recall, planned, now)
    except IntegrityError:
        # Another ``model recall`` of this model committed first: report that one.
        with runtime.session() as session:
            existing = find_recall(session, model.sha256)
        if existing is None:
            raise
        return RecallOutcome(recall=existing, created=False, notes=[], cancelled=0)
    log_event(
        logger,
        "model.recalled",
        level=logging.WARNING,
        sha256=model.sha256,
        notes=len(notes),
        instances=sum(len(n.rejected) for n in notes),
        missing=len(missing),
        cancelled=cancelled,
    )
    runtime.notify_new_dispatch()
    return RecallOutcome(recall=recall, created=True, notes=notes, cancelled=cancelled)


def summary(outcome: RecallOutcome, status: dict[str, dict[str, int]]) -> list[str]:
    """The lines ``dicom-node model recall`` prints."""
    recall = outcome.recall
    name = f"{recall.model_name} {recall.model_version}" if recall.model_name else "model"
    notes: list[dict[str, Any]] = list(recall.notes or [])
    if outcome.created:
        lines = [f"Recalled {name} (sha256 {recall.model_sha256[:16]}): {recall.reason}"]
    else:
        lines = [
            f"{name} (sha256 {recall.model_sha256[:16]}) was {describe_recall(recall)}; "
            "nothing new was queued."
        ]
    instances = {uid for note in notes for uid in note["rejected"]}
    lines.append(
        f"Rejection notes: {len(notes)}, referencing {len(instances)} derived instance(s)."
    )
    for destination in sorted({d for note in notes for d in note["destinations"]}):
        mine = [n for n in notes if destination in n["destinations"]]
        states = ", ".join(f"{k} {v}" for k, v in sorted(status.get(destination, {}).items()))
        lines.append(
            f"  {destination}: {len(mine)} note(s), "
            f"{sum(len(n['rejected']) for n in mine)} instance(s); dispatches {states or 'none'}"
        )
    for note in notes:
        lines.append(
            f"  job {note['job_id']}: note {note['sop_instance_uid']} in study "
            f"{note['study_instance_uid']} -> {', '.join(note['destinations'])}"
        )
    missing = list(recall.missing or [])
    if missing:
        lines.append(
            f"WARNING: {len(missing)} derived instance(s) could not be referenced, their file "
            f"was purged from the spool; reject them by hand: {' '.join(missing)}"
        )
    if outcome.cancelled:
        lines.append(f"{outcome.cancelled} output(s) of the model not yet sent were cancelled.")
    return lines
