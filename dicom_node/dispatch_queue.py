"""Dispatch rows: every write to the ``dispatches`` table happens here.

A dispatch is one output of a job for one destination, with its own retry
state (:class:`~dicom_node.states.DispatchState`): created when the job is
processed (:func:`enqueue`), claimed by the sender (:func:`claim_batch`),
moved on by the results (:func:`record_results`), given back untried
(:func:`release_batch`), held while its destination is down
(:func:`hold_destination`), dead-lettered (:func:`record_results`,
:func:`dead_letter_destination`), re-queued by ``jobs retry``
(:func:`requeue_dead`). Each state change goes through
:func:`~dicom_node.transitions.transition`. Lease renewal and the recovery
of dispatches whose sender died belong to :mod:`dicom_node.liveness`.

Functions that take a session write inside the caller's transaction, so the
job's state can change in the same one (:func:`dicom_node.jobs.settle_job`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dicom_node.db import DerivedInstance, Dispatch, DispatchAttempt, Recall, utcnow
from dicom_node.errors import DispatchError
from dicom_node.logs import log_event
from dicom_node.retry import Decision, RetryPolicy
from dicom_node.runtime import Runtime
from dicom_node.scu import SendItem, SendResult
from dicom_node.states import DispatchState
from dicom_node.transitions import ANY_OWNER, transition

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """A file produced (or passed through) by a job, to be sent to its destinations."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


# --------------------------------------------------------------------------- creation


def enqueue(
    session: Session,
    job_id: int,
    outputs: list[Output],
    destinations: Collection[str],
    now: dt.datetime,
) -> None:
    """Queue every output of job `job_id` for every destination.

    A dispatch that already exists (the job is processed again) goes back to
    ``pending`` with its attempts reset, unless it is being sent right now.
    """
    for output in outputs:
        for destination in destinations:
            existing = session.scalar(
                select(Dispatch.id).where(
                    Dispatch.job_id == job_id,
                    Dispatch.destination == destination,
                    Dispatch.sop_instance_uid == output.sop_instance_uid,
                )
            )
            if existing is None:
                session.add(
                    Dispatch(
                        job_id=job_id,
                        destination=destination,
                        path=output.path,
                        sop_class_uid=output.sop_class_uid,
                        sop_instance_uid=output.sop_instance_uid,
                        transfer_syntax_uid=output.transfer_syntax_uid,
                        state=DispatchState.PENDING.value,
                    )
                )
                continue
            reset = transition(
                session,
                Dispatch,
                existing,
                (DispatchState.PENDING, DispatchState.SENT, DispatchState.DEAD),
                DispatchState.PENDING,
                held_by=ANY_OWNER,
                attempts=0,
                next_attempt_at=now,
                path=output.path,
            )
            if not reset:
                log_event(logger, "dispatch.busy", dispatch_id=existing, job_id=job_id)


def requeue_dead(session: Session, job_id: int, now: dt.datetime) -> int:
    """Put the dead dispatches of job `job_id` back to ``pending``; return how many.

    An output of a recalled model (:mod:`dicom_node.recall`) stays dead.
    """
    recalled = select(DerivedInstance.sop_instance_uid).join(
        Recall, Recall.model_sha256 == DerivedInstance.model_sha256
    )
    dead = session.scalars(
        select(Dispatch.id).where(
            Dispatch.job_id == job_id,
            Dispatch.state == DispatchState.DEAD.value,
            Dispatch.sop_instance_uid.not_in(recalled),
        )
    ).all()
    return sum(
        transition(
            session,
            Dispatch,
            dispatch_id,
            DispatchState.DEAD,
            DispatchState.PENDING,
            held_by=ANY_OWNER,
            attempts=0,
            next_attempt_at=now,
            last_error=None,
        )
        for dispatch_id in dead
    )


# --------------------------------------------------------------------------- reading


