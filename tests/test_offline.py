"""``dicom-node enhance``: files in, enhanced files out, one line per file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import DX_PRESENTATION, RG1, ct, gradient_image, save, xray
from helpers.peers import to_toml
from helpers.shared_data import shared_data_dir
from onnx_models import make_smoothing_model
from PIL import Image
from test_derive import dciodvfy_errors
from test_pixels import save_png16

from dicom_node.label import label_lines, place
from dicom_node.pixels import CONVENTION, normalize_dataset, png_significant_bits, quantize

CXR = shared_data_dir() / "cxr"


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
    ok = [line for line in lines if line.startswith("OK ")]
    assert len(ok) == 3
    assert lines[-1].startswith("3 of 3 file(s) enhanced with model offline-test 1.0")
    # The stage timings, named as everywhere else (dicom_node.timings).
    (dicom_line,) = [line for line in ok if line.startswith(f"OK {RG1} ")]
    stages = "tiles 1, read .* ms, decode .* ms, normalise .* ms, infer .* ms, blend .* ms, "
    assert re.search(stages + "derive .* ms, encode .* ms, write .* ms\\) in ", dicom_line)
    (png_line,) = [line for line in ok if line.startswith(f"OK {png8} ")]
    assert re.search(
        r"tiles 1, read .* ms, infer .* ms, blend .* ms, encode .* ms, write .* ms\)", png_line
    )

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
    # The input has no sBIT chunk: 16-bit in, 16-bit out (no sBIT either), the same
    # (dim) range as the input, smoothed, not brightened and not truncated to 8 bits.
    assert png_significant_bits(Path(png16)) is None
    assert png_significant_bits(out / "rg1_16bit.png") is None
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


# --------------------------------------------------------------------------- strength and bit depth


def _png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as img:
        return img.mode, np.array(img)


@pytest.fixture
def image_inputs(tmp_path: Path) -> dict[str, Path]:
    """8-bit PNG, 16-bit PNGs with sBIT 12 and 8, 16-bit TIFF, 8-bit JPEG, CR DICOM."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(gradient_image(64, 80, 8, seed=1)).save(folder / "eight.png")
    save_png16(gradient_image(64, 80, 12, seed=2), folder / "twelve.png", sbit=12)
    save_png16(gradient_image(64, 80, 8, seed=6), folder / "eight_in_16.png", sbit=8)
    Image.fromarray(gradient_image(64, 80, 16, seed=3)).save(folder / "sixteen.tif")
    Image.fromarray(gradient_image(64, 80, 8, seed=4)).save(folder / "photo.jpg", quality=90)
    # Large enough for the burned-in AI label (a 64 x 80 DICOM image is refused).
    save(xray(rows=200, cols=240, bits=12), folder / "cr.dcm")
    return {p.stem: p for p in folder.iterdir()}


def _outside_label(pixels: np.ndarray) -> np.ndarray:
    """Where the burned-in AI label of the test model is not, on the pre-label `pixels`."""
    return ~place(pixels, label_lines("offline-test", "1.0")).full_mask(pixels.shape)


