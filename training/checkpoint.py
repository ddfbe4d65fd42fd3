"""The checkpoint of a training run: one schema, an atomic save, a checked load.

A run keeps two checkpoints in its directory:

* ``last.pt`` (:attr:`CheckpointKind.LAST`): everything needed to resume,
  including the discriminator and both optimisers;
* ``best.pt`` (:attr:`CheckpointKind.BEST`): the generator of the best epoch
  with its metrics, without the resume state.

On disk a checkpoint is a flat ``dict`` (``torch.save``) whose keys are
:data:`REQUIRED_KEYS`, :data:`OPTIONAL_KEYS`, :data:`PROVENANCE_KEYS` and, for
``last.pt``, :data:`RESUME_KEYS`; ``best.pt`` also has ``metrics``. This module
is the only place that spells them.
"""

from __future__ import annotations

import enum
import math
import os
import pickle
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from training.errors import CheckpointError
from training.networks import GeneratorConfig, ResidualEnhancer

CHECKPOINT_VERSION = 1

REQUIRED_KEYS = ("version", "epoch", "generator", "generator_config", "train_config")
"""Entries every checkpoint has."""

OPTIONAL_KEYS = ("best_psnr", "best_epoch", "psnr_floor", "best_metrics", "history", "data")
"""Entries with a default when absent (early checkpoints lack some)."""

PROVENANCE_KEYS = (
    "training_commit",
    "start_from",
    "training_code_sha256",
    "torch",
    "device",
    "world_size",
)
"""Where and from what code the run was made (also written to ``config.json``)."""

RESUME_KEYS = ("discriminator", "opt_g", "opt_d")
"""Entries only ``last.pt`` has; the discriminator and ``opt_d`` are None for L1-only runs."""

BEST_METRICS_KEY = "metrics"
"""The entry of ``best.pt`` holding the metrics of its epoch."""


class CheckpointKind(enum.StrEnum):
    """Which of a run's two checkpoints."""

    LAST = "last"
    BEST = "best"


