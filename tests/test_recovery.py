"""Crashes and restarts: SIGKILL with work in flight, SIGTERM, a worker killed mid-job.

The ``jobs.completions`` column counts guarded completions (the conditional
UPDATE that moves a job out of ``running``): it must be exactly 1 for every
job, however often the node was killed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers.dicom_files import SampleFile
from helpers.peers import STORESCU, NodeProcess, Orthanc, dcmtk_env, storescu, wait_until
from helpers.scu import associate

pytestmark = [pytest.mark.network, pytest.mark.slow]

NodeFactory = Callable[..., NodeProcess]


def states(node: NodeProcess, table: str) -> dict[str, int]:
    rows = node.sql(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


def assert_all_completed_once(
    node: NodeProcess, orthanc: Orthanc | None, samples: list[SampleFile]
) -> list[dict[str, Any]]:
    uids = sorted(s.sop_instance_uid for s in samples)
    jobs = node.wait_jobs(len(samples), timeout=120)
    assert sorted(j["sop_instance_uid"] for j in jobs) == uids
    assert [j for j in jobs if j["completions"] != 1] == []
    assert node.sql("SELECT COUNT(*) AS n FROM instances")[0]["n"] == len(samples)
    if orthanc is not None:
        assert all(d["state"] == "sent" for d in node.sql("SELECT state FROM dispatches"))
        orthanc.wait_for_count(len(samples))
        # Orthanc holds every instance exactly once (a re-sent one replaces nothing).
        assert sorted(orthanc.sop_instance_uids()) == uids
    return jobs


def test_sigkill_with_work_in_flight_then_restart_completes_everything_once(
    node: NodeFactory,
    orthanc: Orthanc,
    small_copies: Callable[..., list[SampleFile]],
    rg1_copies: Callable[..., list[SampleFile]],
) -> None:
    n = node(destinations=[orthanc])
    # Big files make deliveries slow enough to be caught in flight; small ones keep
    # the job queue busy between them.
    big, small = rg1_copies(6), small_copies(40)
    samples = [s for pair in zip(small[:6], big, strict=True) for s in pair] + small[6:]
    sender = subprocess.Popen(
        [STORESCU, "-aet", "MODALITY", "-aec", "NODE", "127.0.0.1", str(n.port)]
        + [str(s.path) for s in samples],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def work_in_flight() -> bool:
            jobs, dispatches = states(n, "jobs"), states(n, "dispatches")
            stored = sum(jobs.values())
            busy = jobs.get("queued", 0) + jobs.get("running", 0) + dispatches.get("sending", 0)
            return stored >= 12 and busy > 0

        wait_until(work_in_flight, 60, "jobs or deliveries in flight", interval=0.02)
        n.kill()
    finally:
        try:
            sender.wait(30)
        except subprocess.TimeoutExpired:
            sender.kill()
            sender.wait(10)

    # The crash left work behind: not everything is final.
    jobs_at_crash, dispatches_at_crash = states(n, "jobs"), states(n, "dispatches")
    unfinished = {k: v for k, v in jobs_at_crash.items() if k != "done"}
    assert unfinished, jobs_at_crash
    running_at_crash = {r["id"] for r in n.sql("SELECT id FROM jobs WHERE state = 'running'")}
    in_flight = dispatches_at_crash.get("sending", 0)

    n.start()
    # The modality re-sends what was not acknowledged (and more): duplicates are harmless.
    result = storescu(n.port, [s.path for s in samples])
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = assert_all_completed_once(n, orthanc, samples)

    # Jobs left running were re-queued exactly once, the others never.
    recovered = {j["id"] for j in jobs if j["recoveries"] == 1}
    assert recovered == running_at_crash
    assert all(j["recoveries"] in (0, 1) for j in jobs)
    recovery = n.log_events("node.starting")[-1]
    assert int(recovery["recovered"]) >= len(running_at_crash) + in_flight


CRASHING_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from dicom_node.config import load_config
    from dicom_node.dataset_info import inspect_file
    from dicom_node.ingest import ingest
    from dicom_node.jobs import claim_job
    from dicom_node.liveness import heartbeat
    from dicom_node.runtime import Runtime

    runtime = Runtime.create(load_config(Path(sys.argv[1])))
    heartbeat(runtime)  # registered as a live worker of this host
    for name in sys.argv[3:]:
        info, _ = inspect_file(Path(name))
        ingest(runtime, Path(name).read_bytes(), info, "MODALITY")
    for _ in range(int(sys.argv[2])):
        assert claim_job(runtime) is not None
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding running jobs
    """
)


