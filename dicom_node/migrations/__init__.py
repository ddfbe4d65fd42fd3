"""Schema migrations (alembic), run in process on the node's own engine.

The revisions live in ``versions/`` and ship with the package. Every process
that opens the database (:func:`dicom_node.db.make_engine`) brings it to the
newest revision it knows (:func:`upgrade`) inside one transaction that holds
the schema lock, so processes starting together do not race; a database
whose revision this code does not know (made by a newer node) is refused with
:class:`SchemaVersionError`. A database made before the node had migrations
(tables, no ``alembic_version``) is upgraded by the first revision, which
creates only what it lacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from dicom_node.errors import NodeError

logger = logging.getLogger(__name__)
# alembic announces its dialect and each step at INFO on every start; the node
# logs one line of its own when it upgrades (see upgrade()).
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

SCRIPT_LOCATION = Path(__file__).resolve().parent
SCHEMA_LOCK_KEY = 0x44434D4E  # "DCMN": PostgreSQL advisory lock held while migrating
VERSION_TABLE = "alembic_version"


class SchemaVersionError(NodeError):
    """The database's schema revision is unknown to this node (it was made by a newer one)."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands.

    Attributes
    ----------
    revision : str or None
        The stored revision; None when the database has none (empty, or made
        before migrations).
    head : str
        The newest revision this node knows.
    legacy : bool
        The database has the node's tables but no revision (made before
        migrations).
    known : bool
        `revision` is one of this node's revisions (or None).
    """

    revision: str | None
    head: str
    legacy: bool
    known: bool

    @property
    def current(self) -> bool:
        """The database is at `head`."""
        return self.revision == self.head

    def describe(self) -> str:
        """One line for ``dicom-node db current``."""
        if not self.known:
            return f"revision {self.revision}, newer than this dicom-node knows (head {self.head})"
        if self.revision is None:
            what = "made before migrations" if self.legacy else "empty"
            return f"no revision ({what}); head is {self.head}, run dicom-node db upgrade"
        if self.current:
            return f"revision {self.revision} (head)"
        return f"revision {self.revision}; head is {self.head}, run dicom-node db upgrade"


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this node knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "dicom_node/migrations/versions holds no revision"
    return head


def _state(connection: Connection) -> SchemaState:
    script = ScriptDirectory.from_config(_alembic_config())
    head = head_revision()
    revision = MigrationContext.configure(connection).get_current_revision()
    known = True
    if revision is not None:
        try:
            known = script.get_revision(revision) is not None
        except CommandError:
            known = False
    tables = set(inspect(connection).get_table_names())
    legacy = revision is None and "jobs" in tables
    return SchemaState(revision=revision, head=head, legacy=legacy, known=known)


def refuse_unknown(state: SchemaState, engine: Engine) -> None:
    """Raise :class:`SchemaVersionError` when `state` has a revision this node does not know."""
    if not state.known:
        url = engine.url.render_as_string(hide_password=True)
        raise SchemaVersionError(
            f"The database {url} has schema revision {state.revision!r}, which this dicom-node "
            f"does not know (its newest is {state.head!r}); it was upgraded by a newer version: "
            "run that version."
        )


def current(engine: Engine) -> SchemaState:
    """Read where the database of `engine` stands, changing nothing."""
    with engine.connect() as connection:
        return _state(connection)


def upgrade(engine: Engine) -> tuple[SchemaState, SchemaState]:
    """Bring the database of `engine` to the newest revision, under the schema lock.

    Returns
    -------
    tuple[SchemaState, SchemaState]
        The state before and after.

    Raises
    ------
    SchemaVersionError
        If the database has a revision this node does not know; nothing is
        changed then.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Processes starting together on one database would both run the DDL;
            # one would fail. (SQLite's BEGIN IMMEDIATE serializes them.)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        before = _state(connection)
        refuse_unknown(before, engine)
        if before.current:
            return before, before
        command.upgrade(_alembic_config(connection), "head")
        after = _state(connection)
    was = before.revision or ("no revision" if before.legacy else "empty")
    logger.info("database schema upgraded from %s to revision %s", was, after.revision)
    return before, after
