"""The node's schema as of its first migration, and the upgrade of databases made before it.

A database created before the node had migrations has the tables but no
``alembic_version``: this revision then creates only the tables it lacks and
adds ``derived_instances.strength`` (added by hand-written ``ALTER TABLE``
before). On an empty database it creates everything.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UID = sa.String(64)


def _tables() -> list[tuple[str, list[Any]]]:
    """Every table with its columns and constraints, parents before children."""
    return [
        (
            "studies",
            [
                sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column("study_instance_uid", UID, nullable=False, unique=True),
                sa.Column("patient_id", sa.String(64), nullable=True),
                sa.Column("accession_number", sa.String(16), nullable=True),
                sa.Column("created_at", sa.DateTime(), nullable=False),
            ],
        ),
        (
            "series",
            [
                sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column("series_instance_uid", UID, nullable=False, unique=True),
                sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id"), nullable=False),
                sa.Column("modality", sa.String(16), nullable=True),
                sa.Column("created_at", sa.DateTime(), nullable=False),
            ],
        ),
        (
            "instances",
            [
                sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
                sa.Column("sop_class_uid", UID, nullable=False),
                sa.Column("series_id", sa.Integer(), sa.ForeignKey("series.id"), nullable=False),
                sa.Column("transfer_syntax_uid", UID, nullable=False),
                sa.Column("path", sa.Text(), nullable=False),
                sa.Column("size_bytes", sa.BigInteger(), nullable=False),
                sa.Column("calling_aet", sa.String(16), nullable=False),
                sa.Column("received_at", sa.DateTime(), nullable=False, index=True),
            ],
        ),
        (
            "jobs",
            [
                sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column(
                    "instance_id",
                    sa.Integer(),
                    sa.ForeignKey("instances.id"),
                    nullable=False,
                    unique=True,
                ),
                sa.Column("action", sa.String(16), nullable=False),
                sa.Column("rule", sa.String(64), nullable=True),
                sa.Column("destinations", sa.JSON(), nullable=False),
                sa.Column("state", sa.String(16), nullable=False),
                sa.Column("attempts", sa.Integer(), nullable=False),
                sa.Column("recoveries", sa.Integer(), nullable=False),
                sa.Column("completions", sa.Integer(), nullable=False),
                sa.Column("next_run_at", sa.DateTime(), nullable=False),
                sa.Column("owner", sa.String(128), nullable=True),
                sa.Column("lease_until", sa.DateTime(), nullable=True),
                sa.Column("error", sa.Text(), nullable=True),
                sa.Column("created_at", sa.DateTime(), nullable=False),
                sa.Column("started_at", sa.DateTime(), nullable=True),
                sa.Column("processed_at", sa.DateTime(), nullable=True),
                sa.Column("finished_at", sa.DateTime(), nullable=True),
                sa.Column("timings", sa.JSON(), nullable=False),
                sa.Index("ix_jobs_state_next_run", "state", "next_run_at"),
            ],
        ),
        (
            "dispatches",
            [
                sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
                sa.Column("destination", sa.String(64), nullable=False),
                sa.Column("path", sa.Text(), nullable=False),
                sa.Column("sop_class_uid", UID, nullable=False),
                sa.Column("sop_instance_uid", UID, nullable=False),
                sa.Column("transfer_syntax_uid", UID, nullable=False),
                sa.Column("state", sa.String(16), nullable=False),
                sa.Column("attempts", sa.Integer(), nullable=False),
                sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
                sa.Column("owner", sa.String(128), nullable=True),
                sa.Column("lease_until", sa.DateTime(), nullable=True),
                sa.Column("last_error", sa.Text(), nullable=True),
                sa.Column("created_at", sa.DateTime(), nullable=False),
                sa.Column("sent_at", sa.DateTime(), nullable=True),
                sa.UniqueConstraint("job_id", "destination", "sop_instance_uid"),
                sa.Index("ix_dispatches_due", "state", "destination", "next_attempt_at"),
            ],
        ),
        (
            "dispatch_attempts",
            [
                sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column(
                    "dispatch_id",
                    sa.Integer(),
                    sa.ForeignKey("dispatches.id"),
                    nullable=False,
                    index=True,
                ),
                sa.Column("started_at", sa.DateTime(), nullable=False),
                sa.Column("duration_ms", sa.Double(), nullable=False),
                sa.Column("status", sa.Integer(), nullable=True),
                sa.Column("error", sa.Text(), nullable=True),
            ],
        ),
        (
            "derived_instances",
            [
                sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column(
                    "job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False, index=True
                ),
                sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
                sa.Column("series_instance_uid", UID, nullable=False),
                sa.Column("source_sop_instance_uid", UID, nullable=False),
                sa.Column("source_series_instance_uid", UID, nullable=False),
                sa.Column("study_instance_uid", UID, nullable=False),
                sa.Column("path", sa.Text(), nullable=False),
                sa.Column("model_name", sa.String(64), nullable=False),
                sa.Column("model_version", sa.String(64), nullable=False),
                sa.Column("model_sha256", sa.String(64), nullable=False),
                sa.Column("strength", sa.Float(), nullable=True),
                sa.Column("provider", sa.String(64), nullable=False),
                sa.Column("timings", sa.JSON(), nullable=False),
                sa.Column("created_at", sa.DateTime(), nullable=False),
            ],
        ),
        (
            "workers",
            [
                sa.Column("id", sa.String(128), primary_key=True),
                sa.Column("hostname", sa.String(255), nullable=False),
                sa.Column("pid", sa.Integer(), nullable=False),
                sa.Column("started_at", sa.DateTime(), nullable=False),
                sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
            ],
        ),
    ]


def upgrade() -> None:
    """Create the missing tables; add ``derived_instances.strength`` to an older database."""
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, items in _tables():
        if name not in existing:
            op.create_table(name, *items)
    if "derived_instances" in existing:
        columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("derived_instances")}
        if "strength" not in columns:
            # Nullable, no default: rows made before read NULL (they were made at strength 1).
            op.add_column("derived_instances", sa.Column("strength", sa.Float(), nullable=True))


def downgrade() -> None:
    """Drop every table of the node."""
    for name, _items in reversed(_tables()):
        op.drop_table(name)
