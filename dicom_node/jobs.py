"""The job queue, kept in the database so it survives restarts.

A job moves ``queued`` → ``running`` → ``sending`` → ``done``; a
:class:`~dicom_node.errors.PermanentError` makes it ``failed`` at once, a
:class:`~dicom_node.errors.RetryableError` re-queues it with exponential
backoff and jitter until ``jobs.max_attempts``, then ``dead_lettered``.

Every state change is a conditional ``UPDATE`` (on the expected state and
owner), so two processes sharing a PostgreSQL database never both claim or
both complete the same job. A process that dies leaves its jobs ``running``
with its worker id; :func:`recover_stale` puts them back in the queue once,
at start-up for processes of this host that are gone, and for any process
whose lease has expired.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import false, func, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.config import JobSettings
from dicom_node.db import Dispatch, Instance, Job, Worker, rowcount, utcnow
from dicom_node.logs import log_event, ms_fields
from dicom_node.runtime import Runtime

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SENDING, DONE, FAILED, DEAD = (
    "queued",
    "running",
    "sending",
    "done",
    "failed",
    "dead_lettered",
)
FINAL_STATES = (DONE, FAILED, DEAD)
STATES = (QUEUED, RUNNING, SENDING, DONE, FAILED, DEAD)


def backoff_delay(attempts: int, settings: JobSettings, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempts + 1``.

    ``retry_base_delay · 2^(attempts-1)``, capped at ``retry_max_delay``, then
    spread by ± ``retry_jitter`` (a fraction) so retries of many items do not
    fire together.
    """
    rng = rng or random.Random()
    raw = settings.retry_base_delay * (2 ** max(0, attempts - 1))
    capped = min(settings.retry_max_delay, raw)
    spread = 1.0 + settings.retry_jitter * (2.0 * rng.random() - 1.0)
    return max(0.0, capped * spread)


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


@dataclass(frozen=True)
class Output:
    """A file produced (or passed through) by a job, to be sent to its destinations."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _lease(runtime: Runtime) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=runtime.config.jobs.lease_seconds)


def claim_job(runtime: Runtime) -> ClaimedJob | None:
    """Take the oldest due queued job, or return ``None`` when there is none.

    A job whose attempts are already exhausted (its workers kept dying) is
    dead-lettered instead of being run again.
    """
    max_attempts = runtime.config.jobs.max_attempts
    with runtime.session() as session, session.begin():
        for _ in range(5):
            now = utcnow()
            job = session.scalar(
                select(Job)
                .where(Job.state == QUEUED, Job.next_run_at <= now)
                .order_by(Job.next_run_at, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            attempts = job.attempts + 1
            if job.attempts >= max_attempts:
                _finish(session, job.id, QUEUED, None, DEAD, job.error or "attempts exhausted")
                continue
            claimed = rowcount(
                session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.state == QUEUED)
                    .values(
                        state=RUNNING,
                        owner=runtime.worker_id,
                        lease_until=_lease(runtime),
                        started_at=now,
                        attempts=Job.attempts + 1,
                    )
                )
            )
            if claimed != 1:
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


def _finish(
    session: Session,
    job_id: int,
    expected_state: str,
    owner: str | None,
    state: str,
    error: str | None,
) -> bool:
    conditions = [Job.id == job_id, Job.state == expected_state]
    if owner is not None:
        conditions.append(Job.owner == owner)
    values: dict[str, Any] = {"state": state, "error": error, "owner": None, "lease_until": None}
    if state in FINAL_STATES:
        values["finished_at"] = utcnow()
    return rowcount(session.execute(update(Job).where(*conditions).values(**values))) == 1


def complete_processing(
    runtime: Runtime,
    job: ClaimedJob,
    outputs: list[Output],
    timings: dict[str, float] | None = None,
    session_extra: Any = None,
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

    Returns
    -------
    bool
        ``False`` when the job is no longer owned by this process (it was
        recovered by another one): nothing is written and the caller must
        discard its result, so a job never completes twice.
    """
    with runtime.session() as session, session.begin():
        now = utcnow()
        new_state = SENDING if outputs and job.destinations else DONE
        values: dict[str, Any] = {
            "state": new_state,
            "processed_at": now,
            "owner": None,
            "lease_until": None,
            "error": None,
            "completions": Job.completions + 1,
        }
        if timings:
            values["timings"] = timings
        if new_state == DONE:
            values["finished_at"] = now
        updated = rowcount(
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == RUNNING, Job.owner == runtime.worker_id)
                .values(**values)
            )
        )
        if updated != 1:
            log_event(logger, "job.lost", level=logging.WARNING, job_id=job.id)
            session.rollback()
            return False
        if session_extra is not None:
            session_extra(session)
        for output in outputs:
            for destination in job.destinations:
                exists = session.scalar(
                    select(Dispatch.id).where(
                        Dispatch.job_id == job.id,
                        Dispatch.destination == destination,
                        Dispatch.sop_instance_uid == output.sop_instance_uid,
                    )
                )
                if exists is None:
                    session.add(
                        Dispatch(
                            job_id=job.id,
                            destination=destination,
                            path=output.path,
                            sop_class_uid=output.sop_class_uid,
                            sop_instance_uid=output.sop_instance_uid,
                            transfer_syntax_uid=output.transfer_syntax_uid,
                        )
                    )
                else:
                    session.execute(
                        update(Dispatch)
                        .where(Dispatch.id == exists)
                        .values(state="pending", attempts=0, next_attempt_at=now, path=output.path)
                    )
    log_event(
        logger,
        "job.processed",
        job_id=job.id,
        action=job.action,
        sop_instance_uid=job.sop_instance_uid,
        outputs=len(outputs),
        destinations=",".join(job.destinations) or None,
        state=new_state,
        **ms_fields(timings or {}),
    )
    if new_state == SENDING:
        runtime.notify_new_dispatch()
    return True


