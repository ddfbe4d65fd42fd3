"""Restorers under evaluation: an exported ONNX model or a training checkpoint.

A restorer maps a whole degraded image (float32 in [0, 1]) to its restored
image. Both kinds are run exactly as the node would run them, so a
checkpoint scores like its ONNX export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.errors import EvaluationError

logger = logging.getLogger(__name__)

Restorer = Callable[[np.ndarray], np.ndarray]
"""A whole degraded image in, its restored image out."""


def onnx_restorer(path: Path) -> Restorer:
    """Run an exported model exactly as the node does.

    The node's own :class:`dicom_node.inference.Enhancer` loads the model
    (checking its metadata), reflect-pads each image to the size multiple and,
    for large images, runs overlapping tiles.

    Raises
    ------
    EvaluationError
        If the node refuses or cannot load the model.
    """
    from dicom_node.config import ModelSettings
    from dicom_node.errors import ModelError
    from dicom_node.inference import Enhancer

    try:
        enhancer = Enhancer(ModelSettings(path=path, provider="auto", warmup=False))
    except ModelError as exc:
        raise EvaluationError(str(exc)) from exc

    def run(image: np.ndarray) -> np.ndarray:
        return enhancer.enhance(np.asarray(image, dtype=np.float32))[0]

    return run


def checkpoint_restorer(path: Path) -> Restorer:
    """Run the generator of a training checkpoint with PyTorch (CPU).

    Images are padded and cropped with the node's own functions
    (:mod:`dicom_node.tiling`), so a checkpoint scores like its ONNX export
    run by the node.
    """
    import torch

    from dicom_node.tiling import crop, pad_to_multiple
    from training.checkpoint import load_generator
    from training.networks import SIZE_MULTIPLE

    generator, _ = load_generator(path)

    def run(image: np.ndarray) -> np.ndarray:
        padded, pad = pad_to_multiple(np.asarray(image, dtype=np.float32), SIZE_MULTIPLE)
        with torch.no_grad():
            out = generator(torch.from_numpy(np.ascontiguousarray(padded))[None, None])
        return np.asarray(crop(out[0, 0].numpy(), pad), dtype=np.float32)

    return run


def load_restorer(path: Path) -> Restorer:
    """An ONNX model (``.onnx``, run by the node's code) or a checkpoint (PyTorch).

    Raises
    ------
    EvaluationError
        If the file does not exist or the node cannot load it.
    training.errors.CheckpointError
        If a checkpoint is not valid.
    """
    if not path.is_file():
        raise EvaluationError(f"The model {path} does not exist.")
    if path.suffix.lower() == ".onnx":
        return onnx_restorer(path)
    return checkpoint_restorer(path)
