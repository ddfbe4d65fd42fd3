"""Heartbeats, dead owners and the recovery of stale claims (real SQLite, real processes)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_rows import RuntimeFactory, add_dispatch, add_job, get, runtimes
from sqlalchemy import select

from dicom_node.db import Dispatch, Job, Worker, utcnow
from dicom_node.liveness import dead_owners, heartbeat, recover_stale, unregister
from dicom_node.processes import pid_alive, this_host
from dicom_node.runtime import Runtime


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[RuntimeFactory]:
    yield from runtimes(tmp_path)


def exited_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def add_worker(runtime: Runtime, worker_id: str, pid: int, hostname: str | None = None) -> None:
    with runtime.session() as session, session.begin():
        session.add(Worker(id=worker_id, hostname=hostname or this_host(), pid=pid))


def test_pid_alive() -> None:
    assert pid_alive(os.getpid()) and pid_alive(os.getppid())
    assert not pid_alive(exited_pid())
    assert not pid_alive(0) and not pid_alive(-1)


def test_heartbeat_registers_this_process_and_unregister_removes_it(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    heartbeat(runtime)
    with runtime.session() as session:
        worker = session.get(Worker, runtime.worker_id)
        assert worker is not None and (worker.hostname, worker.pid) == (this_host(), os.getpid())
    unregister(runtime)
    with runtime.session() as session:
        assert session.get(Worker, runtime.worker_id) is None


def test_dead_owners_are_gone_processes_of_this_host_only(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime()
    add_worker(runtime, "exited", exited_pid())
    add_worker(runtime, "alive", os.getppid())
    add_worker(runtime, "previous-me", os.getpid())  # an earlier incarnation of this pid
    add_worker(runtime, "elsewhere", exited_pid(), hostname="another-host")
    add_worker(runtime, runtime.worker_id, os.getpid())
    with runtime.session() as session:
        assert dead_owners(session, runtime.worker_id) == {"exited", "previous-me"}


def test_recovery_requeues_the_claims_of_dead_and_expired_owners_once(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime()
    add_worker(runtime, "dead", exited_pid())
    add_worker(runtime, "alive", os.getppid())
    future = utcnow() + dt.timedelta(minutes=5)
    past = utcnow() - dt.timedelta(seconds=1)
    of_dead = add_job(runtime, state="running", owner="dead", lease_until=future)
    expired = add_job(runtime, state="running", owner="alive", lease_until=past)
    held = add_job(runtime, state="running", owner="alive", lease_until=future)
    sending = add_job(runtime, state="sending")
    dispatch_of_dead = add_dispatch(
        runtime, sending, state="sending", owner="dead", lease_until=future
    )
    dispatch_held = add_dispatch(
        runtime, sending, state="sending", owner="alive", lease_until=future
    )

    assert recover_stale(runtime) == 3
    assert [get(runtime, Job, i).state for i in (of_dead, expired, held)] == [
        "queued",
        "queued",
        "running",
    ]
    row = get(runtime, Job, of_dead)
    assert (row.owner, row.recoveries) == (None, 1)
    assert "worker dead stopped" in row.error
    assert get(runtime, Dispatch, dispatch_of_dead).state == "pending"
    assert get(runtime, Dispatch, dispatch_held).state == "sending"
    with runtime.session() as session:
        assert set(session.scalars(select(Worker.id))) == {"alive"}  # the dead one is gone
    assert recover_stale(runtime) == 0  # exactly once


def test_heartbeat_extends_only_the_leases_this_process_works_on(
    make_runtime: RuntimeFactory,
) -> None:
    runtime = make_runtime(lease_seconds=60.0)
    now = utcnow()
    mine = add_job(runtime, state="running", owner=runtime.worker_id, lease_until=now)
    forgotten = add_job(runtime, state="running", owner=runtime.worker_id, lease_until=now)
    theirs = add_job(runtime, state="running", owner="other", lease_until=now)
    sending = add_dispatch(runtime, mine, state="sending", owner=runtime.worker_id, lease_until=now)
    runtime.held_jobs.update({mine, theirs})
    runtime.held_dispatches.add(sending)
    heartbeat(runtime)
    soon = utcnow() + dt.timedelta(seconds=50)
    assert get(runtime, Job, mine).lease_until > soon
    assert get(runtime, Dispatch, sending).lease_until > soon
    assert get(runtime, Job, forgotten).lease_until == now
    assert get(runtime, Job, theirs).lease_until == now
