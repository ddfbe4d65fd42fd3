"""The ``enhance`` action: decode → normalise → infer → blend → derive → spool.

The blend applies the strength (the routing rule's, else ``[model]
strength``; see :mod:`dicom_node.strength`) in the [0, 1] space. The derived
file is written atomically to the spool and its audit row (source UIDs,
model hash, strength, provider, timings) is committed in the same
transaction that completes the job; the dispatcher then sends it.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.config import OutputSettings
from dicom_node.db import DerivedInstance, utcnow
from dicom_node.derive import build_derived
from dicom_node.errors import PermanentError
from dicom_node.inference import Enhancer, get_enhancer
from dicom_node.jobs import ClaimedJob, Output
from dicom_node.logs import log_event, ms_fields
from dicom_node.pixels import NormalizedImage, normalize_dataset
from dicom_node.routing import enhance_strength
from dicom_node.runtime import Runtime
from dicom_node.spool import spool_path, write_atomic
from dicom_node.strength import DEFAULT_STRENGTH, blend, check_strength
from dicom_node.worker import ProcessResult

logger = logging.getLogger(__name__)


def read_source(path: str) -> Dataset:
    """Read a spooled instance in full.

    Raises
    ------
    PermanentError
        If the file is missing or not readable DICOM.
    """
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise PermanentError(f"The received file {path} is missing from the spool.") from exc
    except Exception as exc:
        raise PermanentError(f"The received file cannot be read as DICOM: {exc}") from exc


def encode(derived: Dataset) -> bytes:
    """Serialise a derived dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    derived.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def enhance_dataset(
    source: Dataset,
    enhancer: Enhancer,
    output: OutputSettings,
    strength: float = DEFAULT_STRENGTH,
) -> tuple[Dataset, NormalizedImage, dict[str, float]]:
    """Run the pixel pipeline and the generator on `source`; build the derived object.

    The generator's output is blended with the normalised source at
    `strength` (0: the source's pixels, 1: the generator's output) before
    the derived object is built; the strength goes into its provenance and
    UIDs. Strength 0 still runs the model and gives a derived object.

    Returns the derived dataset, the normalised source and the stage timings
    (``decode``, ``inference``, ``derive``) in milliseconds.

    Raises
    ------
    PixelDataError
        If the pixel data cannot be decoded or is not a supported image.
    TypeError, ValueError
        If `strength` is not a number from 0 to 1.
    """
    strength = check_strength(strength)
    start = time.perf_counter()
    image = normalize_dataset(source)
    decoded = time.perf_counter()
    enhanced, _timings = enhancer.enhance(image.pixels)
    enhanced = blend(image.pixels, enhanced, strength)
    inferred = time.perf_counter()
    derived = build_derived(source, image, enhanced, enhancer.metadata, output, strength=strength)
    built = time.perf_counter()
    timings = {
        "decode": (decoded - start) * 1000,
        "inference": (inferred - decoded) * 1000,
        "derive": (built - inferred) * 1000,
    }
    return derived, image, timings


def enhance_job(runtime: Runtime, job: ClaimedJob) -> ProcessResult:
    """Process one ``enhance`` job (see the module docstring).

    Raises
    ------
    PermanentError
        For undecodable or unsupported images and model problems.
    StorageError
        If the derived file cannot be written (retried).
    """
    config = runtime.config
    queue_wait = max(0.0, (job.claimed_at - job.created_at).total_seconds() * 1000)
    enhancer = get_enhancer(config.model)
    strength = enhance_strength(config, job.rule)
    read_start = time.perf_counter()
    source = read_source(job.path)
    read_ms = (time.perf_counter() - read_start) * 1000
    derived, _image, stage = enhance_dataset(source, enhancer, config.output, strength)
    encode_start = time.perf_counter()
    data = encode(derived)
    path = spool_path(config.storage.spool_dir, "derived", str(derived.SOPInstanceUID), utcnow())
    write_atomic(path, data)
    encode_ms = (time.perf_counter() - encode_start) * 1000
    timings = {
        "queue_wait": queue_wait,
        "decode": read_ms + stage["decode"],
        "inference": stage["inference"],
        "encode": stage["derive"] + encode_ms,
    }
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
        row.strength = strength
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
        strength=strength,
        provider=provider,
        rows=int(derived.Rows),
        columns=int(derived.Columns),
        **ms_fields(timings),
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
    )
