"""Sending outputs to destinations, in batches, with retries: the sender loop.

:func:`dispatch_due` takes the due ``pending`` dispatches of each destination
(:mod:`dicom_node.dispatch_queue` holds every write to them), sends them over
one association per batch (:func:`~dicom_node.scu.send_batch`) and records
every attempt. A failed dispatch waits the
:class:`~dicom_node.retry.RetryPolicy`'s backoff and is tried again, until
``jobs.max_attempts``; then it is ``dead`` and its job ``dead_lettered``. The
whole batch of one association shares one retry time, so a destination that
comes back gets one association, not one per file.
"""

from __future__ import annotations

import logging
import time

from dicom_node.dispatch_queue import (
    claim_batch,
    dead_letter_destination,
    due_destinations,
    hold_destination,
    record_results,
    release_batch,
)
from dicom_node.errors import ConfigError
from dicom_node.jobs import settle_jobs
from dicom_node.logs import log_event
from dicom_node.retry import RetryPolicy
from dicom_node.runtime import Runtime
from dicom_node.scu import SendResult, send_batch, split_for_contexts

logger = logging.getLogger(__name__)


def _record(runtime: Runtime, destination: str, results: list[SendResult]) -> None:
    """Record a batch's results and settle their jobs, in one transaction."""
    policy = RetryPolicy(runtime.config.jobs)
    with runtime.session() as session, session.begin():
        job_ids = record_results(session, runtime.worker_id, destination, results, policy)
        session.flush()
        settle_jobs(session, job_ids)


def _dead_letter_unknown(runtime: Runtime, destination: str) -> None:
    """Dead-letter what waits for a destination that was removed from the configuration."""
    with runtime.session() as session, session.begin():
        job_ids = dead_letter_destination(session, destination)
        settle_jobs(session, job_ids)
    log_event(logger, "dispatch.unknown_destination", level=logging.ERROR, destination=destination)


def dispatch_due(runtime: Runtime) -> int:
    """Send every due dispatch, one association per destination batch.

    Returns
    -------
    int
        How many dispatches were attempted.
    """
    config = runtime.config
    attempted = 0
    for name in due_destinations(runtime):
        if runtime.stopping.is_set():
            break
        try:
            destination = config.destination(name)
        except ConfigError:  # the destination was removed from the configuration
            _dead_letter_unknown(runtime, name)
            continue
        down_after: int | None = None  # a dispatch of the batch that found it down
        while not runtime.stopping.is_set() and down_after is None:
            items = claim_batch(runtime, name, destination.max_batch)
            if not items:
                break
            keys = {item.key for item in items}
            runtime.held_dispatches.update(keys)  # the heartbeat extends their leases
            try:
                for batch in split_for_contexts(items):
                    if down_after is not None:
                        release_batch(runtime, batch, retry_after=down_after)
                        continue
                    start = time.perf_counter()
                    results = send_batch(
                        config.node.ae_title, destination, batch, timeout=config.node.dimse_timeout
                    )
                    _record(runtime, name, results)
                    attempted += len(batch)
                    sent = sum(1 for r in results if r.ok)
                    log_event(
                        logger,
                        "dispatch.batch",
                        destination=name,
                        size=len(batch),
                        sent=sent,
                        failed=len(batch) - sent,
                        ms=(time.perf_counter() - start) * 1000,
                    )
                    # Nothing stored: the destination is down. Stop for now; the backoff
                    # decides when to come back.
                    if sent == 0:
                        down_after = results[0].key
                        hold_destination(runtime, name, down_after)
            finally:
                runtime.held_dispatches.difference_update(keys)
    return attempted
