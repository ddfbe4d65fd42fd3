"""ONNX export: the node's contract, dynamic shapes, metadata, the parity gate, fp16."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from scipy import ndimage

from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata, file_sha256
from dicom_node.pixels import CONVENTION
from training.checkpoint import load_generator
from training.cli import main
from training.degrade import Degradation
from training.errors import ExportError
from training.export import ExportSettings, export_checkpoint, to_onnx_model
from training.export_metadata import read_metadata
from training.networks import GeneratorConfig, ResidualEnhancer, init_generator
from training.parity import FP32_TOLERANCE, check_parity, parity_inputs
from training.sources import folder_records
from training.split import split_records
from training.train_config import TrainConfig
from training.trainer import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_run")
    for index in range(5):
        smooth = ndimage.gaussian_filter(np.random.default_rng(index).random((300, 260)), 5.0)
        smooth = (smooth - smooth.min()) / np.ptp(smooth)
        Image.fromarray(np.rint(smooth * 255).astype(np.uint8)).save(root / f"img_{index}.png")
    split = split_records(folder_records([root]), (0.6, 0.2, 0.2), seed=0)
    config = TrainConfig(
        epochs=1,
        epochs_decay=0,
        generator=GeneratorConfig(ngf=4),
        ndf=4,
        val_degradation=Degradation(),
    )
    train(config, split, root / "run", data_summary={"images": 5}, progress=False)
    return root / "run" / "best.pt"


def test_export_follows_the_node_contract(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.onnx"
    report = export_checkpoint(checkpoint, output, ExportSettings(name="tiny", version="0.1"))
    assert report.parity.passed and report.parity.max_difference <= FP32_TOLERANCE
    assert len(report.parity.differences) >= 4  # random shapes and the run's real test image
    assert report.sha256 == file_sha256(output)
    model = onnx.load(str(output))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert dims[1].dim_value == 1

    props = read_metadata(output)
    meta = ModelMetadata.from_props(props, output, report.sha256)
    assert (meta.name, meta.version, meta.size_multiple) == ("tiny", "0.1", 256)
    assert props["pixel_convention"] == CONVENTION
    for key in ("training_data", "degradation", "metrics", "architecture", "training", "export"):
        json.loads(props[key])
    assert json.loads(props["training_data"]) == {"images": 5}
    assert json.loads(props["architecture"])["generator"]["ngf"] == 4
    assert json.loads(props["degradation"])["validation"]["noise_a"] == 0.002
    assert "psnr" in json.loads(props["metrics"])["validation"]
    assert props["training_commit"]
    assert props["created_at"].endswith("+00:00")

    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    generator, _ = load_generator(checkpoint)
    for shape in [(1, 1, 256, 256), (2, 1, 512, 256), (1, 1, 256, 768)]:
        image = np.random.default_rng(1).random(shape, dtype=np.float32)
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: image})
        assert out.shape == shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        with torch.no_grad():
            expected = generator(torch.from_numpy(image)).numpy()
        np.testing.assert_allclose(out, expected, atol=FP32_TOLERANCE)


def test_parity_gate_detects_a_different_model() -> None:
    torch.manual_seed(0)
    first = ResidualEnhancer(GeneratorConfig(ngf=4))
    init_generator(first)
    second = ResidualEnhancer(GeneratorConfig(ngf=4))
    init_generator(second)
    model = to_onnx_model(first)
    inputs = parity_inputs([np.random.default_rng(0).random((300, 200), dtype=np.float32)])
    assert "real #1 512x256" in inputs
    assert check_parity(first, model, inputs, FP32_TOLERANCE).passed
    failed = check_parity(second, model, inputs, FP32_TOLERANCE)
    assert not failed.passed and failed.max_difference > FP32_TOLERANCE


def test_failed_gate_writes_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.export as export_module

    def tampered(generator: ResidualEnhancer, opset: int = 17) -> onnx.ModelProto:
        model = to_onnx_model(generator, opset)
        weights = next(i for i in model.graph.initializer if len(i.dims) == 4)
        array = onnx.numpy_helper.to_array(weights) + 0.5
        weights.CopyFrom(onnx.numpy_helper.from_array(array, weights.name))
        return model

    monkeypatch.setattr(export_module, "to_onnx_model", tampered)
    output = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="tolerance"):
        export_checkpoint(checkpoint, output)
    assert not output.exists()


def test_fp16_model_behind_the_same_gate(checkpoint: Path, tmp_path: Path) -> None:
    report = export_checkpoint(
        checkpoint, tmp_path / "fp32.onnx", fp16_output=tmp_path / "fp16.onnx"
    )
    assert report.fp16_parity is not None and report.fp16_parity.passed
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = read_metadata(tmp_path / "fp16.onnx")
    assert props["model_version"].endswith("-fp16")
    assert json.loads(props["export"])["fp16_parity"]["max_abs_difference"] <= 1e-2
    assert (tmp_path / "fp16.onnx").stat().st_size < 0.6 * (tmp_path / "fp32.onnx").stat().st_size


def test_cli_export_and_its_errors(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "cli.onnx"
    assert main(["export", str(checkpoint), "-o", str(output), "--version", "2.0"]) == 0
    assert "parity fp32" in capsys.readouterr().out
    assert read_metadata(output)["model_version"] == "2.0"
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(output)]) == 1
    assert capsys.readouterr().err.startswith("dicom-node-train: error:")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "junk.pt"), "-o", str(output)]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(checkpoint), "-o", str(output), "--opset", "13"])
    assert exit_info.value.code == 2


def test_calibrate_then_export_makes_the_node_noise_adaptive(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dicom_node.config import ModelSettings
    from dicom_node.inference import Enhancer
    from dicom_node.noise import NoiseCalibration

    run_dir = checkpoint.parent
    assert main(["calibrate", "--run-dir", str(run_dir)]) == 0
    calibration = json.loads((run_dir / "noise_calibration.json").read_text())
    assert 0 <= calibration["noise_floor"] < calibration["noise_full"]
    assert "noise floor" in capsys.readouterr().out
    output = tmp_path / "calibrated.onnx"
    assert (
        main(
            [
                "export",
                str(checkpoint),
                "-o",
                str(output),
                "--noise-calibration",
                str(run_dir / "noise_calibration.json"),
            ]
        )
        == 0
    )
    metadata = read_metadata(output)
    assert float(metadata["noise_floor"]) == calibration["noise_floor"]
    enhancer = Enhancer(ModelSettings(path=output, warmup=False))
    assert enhancer.metadata.noise_calibration == NoiseCalibration(
        calibration["noise_floor"], calibration["noise_full"]
    )
    # A missing or broken calibration file is a one-line error, and nothing is exported.
    (tmp_path / "broken.json").write_text("{}")
    assert (
        main(
            [
                "export",
                str(checkpoint),
                "-o",
                str(tmp_path / "no.onnx"),
                "--noise-calibration",
                str(tmp_path / "broken.json"),
            ]
        )
        == 1
    )
    assert capsys.readouterr().err.startswith("dicom-node-train: error:")
    assert not (tmp_path / "no.onnx").exists()


def test_calibration_refuses_levels_that_do_not_separate() -> None:
    from training.noise_calibration import CalibrationError, calibrate_noise

    rng = np.random.default_rng(0)
    images = [ndimage.gaussian_filter(rng.random((200, 200)), 3.0) for _ in range(3)]
    with pytest.raises(CalibrationError, match="not below"):
        calibrate_noise(images, settings=[Degradation(0.0, 0.0, 1.0)])
    with pytest.raises(CalibrationError, match="at least one"):
        calibrate_noise([])
    result = calibrate_noise(images)
    assert result["noise_floor"] < result["noise_full"]
