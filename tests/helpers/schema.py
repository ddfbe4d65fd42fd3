"""Databases as older versions of the node left them, for the migration tests.

Before migrations, the node created its tables with ``create_all`` and added
``derived_instances.strength`` with a hand-written ``ALTER TABLE``; the oldest
databases lack that column. Rows go in with plain SQL, as the old code's
columns are not the current models'.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, create_engine, inspect, text

from dicom_node.db import Base


def make_legacy_database(url: str, with_strength: bool) -> None:
    """Create the pre-migration schema at `url` with one row in every chain of tables."""
    engine = create_engine(url)
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
        # Columns added by revisions after 0001 did not exist before migrations.
        conn.execute(text("ALTER TABLE jobs DROP COLUMN shadow"))
        if not with_strength:
            conn.execute(text("ALTER TABLE derived_instances DROP COLUMN strength"))
        now = dt.datetime(2026, 1, 2, 3, 4, 5)
        conn.execute(
            text("INSERT INTO studies (id, study_instance_uid, created_at) VALUES (1, '1.2', :t)"),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO series (id, series_instance_uid, study_id, created_at) "
                "VALUES (1, '1.2.3', 1, :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO instances (id, sop_instance_uid, sop_class_uid, series_id, "
                "transfer_syntax_uid, path, size_bytes, calling_aet, received_at) "
                "VALUES (1, '1.2.3.4', '1.2.840.10008.5.1.4.1.1.1', 1, '1.2.840.10008.1.2.1', "
                "'/spool/a.dcm', 10, 'MODALITY', :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, instance_id, action, destinations, state, attempts, "
                "recoveries, completions, next_run_at, created_at, timings) "
                "VALUES (1, 1, 'enhance', '[]', 'done', 1, 0, 1, :t, :t, '{}')"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO derived_instances (id, job_id, sop_instance_uid, series_instance_uid, "
                "source_sop_instance_uid, source_series_instance_uid, study_instance_uid, path, "
                "model_name, model_version, model_sha256, provider, timings, created_at) "
                "VALUES (1, 1, '2.25.1', '2.25.2', '1.2.3.4', '1.2.3', '1.2', '/spool/d.dcm', "
                "'cxr', '1.0', :sha, 'CPUExecutionProvider', '{}', :t)"
            ),
            {"t": now, "sha": "ab" * 32},
        )
    engine.dispose()


def columns(engine: Engine, table: str) -> set[str]:
    """The column names of `table`."""
    return {column["name"] for column in inspect(engine).get_columns(table)}


def schema_differences(engine: Engine) -> list[object]:
    """What alembic's autogenerate finds between the database and the models (empty: none)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def set_revision(engine: Engine, revision: str) -> None:
    """Write `revision` into ``alembic_version`` (a database from a newer node)."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
