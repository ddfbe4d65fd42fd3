"""Reading recalls: which models the node knows, whether one is recalled, note status.

The write side (recording a recall, queueing its IOCM rejection notes) is
:mod:`dicom_node.recall`; this module only reads, for ``dicom-node model
recall``, ``model info``, ``enhance`` and ``serve`` (which refuse a recalled
model, :func:`refuse_recalled`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.config import Config
from dicom_node.db import DerivedInstance, Dispatch, Job, Recall
from dicom_node.errors import ConfigError
from dicom_node.runtime import Runtime

logger = logging.getLogger(__name__)

MIN_PREFIX = 8
"""Fewest hex digits of a SHA-256 prefix ``model recall`` accepts."""
_PREFIX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class KnownModel:
    """A model the node knows of, by SHA-256."""

    sha256: str
    name: str | None
    version: str | None
    where: str
    """Where it is known from: derived instances, installed, configured or bundled."""


def known_models(session: Session, config: Config) -> dict[str, KnownModel]:
    """Every model of derived instances, installed, configured or bundled, by SHA-256."""
    from dicom_node.inference import bundled_model_path
    from dicom_node.model_meta import file_sha256
    from dicom_node.model_store import list_installed

    known: dict[str, KnownModel] = {}
    for sha, name, version in session.execute(
        select(
            DerivedInstance.model_sha256, DerivedInstance.model_name, DerivedInstance.model_version
        ).distinct()
    ):
        known.setdefault(sha, KnownModel(sha, name, version, "derived instances"))
    for item in list_installed(config.storage.data_dir)[0]:
        if item.record is not None:
            rec = item.record
            known.setdefault(
                rec.sha256, KnownModel(rec.sha256, rec.model_name, rec.model_version, "installed")
            )
    for path, where in ((config.model.path, "configured"), (bundled_model_path(), "bundled")):
        if path is not None and Path(path).is_file():
            sha = file_sha256(Path(path))
            known.setdefault(sha, KnownModel(sha, None, None, where))
    return known


def match_model(prefix: str, known: dict[str, KnownModel]) -> KnownModel:
    """The one known model whose SHA-256 starts with `prefix`.

    Raises
    ------
    ConfigError
        If `prefix` is not 8 to 64 hex digits, or matches no model or several.
    """
    wanted = prefix.strip().lower()
    if not (MIN_PREFIX <= len(wanted) <= 64 and _PREFIX.match(wanted)):
        raise ConfigError(
            f"SHA256_PREFIX: {prefix!r} is not {MIN_PREFIX} to 64 hexadecimal digits."
        )
    matches = sorted(sha for sha in known if sha.startswith(wanted))
    if not matches:
        raise ConfigError(
            f"SHA256_PREFIX: {prefix!r} matches no model this node knows "
            "(derived instances, installed, configured or bundled)."
        )
    if len(matches) > 1:
        shown = ", ".join(m[:16] for m in matches)
        raise ConfigError(f"SHA256_PREFIX: {prefix!r} is ambiguous; it matches {shown}.")
    return known[matches[0]]


def find_recall(session: Session, sha256: str) -> Recall | None:
    """The recall of the model with this SHA-256, or None."""
    return session.scalar(select(Recall).where(Recall.model_sha256 == sha256))


def recall_for_model(config: Config, sha256: str) -> Recall | None:
    """The recall of a model, read from the node's database (for ``enhance`` and ``model info``).

    A SQLite database that does not exist yet has no recalls; it is not created.
    """
    from dicom_node.db import make_engine, make_session_factory

    if not config.storage.database_url and not (config.storage.data_dir / "node.sqlite3").exists():
        return None
    engine = make_engine(config.storage)
    try:
        with make_session_factory(engine)() as session:
            return find_recall(session, sha256)
    finally:
        engine.dispose()


def describe_recall(recall: Recall) -> str:
    """One line: when, by whom and why a model was recalled."""
    when = recall.recalled_at.strftime("%Y-%m-%d %H:%M:%S")
    return f'recalled {when} UTC by {recall.recalled_by}, reason "{recall.reason}"'


def refuse_recalled(recall: Recall | None, what: str) -> None:
    """Raise a one-line :class:`ConfigError` when the model is recalled.

    Raises
    ------
    ConfigError
        If `recall` is not None.
    """
    if recall is not None:
        raise ConfigError(
            f"model: the model {recall.model_sha256[:16]} was {describe_recall(recall)}; "
            f"{what} refuses it: install another model (dicom-node model install FILE)."
        )


def note_status(runtime: Runtime, recall_id: int) -> dict[str, dict[str, int]]:
    """Per destination, how many of the recall's notes are in each dispatch state."""
    with runtime.session() as session:
        rows = session.execute(
            select(Dispatch.destination, Dispatch.state, func.count())
            .join(Job, Job.id == Dispatch.job_id)
            .where(Job.recall_id == recall_id)
            .group_by(Dispatch.destination, Dispatch.state)
        ).all()
    status: dict[str, dict[str, int]] = defaultdict(dict)
    for destination, state, count in rows:
        status[destination][str(state)] = int(count)
    return dict(sorted(status.items()))
