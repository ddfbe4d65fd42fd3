"""Shadow mode: an ``enhance`` rule with ``send = false`` keeps its outputs and sends nothing.

The in-process harness (:mod:`harness`) runs receive → store → job → infer →
derive → (no) send with a sink SCP as the PACS. Two rules side by side: the
shadow rule matches one calling AE title, the live rule everything else, so
one pump shows both behaviours at once.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from harness import InProcessNode, SinkSCP
from helpers.peers import DICOM_NODE, to_toml
from onnx_models import make_smoothing_model
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from test_derive import dciodvfy_errors

from dicom_node.db import DerivedInstance, Dispatch, Instance, Job, utcnow
from dicom_node.housekeeping import purge_expired, remove_orphans
from dicom_node.jobs_report import format_detail, format_table, list_jobs, show_job

SHADOW_AET = "ROOM_NEW"
RULES = [
    {"name": "new-model", "action": "enhance", "calling_aet": [SHADOW_AET], "send": False},
    {"name": "live", "action": "enhance"},
]
SHADOW_LINE = "  outputs: kept, not sent (shadow rule 'new-model')"


@pytest.fixture
def sink() -> Iterator[SinkSCP]:
    scp = SinkSCP().start()
    yield scp
    scp.stop()


@pytest.fixture
def node(tmp_path: Path, sink: SinkSCP) -> Iterator[InProcessNode]:
    model = make_smoothing_model(tmp_path / "smoother.onnx")
    running = InProcessNode(
        tmp_path / "node", rules=RULES, destinations=[sink.destination()], model=model
    )
    yield running
    running.close()


def _fresh(template: Dataset) -> Dataset:
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _job(node: InProcessNode, sop_instance_uid: str) -> tuple[Job, list[Dispatch], list[Any]]:
    """The job of a received instance, its dispatches and its derived rows."""
    with node.runtime.session() as session:
        job = session.scalars(
            select(Job)
            .join(Instance, Job.instance_id == Instance.id)
            .where(Instance.sop_instance_uid == sop_instance_uid)
        ).one()
        dispatches = list(session.scalars(select(Dispatch).where(Dispatch.job_id == job.id)))
        derived = list(
            session.scalars(select(DerivedInstance).where(DerivedInstance.job_id == job.id))
        )
    return job, dispatches, derived


def _cli(node: InProcessNode, *args: str) -> str:
    result = subprocess.run(
        [DICOM_NODE, *args, "--config", str(node.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_shadow_rule_keeps_a_valid_derived_object_and_sends_nothing(
    node: InProcessNode, sink: SinkSCP, small_dataset: Dataset
) -> None:
    shadowed, live = _fresh(small_dataset), _fresh(small_dataset)
    assert node.store(shadowed, calling_ae=SHADOW_AET) == 0x0000
    assert node.store(live) == 0x0000
    node.pump()

    # Only the live rule's derived object reached the PACS.
    assert len(sink.received) == 1
    sent = sink.received[0]
    assert sent.SourceImageSequence[0].ReferencedSOPInstanceUID == live.SOPInstanceUID

    job, dispatches, derived = _job(node, shadowed.SOPInstanceUID)
    assert (job.state, job.rule, job.shadow, dispatches) == ("done", "new-model", True, [])
    assert job.finished_at is not None and job.error is None
    # The derived object is written and audited exactly as when sent.
    assert len(derived) == 1
    path = Path(derived[0].path)
    assert path.is_file()
    kept = pydicom.dcmread(path)
    assert kept.SOPInstanceUID == derived[0].sop_instance_uid
    assert kept.SourceImageSequence[0].ReferencedSOPInstanceUID == shadowed.SOPInstanceUID
    assert "DERIVED" in kept.ImageType
    assert derived[0].model_sha256 and derived[0].strength == 1.0
    assert dciodvfy_errors(path) == []

    live_job, live_dispatches, live_derived = _job(node, live.SOPInstanceUID)
    assert (live_job.state, live_job.shadow) == ("done", False)
    assert [d.state for d in live_dispatches] == ["sent"]
    assert live_derived[0].sop_instance_uid == sent.SOPInstanceUID

    # `jobs show` and `jobs list` say so; the live job says nothing of the kind.
    detail = show_job(node.runtime, job.id)
    assert detail is not None and detail["shadow"] is True
    assert detail["dispatches"] == [] and len(detail["derived"]) == 1
    text = format_detail(detail).splitlines()
    assert text[0] == f"Job {job.id}: done (enhance, rule new-model)"
    assert text[1] == SHADOW_LINE
    live_detail = show_job(node.runtime, live_job.id)
    assert live_detail is not None and live_detail["shadow"] is False
    assert "outputs:" not in format_detail(live_detail)
    rows = {row["id"]: row for row in list_jobs(node.runtime)}
    assert (rows[job.id]["shadow"], rows[live_job.id]["shadow"]) == (True, False)
    table = {
        line.split()[0]: line.split() for line in format_table(list(rows.values())).split("\n")
    }
    assert table[str(job.id)][1:4] == ["done", "enhance", "(shadow)"]
    assert table[str(live_job.id)][1:3] == ["done", "enhance"]
    assert table[str(live_job.id)][3] != "(shadow)"

    # Pumping again sends nothing more.
    assert node.pump() == 0
    assert len(sink.received) == 1


def test_jobs_show_reports_the_shadow_job_after_the_rule_goes_live(
    node: InProcessNode, sink: SinkSCP, small_dataset: Dataset
) -> None:
    source = _fresh(small_dataset)
    assert node.store(source, calling_ae=SHADOW_AET) == 0x0000
    node.pump()
    job, _dispatches, _derived = _job(node, source.SOPInstanceUID)
    assert sink.received == [] and job.shadow

    # Go-live: the rule now sends. The job that already ran stays reported as
    # kept and not sent, because the fact was recorded when it completed.
    document = {
        "node": {"ae_title": "NODE", "host": "127.0.0.1", "port": 11112},
        "storage": {"data_dir": str(node.config.storage.data_dir)},
        "destinations": [sink.destination()],
        "rules": [{**RULES[0], "send": True}, RULES[1]],
    }
    node.config_path.write_text(to_toml(document), encoding="utf-8")
    shown = _cli(node, "jobs", "show", str(job.id)).splitlines()
    assert shown[:2] == [f"Job {job.id}: done (enhance, rule new-model)", SHADOW_LINE]
    detail = json.loads(_cli(node, "jobs", "show", str(job.id), "--json"))
    assert (detail["state"], detail["shadow"], detail["dispatches"]) == ("done", True, [])
    listed = json.loads(_cli(node, "jobs", "list", "--json"))
    assert [(row["id"], row["shadow"]) for row in listed] == [(job.id, True)]


def test_housekeeping_treats_shadow_outputs_like_other_derived_files(
    node: InProcessNode, small_dataset: Dataset
) -> None:
    source = _fresh(small_dataset)
    assert node.store(source, calling_ae=SHADOW_AET) == 0x0000
    node.pump()
    _job_row, _dispatches, derived = _job(node, source.SOPInstanceUID)
    path = Path(derived[0].path)

    # Referenced by its audit row: not an orphan, however old.
    assert remove_orphans(node.runtime, min_age=dt.timedelta(0)) == 0
    assert path.is_file()
    # Past the retention period it goes with its job, like any derived file.
    days = node.config.storage.retention_days
    assert purge_expired(node.runtime, now=utcnow() + dt.timedelta(days=days + 1)) == 1
    assert not path.exists()
    with node.runtime.session() as session:
        assert session.scalars(select(DerivedInstance)).all() == []
        assert session.scalars(select(Job)).all() == []


def test_the_configuration_at_processing_time_decides(
    tmp_path: Path, sink: SinkSCP, small_dataset: Dataset
) -> None:
    # A job routed by the shadow rule but processed after go-live is sent: the
    # worker reads `send` when it runs the job, as it reads `strength`.
    model = make_smoothing_model(tmp_path / "smoother.onnx")
    workdir = tmp_path / "node"
    source = _fresh(small_dataset)
    before = InProcessNode(workdir, rules=RULES, destinations=[sink.destination()], model=model)
    try:
        assert before.store(source, calling_ae=SHADOW_AET) == 0x0000
    finally:
        before.close()
    live_rules = [{**RULES[0], "send": True}, RULES[1]]
    after = InProcessNode(workdir, rules=live_rules, destinations=[sink.destination()], model=model)
    try:
        after.pump()
        job, dispatches, _derived = _job(after, source.SOPInstanceUID)
        assert (job.rule, job.state, job.shadow) == ("new-model", "done", False)
        assert [d.state for d in dispatches] == ["sent"]
        assert len(sink.received) == 1
    finally:
        after.close()
