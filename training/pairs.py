"""Where training pairs come from, and the patient-level split.

Three sources give :class:`PairRecord` rows:

* :func:`manifest_records`: a CSV ``low,high[,split][,patient_id]`` of real
  paired acquisitions (DICOM, PNG or TIFF); :func:`check_pairs` then verifies
  that the two images of each pair have the same size and reports pairs that
  look misregistered;
* :func:`folder_records`: a folder (or files) of DICOM/PNG/TIFF radiographs
  whose degraded copies are synthesised during training;
* :func:`archive_records`: the CR/DX images the node itself has received,
  read from its database and spool.

:func:`split_records` assigns whole patients (or files when there is no
patient id) to train/val/test; :class:`Split` is saved as ``split.json`` in
the run directory so evaluation only ever sees held-out patients.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicom_node.pixels import IMAGE_SUFFIXES, NormalizedImage, read_any

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
CXR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
"""SOP classes of the archive that count as radiographs."""

DUPLICATE_CORRELATION = 0.99
"""Thumbnail correlation above which two images are taken to show the same
acquisition. Distinct chest radiographs of this project's data stay below
0.94; the same image at another size or encoding scores above 0.999."""

SPLIT_VERSION = 1


class PairSourceError(ValueError):
    """A pair source (manifest, folder, archive) is missing, malformed or inconsistent."""


def group_key(identifier: str) -> str:
    """A stable, non-identifying key for a patient or group id (16 hex digits)."""
    return hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PairRecord:
    """One training example: a reference image and, for real pairs, its low-quality twin.

    Attributes
    ----------
    high : str
        Path of the reference (high-quality) image.
    low : str or None
        Path of the real low-quality acquisition; None when the degraded copy
        is synthesised by :mod:`training.degrade`.
    group : str
        Hashed patient (or file) key; all records of a group share a split.
    split : str or None
        ``train``, ``val`` or ``test`` when fixed by the source, else None.
    """

    high: str
    low: str | None
    group: str
    split: str | None = None

    def __post_init__(self) -> None:
        if not self.high:
            raise PairSourceError("A pair record needs a reference (high) image path.")
        if self.split is not None and self.split not in SPLITS:
            raise PairSourceError(
                f"Split {self.split!r} of {self.high} is not one of {', '.join(SPLITS)}."
            )

    @property
    def name(self) -> str:
        """File name of the reference image."""
        return Path(self.high).name


# --------------------------------------------------------------------------- manifest


def manifest_records(path: Path) -> list[PairRecord]:
    """Read a manifest CSV of real pairs.

    Parameters
    ----------
    path : pathlib.Path
        CSV with a header and the columns ``low`` and ``high`` (paths, relative
        ones resolve against the CSV's folder), and optionally ``split``
        (train/val/test) and ``patient_id``. Without a patient id each pair is
        its own group.

    Returns
    -------
    list[PairRecord]

    Raises
    ------
    PairSourceError
        If the file cannot be read, lacks a column, has an empty path or an
        unknown split, or gives one patient more than one split.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PairSourceError(f"The manifest {path} cannot be read: {exc}") from exc
    missing = [c for c in ("low", "high") if c not in columns]
    if missing:
        raise PairSourceError(
            f"The manifest {path} lacks the column(s) {', '.join(missing)}; expected "
            "low,high[,split][,patient_id]."
        )
    base = path.resolve().parent
    records: list[PairRecord] = []
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row["low"] or not row["high"]:
            raise PairSourceError(f"{path}, line {line}: both low and high paths are required.")
        low, high = base / row["low"], base / row["high"]
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise PairSourceError(
                f"{path}, line {line}: split {split!r} is not one of {', '.join(SPLITS)}."
            )
        patient = row.get("patient_id") or f"file:{high}"
        records.append(PairRecord(str(high), str(low), group_key(patient), split))
    if not records:
        raise PairSourceError(f"The manifest {path} lists no pairs.")
    _check_group_splits(records)
    return records


def _check_group_splits(records: Sequence[PairRecord]) -> None:
    fixed: dict[str, str] = {}
    for record in records:
        if record.split is None:
            continue
        previous = fixed.setdefault(record.group, record.split)
        if previous != record.split:
            raise PairSourceError(
                f"One patient has images in both the {previous} and the {record.split} split "
                f"(e.g. {record.name}); a patient must belong to one split."
            )


@dataclass(frozen=True)
class PairCheck:
    """Result of checking one real pair.

    Attributes
    ----------
    high, low : str
        The two paths.
    shift : tuple[float, float]
        Estimated (rows, columns) translation of ``low`` against ``high`` in pixels.
    correlation : float
        Correlation of the two images after smoothing.
    misregistered : bool
        Whether the shift exceeds the tolerance or the correlation is too low.
    """

    high: str
    low: str
    shift: tuple[float, float]
    correlation: float
    misregistered: bool


def check_pair(
    high: NormalizedImage,
    low: NormalizedImage,
    names: tuple[str, str] = ("high", "low"),
    max_shift: float = 1.0,
    min_correlation: float = 0.9,
) -> PairCheck:
    """Check that a real pair has the same size and looks registered.

    The shift is estimated by phase correlation on the images smoothed and
    downsampled by up to 4 (to 1/4-pixel precision there); the correlation is
    computed on the same smoothed images.

    Raises
    ------
    PairSourceError
        If the two images differ in size.
    """
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    if high.shape != low.shape:
        raise PairSourceError(
            f"The pair {names[0]} / {names[1]} has different sizes: {high.shape} and {low.shape}."
        )
    factor = max(1, min(4, min(high.shape) // 128))

    def prepare(image: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.0 * factor)
        return smooth[::factor, ::factor]

    a, b = prepare(high.pixels), prepare(low.pixels)
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=4, normalization=None)
    shift_px = (float(shift[0]) * factor, float(shift[1]) * factor)
    a0, b0 = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a0**2).sum() * (b0**2).sum()))
    correlation = float((a0 * b0).sum() / denominator) if denominator > 0 else 0.0
    bad = max(abs(shift_px[0]), abs(shift_px[1])) > max_shift or correlation < min_correlation
    return PairCheck(names[0], names[1], shift_px, correlation, bad)


