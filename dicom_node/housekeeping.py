"""Housekeeping: retention of received and derived files, orphan clean-up.

Only finished work is purged: an instance whose job is still queued, running
or sending is kept whatever its age.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

from sqlalchemy import delete, select

from dicom_node.db import (
    DerivedInstance,
    Dispatch,
    DispatchAttempt,
    Instance,
    Job,
    Series,
    Study,
    utcnow,
)
from dicom_node.logs import log_event
from dicom_node.runtime import Runtime
from dicom_node.spool import PARTIAL_MAX_AGE, PARTIAL_SUFFIX, partial_abandoned, remove_quietly
from dicom_node.states import FINAL_JOB_STATES

logger = logging.getLogger(__name__)

ORPHAN_AGE = PARTIAL_MAX_AGE
"""Age from which a spool file no row refers to is an orphan (the spool's own bound)."""


BATCH = 500


def purge_expired(runtime: Runtime, now: dt.datetime | None = None) -> int:
    """Delete instances older than ``storage.retention_days`` with finished jobs.

    Their spool files, jobs, dispatches, attempts and derived files go with
    them; empty series and studies follow. ``retention_days = 0`` keeps
    everything. Work runs in batches of :data:`BATCH` instances, one
    transaction each. Returns the number of received instances purged.
    """
    days = runtime.config.storage.retention_days
    if days <= 0:
        return 0
    cutoff = (now or utcnow()) - dt.timedelta(days=days)
    total = 0
    while not runtime.stopping.is_set():
        purged, files = _purge_batch(runtime, cutoff)
        for path in files:
            remove_quietly(path)
        total += purged
        if purged < BATCH:
            break
    if total:
        log_event(logger, "retention.purged", instances=total, retention_days=days)
    return total


def _purge_batch(runtime: Runtime, cutoff: dt.datetime) -> tuple[int, list[Path]]:
    files: list[Path] = []
    busy = select(Job.instance_id).where(Job.state.not_in([s.value for s in FINAL_JOB_STATES]))
    with runtime.session() as session, session.begin():
        candidates = session.scalars(
            select(Instance)
            .where(Instance.received_at < cutoff, Instance.id.not_in(busy))
            .order_by(Instance.id)
            .limit(BATCH)
        ).all()
        for instance in candidates:
            for job in session.scalars(select(Job).where(Job.instance_id == instance.id)):
                dispatch_ids = select(Dispatch.id).where(Dispatch.job_id == job.id)
                session.execute(
                    delete(DispatchAttempt).where(DispatchAttempt.dispatch_id.in_(dispatch_ids))
                )
                session.execute(delete(Dispatch).where(Dispatch.job_id == job.id))
                for derived in session.scalars(
                    select(DerivedInstance).where(DerivedInstance.job_id == job.id)
                ):
                    files.append(Path(derived.path))
                session.execute(delete(DerivedInstance).where(DerivedInstance.job_id == job.id))
                session.delete(job)
            files.append(Path(instance.path))
            session.delete(instance)
        session.flush()
        for series in session.scalars(select(Series).where(~Series.instances.any())):
            session.delete(series)
        session.flush()
        for study in session.scalars(select(Study).where(~Study.series.any())):
            session.delete(study)
    return len(candidates), files


def remove_orphans(runtime: Runtime, min_age: dt.timedelta = ORPHAN_AGE) -> int:
    """Delete spool files that no database row refers to (left by a crash).

    A file is an orphan when it is older than `min_age` and neither a received
    nor a derived instance points at it. A ``.partial`` file is removed when
    :func:`~dicom_node.spool.partial_abandoned` says so (its writer is gone,
    or it is older than `min_age`). Returns the number of files removed.
    """
    spool = runtime.config.storage.spool_dir
    if not spool.exists():
        return 0
    with runtime.session() as session:
        known = set(session.scalars(select(Instance.path)).all())
        known.update(session.scalars(select(DerivedInstance.path)).all())
    limit = time.time() - min_age.total_seconds()
    removed = 0
    for path in spool.rglob("*"):
        if not path.is_file():
            continue
        if path.name.endswith(PARTIAL_SUFFIX):
            orphan = partial_abandoned(path, min_age)
        else:
            try:
                orphan = path.stat().st_mtime <= limit and str(path) not in known
            except FileNotFoundError:
                continue
        if orphan:
            remove_quietly(path)
            removed += 1
    if removed:
        log_event(logger, "spool.orphans_removed", files=removed)
    return removed


def run_housekeeping(runtime: Runtime) -> None:
    """Retention then orphan clean-up; errors are logged, never raised."""
    try:
        purge_expired(runtime)
        remove_orphans(runtime)
    except Exception:
        logger.exception("housekeeping failed")
