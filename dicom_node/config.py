"""The node's configuration: one TOML file, validated once into frozen objects.

Every key is documented in ``config/node.example.toml``; one value can be
overridden with ``DICOM_NODE_<SECTION>_<KEY>`` (``DICOM_NODE_NODE_PORT=11113``),
derived from the fields (:mod:`dicom_node.config_env`). :func:`load_config`
returns a complete, valid :class:`Config` or raises :class:`ConfigError` with
one sentence naming the key and the offending value.

The settings are frozen, hashable pydantic v2 dataclasses. pydantic was chosen
because it is mature, declares constraints on the fields, runs cross-field rules
as validators and reports where an error is (the location becomes the key in the
message); as dataclasses they keep :func:`dataclasses.replace`, which validates
again. A setting built in code (``ModelSettings(tile_size=1000)``) is validated
like one read from the file and raises a ``SettingTypeError`` (a TypeError) or a
``SettingValueError`` (a ValueError), see :mod:`dicom_node.config_errors`.

This module imports nothing of the project but its ``config_*`` siblings, so
parsing loads neither numpy nor pydicom. The installed model is resolved by
:func:`dicom_node.model_store.resolve_installed_model`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError, model_validator

from dicom_node.config_env import apply_env_overrides as _apply_env
from dicom_node.config_errors import ConfigError, field_hints, setting_error
from dicom_node.config_sections import (
    INTERNAL_FIELDS,
    MODEL_PATH_SOURCES,
    Destination,
    JobSettings,
    LoggingSettings,
    ModelSettings,
    NodeSettings,
    OutputSettings,
    StorageSettings,
    settings,
)
from dicom_node.config_types import (
    DEFAULT_STRENGTH,
    AETitles,
    Bool,
    NonEmpty,
    OptionalStrength,
    Regex,
    Strings,
    Uids,
    Upper,
    bad_value,
    check_strength,
    validate_ae_title,
)

__all__ = [
    "DEFAULT_STRENGTH",
    "MODEL_PATH_SOURCES",
    "ConfigError",
    "Destination",
    "JobSettings",
    "LoggingSettings",
    "ModelSettings",
    "NodeSettings",
    "OutputSettings",
    "StorageSettings",
    "check_strength",
    "validate_ae_title",
]

DEFAULT_CONFIG_PATH = Path("config/node.toml")
ENV_PREFIX = "DICOM_NODE_"

ACTIONS = ("enhance", "forward", "ignore")
CHEST_BODY_PARTS: tuple[str, ...] = ("CHEST", "")

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


@settings
class Rule:
    """A routing rule: which received instances get which action.

    Every ``match_*`` field that is set must match (logical AND); a list
    matches when any of its values matches. An empty string in
    `body_part_examined` matches an absent or empty BodyPartExamined.
    `strength` (``enhance`` rules only) overrides ``[model] strength`` for
    the instances this rule matches; None uses ``[model] strength``.
    `send` false makes an ``enhance`` rule a shadow rule: its derived
    objects are made, kept and audited like any other but sent to no
    destination (to validate a model on the site's own traffic).

    Raises
    ------
    TypeError
        If a value has the wrong type (`strength` not a number, say).
    ValueError
        If `strength` is outside [0, 1], or `strength` or ``send = false``
        is set on a rule whose action is not ``enhance``, or another value
        is invalid.
    """

    name: NonEmpty
    action: Literal["enhance", "forward", "ignore"]
    destinations: Strings = ()
    modality: Upper = ()
    sop_class_uid: Uids = ()
    body_part_examined: Upper = ()
    view_position: Upper = ()
    calling_aet: AETitles = ()
    series_description: Regex = ""
    strength: OptionalStrength = None
    send: Bool = True

    @model_validator(mode="after")
    def _enhance_only_keys(self) -> Rule:
        if self.strength is not None and self.action != "enhance":
            raise bad_value(
                f"is not allowed on a {self.action!r} rule; only an enhance rule has a strength.",
                field="strength",
                value=self.strength,
            )
        if not self.send and self.action != "enhance":
            why = {
                "forward": "forwarding without sending does nothing",
                "ignore": "an ignored instance is never sent anyway",
            }[self.action]
            raise bad_value(
                f"is not allowed with action {self.action!r} ({why}); only an enhance rule "
                "can keep its outputs unsent.",
                field="send",
                value=self.send,
            )
        return self

    @property
    def series_description_pattern(self) -> re.Pattern[str] | None:
        """The compiled `series_description` regular expression, if any."""
        return re.compile(self.series_description) if self.series_description else None


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="chest-xray",
        action="enhance",
        modality=("CR", "DX"),
        sop_class_uid=(CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING),
        body_part_examined=CHEST_BODY_PARTS,
    ),
)


@settings
class Config:
    """The whole, validated configuration of one node process.

    Raises
    ------
    ValueError
        If two destinations share a name or a rule names a destination that
        is not configured.
    """

    node: NodeSettings = field(default_factory=NodeSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    destinations: tuple[Destination, ...] = ()
    jobs: JobSettings = field(default_factory=JobSettings)
    rules: tuple[Rule, ...] = DEFAULT_RULES
    model: ModelSettings = field(default_factory=ModelSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: Path | None = None

    @model_validator(mode="after")
    def _references(self) -> Config:
        names: set[str] = set()
        for index, dest in enumerate(self.destinations):
            if dest.name in names:
                raise bad_value(
                    "is used by another destination.",
                    field=f"destinations[{index}].name",
                    value=dest.name,
                )
            names.add(dest.name)
        for index, rule in enumerate(self.rules):
            for dest_name in rule.destinations:
                if dest_name not in names:
                    raise bad_value(
                        "is not a configured destination.",
                        field=f"rules[{index}].destinations",
                        value=dest_name,
                    )
        return self

    def destination(self, name: str) -> Destination:
        """Return the destination called `name`.

        Raises
        ------
        ConfigError
            If no destination has that name.
        """
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none"
        raise ConfigError(f"There is no destination named {name!r} (configured: {known}).")


_CONFIG_ADAPTER: TypeAdapter[Config] = TypeAdapter(Config)


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return `raw` with ``DICOM_NODE_<SECTION>_<KEY>`` variables applied.

    See :func:`dicom_node.config_env.apply_env_overrides`; the sections and
    the way each value is read come from the fields of :class:`Config`.

    Raises
    ------
    ConfigError
        If a variable names an unknown section.
    """
    return _apply_env(raw, environ, Config, ENV_PREFIX, INTERNAL_FIELDS)


def parse_config(raw: Mapping[str, Any], base_dir: Path, source: Path | None = None) -> Config:
    """Validate a configuration mapping (already TOML-decoded) into a :class:`Config`.

    Parameters
    ----------
    raw : Mapping[str, Any]
        The decoded TOML document.
    base_dir : pathlib.Path
        Directory against which relative paths (data_dir, model path) resolve.
    source : pathlib.Path, optional
        The file the mapping came from, kept for messages.

    Raises
    ------
    ConfigError
        If any value is invalid.
    """
    _refuse_internal(raw)
    document = {"storage": {}, **raw}  # validated, so a default data_dir resolves too
    try:
        return _CONFIG_ADAPTER.validate_python(
            {**document, "source": source}, context={"base_dir": base_dir}
        )
    except ValidationError as exc:
        raise setting_error(exc, Config, INTERNAL_FIELDS) from None


def _refuse_internal(raw: Mapping[str, Any]) -> None:
    """Reject the fields the node sets itself when a file or variable sets them."""
    model = raw.get("model")
    for where, table, cls in (("configuration", raw, Config), ("[model]", model, ModelSettings)):
        for key in sorted(INTERNAL_FIELDS & set(table if isinstance(table, dict) else ())):
            allowed = ", ".join(sorted(set(field_hints(cls)) - INTERNAL_FIELDS))
            raise ConfigError(f"{where}: unknown key {key!r}; allowed keys are {allowed}.")


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    missing_ok: bool = False,
) -> Config:
    """Read, override from the environment and validate the configuration file.

    Parameters
    ----------
    path : pathlib.Path, optional
        The TOML file; default ``$DICOM_NODE_CONFIG`` or ``config/node.toml``.
    environ : Mapping[str, str], optional
        Environment used for overrides; default :data:`os.environ`.
    missing_ok : bool, optional
        When no file was named (`path` None, no ``DICOM_NODE_CONFIG``) and
        ``config/node.toml`` does not exist, use the built-in defaults with
        the environment overrides applied, relative to the current directory
        (``dicom-node enhance`` and ``model info`` work without a file).

    Returns
    -------
    Config
        The validated configuration. Relative paths in the file resolve
        against the directory that holds the ``config/`` folder (the file's
        grandparent when it lives in a folder named ``config``), otherwise
        against the file's own folder.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid TOML, holds an invalid value, or
        ``[model] path`` names a file that does not exist.
    """
    env = os.environ if environ is None else environ
    named = path is not None or bool(env.get("DICOM_NODE_CONFIG"))
    if path is None:
        path = Path(env.get("DICOM_NODE_CONFIG") or DEFAULT_CONFIG_PATH)
    if missing_ok and not named and not path.exists():
        config = parse_config(apply_env_overrides({}, env), Path.cwd())
    else:
        config = parse_config(apply_env_overrides(_read_toml(path), env), _base(path), path)
    model_path = config.model.path
    if model_path is not None and not model_path.is_file():
        raise ConfigError(f"model.path: {str(model_path)!r} does not exist or is not a file.")
    return config


def _base(path: Path) -> Path:
    parent = path.resolve().parent
    return parent.parent if parent.name == "config" else parent


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"The configuration file {str(path)!r} does not exist.") from exc
    except OSError as exc:
        raise ConfigError(f"The configuration file {str(path)!r} cannot be read: {exc}.") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"The configuration file {str(path)!r} is not valid TOML: {exc}."
        ) from exc
