"""The durability rule's failure paths: 0xA700 and nothing left behind.

A full disk (a small tmpfs mounted on the spool), a locked database (another
connection holding ``BEGIN EXCLUSIVE`` longer than ``sqlite_busy_timeout``)
and a database that refuses the row after the file was written (a trigger):
each time the sender gets 0xA700 (Out of Resources), no spool file (partial or
complete) and no row remain, and a later re-send succeeds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.dicom_files import SampleFile, describe
from helpers.peers import NodeProcess, remount_tmpfs, storescu
from helpers.scu import store

pytestmark = pytest.mark.network

NodeFactory = Callable[..., NodeProcess]
OUT_OF_RESOURCES = 0xA700


def assert_nothing_left(node: NodeProcess) -> None:
    assert node.spool_files() == [], "a spool file (partial or complete) was left behind"
    for table in ("instances", "jobs", "series", "studies"):
        assert node.sql(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 0, table


def sqlite_path(node: NodeProcess) -> Path:
    return node.data_dir / "node.sqlite3"


@contextmanager
def exclusive_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's view of the database: a writer holding ``BEGIN EXCLUSIVE``."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_disk_full_answers_out_of_resources_and_leaves_nothing(
    tmpfs: Callable[[Path, int], Path],
    node: NodeFactory,
    rg1_path: Path,
    small_copies: Callable[..., list[SampleFile]],
) -> None:
    n = node(start=False)
    tmpfs(n.spool_dir, 2048)  # 2 MiB: the 7 MB image cannot fit
    n.start()

    assert store(n.port, [rg1_path]) == [OUT_OF_RESOURCES]
    assert_nothing_left(n)
    assert "0xA700" in n.log_text and "instance.refused" in n.log_text

    dcmtk = storescu(n.port, [rg1_path], args=["-v"])
    assert dcmtk.returncode != 0
    assert "Refused: OutOfResources" in dcmtk.stdout + dcmtk.stderr
    assert_nothing_left(n)

    # What fits is still accepted, and once space is back the re-send succeeds.
    small = small_copies(1)[0]
    assert store(n.port, [small.path]) == [0x0000]
    remount_tmpfs(n.spool_dir, 64 * 1024)
    assert store(n.port, [rg1_path]) == [0x0000]
    uids = {r["sop_instance_uid"] for r in n.sql("SELECT sop_instance_uid FROM instances")}
    assert uids == {small.sop_instance_uid, describe(rg1_path).sop_instance_uid}
    n.wait_jobs(2)


def test_locked_database_answers_out_of_resources_and_leaves_nothing(
    node: NodeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node(storage={"sqlite_busy_timeout": 0.5})
    sample = small_copies(1)[0]
    with exclusive_lock(sqlite_path(n)):
        assert store(n.port, [sample.path]) == [OUT_OF_RESOURCES]
        assert n.spool_files() == []
    assert_nothing_left(n)
    assert "database is locked" in n.log_text or "unavailable" in n.log_text

    assert store(n.port, [sample.path]) == [0x0000]
    n.wait_jobs(1)
    assert len(n.spool_files()) == 1


def test_database_refusing_the_row_removes_the_written_file(
    node: NodeFactory, small_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node()
    sample = small_copies(1)[0]
    conn = sqlite3.connect(sqlite_path(n), timeout=10, isolation_level=None)
    try:
        # The file is written first, then the INSERT fails: the file must go too.
        conn.execute(
            "CREATE TRIGGER refuse_instances BEFORE INSERT ON instances "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        assert store(n.port, [sample.path]) == [OUT_OF_RESOURCES]
        assert_nothing_left(n)
        assert "refused by the test" in n.log_text
        conn.execute("DROP TRIGGER refuse_instances")
    finally:
        conn.close()
    assert store(n.port, [sample.path]) == [0x0000]
    n.wait_jobs(1)
    assert len(n.spool_files()) == 1
