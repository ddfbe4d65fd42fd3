"""The one lookup of the shared test data (``helpers.shared_data``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import shared_data


def test_the_environment_override_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DICOM_NODE_SHARED_DATA", str(tmp_path))
    monkeypatch.delenv("DICOM_NODE_TEST_IMAGE", raising=False)
    assert shared_data.shared_data_dir() == tmp_path
    assert shared_data.rg1_path() == tmp_path / "dicom" / "RG1_UNCI.dcm"
    with pytest.raises(AssertionError, match="DICOM_NODE_SHARED_DATA"):
        shared_data.shared_file("cxr/manifest.csv")


def test_the_default_is_the_repository_sibling_when_it_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DICOM_NODE_SHARED_DATA", raising=False)
    sibling = shared_data.REPOSITORY.parent / "shared" / "data"
    found = shared_data.shared_data_dir()
    if sibling.is_dir():
        assert found == sibling
    # Whichever folder was found, the real image the suite needs is there.
    assert shared_data.shared_file("dicom/RG1_UNCI.dcm").is_file()
