"""The node on PostgreSQL (``postgresql+psycopg://``), alone and as two processes sharing the queue.

Each test gets a fresh database that it drops afterwards. A missing server
fails the tests (the ``pg_database`` fixture never skips).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.dicom_files import SampleFile, describe
from helpers.peers import NodeProcess, Orthanc, storescu, wait_until
from helpers.schema import make_legacy_database, schema_differences, set_revision
from helpers.scu import store
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dicom_node import migrations
from dicom_node.config import StorageSettings, parse_config
from dicom_node.dataset_info import inspect_file
from dicom_node.db import make_engine
from dicom_node.ingest import ingest
from dicom_node.jobs import claim_job, complete_processing
from dicom_node.migrations import SchemaVersionError
from dicom_node.runtime import Runtime

pytestmark = [pytest.mark.postgres, pytest.mark.network]

NodeFactory = Callable[..., NodeProcess]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def started_job_ids(node: NodeProcess) -> list[int]:
    return [int(e["job_id"]) for e in node.log_events("job.started")]


def test_store_and_forward_on_postgres(
    node: NodeFactory,
    orthanc: Orthanc,
    pg_database: str,
    rg1_path: Path,
    rg1_copies: Callable[..., list[SampleFile]],
) -> None:
    n = node(destinations=[orthanc], storage={"database_url": pg_database})
    assert "postgresql+psycopg" in n.log_events("node.starting")[0]["database"]
    samples = [describe(rg1_path), *rg1_copies(2)]
    result = storescu(n.port, [s.path for s in samples])
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = n.wait_jobs(3, timeout=90)
    assert all(j["completions"] == 1 for j in jobs)
    orthanc.wait_for_count(3)
    assert sorted(orthanc.sop_instance_uids()) == sorted(s.sop_instance_uid for s in samples)

    listed = n.cli("jobs", "list")
    assert listed.returncode == 0, listed.stderr
    assert all(s.sop_instance_uid in listed.stdout for s in samples)
    # Idempotent re-send on PostgreSQL too.
    assert storescu(n.port, [rg1_path]).returncode == 0
    assert len(n.jobs()) == 3


def test_two_nodes_sharing_the_database_never_both_claim_a_job(
    node: NodeFactory,
    orthanc: Orthanc,
    pg_database: str,
    small_copies: Callable[..., list[SampleFile]],
    tmp_path: Path,
) -> None:
    shared = {"database_url": pg_database, "data_dir": str(tmp_path / "shared-data")}
    jobs_cfg = {"workers": 2, "poll_interval": 0.05}
    a = node(destinations=[orthanc], storage=shared, jobs=jobs_cfg, name="a", start=False)
    b = node(destinations=[orthanc], storage=shared, jobs=jobs_cfg, name="b", start=False)
    # Both start at once on an empty database: creating the schema must not race.
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready()
    b.wait_ready()

    samples = small_copies(40)
    results: dict[str, Any] = {}

    def send(name: str, target: NodeProcess, part: list[SampleFile]) -> None:
        results[name] = storescu(target.port, [s.path for s in part])

    threads = [
        threading.Thread(target=send, args=("a", a, samples[::2])),
        threading.Thread(target=send, args=("b", b, samples[1::2])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(r.returncode == 0 for r in results.values()), results

    jobs = a.wait_jobs(40, timeout=120)
    assert all(j["completions"] == 1 and j["recoveries"] == 0 for j in jobs)
    started_a, started_b = started_job_ids(a), started_job_ids(b)
    # Every job was started by exactly one process, exactly once.
    assert Counter(started_a + started_b) == Counter(j["id"] for j in jobs)
    assert started_a and started_b, "both nodes should have taken part"
    sent = a.sql("SELECT dispatch_id FROM dispatch_attempts WHERE status = 0")
    assert Counter(r["dispatch_id"] for r in sent) == Counter(
        {d["id"]: 1 for d in a.sql("SELECT id FROM dispatches")}
    )
    orthanc.wait_for_count(40)
    assert orthanc.received_count() == 40


def test_claims_are_exclusive_under_contention(
    pg_database: str, small_copies: Callable[..., list[SampleFile]], tmp_path: Path
) -> None:
    """Eight threads in two runtimes (two worker ids) race for 60 jobs on PostgreSQL."""
    raw = {
        "storage": {"database_url": pg_database, "data_dir": str(tmp_path / "data")},
        "rules": [{"name": "forward-all", "action": "forward"}],
    }
    runtimes = [Runtime.create(parse_config(raw, tmp_path)) for _ in range(2)]
    try:
        for sample in small_copies(60):
            info, _ = inspect_file(sample.path)
            ingest(runtimes[0], sample.path.read_bytes(), info, "MODALITY")
        claimed: list[tuple[str, int]] = []
        lock = threading.Lock()

        def worker(runtime: Runtime) -> None:
            while (job := claim_job(runtime)) is not None:
                with lock:
                    claimed.append((runtime.worker_id, job.id))
                assert complete_processing(runtime, job, [])

        threads = [threading.Thread(target=worker, args=(runtimes[i % 2],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        ids = [job_id for _, job_id in claimed]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 60
        assert {owner for owner, _ in claimed} == {r.worker_id for r in runtimes}
        with runtimes[0].engine.connect() as conn:
            from sqlalchemy import text

            rows = conn.execute(text("SELECT state, completions FROM jobs")).all()
        assert Counter(rows) == Counter({("done", 1): 60})
    finally:
        for runtime in runtimes:
            runtime.close()


def test_processes_starting_together_create_the_schema_once(pg_database: str) -> None:
    """Creating the schema on an empty database must not race (first start of a cluster)."""
    storage = StorageSettings(database_url=pg_database)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait(10)
        try:
            make_engine(storage).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []


@pytest.mark.parametrize("with_strength", [False, True], ids=["oldest", "with-strength"])
def test_a_database_made_before_migrations_is_upgraded_on_postgres(
    pg_database: str, with_strength: bool
) -> None:
    make_legacy_database(pg_database, with_strength)
    storage = StorageSettings(database_url=pg_database)
    engine = make_engine(storage, migrate=False)
    try:
        assert migrations.current(engine).legacy
    finally:
        engine.dispose()
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:  # several nodes of a cluster start on the old database together
        barrier.wait(10)
        try:
            make_engine(storage).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    engine = make_engine(storage)
    try:
        assert migrations.current(engine).current
        assert schema_differences(engine) == []
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid, strength FROM derived_instances"))
            assert rows.all() == [("2.25.1", None)]
    finally:
        engine.dispose()


def test_a_database_from_a_newer_node_is_refused_on_postgres(pg_database: str) -> None:
    storage = StorageSettings(database_url=pg_database)
    engine = make_engine(storage)
    try:
        assert schema_differences(engine) == []
        set_revision(engine, "9999_future")
        with pytest.raises(SchemaVersionError, match=r"^The database postgresql\+psycopg://"):
            make_engine(storage)
        with engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert revision == "9999_future"
    finally:
        engine.dispose()


def test_database_unavailable_answers_out_of_resources(
    node: NodeFactory, pg_database: str, small_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node(storage={"database_url": pg_database})
    name = make_url(pg_database).database
    sample = small_copies(1)[0]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            assert store(n.port, [sample.path]) == [0xA700]
            assert n.spool_files() == []
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert n.sql("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
    # The node reconnects by itself once the database is back.
    wait_until(lambda: store(n.port, [sample.path]) == [0x0000], 30, "a successful re-send")
    n.wait_jobs(1)
    assert len(n.spool_files()) == 1
