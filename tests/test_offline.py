"""``dicom-node enhance``: files in, enhanced files out, one line per file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import RG1, ct, save
from onnx_models import make_smoothing_model
from PIL import Image
from test_derive import dciodvfy_errors

from dicom_node.pixels import CONVENTION

CXR = Path("/work/shared/data/cxr")


def run_enhance(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "enhance", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_smoothing_model(tmp_path_factory.mktemp("m") / "m.onnx", name="offline-test")


def test_dicom_and_png_in_one_run(tmp_path: Path, model: Path) -> None:
    png16 = shutil.copy(CXR / "wg04_RG1_UNCI_16bit.png", tmp_path / "rg1_16bit.png")
    png8 = shutil.copy(CXR / "nih_00000353_000.png", tmp_path / "nih.png")
    out = tmp_path / "out"
    result = run_enhance(
        str(RG1), png16, png8, "--output", str(out), "--model", str(model), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len([line for line in lines if line.startswith("OK ")]) == 3
    assert lines[-1].startswith("3 of 3 file(s) enhanced with model offline-test 1.0")

    derived = pydicom.dcmread(out / "RG1_UNCI.dcm")
    source = pydicom.dcmread(RG1)
    assert derived.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (derived.Rows, derived.Columns) == (source.Rows, source.Columns)
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "model offline-test version 1.0" in derived.DerivationDescription
    assert dciodvfy_errors(out / "RG1_UNCI.dcm") == []

    src16 = np.array(Image.open(png16))
    with Image.open(out / "rg1_16bit.png") as img:
        assert img.mode == "I;16" and img.size == (964, 1024)
        got16 = np.array(img)
    # Same 15-bit range as the input, smoothed, not truncated to 8 bits.
    assert got16.max() <= 32767 and len(np.unique(got16)) > 1000
    assert 0 < np.abs(got16.astype(int) - src16.astype(int)).mean() < 200

    with Image.open(out / "nih.png") as img:
        assert img.mode == "L" and img.size == (1024, 1024)


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path, model: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"definitely not DICOM")
    ct_file = save(ct(), tmp_path / "ct.dcm")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    result = run_enhance(
        str(junk),
        str(ct_file),
        str(missing),
        str(RG1),
        "--output",
        str(out),
        "--model",
        str(model),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"FAILED {junk}: not a readable DICOM image")
    assert lines[1].startswith(f"FAILED {ct_file}: not enhanced: no rule matches (Modality CT")
    assert lines[2] == f"FAILED {missing}: no such file"
    assert lines[3].startswith(f"OK {RG1} -> {out / 'RG1_UNCI.dcm'}")
    assert lines[4].startswith("1 of 4 file(s) enhanced")
    assert sorted(p.name for p in out.iterdir()) == ["RG1_UNCI.dcm"]


def test_never_overwrites_an_input(tmp_path: Path, model: Path) -> None:
    png = Path(shutil.copy(CXR / "nih_00000353_000.png", tmp_path / "a.png"))
    before = png.read_bytes()
    result = run_enhance(str(png), "--output", str(tmp_path), "--model", str(model), cwd=tmp_path)
    assert result.returncode == 1
    assert "would overwrite the input" in result.stdout
    assert png.read_bytes() == before


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    result = run_enhance(
        str(RG1), "--output", str(tmp_path / "o"), "--model", str(tmp_path / "x.onnx"), cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"dicom-node: error: The model file {tmp_path / 'x.onnx'} does not exist."
    ]


def test_model_info_shows_metadata_and_provider(tmp_path: Path, model: Path) -> None:
    import hashlib
    import json

    result = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "model", "info", "--model", str(model), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["provider"] == "CPUExecutionProvider"
    assert info["model_name"] == "offline-test"
    assert info["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert info["pixel_convention"] == CONVENTION
    assert info["size_multiple"] == 32
    text = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "model", "info", "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert "provider" in text.stdout and "CPUExecutionProvider" in text.stdout
