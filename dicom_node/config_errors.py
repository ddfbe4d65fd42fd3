"""Errors of the configuration, and pydantic's validation errors as one-line messages.

The root of the node's exceptions, :class:`NodeError`, lives here with
:class:`ConfigError` because the configuration imports nothing else of the
project (:mod:`dicom_node.errors` re-exports both and defines the rest of the
hierarchy). :func:`setting_error` turns a :class:`pydantic.ValidationError`
into the message the node has always printed: ``KEY: VALUE reason.``, with
the key written as in the TOML file (``node.port``, ``destinations[0].port``,
``node.allowed_calling_aets[1]``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ValidationError


class NodeError(Exception):
    """Root of every error raised on purpose by the node."""


class ConfigError(NodeError):
    """The configuration file, an environment override or a setting built in code is invalid."""


class SettingTypeError(ConfigError, TypeError):
    """A setting has the wrong type (also a :class:`TypeError` for settings built in code)."""


class SettingValueError(ConfigError, ValueError):
    """A setting has a bad value (also a :class:`ValueError` for settings built in code)."""


_TYPE_REASONS = {
    "int_type": "is not an integer.",
    "float_type": "is not a number.",
    "bool_type": "is not a boolean (true or false).",
    "string_type": "is not a string.",
    "finite_number": "is not a finite number.",
}
_TYPE_ERRORS = {"missing", "missing_argument", "unexpected_keyword_argument", "config_type"}


def key_of(loc: Sequence[int | str]) -> str:
    """The dotted key of a pydantic error location: ``("rules", 0, "name")`` → ``rules[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _bare(hint: Any) -> Any:
    """`hint` without ``Annotated`` and ``None`` (``Annotated[int, ...] | None`` → int)."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _bare(args[0]) if len(args) == 1 else hint
    return hint


def field_hints(cls: Any) -> dict[str, Any]:
    """The resolved type of every init field of the dataclass `cls`, without ``Annotated``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: _bare(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _walk(root: type, loc: Sequence[int | str]) -> Any:
    """The type found at `loc` below the dataclass `root` (None when it cannot be told)."""
    hint: Any = root
    for part in loc:
        if isinstance(part, int):
            args = typing.get_args(hint)
            hint = _bare(args[0]) if typing.get_origin(hint) is tuple and args else None
        elif dataclasses.is_dataclass(hint):
            hint = field_hints(hint).get(part)
        else:
            return None
    return hint


def _message(error: Any, root: type, internal: frozenset[str]) -> str:
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    ctx = error.get("ctx") or {}
    key = key_of(loc)
    parent = key_of(loc[:-1])
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        cls = _walk(root, loc[:-1])
        allowed = sorted(set(field_hints(cls)) - internal) if dataclasses.is_dataclass(cls) else []
        where = (f"[{parent}]" if len(loc) == 2 else parent) if parent else "configuration"
        return f"{where}: unknown key {loc[-1]!r}; allowed keys are {', '.join(allowed)}."
    if kind in ("missing", "missing_argument"):
        return f"{parent + ': ' if parent else ''}the key {loc[-1]!r} is required."
    if kind in ("dataclass_type", "dataclass_args_type"):
        return f"{f'[{key}]' if len(loc) == 1 else key} must be a table, not {value!r}."
    if kind in ("config_type", "config_value"):
        if "field" in ctx:
            key = f"{key}.{ctx['field']}" if key else ctx["field"]
        value = ctx.get("value", value)
        prefix = f"{key_of(loc)}." if loc else ""
        return f"{key}: {value!r} {ctx['reason'].replace('{prefix}', prefix)}"
    hint = _walk(root, loc)
    if kind in ("tuple_type", "list_type"):
        item = typing.get_args(hint)[0] if hint is not None and typing.get_args(hint) else None
        if dataclasses.is_dataclass(item):
            return f"{key} must be an array of tables ([[{key}]])."
        return f"{key}: {value!r} is not a list of strings."
    if kind == "literal_error" and typing.get_origin(hint) is Literal:
        return f"{key}: {value!r} is not one of {', '.join(map(str, typing.get_args(hint)))}."
    if kind in ("greater_than_equal", "greater_than"):
        return f"{key}: {value!r} is too small; the minimum is {ctx.get('ge', ctx.get('gt'))}."
    if kind in ("less_than_equal", "less_than"):
        return f"{key}: {value!r} is too large; the maximum is {ctx.get('le', ctx.get('lt'))}."
    reason = _TYPE_REASONS.get(kind, " ".join(str(error["msg"]).split()) + ".")
    return f"{key}: {value!r} {reason}"


def setting_error(
    exc: ValidationError, root: type, internal: frozenset[str] = frozenset()
) -> ConfigError:
    """The first error of `exc` as a one-line :class:`ConfigError`.

    Parameters
    ----------
    exc : pydantic.ValidationError
        What pydantic raised while validating `root`.
    root : type
        The dataclass that was validated (locations are relative to it).
    internal : frozenset[str]
        Field names that are not configuration keys (left out of the list of
        allowed keys).

    Returns
    -------
    ConfigError
        A :class:`SettingTypeError` for a wrong type, missing or unknown key,
        else a :class:`SettingValueError`.
    """
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] in ("extra_forbidden", "unexpected_keyword_argument")]
    first = (unknown or errors)[0]
    kind = first["type"]
    is_type = kind in _TYPE_ERRORS or kind.endswith("_type")
    cls = SettingTypeError if is_type else SettingValueError
    return cls(_message(first, root, internal))
