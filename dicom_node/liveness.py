"""Worker liveness: heartbeats, dead owners, recovery of stale claims.

Each process records itself in the ``workers`` table and renews, from
:func:`heartbeat`, the leases of what it is working on. A process that dies
leaves jobs ``running`` and dispatches ``sending`` with its worker id;
:func:`recover_stale` puts them back in the queue once: at start-up for
processes of this host that are gone (:func:`dead_owners`), and for any
process whose lease has expired. Each recovery is a guarded
:func:`~dicom_node.transitions.transition` on the owner it saw, so a row is
recovered exactly once even with several processes recovering together.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Collection

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_node.db import Dispatch, Job, Worker, utcnow
from dicom_node.jobs import lease_end
from dicom_node.logs import log_event
from dicom_node.processes import pid_alive, this_host
from dicom_node.runtime import Runtime
from dicom_node.states import DispatchState, JobState
from dicom_node.transitions import transition

logger = logging.getLogger(__name__)


def heartbeat(runtime: Runtime) -> None:
    """Record that this process is alive and extend the leases of what it is working on.

    Only the jobs and dispatches in :attr:`Runtime.held_jobs` and
    :attr:`Runtime.held_dispatches` are extended: a claim whose outcome could
    not be recorded (the database failed at that moment) is no longer worked
    on, so its lease runs out and :func:`recover_stale` gives it back. (A
    lease renewal keeps the state: it is not a transition.)
    """
    now = utcnow()
    lease = lease_end(runtime)
    held_jobs = sorted(runtime.held_jobs.copy())  # set.copy() is atomic; threads add and discard
    held_dispatches = sorted(runtime.held_dispatches.copy())
    with runtime.session() as session, session.begin():
        worker = session.get(Worker, runtime.worker_id)
        if worker is None:
            session.add(
                Worker(
                    id=runtime.worker_id,
                    hostname=this_host(),
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
                    Job.state == JobState.RUNNING.value,
                    Job.id.in_(held_jobs),
                )
                .values(lease_until=lease)
            )
        if held_dispatches:
            session.execute(
                update(Dispatch)
                .where(
                    Dispatch.owner == runtime.worker_id,
                    Dispatch.state == DispatchState.SENDING.value,
                    Dispatch.id.in_(held_dispatches),
                )
                .values(lease_until=lease)
            )


def unregister(runtime: Runtime) -> None:
    """Remove this process from the worker table (clean shutdown)."""
    with runtime.session() as session, session.begin():
        worker = session.get(Worker, runtime.worker_id)
        if worker is not None:
            session.delete(worker)


def dead_owners(session: Session, self_id: str) -> set[str]:
    """Worker ids of processes on this host that no longer exist.

    A worker recorded with this process's own pid but another id is a
    previous incarnation of this process (a restarted container), hence dead.
    """
    dead: set[str] = set()
    for worker in session.scalars(select(Worker).where(Worker.hostname == this_host())):
        if worker.id == self_id:
            continue
        if worker.pid == os.getpid() or not pid_alive(worker.pid):
            dead.add(worker.id)
    return dead


def recover_stale_jobs(session: Session, gone: Collection[str], now: dt.datetime) -> int:
    """Re-queue the running jobs whose worker is in `gone` or whose lease ended before `now`.

    Returns how many this call re-queued.
    """
    stale = session.execute(
        select(Job.id, Job.owner).where(
            Job.state == JobState.RUNNING.value,
            Job.owner.in_(sorted(gone)) | (Job.lease_until < now) | Job.owner.is_(None),
        )
    ).all()
    recovered = 0
    for job_id, owner in stale:
        if transition(
            session,
            Job,
            job_id,
            JobState.RUNNING,
            JobState.QUEUED,
            held_by=owner,
            owner=None,
            lease_until=None,
            next_run_at=now,
            recoveries=Job.recoveries + 1,
            error=f"re-queued: worker {owner} stopped or its lease ran out",
        ):
            recovered += 1
            log_event(logger, "job.recovered", job_id=job_id, previous_owner=owner)
    return recovered


def recover_stale_dispatches(session: Session, gone: Collection[str], now: dt.datetime) -> int:
    """Put back to ``pending`` the dispatches whose sender is in `gone` or whose lease ended.

    Returns how many this call put back.
    """
    stale = session.execute(
        select(Dispatch.id, Dispatch.owner).where(
            Dispatch.state == DispatchState.SENDING.value,
            Dispatch.owner.in_(sorted(gone))
            | (Dispatch.lease_until < now)
            | Dispatch.owner.is_(None),
        )
    ).all()
    return sum(
        transition(
            session,
            Dispatch,
            dispatch_id,
            DispatchState.SENDING,
            DispatchState.PENDING,
            held_by=owner,
            owner=None,
            lease_until=None,
            next_attempt_at=now,
        )
        for dispatch_id, owner in stale
    )


def recover_stale(runtime: Runtime) -> int:
    """Re-queue work left by dead processes; return how many rows were recovered.

    Jobs ``running`` and dispatches ``sending`` whose owner is a process of
    this host that no longer exists, or whose lease has expired (this
    process's own included: it is not working on them any more, see
    :func:`heartbeat`), go back to ``queued`` / ``pending``. Each guarded
    transition succeeds at most once, so a job is re-queued exactly once even
    with several recovering processes.
    """
    now = utcnow()
    with runtime.session() as session, session.begin():
        gone = dead_owners(session, runtime.worker_id)
        recovered = recover_stale_jobs(session, gone, now)
        recovered += recover_stale_dispatches(session, gone, now)
        for worker_id in gone:
            worker = session.get(Worker, worker_id)
            if worker is not None:
                session.delete(worker)
    if recovered:
        log_event(logger, "recovery.done", recovered=recovered)
    return recovered