def fail_job(runtime: Runtime, job: ClaimedJob, error: str, retryable: bool) -> str:
    """Record a processing failure; return the job's new state.

    A retryable failure re-queues the job after :func:`backoff_delay` unless
    its attempts are exhausted (then ``dead_lettered``); a permanent one makes
    it ``failed``. The error text is kept on the job.
    """
    settings = runtime.config.jobs
    with runtime.session() as session, session.begin():
        if retryable and job.attempts < settings.max_attempts:
            delay = backoff_delay(job.attempts, settings)
            state = QUEUED
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == RUNNING, Job.owner == runtime.worker_id)
                .values(
                    state=QUEUED,
                    error=error,
                    owner=None,
                    lease_until=None,
                    next_run_at=utcnow() + dt.timedelta(seconds=delay),
                )
            )
        else:
            delay = None
            state = DEAD if retryable else FAILED
            _finish(session, job.id, RUNNING, runtime.worker_id, state, error)
    log_event(
        logger,
        "job.failed" if state != QUEUED else "job.retry",
        level=logging.WARNING,
        job_id=job.id,
        sop_instance_uid=job.sop_instance_uid,
        attempts=job.attempts,
        state=state,
        retry_in_s=delay,
        error=error,
    )
    return state


def release_job(runtime: Runtime, job: ClaimedJob) -> None:
    """Put a claimed job back in the queue untouched (graceful shutdown)."""
    with runtime.session() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == RUNNING, Job.owner == runtime.worker_id)
            .values(
                state=QUEUED,
                owner=None,
                lease_until=None,
                attempts=Job.attempts - 1,
                next_run_at=utcnow(),
            )
        )
    log_event(logger, "job.released", job_id=job.id)


def settle_job(session: Session, job_id: int) -> str | None:
    """Derive a ``sending`` job's final state from its dispatches.

    All sent → ``done``; none in flight and at least one dead → ``dead_lettered``.
    Returns the new state, or ``None`` if the job stays as it is.
    """
    rows = session.execute(
        select(Dispatch.state, func.count())
        .where(Dispatch.job_id == job_id)
        .group_by(Dispatch.state)
    ).all()
    counts = {state: count for state, count in rows}
    if counts.get("pending", 0) or counts.get("sending", 0):
        return None
    if counts.get("dead", 0):
        error = session.scalar(
            select(Dispatch.last_error)
            .where(Dispatch.job_id == job_id, Dispatch.state == "dead")
            .limit(1)
        )
        state = DEAD
        message = f"{counts['dead']} dispatch(es) dead-lettered; last error: {error}"
    else:
        state, message = DONE, None
    changed = _finish(session, job_id, SENDING, None, state, message)
    return state if changed else None


# --------------------------------------------------------------------------- liveness


