"""The onnxruntime session: model contract checks, providers, whole and tiled runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import make_smoothing_model

from dicom_node.config import ModelSettings
from dicom_node.errors import ModelError
from dicom_node.inference import Enhancer, get_enhancer


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_smoothing_model(tmp_path_factory.mktemp("model") / "smooth.onnx", size_multiple=32)


def test_loads_on_cpu_and_describes_itself(model_path: Path) -> None:
    enhancer = Enhancer(ModelSettings(path=model_path))
    info = enhancer.describe()
    assert info["provider"] == "CPUExecutionProvider"
    assert info["model_name"] == "test-smoother"
    assert info["model_version"] == "1.0"
    assert info["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert enhancer.metadata.short_hash == info["sha256"][:16]


def test_one_session_per_process_per_settings(model_path: Path) -> None:
    settings = ModelSettings(path=model_path)
    enhancer = get_enhancer(settings)
    assert get_enhancer(ModelSettings(path=model_path)) is enhancer  # equal settings: shared
    # Warm-up changes the session: its own, not the warmed-up one.
    assert get_enhancer(ModelSettings(path=model_path, warmup=False)) is not enhancer


def test_tiling_settings_are_not_served_a_session_made_for_others(model_path: Path) -> None:
    image = np.random.default_rng(3).random((600, 600), dtype=np.float32)
    whole = get_enhancer(ModelSettings(path=model_path, max_whole_pixels=10**8))
    assert whole.enhance(image)[1].tiles == 1
    tiled = get_enhancer(
        ModelSettings(path=model_path, max_whole_pixels=256 * 256, tile_size=256, tile_overlap=32)
    )
    assert tiled is not whole
    assert tiled.settings.tile_size == 256
    assert tiled.enhance(image)[1].tiles > 1
    other_overlap = get_enhancer(
        ModelSettings(path=model_path, max_whole_pixels=256 * 256, tile_size=256, tile_overlap=64)
    )
    assert other_overlap is not tiled and other_overlap.settings.tile_overlap == 64


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (31, 33), (255, 257), (300, 1000)])
def test_output_has_the_input_shape(model_path: Path, rows: int, cols: int) -> None:
    enhancer = get_enhancer(ModelSettings(path=model_path))
    image = np.random.default_rng(rows).random((rows, cols), dtype=np.float32)
    out, timings = enhancer.enhance(image)
    assert out.shape == (rows, cols) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert timings.tiles == 1
    assert timings.infer_ms is not None and timings.infer_ms > 0
    assert set(timings.as_dict()) == {"infer"}
    # The smoothing model really ran: the output differs from the input.
    if rows > 2 and cols > 2:
        assert np.abs(out - image).mean() > 1e-3


def test_deterministic(model_path: Path) -> None:
    enhancer = get_enhancer(ModelSettings(path=model_path))
    image = np.random.default_rng(7).random((700, 500), dtype=np.float32)
    first, _ = enhancer.enhance(image)
    second, _ = enhancer.enhance(image)
    np.testing.assert_array_equal(first, second)


def test_large_images_are_tiled_and_agree_with_whole(model_path: Path) -> None:
    settings = ModelSettings(
        path=model_path, tile_size=512, tile_overlap=64, max_whole_pixels=512 * 512
    )
    enhancer = Enhancer(settings)
    image = np.random.default_rng(11).random((1100, 900), dtype=np.float32)
    tiled, timings = enhancer.enhance(image)
    assert timings.tiles > 1
    whole, whole_timings = Enhancer(
        ModelSettings(path=model_path, tile_size=512, tile_overlap=64, max_whole_pixels=10**8)
    ).enhance(image)
    assert whole_timings.tiles == 1
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Enhancer(ModelSettings(path=tmp_path / "nope.onnx"))


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="cannot be loaded"):
        Enhancer(ModelSettings(path=bad))


def test_wrong_convention_is_refused(tmp_path: Path) -> None:
    path = make_smoothing_model(tmp_path / "m.onnx", convention="uint8-0-255")
    with pytest.raises(ModelError, match="pixel convention 'uint8-0-255'"):
        Enhancer(ModelSettings(path=path))


def test_missing_metadata_is_refused(tmp_path: Path) -> None:
    path = make_smoothing_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "model_version"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="lacks the metadata model_version"):
        Enhancer(ModelSettings(path=path))


def test_wrong_io_names_are_refused(tmp_path: Path) -> None:
    path = make_smoothing_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.output[0].name = "out"
    model.graph.node[-1].output[0] = "out"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="must have an input 'image' and an output 'enhanced'"):
        Enhancer(ModelSettings(path=path))


def test_cuda_provider_request(model_path: Path) -> None:
    import onnxruntime as ort

    settings = ModelSettings(path=model_path, provider="cuda")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert Enhancer(settings).provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(ModelError, match="no CUDA execution provider"):
            Enhancer(settings)
