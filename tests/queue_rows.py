"""Rows of the queue written directly, for the state machine's unit tests (real SQLite)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dicom_node.config import parse_config
from dicom_node.db import Dispatch, Instance, Job, Series, Study
from dicom_node.runtime import Runtime

RuntimeFactory = Callable[..., Runtime]
_uids = itertools.count(1)


def runtimes(tmp_path: Path) -> Iterator[RuntimeFactory]:
    """Body of a ``make_runtime`` fixture: runtimes (distinct worker ids) on one SQLite
    database under `tmp_path`, closed at teardown (``yield from runtimes(tmp_path)``)."""
    created: list[Runtime] = []

    def make(**jobs: Any) -> Runtime:
        raw = {
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
            ],
            "jobs": {"retry_base_delay": 1.0, "retry_max_delay": 8.0, "retry_jitter": 0.0, **jobs},
            "rules": [{"name": "forward-all", "action": "forward"}],
        }
        runtime = Runtime.create(parse_config(raw, tmp_path))
        created.append(runtime)
        return runtime

    yield make
    for runtime in created:
        runtime.close()


def add_job(runtime: Runtime, **values: Any) -> int:
    """Insert a job (with its study, series and instance); return its id."""
    n = next(_uids)
    with runtime.session() as session, session.begin():
        study = Study(study_instance_uid=f"1.2.3.{n}")
        session.add(study)
        session.flush()
        series = Series(series_instance_uid=f"1.2.4.{n}", study_id=study.id)
        session.add(series)
        session.flush()
        instance = Instance(
            sop_instance_uid=f"1.2.5.{n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
            series_id=series.id,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"/spool/{n}.dcm",
            size_bytes=1,
            calling_aet="MODALITY",
        )
        session.add(instance)
        session.flush()
        job = Job(instance_id=instance.id, action="forward", destinations=["pacs"], **values)
        session.add(job)
        session.flush()
        return job.id


def add_dispatch(runtime: Runtime, job_id: int, **values: Any) -> int:
    """Insert a dispatch of job `job_id` to ``pacs``; return its id."""
    n = next(_uids)
    with runtime.session() as session, session.begin():
        dispatch = Dispatch(
            job_id=job_id,
            destination="pacs",
            path=f"/spool/out-{n}.dcm",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
            sop_instance_uid=f"1.2.6.{n}",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            **values,
        )
        session.add(dispatch)
        session.flush()
        return dispatch.id


def get(runtime: Runtime, table: type[Job] | type[Dispatch], row_id: int) -> Any:
    """The row as it is in the database now."""
    with runtime.session() as session:
        row = session.get(table, row_id)
        assert row is not None
        return row
