"""The unet_256 generator, its residual wrapper and the 70×70 PatchGAN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dicom_node.tiling import crop, pad_to_multiple
from training.networks import (
    SIZE_MULTIPLE,
    GeneratorConfig,
    PatchDiscriminator,
    ResidualEnhancer,
    UnetGenerator,
    apply_spectral_norm,
    init_generator,
    init_weights,
)
from training.quality import period2_amplitude, period2_peak


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_unet_256_has_eight_levels_and_keeps_the_shape() -> None:
    unet = UnetGenerator(1, 1, ngf=4)
    assert len(unet.down) == 8 and len(unet.up) == 8
    convs = [m for block in unet.down for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 32, 32]
    assert all(c.stride == (2, 2) and c.kernel_size == (4, 4) for c in convs)
    # No transposed convolution anywhere: the decoder is conv 3×3 + bilinear ×2.
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in unet.modules())
    ups = [m for m in unet.up.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 8 and all(u.mode == "bilinear" for u in ups)
    out = unet(torch.rand(2, 1, 256, 512) * 2 - 1)
    assert out.shape == (2, 1, 256, 512)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize(("rows", "cols"), [(300, 517), (257, 255), (31, 700)])
def test_odd_sizes_are_padded_to_multiples_and_cropped_back(rows: int, cols: int) -> None:
    # Training, evaluation and the node share one padding function: dicom_node.tiling.
    model = ResidualEnhancer(GeneratorConfig(ngf=4)).eval()
    image = np.random.default_rng(0).random((rows, cols), dtype=np.float32)
    padded, pad = pad_to_multiple(image, SIZE_MULTIPLE)
    assert padded.shape[-2] % SIZE_MULTIPLE == 0 and padded.shape[-1] % SIZE_MULTIPLE == 0
    assert padded.shape[-2] - rows < SIZE_MULTIPLE and padded.shape[-1] - cols < SIZE_MULTIPLE
    np.testing.assert_array_equal(crop(padded, pad), image)
    with torch.no_grad():
        out = crop(model(torch.from_numpy(padded)[None, None])[0, 0].numpy(), pad)
    assert out.shape == (rows, cols)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_no_normalisation_no_dropout_so_train_and_eval_agree() -> None:
    model = ResidualEnhancer(GeneratorConfig(ngf=4, norm="none"))
    kinds = {type(m) for m in model.modules()}
    assert not kinds & {nn.Dropout, nn.BatchNorm2d, nn.InstanceNorm2d}
    x = torch.rand(2, 1, 256, 256)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
        again = model(x)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)
    torch.testing.assert_close(eval_out, again, rtol=0, atol=0)
    # Without normalisation each image of a batch is processed independently.
    with torch.no_grad():
        alone = model(x[:1])
    torch.testing.assert_close(alone, eval_out[:1], rtol=1e-5, atol=1e-6)


def test_instance_norm_remains_an_option() -> None:
    model = ResidualEnhancer(GeneratorConfig(ngf=4, norm="instance"))
    assert any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())
    assert model(torch.rand(1, 1, 256, 256)).shape == (1, 1, 256, 256)


def test_residual_output_is_clamped_and_starts_near_identity() -> None:
    model = ResidualEnhancer(GeneratorConfig(ngf=8))
    init_generator(model)
    x = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        out = model(x)
    assert float((out - x).abs().mean()) < 0.05
    with torch.no_grad():
        model.unet.head[-2].conv.bias.fill_(5.0)  # push the residual to +1 everywhere
        saturated = model(x)
    assert float(saturated.max()) == 1.0 and float(saturated.min()) >= 0.0


def test_kaiming_initialisation_keeps_deep_activations_alive() -> None:
    unet = UnetGenerator(1, 1, ngf=8)

    def deepest_std() -> float:
        h = torch.rand(1, 1, 256, 256) * 2 - 1
        with torch.no_grad():
            for block in unet.down:
                h = block(h)
        return float(h.std())

    init_weights(unet, "normal")
    vanishing = deepest_std()
    init_weights(unet, "kaiming")
    assert deepest_std() > 100 * vanishing
    with pytest.raises(ValueError, match="scheme"):
        init_weights(unet, "xavier")


def test_patchgan_scores_70x70_patches() -> None:
    # Without InstanceNorm (whose statistics are global) the receptive field shows.
    disc = PatchDiscriminator(ndf=8, norm="none")
    condition = torch.rand(1, 1, 256, 256, requires_grad=True)
    image = torch.rand(1, 1, 256, 256)
    logits = disc(condition, image)
    assert logits.shape == (1, 1, 30, 30)
    logits[0, 0, 15, 15].backward()
    grad = condition.grad
    assert grad is not None
    rows = torch.nonzero(grad[0, 0].abs().sum(dim=1)).flatten()
    cols = torch.nonzero(grad[0, 0].abs().sum(dim=0)).flatten()
    assert int(rows[-1] - rows[0]) + 1 == 70
    assert int(cols[-1] - cols[0]) + 1 == 70
    assert PatchDiscriminator(ndf=8)(condition, image).shape == (1, 1, 30, 30)


def test_configuration_is_validated_and_round_trips() -> None:
    config = GeneratorConfig(ngf=24, norm="none", residual_scale=0.5)
    assert GeneratorConfig.from_dict(config.as_dict()) == config
    assert config.as_dict()["topology"] == "unet_256"
    with pytest.raises(ValueError, match="norm"):
        GeneratorConfig(norm="batch")
    with pytest.raises(ValueError, match="ngf"):
        GeneratorConfig(ngf=0)
    with pytest.raises(TypeError, match="ngf"):
        UnetGenerator(ngf=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head"):
        GeneratorConfig(head=0)
    assert GeneratorConfig.from_dict({"ngf": 8, "norm": "none"}).head == 8


def test_spectral_norm_wraps_every_discriminator_convolution() -> None:
    disc = PatchDiscriminator(ndf=4)
    apply_spectral_norm(disc)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(hasattr(c, "parametrizations") for c in convs)
    assert disc(torch.rand(1, 1, 256, 256), torch.rand(1, 1, 256, 256)).shape == (1, 1, 30, 30)


def _random_generators() -> list[ResidualEnhancer]:
    """Untrained generators with different seeds and residual scales (no period-2 bias)."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = ResidualEnhancer(GeneratorConfig(ngf=8, residual_scale=1.0))
        init_weights(model, "kaiming")  # full-size weights: the artefact would be strong
        models.append(model.eval())
    return models