def check_pairs(records: Iterable[PairRecord]) -> list[PairCheck]:
    """Check every real pair; log a warning for each that looks misregistered.

    Raises
    ------
    PairSourceError
        If a pair's images differ in size.
    dicom_node.pixels.PixelDataError
        If an image cannot be read.
    """
    checks: list[PairCheck] = []
    for record in records:
        if record.low is None:
            continue
        check = check_pair(
            read_any(Path(record.high)), read_any(Path(record.low)), (record.high, record.low)
        )
        if check.misregistered:
            logger.warning(
                "The pair %s / %s looks misregistered (shift %.1f, %.1f px; correlation %.3f).",
                Path(record.high).name,
                Path(record.low).name,
                check.shift[0],
                check.shift[1],
                check.correlation,
            )
        checks.append(check)
    return checks


# --------------------------------------------------------------------------- folders


def _is_image_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in (".dcm", ".dicom"):
        return True
    if suffix:
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_groups(path: Path) -> dict[str, str]:
    """Read a CSV mapping file names to patient/group ids.

    The CSV needs a ``file`` column and a ``group``, ``patient_group`` or
    ``patient_id`` column (``cxr/manifest.csv`` has ``group``,
    ``cxr-hires/manifest.csv`` has ``patient_group`` with the same values).

    Raises
    ------
    PairSourceError
        If the file cannot be read or lacks the columns.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PairSourceError(f"The groups file {path} cannot be read: {exc}") from exc
    key = next((k for k in ("group", "patient_group", "patient_id") if k in columns), None)
    if "file" not in columns or key is None:
        raise PairSourceError(
            f"The groups file {path} needs a 'file' column and a 'group', 'patient_group' or "
            "'patient_id' column."
        )
    return {row["file"].strip(): row[key].strip() for row in rows if row["file"] and row[key]}


def _dicom_patient(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # noqa: BLE001 - unreadable files are skipped
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def folder_records(
    paths: Sequence[Path], groups: dict[str, str] | None = None, recursive: bool = False
) -> list[PairRecord]:
    """List the radiographs in folders (and single files) for synthetic pairs.

    The patient of an image is, in order: its entry in `groups` (by file
    name), the DICOM Patient ID, or the file itself.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        Folders and/or image files.
    groups : dict[str, str], optional
        File name → patient/group id (see :func:`read_groups`).
    recursive : bool
        Whether to descend into sub-folders.

    Raises
    ------
    PairSourceError
        If a path does not exist or no image is found.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            files += sorted(p for p in found if p.is_file() and _is_image_file(p))
        elif path.is_file():
            files.append(path)
        else:
            raise PairSourceError(f"{path} is neither a folder nor a file.")
    if not files:
        raise PairSourceError(
            f"No DICOM, PNG or TIFF image was found in {', '.join(map(str, paths))}."
        )
    records = []
    seen: set[Path] = set()
    for file in files:
        resolved = file.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        identifier = (groups or {}).get(file.name)
        if identifier is None and file.suffix.lower() not in IMAGE_SUFFIXES:
            patient = _dicom_patient(file)
            identifier = f"patient:{patient}" if patient else None
        records.append(PairRecord(str(resolved), None, group_key(identifier or f"file:{resolved}")))
    return records


