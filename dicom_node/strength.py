"""How strongly the generator's correction is applied: a blend of input and output.

``result = source + strength · (enhanced − source)``: strength 1 is the
generator's output, 0 the source unchanged, values in between scale the
correction linearly (noise removed, sharpening and any change the model
makes). The blend runs in the node's [0, 1] pixel convention after
inference, so it costs nothing and works with every model; the exported
graph does not change. :data:`DEFAULT_STRENGTH` and :func:`check_strength` live
with the configuration (:mod:`dicom_node.config_types`), which imports no numpy.
"""

from __future__ import annotations

import numpy as np

from dicom_node.config_types import DEFAULT_STRENGTH, check_strength

__all__ = ["DEFAULT_STRENGTH", "blend", "check_strength", "format_strength"]


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
