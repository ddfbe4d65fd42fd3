"""The node's configuration: one TOML file, validated once into frozen objects.

Every key is documented in ``config/node.example.toml``. A single value can be
overridden from the environment with ``DICOM_NODE_<SECTION>_<KEY>`` (for
example ``DICOM_NODE_NODE_PORT=11113``), which is how containers configure the
node. Validation is eager: :func:`load_config` either returns a complete,
valid :class:`Config` or raises :class:`~dicom_node.errors.ConfigError` with a
sentence naming the key and the offending value. When ``[model] path`` is
not set, :func:`load_config` resolves the model installed with ``dicom-node
model install`` (see :mod:`dicom_node.model_store`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError
from dicom_node.model_store import read_active
from dicom_node.strength import DEFAULT_STRENGTH, check_strength

CHEST_BODY_PARTS: tuple[str, ...] = ("CHEST", "")
DEFAULT_CONFIG_PATH = Path("config/node.toml")
ENV_PREFIX = "DICOM_NODE_"

ACTIONS = ("enhance", "forward", "ignore")

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


def validate_ae_title(value: object, key: str) -> str:
    """Return `value` as an AE title or raise a :class:`ConfigError`.

    Parameters
    ----------
    value : object
        The candidate AE title.
    key : str
        Dotted configuration key, used in the error message.

    Returns
    -------
    str
        The AE title with surrounding spaces removed.

    Raises
    ------
    ConfigError
        If `value` is not a string of 1 to 16 characters without backslash or
        control characters.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{key}: {value!r} is not an AE title: expected a string.")
    if len(value) > 16:
        raise ConfigError(
            f"{key}: {value!r} is not a valid AE title: it has {len(value)} characters, "
            "at most 16 are allowed."
        )
    if "\\" in value:
        raise ConfigError(f"{key}: {value!r} is not a valid AE title: it contains a backslash.")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ConfigError(
            f"{key}: {value!r} is not a valid AE title: it contains a control character."
        )
    if any(ord(ch) > 0x7E for ch in value):
        raise ConfigError(
            f"{key}: {value!r} is not a valid AE title: only ASCII characters are allowed."
        )
    if not value.strip():
        raise ConfigError(f"{key}: {value!r} is not a valid AE title: it is empty.")
    return value.strip()


@dataclass(frozen=True)
class NodeSettings:
    """The listening application entity."""

    ae_title: str = "CXR_ENHANCE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0


