"""The Specific Character Set of a derived object: the source's, whenever it is valid.

The derived object copies the source's names and descriptions, decoded by
pydicom. It keeps the source's Specific Character Set when that is a valid
combination of the standard's defined terms (PS3.3 C.12.1.1.2) that pydicom
can decode, including an empty first value (the default repertoire, as in
the PS3.5 Japanese ``\\ISO 2022 IR 87`` and Korean ``\\ISO 2022 IR 149``
examples), so the values are written back as they came. Two equivalents
are used where dciodvfy cannot check the source's own term: a single
single-byte term with code extensions (``ISO 2022 IR 100`` alone, whose
characters pydicom writes without escape sequences) becomes the same
repertoire without them (``ISO_IR 100``), and ``GBK`` becomes its superset
``GB18030`` (the same bytes for every GBK character). Any other value
that pydicom still decoded (a misspelt or non-standard term, or an invalid
combination) becomes ``ISO_IR 192`` (UTF-8), which encodes every decoded
character.
"""

from __future__ import annotations

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["UTF8", "derived_character_set"]

UTF8 = "ISO_IR 192"
"""The character set used when the source's cannot be kept."""

_NOT_STANDARD = frozenset({"ISO_IR 6", "ISO 2022 GBK", "ISO 2022 58"})
"""Terms pydicom reads that the standard does not define."""
_STAND_ALONE = frozenset({"ISO_IR 192", "GB18030", "GBK"})
"""Terms that may only be used alone (no code extensions)."""
_STANDARD = frozenset(python_encoding) - _NOT_STANDARD - {""}
_EXTENSION_PREFIX = "ISO 2022 IR "
_EQUIVALENT = {"GBK": "GB18030"}


def _values(source: Dataset) -> list[str]:
    value = source.get("SpecificCharacterSet")
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(item).strip() for item in items]


def derived_character_set(source: Dataset) -> str | list[str] | None:
    """The Specific Character Set for an object derived from `source`.

    Returns
    -------
    str, list of str or None
        None when the source has none (the default repertoire); the
        source's value when it is a valid combination of defined terms;
        else :data:`UTF8`.
    """
    values = _values(source)
    if not values or values == [""]:
        return None
    if len(values) == 1:
        (term,) = values
        if term not in _STANDARD:
            return UTF8
        plain = f"ISO_IR {term.removeprefix(_EXTENSION_PREFIX)}"
        if term.startswith(_EXTENSION_PREFIX) and plain in _STANDARD:
            return plain
        return _EQUIVALENT.get(term, term)
    first, rest = values[0], values[1:]
    extensions = [v for v in values if v]
    valid = (
        (first == "" or first.startswith("ISO 2022 "))
        and all(v in _STANDARD and v.startswith("ISO 2022 ") for v in extensions)
        and all(rest)
        and len(set(extensions)) == len(extensions)
    )
    return values if valid else UTF8
