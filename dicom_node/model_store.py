"""Installed models: ``dicom-node model install`` and the record of the active one.

An admin deploys a new generator with one command instead of editing the
configuration. The model is validated by the node's own loader, exactly as
``serve`` loads it, then copied under ``<data_dir>/models``::

    models/
      <name>-<version>-<sha256[:16]>.onnx   an installed model, never overwritten
      <name>-<version>-<sha256[:16]>.json   its install record (for ``model list``)
      active.json                           the record of the active model

Every file is written atomically (:func:`dicom_node.spool.write_atomic`), so a
crash leaves the previous state or the new one, never a half-written file.
Older models are kept: installing one of them again makes it active again.

:func:`resolve_installed_model` uses :func:`read_active` to resolve the
model when the configuration names none; a record that is unreadable or
names a missing file is a :class:`~dicom_node.errors.ConfigError`, never a
silent fallback to the bundled model. The resolution order is: ``[model] path``
(or ``--model``) > the installed active model > the bundled model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dicom_node.config import Config, ModelSettings
from dicom_node.errors import ConfigError, ModelError
from dicom_node.inference import Enhancer
from dicom_node.model_meta import file_sha256
from dicom_node.spool import write_atomic

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
ACTIVE_FILE = "active.json"
RECORD_KEYS = ("file", "sha256", "model_name", "model_version", "installed_at", "source")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.onnx$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def models_dir(data_dir: Path) -> Path:
    """Directory of the installed models under the node's `data_dir`."""
    return data_dir / MODELS_DIR


def active_record_path(data_dir: Path) -> Path:
    """Path of ``active.json``, the record of the active installed model."""
    return models_dir(data_dir) / ACTIVE_FILE


def _safe_part(text: str, fallback: str) -> str:
    cleaned = _UNSAFE.sub("_", text).lstrip(".")
    return cleaned or fallback


def installed_file_name(model_name: str, model_version: str, sha256: str) -> str:
    """File name of an installed model: ``<name>-<version>-<first 16 hex of sha256>.onnx``.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` in the name
    and version become ``_``; leading dots are dropped so the file is never
    hidden.

    Raises
    ------
    ValueError
        If `sha256` is not 64 lowercase hexadecimal digits.
    """
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256: {sha256!r} is not 64 lowercase hexadecimal digits.")
    name = _safe_part(model_name, "model")
    version = _safe_part(model_version, "0")
    return f"{name}-{version}-{sha256[:16]}.onnx"


