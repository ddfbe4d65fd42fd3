"""Shared fixtures: real peers (the node as a subprocess, Orthanc, DCMTK) and test files.

Fixtures for other test modules to reuse:

``node``
    Factory: ``node(destinations=[orthanc], rules=[...], jobs={...}, ...)``
    writes a TOML configuration, starts ``dicom-node serve`` on a free port
    with its own data dir and returns a :class:`~helpers.peers.NodeProcess`
    (``port``, ``data_dir``, ``config_path``, ``log_text``, ``cli(*args)``,
    ``stop()``, ``kill()``, ``restart()``, ``sql()``, ``jobs()``,
    ``wait_jobs()``). Every node is killed at teardown. The default rule is
    a ``forward`` to every destination.
``orthanc`` / ``orthanc_factory``
    An Orthanc PACS on free loopback ports with temporary storage
    (:class:`~helpers.peers.Orthanc`: ``instances()``, ``count()``,
    ``tags()``, ``file()``, ``find()``, ``wait_for_count()``, ``stop()`` /
    ``start()`` for an outage).
``send``
    :func:`helpers.peers.storescu`: DCMTK's ``storescu`` (TCP_NODELAY=1).
``rg1_path``, ``rg1_dataset``, ``rg1_copies``, ``small_copies``, ``rg1_jpeg_lossless``
    The real chest x-ray and copies of it with new UIDs.
``pg_database``
    A fresh PostgreSQL database (``postgresql+psycopg://`` URL), dropped afterwards.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
import pytest
from helpers.dicom_files import (
    SampleFile,
    jpeg_lossless_copy,
    require_rg1,
    small_template,
    write_copies,
)
from helpers.peers import (
    LOOPBACK,
    NodeProcess,
    Orthanc,
    free_port,
    mount_tmpfs,
    storescu,
    unmount,
)
from pydicom.dataset import Dataset

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

DEFAULT_JOBS: dict[str, Any] = {
    "max_attempts": 10,
    "retry_base_delay": 0.5,
    "retry_max_delay": 2.0,
    "retry_jitter": 0.2,
    "poll_interval": 0.2,
    "lease_seconds": 30.0,
}
FORWARD_ALL = [{"name": "forward-all", "action": "forward"}]
"""The backbone's routing placeholder: send every instance unchanged to every destination."""


@pytest.fixture(scope="session", autouse=True)
def _pydicom_raise_on_invalid_writes() -> Iterator[None]:
    """In-process tests write only valid DICOM: invalid values raise instead of warning."""
    settings = pydicom.config.settings
    previous = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.RAISE
    yield
    settings.writing_validation_mode = previous


# --------------------------------------------------------------------------- test files


@pytest.fixture(scope="session")
def rg1_path() -> Path:
    """The real chest x-ray (read-only)."""
    return require_rg1()


@pytest.fixture(scope="session")
def rg1_dataset(rg1_path: Path) -> Dataset:
    """The real chest x-ray, decoded once per session (do not modify: deep-copy it)."""
    return pydicom.dcmread(rg1_path)


@pytest.fixture(scope="session")
def small_dataset(rg1_dataset: Dataset) -> Dataset:
    """A 128 × 128 crop of the real image with its whole header (≈ 35 KB on the wire)."""
    return small_template(rg1_dataset)


@pytest.fixture
def rg1_copies(rg1_dataset: Dataset, tmp_path: Path) -> Callable[..., list[SampleFile]]:
    """Factory: ``rg1_copies(n)`` writes n full-size copies with new SOP Instance UIDs."""
    counter = iter(range(1000))

    def make(count: int, **kwargs: Any) -> list[SampleFile]:
        return write_copies(rg1_dataset, tmp_path / f"rg1-{next(counter)}", count, **kwargs)

    return make


