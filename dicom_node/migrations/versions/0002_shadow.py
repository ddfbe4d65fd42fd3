"""``jobs.shadow``: the job's outputs were kept and not sent (a shadow rule, ``send = false``).

Set when the job completes, so ``dicom-node jobs show`` reports what was
done even after the rule changes. Rows made before read false: a job of a
node without shadow rules sent its outputs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``jobs.shadow`` (NOT NULL, false for the existing rows)."""
    op.add_column(
        "jobs", sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    """Drop ``jobs.shadow``."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("shadow")
