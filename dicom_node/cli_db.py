"""``dicom-node db upgrade`` and ``dicom-node db current``: the schema revision.

``serve`` (and every command that opens the database) upgrades the schema by
itself; ``db upgrade`` does it alone, for a maintenance window before
starting several nodes, and ``db current`` only reports.
"""

from __future__ import annotations

import argparse

from dicom_node import migrations
from dicom_node.cli_common import EXIT_OK, CommandError, database_reason, load
from dicom_node.db import make_engine
from dicom_node.errors import NodeError


def cmd_db(args: argparse.Namespace) -> int:
    """``db upgrade`` (migrate to the newest revision) and ``db current`` (report it)."""
    config = load(args, installed_model=False)
    try:
        engine = make_engine(config.storage, migrate=False)
    except Exception as exc:  # sqlalchemy errors: bad URL, missing driver
        raise CommandError(f"Cannot open the database: {database_reason(exc)}") from exc
    url = engine.url.render_as_string(hide_password=True)
    try:
        if args.db_command == "current":
            state = migrations.current(engine)
            if not state.known:
                migrations.refuse_unknown(state, engine)
            print(f"Database {url}: {state.describe()}.")
            return EXIT_OK
        before, after = migrations.upgrade(engine)
        if before.revision == after.revision:
            print(f"Database {url} is at revision {after.revision} (head) already.")
        else:
            was = before.revision or ("no revision" if before.legacy else "empty")
            print(f"Upgraded database {url} from {was} to revision {after.revision} (head).")
        return EXIT_OK
    except NodeError:
        raise
    except Exception as exc:  # sqlalchemy errors: unreachable database, failed DDL
        verb = "read" if args.db_command == "current" else "upgrade"
        raise CommandError(f"Cannot {verb} the database: {database_reason(exc)}") from exc
    finally:
        engine.dispose()