def archive_records(config_path: Path | None) -> list[PairRecord]:
    """List the CR/DX radiographs the node has received (its database and spool).

    Instances are selected by SOP Class UID (:data:`CXR_SOP_CLASSES`) and
    grouped by Patient ID; files whose Body Part Examined is present and not
    CHEST are left out, as are spool files that no longer exist.

    Parameters
    ----------
    config_path : pathlib.Path or None
        The node's configuration file (default: the node's own default).

    Raises
    ------
    PairSourceError
        If the configuration or the database cannot be read, or no radiograph
        is archived.
    """
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    from dicom_node.config import load_config
    from dicom_node.db import Instance, Series, Study, make_engine
    from dicom_node.errors import ConfigError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise PairSourceError(f"The node configuration cannot be loaded: {exc}") from exc
    try:
        engine = make_engine(config.storage)
        with Session(engine) as session:
            rows = session.execute(
                select(Instance.path, Study.patient_id)
                .join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Instance.sop_class_uid.in_(list(CXR_SOP_CLASSES)))
                .order_by(Instance.id)
            ).all()
        engine.dispose()
    except SQLAlchemyError as exc:
        raise PairSourceError(f"The node database cannot be read: {exc}") from exc
    spool = config.storage.spool_dir
    records: list[PairRecord] = []
    skipped = 0
    for stored_path, patient_id in rows:
        path = Path(stored_path)
        path = path if path.is_absolute() else spool / path
        if not path.is_file() or not _is_chest(path):
            skipped += 1
            continue
        identifier = f"patient:{patient_id}" if patient_id else f"file:{path}"
        records.append(PairRecord(str(path), None, group_key(identifier)))
    logger.info("Archive: %d CR/DX chest images, %d skipped.", len(records), skipped)
    if not records:
        raise PairSourceError("The node's archive holds no CR/DX chest image to train on.")
    return records


def _is_chest(path: Path) -> bool:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BodyPartExamined"])
    except Exception:  # noqa: BLE001 - unreadable files are skipped
        return False
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    return part in ("", "CHEST", "THORAX")


# --------------------------------------------------------------------------- duplicates


