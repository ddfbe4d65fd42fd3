"""The degradation model: determinism, noise statistics, each step, validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.degrade import (
    Degradation,
    DegradationRange,
    correlated_noise,
    degrade,
    degrade_pair,
    expected_noise_variance,
    smooth_field,
)

CLEAN = Degradation(noise_a=0.0, noise_b=0.0, blur_sigma=0.0)


def _phantom(rows: int = 96, cols: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    return (0.2 + 0.6 * (x / cols) * (y / rows) + 0.1 * (x > cols // 2)).astype(np.float32)


def test_same_seed_same_result_and_other_seed_differs() -> None:
    image = _phantom()
    params = Degradation(
        noise_a=0.002,
        noise_b=2e-5,
        blur_sigma=0.8,
        downsample=True,
        gamma=1.1,
        offset=0.03,
        bits=12,
    )
    first = degrade(image, params, 7)
    again = degrade(image, params, 7)
    other = degrade(image, params, 8)
    assert first.dtype == np.float32 and first.shape == image.shape
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_generator_seed_is_accepted_and_advances() -> None:
    rng = np.random.default_rng(3)
    image = _phantom()
    params = Degradation()
    assert not np.array_equal(degrade(image, params, rng), degrade(image, params, rng))


@pytest.mark.parametrize(("a", "b"), [(0.002, 2e-5), (0.005, 1e-4), (0.0005, 1e-6)])
def test_noise_variance_follows_a_x_plus_b(a: float, b: float) -> None:
    params = Degradation(noise_a=a, noise_b=b, blur_sigma=0.0)
    levels = np.array([0.15, 0.3, 0.5, 0.7, 0.85])
    measured = []
    for k, level in enumerate(levels):
        flat = np.full((256, 256), level, dtype=np.float32)
        noisy = degrade(flat, params, 100 + k).astype(np.float64)
        measured.append((noisy - level).var())
    measured_arr = np.array(measured)
    expected = expected_noise_variance(levels, params)
    # 65536 samples per level: the variance estimate is within ~1.5 % (3 sd).
    np.testing.assert_allclose(measured_arr, expected, rtol=0.04)
    slope, intercept = np.polyfit(levels, measured_arr, 1)
    assert slope == pytest.approx(a, rel=0.06)
    assert intercept == pytest.approx(b, abs=0.05 * a)


def test_noise_variance_survives_16_bit_quantisation() -> None:
    params = Degradation(noise_a=0.002, noise_b=2e-5, blur_sigma=0.0, bits=16)
    flat = np.full((256, 256), 0.4, dtype=np.float32)
    noisy = degrade(flat, params, 1).astype(np.float64)
    assert noisy.var() == pytest.approx(0.002 * 0.4 + 2e-5, rel=0.04)


def test_quantisation_to_source_bits() -> None:
    image = _phantom()
    for bits in (8, 12, 15):
        out = degrade(image, Degradation(bits=bits), 0).astype(np.float64)
        steps = out * (2**bits - 1)
        np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_blur_is_a_gaussian_of_the_given_sigma() -> None:
    image = _phantom()
    out = degrade(image, Degradation(noise_a=0.0, noise_b=0.0, blur_sigma=1.2), 0)
    expected = ndimage.gaussian_filter(image.astype(np.float64), 1.2, mode="reflect")
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(degrade(image, CLEAN, 0), image, atol=1e-7)


def test_downsampling_removes_the_finest_detail_but_keeps_the_mean() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32) * 0.5 + 0.25
    params = Degradation(noise_a=0.0, noise_b=0.0, blur_sigma=0.0, downsample=True)
    out = degrade(checker, params, 0)
    assert out.std() < 0.01
    assert out.mean() == pytest.approx(0.5, abs=1e-3)
    y, x = np.mgrid[0:65, 0:67]  # odd sizes are handled
    ramp = (0.2 + 0.5 * x / 67 + 0.2 * y / 65).astype(np.float32)
    out = degrade(ramp, params, 0)
    assert out.shape == ramp.shape
    assert np.abs(out - ramp)[2:-2, 2:-2].max() < 1e-4  # linear ramps survive


def test_exposure_gamma_and_smooth_offset() -> None:
    image = _phantom()
    gamma = degrade(image, Degradation(noise_a=0.0, noise_b=0.0, blur_sigma=0.0, gamma=1.2), 0)
    np.testing.assert_allclose(gamma, image.astype(np.float64) ** 1.2, atol=1e-6)
    params = Degradation(noise_a=0.0, noise_b=0.0, blur_sigma=0.0, offset=0.05)
    offset = degrade(image, params, 0).astype(np.float64) - image
    assert 0.01 < np.abs(offset).max() <= 0.05 + 1e-6
    # Low frequency: neighbouring pixels differ by far less than the amplitude.
    assert np.abs(np.diff(offset, axis=1)).max() < 0.005
    field = smooth_field((50, 70), np.random.default_rng(0))
    assert np.abs(field).max() == pytest.approx(1.0)


def test_range_sampling_is_deterministic_and_within_bounds() -> None:
    spec = DegradationRange(downsample_probability=0.5, exposure_probability=0.5)
    draws = [spec.sample(np.random.default_rng(i), bits=8) for i in range(200)]
    again = [spec.sample(np.random.default_rng(i), bits=8) for i in range(200)]
    assert draws == again
    assert all(0.0005 <= d.noise_a <= 0.005 and 1e-6 <= d.noise_b <= 1e-4 for d in draws)
    assert all(0.0 <= d.blur_sigma <= 1.5 and 0.8 <= d.gamma <= 1.2 for d in draws)
    assert all(d.bits == 8 for d in draws)
    assert 60 < sum(d.downsample for d in draws) < 140
    assert DegradationRange.from_dict(spec.as_dict()) == spec
    plain = DegradationRange().sample(np.random.default_rng(0))
    assert not plain.downsample and plain.gamma == 1.0 and plain.offset == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_a": -0.1}, "noise_a"),
        ({"noise_b": 1.0}, "noise_b"),
        ({"blur_sigma": 9.0}, "blur_sigma"),
        ({"gamma": 3.0}, "gamma"),
        ({"bits": 17}, "bits"),
        ({"noise_a": float("nan")}, "noise_a"),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Degradation(**kwargs)  # type: ignore[arg-type]


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        degrade(np.zeros((2, 3, 4)), Degradation(), 0)
    with pytest.raises(TypeError, match="Degradation"):
        degrade(np.zeros((4, 4)), {"noise_a": 0.1}, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        degrade(np.zeros((4, 4)), Degradation(), "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="low <= high"):
        DegradationRange(blur_sigma=(1.0, 0.5))


@pytest.mark.parametrize("correlation", [0.5, 1.0, 1.5])
def test_correlated_noise_keeps_unit_variance_and_correlates_neighbours(
    correlation: float,
) -> None:
    rng = np.random.default_rng(5)
    noise = correlated_noise((512, 512), correlation, rng)
    assert abs(noise.var() - 1.0) < 0.05
    neighbour = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    # Neighbour correlation of white noise filtered by the discrete Gaussian kernel k:
    # sum k[n] k[n+1] / sum k[n]² (about exp(-1 / (4 s²)) for wide kernels).
    radius = int(4 * correlation + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / correlation) ** 2)
    expected = float(np.sum(kernel[:-1] * kernel[1:]) / np.sum(kernel**2))
    assert neighbour == pytest.approx(expected, abs=0.03)
    white = correlated_noise((512, 512), 0.0, rng)
    assert abs(np.corrcoef(white[:, :-1].ravel(), white[:, 1:].ravel())[0, 1]) < 0.02


def test_correlated_degradation_keeps_the_per_pixel_variance() -> None:
    flat = np.full((256, 256), 0.5, dtype=np.float32)
    white = degrade(flat, Degradation(0.002, 2e-5, 0.0), 1).astype(np.float64)
    grainy = degrade(flat, Degradation(0.002, 2e-5, 0.0, noise_correlation=1.0), 1)
    expected = 0.002 * 0.5 + 2e-5
    assert white.var() == pytest.approx(expected, rel=0.08)
    assert grainy.astype(np.float64).var() == pytest.approx(expected, rel=0.15)

    # The grain is coarser: a 2×2 average keeps much more of the correlated noise.
    def binned_var(image: np.ndarray) -> float:
        return float(image.reshape(128, 2, 128, 2).mean(axis=(1, 3)).var())

    assert binned_var(grainy) > 2.5 * binned_var(white)
    assert "corr=1px" in Degradation(noise_correlation=1.0).label()


def test_identity_changes_nothing_but_quantisation() -> None:
    image = np.round(_phantom() * 255) / 255
    params = Degradation.identity(bits=8)
    assert params.is_identity and params.label() == "identity (clean input)"
    np.testing.assert_allclose(degrade(image, params, 3), image, atol=1e-6)
    low, reference = degrade_pair(image, params, 3)
    np.testing.assert_array_equal(low, reference)


def test_pairs_carry_the_exposure_change_in_the_reference_too() -> None:
    image = _phantom()
    params = Degradation(0.002, 2e-5, 0.8, gamma=1.2, offset=0.04, bits=12)
    low, reference = degrade_pair(image, params, 11)
    # The reference is the re-exposed clean image: the model is not asked to re-tone.
    assert float(np.abs(reference - image).mean()) > 0.01
    assert (
        float(
            np.abs(ndimage.gaussian_filter(low, 4) - ndimage.gaussian_filter(reference, 4)).mean()
        )
        < 0.005
    )
    np.testing.assert_array_equal(degrade_pair(image, params, 11)[0], low)


def test_identity_share_of_the_training_draws() -> None:
    rng = np.random.default_rng(0)
    draws = DegradationRange(identity_probability=0.25, noise_correlation=(0.0, 1.5))
    sample = [draws.sample(rng, bits=8) for _ in range(2000)]
    share = np.mean([d.is_identity for d in sample])
    assert share == pytest.approx(0.25, abs=0.03)
    correlations = [d.noise_correlation for d in sample if not d.is_identity]
    assert min(correlations) >= 0.0 and max(correlations) <= 1.5
    assert DegradationRange.from_dict(draws.as_dict()) == draws
    with pytest.raises(ValueError, match="identity_probability"):
        DegradationRange(identity_probability=1.5)


def test_faint_structures_go_into_input_and_reference_alike() -> None:
    from training.structures import STRUCTURE_CONTRAST, insert_faint_structures

    clean = np.full((128, 128), 0.5)
    with_structures = insert_faint_structures(clean, 4, np.random.default_rng(1))
    change = np.abs(with_structures - clean)
    # Faint: one structure is at most the largest contrast (overlaps add up);
    # thin or small: a minority of the pixels.
    for seed in range(10):
        one = insert_faint_structures(clean, 1, np.random.default_rng(seed)) - clean
        assert STRUCTURE_CONTRAST[0] - 1e-9 <= np.abs(one).max() <= STRUCTURE_CONTRAST[1] + 1e-9
    assert 0.0 < np.mean(change > 0.002) < 0.25
    # Deterministic for a given generator state.
    again = insert_faint_structures(clean, 4, np.random.default_rng(1))
    assert np.array_equal(with_structures, again)
    # In a training pair both images carry them: an identity draw with structures
    # gives input == reference != clean.
    params = Degradation(0.0, 0.0, 0.0, structures=3)
    noisy, reference = degrade_pair(clean, params, 7)
    assert np.array_equal(noisy, reference)
    assert not np.allclose(reference, clean)
    # The range draws them with the configured probability only.
    never = DegradationRange(structure_probability=0.0)
    always = DegradationRange(structure_probability=1.0)
    rng = np.random.default_rng(0)
    assert all(never.sample(rng).structures == 0 for _ in range(20))
    assert all(1 <= always.sample(rng).structures <= 4 for _ in range(20))
    assert DegradationRange.from_dict(always.as_dict()) == always
