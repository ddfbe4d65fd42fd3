"""Durable files: write to a temporary file, fsync, rename atomically.

A file under the spool is either complete and fsynced, or absent: readers
never see a partial file. Temporary files carry the ``.partial`` suffix and
name the host and process writing them (:func:`partial_name`). Several nodes
may share the spool, so :func:`remove_partials` (at start-up) removes only
those whose writer is gone: a process of this host that no longer exists,
or any writer once the file is older than :data:`PARTIAL_MAX_AGE`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

from dicom_node.errors import StorageError
from dicom_node.processes import pid_alive, this_host

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
PARTIAL_MAX_AGE = dt.timedelta(hours=1)
"""Age after which a temporary file is abandoned, whoever wrote it.

Writing one file (an instance or a model, then fsync) takes seconds; an hour
leaves room for a very slow disk and for clocks of hosts sharing the spool
that disagree by minutes. Housekeeping uses the same bound for orphans.
"""
_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")
_HOST_TAG_MAX = 32
_PARTIAL_NAME = re.compile(
    rf"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]{{1,{_HOST_TAG_MAX}}})"
    rf"\.(?P<pid>[0-9]{{1,10}})\.[0-9a-f]{{8}}{re.escape(PARTIAL_SUFFIX)}$"
)


def host_tag(hostname: str | None = None) -> str:
    """The host name as written in temporary file names.

    Letters, digits and ``-`` only, at most 32 characters: a name that had to
    be changed (dots, other characters, too long) keeps its first 23 safe
    characters and gets 8 hex digits of its hash, so distinct hosts keep
    distinct tags.
    """
    hostname = this_host() if hostname is None else hostname
    safe = re.sub(r"[^A-Za-z0-9-]", "-", hostname)
    if safe == hostname and 0 < len(safe) <= _HOST_TAG_MAX:
        return safe
    digest = hashlib.blake2s(hostname.encode("utf-8", "surrogateescape"), digest_size=4)
    return f"{safe[: _HOST_TAG_MAX - 9]}-{digest.hexdigest()}".lstrip("-") or digest.hexdigest()


def partial_name(name: str) -> str:
    """Name of the temporary file that becomes `name`: ``.{name}.{host}.{pid}.{random}.partial``."""
    return f".{name}.{host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"


def partial_writer(path: Path) -> tuple[str, int] | None:
    """The host tag and pid of the process that wrote temporary file `path`.

    ``None`` if the name does not say (not a temporary file, or one written
    before the names carried their writer).
    """
    match = _PARTIAL_NAME.match(path.name)
    if match is None:
        return None
    return match["host"], int(match["pid"])


def partial_abandoned(
    path: Path, max_age: dt.timedelta = PARTIAL_MAX_AGE, now: float | None = None
) -> bool:
    """Whether temporary file `path` can be removed without breaking a write in flight.

    It can when its writer is a process of this host that no longer exists,
    or when it is older than `max_age` (whoever wrote it). A file of another
    host, or of a live process of this one, is kept until then.
    """
    writer = partial_writer(path)
    if writer is not None and writer[0] == host_tag() and not pid_alive(writer[1]):
        return True
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    return mtime < (time.time() if now is None else now) - max_age.total_seconds()


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
    tmp = path.with_name(partial_name(path.name))
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


def remove_partials(spool_dir: Path, max_age: dt.timedelta = PARTIAL_MAX_AGE) -> int:
    """Delete temporary files left by a crash; return how many were removed.

    Only abandoned ones (:func:`partial_abandoned`): the spool may be shared
    with other nodes whose writes are in flight.
    """
    count = 0
    if not spool_dir.exists():
        return 0
    now = time.time()
    for tmp in spool_dir.rglob(f"*{PARTIAL_SUFFIX}"):
        if partial_abandoned(tmp, max_age, now):
            remove_quietly(tmp)
            count += 1
    return count
