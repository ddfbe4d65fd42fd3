"""The job queue, kept in the database so it survives restarts: job transitions.

A job moves ``queued`` → ``running`` → ``sending`` → ``done``
(:class:`~dicom_node.states.JobState`). When processing raises, the
:class:`~dicom_node.retry.RetryPolicy` reads the exception's class: a
:class:`~dicom_node.errors.PermanentError` makes the job ``failed`` at once;
anything else re-queues it with exponential backoff and jitter until
``jobs.max_attempts``, then ``dead_lettered``.

Every state change goes through :func:`~dicom_node.transitions.transition`
(a conditional ``UPDATE`` on the expected state and owner), so two processes
sharing a PostgreSQL database never both claim or both complete the same job,
and a process that lost a job (it was recovered by another) changes nothing.
The outputs' dispatch rows are written by :mod:`dicom_node.dispatch_queue`;
heartbeats and the recovery of work left by dead processes are in
:mod:`dicom_node.liveness`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node import dispatch_queue
from dicom_node.db import Instance, Job, utcnow
from dicom_node.dispatch_queue import Output
from dicom_node.errors import JobNotFoundError, JobStateError
from dicom_node.logs import log_event, ms_fields
from dicom_node.retry import Decision, RetryPolicy, error_text
from dicom_node.runtime import Runtime
from dicom_node.states import DispatchState, JobState
from dicom_node.transitions import ANY_OWNER, Owner, transition

__all__ = [
    "ClaimedJob",
    "JobNotFoundError",
    "Output",
    "claim_job",
    "complete_processing",
    "fail_job",
    "lease_end",
    "release_job",
    "retry",
    "settle_job",
    "settle_jobs",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this process now owns, with what processing needs."""

    id: int
    action: str
    attempts: int
    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    destinations: tuple[str, ...]
    created_at: dt.datetime
    claimed_at: dt.datetime
    rule: str | None = None
    """Name of the rule that routed the instance (None: no rule)."""


def lease_end(runtime: Runtime) -> dt.datetime:
    """When a claim made (or renewed) now runs out."""
    return utcnow() + dt.timedelta(seconds=runtime.config.jobs.lease_seconds)


def _finish(
    session: Session,
    job_id: int,
    expected: JobState,
    held_by: Owner,
    new: JobState,
    error: str | None,
) -> bool:
    """Move a job out of `expected` into `new`, giving up its claim."""
    values: dict[str, Any] = {"error": error, "owner": None, "lease_until": None}
    if new.is_final:
        values["finished_at"] = utcnow()
    return transition(session, Job, job_id, expected, new, held_by=held_by, **values)


