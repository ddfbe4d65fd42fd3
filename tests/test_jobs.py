"""The job queue's state machine, in process, on a real SQLite database.

queued → running → sending → done / failed / dead_lettered; guarded
completions, backoff with jitter, lease recovery exactly once, ``retry``,
and idempotent ingestion. The node-level behaviour (SIGKILL, two processes on
PostgreSQL) is in ``test_recovery.py`` and ``test_postgres.py``.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.dicom_files import SampleFile
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.config import parse_config
from dicom_node.dataset_info import inspect_file
from dicom_node.db import Dispatch, Job, Worker, utcnow
from dicom_node.errors import PermanentError, RetryableError
from dicom_node.ingest import ingest
from dicom_node.jobs import (
    JobNotFoundError,
    Output,
    claim_job,
    complete_processing,
    fail_job,
    release_job,
    retry,
    settle_job,
)
from dicom_node.liveness import heartbeat, recover_stale
from dicom_node.runtime import Runtime
from dicom_node.states import JobState
from dicom_node.worker import PROCESSORS, ProcessResult, forward, process_one

RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[RuntimeFactory]:
    """Runtimes (distinct worker ids) on one SQLite database under `tmp_path`."""
    created: list[Runtime] = []

    def make(storage: dict[str, Any] | None = None, **jobs: Any) -> Runtime:
        raw = {
            "storage": {"data_dir": str(tmp_path / "data"), **(storage or {})},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
            ],
            "jobs": {"retry_base_delay": 1.0, "retry_max_delay": 8.0, **jobs},
            "rules": [{"name": "forward-all", "action": "forward"}],
        }
        runtime = Runtime.create(parse_config(raw, tmp_path))
        created.append(runtime)
        return runtime

    yield make
    for runtime in created:
        runtime.close()


@pytest.fixture
def runtime(make_runtime: RuntimeFactory) -> Runtime:
    return make_runtime()


def receive(runtime: Runtime, samples: list[SampleFile]) -> list[int]:
    """Ingest the files as the SCP would; return the new job ids."""
    ids = []
    for sample in samples:
        info, _ = inspect_file(sample.path)
        result = ingest(runtime, sample.path.read_bytes(), info, "MODALITY")
        assert result.outcome == "stored" and result.job_id is not None
        ids.append(result.job_id)
    return ids


def job_row(runtime: Runtime, job_id: int) -> Job:
    with runtime.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def output_of(job: Any) -> list[Output]:
    return [Output(job.path, job.sop_class_uid, job.sop_instance_uid, job.transfer_syntax_uid)]


# --------------------------------------------------------------------------- ingestion


def test_ingest_is_idempotent(
    runtime: Runtime, small_copies: Callable[..., list[SampleFile]]
) -> None:
    sample = small_copies(1)[0]
    info, _ = inspect_file(sample.path)
    first = ingest(runtime, sample.path.read_bytes(), info, "MODALITY")
    second = ingest(runtime, sample.path.read_bytes(), info, "OTHER")
    assert (first.outcome, second.outcome) == ("stored", "duplicate")
    assert second.instance_id == first.instance_id and second.job_id is None
    with runtime.session() as session:
        assert len(session.scalars(select(Job)).all()) == 1
    spool = runtime.config.storage.spool_dir
    assert [p for p in spool.rglob("*") if p.is_file()] == [first.path]


# --------------------------------------------------------------------------- state machine


def test_forward_job_goes_through_every_state(
    runtime: Runtime, small_copies: Callable[..., list[SampleFile]]
) -> None:
    [job_id] = receive(runtime, small_copies(1))
    assert job_row(runtime, job_id).state == "queued"
    job = claim_job(runtime)
    assert job is not None and job.id == job_id and job.attempts == 1
    row = job_row(runtime, job_id)
    assert (row.state, row.owner) == ("running", runtime.worker_id)
    assert claim_job(runtime) is None  # nothing else is due

    assert complete_processing(runtime, job, output_of(job), {"process": 1.0})
    row = job_row(runtime, job_id)
    assert (row.state, row.completions, row.owner) == ("sending", 1, None)
    with runtime.session() as session, session.begin():
        dispatch = session.scalars(select(Dispatch)).one()
        assert (dispatch.destination, dispatch.state) == ("pacs", "pending")
        dispatch.state = "sent"
        session.flush()
        assert settle_job(session, job_id) == "done"
    assert job_row(runtime, job_id).finished_at is not None


def test_a_job_completes_only_once(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    first, second = make_runtime(), make_runtime()
    [job_id] = receive(first, small_copies(1))
    job = claim_job(first)
    assert job is not None
    assert complete_processing(first, job, [])
    assert not complete_processing(first, job, [])  # a replayed completion is refused
    assert not complete_processing(second, job, [])  # and so is one by another process
    row = job_row(first, job_id)
    assert (row.state, row.completions) == ("done", 1)


def test_a_recovered_job_cannot_be_completed_by_its_old_owner(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    old, new = make_runtime(lease_seconds=1.0), make_runtime(lease_seconds=1.0)
    [job_id] = receive(old, small_copies(1))
    stale = claim_job(old)
    assert stale is not None
    with old.session() as session, session.begin():  # the old owner's lease ran out
        session.execute(update(Job).values(lease_until=utcnow() - dt.timedelta(seconds=5)))
    assert recover_stale(new) == 1
    fresh = claim_job(new)
    assert fresh is not None and fresh.id == job_id and fresh.attempts == 2
    assert not complete_processing(old, stale, [])  # too late: it belongs to `new`
    assert complete_processing(new, fresh, [])
    row = job_row(new, job_id)
    assert (row.state, row.completions, row.recoveries) == ("done", 1, 1)


def test_retryable_failures_back_off_then_dead_letter(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    runtime = make_runtime(max_attempts=2, retry_base_delay=30.0, retry_max_delay=60.0)
    [job_id] = receive(runtime, small_copies(1))
    job = claim_job(runtime)
    assert job is not None
    before = utcnow()
    assert fail_job(runtime, job, RetryableError("peer busy")) == "queued"
    row = job_row(runtime, job_id)
    assert row.error == "peer busy"
    assert row.next_run_at >= before + dt.timedelta(seconds=30 * 0.8 - 1)
    assert claim_job(runtime) is None  # not due yet
    with runtime.session() as session, session.begin():
        session.execute(update(Job).values(next_run_at=utcnow()))
    job = claim_job(runtime)
    assert job is not None and job.attempts == 2
    assert fail_job(runtime, job, RetryableError("peer busy again")) == "dead_lettered"
    assert job_row(runtime, job_id).state == "dead_lettered"


def test_a_permanent_failure_fails_at_once_and_retry_requeues(
    runtime: Runtime, small_copies: Callable[..., list[SampleFile]]
) -> None:
    [job_id] = receive(runtime, small_copies(1))
    job = claim_job(runtime)
    assert job is not None
    assert fail_job(runtime, job, PermanentError("corrupt pixel data")) == "failed"
    assert job_row(runtime, job_id).state == "failed"

    assert "re-queued for processing" in retry(runtime, job_id)
    row = job_row(runtime, job_id)
    assert (row.state, row.attempts, row.error) == ("queued", 0, None)
    with pytest.raises(ValueError, match="only failed or dead_lettered"):
        retry(runtime, job_id)
    with pytest.raises(JobNotFoundError):
        retry(runtime, 9999)


def test_retry_of_a_dead_lettered_delivery_only_resends(
    runtime: Runtime, small_copies: Callable[..., list[SampleFile]]
) -> None:
    [job_id] = receive(runtime, small_copies(1))
    job = claim_job(runtime)
    assert job is not None
    assert complete_processing(runtime, job, output_of(job))
    with runtime.session() as session, session.begin():
        session.execute(update(Dispatch).values(state="dead", attempts=10, last_error="down"))
        assert settle_job(session, job_id) == "dead_lettered"
    assert "1 dispatch(es) re-queued" in retry(runtime, job_id)
    row = job_row(runtime, job_id)
    assert (row.state, row.completions) == ("sending", 1)  # not processed again
    with runtime.session() as session:
        dispatch = session.scalars(select(Dispatch)).one()
        assert (dispatch.state, dispatch.attempts) == ("pending", 0)


def test_release_returns_a_job_untouched(
    runtime: Runtime, small_copies: Callable[..., list[SampleFile]]
) -> None:
    [job_id] = receive(runtime, small_copies(1))
    job = claim_job(runtime)
    assert job is not None
    release_job(runtime, job)
    row = job_row(runtime, job_id)
    assert (row.state, row.attempts, row.owner) == ("queued", 0, None)


def test_a_job_whose_workers_keep_dying_is_dead_lettered(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    runtime = make_runtime(max_attempts=2)
    [job_id] = receive(runtime, small_copies(1))
    with runtime.session() as session, session.begin():
        session.execute(update(Job).values(attempts=2))  # two workers died running it
    assert claim_job(runtime) is None
    assert job_row(runtime, job_id).state == "dead_lettered"


# --------------------------------------------------------------------------- recovery


def test_stale_jobs_are_recovered_exactly_once_by_concurrent_recoverers(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    dead = make_runtime(lease_seconds=1.0)
    receive(dead, small_copies(5))
    for _ in range(5):
        assert claim_job(dead) is not None
    with dead.session() as session, session.begin():
        session.execute(update(Job).values(lease_until=utcnow() - dt.timedelta(seconds=1)))

    recoverers = [make_runtime(lease_seconds=1.0) for _ in range(4)]
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda r=r: counts.append(recover_stale(r))) for r in recoverers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(counts) == 5
    with dead.session() as session:
        jobs = session.scalars(select(Job)).all()
    assert [(j.state, j.recoveries) for j in jobs] == [("queued", 1)] * 5
    assert all(recover_stale(r) == 0 for r in recoverers)


def test_jobs_of_a_live_worker_are_not_recovered(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    live, other = make_runtime(lease_seconds=60.0), make_runtime(lease_seconds=60.0)
    receive(live, small_copies(2))
    heartbeat(live)
    with live.session() as session, session.begin():
        # Both runtimes live in this test process; make `live` look like another
        # process of this host that is alive (a worker with our own pid would be a
        # previous incarnation of this process, hence dead).
        session.execute(update(Worker).values(pid=os.getppid()))
    assert claim_job(live) is not None
    assert recover_stale(other) == 0
    with live.session() as session:
        assert session.get(Worker, live.worker_id) is not None
        assert session.scalars(select(Job.state).order_by(Job.id)).all() == ["running", "queued"]


def test_heartbeat_extends_the_lease_of_held_jobs(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    runtime = make_runtime(lease_seconds=60.0)
    [job_id] = receive(runtime, small_copies(1))
    assert claim_job(runtime) is not None
    with runtime.session() as session, session.begin():
        session.execute(update(Job).values(lease_until=utcnow()))
    heartbeat(runtime)  # claimed, but not being worked on: not extended
    assert job_row(runtime, job_id).lease_until <= utcnow()
    runtime.held_jobs.add(job_id)
    heartbeat(runtime)
    lease = job_row(runtime, job_id).lease_until
    assert lease is not None and lease > utcnow() + dt.timedelta(seconds=50)


def test_claims_are_exclusive_between_threads_and_processes_on_sqlite(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    runtimes = [make_runtime(), make_runtime()]
    receive(runtimes[0], small_copies(30))
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(runtime: Runtime) -> None:
        while (job := claim_job(runtime)) is not None:
            with lock:
                claimed.append(job.id)
            complete_processing(runtime, job, [])

    threads = [threading.Thread(target=worker, args=(runtimes[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(claimed) == list(range(1, 31))
    with runtimes[0].session() as session:
        rows = session.execute(select(Job.state, Job.completions)).all()
    assert set(rows) == {("done", 1)}


# --------------------------------------------------------------------------- worker


def test_the_exception_class_decides_the_outcome(
    runtime: Runtime,
    small_copies: Callable[..., list[SampleFile]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_ids = receive(runtime, small_copies(3))
    errors: list[BaseException] = [
        RetryableError("peer busy"),
        PermanentError("unsupported image"),
        ZeroDivisionError("bug"),
    ]

    def failing(_runtime: Runtime, _job: Any) -> ProcessResult:
        raise errors.pop(0)

    monkeypatch.setitem(PROCESSORS, "forward", failing)
    for _ in job_ids:
        assert process_one(runtime)
    states = [job_row(runtime, i).state for i in job_ids]
    # An unknown exception is retried (up to the cap), like a RetryableError.
    assert states == ["queued", "failed", "queued"]
    assert "unexpected error: ZeroDivisionError" in (job_row(runtime, job_ids[2]).error or "")


def test_an_unknown_exception_is_dead_lettered_once_the_attempts_are_used_up(
    make_runtime: RuntimeFactory,
    small_copies: Callable[..., list[SampleFile]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = make_runtime(max_attempts=2, retry_base_delay=0.01, retry_max_delay=0.01)
    [job_id] = receive(runtime, small_copies(1))

    def buggy(_runtime: Runtime, _job: Any) -> ProcessResult:
        raise KeyError("bug")

    monkeypatch.setitem(PROCESSORS, "forward", buggy)
    with caplog.at_level("ERROR", logger="dicom_node.worker"):
        assert process_one(runtime)
    assert job_row(runtime, job_id).state == JobState.QUEUED
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)  # traceback
    time.sleep(0.05)
    assert process_one(runtime)
    row = job_row(runtime, job_id)
    assert (row.state, row.attempts) == (JobState.DEAD_LETTERED, 2)
    assert row.error == "unexpected error: KeyError: 'bug'"


def test_a_failure_recorded_after_losing_the_job_changes_nothing(
    make_runtime: RuntimeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    """The retry branch of fail_job checks that it still owns the job."""
    old, new = make_runtime(lease_seconds=1.0), make_runtime(lease_seconds=1.0)
    [job_id] = receive(old, small_copies(1))
    stale = claim_job(old)
    assert stale is not None
    with old.session() as session, session.begin():  # the old owner's lease ran out
        session.execute(update(Job).values(lease_until=utcnow() - dt.timedelta(seconds=5)))
    assert recover_stale(new) == 1
    fresh = claim_job(new)
    assert fresh is not None and fresh.id == job_id
    before = job_row(new, job_id)
    assert fail_job(old, stale, RetryableError("peer busy")) is None  # retry branch
    assert fail_job(old, stale, PermanentError("corrupt")) is None  # fail-now branch
    assert not release_job(old, stale)
    after = job_row(new, job_id)
    assert (after.state, after.owner, after.error, after.next_run_at) == (
        JobState.RUNNING,
        new.worker_id,
        before.error,
        before.next_run_at,
    )
    assert complete_processing(new, fresh, [])


def test_a_claim_whose_outcome_could_not_be_recorded_does_not_stay_stuck(
    make_runtime: RuntimeFactory,
    small_copies: Callable[..., list[SampleFile]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = make_runtime({"sqlite_busy_timeout": 0.2}, lease_seconds=1.0)
    [job_id] = receive(runtime, small_copies(1))
    locker = sqlite3.connect(runtime.config.storage.data_dir / "node.sqlite3", isolation_level=None)

    def processor(rt: Runtime, job: Any) -> ProcessResult:
        locker.execute("BEGIN EXCLUSIVE")  # the database becomes unavailable mid-job
        return forward(rt, job)

    monkeypatch.setitem(PROCESSORS, "forward", processor)
    try:
        with pytest.raises(SQLAlchemyError):
            process_one(runtime)  # the completion cannot be written
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert job_row(runtime, job_id).state == "running"

    # The process lives on: its heartbeat must not keep the orphaned claim alive,
    # and its own recovery must give the job back once the lease has run out.
    time.sleep(1.2)
    heartbeat(runtime)
    assert recover_stale(runtime) == 1
    monkeypatch.setitem(PROCESSORS, "forward", forward)
    assert process_one(runtime)
    row = job_row(runtime, job_id)
    assert (row.state, row.completions, row.recoveries) == ("sending", 1, 1)


def test_heartbeat_keeps_the_lease_of_a_job_in_progress(
    make_runtime: RuntimeFactory,
    small_copies: Callable[..., list[SampleFile]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = make_runtime(lease_seconds=1.0)
    [job_id] = receive(runtime, small_copies(1))
    recovered: list[int] = []

    def slow(rt: Runtime, job: Any) -> ProcessResult:
        for _ in range(3):  # longer than the lease, with heartbeats meanwhile
            time.sleep(0.5)
            heartbeat(rt)
            recovered.append(recover_stale(rt))
        return forward(rt, job)

    monkeypatch.setitem(PROCESSORS, "forward", slow)
    assert process_one(runtime)
    assert recovered == [0, 0, 0]
    row = job_row(runtime, job_id)
    assert (row.state, row.completions, row.recoveries) == ("sending", 1, 0)
