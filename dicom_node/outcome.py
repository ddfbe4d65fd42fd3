"""What processing one job produced: its outputs, stage timings and audit step.

:class:`ProcessResult` is shared by the worker, which records it, and by the
processors (``forward`` in :mod:`dicom_node.worker`,
:mod:`dicom_node.enhance_job`), which return it; it lives here so that
neither of those modules has to import the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from dicom_node.jobs import Output


@dataclass
class ProcessResult:
    """What a processor produced."""

    outputs: list[Output]
    timings: dict[str, float] = field(default_factory=dict)
    audit: Callable[[Session], None] | None = None
    send: bool = True
    """False: keep the outputs and send them nowhere (a shadow rule's job)."""