def _source_values(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def test_strength_zero_gives_the_source_back(
    tmp_path: Path, model: Path, image_inputs: dict[str, Path]
) -> None:
    out = tmp_path / "out"
    inputs = [str(p) for p in image_inputs.values()]
    result = run_enhance(
        *inputs, "--output", str(out), "--model", str(model), "--strength", "0", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ok = [line for line in result.stdout.splitlines() if line.startswith("OK ")]
    assert len(ok) == 6 and all("strength 0.00" in line for line in ok), result.stdout

    # Every image comes back with exactly its own values, at its own bit depth.
    assert _png(out / "eight.png")[0] == "L"
    np.testing.assert_array_equal(_png(out / "eight.png")[1], _source_values(image_inputs["eight"]))
    mode, twelve = _png(out / "twelve.png")
    assert mode == "I;16" and png_significant_bits(out / "twelve.png") == 12
    np.testing.assert_array_equal(twelve, _source_values(image_inputs["twelve"]))
    mode, eight_in_16 = _png(out / "eight_in_16.png")
    assert mode == "I;16" and png_significant_bits(out / "eight_in_16.png") == 8
    np.testing.assert_array_equal(eight_in_16, _source_values(image_inputs["eight_in_16"]))
    mode, sixteen = _png(out / "sixteen.png")
    assert mode == "I;16" and png_significant_bits(out / "sixteen.png") is None
    np.testing.assert_array_equal(sixteen, _source_values(image_inputs["sixteen"]))
    mode, photo = _png(out / "photo.png")
    assert mode == "L"  # a JPEG in gives an 8-bit PNG out
    np.testing.assert_array_equal(photo, _source_values(image_inputs["photo"]))

    # DICOM: still a derived object, with the normalised source's pixels.
    source = pydicom.dcmread(image_inputs["cr"])
    derived = pydicom.dcmread(out / "cr.dcm")
    assert derived.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert derived.SOPInstanceUID != source.SOPInstanceUID
    expected = quantize(normalize_dataset(source).pixels, 16)
    outside = _outside_label(expected)
    np.testing.assert_array_equal(derived.pixel_array[outside], expected[outside])
    assert derived.DerivationDescription.endswith(", strength 0.00")
    assert dciodvfy_errors(out / "cr.dcm") == []


def test_full_strength_changes_the_pixels_and_keeps_the_bit_depth(
    tmp_path: Path, model: Path, image_inputs: dict[str, Path]
) -> None:
    out = tmp_path / "out"
    inputs = [str(p) for p in image_inputs.values()]
    result = run_enhance(*inputs, "--output", str(out), "--model", str(model), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    depths = {"eight": None, "twelve": 12, "eight_in_16": 8, "sixteen": None, "photo": None}
    for stem, bits in depths.items():
        mode, values = _png(out / f"{stem}.png")
        source = _source_values(image_inputs[stem])
        assert mode == ("L" if source.dtype == np.uint8 else "I;16"), stem
        assert png_significant_bits(out / f"{stem}.png") == bits, stem
        # The smoother changed them: the strength-0 test above is not vacuous.
        assert not np.array_equal(values, source), stem
    assert _png(out / "twelve.png")[1].max() <= 4095
    assert _png(out / "eight_in_16.png")[1].max() <= 255
    derived = pydicom.dcmread(out / "cr.dcm")
    assert derived.DerivationDescription.endswith(", strength 1.00")
    normalised = quantize(normalize_dataset(pydicom.dcmread(image_inputs["cr"])).pixels, 16)
    assert not np.array_equal(derived.pixel_array, normalised)


def test_strength_comes_from_the_rule_then_the_model(tmp_path: Path, model: Path) -> None:
    source = gradient_image(64, 80, 8, seed=5)
    Image.fromarray(source).save(tmp_path / "plain.png")
    cr = save(xray(rows=200, cols=240, bits=12), tmp_path / "cr.dcm")
    dx = save(
        xray(rows=200, cols=240, bits=12, sop_class_uid=DX_PRESENTATION, modality="DX"),
        tmp_path / "dx.dcm",
    )
    config = tmp_path / "node.toml"
    config.write_text(
        to_toml(
            {
                "storage": {"data_dir": str(tmp_path / "var")},
                "model": {"strength": 0.0},
                "rules": [
                    {"name": "cr", "action": "enhance", "modality": ["CR"], "strength": 1.0},
                    {"name": "dx", "action": "enhance", "modality": ["DX"]},
                ],
            }
        )
    )
    out = tmp_path / "out"
    common = ("--config", str(config), "--model", str(model))
    result = run_enhance(
        str(tmp_path / "plain.png"), str(cr), str(dx), "--output", str(out), *common, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # No --strength: the CR rule's 1.0; the DX rule has none, so [model] strength 0;
    # a PNG has no rule, so [model] strength 0 too.
    assert pydicom.dcmread(out / "cr.dcm").DerivationDescription.endswith("strength 1.00")
    dx_derived = pydicom.dcmread(out / "dx.dcm")
    assert dx_derived.DerivationDescription.endswith("strength 0.00")
    dx_source = quantize(normalize_dataset(pydicom.dcmread(dx)).pixels, 16)
    outside = _outside_label(dx_source)
    np.testing.assert_array_equal(dx_derived.pixel_array[outside], dx_source[outside])
    np.testing.assert_array_equal(_png(out / "plain.png")[1], source)

    # --strength overrides the rule's: other UIDs than at the rule's strength.
    again = tmp_path / "again"
    result = run_enhance(
        str(cr), "--output", str(again), *common, "--strength", "0.8", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    at_08 = pydicom.dcmread(again / "cr.dcm")
    assert at_08.DerivationDescription.endswith("strength 0.80")
    at_10 = pydicom.dcmread(out / "cr.dcm")
    assert at_08.SeriesInstanceUID != at_10.SeriesInstanceUID
    assert at_08.SOPInstanceUID != at_10.SOPInstanceUID


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_a_bad_strength_option_exits_2_with_one_line(
    tmp_path: Path, model: Path, value: str
) -> None:
    result = run_enhance(
        str(RG1), "--output", str(tmp_path / "o"), "--model", str(model), "--strength", value,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dicom-node: error: --strength: {float(value)} is out of range; expected 0 to 1."
    ]
    assert not (tmp_path / "o").exists()
