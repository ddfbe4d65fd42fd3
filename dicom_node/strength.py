"""How strongly the generator's correction is applied: a blend of input and output.

``result = source + strength · (enhanced − source)``: strength 1 is the
generator's output, 0 the source unchanged, values in between scale the
correction linearly (noise removed, sharpening and any change the model
makes). The blend runs in the node's [0, 1] pixel convention after
inference, so it costs nothing and works with every model; the exported
graph does not change.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_STRENGTH = 1.0
"""Strength used when neither ``[model] strength`` nor a rule sets one."""


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


def format_strength(strength: float) -> str:
    """The strength as provenance shows it: two decimals (``0.80``), more only when needed."""
    text = f"{strength:.2f}"
    return text if float(text) == strength else f"{strength:.6g}"


def blend(source: np.ndarray, enhanced: np.ndarray, strength: float) -> np.ndarray:
    """Apply `strength` of the generator's correction to `source`.

    Parameters
    ----------
    source, enhanced : numpy.ndarray
        The model's input and output, same shape, in [0, 1].
    strength : float
        From 0 (return `source`) to 1 (return `enhanced`).

    Returns
    -------
    numpy.ndarray
        float32, same shape, in [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ or `strength` is outside [0, 1].
    """
    value = check_strength(strength)
    src = np.asarray(source, dtype=np.float32)
    out = np.asarray(enhanced, dtype=np.float32)
    if src.shape != out.shape:
        raise ValueError(f"source {src.shape} and enhanced {out.shape} differ in shape.")
    if value == 1.0:
        return out.copy()
    if value == 0.0:
        return src.copy()
    mixed = src + np.float32(value) * (out - src)
    return np.clip(mixed, 0.0, 1.0).astype(np.float32)
