"""Argument types of ``dicom-node-train``: each parses one value or raises ``ArgumentTypeError``."""

from __future__ import annotations

import argparse


def float_pair(text: str) -> tuple[float, float]:
    """``LOW,HIGH``: two numbers."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH numbers, got {text!r}") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH numbers, got {text!r}")
    return values[0], values[1]


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers."""
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 256,512, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def setting(text: str) -> tuple[float, float, float]:
    """``A,B,SIGMA``: a training validation setting."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A,B,SIGMA numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected A,B,SIGMA numbers, got {text!r}")
    return values[0], values[1], values[2]


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def evaluate_setting(text: str) -> tuple[float, ...]:
    """``A,B,SIGMA`` or ``A,B,SIGMA,CORR`` (the evaluation's settings)."""
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected A,B,SIGMA[,CORR] numbers, got {text!r}"
        ) from None
    if len(values) not in (3, 4):
        raise argparse.ArgumentTypeError(f"expected A,B,SIGMA[,CORR] numbers, got {text!r}")
    return values


def strengths(text: str) -> tuple[float, ...]:
    """Comma-separated strengths from 0 to 1."""
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected strengths like 0.8,0.6, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"strengths must be from 0 to 1, got {text!r}")
    return values