@dataclass(frozen=True)
class StorageSettings:
    """Where received and derived instances and the job database live."""

    data_dir: Path = Path("var")
    database_url: str = ""
    retention_days: int = 30
    sqlite_busy_timeout: float = 5.0

    @property
    def spool_dir(self) -> Path:
        """Directory holding received and derived DICOM files."""
        return self.data_dir / "spool"

    @property
    def effective_database_url(self) -> str:
        """`database_url`, or the SQLite database under `data_dir` when it is empty."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'node.sqlite3').resolve()}"


@dataclass(frozen=True)
class Destination:
    """A DICOM peer (typically the PACS) that receives what the node sends."""

    name: str
    ae_title: str
    host: str
    port: int
    max_batch: int = 50


@dataclass(frozen=True)
class JobSettings:
    """Retry policy, leases and polling of the job queue."""

    max_attempts: int = 10
    retry_base_delay: float = 5.0
    retry_max_delay: float = 300.0
    retry_jitter: float = 0.2
    lease_seconds: float = 120.0
    poll_interval: float = 2.0
    workers: int = 1


@dataclass(frozen=True)
class Rule:
    """A routing rule: which received instances get which action.

    Every ``match_*`` field that is set must match (logical AND); a list
    matches when any of its values matches. An empty string in
    `body_part_examined` matches an absent or empty BodyPartExamined.
    `strength` (``enhance`` rules only) overrides ``[model] strength`` for
    the instances this rule matches; None uses ``[model] strength``.

    Raises
    ------
    TypeError
        If `strength` is set and not a number.
    ValueError
        If `strength` is outside [0, 1], or set on a rule whose action is
        not ``enhance``.
    """

    name: str
    action: str
    destinations: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()
    sop_class_uid: tuple[str, ...] = ()
    body_part_examined: tuple[str, ...] = ()
    view_position: tuple[str, ...] = ()
    calling_aet: tuple[str, ...] = ()
    series_description: str = ""
    strength: float | None = None

    def __post_init__(self) -> None:
        if self.strength is None:
            return
        if self.action != "enhance":
            raise ValueError(
                f"strength: {self.strength!r} is set on rule {self.name!r}, whose action is "
                f"{self.action!r}; only an enhance rule has a strength."
            )
        object.__setattr__(self, "strength", check_strength(self.strength))

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
        body_part_examined=("CHEST", ""),
    ),
)


MODEL_PATH_SOURCES = ("config", "installed", "command line")
"""Where an explicit :attr:`ModelSettings.path` can come from."""


@dataclass(frozen=True)
class ModelSettings:
    """The ONNX generator and how it runs.

    `path` is None for the bundled model. `path_source` says where a set
    `path` came from: ``"config"`` (the file or an environment override),
    ``"installed"`` (``dicom-node model install``, resolved by
    :func:`load_config`) or ``"command line"`` (``--model``); it is ignored
    while `path` is None. :attr:`source` combines both. `strength` is the
    share of the generator's correction applied (see
    :mod:`dicom_node.strength`), unless the matching rule sets its own.
    `adapt_to_noise` scales it by the image's measured noise when the model
    carries a noise calibration (:mod:`dicom_node.noise`).

    Raises
    ------
    TypeError
        If `strength` is not a number.
    ValueError
        If `path_source` is not one of :data:`MODEL_PATH_SOURCES`, or
        `strength` is outside [0, 1].
    """

    path: Path | None = None
    provider: str = "auto"
    device_id: int = 0
    tile_size: int = 1024
    tile_overlap: int = 128
    max_whole_pixels: int = 2304 * 2304
    warmup: bool = True
    path_source: str = "config"
    strength: float = DEFAULT_STRENGTH
    adapt_to_noise: bool = True

    def __post_init__(self) -> None:
        if self.path_source not in MODEL_PATH_SOURCES:
            raise ValueError(
                f"path_source: {self.path_source!r} is not one of {', '.join(MODEL_PATH_SOURCES)}."
            )
        object.__setattr__(self, "strength", check_strength(self.strength))

    @property
    def source(self) -> str:
        """Where the model comes from: ``"bundled"`` when `path` is None, else `path_source`."""
        return "bundled" if self.path is None else self.path_source


LABEL_MODES = ("burned_in", "overlay", "none")
"""Values of ``[output] label`` (:class:`dicom_node.label.LabelMode`)."""


@dataclass(frozen=True)
class OutputSettings:
    """How derived series are labelled."""

    series_number_offset: int = 1000
    series_description: str = "{source} ENHANCED (AI)"
    label: str = "burned_in"
    """The visible AI label: ``burned_in``, ``overlay`` (an overlay plane) or ``none``."""


@dataclass(frozen=True)
class LoggingSettings:
    """Log level and format."""

    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration of one node process."""

    node: NodeSettings = field(default_factory=NodeSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    destinations: tuple[Destination, ...] = ()
    jobs: JobSettings = field(default_factory=JobSettings)
    rules: tuple[Rule, ...] = DEFAULT_RULES
    model: ModelSettings = field(default_factory=ModelSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: Path | None = None

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


# --------------------------------------------------------------------------- parsing helpers


def _int(value: object, key: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: {value!r} is not an integer.")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: {value!r} is too small; the minimum is {lo}.")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {value!r} is too large; the maximum is {hi}.")
    return value


def _port(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{key}: {value!r} is not a valid TCP port; expected 1 to 65535.")
    return value


def _float(value: object, key: str, lo: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: {value!r} is not a number.")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: {value!r} is too small; the minimum is {lo}.")
    return float(value)


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a boolean (true or false).")
    return value


def _str(value: object, key: str, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: {value!r} is not a string.")
    if not allow_empty and not value.strip():
        raise ConfigError(f"{key}: {value!r} is empty; a value is required.")
    return value


def _choice(value: object, key: str, choices: tuple[str, ...]) -> str:
    text = _str(value, key)
    if text not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}.")
    return text


def _str_list(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: {value!r} is not a list of strings.")
    return tuple(value)


def _host(value: object, key: str) -> str:
    text = _str(value, key, allow_empty=False)
    if any(ch.isspace() for ch in text):
        raise ConfigError(f"{key}: {value!r} is not a valid host name or address.")
    return text


def _strength(value: object, key: str) -> float:
    try:
        return check_strength(value, key)
    except TypeError as exc:
        raise ConfigError(f"{key}: {value!r} is not a number; expected 0 to 1.") from exc
    except ValueError as exc:
        raise ConfigError(f"{key}: {value!r} is out of range; expected 0 to 1.") from exc


def _check_keys(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(allowed))}."
        )


def _table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table, not {value!r}.")
    return value


Parser = Callable[[object, str], Any]


def _parse_section(
    raw: Mapping[str, Any], name: str, parsers: Mapping[str, Parser], cls: type[Any]
) -> Any:
    section = _table(raw, name)
    _check_keys(section, set(parsers), f"[{name}]")
    values = {key: parsers[key](section[key], f"{name}.{key}") for key in section}
    return cls(**values)


def _parse_node(raw: Mapping[str, Any]) -> NodeSettings:
    return _parse_section(
        raw,
        "node",
        {
            "ae_title": validate_ae_title,
            "host": _host,
            "port": _port,
            "allowed_calling_aets": lambda v, k: tuple(
                validate_ae_title(item, f"{k}[{i}]") for i, item in enumerate(_str_list(v, k))
            ),
            "max_associations": lambda v, k: _int(v, k, 1, 1000),
            "acse_timeout": lambda v, k: _float(v, k, 0.1),
            "dimse_timeout": lambda v, k: _float(v, k, 0.1),
            "network_timeout": lambda v, k: _float(v, k, 0.1),
        },
        NodeSettings,
    )


def _database_url(value: object, key: str) -> str:
    text = _str(value, key)
    if text and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", text):
        raise ConfigError(
            f"{key}: {value!r} is not a supported database URL; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB."
        )
    return text


def _parse_storage(raw: Mapping[str, Any], base: Path) -> StorageSettings:
    def data_dir(value: object, key: str) -> Path:
        path = Path(_str(value, key, allow_empty=False)).expanduser()
        return path if path.is_absolute() else (base / path)

    settings: StorageSettings = _parse_section(
        raw,
        "storage",
        {
            "data_dir": data_dir,
            "database_url": _database_url,
            "retention_days": lambda v, k: _int(v, k, 0, 36500),
            "sqlite_busy_timeout": lambda v, k: _float(v, k, 0.0),
        },
        StorageSettings,
    )
    if "data_dir" not in _table(raw, "storage"):
        settings = StorageSettings(
            data_dir=base / settings.data_dir,
            database_url=settings.database_url,
            retention_days=settings.retention_days,
            sqlite_busy_timeout=settings.sqlite_busy_timeout,
        )
    return settings


def _parse_destinations(raw: Mapping[str, Any]) -> tuple[Destination, ...]:
    items = raw.get("destinations", [])
    if not isinstance(items, list):
        raise ConfigError("destinations must be an array of tables ([[destinations]]).")
    result: list[Destination] = []
    for index, item in enumerate(items):
        where = f"destinations[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table, not {item!r}.")
        allowed = {"name", "ae_title", "host", "port", "max_batch"}
        _check_keys(item, allowed, where)
        for required in ("name", "ae_title", "host", "port"):
            if required not in item:
                raise ConfigError(f"{where}: the key {required!r} is required.")
        name = _str(item["name"], f"{where}.name", allow_empty=False)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ConfigError(
                f"{where}.name: {name!r} is not a valid name; use letters, digits, '.', '_' "
                "and '-'."
            )
        if any(d.name == name for d in result):
            raise ConfigError(f"{where}.name: {name!r} is used by another destination.")
        result.append(
            Destination(
                name=name,
                ae_title=validate_ae_title(item["ae_title"], f"{where}.ae_title"),
                host=_host(item["host"], f"{where}.host"),
                port=_port(item["port"], f"{where}.port"),
                max_batch=_int(item.get("max_batch", 50), f"{where}.max_batch", 1, 10000),
            )
        )
    return tuple(result)


_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _uid_list(value: object, key: str) -> tuple[str, ...]:
    uids = _str_list(value, key)
    for uid in uids:
        if len(uid) > 64 or not _UID_RE.match(uid):
            raise ConfigError(f"{key}: {uid!r} is not a valid DICOM UID.")
    return uids


def _upper_list(value: object, key: str) -> tuple[str, ...]:
    return tuple(v.strip().upper() for v in _str_list(value, key))


def _regex(value: object, key: str) -> str:
    text = _str(value, key)
    try:
        re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{key}: {value!r} is not a valid regular expression: {exc}.") from exc
    return text


def _parse_rules(raw: Mapping[str, Any], destinations: tuple[Destination, ...]) -> tuple[Rule, ...]:
    if "rules" not in raw:
        return DEFAULT_RULES
    items = raw["rules"]
    if not isinstance(items, list):
        raise ConfigError("rules must be an array of tables ([[rules]]).")
    parsers: dict[str, Parser] = {
        "name": lambda v, k: _str(v, k, allow_empty=False),
        "action": lambda v, k: _choice(v, k, ACTIONS),
        "destinations": _str_list,
        "modality": _upper_list,
        "sop_class_uid": _uid_list,
        "body_part_examined": _upper_list,
        "view_position": _upper_list,
        "calling_aet": lambda v, k: tuple(
            validate_ae_title(item, f"{k}[{i}]") for i, item in enumerate(_str_list(v, k))
        ),
        "series_description": _regex,
        "strength": _strength,
    }
    rules: list[Rule] = []
    names = {d.name for d in destinations}
    for index, item in enumerate(items):
        where = f"rules[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table, not {item!r}.")
        _check_keys(item, set(parsers), where)
        for required in ("name", "action"):
            if required not in item:
                raise ConfigError(f"{where}: the key {required!r} is required.")
        values = {key: parsers[key](item[key], f"{where}.{key}") for key in item}
        if "strength" in values and values["action"] != "enhance":
            raise ConfigError(
                f"{where}.strength: {item['strength']!r} is not allowed on a "
                f"{values['action']!r} rule; only an enhance rule has a strength."
            )
        rule = Rule(**values)
        for dest in rule.destinations:
            if dest not in names:
                raise ConfigError(
                    f"{where}.destinations: {dest!r} is not a configured destination."
                )
        rules.append(rule)
    return tuple(rules)


