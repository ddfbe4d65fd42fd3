"""The ``metadata_props`` of an exported model: what the node checks and what the card reads."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import onnx

from dicom_node.pixels import CONVENTION
from training.checkpoint import Checkpoint
from training.metrics import METRIC_DEFINITIONS
from training.networks import SIZE_MULTIPLE, ResidualEnhancer, count_parameters


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` with `props` (all values strings)."""
    del model.metadata_props[:]
    for key, value in props.items():
        if not isinstance(value, str):
            raise TypeError(
                f"Metadata value of {key!r} must be a string; got {type(value).__name__}."
            )
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def build_metadata(
    checkpoint: Checkpoint,
    generator: ResidualEnhancer,
    name: str,
    version: str,
    evaluation: dict[str, Any] | None,
    export: dict[str, Any],
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model, from its checkpoint entries.

    Keys: ``pixel_convention``, ``model_name``, ``model_version``,
    ``size_multiple``, ``training_data``, ``degradation``, ``metrics``,
    ``training_commit``, ``training_code_sha256``, ``architecture``,
    ``training``, ``export`` and ``created_at``; structured values are JSON.

    Parameters
    ----------
    checkpoint : Checkpoint
        The exported checkpoint (its configuration, metrics, data and provenance).
    generator : ResidualEnhancer
        Its generator.
    name, version : str
        ``model_name`` and ``model_version``.
    evaluation : dict, optional
        ``evaluation.json`` of ``evaluate``; its test results go into ``metrics``.
    export : dict
        How the model was exported and its parity results.
    """
    train_config = checkpoint.train_config
    best = checkpoint.best_metrics
    provenance = checkpoint.provenance
    metrics: dict[str, Any] = {
        "definitions": METRIC_DEFINITIONS,
        "validation": {
            "epoch": checkpoint.best_epoch,
            "degradation": train_config.get("val_degradation"),
            "images": checkpoint.data.get("split", {}).get("val", {}).get("images"),
            "psnr": best.get("val_psnr"),
            "ssim": best.get("val_ssim"),
        },
    }
    if evaluation is not None:
        metrics["test"] = {
            "images": evaluation.get("test_images"),
            "results": evaluation.get("results"),
            "nlm": evaluation.get("nlm"),
            "bm3d": evaluation.get("bm3d"),
        }
    l1_only = bool(train_config.get("l1_only", False))
    architecture = {
        "generator": {
            **generator.config.as_dict(),
            "parameters": count_parameters(generator),
        },
        "discriminator": None
        if l1_only
        else {"type": "conditional PatchGAN 70x70", "ndf": train_config.get("ndf")},
        "loss": "L1"
        if l1_only
        else (
            f"{train_config.get('gan_loss', 'vanilla')} GAN"
            f"{' (spectral norm)' if train_config.get('spectral_norm') else ''}"
            f" + {train_config.get('lambda_l1', 100.0):g} * L1"
        ),
    }
    training = {
        key: train_config.get(key)
        for key in (
            "epochs",
            "epochs_decay",
            "batch_size",
            "crop",
            "crops_per_image",
            "lr",
            "lr_d",
            "beta1",
            "seed",
        )
    }
    training.update({k: provenance.get(k) for k in ("device", "world_size", "torch", "start_from")})
    degradation = {
        "training_range": train_config.get("degradations"),
        "validation": train_config.get("val_degradation"),
        "model": "x^gamma + offset field -> gaussian blur -> optional 2x down/up -> "
        "noise N(0, a*x + b) -> quantise to source bits",
    }
    return {
        "pixel_convention": CONVENTION,
        "model_name": name,
        "model_version": version,
        "size_multiple": str(SIZE_MULTIPLE),
        "training_data": json.dumps(checkpoint.data, sort_keys=True),
        "degradation": json.dumps(degradation, sort_keys=True),
        "metrics": json.dumps(metrics, sort_keys=True),
        "training_commit": str(provenance.get("training_commit") or "uncommitted"),
        "training_code_sha256": str(provenance.get("training_code_sha256") or ""),
        "architecture": json.dumps(architecture, sort_keys=True),
        "training": json.dumps(training, sort_keys=True),
        "export": json.dumps(export, sort_keys=True),
        "created_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