@pytest.fixture
def small_copies(small_dataset: Dataset, tmp_path: Path) -> Callable[..., list[SampleFile]]:
    """Factory: ``small_copies(n)`` writes n small crops with new SOP Instance UIDs."""
    counter = iter(range(1000))

    def make(count: int, **kwargs: Any) -> list[SampleFile]:
        return write_copies(small_dataset, tmp_path / f"small-{next(counter)}", count, **kwargs)

    return make


@pytest.fixture(scope="session")
def rg1_jpeg_lossless(rg1_path: Path, tmp_path_factory: pytest.TempPathFactory) -> SampleFile:
    """A JPEG Lossless SV1 copy of the real image made by ``dcmcjpeg`` (new SOP Instance UID)."""
    target = tmp_path_factory.mktemp("jpeg") / "rg1_jpeg_lossless.dcm"
    return jpeg_lossless_copy(rg1_path, target)


# --------------------------------------------------------------------------- peers


@pytest.fixture
def send() -> Callable[..., Any]:
    """DCMTK ``storescu`` (absolute path, TCP_NODELAY=1): ``send(port, files, called=...)``."""
    return storescu


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, int], Path]]:
    """Factory: ``tmpfs(path, size_kib)`` mounts a small tmpfs on `path` (needs root).

    Unmounted at teardown. Request this fixture BEFORE the ones whose processes
    use the mount (fixtures are torn down in reverse order), so that they are
    stopped first.
    """
    mounted: list[Path] = []

    def mount(path: Path, size_kib: int) -> Path:
        mount_tmpfs(path, size_kib)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        unmount(path)


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Factory of Orthanc servers (started unless ``start=False``); all killed at teardown."""
    started: list[Orthanc] = []

    def make(ae_title: str = "TESTPACS", start: bool = True) -> Orthanc:
        server = Orthanc(tmp_path / f"orthanc-{len(started)}", ae_title=ae_title)
        started.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """One Orthanc PACS, started, on free loopback ports with its own storage."""
    return orthanc_factory()


def _merge(defaults: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(defaults)
    merged.update(override or {})
    return merged


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory of node processes (``dicom-node serve``); every one is killed at teardown.

    Parameters of the factory: ``destinations`` (Orthanc objects or tables),
    ``rules`` (default: forward everything), ``node`` / ``storage`` / ``jobs``
    / ``logging`` (keys merged over test defaults), ``extra`` (more top-level
    tables), ``env`` (extra environment), ``start`` (default true), ``name``
    (sub-directory; two nodes may share a database through ``storage``).
    """
    created: list[NodeProcess] = []

    def make(
        *,
        destinations: list[Orthanc | dict[str, Any]] | None = None,
        rules: list[dict[str, Any]] | None = None,
        node: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
        jobs: dict[str, Any] | None = None,
        logging: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
        name: str | None = None,
    ) -> NodeProcess:
        workdir = tmp_path / (name or f"node-{len(created)}")
        document: dict[str, Any] = {
            "node": _merge(
                {"ae_title": "NODE", "host": LOOPBACK, "port": free_port(), "max_associations": 10},
                node,
            ),
            "storage": _merge({"data_dir": str(workdir / "data")}, storage),
            "jobs": _merge(DEFAULT_JOBS, jobs),
            "logging": _merge({"level": "INFO", "format": "text"}, logging),
        }
        document.update(copy.deepcopy(extra or {}))
        dests = [d.destination() if isinstance(d, Orthanc) else d for d in destinations or []]
        if dests:
            document["destinations"] = dests
        document["rules"] = copy.deepcopy(rules if rules is not None else FORWARD_ALL)
        process = NodeProcess(workdir, document, env=env)
        created.append(process)
        if start:
            process.start()
        return process

    yield make
    for process in created:
        process.kill()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server; yields its SQLAlchemy URL.

    The server must be running (127.0.0.1:5432, trust auth): a missing server
    fails the test.
    """
    import psycopg

    name = f"dicom_node_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise AssertionError(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
