"""The contract between an exported generator and the node.

An ONNX model the node accepts has one input named :data:`INPUT_NAME` and one
output named :data:`OUTPUT_NAME`, both float32 of shape (N, 1, H, W) in the
pixel convention of :mod:`dicom_node.pixels`, H and W multiples of
``size_multiple``. Its ``metadata_props`` carry at least the keys of
:data:`REQUIRED_KEYS`; the training package writes them at export and the node
checks them at load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.errors import ModelError
from dicom_node.noise import NoiseCalibration
from dicom_node.pixels import CONVENTION

INPUT_NAME = "image"
OUTPUT_NAME = "enhanced"

KEY_CONVENTION = "pixel_convention"
KEY_NAME = "model_name"
KEY_VERSION = "model_version"
KEY_SIZE_MULTIPLE = "size_multiple"
REQUIRED_KEYS = (KEY_CONVENTION, KEY_NAME, KEY_VERSION, KEY_SIZE_MULTIPLE)
"""Keys every model must have. Others (``training_data``, ``degradation``,
``metrics``, ``training_commit``, ``architecture``...) are shown by
``dicom-node model info`` when present."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelMetadata:
    """Validated metadata of an exported generator."""

    name: str
    version: str
    size_multiple: int
    sha256: str
    path: Path
    extra: dict[str, str] = field(default_factory=dict)
    noise_calibration: NoiseCalibration | None = None
    """How the strength follows the image's noise (:mod:`dicom_node.noise`); None: it does not."""

    @property
    def short_hash(self) -> str:
        """First 16 hex digits of the ONNX file's SHA-256."""
        return self.sha256[:16]

    @classmethod
    def from_props(cls, props: dict[str, str], path: Path, sha256: str) -> ModelMetadata:
        """Validate ``metadata_props`` of the model at `path`.

        Raises
        ------
        ModelError
            If a required key is missing or the pixel convention differs from
            the node's.
        """
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise ModelError(
                f"The model {path} lacks the metadata {', '.join(missing)}; export it with "
                "dicom-node-train export."
            )
        if props[KEY_CONVENTION] != CONVENTION:
            raise ModelError(
                f"The model {path} uses the pixel convention {props[KEY_CONVENTION]!r}, but this "
                f"node uses {CONVENTION!r}."
            )
        try:
            multiple = int(props[KEY_SIZE_MULTIPLE])
        except ValueError as exc:
            raise ModelError(
                f"The model {path} has an invalid size_multiple {props[KEY_SIZE_MULTIPLE]!r}."
            ) from exc
        if multiple < 1 or multiple > 4096:
            raise ModelError(f"The model {path} has an invalid size_multiple {multiple}.")
        extra = {k: v for k, v in props.items() if k not in REQUIRED_KEYS}
        try:
            calibration = NoiseCalibration.from_props(props)
        except ValueError as exc:
            raise ModelError(f"The model {path}: {exc}") from exc
        return cls(
            name=props[KEY_NAME][:64],
            version=props[KEY_VERSION][:64],
            size_multiple=multiple,
            sha256=sha256,
            path=path,
            extra=extra,
            noise_calibration=calibration,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary for display (JSON values decoded where possible)."""
        out: dict[str, Any] = {
            "model_name": self.name,
            "model_version": self.version,
            "sha256": self.sha256,
            "path": str(self.path),
            "size_multiple": self.size_multiple,
            "pixel_convention": CONVENTION,
        }
        for key, value in sorted(self.extra.items()):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out
