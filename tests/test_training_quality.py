"""Image-quality measures (training.quality) and detail retention (training.detail)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from training import detail
from training.degrade import Degradation, degrade
from training.quality import (
    RegionScorer,
    gradient_similarity,
    hf_power,
    hf_power_ratio,
    period2_amplitude,
    period2_peak,
    region_masks,
)


def _smooth(shape: tuple[int, int], seed: int, sigma: float = 6.0) -> np.ndarray:
    """A smooth random image in [0.3, 0.7]."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return 0.3 + 0.4 * (field - field.min()) / np.ptp(field)


def _chest(rows: int = 320, cols: int = 288) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chest-like MONOCHROME2 phantom: bright body, two dark lungs, a bright mediastinum.

    Returns the image, the mask of the two lung ellipses and the mask of the
    mediastinum and the body below the lungs (dense).
    """
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    image = np.zeros((rows, cols))  # air around the body
    body = ((y - rows * 0.5) / (rows * 0.48)) ** 2 + ((x - cols * 0.5) / (cols * 0.46)) ** 2 <= 1
    image[body] = 0.7
    lungs = np.zeros((rows, cols), dtype=bool)
    for centre in (0.3, 0.7):
        lungs |= ((y - rows * 0.42) / (rows * 0.28)) ** 2 + (
            (x - cols * centre) / (cols * 0.15)
        ) ** 2 <= 1
    image[lungs] = 0.25
    mediastinum = body & ~lungs & (np.abs(x - cols * 0.5) < cols * 0.08)
    image[mediastinum] = 0.85
    texture = ndimage.gaussian_filter(np.random.default_rng(3).normal(0, 0.05, image.shape), 0.7)
    dense = body & ~lungs & ((y > rows * 0.72) | mediastinum)
    return np.clip(image + texture, 0, 1), lungs, dense


# --------------------------------------------------------------------------- period 2


def test_period2_peak_finds_a_faint_row_pattern() -> None:
    # A 512×512 image with residual noise (SD 0.01), as a denoised output might have.
    rng = np.random.default_rng(0)
    image = _smooth((512, 512), 1) + rng.normal(0, 0.01, (512, 512))
    rows = 0.002 * (-1.0) ** np.arange(512)[:, None] * np.ones((1, 512))
    striped = period2_peak(image + rows)
    assert striped["rows"] > 50 and striped["max"] == striped["rows"]
    assert striped["columns"] < 3 and striped["diagonal"] < 3
    assert period2_peak(image)["max"] < 3
    assert period2_amplitude(image + rows)["rows"] == pytest.approx(0.002, abs=2e-4)


def test_period2_peak_of_white_noise_is_about_one() -> None:
    values = [
        period2_peak(np.random.default_rng(seed).normal(0.5, 0.05, (256, 256)))["max"]
        for seed in range(6)
    ]
    assert 0.5 < float(np.mean(values)) < 3


# --------------------------------------------------------------------------- HF, GMS


def test_hf_power_ratio_sees_blur_and_noise() -> None:
    image = _smooth((192, 192), 2, sigma=1.0)
    assert hf_power_ratio(image, image) == pytest.approx(1.0)
    assert hf_power_ratio(ndimage.gaussian_filter(image, 1.5), image) < 0.2
    noisy = image + np.random.default_rng(0).normal(0, 0.02, image.shape)
    assert hf_power_ratio(noisy, image) > 1.2
    assert hf_power(noisy) / hf_power(image) == pytest.approx(hf_power_ratio(noisy, image))
    with pytest.raises(ValueError, match="Shapes differ"):
        hf_power_ratio(image, image[:64])


def test_gradient_similarity_is_one_for_the_same_edges() -> None:
    image = _smooth((128, 128), 4, sigma=2.0)
    assert gradient_similarity(image, image) == {"gms": 1.0, "gmsd": 0.0}
    blurred = gradient_similarity(ndimage.gaussian_filter(image, 3.0), image)
    assert blurred["gms"] < 0.99 and blurred["gmsd"] > 0


# --------------------------------------------------------------------------- regions


def test_region_split_finds_lungs_and_dense_tissue() -> None:
    image, lungs, dense = _chest()
    masks = region_masks(image)
    assert masks.lung.sum() > 1000 and masks.dense.sum() > 1000
    assert not (masks.lung & masks.dense).any()
    # The lung region lies in the lungs, the dense region in the bright tissue.
    assert (masks.lung & lungs).sum() / masks.lung.sum() > 0.9
    assert (masks.dense & lungs).sum() == 0
    assert (masks.dense & dense).sum() / masks.dense.sum() > 0.5
    assert image[masks.lung].mean() < 0.35 < 0.6 < image[masks.dense].mean()
    # Nothing in the border (air, labels) and no clipped pixel.
    border = int(0.1 * image.shape[0])
    assert not masks.lung[:border].any() and not masks.dense[-border:].any()
    with pytest.raises(ValueError, match="percentiles"):
        region_masks(image, 70, 60)


def test_region_scorer_measures_noise_left_and_texture() -> None:
    image, _, _ = _chest()
    noisy = image + np.random.default_rng(1).normal(0, 0.03, image.shape)
    scorer = RegionScorer(image, noisy)
    same = scorer.score(noisy)
    assert same["lung_residual"] == pytest.approx(1.0) and same["dense_residual"] == 1.0
    perfect = scorer.score(image)
    assert perfect["lung_residual"] == 0.0 and perfect["lung_hf"] == pytest.approx(1.0)
    # Removing 80 % of the noise leaves 0.2 of it in both regions.
    partly = scorer.score(image + 0.2 * (noisy - image))
    assert partly["lung_residual"] == pytest.approx(0.2) and partly["dense_residual"] == (
        pytest.approx(0.2)
    )
    waxy = scorer.score(ndimage.gaussian_filter(noisy, 3.0))
    assert waxy["lung_hf"] < 0.5 and waxy["dense_hf"] < 0.5
    assert same["lung_hf"] > 1.5  # the noise adds fine power
    # The identity setting: the input is the reference, so the residual ratio is undefined.
    assert math.isnan(RegionScorer(image, image).score(noisy)["dense_residual"])


# --------------------------------------------------------------------------- detail retention


def _scene() -> tuple[np.ndarray, list[detail.Placement]]:
    clean = _smooth((448, 448), 5)
    placements = detail.place_inserts(clean, detail.DEFAULT_INSERTS, np.random.default_rng(2))
    return clean, placements


def test_inserts_have_the_right_size_and_stay_inside() -> None:
    clean, placements = _scene()
    assert len(placements) == len(detail.DEFAULT_INSERTS)  # 49 cells, 21 inserts
    again = detail.place_inserts(clean, detail.DEFAULT_INSERTS, np.random.default_rng(2))
    assert again == placements
    for p in placements:
        assert 0.1 * 448 <= p.row <= 0.9 * 448 and 0.1 * 448 <= p.col <= 0.9 * 448
        area = detail.coverage(p).sum()
        if p.insert.kind is detail.InsertKind.DISC:
            assert area == pytest.approx(math.pi * p.insert.size**2 / 4, rel=0.02)
        else:
            assert area == pytest.approx(p.insert.size * detail.LINE_LENGTH, rel=0.05)
    cells = {(p.row, p.col) for p in placements}
    assert len(cells) == len(placements)
    inserted = detail.add_inserts(clean, placements)
    assert float((inserted - clean).sum()) == pytest.approx(
        sum(p.insert.contrast * detail.coverage(p).sum() for p in placements), rel=1e-4
    )
    with pytest.raises(ValueError, match="contrast"):
        detail.Insert(detail.InsertKind.DISC, 8, 0.0)


def test_retained_contrast_of_an_identity_and_a_blurring_restorer() -> None:
    clean, placements = _scene()
    inserted = detail.add_inserts(clean, placements)
    for p in placements:
        # A perfect restorer gives back the clean insert: exactly 1.
        assert detail.retained_contrast(p, inserted, clean) == pytest.approx(1.0), p.insert.label
    # The identity restorer on inputs that are noisy but not blurred: about 1.
    params = Degradation(0.002, 2e-5, 0.0, bits=8)
    without = degrade(clean, params, 11)
    with_inserts = degrade(inserted, params, 11)
    for p in placements:
        kept = detail.retained_contrast(p, with_inserts, without)
        assert kept == pytest.approx(1.0, abs=0.15), p.insert.label

    def heavy_blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, 3.0)

    blurred_with, blurred_without = heavy_blur(with_inserts), heavy_blur(without)
    lines = [p for p in placements if p.insert.kind is detail.InsertKind.LINE]
    for p in lines:
        kept = detail.retained_contrast(p, blurred_with, blurred_without)
        if p.insert.size in (1.0, 2.0):
            assert kept < 0.4, p.insert.label
        assert kept < 0.6, p.insert.label
    # A restorer that adds nothing and removes nothing (same output) retains nothing.
    assert detail.retained_contrast(lines[0], without, without) == 0.0


def test_a_blurred_input_keeps_less_of_thin_lines_than_of_large_discs() -> None:
    # The template is the clean insert: the degradation's blur (0.8 px) alone
    # takes contrast from 1-px lines, hardly any from 16-px discs.
    clean, placements = _scene()
    params = Degradation(0.002, 2e-5, 0.8, bits=8)
    without = degrade(clean, params, 11)
    with_inserts = degrade(detail.add_inserts(clean, placements), params, 11)
    kept = {p.insert: detail.retained_contrast(p, with_inserts, without) for p in placements}
    thin = [v for k, v in kept.items() if k.kind is detail.InsertKind.LINE and k.size == 1.0]
    discs = [v for k, v in kept.items() if k.kind is detail.InsertKind.DISC and k.size == 16.0]
    assert len(thin) == len(detail.LINE_CONTRASTS) and len(discs) == len(detail.DISC_CONTRASTS)
    for value in thin:
        assert 0.4 < value < 0.75
    for value in discs:
        assert value == pytest.approx(1.0, abs=0.07)
    # Without noise the same holds exactly: the blur alone sets the number.
    blur = 0.8

    def blurred(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, blur, mode="reflect", truncate=4.0)

    inserted = blurred(detail.add_inserts(clean, placements))
    background = blurred(clean)
    for p in placements:
        value = detail.retained_contrast(p, inserted, background)
        if p.insert.kind is detail.InsertKind.LINE and p.insert.size == 1.0:
            assert value < 0.75, p.insert.label
        if p.insert.kind is detail.InsertKind.DISC and p.insert.size == 16.0:
            assert value == pytest.approx(1.0, abs=0.06), p.insert.label
        assert value < 1.0, p.insert.label


def test_cnr_is_contrast_over_noise() -> None:
    clean = _smooth((256, 256), 6)
    disc = detail.Placement(detail.Insert(detail.InsertKind.DISC, 16, 0.04), 128, 128)
    noise = np.random.default_rng(3).normal(0, 0.01, clean.shape)
    restored = detail.add_inserts(clean, [disc]) + noise
    assert detail.cnr(disc, restored, clean) == pytest.approx(0.04 / 0.01, rel=0.12)
    # Half the noise, twice the CNR; a noiseless output has no defined CNR.
    half = detail.add_inserts(clean, [disc]) + noise / 2
    assert detail.cnr(disc, half, clean) == pytest.approx(
        2 * detail.cnr(disc, restored, clean), rel=0.05
    )
    assert math.isnan(detail.cnr(disc, detail.add_inserts(clean, [disc]), clean))
    core, ring = detail.masks(disc)
    assert core.sum() == pytest.approx(math.pi * 64, rel=0.1) and not (core & ring).any()
