"""Durable files: write to a temporary file, fsync, rename atomically.

A file under the spool is either complete and fsynced, or absent: readers
never see a partial file. Temporary files carry the ``.partial`` suffix and
are removed by :func:`remove_partials` at start-up.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import uuid
from pathlib import Path

from dicom_node.errors import StorageError

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either complete or absent.

    The bytes go to a temporary file in the same directory, which is fsynced
    and renamed over `path`; the directory is then fsynced so the rename
    itself survives a power cut.

    Raises
    ------
    StorageError
        If any step fails (disk full, permissions); no temporary file is left.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            logger.exception("could not remove temporary file %s", tmp)
        raise StorageError(f"Could not write {path}: {exc.strerror or exc}.") from exc


def remove_quietly(path: Path) -> None:
    """Delete `path` if it exists, logging (not raising) any error."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.exception("could not remove %s", path)


def spool_path(spool_dir: Path, kind: str, sop_instance_uid: str, now: dt.datetime) -> Path:
    """Return a new, unique path for an instance in the spool.

    Parameters
    ----------
    spool_dir : pathlib.Path
        Root of the spool.
    kind : str
        ``"received"`` or ``"derived"``.
    sop_instance_uid : str
        The instance's UID, used in the file name.
    now : datetime.datetime
        Reception time; files are grouped by day so retention can drop whole
        folders.

    Raises
    ------
    ValueError
        If the UID holds characters other than digits and dots (it would not
        be a safe file name).
    """
    if not _SAFE_UID.match(sop_instance_uid):
        raise ValueError(f"SOP Instance UID {sop_instance_uid!r} is not a valid UID.")
    day = now.strftime("%Y%m%d")
    return spool_dir / kind / day / f"{sop_instance_uid}.{uuid.uuid4().hex[:8]}.dcm"


def remove_partials(spool_dir: Path) -> int:
    """Delete temporary files left by a crash; return how many were removed."""
    count = 0
    if not spool_dir.exists():
        return 0
    for tmp in spool_dir.rglob(f"*{PARTIAL_SUFFIX}"):
        remove_quietly(tmp)
        count += 1
    return count
