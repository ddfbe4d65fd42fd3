"""The per-process runtime: configuration, database engine and identity.

One :class:`Runtime` exists per process. It is created by the command line
and handed to the SCP, the worker and the dispatcher, so each of them uses the
same engine (and, once loaded, the same ONNX session).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Config
from dicom_node.db import make_engine, make_session_factory


@dataclass
class Runtime:
    """Shared state of one node process."""

    config: Config
    engine: Engine
    session_factory: sessionmaker[Session]
    worker_id: str
    on_new_job: list[Callable[[], None]] = field(default_factory=list)
    on_new_dispatch: list[Callable[[], None]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    extras: dict[str, Any] = field(default_factory=dict)
    held_jobs: set[int] = field(default_factory=set)
    """Jobs this process is working on right now: the heartbeat extends only their leases."""
    held_dispatches: set[int] = field(default_factory=set)
    """Dispatches this process is sending right now (same purpose)."""

    @classmethod
    def create(cls, config: Config) -> Runtime:
        """Create the runtime: the engine (and schema) and a unique worker id."""
        engine = make_engine(config.storage)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return cls(
            config=config,
            engine=engine,
            session_factory=make_session_factory(engine),
            worker_id=worker_id,
        )

    def session(self) -> Session:
        """Open a new session (use as a context manager)."""
        return self.session_factory()

    def notify_new_job(self) -> None:
        """Wake whoever processes jobs (no-op outside ``serve``)."""
        for callback in self.on_new_job:
            callback()

    def notify_new_dispatch(self) -> None:
        """Wake whoever sends dispatches (no-op outside ``serve``)."""
        for callback in self.on_new_dispatch:
            callback()

    def close(self) -> None:
        """Dispose of the engine's connections."""
        self.engine.dispose()
