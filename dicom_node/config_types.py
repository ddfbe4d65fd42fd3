"""Field types of the configuration: each value's checks, in one place.

Every type is an ``Annotated`` pydantic type used by the settings in
:mod:`dicom_node.config`. A check that fails raises a
:class:`pydantic_core.PydanticCustomError` whose ``reason`` completes the
sentence ``KEY: VALUE …`` (see :func:`dicom_node.config_errors.setting_error`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Strict, ValidationInfo
from pydantic_core import PydanticCustomError

from dicom_node.config_errors import ConfigError

DEFAULT_STRENGTH = 1.0
"""Strength used when neither ``[model] strength`` nor a rule sets one."""


def bad_type(reason: str, **context: Any) -> PydanticCustomError:
    """A wrong-type error whose message is `reason` (``field``/``value`` name another key)."""
    return PydanticCustomError("config_type", "{reason}", {"reason": reason, **context})


def bad_value(reason: str, **context: Any) -> PydanticCustomError:
    """A bad-value error whose message is `reason` (``field``/``value`` name another key)."""
    return PydanticCustomError("config_value", "{reason}", {"reason": reason, **context})


def check_strength(value: object, key: str = "strength") -> float:
    """Validate a strength and return it as a float.

    Raises
    ------
    TypeError
        If `value` is not a number.
    ValueError
        If `value` is not in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number from 0 to 1; got {value!r}.")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{key} must be from 0 to 1; got {value!r}.")
    return number


def _strength(value: object) -> float:
    try:
        return check_strength(value)
    except TypeError:
        raise bad_type("is not a number; expected 0 to 1.") from None
    except ValueError:
        raise bad_value("is out of range; expected 0 to 1.") from None


def _optional_strength(value: object) -> float | None:
    return None if value is None else _strength(value)


def _ae_title_problem(value: object) -> PydanticCustomError | None:
    if not isinstance(value, str):
        return bad_type("is not an AE title: expected a string.")
    reason = ""
    if len(value) > 16:
        reason = f"it has {len(value)} characters, at most 16 are allowed."
    elif "\\" in value:
        reason = "it contains a backslash."
    elif any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        reason = "it contains a control character."
    elif any(ord(ch) > 0x7E for ch in value):
        reason = "only ASCII characters are allowed."
    elif not value.strip():
        reason = "it is empty."
    return bad_value(f"is not a valid AE title: {reason}") if reason else None


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
    problem = _ae_title_problem(value)
    if problem is not None:
        raise ConfigError(f"{key}: {value!r} {problem.context['reason']}")  # type: ignore[index]
    return str(value).strip()


def _ae_title(value: object) -> str:
    problem = _ae_title_problem(value)
    if problem is not None:
        raise problem
    return str(value).strip()


def _listify(value: object) -> object:
    """A single string stands for a list of one (``modality = "CR"``)."""
    return [value] if isinstance(value, str) else value


def _port(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise bad_value("is not a valid TCP port; expected 1 to 65535.")
    return value


def _host(value: str) -> str:
    if not value.strip():
        raise bad_value("is empty; a value is required.")
    if any(ch.isspace() for ch in value):
        raise bad_value("is not a valid host name or address.")
    return value


def _database_url(value: str) -> str:
    if value and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
        raise bad_value(
            "is not a supported database URL; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB."
        )
    return value


_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _uids(values: tuple[str, ...]) -> tuple[str, ...]:
    for uid in values:
        if len(uid) > 64 or not _UID_RE.match(uid):
            raise bad_value("is not a valid DICOM UID.", value=uid)
    return values


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise bad_value(f"is not a valid regular expression: {exc}.") from None
    return value


def _name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise bad_value("is not a valid name; use letters, digits, '.', '_' and '-'.")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise bad_value("is empty; a value is required.")
    return value


def _template(value: str) -> str:
    _non_empty(value)
    try:
        rendered = value.format(source="CHEST")
    except (KeyError, IndexError, ValueError):
        raise bad_value("is not a valid template; the only field is {source}.") from None
    if len(rendered) > 64:
        raise bad_value("renders longer than 64 characters.")
    return value


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """`path` against the ``base_dir`` of the validation context, when there is one."""
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else Path(base) / path


def _path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, str):
        if not value.strip():
            raise bad_value("is empty; a value is required.")
        value = Path(value)
    if not isinstance(value, Path):
        raise bad_type("is not a string.")
    return _resolve(value.expanduser(), info)


def _optional_path(value: object, info: ValidationInfo) -> Path | None:
    if value is None or value == "":
        return None
    return _path(value, info)


def _upper(value: str) -> str:
    return value.strip().upper()


def _upper_text(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


Str = Annotated[str, Strict()]
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
AETitle = Annotated[str, BeforeValidator(_ae_title)]
AETitles = Annotated[tuple[AETitle, ...], BeforeValidator(_listify)]
Port = Annotated[int, Strict(), Field(ge=1, le=65535), BeforeValidator(_port)]
Host = Annotated[str, Strict(), AfterValidator(_host)]
Name = Annotated[str, Strict(), AfterValidator(_name)]
NonEmpty = Annotated[str, Strict(), AfterValidator(_non_empty)]
Strings = Annotated[tuple[Str, ...], BeforeValidator(_listify)]
Upper = Annotated[
    tuple[Annotated[str, Strict(), AfterValidator(_upper)], ...], BeforeValidator(_listify)
]
Uids = Annotated[tuple[Str, ...], BeforeValidator(_listify), AfterValidator(_uids)]
Regex = Annotated[str, Strict(), AfterValidator(_regex)]
Template = Annotated[str, Strict(), AfterValidator(_template)]
DatabaseUrl = Annotated[str, Strict(), AfterValidator(_database_url)]
DataDir = Annotated[Path, BeforeValidator(_path)]
ModelPath = Annotated[Path | None, BeforeValidator(_optional_path)]
Strength = Annotated[float, BeforeValidator(_strength)]
OptionalStrength = Annotated[float | None, BeforeValidator(_optional_strength)]
Level = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper_text)]
