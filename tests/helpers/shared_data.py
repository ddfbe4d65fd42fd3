"""Where the read-only shared test data lives: one lookup for tests and benchmarks.

The data (the real CR chest image ``dicom/RG1_UNCI.dcm``, the chest x-ray
sets ``cxr/`` and ``cxr-hires/``) is never copied into the repository. It is
found, in this order:

1. ``DICOM_NODE_SHARED_DATA``: the ``data`` folder itself;
2. ``../shared/data`` relative to the repository root (the checkout's sibling);
3. ``/work/shared/data``, where the development and CI machines keep it for a
   clone made anywhere else.

``DICOM_NODE_TEST_IMAGE`` still points at another real image than RG1.
A missing file fails the test that needs it (it never skips).
"""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
_CANDIDATES = (REPOSITORY.parent / "shared" / "data", Path("/work/shared/data"))


def shared_data_dir() -> Path:
    """The shared ``data`` folder (see the module docstring for the lookup order)."""
    override = os.environ.get("DICOM_NODE_SHARED_DATA")
    if override:
        return Path(override)
    for candidate in _CANDIDATES:
        if candidate.is_dir():
            return candidate
    return _CANDIDATES[0]


def shared_file(relative: str) -> Path:
    """A path under the shared data folder; a missing one raises a clear AssertionError."""
    path = shared_data_dir() / relative
    if not path.exists():
        raise AssertionError(
            f"The shared test data {path} is missing; set DICOM_NODE_SHARED_DATA to the "
            "folder that holds dicom/, cxr/ and cxr-hires/."
        )
    return path


def rg1_path() -> Path:
    """The real CR chest PA (1955 × 1841, 15-bit MONOCHROME1), or ``DICOM_NODE_TEST_IMAGE``."""
    override = os.environ.get("DICOM_NODE_TEST_IMAGE")
    if override:
        return Path(override)
    return shared_data_dir() / "dicom" / "RG1_UNCI.dcm"
