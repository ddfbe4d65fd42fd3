"""The unet_256 generator, its residual wrapper and the 70×70 PatchGAN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.networks import (
    SIZE_MULTIPLE,
    GeneratorConfig,
    PatchDiscriminator,
    ResidualEnhancer,
    UnetGenerator,
    init_generator,
    init_weights,
    pad_to_multiple,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_unet_256_has_eight_levels_and_keeps_the_shape() -> None:
    unet = UnetGenerator(1, 1, ngf=4)
    assert len(unet.down) == 8 and len(unet.up) == 8
    convs = [m for block in unet.down for m in block if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 32, 32]
    assert all(c.stride == (2, 2) and c.kernel_size == (4, 4) for c in convs)
    out = unet(torch.rand(2, 1, 256, 512) * 2 - 1)
    assert out.shape == (2, 1, 256, 512)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize(("rows", "cols"), [(300, 517), (257, 255), (31, 700)])
def test_odd_sizes_are_padded_to_multiples_and_cropped_back(rows: int, cols: int) -> None:
    model = ResidualEnhancer(GeneratorConfig(ngf=4)).eval()
    image = torch.rand(1, 1, rows, cols)
    padded, size = pad_to_multiple(image)
    assert size == (rows, cols)
    assert padded.shape[-2] % SIZE_MULTIPLE == 0 and padded.shape[-1] % SIZE_MULTIPLE == 0
    assert padded.shape[-2] - rows < SIZE_MULTIPLE and padded.shape[-1] - cols < SIZE_MULTIPLE
    torch.testing.assert_close(padded[..., :rows, :cols], image)
    with torch.no_grad():
        out = model(padded)[..., :rows, :cols]
    assert out.shape == (1, 1, rows, cols)
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
        model.unet.up[-1][1].bias.fill_(5.0)  # push the residual to +1 everywhere
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
    with pytest.raises(ValueError, match="2×2"):
        pad_to_multiple(torch.zeros(1, 1, 1, 40))