def _run(model: ResidualEnhancer, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(image.astype(np.float32))[None, None])[0, 0].numpy()


@pytest.mark.parametrize("level", [0.2, 0.5, 0.8])
def test_flat_images_stay_free_of_period_2_patterns(level: float) -> None:
    # A transposed-convolution decoder turns a flat image into a checkerboard; the
    # resize-convolution decoder cannot (its upsampling has zero gain at period 2).
    flat = np.full((512, 512), level, dtype=np.float32)
    for model in _random_generators():
        out = _run(model, flat)
        # 1e-5 is 1/400 of an 8-bit step and below a 16-bit step (1.5e-5).
        assert period2_amplitude(out[16:-16, 16:-16])["max"] < 1e-5


def test_transposed_convolution_would_fail_the_flat_check() -> None:
    # The metric is sensitive: the old decoder layer shows its pattern at once.
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 1, kernel_size=4, stride=2, padding=1)
    with torch.no_grad():
        out = layer(torch.ones(1, 4, 128, 128))[0, 0].numpy()
    assert period2_amplitude(out[16:-16, 16:-16])["max"] > 1e-3


def test_noise_keeps_its_period_2_power_at_initialisation() -> None:
    # The architecture alone, as training starts it (init_generator): output power at
    # the period-2 frequencies against the input's, on pure noise, at most 2×. The
    # trained model gets the same check through the node in test_bundled_model_quality.
    rng = np.random.default_rng(0)
    ratios = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = ResidualEnhancer(GeneratorConfig(ngf=8))
        init_generator(model)
        model.eval()
        noise = np.clip(0.5 + 0.05 * rng.standard_normal((512, 512)), 0, 1).astype(np.float32)
        out = _run(model, noise)
        ratios.append(period2_peak(out)["max"] / period2_peak(noise)["max"])
    assert max(ratios) <= 2.0, ratios


@pytest.mark.parametrize("position", ["border", "middle"])
def test_one_pixel_lines_do_not_ring(position: str) -> None:
    # A 1-px bright line on a flat background, at the image border or in the
    # middle: the untrained generator (close to identity) must not add a
    # checkered or ringing strip beside it; reflection padding keeps the
    # border line from being treated differently from the middle one.
    torch.manual_seed(0)
    model = ResidualEnhancer(GeneratorConfig(ngf=8))
    init_generator(model)
    model.eval()
    image = np.full((256, 256), 0.4, dtype=np.float32)
    column = 0 if position == "border" else 128
    image[:, column] = 0.6
    out = _run(model, image)
    change = out - image
    beside = change[32:-32, column + 2 : column + 12] if column == 0 else change[32:-32, 118:126]
    # Along the line the neighbours' change is constant: no alternation from row to
    # row, nor a checkerboard (a profile across the columns is allowed).
    amplitude = period2_amplitude(beside)
    assert amplitude["rows"] < 1e-5 and amplitude["diagonal"] < 1e-5
    # And the line itself keeps most of its contrast.
    contrast = out[32:-32, column].mean() - out[32:-32, column + 5].mean()
    assert contrast > 0.8 * 0.2


def test_training_mode_clamps_values_but_keeps_a_gradient_outside_the_range() -> None:
    import torch

    from training.networks import GeneratorConfig, ResidualEnhancer

    model = ResidualEnhancer(GeneratorConfig(ngf=4))
    # A residual branch that pushes every pixel far out of [0, 1] without saturating.
    model.unet = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.unet.weight.fill_(5.0)
        model.unet.bias.fill_(3.0)
    image = torch.full((1, 1, 8, 8), 0.9)
    model.train()
    out = model(image)
    assert float(out.detach().max()) == 1.0 == float(out.detach().min())  # clamped values
    torch.nn.functional.l1_loss(out, torch.full_like(out, 0.5)).backward()
    assert model.unet.bias.grad is not None and float(model.unet.bias.grad) > 0  # it can come back
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(image), out.detach())  # the same values at inference
