"""The checkpoint schema: round trip, atomic save, a clear error for a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from training.checkpoint import (
    PROVENANCE_KEYS,
    RESUME_KEYS,
    Checkpoint,
    CheckpointKind,
    load_generator,
)
from training.errors import CheckpointError, TrainingError
from training.networks import GeneratorConfig, ResidualEnhancer, init_generator


def _checkpoint() -> Checkpoint:
    config = GeneratorConfig(ngf=4)
    generator = ResidualEnhancer(config)
    init_generator(generator)
    return Checkpoint(
        epoch=2,
        generator=generator.state_dict(),
        generator_config=config,
        train_config={"l1_only": True, "epochs": 3},
        best_epoch=2,
        best_score=31.5,
        psnr_floor=30.0,
        best_metrics={"val_psnr": 31.5, "val_ssim": 0.9, "val_hf_ratio": 0.8},
        history=[{"epoch": 1, "step": 4}, {"epoch": 2, "step": 8}],
        data={"images": 5},
        provenance={"training_commit": "abc", "world_size": 1},
        opt_g={"state": {}, "param_groups": []},
    )


def test_round_trip_of_last_and_best(tmp_path: Path) -> None:
    state = _checkpoint()
    state.save(tmp_path / "last.pt")
    loaded = Checkpoint.load(tmp_path / "last.pt")
    assert loaded.kind is CheckpointKind.LAST and loaded.l1_only
    assert (loaded.epoch, loaded.best_epoch, loaded.best_score) == (2, 2, 31.5)
    assert loaded.history == state.history and loaded.data == {"images": 5}
    assert loaded.provenance["training_commit"] == "abc"
    assert loaded.generator_config == GeneratorConfig(ngf=4)
    raw = torch.load(tmp_path / "last.pt", weights_only=False)
    assert set(RESUME_KEYS) | set(PROVENANCE_KEYS) <= set(raw)

    state.best().save(tmp_path / "best.pt")
    generator, best = load_generator(tmp_path / "best.pt")
    assert best.kind is CheckpointKind.BEST and best.opt_g is None
    assert best.best_metrics == state.best_metrics and not generator.training
    raw = torch.load(tmp_path / "best.pt", weights_only=False)
    assert not set(RESUME_KEYS) & set(raw) and raw["metrics"] == state.best_metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_a_failed_save_leaves_the_previous_file_and_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    _checkpoint().save(path)
    before = path.read_bytes()

    def broken(payload: Any, handle: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        _checkpoint().save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("generator_config"), "lacks the checkpoint entries generator_config"),
        (lambda d: d.pop("opt_d"), "lacks the checkpoint entries opt_d"),
        (lambda d: d.update(history={"epoch": 1}), "history is a dict; expected a list"),
        (lambda d: d.update(epoch="two"), "invalid entry"),
        (lambda d: d.update(version=99), "not a dicom-node-train checkpoint"),
    ],
)
def test_a_malformed_checkpoint_is_refused_with_the_entry_named(
    tmp_path: Path, change: Any, message: str
) -> None:
    payload = _checkpoint().to_dict()
    change(payload)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as info:
        Checkpoint.load(tmp_path / "bad.pt")
    assert isinstance(info.value, TrainingError) and len(str(info.value).splitlines()) == 1


def test_an_unreadable_file_and_a_different_generator_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Checkpoint.load(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="differs"):
        _checkpoint().require_generator(GeneratorConfig(ngf=8), tmp_path / "x.pt")