def _thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    from skimage.transform import resize

    small = resize(image.astype(np.float64), (size, size), anti_aliasing=True).ravel()
    small = small - small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def resolve_duplicates(
    records: Sequence[PairRecord], images: dict[str, NormalizedImage]
) -> list[PairRecord]:
    """Merge the groups of near-duplicate images and drop exact duplicates.

    Two synthetic-pair images whose 32×32 thumbnails correlate above
    :data:`DUPLICATE_CORRELATION` show the same acquisition. When they also
    have the same size (e.g. a DICOM file and a PNG decoded from it) the later
    one is dropped, otherwise (the same radiograph at another resolution) both
    are kept and put in the same group, so they land in the same split.

    Parameters
    ----------
    records : Sequence[PairRecord]
        The records, in a stable order.
    images : dict[str, NormalizedImage]
        The decoded reference image of each record, by ``high`` path.
    """
    synthetic = [r for r in records if r.low is None]
    if len(synthetic) < 2:
        return list(records)
    thumbs = np.stack([_thumbnail(images[r.high].pixels) for r in synthetic])
    similar = thumbs @ thumbs.T
    parent = list(range(len(synthetic)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dropped: set[int] = set()
    for i in range(len(synthetic)):
        for j in range(i + 1, len(synthetic)):
            if similar[i, j] < DUPLICATE_CORRELATION or j in dropped:
                continue
            if images[synthetic[i].high].shape == images[synthetic[j].high].shape:
                logger.warning(
                    "%s duplicates %s; it is used once.", synthetic[j].name, synthetic[i].name
                )
                dropped.add(j)
            else:
                logger.info(
                    "%s and %s show the same radiograph; they share a split.",
                    synthetic[i].name,
                    synthetic[j].name,
                )
            parent[root(j)] = root(i)
    index = {id(r): k for k, r in enumerate(synthetic)}
    out: list[PairRecord] = []
    for record in records:
        k = index.get(id(record))
        if k is None:
            out.append(record)
        elif k not in dropped:
            out.append(replace(record, group=synthetic[root(k)].group))
    # A merged group keeps one split if any of its members had one fixed.
    _check_group_splits(out)
    return out


# --------------------------------------------------------------------------- split


@dataclass
class Split:
    """The train/val/test assignment of a run, saved as ``split.json``."""

    seed: int
    fractions: tuple[float, float, float]
    records: list[PairRecord] = field(default_factory=list)

    def subset(self, name: str) -> list[PairRecord]:
        """Records of one split (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {name!r}.")
        return [r for r in self.records if r.split == name]

    def summary(self) -> dict[str, Any]:
        """Counts of images and groups per split."""
        out: dict[str, Any] = {}
        for name in SPLITS:
            subset = self.subset(name)
            out[name] = {
                "images": len(subset),
                "groups": len({r.group for r in subset}),
                "real_pairs": sum(r.low is not None for r in subset),
            }
        return out

    def save(self, path: Path) -> None:
        """Write the split as JSON."""
        payload = {
            "version": SPLIT_VERSION,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "summary": self.summary(),
            "records": [asdict(r) for r in self.records],
        }
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a split written by :meth:`save`.

        Raises
        ------
        PairSourceError
            If the file is missing or malformed.
        """
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("version") != SPLIT_VERSION:
                raise PairSourceError(
                    f"{path} has split version {payload.get('version')!r}; expected "
                    f"{SPLIT_VERSION}."
                )
            records = [PairRecord(**r) for r in payload["records"]]
            fractions = tuple(float(f) for f in payload["fractions"])
            seed = int(payload["seed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PairSourceError(f"The split file {path} cannot be read: {exc}") from exc
        if len(fractions) != 3:
            raise PairSourceError(f"The split file {path} needs three fractions.")
        return cls(seed, (fractions[0], fractions[1], fractions[2]), records)


def split_records(
    records: Sequence[PairRecord],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Split:
    """Assign whole groups to train/val/test.

    Groups whose split the source fixed keep it. The others are shuffled with
    `seed` and dealt so that the image counts of val and test come closest to
    their fractions of all images; the rest is train.

    Raises
    ------
    ValueError
        If the fractions are not three non-negative numbers summing to 1, or
        there are fewer than three groups to split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1; got {fractions}."
        )
    _check_group_splits(records)
    by_group: dict[str, list[PairRecord]] = {}
    for record in records:
        by_group.setdefault(record.group, []).append(record)
    # A group's fixed split is the one any of its records carries (they agree:
    # _check_group_splits), not necessarily the first record's.
    fixed = {
        g: next(r.split for r in rs if r.split)
        for g, rs in by_group.items()
        if any(r.split for r in rs)
    }
    free = sorted(g for g in by_group if g not in fixed)
    if len(by_group) < 3 and not fixed:
        raise ValueError(
            f"At least three patients/groups are needed to split; got {len(by_group)}."
        )
    rng = np.random.default_rng(seed)
    order = [free[i] for i in rng.permutation(len(free))]
    total = len(records)
    counts = {name: sum(len(by_group[g]) for g, s in fixed.items() if s == name) for name in SPLITS}
    assignment = dict(fixed)
    for name, fraction in (("test", fractions[2]), ("val", fractions[1])):
        target = fraction * total
        while order and fraction > 0:
            size = len(by_group[order[0]])
            if counts[name] + size / 2 > target and counts[name] > 0:
                break
            group = order.pop(0)
            assignment[group] = name
            counts[name] += size
    for group in order:
        assignment[group] = "train"
    out = [replace(r, split=assignment[r.group]) for r in records]
    return Split(seed, (fractions[0], fractions[1], fractions[2]), out)
