"""``dicom-node jobs list|show|retry``: inspect and re-queue jobs."""

from __future__ import annotations

import argparse
import json

from dicom_node.cli_common import EXIT_OK, CommandError, load, open_runtime


def cmd_jobs(args: argparse.Namespace) -> int:
    """``jobs list``, ``jobs show ID``, ``jobs retry ID``."""
    from dicom_node import jobs_report

    config = load(args)
    runtime = open_runtime(config)
    try:
        if args.jobs_command == "list":
            rows = jobs_report.list_jobs(runtime, state=args.state, limit=args.limit)
            if args.json:
                print(json.dumps(rows, indent=2, default=str))
            else:
                print(jobs_report.format_table(rows))
            return EXIT_OK
        if args.jobs_command == "show":
            detail = jobs_report.show_job(runtime, args.id)
            if detail is None:
                raise CommandError(f"There is no job {args.id}.")
            if args.json:
                print(json.dumps(detail, indent=2, default=str))
            else:
                print(jobs_report.format_detail(detail))
            return EXIT_OK
        from dicom_node.jobs import JobNotFoundError, retry

        try:
            print(retry(runtime, args.id))
        except (JobNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        return EXIT_OK
    finally:
        runtime.close()
