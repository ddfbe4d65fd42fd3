"""Structured logging: one line per event, with UIDs and timings as fields.

Modules log with :func:`log_event`, which attaches the fields to the record;
:func:`configure_logging` (called only by the command line) installs a
formatter that renders them as ``key=value`` pairs or as JSON. Patient names
and IDs are never passed as fields at INFO: log UIDs instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

_FIELDS = "event_fields"


def log_event(
    logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object
) -> None:
    """Log `event` with structured `fields` on one line.

    Parameters
    ----------
    logger : logging.Logger
        The module's logger.
    event : str
        A dotted event name such as ``"instance.stored"``.
    level : int, optional
        Logging level, INFO by default.
    **fields : object
        Values to render as ``key=value``; ``None`` values are dropped.
    """
    if logger.isEnabledFor(level):
        clean = {k: v for k, v in fields.items() if v is not None}
        logger.log(level, event, extra={_FIELDS: clean})


def ms_fields(timings: Mapping[str, float]) -> dict[str, Any]:
    """Log fields ``<stage>_ms`` from a mapping of stage timings in milliseconds."""
    return {f"{stage}_ms": value for stage, value in timings.items()}


def _render(value: object) -> str:
    if isinstance(value, float):
        value = round(value, 3)
    text = str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``2026-11-25T10:00:00.123Z INFO logger event key=value ...``."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line."""
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        parts = [stamp, record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={_render(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a JSON object."""
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install the node's log handler on the root logger (stderr).

    pynetdicom's own logger is kept at WARNING: at lower levels it prints
    dataset contents, which may hold patient data.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # apscheduler warns at every tick skipped because the previous run is still busy.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
