"""``DICOM_NODE_<SECTION>_<KEY>`` environment overrides, derived from the settings' types.

A section is every field of :class:`~dicom_node.config.Config` whose type is
a settings dataclass (``node``, ``storage``, ``jobs``, ``model``, ``output``,
``logging``); how a variable's text is read follows the type of its field:

* a string or path field takes the text as written (an AE title ``1234`` or
  a host ``true`` stays a string);
* a list field takes a TOML array (``["A", "B"]``) or a comma-separated
  string (``A, B``);
* any other field takes a TOML literal (``11113``, ``0.5``, ``true``), or the
  text itself when it is not one, so that validation names the bad value.

An unknown key of a known section is kept, and validation reports it with
the keys that section allows.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dicom_node.config_errors import ConfigError, field_hints


def sections(root: type, internal: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """The overridable sections of the dataclass `root`: name → {key → field type}."""
    return {
        name: {k: v for k, v in field_hints(hint).items() if k not in internal}
        for name, hint in field_hints(root).items()
        if dataclasses.is_dataclass(hint)
    }


def _read(text: str, hint: Any) -> object:
    if hint is str or hint is Path:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if typing.get_origin(hint) is tuple:
            return [part.strip() for part in text.split(",") if part.strip()]
        return text


def apply_env_overrides(
    raw: Mapping[str, Any],
    environ: Mapping[str, str],
    root: type,
    prefix: str = "DICOM_NODE_",
    internal: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Return a copy of `raw` with the ``<prefix><SECTION>_<KEY>`` variables applied.

    Parameters
    ----------
    raw : Mapping[str, Any]
        The decoded TOML document (not modified).
    environ : Mapping[str, str]
        The environment.
    root : type
        The configuration dataclass whose fields define sections and keys.
    prefix : str
        Prefix of the variables; ``<prefix>CONFIG`` (the file) is skipped.
    internal : frozenset[str]
        Fields that are not configuration keys.

    Raises
    ------
    ConfigError
        If a variable names an unknown section, or the section in `raw` is
        not a table.
    """
    known = sections(root, internal)
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for name, text in sorted(environ.items()):
        if not name.startswith(prefix) or name == f"{prefix}CONFIG":
            continue
        section, _, key = name[len(prefix) :].lower().partition("_")
        if section not in known or not key:
            raise ConfigError(
                f"{name}: unknown setting; expected {prefix}<SECTION>_<KEY> with SECTION one "
                f"of {', '.join(s.upper() for s in known)}."
            )
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table.")
        table[key] = _read(text, known[section].get(key, str))
    return merged