def _parse_model(raw: Mapping[str, Any], base: Path) -> ModelSettings:
    def model_path(value: object, key: str) -> Path | None:
        text = _str(value, key)
        if not text:
            return None
        path = Path(text).expanduser()
        return path if path.is_absolute() else base / path

    settings: ModelSettings = _parse_section(
        raw,
        "model",
        {
            "path": model_path,
            "provider": lambda v, k: _choice(v, k, ("auto", "cpu", "cuda")),
            "device_id": lambda v, k: _int(v, k, 0, 63),
            "tile_size": lambda v, k: _int(v, k, 256, 8192),
            "tile_overlap": lambda v, k: _int(v, k, 0, 2048),
            "max_whole_pixels": lambda v, k: _int(v, k, 256 * 256),
            "warmup": _bool,
            "strength": _strength,
            "adapt_to_noise": _bool,
        },
        ModelSettings,
    )
    if settings.tile_size % 256:
        raise ConfigError(
            f"model.tile_size: {settings.tile_size} is not a multiple of 256, which the "
            "generator needs."
        )
    if settings.tile_overlap * 2 >= settings.tile_size:
        raise ConfigError(
            f"model.tile_overlap: {settings.tile_overlap} must be less than half of "
            f"model.tile_size ({settings.tile_size})."
        )
    return settings