@dataclass(frozen=True)
class InstalledModel:
    """The record of one installed model (``active.json`` and the per-model records).

    Attributes
    ----------
    file : str
        File name inside ``<data_dir>/models`` (not a path).
    sha256 : str
        SHA-256 of the file, 64 hex digits.
    model_name, model_version : str
        From the model's metadata.
    installed_at : str
        ISO 8601 UTC time of the installation (in ``active.json``: of the
        activation).
    source : str
        The path the model was installed from.
    """

    file: str
    sha256: str
    model_name: str
    model_version: str
    installed_at: str
    source: str

    @property
    def short_hash(self) -> str:
        """First 16 hex digits of the SHA-256."""
        return self.sha256[:16]

    def to_json(self) -> bytes:
        """The record as UTF-8 JSON, one key per line."""
        return (json.dumps(asdict(self), indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, text: str) -> InstalledModel:
        """Parse and validate a record.

        Raises
        ------
        ValueError
            If `text` is not a JSON object with every key of :data:`RECORD_KEYS`
            as a string, `file` is not a plain ``.onnx`` file name or `sha256`
            is not 64 hex digits.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"it is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        missing = [key for key in RECORD_KEYS if not isinstance(data.get(key), str)]
        if missing:
            raise ValueError(f"it lacks the text value(s) {', '.join(missing)}")
        record = cls(**{key: data[key] for key in RECORD_KEYS})
        if not _FILE_NAME.match(record.file):
            raise ValueError(f"file {record.file!r} is not the name of an .onnx file")
        if not _SHA256.match(record.sha256):
            raise ValueError(f"sha256 {record.sha256!r} is not 64 hex digits")
        return record


def read_active(data_dir: Path) -> tuple[InstalledModel, Path] | None:
    """Return the active installed model and its path, or None when none is installed.

    Parameters
    ----------
    data_dir : pathlib.Path
        The node's ``[storage] data_dir``.

    Returns
    -------
    tuple[InstalledModel, pathlib.Path] or None
        The record of ``active.json`` and the model file it names; None when
        there is no ``active.json``.

    Raises
    ------
    ConfigError
        If ``active.json`` cannot be read, is not a valid record, or names a
        file that does not exist.
    """
    record_path = active_record_path(data_dir)
    fix = "install a model with dicom-node model install FILE, or remove it"
    try:
        text = record_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(
            f"The installed-model record {record_path} cannot be read ({reason}); {fix}."
        ) from exc
    try:
        record = InstalledModel.from_json(text)
    except ValueError as exc:
        raise ConfigError(
            f"The installed-model record {record_path} is invalid: {exc}; {fix}."
        ) from exc
    model_path = models_dir(data_dir) / record.file
    if not model_path.is_file():
        raise ConfigError(
            f"The installed-model record {record_path} names {record.file}, which does not "
            f"exist in {models_dir(data_dir)}; {fix}."
        )
    return record, model_path


def resolve_installed_model(config: Config) -> Config:
    """`config` with the installed active model when ``[model] path`` is not set.

    Order: ``[model] path`` (file or environment) > ``<data_dir>/models/active.json``
    (``dicom-node model install``) > the bundled model (path None).

    Raises
    ------
    ConfigError
        If ``active.json`` exists but is unreadable, invalid or names a
        missing file; the node never falls back to the bundled model then.
    """
    if config.model.path is not None:
        return config
    active = read_active(config.storage.data_dir)
    if active is None:
        return config
    _record, model_path = active
    return replace(config, model=replace(config.model, path=model_path, path_source="installed"))


def _read_active_leniently(data_dir: Path) -> InstalledModel | None:
    """The active record, or None when it is absent or broken (install replaces it)."""
    try:
        active = read_active(data_dir)
    except ConfigError as exc:
        logger.warning("replacing a broken installed-model record: %s", exc)
        return None
    return active[0] if active else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install_model` did.

    Attributes
    ----------
    record : InstalledModel
        The model's record, as written to ``active.json``.
    path : pathlib.Path
        The installed file.
    copied : bool
        False when the same file was installed already.
    activated : bool
        False when it was the active model already (nothing was written).
    """

    record: InstalledModel
    path: Path
    copied: bool
    activated: bool


def install_model(source: Path, data_dir: Path, now: dt.datetime | None = None) -> InstallResult:
    """Validate `source` as the node would load it, copy it and make it the active model.

    The model is loaded on the CPU with a warm-up inference
    (:class:`~dicom_node.inference.Enhancer`), which checks the required
    metadata, the pixel convention and the input/output signature. It is then
    written to ``<data_dir>/models/<name>-<version>-<hash>.onnx`` with its
    record, and ``active.json`` is rewritten. Installing the same file again
    changes nothing; an existing file of that name with other content is never
    overwritten.

    Parameters
    ----------
    source : pathlib.Path
        The ONNX file to install.
    data_dir : pathlib.Path
        The node's ``[storage] data_dir``.
    now : datetime.datetime, optional
        Installation time (aware); default: the current UTC time.

    Returns
    -------
    InstallResult
        The record, the installed path and what was written.

    Raises
    ------
    ModelError
        If the node's loader refuses the model, the file cannot be read or
        changed while it was validated, or an installed file of the same name
        has other content. Nothing is written then.
    StorageError
        If a file cannot be written under `data_dir`.
    """
    try:
        enhancer = Enhancer(ModelSettings(path=source, provider="cpu", warmup=True))
    except Exception as exc:  # onnxruntime raises its own classes from the warm-up run
        raise ModelError(f"{source} was not installed: {_one_line(str(exc))}") from exc
    metadata = enhancer.metadata
    del enhancer
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"{source} was not installed: it cannot be read ({exc.strerror or exc})."
        ) from exc
    sha256 = _sha256(data)
    if sha256 != metadata.sha256:
        raise ModelError(f"{source} was not installed: it changed while it was validated.")

    directory = models_dir(data_dir)
    target = directory / installed_file_name(metadata.name, metadata.version, sha256)
    copied = False
    if target.exists():
        try:
            existing = file_sha256(target)
        except OSError as exc:
            raise ModelError(
                f"{source} was not installed: {target} exists and cannot be read "
                f"({exc.strerror or exc})."
            ) from exc
        if existing != sha256:
            raise ModelError(
                f"{source} was not installed: {target} exists with other content and is "
                "never overwritten; move it away and install again."
            )
    else:
        write_atomic(target, data)
        copied = True

    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
    record = InstalledModel(
        file=target.name,
        sha256=sha256,
        model_name=metadata.name,
        model_version=metadata.version,
        installed_at=stamp,
        source=str(source.resolve()),
    )
    record_file = target.with_suffix(".json")
    if not record_file.exists():
        write_atomic(record_file, record.to_json())

    active = _read_active_leniently(data_dir)
    if active is not None and active.file == record.file and active.sha256 == sha256:
        logger.info("model %s is installed and active already", target.name)
        return InstallResult(record=active, path=target, copied=copied, activated=False)
    write_atomic(active_record_path(data_dir), record.to_json())
    logger.info("installed model %s (sha256 %s) as the active model", target.name, sha256)
    return InstallResult(record=record, path=target, copied=copied, activated=True)


@dataclass(frozen=True)
class ListedModel:
    """One ``.onnx`` file under ``<data_dir>/models``, for ``dicom-node model list``.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    record : InstalledModel or None
        Its install record; None for a file copied there by hand.
    active : bool
        Whether ``active.json`` names it.
    """

    path: Path
    record: InstalledModel | None
    active: bool


def list_installed(data_dir: Path) -> tuple[list[ListedModel], str | None]:
    """List the installed models, oldest installation first.

    Parameters
    ----------
    data_dir : pathlib.Path
        The node's ``[storage] data_dir``.

    Returns
    -------
    tuple[list[ListedModel], str or None]
        The models, and the message of a broken ``active.json`` (None when it
        is valid or absent).
    """
    directory = models_dir(data_dir)
    problem: str | None = None
    active_file: str | None = None
    try:
        active = read_active(data_dir)
    except ConfigError as exc:
        problem = str(exc)
    else:
        active_file = active[0].file if active else None
    items: list[ListedModel] = []
    if directory.is_dir():
        for path in sorted(directory.glob("*.onnx")):
            if path.name.startswith("."):
                continue
            record: InstalledModel | None = None
            try:
                record = InstalledModel.from_json(
                    path.with_suffix(".json").read_text(encoding="utf-8")
                )
            except (OSError, UnicodeDecodeError, ValueError):
                record = None
            items.append(ListedModel(path=path, record=record, active=path.name == active_file))
    items.sort(key=lambda item: (item.record.installed_at if item.record else "", item.path.name))
    return items, problem
