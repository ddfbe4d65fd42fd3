"""``dicom-node serve``: the SCP, the worker and the scheduler in one process.

apscheduler runs the periodic work: processing due jobs, sending due
dispatches (this is where retries happen, when their backoff has elapsed),
heartbeats and lease recovery, and hourly housekeeping. New work wakes the
relevant scheduler job at once, so latency does not depend on the poll
interval.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.dispatch import dispatch_due
from dicom_node.housekeeping import run_housekeeping
from dicom_node.liveness import heartbeat, recover_stale, unregister
from dicom_node.logs import log_event
from dicom_node.runtime import Runtime
from dicom_node.scp import StorageSCP
from dicom_node.spool import remove_partials
from dicom_node.worker import drain

logger = logging.getLogger(__name__)


def _guarded(name: str, func: Callable[[Runtime], object], runtime: Runtime) -> Callable[[], None]:
    def run() -> None:
        try:
            func(runtime)
        except Exception:
            logger.exception("periodic task %s failed", name)

    return run


class NodeService:
    """The running node.

    Parameters
    ----------
    runtime : Runtime
        The process runtime.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.scp = StorageSCP(runtime)
        jobs = runtime.config.jobs
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(jobs.workers + 4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=dt.UTC,
        )
        self._process_ids = [f"process-{i}" for i in range(jobs.workers)]

    def start(self) -> None:
        """Recover what a previous process left, then start scheduling and listening."""
        runtime = self.runtime
        jobs = runtime.config.jobs
        removed = remove_partials(runtime.config.storage.spool_dir)
        heartbeat(runtime)
        recovered = recover_stale(runtime)
        log_event(
            logger,
            "node.starting",
            worker_id=runtime.worker_id,
            database=runtime.engine.url.render_as_string(hide_password=True),
            recovered=recovered,
            partial_files_removed=removed,
        )
        for job_id in self._process_ids:
            self.scheduler.add_job(
                _guarded("process", drain, runtime),
                "interval",
                seconds=jobs.poll_interval,
                id=job_id,
            )
        self.scheduler.add_job(
            _guarded("dispatch", dispatch_due, runtime),
            "interval",
            seconds=jobs.poll_interval,
            id="dispatch",
        )
        self.scheduler.add_job(
            _guarded("heartbeat", heartbeat, runtime),
            "interval",
            seconds=max(1.0, jobs.lease_seconds / 4),
            id="heartbeat",
        )
        self.scheduler.add_job(
            _guarded("recover", recover_stale, runtime),
            "interval",
            seconds=max(1.0, jobs.lease_seconds / 2),
            id="recover",
        )
        self.scheduler.add_job(
            _guarded("housekeeping", run_housekeeping, runtime),
            "interval",
            hours=1,
            next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30),
            id="housekeeping",
        )
        runtime.on_new_job.append(self.wake_processing)
        runtime.on_new_dispatch.append(self.wake_dispatch)
        self.scheduler.start()
        self.scp.start()
        self.wake_processing()
        self.wake_dispatch()

    def _wake(self, job_ids: list[str]) -> None:
        now = dt.datetime.now(dt.UTC)
        for job_id in job_ids:
            with contextlib.suppress(JobLookupError):
                self.scheduler.modify_job(job_id, next_run_time=now)

    def wake_processing(self) -> None:
        """Run the job processors now rather than at their next tick."""
        self._wake(self._process_ids)

    def wake_dispatch(self) -> None:
        """Run the dispatcher now rather than at its next tick."""
        self._wake(["dispatch"])

    def stop(self) -> None:
        """Stop listening, let in-flight work finish, and leave cleanly."""
        log_event(logger, "node.stopping", worker_id=self.runtime.worker_id)
        self.scp.stop()
        self.runtime.stopping.set()
        self.scheduler.shutdown(wait=True)
        try:
            unregister(self.runtime)
        except Exception:
            logger.exception("could not unregister the worker")
        log_event(logger, "node.stopped", worker_id=self.runtime.worker_id)
