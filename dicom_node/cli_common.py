"""What every ``dicom-node`` command shares: exit codes, the command error, loading.

Exit codes: 0 success, 1 the operation failed (peer unreachable, a file could
not be processed), 2 invalid configuration or usage (also a database made by
a newer node). Errors are one line on stderr, starting with
``dicom-node: error:``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicom_node.config import Config, ModelSettings, load_config
from dicom_node.errors import NodeError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandError(NodeError):
    """A command could not do what was asked; exits 1 with the message."""


def load(
    args: argparse.Namespace, installed_model: bool = True, missing_ok: bool = False
) -> Config:
    """The configuration named by ``--config`` (or the default), validated.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments (``args.config``).
    installed_model : bool, optional
        Resolve the installed active model when ``[model] path`` is not set
        (:func:`dicom_node.model_store.resolve_installed_model`). False only
        for the commands that manage installed models, which must work while
        ``active.json`` is broken.
    missing_ok : bool, optional
        Use the built-in defaults, with the environment overrides, when no file
        was named and ``config/node.toml`` does not exist.

    Raises
    ------
    ConfigError
        If the configuration or the installed-model record is invalid.
    """
    config = load_config(Path(args.config) if args.config else None, missing_ok=missing_ok)
    if not installed_model:
        return config
    from dicom_node.model_store import resolve_installed_model  # loads onnxruntime: on demand

    return resolve_installed_model(config)


def with_model_file(settings: ModelSettings, model: str | None) -> ModelSettings:
    """`settings` with ``--model FILE`` when it was given."""
    if not model:
        return settings
    from dataclasses import replace

    return replace(settings, path=Path(model), path_source="command line")


def open_runtime(config: Config) -> Any:
    """The process's :class:`~dicom_node.runtime.Runtime` (engine, migrated schema, sessions).

    Raises
    ------
    CommandError
        If the database cannot be opened.
    dicom_node.migrations.SchemaVersionError
        If the database was upgraded by a newer node.
    """
    from dicom_node.runtime import Runtime

    try:
        return Runtime.create(config)
    except NodeError:
        raise
    except Exception as exc:  # sqlalchemy errors: unreachable database, bad URL
        raise CommandError(f"Cannot open the database: {database_reason(exc)}") from exc


def database_reason(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's SQL and links, on one line."""
    cause = getattr(exc, "orig", None) or exc
    return " ".join(str(cause).split())
