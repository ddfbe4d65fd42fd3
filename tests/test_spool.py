"""Temporary files of the spool name their writer; start-up removes only abandoned ones."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicom_node import spool
from dicom_node.processes import this_host
from dicom_node.spool import (
    PARTIAL_MAX_AGE,
    host_tag,
    partial_abandoned,
    partial_name,
    partial_writer,
    remove_partials,
    write_atomic,
)


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def partial(
    directory: Path, name: str, host: str, pid: int, age: dt.timedelta | None = None
) -> Path:
    path = directory / f".{name}.{host}.{pid}.0123abcd.partial"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half")
    if age is not None:
        then = time.time() - age.total_seconds()
        os.utime(path, (then, then))
    return path


def test_the_temporary_file_names_host_and_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed: list[str] = []
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        renamed.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(spool.os, "replace", replace)
    target = tmp_path / "received" / "1.2.3.4.ab12cd34.dcm"
    write_atomic(target, b"DICM")
    assert target.read_bytes() == b"DICM"
    [name] = renamed
    assert name.startswith(".1.2.3.4.ab12cd34.dcm.") and name.endswith(".partial")
    assert partial_writer(Path(name)) == (host_tag(), os.getpid())
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # nothing left


@pytest.mark.parametrize(
    "hostname",
    ["node1", "node1.example.org", "x" * 80, "höst_name", "", "a.b", "-lead"],
)
def test_any_host_name_gives_a_safe_distinct_tag(hostname: str) -> None:
    tag = host_tag(hostname)
    assert 1 <= len(tag) <= 32 and all(c.isascii() and (c.isalnum() or c == "-") for c in tag)
    assert partial_writer(Path(f".x.dcm.{tag}.42.0123abcd.partial")) == (tag, 42)
    assert host_tag("node1.example.org") != host_tag("node1-example-org")
    assert host_tag("node1.example.org") != host_tag("node1.example.com")


def test_names_without_a_writer_are_recognised() -> None:
    assert partial_writer(Path(".1.2.3.dcm.ab12cd34.partial")) is None  # written before
    assert partial_writer(Path("1.2.3.dcm")) is None
    assert partial_writer(Path(partial_name("model.onnx"))) == (host_tag(), os.getpid())


def test_start_up_removes_only_partials_whose_writer_is_gone(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    day = spool_dir / "received" / "20260101"
    here = host_tag()
    other = host_tag(this_host() + "-other")
    live_here = partial(day, "1.2.1.dcm", here, os.getpid())
    dead_here = partial(day, "1.2.2.dcm", here, dead_pid())
    other_host = partial(day, "1.2.3.dcm", other, dead_pid())  # that pid may live there
    old_other_host = partial(day, "1.2.4.dcm", other, os.getpid(), PARTIAL_MAX_AGE * 1.5)
    legacy_fresh = day / ".1.2.5.dcm.ab12cd34.partial"
    legacy_fresh.write_bytes(b"")
    legacy_old = day / ".1.2.6.dcm.ab12cd34.partial"
    legacy_old.write_bytes(b"")
    then = time.time() - 2 * PARTIAL_MAX_AGE.total_seconds()
    os.utime(legacy_old, (then, then))
    complete = day / "1.2.7.dcm"
    complete.write_bytes(b"DICM")

    assert remove_partials(spool_dir) == 3
    assert live_here.exists() and other_host.exists() and legacy_fresh.exists()
    assert complete.exists()
    assert not dead_here.exists() and not old_other_host.exists() and not legacy_old.exists()


def test_the_age_bound_is_a_parameter(tmp_path: Path) -> None:
    other = partial(tmp_path, "1.dcm", host_tag("elsewhere"), 1, dt.timedelta(minutes=10))
    assert not partial_abandoned(other)
    assert partial_abandoned(other, max_age=dt.timedelta(minutes=5))
    assert not partial_abandoned(tmp_path / ".gone.dcm.h.1.0123abcd.partial")  # vanished
