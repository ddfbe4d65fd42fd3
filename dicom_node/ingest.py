"""Persist a received instance and enqueue its job, before success is answered.

The order is the durability rule: the bytes are written to the spool
(temporary file, fsync, atomic rename), then the instance row and its job are
committed in one transaction. Only then does the caller answer 0x0000. If
either step fails nothing is left behind and the caller answers 0xA700 so
the sender retries. A re-sent SOP Instance UID changes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from dicom_node.dataset_info import InstanceInfo
from dicom_node.db import Instance, Job, Series, Study, utcnow
from dicom_node.errors import StorageError
from dicom_node.logs import log_event
from dicom_node.routing import Route, route
from dicom_node.runtime import Runtime
from dicom_node.spool import remove_quietly, spool_path, write_atomic
from dicom_node.states import Action, JobState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Outcome of :func:`ingest`."""

    outcome: str
    """``stored``, ``duplicate``."""
    instance_id: int
    job_id: int | None
    route: Route | None
    path: Path | None


def _get_or_create_study(session: Session, info: InstanceInfo) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == info.study_instance_uid))
    if study is None:
        study = Study(
            study_instance_uid=info.study_instance_uid,
            patient_id=info.patient_id[:64] or None,
            accession_number=info.accession_number[:16] or None,
        )
        session.add(study)
        session.flush()
    return study


def _get_or_create_series(session: Session, info: InstanceInfo, study: Study) -> Series:
    series = session.scalar(
        select(Series).where(Series.series_instance_uid == info.series_instance_uid)
    )
    if series is None:
        series = Series(
            series_instance_uid=info.series_instance_uid,
            study_id=study.id,
            modality=info.modality[:16] or None,
        )
        session.add(series)
        session.flush()
    return series


def _existing(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def ingest(runtime: Runtime, data: bytes, info: InstanceInfo, calling_aet: str) -> IngestResult:
    """Store `data` durably, record it and queue its job.

    Parameters
    ----------
    runtime : Runtime
        The process runtime.
    data : bytes
        The instance in DICOM Part 10 format, exactly as received.
    info : InstanceInfo
        Its identifying attributes (from :func:`~dicom_node.dataset_info.inspect_encoded`).
    calling_aet : str
        AE title of the sender.

    Returns
    -------
    IngestResult
        ``stored`` with the new job, or ``duplicate`` when the SOP Instance
        UID was already recorded (nothing is written then).

    Raises
    ------
    StorageError
        If the file or the database row could not be written; nothing is left
        behind.
    """
    start = time.perf_counter()
    try:
        with runtime.session() as session:
            existing = _existing(session, info.sop_instance_uid)
            if existing is not None:
                log_event(
                    logger,
                    "instance.duplicate",
                    sop_instance_uid=info.sop_instance_uid,
                    calling_aet=calling_aet,
                )
                return IngestResult("duplicate", existing.id, None, None, Path(existing.path))
    except SQLAlchemyError as exc:
        raise StorageError(f"The database is unavailable: {exc.__class__.__name__}.") from exc

    now = utcnow()
    path = spool_path(runtime.config.storage.spool_dir, "received", info.sop_instance_uid, now)
    write_atomic(path, data)
    written = time.perf_counter()
    decision = route(runtime.config, info, calling_aet)
    try:
        result = _record(runtime, info, decision, path, len(data), calling_aet)
    except BaseException:
        remove_quietly(path)
        raise
    if result.outcome == "duplicate":
        remove_quietly(path)
        return result
    log_event(
        logger,
        "instance.stored",
        sop_instance_uid=info.sop_instance_uid,
        series_instance_uid=info.series_instance_uid,
        study_instance_uid=info.study_instance_uid,
        sop_class_uid=info.sop_class_uid,
        transfer_syntax_uid=info.transfer_syntax_uid,
        bytes=len(data),
        calling_aet=calling_aet,
        action=decision.action,
        rule=decision.rule,
        route_reason=decision.reason,
        job_id=result.job_id,
        write_ms=(written - start) * 1000,
        total_ms=(time.perf_counter() - start) * 1000,
    )
    if result.job_id is not None:
        runtime.notify_new_job()
    return result


def _record(
    runtime: Runtime,
    info: InstanceInfo,
    decision: Route,
    path: Path,
    size: int,
    calling_aet: str,
) -> IngestResult:
    """Insert the study, series, instance and job rows in one transaction."""
    for attempt in range(3):
        try:
            with runtime.session() as session, session.begin():
                existing = _existing(session, info.sop_instance_uid)
                if existing is not None:
                    return IngestResult("duplicate", existing.id, None, decision, None)
                study = _get_or_create_study(session, info)
                series = _get_or_create_series(session, info, study)
                instance = Instance(
                    sop_instance_uid=info.sop_instance_uid,
                    sop_class_uid=info.sop_class_uid,
                    series_id=series.id,
                    transfer_syntax_uid=info.transfer_syntax_uid,
                    path=str(path),
                    size_bytes=size,
                    calling_aet=calling_aet[:16],
                )
                session.add(instance)
                session.flush()
                job_id = None
                if decision.action != Action.IGNORE:
                    job = Job(
                        instance_id=instance.id,
                        state=JobState.QUEUED.value,
                        action=Action(decision.action).value,
                        rule=decision.rule,
                        destinations=list(decision.destinations),
                    )
                    session.add(job)
                    session.flush()
                    job_id = job.id
                instance_id = instance.id
            return IngestResult("stored", instance_id, job_id, decision, path)
        except IntegrityError as exc:
            # A concurrent association stored the same study, series or
            # instance first: look again.
            if attempt == 2:
                raise StorageError(f"The database refused the instance: {exc.orig}.") from exc
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StorageError(f"The database is unavailable: {cause}.") from exc
    raise AssertionError("unreachable")
