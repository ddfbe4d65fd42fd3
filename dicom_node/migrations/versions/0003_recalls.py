"""Model recalls: the ``recalls`` table and ``jobs.recall_id``.

``dicom-node model recall`` records each recalled model in ``recalls``; the
jobs that send its IOCM rejection notes point at it through
``jobs.recall_id`` (NULL for every other job). Both are created only when
missing: a database made before migrations by ``create_all`` of a newer model
may have them already.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``recalls``, ``jobs.recall_id`` and its index, each where missing."""
    inspector = sa.inspect(op.get_bind())
    if "recalls" not in inspector.get_table_names():
        op.create_table(
            "recalls",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("model_sha256", sa.String(64), nullable=False, unique=True),
            sa.Column("model_name", sa.String(64), nullable=True),
            sa.Column("model_version", sa.String(64), nullable=True),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.Column("recalled_at", sa.DateTime(), nullable=False),
            sa.Column("recalled_by", sa.String(255), nullable=False),
            sa.Column("notes", sa.JSON(), nullable=False),
            sa.Column("missing", sa.JSON(), nullable=False),
        )
    if "recall_id" not in {c["name"] for c in inspector.get_columns("jobs")}:
        if op.get_bind().dialect.name == "sqlite":
            # SQLite cannot add a constraint to a table, but accepts a REFERENCES
            # clause on a new NULL column; a batch copy of ``jobs`` would fail, as
            # dispatches and derived instances reference its rows.
            op.execute("ALTER TABLE jobs ADD COLUMN recall_id INTEGER REFERENCES recalls (id)")
        else:
            op.add_column(
                "jobs",
                sa.Column("recall_id", sa.Integer(), sa.ForeignKey("recalls.id"), nullable=True),
            )
    if "ix_jobs_recall_id" not in {i["name"] for i in inspector.get_indexes("jobs")}:
        op.create_index("ix_jobs_recall_id", "jobs", ["recall_id"])


def downgrade() -> None:
    """Drop ``recalls`` and ``jobs.recall_id``.

    SQLite cannot drop a column that is in a foreign key, and copying ``jobs``
    without it breaks the foreign keys of the tables that reference ``jobs``
    inside the migration's transaction: there the column stays, emptied and
    without its index (an upgrade to 0003 uses it again).
    """
    op.execute("UPDATE jobs SET recall_id = NULL")
    op.drop_index("ix_jobs_recall_id", table_name="jobs")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_column("jobs", "recall_id")
    op.drop_table("recalls")
