"""The shipped default model: its metadata, hash and numbers match MODEL.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import dicom_node
from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata, file_sha256
from dicom_node.pixels import CONVENTION
from training.degrade import Degradation
from training.evaluate import INPUT, NLM, PIX2PIX
from training.export_metadata import read_metadata

BUNDLE = Path(dicom_node.__file__).resolve().parent / "bundled_model"
MODEL = BUNDLE / "cxr_pix2pix.onnx"
CARD = BUNDLE / "MODEL.md"
ACCEPTANCE = Degradation(noise_a=0.002, noise_b=2e-5, blur_sigma=0.8).label()


@pytest.fixture(scope="module")
def card() -> str:
    return CARD.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def props() -> dict[str, str]:
    return read_metadata(MODEL)


def test_model_is_small_and_its_hash_is_in_the_card(card: str) -> None:
    assert MODEL.stat().st_size < 20e6
    hashes = re.findall(r"SHA-256[^`]*`([0-9a-f]{64})`", card)
    assert hashes == [file_sha256(MODEL)]


def test_metadata_satisfies_the_node_and_matches_the_card(card: str, props: dict[str, str]) -> None:
    meta = ModelMetadata.from_props(props, MODEL, file_sha256(MODEL))
    assert props["pixel_convention"] == CONVENTION
    assert meta.size_multiple == 256
    assert f"`{meta.name}`" in card and f"`{meta.version}`" in card
    for key in (
        "training_data",
        "degradation",
        "metrics",
        "training_commit",
        "architecture",
        "created_at",
    ):
        assert props[key], key
    architecture = json.loads(props["architecture"])
    assert architecture["generator"]["norm"] == "none"
    assert architecture["generator"]["dropout"] is False
    assert f"ngf {architecture['generator']['ngf']}" in card
    training = json.loads(props["training"])
    assert f"--seed {training['seed']}" in card
    assert "dicom-node-train train" in card and "dicom-node-train export" in card


def test_card_table_is_the_measured_table_and_meets_the_bar(
    card: str, props: dict[str, str]
) -> None:
    results = json.loads(props["metrics"])["test"]["results"]
    assert ACCEPTANCE in results
    for setting, methods in results.items():
        for method, score in methods.items():
            row = f"| {setting} | {method} | {score['psnr']:.2f} ± {score['psnr_sd']:.2f} | "
            assert row in card, row
    bar = results[ACCEPTANCE]
    assert bar[PIX2PIX]["psnr"] >= bar[INPUT]["psnr"] + 3.0
    assert bar[PIX2PIX]["psnr"] >= bar[NLM]["psnr"] + 0.5
    assert bar[PIX2PIX]["ssim"] > bar[INPUT]["ssim"]
    assert bar[PIX2PIX]["ssim"] > bar[NLM]["ssim"]


def test_card_keeps_attributions_and_intended_use(card: str) -> None:
    for prefix in ("nih_", "mhh_", "tbx11k_", "covidcxr_", "rsna_", "wg04_"):
        assert f"`{prefix}`" in card, prefix
    for text in (
        "Wang et al",
        "10.6084/m9.figshare.12275009",
        "CC BY",
        "pydicom-data",
        "not for primary diagnosis",
    ):
        assert text in card, text


def test_shipped_model_runs_and_is_deterministic() -> None:
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:512] / 512.0
    image = np.clip(0.3 + 0.4 * x * y + rng.normal(0, 0.03, x.shape), 0, 1).astype(np.float32)
    batch = image[None, None]
    (first,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    (second,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    assert first.shape == batch.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert first.min() >= 0.0 and first.max() <= 1.0
    # It removes noise: the output is closer to the smooth image than the input.
    clean = np.clip(0.3 + 0.4 * x * y, 0, 1)
    assert np.abs(first[0, 0] - clean).mean() < 0.6 * np.abs(image - clean).mean()


def test_shipped_model_tiled_agrees_with_whole_image(rg1_path: Path) -> None:
    """The node's tiles (used above max_whole_pixels) change little of what the model does.

    The unet_256 generator sees its whole input, so tiles cannot agree
    exactly; the blend must keep the difference small against the model's own
    correction. Measured on the full RG1 (1024 px tiles, 128 px overlap):
    mean 0.00017 against a mean correction of 0.0031, max 0.0066.
    """
    from dataclasses import replace

    from dicom_node.config import ModelSettings
    from dicom_node.inference import Enhancer
    from dicom_node.pixels import read_any

    image = read_any(rg1_path).pixels[400:1424, 300:1324].astype(np.float32)
    settings = ModelSettings(path=MODEL, provider="cpu", warmup=False)
    whole, whole_timings = Enhancer(replace(settings, max_whole_pixels=10**8)).enhance(image)
    tiled, tiled_timings = Enhancer(
        replace(settings, max_whole_pixels=256 * 256, tile_size=512, tile_overlap=128)
    ).enhance(image)
    assert whole_timings.tiles == 1 and tiled_timings.tiles > 1
    correction = np.abs(whole - image).mean()
    difference = np.abs(tiled - whole)
    assert difference.mean() < 0.15 * correction
    assert difference.max() < 0.01  # about 2.5 steps of 8 bits
