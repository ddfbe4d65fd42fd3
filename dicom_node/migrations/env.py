"""Alembic environment of the node's schema.

The node runs the migrations in process (:func:`dicom_node.migrations.upgrade`)
on its own engine's connection, passed in ``config.attributes["connection"]``
inside the transaction that holds the schema lock. For ``alembic`` run by
hand (``alembic -x url=sqlite:///var/node.sqlite3 revision --autogenerate``
with ``script_location`` pointing here) a connection is made from ``-x url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData, create_engine


def _target_metadata() -> MetaData:
    from dicom_node.db import Base  # only for autogenerate; the node passes it in

    return Base.metadata


def run_migrations() -> None:
    """Run the pending migrations on the given connection (or ``-x url``)."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        metadata = config.attributes.get("target_metadata")
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("alembic: pass the database with -x url=DATABASE_URL")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=_target_metadata(), render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
