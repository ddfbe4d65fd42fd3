"""The training loop: steps lower the loss, a tiny run writes and resumes, the CLI fails cleanly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from scipy import ndimage

from training.checkpoint import load_generator
from training.cli import main
from training.data import CropDataset, load_images, record_paths
from training.degrade import Degradation, DegradationRange
from training.networks import GeneratorConfig, PatchDiscriminator, ResidualEnhancer, init_generator
from training.sources import folder_records
from training.split import split_records
from training.step import lr_factor, train_step
from training.train_config import TrainConfig
from training.trainer import train
from training.validation import selection_score, spread


def _write_images(folder: Path, count: int, size: tuple[int, int] = (300, 280)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rng = np.random.default_rng(index)
        smooth = ndimage.gaussian_filter(rng.random(size), 6.0)
        smooth = (smooth - smooth.min()) / np.ptp(smooth)
        path = folder / f"cxr_{index:02d}.png"
        # 12-bit values in a 16-bit PNG, declared by its sBIT chunk.
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([12]))
        values = np.rint((0.1 + 0.8 * smooth) * 65535 / 16).astype(np.uint16)
        Image.fromarray(values).save(path, pnginfo=info)
        paths.append(path)
    return paths


def test_a_few_steps_on_a_fixed_batch_lower_the_l1_loss() -> None:
    torch.manual_seed(0)
    clean = torch.from_numpy(
        ndimage.gaussian_filter(np.random.default_rng(0).random((1, 1, 256, 256)), (0, 0, 4, 4))
    ).float()
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    noisy = (clean + 0.05 * torch.randn_like(clean)).clamp(0, 1)
    generator = ResidualEnhancer(GeneratorConfig(ngf=4))
    init_generator(generator)
    discriminator = PatchDiscriminator(ndf=4)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    losses = [
        train_step(generator, discriminator, opt_g, opt_d, noisy, clean, 100.0) for _ in range(20)
    ]
    l1 = [step["loss_l1"] for step in losses]
    first, last = l1[0], l1[-1]
    assert last < 0.95 * first
    assert np.mean(l1[-5:]) < np.mean(l1[:5])
    assert all(np.isfinite(v) for step in losses for v in step.values())
    assert losses[-1]["loss_d"] > 0 and losses[-1]["loss_gan"] > 0
    # The same step without a discriminator (L1 only) also learns.
    l1_losses = [train_step(generator, None, opt_g, None, noisy, clean, 100.0) for _ in range(5)]
    assert l1_losses[-1]["loss_gan"] == 0.0 and l1_losses[-1]["loss_l1"] < first
    # LSGAN with a spectrally normalised discriminator trains too.
    from training.networks import apply_spectral_norm

    apply_spectral_norm(discriminator)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    ls = [
        train_step(generator, discriminator, opt_g, opt_d, noisy, clean, 100.0, gan_loss="lsgan")
        for _ in range(3)
    ]
    assert all(np.isfinite(v) for step in ls for v in step.values())
    assert ls[-1]["loss_d"] > 0


def test_training_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="lr_d"):
        TrainConfig(lr_d=2.0)
    with pytest.raises(ValueError, match="multiple of 256"):
        TrainConfig(crop=384)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="multiple of 256"):
        TrainConfig(crop_sizes=(256, 300))
    with pytest.raises(ValueError, match="gan_loss"):
        TrainConfig(gan_loss="wgan")
    with pytest.raises(ValueError, match="select"):
        TrainConfig(select="ssim")


def test_crop_sizes_alternate_by_epoch_and_cover_the_same_pixels() -> None:
    config = TrainConfig(crop=256, crop_sizes=(256, 256, 512), crops_per_image=8)
    assert [config.crop_for(e) for e in range(6)] == [256, 256, 512, 256, 256, 512]
    assert config.items_for(0, 10) == 80 and config.items_for(2, 10) == 20
    assert TrainConfig(crops_per_image=3).crop_for(5) == 256


def test_texture_selection_keeps_psnr_within_the_allowed_loss() -> None:
    floor = 36.0
    smooth = {"psnr": 36.5, "hf_ratio": 0.5}
    textured = {"psnr": 36.1, "hf_ratio": 0.9}
    too_costly = {"psnr": 35.5, "hf_ratio": 1.0}
    assert selection_score(textured, "texture", floor) > selection_score(smooth, "texture", floor)
    assert selection_score(too_costly, "texture", floor) == -np.inf
    assert selection_score(smooth, "psnr", floor) > selection_score(textured, "psnr", floor)
    # Over-sharpened (ratio above 1) counts as far from the reference as over-smoothed.
    assert selection_score({"psnr": 37, "hf_ratio": 2.0}, "texture", floor) == pytest.approx(
        selection_score({"psnr": 37, "hf_ratio": 0.5}, "texture", floor)
    )
    assert spread(list(range(10)), 3) == [0, 4, 9] and spread([1, 2], 0) == [1, 2]


def test_learning_rate_is_constant_then_decays_linearly() -> None:
    factors = [lr_factor(epoch, 3, 3) for epoch in range(6)]
    assert factors[:3] == [1.0, 1.0, 1.0]
    assert factors[3] > factors[4] > factors[5] > 0.0
    assert factors[3] - factors[4] == pytest.approx(factors[4] - factors[5])


def test_crops_are_native_resolution_deterministic_and_keep_16_bit(tmp_path: Path) -> None:
    _write_images(tmp_path, 2)
    records = folder_records([tmp_path])
    images = load_images(record_paths(records))
    assert {im.bits_stored for im in images.values()} == {12}
    dataset = CropDataset(records, images, 256, DegradationRange(), length=4, seed=5)
    low, high = dataset[1]
    again_low, _ = dataset[1]
    assert low.shape == high.shape == (1, 256, 256)
    torch.testing.assert_close(low, again_low, rtol=0, atol=0)
    # Reference values are the 12-bit source values, not 8-bit truncations.
    steps = high.numpy() * 4095
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)
    assert len(np.unique(np.rint(steps))) > 256
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][0], low)


def test_tiny_run_writes_logs_checkpoints_and_resumes(tmp_path: Path) -> None:
    _write_images(tmp_path / "data", 7)
    records = folder_records([tmp_path / "data"])
    split = split_records(records, (0.6, 0.2, 0.2), seed=0)
    config = TrainConfig(
        epochs=1,
        epochs_decay=1,
        batch_size=2,
        crop=256,
        generator=GeneratorConfig(ngf=4),
        ndf=4,
        lr_d=1e-4,
        val_degradation=Degradation(0.002, 2e-5, 0.8),
    )
    run = tmp_path / "run"
    result = train(config, split, run, data_summary={"images": 7}, progress=False)
    assert result.best_epoch in (1, 2) and np.isfinite(result.best_metrics["val_psnr"])
    for name in ("split.json", "config.json", "log.csv", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    with (run / "log.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["lr"]) < float(rows[0]["lr"]) == pytest.approx(2e-4)
    assert all(float(r["val_hf_ratio"]) > 0 for r in rows)
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert saved["train"]["generator"]["ngf"] == 4 and saved["data"] == {"images": 7}
    assert TrainConfig.from_dict(saved["train"]) == config
    generator, meta = load_generator(run / "best.pt")
    assert generator.config.ngf == 4 and meta.best_metrics == result.best_metrics
    last = torch.load(run / "last.pt", weights_only=False)
    # Second (last) epoch: half way down the linear decay, each network at its own rate.
    assert last["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert last["opt_d"]["param_groups"][0]["lr"] == pytest.approx(0.5e-4)

    longer = TrainConfig(**{**config.__dict__, "epochs_decay": 2})
    resumed = train(longer, split, run, resume=run / "last.pt", progress=False)
    with (run / "log.csv").open(encoding="utf-8") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3]
    assert len(resumed.history) == 3
    wider = TrainConfig(**{**config.__dict__, "generator": GeneratorConfig(ngf=8)})
    with pytest.raises(ValueError, match="differs"):
        train(wider, split, run, resume=run / "last.pt", progress=False)


def test_cli_trains_l1_only_and_reports_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _write_images(data, 5)
    run = tmp_path / "run"
    args = [
        "train",
        "--images",
        str(data),
        "--run-dir",
        str(run),
        "--l1-only",
        "--ngf",
        "4",
        "--epochs",
        "1",
        "--epochs-decay",
        "0",
        "--no-progress",
        "--split",
        "0.6",
        "0.2",
        "0.2",
    ]
    assert main(args) == 0
    assert "best epoch 1" in capsys.readouterr().out
    checkpoint = torch.load(run / "last.pt", weights_only=False)
    assert checkpoint["discriminator"] is None
    # A second run into the same directory must not overwrite it.
    assert main(args) == 1
    assert "already holds a run" in capsys.readouterr().err

    # Fine-tuning with the GAN starts from the L1-only generator and keeps its split.
    tuned = tmp_path / "tuned"
    common = [
        "train",
        "--images",
        str(data),
        "--run-dir",
        str(tuned),
        "--epochs",
        "1",
        "--epochs-decay",
        "0",
        "--no-progress",
        "--start-from",
        str(run / "best.pt"),
    ]
    assert main([*common, "--ngf", "8"]) == 1
    assert "differs" in capsys.readouterr().err
    assert main([*common, "--ngf", "4", "--ndf", "4"]) == 0
    capsys.readouterr()
    first_split = json.loads((run / "split.json").read_text(encoding="utf-8"))["records"]
    tuned_split = json.loads((tuned / "split.json").read_text(encoding="utf-8"))["records"]
    assert tuned_split == first_split
    start = json.loads((tuned / "config.json").read_text(encoding="utf-8"))["start_from"]
    assert start["l1_only"] == "True" and len(start["sha256"]) == 64

    assert main(["train", "--images", str(tmp_path / "missing"), "--run-dir", str(run / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dicom-node-train: error:") and len(err.splitlines()) == 1

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "dicom-node-train: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--images", str(data), "--run-dir", str(tmp_path / "r"), "--crop", "300"])
    assert exit_info.value.code == 2
    assert "multiple of 256" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--images", str(data), "--run-dir", str(tmp_path / "r"), "--noise-a", "x"])
    assert exit_info.value.code == 2
