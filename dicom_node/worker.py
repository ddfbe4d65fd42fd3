"""Running jobs: claim, process by action, record the outcome.

``forward`` sends the received file unchanged; ``enhance`` runs the
generator and sends the derived series (:mod:`dicom_node.enhance_job`).
The class of an exception decides the outcome
(:class:`~dicom_node.retry.RetryPolicy`): a permanent error fails the job, any
other is retried up to ``jobs.max_attempts``. An exception the node did not
raise on purpose is logged with its traceback, and the node keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dicom_node.enhance_job import enhance_job
from dicom_node.errors import PermanentError
from dicom_node.jobs import ClaimedJob, Output, claim_job, complete_processing, fail_job
from dicom_node.logs import log_event
from dicom_node.outcome import ProcessResult
from dicom_node.retry import is_expected
from dicom_node.runtime import Runtime
from dicom_node.states import Action

logger = logging.getLogger(__name__)


Processor = Callable[[Runtime, ClaimedJob], ProcessResult]


def forward(runtime: Runtime, job: ClaimedJob) -> ProcessResult:
    """Send the received instance unchanged."""
    return ProcessResult(
        outputs=[
            Output(
                path=job.path,
                sop_class_uid=job.sop_class_uid,
                sop_instance_uid=job.sop_instance_uid,
                transfer_syntax_uid=job.transfer_syntax_uid,
            )
        ]
    )


def enhance(runtime: Runtime, job: ClaimedJob) -> ProcessResult:
    """Run the generator and build the derived instance (:mod:`dicom_node.enhance_job`)."""
    return enhance_job(runtime, job)


PROCESSORS: dict[str, Processor] = {
    Action.FORWARD: forward,
    Action.ENHANCE: enhance,
    # A recall's rejection note (dicom_node.recall) is sent as it is, like a forwarded file.
    Action.REJECT: forward,
}


def process_one(runtime: Runtime) -> bool:
    """Claim and run one due job. Returns ``False`` when the queue had none."""
    job = claim_job(runtime)
    if job is None:
        return False
    runtime.held_jobs.add(job.id)
    try:
        _run(runtime, job)
    finally:
        # Whatever happened, stop renewing the lease: if the outcome could not be
        # recorded (database error), the job is recovered once the lease runs out.
        runtime.held_jobs.discard(job.id)
    return True


def _run(runtime: Runtime, job: ClaimedJob) -> None:
    start = time.perf_counter()
    log_event(
        logger,
        "job.started",
        job_id=job.id,
        action=job.action,
        attempt=job.attempts,
        sop_instance_uid=job.sop_instance_uid,
    )
    try:
        processor = PROCESSORS.get(job.action)
        if processor is None:
            raise PermanentError(f"Unknown action {job.action!r}.")
        result = processor(runtime, job)
    except Exception as exc:
        if not is_expected(exc):
            logger.exception("job %s raised an unexpected error", job.id)
        fail_job(runtime, job, exc)
        return
    timings: dict[str, Any] = dict(result.timings)
    timings.setdefault("process", (time.perf_counter() - start) * 1000)
    complete_processing(runtime, job, result.outputs, timings, result.audit, send=result.send)


def drain(runtime: Runtime, limit: int | None = None) -> int:
    """Process due jobs until none is left (or `limit` reached, or stopping)."""
    count = 0
    while not runtime.stopping.is_set() and (limit is None or count < limit):
        if not process_one(runtime):
            break
        count += 1
    return count
