"""Database schema and the process-wide engine.

SQLite under ``data_dir`` is the embedded default; PostgreSQL
(``postgresql+psycopg://``) is used when several workers or hosts share the
queue. All timestamps are naive UTC (:func:`utcnow`). The tables are created and
changed only by the migrations in :mod:`dicom_node.migrations`: a change to a
model here needs a new revision there.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CursorResult,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    Result,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from dicom_node import migrations
from dicom_node.config import StorageSettings

UID = String(64)


def utcnow() -> dt.datetime:
    """Current time as naive UTC, the only kind of timestamp stored."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Study(Base):
    """A study the node has received at least one instance of."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series the node has received at least one instance of."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    modality: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """A received SOP instance and the spool file that holds its bytes as received."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"))
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_aet: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)

    series: Mapped[Series] = relationship(back_populates="instances")
    jobs: Mapped[list[Job]] = relationship(back_populates="instance")


class Job(Base):
    """Work to do on one received instance.

    States: ``queued`` → ``running`` → ``sending`` → ``done``, or ``failed``
    (a permanent error) or ``dead_lettered`` (attempts exhausted). ``sending``
    means the processing is finished and the outputs wait in
    :class:`Dispatch` rows. `shadow` is set when the job completes: true when
    its rule was a shadow rule (``send = false``), so its outputs were kept
    and not sent; it stays what it was whatever the configuration says later.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_next_run", "state", "next_run_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    action: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(String(64))
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    completions: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    recall_id: Mapped[int | None] = mapped_column(ForeignKey("recalls.id"), index=True)
    """The :class:`Recall` whose rejection note this job sends (None for received work)."""

    instance: Mapped[Instance] = relationship(back_populates="jobs")
    dispatches: Mapped[list[Dispatch]] = relationship(back_populates="job", order_by="Dispatch.id")
    derived: Mapped[list[DerivedInstance]] = relationship(
        back_populates="job", order_by="DerivedInstance.id"
    )


class Dispatch(Base):
    """One file to send to one destination, with its own retry state.

    States: ``pending`` → ``sending`` → ``sent``, or ``dead`` when the
    attempts are exhausted.
    """

    __tablename__ = "dispatches"
    __table_args__ = (
        UniqueConstraint("job_id", "destination", "sop_instance_uid"),
        Index("ix_dispatches_due", "state", "destination", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    destination: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    job: Mapped[Job] = relationship(back_populates="dispatches")
    attempts_log: Mapped[list[DispatchAttempt]] = relationship(
        back_populates="dispatch", order_by="DispatchAttempt.id"
    )


class DispatchAttempt(Base):
    """One C-STORE of a :class:`Dispatch`, successful or not."""

    __tablename__ = "dispatch_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dispatch_id: Mapped[int] = mapped_column(ForeignKey("dispatches.id"), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    duration_ms: Mapped[float] = mapped_column(default=0.0)
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    dispatch: Mapped[Dispatch] = relationship(back_populates="attempts_log")


class DerivedInstance(Base):
    """Audit record of an instance the node produced, with its provenance.

    `strength` is the share of the generator's correction that was applied
    (see :mod:`dicom_node.strength`); it is NULL for rows written before the
    node recorded it (those were made at strength 1).
    """

    __tablename__ = "derived_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    source_sop_instance_uid: Mapped[str] = mapped_column(UID)
    source_series_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    strength: Mapped[float | None] = mapped_column(Float, nullable=True)
    provider: Mapped[str] = mapped_column(String(64))
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="derived")


class Recall(Base):
    """A model taken out of use by ``dicom-node model recall`` (:mod:`dicom_node.recall`).

    Kept for good, as an audit record: retention never deletes it. `notes`
    lists the rejection notes sent (study, note UID, destinations, rejected
    UIDs); `missing` the derived instances that could not get one because
    their spool file was purged.
    """

    __tablename__ = "recalls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    recalled_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    recalled_by: Mapped[str] = mapped_column(String(255))
    notes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    missing: Mapped[list[str]] = mapped_column(JSON, default=list)


class Worker(Base):
    """A running node process, with its heartbeat (for lease recovery)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def make_engine(storage: StorageSettings, *, migrate: bool = True) -> Engine:
    """Create the process's engine and bring the schema to the newest revision.

    SQLite runs in WAL mode with ``synchronous=FULL`` (a committed row survives
    a power cut) and every transaction starts with ``BEGIN IMMEDIATE`` so
    concurrent writers wait for the lock (up to ``sqlite_busy_timeout``)
    instead of failing on a lock upgrade.

    Parameters
    ----------
    storage : StorageSettings
        The storage section of the configuration.
    migrate : bool, optional
        Run the pending migrations (:func:`dicom_node.migrations.upgrade`);
        default true. False for ``dicom-node db current``, which only looks.

    Returns
    -------
    sqlalchemy.Engine
        The engine; create it once per process.

    Raises
    ------
    dicom_node.migrations.SchemaVersionError
        If the database was upgraded by a newer node (its revision is unknown).
    """
    url = storage.effective_database_url
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        storage.data_dir.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {
            "timeout": storage.sqlite_busy_timeout,
            "check_same_thread": False,
        }
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        _configure_sqlite(engine, storage.sqlite_busy_timeout)
    if migrate:
        try:
            migrations.upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def rowcount(result: Result[Any]) -> int:
    """Rows an ``UPDATE`` or ``DELETE`` matched (``Session.execute`` types it as a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount)


def make_session_factory(engine: Engine) -> sessionmaker[Any]:
    """Return the session factory bound to `engine` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)