def heartbeat(runtime: Runtime) -> None:
    """Record that this process is alive and extend the leases of what it is working on.

    Only the jobs and dispatches in :attr:`Runtime.held_jobs` and
    :attr:`Runtime.held_dispatches` are extended: a claim whose outcome could
    not be recorded (the database failed at that moment) is no longer worked
    on, so its lease runs out and :func:`recover_stale` gives it back.
    """
    now = utcnow()
    lease = _lease(runtime)
    held_jobs = runtime.held_jobs.copy()  # set.copy() is atomic; threads add and discard
    held_dispatches = runtime.held_dispatches.copy()
    with runtime.session() as session, session.begin():
        worker = session.get(Worker, runtime.worker_id)
        if worker is None:
            session.add(
                Worker(
                    id=runtime.worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        else:
            worker.heartbeat_at = now
        if held_jobs:
            session.execute(
                update(Job)
                .where(
                    Job.owner == runtime.worker_id,
                    Job.state == RUNNING,
                    Job.id.in_(sorted(held_jobs)),
                )
                .values(lease_until=lease)
            )
        if held_dispatches:
            session.execute(
                update(Dispatch)
                .where(
                    Dispatch.owner == runtime.worker_id,
                    Dispatch.state == "sending",
                    Dispatch.id.in_(sorted(held_dispatches)),
                )
                .values(lease_until=lease)
            )


def unregister(runtime: Runtime) -> None:
    """Remove this process from the worker table (clean shutdown)."""
    with runtime.session() as session, session.begin():
        worker = session.get(Worker, runtime.worker_id)
        if worker is not None:
            session.delete(worker)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_owners(session: Session, self_id: str) -> set[str]:
    """Worker ids of processes on this host that no longer exist."""
    hostname = socket.gethostname()
    dead: set[str] = set()
    for worker in session.scalars(select(Worker).where(Worker.hostname == hostname)):
        if worker.id == self_id:
            continue
        if worker.pid == os.getpid() or not _pid_alive(worker.pid):
            dead.add(worker.id)
    return dead


def recover_stale(runtime: Runtime) -> int:
    """Re-queue work left by dead processes; return how many rows were recovered.

    Jobs ``running`` and dispatches ``sending`` whose owner is a process of
    this host that no longer exists, or whose lease has expired (this
    process's own included: it is not working on them any more, see
    :func:`heartbeat`), go back to ``queued`` / ``pending``. Each conditional
    update succeeds at most once, so a job is re-queued exactly once even with
    several recovering processes.
    """
    now = utcnow()
    recovered = 0
    with runtime.session() as session, session.begin():
        gone = dead_owners(session, runtime.worker_id)
        owner_gone = Job.owner.in_(gone) if gone else false()
        stale_jobs = session.scalars(
            select(Job).where(
                Job.state == RUNNING,
                or_(owner_gone, Job.lease_until < now, Job.owner.is_(None)),
            )
        ).all()
        for job in stale_jobs:
            recovered += rowcount(
                session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.state == RUNNING, Job.owner == job.owner)
                    .values(
                        state=QUEUED,
                        owner=None,
                        lease_until=None,
                        next_run_at=now,
                        recoveries=Job.recoveries + 1,
                        error=f"re-queued: worker {job.owner} stopped or its lease ran out",
                    )
                )
            )
            log_event(logger, "job.recovered", job_id=job.id, previous_owner=job.owner)
        dispatch_gone = Dispatch.owner.in_(gone) if gone else false()
        stale_dispatches = session.scalars(
            select(Dispatch).where(
                Dispatch.state == "sending",
                or_(dispatch_gone, Dispatch.lease_until < now, Dispatch.owner.is_(None)),
            )
        ).all()
        for dispatch in stale_dispatches:
            recovered += rowcount(
                session.execute(
                    update(Dispatch)
                    .where(
                        Dispatch.id == dispatch.id,
                        Dispatch.state == "sending",
                        Dispatch.owner == dispatch.owner,
                    )
                    .values(state="pending", owner=None, lease_until=None, next_attempt_at=now)
                )
            )
        for worker_id in gone:
            worker = session.get(Worker, worker_id)
            if worker is not None:
                session.delete(worker)
    if recovered:
        log_event(logger, "recovery.done", recovered=recovered)
    return recovered


# --------------------------------------------------------------------------- admin


class JobNotFoundError(LookupError):
    """No job has the given id."""


def retry(runtime: Runtime, job_id: int) -> str:
    """Re-queue a failed or dead-lettered job (``dicom-node jobs retry``).

    A job that failed while sending keeps its outputs: only its dead
    dispatches are re-queued. Returns a sentence saying what was done.

    Raises
    ------
    JobNotFoundError
        If there is no such job.
    ValueError
        If the job is not failed or dead-lettered.
    """
    with runtime.session() as session, session.begin():
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFoundError(f"There is no job {job_id}.")
        if job.state not in (FAILED, DEAD):
            raise ValueError(
                f"Job {job_id} is {job.state}; only failed or dead_lettered jobs can be retried."
            )
        dead = [d for d in job.dispatches if d.state == "dead"]
        now = utcnow()
        if job.processed_at is not None and dead:
            for dispatch in dead:
                dispatch.state = "pending"
                dispatch.attempts = 0
                dispatch.next_attempt_at = now
                dispatch.last_error = None
            job.state = SENDING
            job.error = None
            job.finished_at = None
            message = f"Job {job_id}: {len(dead)} dispatch(es) re-queued for sending."
        else:
            job.state = QUEUED
            job.attempts = 0
            job.error = None
            job.next_run_at = now
            job.finished_at = None
            message = f"Job {job_id} re-queued for processing."
    log_event(logger, "job.retry_requested", job_id=job_id)
    runtime.notify_new_job()
    runtime.notify_new_dispatch()
    return message
