"""Sending outputs to destinations, in batches, with retries.

:func:`dispatch_due` takes the due ``pending`` dispatches of each destination,
sends them over one association per batch (:func:`~dicom_node.scu.send_batch`)
and records every attempt. A failed dispatch waits :func:`~dicom_node.jobs.backoff_delay`
and is tried again, until ``jobs.max_attempts``; then it is ``dead`` and its
job ``dead_lettered``. The whole batch of one association shares one retry
time, so a destination that comes back gets one association, not one per file.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from dicom_node.db import DerivedInstance, Dispatch, DispatchAttempt, rowcount, utcnow
from dicom_node.errors import ConfigError
from dicom_node.jobs import backoff_delay, settle_job
from dicom_node.logs import log_event
from dicom_node.runtime import Runtime
from dicom_node.scu import SendItem, SendResult, send_batch, split_for_contexts

logger = logging.getLogger(__name__)


def _due_destinations(runtime: Runtime) -> list[str]:
    with runtime.session() as session:
        rows = session.scalars(
            select(Dispatch.destination)
            .where(Dispatch.state == "pending", Dispatch.next_attempt_at <= utcnow())
            .distinct()
        ).all()
    return sorted(rows)


def claim_batch(runtime: Runtime, destination: str, limit: int) -> list[SendItem]:
    """Mark up to `limit` due dispatches of `destination` as ``sending`` by this process."""
    now = utcnow()
    lease = now + dt.timedelta(seconds=runtime.config.jobs.lease_seconds)
    items: list[SendItem] = []
    with runtime.session() as session, session.begin():
        rows = session.scalars(
            select(Dispatch)
            .where(
                Dispatch.state == "pending",
                Dispatch.destination == destination,
                Dispatch.next_attempt_at <= now,
            )
            .order_by(Dispatch.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            claimed = rowcount(
                session.execute(
                    update(Dispatch)
                    .where(Dispatch.id == row.id, Dispatch.state == "pending")
                    .values(state="sending", owner=runtime.worker_id, lease_until=lease)
                )
            )
            if claimed == 1:
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


def record_results(runtime: Runtime, destination: str, results: list[SendResult]) -> None:
    """Store the attempts, move each dispatch on, and settle the jobs they belong to."""
    settings = runtime.config.jobs
    now = utcnow()
    failures = [r for r in results if not r.ok]
    job_ids: set[int] = set()
    with runtime.session() as session, session.begin():
        # One retry time for the whole batch: they failed together.
        attempts_now = 0
        for result in failures:
            row = session.get(Dispatch, result.key)
            if row is not None:
                attempts_now = max(attempts_now, row.attempts + 1)
        delay = backoff_delay(attempts_now, settings) if failures else 0.0
        for result in results:
            row = session.get(Dispatch, result.key)
            if row is None or row.owner != runtime.worker_id or row.state != "sending":
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
            row.attempts += 1
            row.owner = None
            row.lease_until = None
            if result.ok:
                row.state = "sent"
                row.sent_at = now
                row.last_error = None
                _record_send_time(session, row.sop_instance_uid, destination, result.duration_ms)
            else:
                row.last_error = result.error
                if row.attempts >= settings.max_attempts:
                    row.state = "dead"
                else:
                    row.state = "pending"
                    row.next_attempt_at = now + dt.timedelta(seconds=delay)
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
                attempts=row.attempts,
                state=row.state,
                retry_in_s=delay if row.state == "pending" else None,
                error=result.error,
                ms=result.duration_ms,
            )
        session.flush()
        for job_id in sorted(job_ids):
            state = settle_job(session, job_id)
            if state is not None:
                log_event(logger, "job.finished", job_id=job_id, state=state)


def release_batch(runtime: Runtime, items: list[SendItem], retry_after: int) -> None:
    """Give back claimed dispatches that were not attempted (their destination is down).

    They wait as long as dispatch `retry_after`, which just failed; their
    attempt count is unchanged since nothing was sent.
    """
    with runtime.session() as session, session.begin():
        failed = session.get(Dispatch, retry_after)
        when = failed.next_attempt_at if failed is not None else utcnow()
        session.execute(
            update(Dispatch)
            .where(
                Dispatch.id.in_([item.key for item in items]),
                Dispatch.state == "sending",
                Dispatch.owner == runtime.worker_id,
            )
            .values(state="pending", owner=None, lease_until=None, next_attempt_at=when)
        )


def hold_destination(runtime: Runtime, destination: str, retry_after: int) -> None:
    """Make every pending dispatch of a failing destination wait for the same retry.

    Dispatch `retry_after` just failed along with its whole batch: the
    destination is down. Pending dispatches of that destination due earlier
    than its retry wait until then too (none is moved earlier), so that when
    the destination comes back the backlog goes out in one association per
    batch instead of one per file as their separate backoffs expire.
    """
    with runtime.session() as session, session.begin():
        failed = session.get(Dispatch, retry_after)
        if failed is None or failed.state != "pending":
            return
        session.execute(
            update(Dispatch)
            .where(
                Dispatch.destination == destination,
                Dispatch.state == "pending",
                Dispatch.next_attempt_at < failed.next_attempt_at,
            )
            .values(next_attempt_at=failed.next_attempt_at)
        )


def _dead_letter_unknown(runtime: Runtime, destination: str) -> None:
    with runtime.session() as session, session.begin():
        rows = session.scalars(
            select(Dispatch).where(
                Dispatch.destination == destination,
                or_(Dispatch.state == "pending", Dispatch.state == "sending"),
            )
        ).all()
        for row in rows:
            row.state = "dead"
            row.last_error = f"destination {destination!r} is no longer configured"
        session.flush()
        for job_id in {row.job_id for row in rows}:
            settle_job(session, job_id)
    log_event(logger, "dispatch.unknown_destination", level=logging.ERROR, destination=destination)


def dispatch_due(runtime: Runtime) -> int:
    """Send every due dispatch, one association per destination batch.

    Returns
    -------
    int
        How many dispatches were attempted.
    """
    config = runtime.config
    attempted = 0
    for name in _due_destinations(runtime):
        if runtime.stopping.is_set():
            break
        try:
            destination = config.destination(name)
        except ConfigError:  # the destination was removed from the configuration
            _dead_letter_unknown(runtime, name)
            continue
        down_after: int | None = None  # a dispatch of the batch that found it down
        while not runtime.stopping.is_set() and down_after is None:
            items = claim_batch(runtime, name, destination.max_batch)
            if not items:
                break
            keys = {item.key for item in items}
            runtime.held_dispatches.update(keys)  # the heartbeat extends their leases
            try:
                for batch in split_for_contexts(items):
                    if down_after is not None:
                        release_batch(runtime, batch, retry_after=down_after)
                        continue
                    start = time.perf_counter()
                    results = send_batch(
                        config.node.ae_title, destination, batch, timeout=config.node.dimse_timeout
                    )
                    record_results(runtime, name, results)
                    attempted += len(batch)
                    sent = sum(1 for r in results if r.ok)
                    log_event(
                        logger,
                        "dispatch.batch",
                        destination=name,
                        size=len(batch),
                        sent=sent,
                        failed=len(batch) - sent,
                        ms=(time.perf_counter() - start) * 1000,
                    )
                    # Nothing stored: the destination is down. Stop for now; the backoff
                    # decides when to come back.
                    if sent == 0:
                        down_after = results[0].key
                        hold_destination(runtime, name, down_after)
            finally:
                runtime.held_dispatches.difference_update(keys)
    return attempted
