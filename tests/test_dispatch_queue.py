"""Dispatch rows: creation, claim, results, release, dead-letter, retry (real SQLite)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_rows import RuntimeFactory, add_dispatch, add_job, get, runtimes
from sqlalchemy import select

from dicom_node.db import Dispatch, DispatchAttempt, utcnow
from dicom_node.dispatch_queue import (
    Output,
    claim_batch,
    dead_letter_destination,
    enqueue,
    record_results,
    release_batch,
    requeue_dead,
)
from dicom_node.retry import RetryPolicy
from dicom_node.runtime import Runtime
from dicom_node.scu import SendItem, SendResult


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[RuntimeFactory]:
    yield from runtimes(tmp_path)


def output(n: int) -> Output:
    return Output(f"/spool/{n}.dcm", "1.2.840.10008.5.1.4.1.1.7", f"1.9.{n}", "1.2.840.10008.1.2.1")


def record(runtime: Runtime, results: list[SendResult]) -> set[int]:
    with runtime.session() as session, session.begin():
        return record_results(
            session, runtime.worker_id, "pacs", results, RetryPolicy(runtime.config.jobs)
        )


def test_enqueue_creates_pending_rows_and_resets_existing_ones(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="running")
    with runtime.session() as session, session.begin():
        enqueue(session, job_id, [output(1), output(2)], ["pacs", "archive"], utcnow())
    with runtime.session() as session:
        rows = session.scalars(select(Dispatch).order_by(Dispatch.id)).all()
    assert [(r.destination, r.state) for r in rows] == [
        ("pacs", "pending"),
        ("archive", "pending"),
        ("pacs", "pending"),
        ("archive", "pending"),
    ]
    with runtime.session() as session, session.begin():
        for row, state in zip(rows, ("sent", "dead", "sending", "pending"), strict=True):
            session.get(Dispatch, row.id).state = state  # type: ignore[union-attr]
            session.get(Dispatch, row.id).attempts = 4  # type: ignore[union-attr]
    with runtime.session() as session, session.begin():
        enqueue(session, job_id, [output(1), output(2)], ["pacs", "archive"], utcnow())
    with runtime.session() as session:
        after = session.execute(select(Dispatch.state, Dispatch.attempts).order_by(Dispatch.id))
        assert after.all() == [("pending", 0), ("pending", 0), ("sending", 4), ("pending", 0)]


def test_a_batch_is_claimed_then_its_results_move_each_dispatch_on(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime(max_attempts=2)
    job_id = add_job(runtime, state="sending")
    sent, retried, exhausted = (add_dispatch(runtime, job_id) for _ in range(3))
    with runtime.session() as session, session.begin():
        session.get(Dispatch, exhausted).attempts = 1  # type: ignore[union-attr]
    items = claim_batch(runtime, "pacs", limit=10)
    assert [i.key for i in items] == [sent, retried, exhausted]
    assert get(runtime, Dispatch, sent).owner == runtime.worker_id
    assert claim_batch(runtime, "pacs", limit=10) == []  # already claimed

    before = utcnow()
    job_ids = record(
        runtime,
        [
            SendResult(sent, True, 0x0000, None, 5.0),
            SendResult(retried, False, 0xA700, "out of resources", 5.0),
            SendResult(exhausted, False, 0xA700, "out of resources", 5.0),
        ],
    )
    assert job_ids == {job_id}
    rows = [get(runtime, Dispatch, i) for i in (sent, retried, exhausted)]
    assert [(r.state, r.attempts, r.owner) for r in rows] == [
        ("sent", 1, None),
        ("pending", 1, None),
        ("dead", 2, None),
    ]
    assert rows[1].next_attempt_at >= before + dt.timedelta(seconds=1) - dt.timedelta(seconds=0.1)
    assert rows[2].last_error == "out of resources"
    with runtime.session() as session:
        assert len(session.scalars(select(DispatchAttempt)).all()) == 3


def test_results_for_dispatches_this_process_lost_change_nothing(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="sending")
    lost = add_dispatch(runtime, job_id, state="sending", owner="another-process")
    assert record(runtime, [SendResult(lost, True, 0x0000, None, 1.0)]) == set()
    row = get(runtime, Dispatch, lost)
    assert (row.state, row.attempts, row.owner) == ("sending", 0, "another-process")
    with runtime.session() as session:
        assert session.scalars(select(DispatchAttempt)).all() == []


def test_release_gives_back_only_this_process_claims(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="sending")
    failed, untried = add_dispatch(runtime, job_id), add_dispatch(runtime, job_id)
    theirs = add_dispatch(runtime, job_id, state="sending", owner="other")
    items = claim_batch(runtime, "pacs", limit=10)
    record(runtime, [SendResult(failed, False, None, "no association", 1.0)])
    release_batch(runtime, [i for i in items if i.key == untried], retry_after=failed)
    retry_at = get(runtime, Dispatch, failed).next_attempt_at
    row = get(runtime, Dispatch, untried)
    assert (row.state, row.attempts, row.owner, row.next_attempt_at) == (
        "pending",
        0,
        None,
        retry_at,
    )
    release_batch(runtime, [SendItem(theirs, Path("/x"), "1", "2", "3")], retry_after=failed)
    assert get(runtime, Dispatch, theirs).state == "sending"


def test_dead_letter_of_a_removed_destination_and_requeue_of_dead_ones(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    job_id = add_job(runtime, state="sending")
    pending = add_dispatch(runtime, job_id)
    sent = add_dispatch(runtime, job_id, state="sent")
    with runtime.session() as session, session.begin():
        assert dead_letter_destination(session, "pacs") == {job_id}
    row = get(runtime, Dispatch, pending)
    assert (row.state, row.last_error) == ("dead", "destination 'pacs' is no longer configured")
    assert get(runtime, Dispatch, sent).state == "sent"
    with runtime.session() as session, session.begin():
        assert requeue_dead(session, job_id, utcnow()) == 1
    row = get(runtime, Dispatch, pending)
    assert (row.state, row.attempts, row.last_error) == ("pending", 0, None)
