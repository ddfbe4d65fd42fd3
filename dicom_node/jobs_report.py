"""Read-only views of the queue for ``dicom-node jobs list`` and ``jobs show``.

Patient identifiers are not shown: jobs are identified by UIDs. A shadow
rule's job (``send = false``) is reported as such: ``shadow`` true in both
views, ``enhance (shadow)`` in the table and an ``outputs: kept, not sent``
line in the detail, from ``jobs.shadow`` recorded when the job completed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from dicom_node.db import Dispatch, Instance, Job, Series
from dicom_node.runtime import Runtime
from dicom_node.states import DispatchState, JobState
from dicom_node.strength import format_strength

JOB_STATE_CHOICES: tuple[str, ...] = tuple(state.value for state in JobState)
"""The values ``jobs list --state`` accepts."""


def list_jobs(runtime: Runtime, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Return the most recent jobs (newest first) as plain dictionaries.

    Raises
    ------
    ValueError
        If `state` is not a job state (:class:`~dicom_node.states.JobState`).
    """
    if state and state not in JOB_STATE_CHOICES:
        raise ValueError(f"state: {state!r} is not one of {', '.join(JOB_STATE_CHOICES)}.")
    with runtime.session() as session:
        query = (
            select(Job, Instance)
            .join(Instance, Job.instance_id == Instance.id)
            .order_by(Job.id.desc())
            .limit(limit)
        )
        if state:
            query = query.where(Job.state == state)
        rows = session.execute(query).all()
        return [
            {
                "id": job.id,
                "state": job.state,
                "action": job.action,
                "shadow": job.shadow,
                "attempts": job.attempts,
                "created_at": job.created_at,
                "sop_instance_uid": instance.sop_instance_uid,
                "error": job.error,
            }
            for job, instance in rows
        ]


def show_job(runtime: Runtime, job_id: int) -> dict[str, Any] | None:
    """Return everything known about one job, or ``None``."""
    with runtime.session() as session:
        job = session.scalar(
            select(Job)
            .where(Job.id == job_id)
            .options(
                selectinload(Job.dispatches).selectinload(Dispatch.attempts_log),
                selectinload(Job.derived),
            )
        )
        if job is None:
            return None
        instance = session.get(Instance, job.instance_id)
        assert instance is not None
        series = session.get(Series, instance.series_id)
        return {
            "id": job.id,
            "state": job.state,
            "action": job.action,
            "rule": job.rule,
            "shadow": job.shadow,
            "attempts": job.attempts,
            "recoveries": job.recoveries,
            "completions": job.completions,
            "error": job.error,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "processed_at": job.processed_at,
            "finished_at": job.finished_at,
            "next_run_at": job.next_run_at if job.state == JobState.QUEUED else None,
            "timings_ms": job.timings or {},
            "source": {
                "sop_instance_uid": instance.sop_instance_uid,
                "sop_class_uid": instance.sop_class_uid,
                "series_instance_uid": series.series_instance_uid if series else None,
                "transfer_syntax_uid": instance.transfer_syntax_uid,
                "calling_aet": instance.calling_aet,
                "received_at": instance.received_at,
                "path": instance.path,
                "bytes": instance.size_bytes,
            },
            "derived": [
                {
                    "sop_instance_uid": d.sop_instance_uid,
                    "series_instance_uid": d.series_instance_uid,
                    "source_sop_instance_uid": d.source_sop_instance_uid,
                    "source_series_instance_uid": d.source_series_instance_uid,
                    "model": f"{d.model_name} {d.model_version}",
                    "model_sha256": d.model_sha256,
                    "strength": d.strength,
                    "provider": d.provider,
                    "timings_ms": d.timings,
                    "path": d.path,
                }
                for d in job.derived
            ],
            "dispatches": [
                {
                    "id": d.id,
                    "destination": d.destination,
                    "sop_instance_uid": d.sop_instance_uid,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "sent_at": d.sent_at,
                    "next_attempt_at": d.next_attempt_at
                    if d.state == DispatchState.PENDING
                    else None,
                    "attempt_log": [
                        {
                            "at": a.started_at,
                            "status": f"0x{a.status:04X}" if a.status is not None else None,
                            "ms": round(a.duration_ms, 1),
                            "error": a.error,
                        }
                        for a in d.attempts_log
                    ],
                }
                for d in job.dispatches
            ],
        }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Render :func:`list_jobs` rows as a fixed-width table."""
    header = ("ID", "STATE", "ACTION", "TRIES", "CREATED (UTC)", "SOP INSTANCE UID", "ERROR")
    lines = [header]
    for row in rows:
        error = (row["error"] or "")[:60]
        lines.append(
            (
                str(row["id"]),
                row["state"],
                f"{row['action']} (shadow)" if row["shadow"] else row["action"],
                str(row["attempts"]),
                row["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
                row["sop_instance_uid"],
                error,
            )
        )
    if len(lines) == 1:
        return "no jobs"
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])
    return str(value)


def format_detail(detail: dict[str, Any]) -> str:
    """Render :func:`show_job` as indented text."""
    lines = [
        f"Job {detail['id']}: {detail['state']} ({detail['action']}, rule {_fmt(detail['rule'])})"
    ]
    if detail["shadow"]:
        lines.append(f"  outputs: kept, not sent (shadow rule {detail['rule']!r})")
    for key in (
        "attempts",
        "recoveries",
        "error",
        "created_at",
        "started_at",
        "processed_at",
        "finished_at",
        "next_run_at",
    ):
        if detail[key] is not None:
            lines.append(f"  {key}: {_fmt(detail[key])}")
    if detail["timings_ms"]:
        timings = ", ".join(f"{k} {_fmt(v)} ms" for k, v in detail["timings_ms"].items())
        lines.append(f"  timings: {timings}")
    lines.append("  source:")
    for key, value in detail["source"].items():
        lines.append(f"    {key}: {_fmt(value)}")
    for derived in detail["derived"]:
        lines.append(f"  derived {derived['sop_instance_uid']}:")
        for key, value in derived.items():
            if key == "timings_ms":
                value = ", ".join(f"{k} {_fmt(v)} ms" for k, v in value.items())
            elif key == "strength" and value is not None:
                value = format_strength(value)
            if key != "sop_instance_uid":
                lines.append(f"    {key}: {_fmt(value)}")
    for dispatch in detail["dispatches"]:
        lines.append(
            f"  dispatch {dispatch['id']} -> {dispatch['destination']}: {dispatch['state']}, "
            f"{dispatch['attempts']} attempt(s), sent {_fmt(dispatch['sent_at'])}"
        )
        if dispatch["last_error"]:
            lines.append(f"    last error: {dispatch['last_error']}")
        for attempt in dispatch["attempt_log"]:
            lines.append(
                f"    {_fmt(attempt['at'])} status {_fmt(attempt['status'])} "
                f"{attempt['ms']} ms {attempt['error'] or ''}".rstrip()
            )
    return "\n".join(lines)
