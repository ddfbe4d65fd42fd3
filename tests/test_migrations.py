"""Schema migrations on SQLite: a new database, one made before migrations, one from a newer node.

The same checks on PostgreSQL are in ``test_postgres.py``. Every database
is compared with the models by alembic's autogenerate after the upgrade, so
a model changed without a migration fails here.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from helpers.peers import DICOM_NODE, NodeProcess, free_port, to_toml
from helpers.schema import columns, make_legacy_database, schema_differences, set_revision
from sqlalchemy import create_engine, text

from dicom_node import migrations
from dicom_node.config import StorageSettings
from dicom_node.db import make_engine
from dicom_node.migrations import SchemaVersionError

REPO = Path(__file__).resolve().parent.parent


def sqlite_storage(tmp_path: Path) -> StorageSettings:
    return StorageSettings(data_dir=tmp_path / "data")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        to_toml(
            {
                "node": {"ae_title": "NODE", "host": "127.0.0.1", "port": free_port()},
                "storage": {"data_dir": str(tmp_path / "data")},
                "rules": [{"name": "fwd", "action": "forward"}],
            }
        )
    )
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DICOM_NODE, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_new_database_is_created_at_the_newest_revision(tmp_path: Path) -> None:
    engine = make_engine(sqlite_storage(tmp_path))
    try:
        state = migrations.current(engine)
        assert state.revision == migrations.head_revision() and state.current
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("with_strength", [False, True], ids=["oldest", "with-strength"])
def test_a_database_made_before_migrations_is_upgraded(tmp_path: Path, with_strength: bool) -> None:
    storage = sqlite_storage(tmp_path)
    storage.data_dir.mkdir(parents=True)
    make_legacy_database(storage.effective_database_url, with_strength)
    engine = make_engine(storage, migrate=False)
    try:
        before = migrations.current(engine)
        assert before.revision is None and before.legacy
        assert ("strength" in columns(engine, "derived_instances")) is with_strength
    finally:
        engine.dispose()

    engine = make_engine(storage)
    try:
        assert migrations.current(engine).current
        assert schema_differences(engine) == []
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid, strength FROM derived_instances"))
            assert rows.all() == [("2.25.1", None)]
            assert conn.execute(text("SELECT state FROM jobs")).scalar_one() == "done"
            # A job from before shadow rules sent its outputs (revision 0002).
            assert not conn.execute(text("SELECT shadow FROM jobs")).scalar_one()
    finally:
        engine.dispose()


def test_a_database_from_a_newer_node_is_refused(tmp_path: Path) -> None:
    storage = sqlite_storage(tmp_path)
    make_engine(storage).dispose()
    engine = create_engine(storage.effective_database_url)
    set_revision(engine, "9999_future")
    with pytest.raises(SchemaVersionError, match="'9999_future', which this dicom-node does not"):
        make_engine(storage)

    config = write_config(tmp_path)
    for command in (["serve"], ["db", "upgrade"], ["db", "current"], ["jobs", "list"]):
        result = cli(*command, "--config", str(config))
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dicom-node: error: The database sqlite:///")
        assert "'9999_future'" in lines[0]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            "9999_future"
        )
    engine.dispose()


def test_db_current_and_db_upgrade(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    head = migrations.head_revision()
    url = f"sqlite:///{(tmp_path / 'data' / 'node.sqlite3').resolve()}"

    empty = cli("db", "current", "--config", str(config))
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == (
        f"Database {url}: no revision (empty); head is {head}, run dicom-node db upgrade.\n"
    )
    (tmp_path / "data" / "node.sqlite3").unlink()
    make_legacy_database(url, with_strength=False)
    legacy = cli("db", "current", "--config", str(config))
    assert "no revision (made before migrations)" in legacy.stdout

    upgraded = cli("db", "upgrade", "--config", str(config))
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == (
        f"Upgraded database {url} from no revision to revision {head} (head).\n"
    )
    again = cli("db", "upgrade", "--config", str(config))
    assert again.stdout == f"Database {url} is at revision {head} (head) already.\n"
    current = cli("db", "current", "--config", str(config))
    assert current.stdout == f"Database {url}: revision {head} (head).\n"


def test_serve_upgrades_an_older_database_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "node" / "data").mkdir(parents=True)
    data = tmp_path / "node" / "data"
    make_legacy_database(f"sqlite:///{data / 'node.sqlite3'}", with_strength=False)
    node = NodeProcess(
        tmp_path / "node",
        {
            "node": {"ae_title": "NODE", "host": "127.0.0.1", "port": free_port()},
            "storage": {"data_dir": str(data)},
            "rules": [{"name": "fwd", "action": "forward"}],
        },
    )
    try:
        node.start()
    finally:
        node.kill()
    engine = create_engine(f"sqlite:///{data / 'node.sqlite3'}")
    try:
        assert migrations.current(engine).current
        assert "strength" in columns(engine, "derived_instances")
    finally:
        engine.dispose()


def test_the_migrations_ship_with_the_package() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["dicom_node"]
    root = REPO / "dicom_node"
    shipped = {path for pattern in package_data for path in root.glob(pattern)}
    versions = sorted((root / "migrations" / "versions").glob("*.py"))
    assert versions and set(versions) <= shipped
    assert root / "migrations" / "script.py.mako" in shipped
    assert (root / "migrations" / "__init__.py").is_file()  # env.py ships with the package


def test_recalls_downgrade_to_0002_and_upgrade_again(tmp_path: Path) -> None:
    from alembic import command

    storage = sqlite_storage(tmp_path)
    storage.data_dir.mkdir(parents=True)
    make_legacy_database(storage.effective_database_url, with_strength=True)
    engine = make_engine(storage)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO recalls (id, model_sha256, reason, recalled_at, recalled_by, "
                    "notes, missing) VALUES (1, :sha, 'r', '2026-01-02', 'u@h', '[]', '[]')"
                ),
                {"sha": "ab" * 32},
            )
            conn.execute(text("UPDATE jobs SET recall_id = 1"))
        with engine.begin() as conn:  # jobs is referenced by derived_instances: rows stay
            command.downgrade(migrations._alembic_config(conn), "0002")
        assert migrations.current(engine).revision == "0002"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM derived_instances")).scalar_one() == 1
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    finally:
        engine.dispose()
    engine = make_engine(storage)
    try:
        assert migrations.current(engine).current
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
