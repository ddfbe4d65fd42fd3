"""From pair sources to a finished run: what ``dicom-node-train train`` does.

:func:`run_training` chooses the split (the run's own when resuming, the
split of the run it starts from when fine-tuning, otherwise a new one built
by :func:`build_split` from the sources) and trains
(:func:`training.trainer.train`). The CLI only parses arguments and calls it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import load_images, record_paths
from training.dedup import resolve_duplicates
from training.errors import RunError
from training.pair_checks import check_pairs
from training.records import PairRecord
from training.sources import archive_records, folder_records, manifest_records, read_group_files
from training.split import Split, split_records
from training.train_config import TrainConfig
from training.trainer import TrainResult, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSources:
    """Where a new run's images come from, and how they are split.

    Attributes
    ----------
    images : tuple[pathlib.Path, ...]
        Folders or files of radiographs (synthetic pairs).
    groups : tuple[pathlib.Path, ...]
        Groups CSVs giving the patient of `images` by file name.
    recursive : bool
        Descend into sub-folders of `images`.
    manifest : pathlib.Path or None
        CSV of real pairs.
    archive : bool
        Use the node's own archive.
    node_config : pathlib.Path or None
        The node configuration for `archive`.
    fractions : tuple[float, float, float]
        Train, val and test shares, by patient.
    seed : int
        Seed of the split.
    """

    images: tuple[Path, ...] = ()
    groups: tuple[Path, ...] = ()
    recursive: bool = False
    manifest: Path | None = None
    archive: bool = False
    node_config: Path | None = None
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0

    @property
    def any(self) -> bool:
        """Whether at least one source is given."""
        return bool(self.images or self.manifest or self.archive)


def build_split(sources: DataSources, run_dir: Path) -> tuple[Split, dict[str, Any]]:
    """Read every source, check real pairs, resolve duplicates and split by patient.

    The checks of real pairs are written to ``run_dir/pair_checks.json``.

    Returns
    -------
    tuple[Split, dict]
        The split and the data summary kept with the checkpoints.

    Raises
    ------
    training.errors.PairSourceError
        If a source is missing or malformed.
    training.errors.SplitError
        If the records cannot be split.
    dicom_node.pixels.PixelDataError
        If an image cannot be read.
    """
    records: list[PairRecord] = []
    described: list[str] = []
    if sources.manifest:
        real = manifest_records(sources.manifest)
        checks = check_pairs(real)
        bad = [c for c in checks if c.misregistered]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "pair_checks.json").write_text(
            json.dumps([dataclasses.asdict(c) for c in checks], indent=1) + "\n", encoding="utf-8"
        )
        if bad:
            logger.warning(
                "%d of %d pairs look misregistered; see pair_checks.json.", len(bad), len(checks)
            )
        records += real
        described.append(f"manifest {sources.manifest.name}: {len(real)} real pairs")
    if sources.images:
        groups = read_group_files(sources.groups)
        found = folder_records(sources.images, groups, recursive=sources.recursive)
        records += found
        described.append(f"{len(found)} images from {', '.join(p.name for p in sources.images)}")
    if sources.archive:
        archived = archive_records(sources.node_config)
        records += archived
        described.append(f"node archive: {len(archived)} CR/DX chest images")
    images = load_images(record_paths(records))
    records = resolve_duplicates(records, images)
    split = split_records(records, sources.fractions, seed=sources.seed)
    bits: dict[int, int] = {}
    for record in records:
        depth = images[record.high].bits_stored
        bits[depth] = bits.get(depth, 0) + 1
    summary = {
        "sources": described,
        "images": len(records),
        "groups": len({r.group for r in records}),
        "bits_stored": {str(k): v for k, v in sorted(bits.items())},
        "split": split.summary(),
        "split_seed": sources.seed,
    }
    return split, summary


def _data_summary(run_dir: Path) -> dict[str, Any]:
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        return {}
    try:
        data = json.loads(config_file.read_text(encoding="utf-8")).get("data", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise RunError(f"The run configuration {config_file} cannot be read: {exc}") from exc
    return dict(data) if isinstance(data, dict) else {}


def choose_split(
    run_dir: Path, sources: DataSources, resume: Path | None, start_from: Path | None
) -> tuple[Split, dict[str, Any]]:
    """The split of a run and its data summary.

    Resuming keeps the run's own split; fine-tuning (`start_from` in a run
    directory with a ``split.json``) keeps the split of that run, so its
    validation and test patients stay unseen; otherwise a new split is built.

    Raises
    ------
    RunError
        If `resume` does not exist, or `run_dir` already holds a run and
        this is not a resume.
    training.errors.SplitError
        If a saved split cannot be read.
    """
    if resume is not None:
        if not resume.is_file():
            raise RunError(f"The checkpoint {resume} does not exist.")
        return Split.load(run_dir / "split.json"), _data_summary(run_dir)
    if (run_dir / "last.pt").exists():
        raise RunError(
            f"{run_dir} already holds a run; use --resume {run_dir / 'last.pt'} "
            "or another --run-dir."
        )
    previous = start_from.resolve().parent if start_from else None
    if previous is not None and (previous / "split.json").is_file():
        logger.info("Reusing the split of %s.", previous)
        return Split.load(previous / "split.json"), _data_summary(previous)
    return build_split(sources, run_dir)


def run_training(
    config: TrainConfig,
    sources: DataSources,
    run_dir: Path,
    resume: Path | None = None,
    start_from: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Choose the split (:func:`choose_split`) and train.

    Parameters
    ----------
    config : TrainConfig
        The run's hyper-parameters.
    sources : DataSources
        Where a new run's images come from.
    run_dir : pathlib.Path
        The run directory.
    resume : pathlib.Path, optional
        ``last.pt`` of this run to continue from.
    start_from : pathlib.Path, optional
        A checkpoint whose generator initialises the run.
    progress : bool
        Show a progress bar.

    Returns
    -------
    TrainResult

    Raises
    ------
    training.errors.TrainingError
        If a source, a split or a checkpoint is unusable, or the run
        directory is in the wrong state.
    dicom_node.pixels.PixelDataError
        If an image cannot be read.
    """
    split, summary = choose_split(run_dir, sources, resume, start_from)
    logger.info("Split: %s", json.dumps(split.summary()))
    return train(
        config,
        split,
        run_dir,
        resume=resume,
        start_from=start_from,
        data_summary=summary,
        progress=progress,
    )
