"""The ``enhance`` action: the pipeline on a spooled instance, then spool and audit.

:func:`dicom_node.pipeline.enhance_instance` reads, decodes, normalises,
infers, applies the strength (the routing rule's, else ``[model]
strength``; see :mod:`dicom_node.strength`), derives and encodes. The
derived file is written atomically to the spool and its audit row (source
UIDs, model hash, strength, provider, stage timings) is committed in the
same transaction that completes the job; the dispatcher then sends it,
unless the job's rule is a shadow rule (``send = false``): the file and its
audit row are kept exactly the same, and nothing is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.db import DerivedInstance, utcnow
from dicom_node.errors import ModelError
from dicom_node.inference import get_enhancer
from dicom_node.jobs import ClaimedJob, Output
from dicom_node.logs import log_event
from dicom_node.outcome import ProcessResult
from dicom_node.pipeline import enhance_instance
from dicom_node.recall_report import describe_recall, find_recall
from dicom_node.routing import enhance_sends, enhance_strength
from dicom_node.runtime import Runtime
from dicom_node.spool import spool_path, write_atomic
from dicom_node.timings import StageTimings, Stopwatch

logger = logging.getLogger(__name__)


def enhance_job(runtime: Runtime, job: ClaimedJob) -> ProcessResult:
    """Process one ``enhance`` job (see the module docstring).

    Raises
    ------
    PermanentError
        For undecodable or unsupported images and model problems (a
        :class:`~dicom_node.errors.ModelError` when the model was recalled).
    StorageError
        If the derived file cannot be written (retried).
    """
    config = runtime.config
    queue_wait = max(0.0, (job.claimed_at - job.created_at).total_seconds() * 1000)
    enhancer = get_enhancer(config.model)
    with runtime.session() as session:
        recall = find_recall(session, enhancer.metadata.sha256)
    if recall is not None:  # recalled while this node runs: it never starts with it
        raise ModelError(f"The model {enhancer.metadata.short_hash} was {describe_recall(recall)}.")
    strength = enhance_strength(config, job.rule)
    result = enhance_instance(job.path, enhancer, config.output, strength=strength)
    source, derived = result.source, result.derived
    clock = Stopwatch()
    path = spool_path(config.storage.spool_dir, "derived", str(derived.SOPInstanceUID), utcnow())
    write_atomic(path, result.data)
    stages: StageTimings = result.timings.merged(
        StageTimings(queue_wait_ms=queue_wait, write_ms=clock.lap())
    )
    timings = stages.as_dict()
    provider = enhancer.provider
    model = enhancer.metadata

    def audit(session: Session) -> None:
        row = session.scalar(
            select(DerivedInstance).where(
                DerivedInstance.sop_instance_uid == str(derived.SOPInstanceUID)
            )
        )
        if row is None:
            row = DerivedInstance(sop_instance_uid=str(derived.SOPInstanceUID))
            session.add(row)
        row.job_id = job.id
        row.series_instance_uid = str(derived.SeriesInstanceUID)
        row.source_sop_instance_uid = str(source.SOPInstanceUID)
        row.source_series_instance_uid = str(source.SeriesInstanceUID)
        row.study_instance_uid = str(source.StudyInstanceUID)
        row.path = str(path)
        row.model_name = model.name
        row.model_version = model.version
        row.model_sha256 = model.sha256
        row.strength = result.strength
        row.provider = provider
        row.timings = dict(timings)
        row.created_at = utcnow()

    log_event(
        logger,
        "derived.written",
        job_id=job.id,
        source_sop_instance_uid=job.sop_instance_uid,
        sop_instance_uid=str(derived.SOPInstanceUID),
        series_instance_uid=str(derived.SeriesInstanceUID),
        model=f"{model.name} {model.version}",
        model_sha256=model.short_hash,
        strength=result.strength,
        provider=provider,
        rows=int(derived.Rows),
        columns=int(derived.Columns),
        **stages.log_fields(),
    )
    audit_fn: Callable[[Session], None] = audit
    return ProcessResult(
        outputs=[
            Output(
                path=str(path),
                sop_class_uid=str(derived.SOPClassUID),
                sop_instance_uid=str(derived.SOPInstanceUID),
                transfer_syntax_uid=str(derived.file_meta.TransferSyntaxUID),
            )
        ],
        timings=timings,
        audit=audit_fn,
        send=enhance_sends(config, job.rule),
    )
