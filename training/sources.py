"""Where training images come from, and the one key that names their patient.

Three sources give :class:`~training.records.PairRecord` rows:

* :func:`manifest_records`: a CSV ``low,high[,split][,patient_id]`` of real
  paired acquisitions (DICOM, PNG or TIFF);
* :func:`folder_records`: a folder (or files) of DICOM/PNG/TIFF/JPEG
  radiographs whose degraded copies are synthesised during training, with
  their patients from groups CSVs (:func:`read_groups`) or the DICOM
  Patient ID;
* :func:`archive_records`: the CR/DX chest images the node itself has
  received, read from its database and spool.

Every source names the patient of an image with :func:`patient_key`, so the
same patient reached through a DICOM Patient ID, a groups CSV, a manifest or
the archive is one group and lands in one split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom import uid

from dicom_node.config import CHEST_BODY_PARTS
from dicom_node.pixels import IMAGE_SUFFIXES
from training.errors import PairSourceError
from training.records import SPLITS, PairRecord, fixed_splits

logger = logging.getLogger(__name__)

CXR_SOP_CLASSES = {
    uid.ComputedRadiographyImageStorage: "CR Image Storage",
    uid.DigitalXRayImageStorageForPresentation: "Digital X-Ray Image Storage - For Presentation",
    uid.DigitalXRayImageStorageForProcessing: "Digital X-Ray Image Storage - For Processing",
}
"""SOP classes of the archive that count as radiographs."""


def patient_key(patient_id: str | None, file: str | Path) -> str:
    """The group key of an image: its patient when known, otherwise the file itself.

    Every source calls this, so one patient id gives one key whether it
    comes from a DICOM Patient ID, a groups CSV, a manifest's ``patient_id``
    column or the node's archive. The key is a hash (16 hex digits), so
    ``split.json`` holds no patient id.

    Parameters
    ----------
    patient_id : str or None
        The patient (or patient group) id; surrounding spaces are ignored.
        None or blank: the image is its own group.
    file : str or pathlib.Path
        The image's path, the key of an image without a patient.

    Returns
    -------
    str
        16 hexadecimal digits.
    """
    identifier = (patient_id or "").strip()
    text = f"patient:{identifier}" if identifier else f"file:{file}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
        group = patient_key(row.get("patient_id"), high)
        records.append(PairRecord(str(high), str(low), group, split))
    if not records:
        raise PairSourceError(f"The manifest {path} lists no pairs.")
    fixed_splits(records)
    return records


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


def read_group_files(paths: Sequence[Path]) -> dict[str, str] | None:
    """Merge several groups CSVs (see :func:`read_groups`); None when `paths` is empty.

    Raises
    ------
    PairSourceError
        If a file cannot be read, or two files give one file name different groups.
    """
    if not paths:
        return None
    groups: dict[str, str] = {}
    for path in paths:
        for name, group in read_groups(path).items():
            if groups.setdefault(name, group) != group:
                raise PairSourceError(
                    f"{name} has the group {groups[name]!r} in one --groups file and "
                    f"{group!r} in {path}."
                )
    return groups


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


def _dicom_text(path: Path, keyword: str) -> str | None:
    """A DICOM attribute's stripped text; None when the file cannot be read."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword])
    except Exception:  # noqa: BLE001 - unreadable files are skipped
        return None
    return str(ds.get(keyword, "") or "").strip()


def folder_records(
    paths: Sequence[Path], groups: dict[str, str] | None = None, recursive: bool = False
) -> list[PairRecord]:
    """List the radiographs in folders (and single files) for synthetic pairs.

    The patient of an image is, in order: its entry in `groups` (by file
    name), the DICOM Patient ID, or the file itself (see :func:`patient_key`).

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        Folders and/or image files.
    groups : dict[str, str], optional
        File name → patient/group id (see :func:`read_groups`).
    recursive : bool
        Whether to descend into sub-folders.

    Returns
    -------
    list[PairRecord]

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
        patient = (groups or {}).get(file.name)
        if patient is None and file.suffix.lower() not in IMAGE_SUFFIXES:
            patient = _dicom_text(file, "PatientID")
        records.append(PairRecord(str(resolved), None, patient_key(patient, resolved)))
    return records


def is_chest(path: Path) -> bool:
    """Whether a DICOM file's Body Part Examined is one the node enhances.

    The accepted values are the node's own :data:`dicom_node.config.CHEST_BODY_PARTS`
    (an absent or empty value counts as ``""``); an unreadable file is not a chest.
    """
    part = _dicom_text(path, "BodyPartExamined")
    return part is not None and part.upper() in CHEST_BODY_PARTS


def archive_records(config_path: Path | None) -> list[PairRecord]:
    """List the CR/DX chest radiographs the node has received (its database and spool).

    Instances are selected by SOP Class UID (:data:`CXR_SOP_CLASSES`) and
    grouped by Patient ID; files that are not chest images (:func:`is_chest`)
    are left out, as are spool files that no longer exist.

    Parameters
    ----------
    config_path : pathlib.Path or None
        The node's configuration file (default: the node's own default).

    Returns
    -------
    list[PairRecord]

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
        if not path.is_file() or not is_chest(path):
            skipped += 1
            continue
        records.append(PairRecord(str(path), None, patient_key(patient_id, path)))
    logger.info("Archive: %d CR/DX chest images, %d skipped.", len(records), skipped)
    if not records:
        raise PairSourceError("The node's archive holds no CR/DX chest image to train on.")
    return records