@dataclass
class Checkpoint:
    """One checkpoint of a run (see the module docstring for its file format).

    Attributes
    ----------
    epoch : int
        The 0-based epoch after which it was written.
    generator : dict
        The generator's ``state_dict``.
    generator_config : GeneratorConfig
        The generator's hyper-parameters.
    train_config : dict
        :meth:`training.train_config.TrainConfig.as_dict` of the run.
    best_epoch : int
        1-based epoch of the best checkpoint so far (-1: none yet).
    best_score : float
        Selection score of that epoch (stored as ``best_psnr``).
    psnr_floor : float
        The PSNR the texture selection may not fall below.
    best_metrics : dict[str, float]
        ``val_psnr``, ``val_ssim`` and ``val_hf_ratio`` of the best epoch.
    history : list[dict]
        One ``log.csv`` row per finished epoch.
    data : dict
        Description of the training data.
    provenance : dict
        The :data:`PROVENANCE_KEYS` entries.
    kind : CheckpointKind
        ``last`` (resumable) or ``best``.
    discriminator, opt_g, opt_d : dict or None
        Resume state of ``last.pt``.
    """

    epoch: int
    generator: dict[str, Any]
    generator_config: GeneratorConfig
    train_config: dict[str, Any]
    best_epoch: int = -1
    best_score: float = -math.inf
    psnr_floor: float = -math.inf
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    kind: CheckpointKind = CheckpointKind.LAST
    discriminator: dict[str, Any] | None = None
    opt_g: dict[str, Any] | None = None
    opt_d: dict[str, Any] | None = None

    @property
    def l1_only(self) -> bool:
        """Whether the run trained the generator on L1 alone."""
        return bool(self.train_config.get("l1_only", False))

    def best(self) -> Checkpoint:
        """This checkpoint as ``best.pt``: without the resume state."""
        return replace(self, kind=CheckpointKind.BEST, discriminator=None, opt_g=None, opt_d=None)

    def to_dict(self) -> dict[str, Any]:
        """The flat dictionary written to disk."""
        payload: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "generator": self.generator,
            "generator_config": self.generator_config.as_dict(),
            "train_config": self.train_config,
            "best_psnr": self.best_score,
            "best_epoch": self.best_epoch,
            "psnr_floor": self.psnr_floor,
            "best_metrics": self.best_metrics,
            "history": self.history,
            "data": self.data,
            **{key: self.provenance.get(key) for key in PROVENANCE_KEYS},
        }
        if self.kind is CheckpointKind.LAST:
            payload.update(discriminator=self.discriminator, opt_g=self.opt_g, opt_d=self.opt_d)
        else:
            payload[BEST_METRICS_KEY] = self.best_metrics
        return payload

    @classmethod
    def from_dict(cls, payload: object, source: str = "the checkpoint") -> Checkpoint:
        """Rebuild from :meth:`to_dict` output, checking every entry.

        Raises
        ------
        CheckpointError
            If `payload` is not a checkpoint of this package, lacks an entry
            or has one of the wrong type.
        """
        if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{source} is not a dicom-node-train checkpoint (version {CHECKPOINT_VERSION})."
            )
        kind = CheckpointKind.LAST if "opt_g" in payload else CheckpointKind.BEST
        required = REQUIRED_KEYS + (RESUME_KEYS if kind is CheckpointKind.LAST else ())
        missing = [key for key in required if key not in payload]
        if missing:
            raise CheckpointError(f"{source} lacks the checkpoint entries {', '.join(missing)}.")
        for key, expected in (
            ("generator", dict),
            ("generator_config", dict),
            ("train_config", dict),
            ("best_metrics", dict),
            ("history", list),
            ("data", dict),
        ):
            if key in payload and not isinstance(payload[key], expected):
                raise CheckpointError(
                    f"{source}: the entry {key} is a {type(payload[key]).__name__}; expected "
                    f"a {expected.__name__}."
                )
        try:
            generator_config = GeneratorConfig.from_dict(payload["generator_config"])
            epoch = int(payload["epoch"])
            best_epoch = int(payload.get("best_epoch", -1))
            best_score = float(payload.get("best_psnr", -math.inf))
            floor = float(payload.get("psnr_floor", -math.inf))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} has an invalid entry: {exc}") from exc
        return cls(
            epoch=epoch,
            generator=payload["generator"],
            generator_config=generator_config,
            train_config=payload["train_config"],
            best_epoch=best_epoch,
            best_score=best_score,
            psnr_floor=floor,
            best_metrics=dict(payload.get(BEST_METRICS_KEY) or payload.get("best_metrics") or {}),
            history=list(payload.get("history", [])),
            data=dict(payload.get("data", {})),
            provenance={key: payload[key] for key in PROVENANCE_KEYS if key in payload},
            kind=kind,
            discriminator=payload.get("discriminator"),
            opt_g=payload.get("opt_g"),
            opt_d=payload.get("opt_d"),
        )

    def save(self, path: Path) -> None:
        """Write atomically: a temporary file in the same folder, fsync, then rename.

        A reader (or a crash) never sees a partly written checkpoint.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        # A unique name in the same folder (so the rename is atomic), created
        # with the process umask like any other file the run writes.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with tmp.open("xb") as handle:
                torch.save(self.to_dict(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path, device: torch.device | str | None = None) -> Checkpoint:
        """Read and check a checkpoint written by :meth:`save`.

        Parameters
        ----------
        path : pathlib.Path
            ``last.pt`` or ``best.pt``.
        device : torch.device or str, optional
            Where tensors are mapped (default: the CPU).

        Raises
        ------
        CheckpointError
            If the file cannot be read or is not a valid checkpoint.
        """
        try:
            payload = torch.load(path, map_location=device or "cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            raise CheckpointError(f"The checkpoint {path} cannot be read: {exc}") from exc
        return cls.from_dict(payload, str(path))

    def require_generator(self, config: GeneratorConfig, source: Path) -> None:
        """Check that this checkpoint's generator is `config`.

        Raises
        ------
        CheckpointError
            If the generator hyper-parameters differ.
        """
        if self.generator_config != config:
            raise CheckpointError(
                f"The generator of {source} is {self.generator_config.as_dict()}, which differs "
                f"from the requested {config.as_dict()}."
            )

    def build_generator(self, device: torch.device | None = None) -> ResidualEnhancer:
        """The generator with this checkpoint's weights, in eval mode.

        Raises
        ------
        CheckpointError
            If the weights do not fit the generator configuration.
        """
        generator = ResidualEnhancer(self.generator_config)
        try:
            generator.load_state_dict(self.generator)
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"The generator weights do not fit: {exc}") from exc
        generator.eval()
        if device is not None:
            generator.to(device)
        return generator


def load_generator(
    path: Path, device: torch.device | None = None
) -> tuple[ResidualEnhancer, Checkpoint]:
    """Load the generator of a checkpoint written by training.

    Returns
    -------
    tuple[ResidualEnhancer, Checkpoint]
        The generator in eval mode and the whole checkpoint.

    Raises
    ------
    CheckpointError
        If the file is not a valid checkpoint of this package.
    """
    checkpoint = Checkpoint.load(path, device)
    return checkpoint.build_generator(device), checkpoint


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