def claim_job(runtime: Runtime) -> ClaimedJob | None:
    """Take the oldest due queued job, or return ``None`` when there is none.

    A job whose attempts are already exhausted (its workers kept dying) is
    dead-lettered instead of being run again.
    """
    policy = RetryPolicy(runtime.config.jobs)
    with runtime.session() as session, session.begin():
        for _ in range(5):
            now = utcnow()
            job = session.scalar(
                select(Job)
                .where(Job.state == JobState.QUEUED.value, Job.next_run_at <= now)
                .order_by(Job.next_run_at, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            attempts = job.attempts + 1  # read before the UPDATE refreshes `job`
            if policy.exhausted(job.attempts):
                error = job.error or "attempts exhausted"
                _finish(session, job.id, JobState.QUEUED, ANY_OWNER, JobState.DEAD_LETTERED, error)
                continue
            claimed = transition(
                session,
                Job,
                job.id,
                JobState.QUEUED,
                JobState.RUNNING,
                held_by=ANY_OWNER,
                owner=runtime.worker_id,
                lease_until=lease_end(runtime),
                started_at=now,
                attempts=Job.attempts + 1,
            )
            if not claimed:
                continue
            instance = session.get(Instance, job.instance_id)
            assert instance is not None
            return ClaimedJob(
                id=job.id,
                action=job.action,
                attempts=attempts,
                path=instance.path,
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                destinations=tuple(job.destinations or ()),
                created_at=job.created_at,
                claimed_at=now,
                rule=job.rule,
            )
    return None


def complete_processing(
    runtime: Runtime,
    job: ClaimedJob,
    outputs: list[Output],
    timings: dict[str, float] | None = None,
    session_extra: Callable[[Session], None] | None = None,
    *,
    send: bool = True,
) -> bool:
    """Record a job's outputs and queue them for its destinations.

    Parameters
    ----------
    runtime : Runtime
        The process runtime.
    job : ClaimedJob
        The job, still owned by this process.
    outputs : list[Output]
        Files to send to every destination of the job.
    timings : dict[str, float], optional
        Stage timings in milliseconds, stored with the job.
    session_extra : callable, optional
        ``session_extra(session)`` runs inside the same transaction (used to
        write audit rows atomically with the completion).
    send : bool, optional
        False for a shadow rule's job: the outputs are kept, no dispatch is
        created, the job is ``done`` and ``jobs.shadow`` records why.

    Returns
    -------
    bool
        ``False`` when the job is no longer owned by this process (it was
        recovered by another one): nothing is written and the caller must
        discard its result, so a job never completes twice.
    """
    with runtime.session() as session, session.begin():
        now = utcnow()
        destinations = job.destinations if send else ()
        new = JobState.SENDING if outputs and destinations else JobState.DONE
        values: dict[str, Any] = {
            "shadow": not send,
            "processed_at": now,
            "owner": None,
            "lease_until": None,
            "error": None,
            "completions": Job.completions + 1,
        }
        if timings:
            values["timings"] = timings
        if new.is_final:
            values["finished_at"] = now
        if not transition(
            session, Job, job.id, JobState.RUNNING, new, held_by=runtime.worker_id, **values
        ):
            log_event(logger, "job.lost", level=logging.WARNING, job_id=job.id)
            session.rollback()
            return False
        if session_extra is not None:
            session_extra(session)
        dispatch_queue.enqueue(session, job.id, outputs, destinations, now)
    log_event(
        logger,
        "job.processed",
        job_id=job.id,
        action=job.action,
        sop_instance_uid=job.sop_instance_uid,
        outputs=len(outputs),
        destinations=",".join(destinations) or None,
        shadow=not send or None,
        state=new,
        **ms_fields(timings or {}),
    )
    if new is JobState.SENDING:
        runtime.notify_new_dispatch()
    return True


def fail_job(runtime: Runtime, job: ClaimedJob, error: BaseException) -> JobState | None:
    """Record that processing `job` raised `error`; return the job's new state.

    The :class:`~dicom_node.retry.RetryPolicy` decides from the class of
    `error`: re-queued after a backoff delay (``queued``), ``dead_lettered``
    when its attempts are used up, or ``failed`` for a permanent error. The
    error text (:func:`~dicom_node.retry.error_text`) is kept on the job.

    Returns
    -------
    JobState or None
        The new state; ``None`` when the job is no longer owned by this
        process (another one recovered it), in which case nothing changed.
    """
    verdict = RetryPolicy(runtime.config.jobs).decide(error, job.attempts)
    text = error_text(error)
    with runtime.session() as session, session.begin():
        if verdict.decision is Decision.RETRY:
            assert verdict.delay is not None
            new = JobState.QUEUED
            moved = transition(
                session,
                Job,
                job.id,
                JobState.RUNNING,
                new,
                held_by=runtime.worker_id,
                error=text,
                owner=None,
                lease_until=None,
                next_run_at=utcnow() + dt.timedelta(seconds=verdict.delay),
            )
        else:
            new = (
                JobState.FAILED if verdict.decision is Decision.FAIL_NOW else JobState.DEAD_LETTERED
            )
            moved = _finish(session, job.id, JobState.RUNNING, runtime.worker_id, new, text)
    if not moved:
        log_event(logger, "job.lost", level=logging.WARNING, job_id=job.id, error=text)
        return None
    log_event(
        logger,
        "job.retry" if new is JobState.QUEUED else "job.failed",
        level=logging.WARNING,
        job_id=job.id,
        sop_instance_uid=job.sop_instance_uid,
        attempts=job.attempts,
        state=new,
        retry_in_s=verdict.delay,
        error=text,
    )
    return new


def release_job(runtime: Runtime, job: ClaimedJob) -> bool:
    """Put a claimed job back in the queue untouched (graceful shutdown).

    Returns ``False`` (and changes nothing) if this process no longer owns it.
    """
    with runtime.session() as session, session.begin():
        released = transition(
            session,
            Job,
            job.id,
            JobState.RUNNING,
            JobState.QUEUED,
            held_by=runtime.worker_id,
            owner=None,
            lease_until=None,
            attempts=Job.attempts - 1,
            next_run_at=utcnow(),
        )
    log_event(logger, "job.released" if released else "job.lost", job_id=job.id)
    return released


def settle_job(session: Session, job_id: int) -> JobState | None:
    """Derive a ``sending`` job's final state from its dispatches.

    All sent → ``done``; none in flight and at least one dead → ``dead_lettered``.
    Returns the new state, or ``None`` if the job stays as it is.
    """
    counts = dispatch_queue.state_counts(session, job_id)
    if counts.get(DispatchState.PENDING, 0) or counts.get(DispatchState.SENDING, 0):
        return None
    dead = counts.get(DispatchState.DEAD, 0)
    if dead:
        last = dispatch_queue.last_dead_error(session, job_id)
        new, message = (
            JobState.DEAD_LETTERED,
            f"{dead} dispatch(es) dead-lettered; last error: {last}",
        )
    else:
        new, message = JobState.DONE, None
    changed = _finish(session, job_id, JobState.SENDING, ANY_OWNER, new, message)
    return new if changed else None


def settle_jobs(session: Session, job_ids: Collection[int]) -> None:
    """:func:`settle_job` each job of `job_ids`, logging those that finished."""
    for job_id in sorted(job_ids):
        state = settle_job(session, job_id)
        if state is not None:
            log_event(logger, "job.finished", job_id=job_id, state=state)


# --------------------------------------------------------------------------- admin


def retry(runtime: Runtime, job_id: int) -> str:
    """Re-queue a failed or dead-lettered job (``dicom-node jobs retry``).

    A job that failed while sending keeps its outputs: only its dead
    dispatches are re-queued. Returns a sentence saying what was done.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    JobStateError
        If the job is not failed or dead-lettered (it is a ``ValueError``).
    """
    final = (JobState.FAILED, JobState.DEAD_LETTERED)
    with runtime.session() as session, session.begin():
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFoundError(f"There is no job {job_id}.")
        if job.state not in final:
            raise JobStateError(
                f"Job {job_id} is {job.state}; only failed or dead_lettered jobs can be retried."
            )
        now = utcnow()
        requeued = dispatch_queue.requeue_dead(session, job_id, now) if job.processed_at else 0
        if requeued:
            moved = transition(
                session,
                Job,
                job_id,
                final,
                JobState.SENDING,
                held_by=ANY_OWNER,
                error=None,
                finished_at=None,
            )
            message = f"Job {job_id}: {requeued} dispatch(es) re-queued for sending."
        else:
            moved = transition(
                session,
                Job,
                job_id,
                final,
                JobState.QUEUED,
                held_by=ANY_OWNER,
                attempts=0,
                error=None,
                next_run_at=now,
                finished_at=None,
            )
            message = f"Job {job_id} re-queued for processing."
        if not moved:  # the transaction is rolled back
            raise JobStateError(f"Job {job_id} changed state while being retried; try again.")
    log_event(logger, "job.retry_requested", job_id=job_id)
    runtime.notify_new_job()
    runtime.notify_new_dispatch()
    return message