def _parse_output(raw: Mapping[str, Any]) -> OutputSettings:
    def description(value: object, key: str) -> str:
        text = _str(value, key, allow_empty=False)
        try:
            rendered = text.format(source="CHEST")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"{key}: {value!r} is not a valid template; the only field is {{source}}."
            ) from exc
        if len(rendered) > 64:
            raise ConfigError(f"{key}: {value!r} renders longer than 64 characters.")
        return text

    return _parse_section(
        raw,
        "output",
        {
            "series_number_offset": lambda v, k: _int(v, k, 1, 2**31 - 1),
            "series_description": description,
            "label": lambda v, k: _choice(v, k, LABEL_MODES),
        },
        OutputSettings,
    )


def _parse_logging(raw: Mapping[str, Any]) -> LoggingSettings:
    return _parse_section(
        raw,
        "logging",
        {
            "level": lambda v, k: _choice(
                v.upper() if isinstance(v, str) else v, k, ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            "format": lambda v, k: _choice(v, k, ("text", "json")),
        },
        LoggingSettings,
    )


def _parse_jobs(raw: Mapping[str, Any]) -> JobSettings:
    settings: JobSettings = _parse_section(
        raw,
        "jobs",
        {
            "max_attempts": lambda v, k: _int(v, k, 1, 1000),
            "retry_base_delay": lambda v, k: _float(v, k, 0.0),
            "retry_max_delay": lambda v, k: _float(v, k, 0.0),
            "retry_jitter": lambda v, k: _float(v, k, 0.0),
            "lease_seconds": lambda v, k: _float(v, k, 1.0),
            "poll_interval": lambda v, k: _float(v, k, 0.05),
            "workers": lambda v, k: _int(v, k, 1, 64),
        },
        JobSettings,
    )
    if settings.retry_jitter > 1:
        raise ConfigError(f"jobs.retry_jitter: {settings.retry_jitter} must be between 0 and 1.")
    if settings.retry_max_delay < settings.retry_base_delay:
        raise ConfigError(
            f"jobs.retry_max_delay: {settings.retry_max_delay} is smaller than "
            f"jobs.retry_base_delay ({settings.retry_base_delay})."
        )
    return settings


# --------------------------------------------------------------------------- environment

_SECTIONS = ("node", "storage", "jobs", "model", "output", "logging")
_LIST_KEYS = {("node", "allowed_calling_aets")}
_STRING_KEYS = {
    ("node", "ae_title"),
    ("node", "host"),
    ("storage", "data_dir"),
    ("storage", "database_url"),
    ("model", "path"),
    ("model", "provider"),
    ("output", "series_description"),
    ("logging", "level"),
    ("logging", "format"),
}


def _env_value(text: str, list_key: bool, string_key: bool) -> object:
    if string_key:
        # Taken as written: an AE title "1234" or a host "true" stays a string.
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if list_key:
            return [part.strip() for part in text.split(",") if part.strip()]
        return text


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return `raw` with ``DICOM_NODE_<SECTION>_<KEY>`` variables applied.

    Values are read as TOML literals when they parse as one (``11113``,
    ``true``, ``["A", "B"]``), otherwise as plain strings; a list key also
    accepts a comma-separated string, and a string key (AE title, host,
    paths, URL) always takes the text as written.

    Raises
    ------
    ConfigError
        If a variable names an unknown section.
    """
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == "DICOM_NODE_CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(
                f"{name}: unknown setting; expected DICOM_NODE_<SECTION>_<KEY> with SECTION one "
                f"of {', '.join(s.upper() for s in _SECTIONS)}."
            )
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table.")
        table[key] = _env_value(text, (section, key) in _LIST_KEYS, (section, key) in _STRING_KEYS)
    return merged


# --------------------------------------------------------------------------- entry points


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
    allowed = {"node", "storage", "destinations", "jobs", "rules", "model", "output", "logging"}
    _check_keys(raw, allowed, "configuration")
    node = _parse_node(raw)
    destinations = _parse_destinations(raw)
    return Config(
        node=node,
        storage=_parse_storage(raw, base_dir),
        destinations=destinations,
        jobs=_parse_jobs(raw),
        rules=_parse_rules(raw, destinations),
        model=_parse_model(raw, base_dir),
        output=_parse_output(raw),
        logging=_parse_logging(raw),
        source=source,
    )


def resolve_installed_model(config: Config) -> Config:
    """Return `config` with the installed active model when ``[model] path`` is not set.

    The model is resolved in this order: ``[model] path`` (file or
    environment) > the model installed by ``dicom-node model install``
    (``<data_dir>/models/active.json``) > the bundled model (path None).

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


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    installed_model: bool = True,
) -> Config:
    """Read, override from the environment and validate the configuration file.

    Parameters
    ----------
    path : pathlib.Path, optional
        The TOML file; default ``$DICOM_NODE_CONFIG`` or ``config/node.toml``.
    environ : Mapping[str, str], optional
        Environment used for overrides; default :data:`os.environ`.
    installed_model : bool, optional
        Resolve the installed active model (:func:`resolve_installed_model`)
        when ``[model] path`` is not set. Default true; false only for the
        commands that manage installed models, which must work while
        ``active.json`` is broken.

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
        the installed-model record is broken.
    """
    env = os.environ if environ is None else environ
    if path is None:
        path = Path(env.get("DICOM_NODE_CONFIG", str(DEFAULT_CONFIG_PATH)))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"The configuration file {str(path)!r} does not exist.") from exc
    except OSError as exc:
        raise ConfigError(f"The configuration file {str(path)!r} cannot be read: {exc}.") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"The configuration file {str(path)!r} is not valid TOML: {exc}."
        ) from exc
    parent = path.resolve().parent
    base = parent.parent if parent.name == "config" else parent
    config = parse_config(apply_env_overrides(raw, env), base, source=path)
    return resolve_installed_model(config) if installed_model else config