def test_jobs_of_a_killed_worker_are_requeued_once_at_start_up(
    node: NodeFactory, orthanc: Orthanc, small_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node(destinations=[orthanc], start=False)
    samples = small_copies(6)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_WORKER, str(n.config_path), "3"]
        + [str(s.path) for s in samples],
        env=n.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    assert states(n, "jobs") == {"running": 3, "queued": 3}
    assert len(n.sql("SELECT id FROM workers")) == 1

    n.start()
    jobs = assert_all_completed_once(n, orthanc, samples)
    assert sorted(j["recoveries"] for j in jobs) == [0, 0, 0, 1, 1, 1]
    assert len(n.log_events("job.recovered")) == 3
    # The dead worker is forgotten; only the live node is registered.
    workers = n.sql("SELECT pid FROM workers")
    assert [w["pid"] for w in workers] == [n.pid]

    # A second restart recovers nothing more: recovery happened exactly once.
    n.restart()
    assert n.log_events("node.starting")[-1]["recovered"] == "0"
    assert [j["recoveries"] for j in n.jobs()] == [j["recoveries"] for j in jobs]


def test_sigterm_finishes_in_flight_work_and_exits_cleanly(
    node: NodeFactory,
    orthanc: Orthanc,
    rg1_copies: Callable[..., list[SampleFile]],
) -> None:
    n = node(destinations=[orthanc])
    samples = rg1_copies(6)
    assert storescu(n.port, [s.path for s in samples]).returncode == 0
    wait_until(
        lambda: states(n, "dispatches").get("sending", 0) > 0 or states(n, "jobs").get("done"),
        60,
        "a delivery in flight",
        interval=0.02,
    )
    started = time.monotonic()
    assert n.stop() == 0, n.log_tail()
    assert time.monotonic() - started < 30
    assert "node.stopped" in n.log_text
    # Nothing is left claimed by the stopped process: finished or handed back.
    assert "running" not in states(n, "jobs")
    assert "sending" not in states(n, "dispatches")
    assert n.sql("SELECT id FROM workers") == []

    n.start()
    assert n.log_events("node.starting")[-1]["recovered"] == "0"
    assert_all_completed_once(n, orthanc, samples)


def test_sigterm_lets_an_incoming_association_finish(
    node: NodeFactory, rg1_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node()
    samples = rg1_copies(10)
    sender = subprocess.Popen(
        [STORESCU, "-aet", "MODALITY", "-aec", "NODE", "127.0.0.1", str(n.port)]
        + [str(s.path) for s in samples],
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: states(n, "jobs"), 30, "the first instance", interval=0.02)
        assert n.stop() == 0, n.log_tail()
        output, _ = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    # The association in progress was allowed to finish: every instance acknowledged.
    assert sender.returncode == 0, output
    stored = n.sql("SELECT sop_instance_uid FROM instances")
    assert sorted(r["sop_instance_uid"] for r in stored) == sorted(
        s.sop_instance_uid for s in samples
    )


def test_sigterm_does_not_wait_for_an_idle_association(node: NodeFactory) -> None:
    n = node(node={"network_timeout": 120.0})
    held = associate(n.port, timeout=120)
    assert held.is_established
    started = time.monotonic()
    try:
        assert n.stop(timeout=60) == 0, n.log_tail()
        elapsed = time.monotonic() - started
        # A grace period for associations in progress, then the idle one is aborted.
        assert elapsed < 20, elapsed
        assert n.log_events("scp.stopped")[-1]["aborted"] == "1"
        wait_until(lambda: held.is_aborted, 10, "the held association to see the abort")
    finally:
        if held.is_established:
            held.abort()
