"""Where a model came from: the commit is recorded only when the model's code is committed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from training.provenance import UNCOMMITTED, git_commit


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_commit_is_recorded_unless_the_model_code_changed(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == UNCOMMITTED  # not a repository
    (tmp_path / "training").mkdir()
    (tmp_path / "dicom_node").mkdir()
    (tmp_path / "training" / "train.py").write_text("x = 1\n")
    (tmp_path / "training" / "README.md").write_text("docs\n")
    (tmp_path / "dicom_node" / "pixels.py").write_text("y = 1\n")
    (tmp_path / "dicom_node" / "cli.py").write_text("z = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    # Documentation and code outside the model's definition do not matter.
    (tmp_path / "training" / "README.md").write_text("more docs\n")
    (tmp_path / "dicom_node" / "cli.py").write_text("z = 2\n")
    assert git_commit(tmp_path) == head
    # The pixel pipeline and the training code do.
    (tmp_path / "dicom_node" / "pixels.py").write_text("y = 2\n")
    assert git_commit(tmp_path) == UNCOMMITTED
    _git(tmp_path, "checkout", "-q", "--", "dicom_node/pixels.py")
    (tmp_path / "training" / "new_module.py").write_text("n = 1\n")
    assert git_commit(tmp_path) == UNCOMMITTED