def state_counts(session: Session, job_id: int) -> dict[DispatchState, int]:
    """How many dispatches of job `job_id` are in each state."""
    rows = session.execute(
        select(Dispatch.state, func.count())
        .where(Dispatch.job_id == job_id)
        .group_by(Dispatch.state)
    ).all()
    return {DispatchState(state): count for state, count in rows}


def last_dead_error(session: Session, job_id: int) -> str | None:
    """The error of one dead dispatch of job `job_id` (None if there is none)."""
    return session.scalar(
        select(Dispatch.last_error)
        .where(Dispatch.job_id == job_id, Dispatch.state == DispatchState.DEAD.value)
        .limit(1)
    )


def due_destinations(runtime: Runtime) -> list[str]:
    """Destinations that have at least one due ``pending`` dispatch."""
    with runtime.session() as session:
        rows = session.scalars(
            select(Dispatch.destination)
            .where(
                Dispatch.state == DispatchState.PENDING.value,
                Dispatch.next_attempt_at <= utcnow(),
            )
            .distinct()
        ).all()
    return sorted(rows)


# --------------------------------------------------------------------------- sending


def claim_batch(runtime: Runtime, destination: str, limit: int) -> list[SendItem]:
    """Mark up to `limit` due dispatches of `destination` as ``sending`` by this process."""
    now = utcnow()
    lease = now + dt.timedelta(seconds=runtime.config.jobs.lease_seconds)
    items: list[SendItem] = []
    with runtime.session() as session, session.begin():
        rows = session.scalars(
            select(Dispatch)
            .where(
                Dispatch.state == DispatchState.PENDING.value,
                Dispatch.destination == destination,
                Dispatch.next_attempt_at <= now,
            )
            .order_by(Dispatch.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            claimed = transition(
                session,
                Dispatch,
                row.id,
                DispatchState.PENDING,
                DispatchState.SENDING,
                held_by=ANY_OWNER,
                owner=runtime.worker_id,
                lease_until=lease,
            )
            if claimed:
                items.append(
                    SendItem(
                        key=row.id,
                        path=Path(row.path),
                        sop_class_uid=row.sop_class_uid,
                        sop_instance_uid=row.sop_instance_uid,
                        transfer_syntax_uid=row.transfer_syntax_uid,
                    )
                )
    return items


def _record_send_time(session: Session, sop_instance_uid: str, destination: str, ms: float) -> None:
    """Add the send time to the audit row of a derived instance (if it is one)."""
    derived = session.scalar(
        select(DerivedInstance).where(DerivedInstance.sop_instance_uid == sop_instance_uid)
    )
    if derived is not None:
        derived.timings = {**(derived.timings or {}), f"send_{destination}": ms}


def record_results(
    session: Session,
    worker_id: str,
    destination: str,
    results: list[SendResult],
    policy: RetryPolicy,
) -> set[int]:
    """Store the attempts of one batch and move each of its dispatches on.

    A stored dispatch becomes ``sent``. A failed one is a
    :class:`~dicom_node.errors.DispatchError` for the `policy`: ``pending``
    again after one backoff delay shared by the whole batch (they failed
    together), or ``dead`` once its attempts are used up. A dispatch this
    process no longer holds (it was recovered meanwhile) is left alone.

    Returns
    -------
    set[int]
        The jobs whose dispatches changed (to be settled by the caller in the
        same transaction).
    """
    now = utcnow()
    rows = {r.key: session.get(Dispatch, r.key) for r in results}
    failed_attempts = [
        row.attempts + 1 for r in results if not r.ok and (row := rows[r.key]) is not None
    ]
    # One retry time for the whole batch: they failed together.
    delay = policy.delay(max(failed_attempts)) if failed_attempts else 0.0
    job_ids: set[int] = set()
    for result in results:
        row = rows[result.key]
        if row is None:
            continue
        attempts = row.attempts + 1
        values: dict[str, object] = {"attempts": attempts, "owner": None, "lease_until": None}
        if result.ok:
            new = DispatchState.SENT
            values.update(sent_at=now, last_error=None)
        else:
            values["last_error"] = result.error
            if policy.decide(DispatchError, attempts).decision is Decision.RETRY:
                new = DispatchState.PENDING
                values["next_attempt_at"] = now + dt.timedelta(seconds=delay)
            else:
                new = DispatchState.DEAD
        moved = transition(
            session, Dispatch, row.id, DispatchState.SENDING, new, held_by=worker_id, **values
        )
        if not moved:
            log_event(logger, "dispatch.lost", level=logging.WARNING, dispatch_id=row.id)
            continue
        session.add(
            DispatchAttempt(
                dispatch_id=row.id,
                started_at=now - dt.timedelta(milliseconds=result.duration_ms),
                duration_ms=result.duration_ms,
                status=result.status,
                error=result.error,
            )
        )
        if result.ok:
            _record_send_time(session, row.sop_instance_uid, destination, result.duration_ms)
        job_ids.add(row.job_id)
        log_event(
            logger,
            "dispatch.sent" if result.ok else "dispatch.failed",
            level=logging.INFO if result.ok else logging.WARNING,
            destination=destination,
            dispatch_id=row.id,
            job_id=row.job_id,
            sop_instance_uid=row.sop_instance_uid,
            status=f"0x{result.status:04X}" if result.status is not None else None,
            attempts=attempts,
            state=new,
            retry_in_s=delay if new is DispatchState.PENDING else None,
            error=result.error,
            ms=result.duration_ms,
        )
    return job_ids


def release_batch(runtime: Runtime, items: list[SendItem], retry_after: int) -> None:
    """Give back claimed dispatches that were not attempted (their destination is down).

    They wait as long as dispatch `retry_after`, which just failed; their
    attempt count is unchanged since nothing was sent.
    """
    with runtime.session() as session, session.begin():
        failed = session.get(Dispatch, retry_after)
        when = failed.next_attempt_at if failed is not None else utcnow()
        for item in items:
            transition(
                session,
                Dispatch,
                item.key,
                DispatchState.SENDING,
                DispatchState.PENDING,
                held_by=runtime.worker_id,
                owner=None,
                lease_until=None,
                next_attempt_at=when,
            )


def hold_destination(runtime: Runtime, destination: str, retry_after: int) -> None:
    """Make every pending dispatch of a failing destination wait for the same retry.

    Dispatch `retry_after` just failed along with its whole batch: the
    destination is down. Pending dispatches of that destination due earlier
    than its retry wait until then too (none is moved earlier), so that when
    the destination comes back the backlog goes out in one association per
    batch instead of one per file as their separate backoffs expire. (The
    state does not change: this is not a transition.)
    """
    with runtime.session() as session, session.begin():
        failed = session.get(Dispatch, retry_after)
        if failed is None or failed.state != DispatchState.PENDING:
            return
        session.execute(
            update(Dispatch)
            .where(
                Dispatch.destination == destination,
                Dispatch.state == DispatchState.PENDING.value,
                Dispatch.next_attempt_at < failed.next_attempt_at,
            )
            .values(next_attempt_at=failed.next_attempt_at)
        )


def dead_letter_destination(session: Session, destination: str) -> set[int]:
    """Dead-letter every unsent dispatch of a destination that is no longer configured.

    Returns the jobs they belong to (to be settled by the caller).
    """
    rows = session.execute(
        select(Dispatch.id, Dispatch.job_id).where(
            Dispatch.destination == destination,
            Dispatch.state.in_([DispatchState.PENDING.value, DispatchState.SENDING.value]),
        )
    ).all()
    job_ids: set[int] = set()
    for dispatch_id, job_id in rows:
        if transition(
            session,
            Dispatch,
            dispatch_id,
            (DispatchState.PENDING, DispatchState.SENDING),
            DispatchState.DEAD,
            held_by=ANY_OWNER,
            owner=None,
            lease_until=None,
            last_error=f"destination {destination!r} is no longer configured",
        ):
            job_ids.add(job_id)
    return job_ids
