"""Retention of finished work and removal of orphaned spool files."""

from __future__ import annotations

import datetime as dt
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_factory import xray
from sqlalchemy import func, select, update

from dicom_node.config import parse_config
from dicom_node.dataset_info import inspect_encoded
from dicom_node.db import DerivedInstance, Instance, Job, Series, Study, utcnow
from dicom_node.housekeeping import purge_expired, remove_orphans
from dicom_node.ingest import ingest
from dicom_node.runtime import Runtime


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    config = parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data"), "retention_days": 7},
            "rules": [{"name": "all", "action": "forward"}],
        },
        tmp_path,
    )
    rt = Runtime.create(config)
    yield rt
    rt.close()


def _receive(runtime: Runtime, **attrs: object) -> int:
    buffer = io.BytesIO()
    xray(rows=64, cols=64, **attrs).save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    info, _ = inspect_encoded(data)
    result = ingest(runtime, data, info, "MODALITY")
    assert result.job_id is not None
    return result.job_id


def _age(runtime: Runtime, job_id: int, days: float, state: str) -> None:
    with runtime.session() as session, session.begin():
        job = session.get(Job, job_id)
        assert job is not None
        job.state = state
        session.execute(
            update(Instance)
            .where(Instance.id == job.instance_id)
            .values(received_at=utcnow() - dt.timedelta(days=days))
        )


def _count(runtime: Runtime, model: type) -> int:
    with runtime.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_purges_only_old_finished_work(runtime: Runtime) -> None:
    old_done = _receive(runtime)
    old_failed = _receive(runtime)
    old_sending = _receive(runtime)
    recent_done = _receive(runtime)
    _age(runtime, old_done, 10, "done")
    _age(runtime, old_failed, 10, "failed")
    _age(runtime, old_sending, 10, "sending")
    _age(runtime, recent_done, 1, "done")
    derived_file = runtime.config.storage.spool_dir / "derived" / "x.dcm"
    derived_file.parent.mkdir(parents=True)
    derived_file.write_bytes(b"derived")
    with runtime.session() as session, session.begin():
        session.add(
            DerivedInstance(
                job_id=old_done,
                sop_instance_uid="1.2.3.4",
                series_instance_uid="1.2.3",
                source_sop_instance_uid="1.2.9",
                source_series_instance_uid="1.2.8",
                study_instance_uid="1.2.7",
                path=str(derived_file),
                model_name="m",
                model_version="1",
                model_sha256="0" * 64,
                provider="CPUExecutionProvider",
            )
        )
    with runtime.session() as session:
        paths = {
            job.id: Path(session.get(Instance, job.instance_id).path)  # type: ignore[union-attr]
            for job in session.scalars(select(Job))
        }

    assert purge_expired(runtime) == 2

    with runtime.session() as session:
        remaining = sorted(job.id for job in session.scalars(select(Job)))
    assert remaining == sorted([old_sending, recent_done])
    assert not paths[old_done].exists() and not paths[old_failed].exists()
    assert paths[old_sending].exists() and paths[recent_done].exists()
    assert not derived_file.exists()
    assert _count(runtime, DerivedInstance) == 0
    assert _count(runtime, Instance) == 2
    # Each synthetic image has its own study and series: the purged ones are gone.
    assert _count(runtime, Series) == 2 and _count(runtime, Study) == 2
    # A second run finds nothing more.
    assert purge_expired(runtime) == 0


def test_many_busy_old_instances_do_not_block_the_purge(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dicom_node.housekeeping as housekeeping

    monkeypatch.setattr(housekeeping, "BATCH", 2)
    busy = [_receive(runtime) for _ in range(3)]
    done = [_receive(runtime) for _ in range(3)]
    for job_id in busy:
        _age(runtime, job_id, 30, "queued")
    for job_id in done:
        _age(runtime, job_id, 20, "done")
    assert purge_expired(runtime) == 3
    with runtime.session() as session:
        assert sorted(job.id for job in session.scalars(select(Job))) == sorted(busy)


def test_zero_retention_keeps_everything(tmp_path: Path) -> None:
    config = parse_config(
        {"storage": {"data_dir": str(tmp_path / "d"), "retention_days": 0}}, tmp_path
    )
    runtime = Runtime.create(config)
    try:
        assert purge_expired(runtime, now=utcnow() + dt.timedelta(days=10000)) == 0
    finally:
        runtime.close()


def test_orphans_are_removed_when_old_enough(runtime: Runtime) -> None:
    job_id = _receive(runtime)
    with runtime.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        kept = Path(session.get(Instance, job.instance_id).path)  # type: ignore[union-attr]
    spool = runtime.config.storage.spool_dir
    orphan = spool / "received" / "20200101" / "1.2.3.dcm"
    partial = spool / "received" / "20200101" / ".1.2.4.dcm.ab.partial"
    fresh = spool / "received" / "20200101" / "1.2.5.dcm"
    for path in (orphan, partial, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    old = time.time() - 2 * 3600
    for path in (orphan, partial, kept):
        os.utime(path, (old, old))

    assert remove_orphans(runtime) == 2
    assert not orphan.exists() and not partial.exists()
    assert fresh.exists(), "a file younger than the orphan age may still be being recorded"
    assert kept.exists(), "a file the database refers to is never an orphan"
