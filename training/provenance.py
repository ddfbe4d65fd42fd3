"""Where a model came from: the repository commit and a fingerprint of the code."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
UNCOMMITTED = "uncommitted"


def git_commit(repo: Path = REPO_DIR) -> str:
    """The repository's HEAD commit, or ``"uncommitted"``.

    ``"uncommitted"`` is returned when the code that defines the model (the
    Python sources of the ``training`` package and ``dicom_node/pixels.py``,
    the files :func:`code_fingerprint` covers) differs from HEAD, or when
    there is no git repository or git executable. Documentation does not
    count.
    """
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "status",
                "--porcelain",
                "--",
                "training/*.py",
                "dicom_node/pixels.py",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return UNCOMMITTED
    return UNCOMMITTED if dirty or not head else head


def code_fingerprint() -> str:
    """SHA-256 over the training package's Python sources and the node's pixel module.

    It identifies the code a model was trained with even when that code was
    not committed yet.
    """
    digest = hashlib.sha256()
    files = [*sorted(PACKAGE_DIR.glob("*.py")), REPO_DIR / "dicom_node" / "pixels.py"]
    for path in files:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
