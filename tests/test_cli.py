"""The ``dicom-node`` console script: echo, jobs list/show/retry, serve's signals, exit codes.

Exit codes: 0 success, 1 the operation failed, 2 invalid configuration or usage;
errors are one line on stderr starting with ``dicom-node: error:``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.dicom_files import RG1_PATIENT_ID, RG1_PATIENT_NAME, describe
from helpers.peers import DICOM_NODE, NodeProcess, Orthanc, free_port, storescu

from dicom_node import __version__

pytestmark = pytest.mark.network

NodeFactory = Callable[..., NodeProcess]
RTT = re.compile(r"round trip \d+\.\d ms")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dicom-node: error: ")
    return lines[0]


def test_version_and_console_script() -> None:
    result = subprocess.run(
        [DICOM_NODE, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"dicom-node {__version__}"


def test_echo_a_configured_destination_and_an_explicit_peer(
    node: NodeFactory, orthanc: Orthanc
) -> None:
    n = node(destinations=[orthanc])
    by_name = n.cli("echo", "pacs")
    assert by_name.returncode == 0, by_name.stderr
    assert f"C-ECHO TESTPACS@127.0.0.1:{orthanc.dicom_port}: success (status 0x0000)" in (
        by_name.stdout
    )
    assert RTT.search(by_name.stdout)

    explicit = n.cli(
        "echo", "--aet", "NODE", "--host", "127.0.0.1", "--port", str(n.port), config=False
    )
    assert explicit.returncode == 0, explicit.stderr
    assert RTT.search(explicit.stdout)
    n.wait_for_log("echo.received")


def test_echo_failures_exit_non_zero(node: NodeFactory) -> None:
    n = node(node={"allowed_calling_aets": ["MODALITY"]})
    closed = free_port()
    unreachable = n.cli("echo", "--aet", "X", "--host", "127.0.0.1", "--port", str(closed))
    assert unreachable.returncode == 1
    assert f"cannot connect to 127.0.0.1:{closed}" in one_error_line(unreachable)

    rejected = n.cli("echo", "--aet", "NODE", "--host", "127.0.0.1", "--port", str(n.port))
    assert rejected.returncode == 1  # the node's own AE title is not an allowed caller
    assert "association rejected" in one_error_line(rejected)

    allowed = n.cli(
        "echo", "--aet", "NODE", "--host", "127.0.0.1", "--port", str(n.port),
        "--calling-aet", "MODALITY",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr

    unknown = n.cli("echo", "nowhere")
    assert unknown.returncode == 2
    assert "'nowhere'" in one_error_line(unknown)
    neither = n.cli("echo")
    assert neither.returncode == 2
    one_error_line(neither)


def test_jobs_list_show_and_errors(node: NodeFactory, orthanc: Orthanc, rg1_path: Path) -> None:
    n = node(destinations=[orthanc])
    assert n.cli("jobs", "list").stdout.strip() == "no jobs"
    assert storescu(n.port, [rg1_path]).returncode == 0
    job = n.wait_jobs(1, timeout=60)[0]
    sop = describe(rg1_path).sop_instance_uid

    listed = n.cli("jobs", "list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATE", "ACTION", "TRIES"]
    assert row.split()[:4] == [str(job["id"]), "done", "forward", "1"] and sop in row
    assert n.cli("jobs", "list", "--state", "failed").stdout.strip() == "no jobs"
    typo = n.cli("jobs", "list", "--state", "dead")  # the state is dead_lettered
    assert typo.returncode == 2 and "invalid choice: 'dead'" in typo.stderr

    shown = n.cli("jobs", "show", str(job["id"]))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"Job {job['id']}: done (forward, rule forward-all)")
    assert f"sop_instance_uid: {sop}" in shown.stdout
    assert "dispatch 1 -> pacs: sent, 1 attempt(s)" in shown.stdout
    assert "status 0x0000" in shown.stdout
    detail = json.loads(n.cli("jobs", "show", str(job["id"]), "--json").stdout)
    assert detail["completions"] == 1
    assert detail["dispatches"][0]["state"] == "sent"
    # Jobs are identified by UIDs; no patient name or ID is shown.
    for output in (listed.stdout, shown.stdout, json.dumps(detail)):
        assert RG1_PATIENT_NAME not in output and RG1_PATIENT_ID not in output

    missing = n.cli("jobs", "show", "999")
    assert missing.returncode == 1 and "There is no job 999" in one_error_line(missing)
    not_failed = n.cli("jobs", "retry", str(job["id"]))
    assert not_failed.returncode == 1
    assert "only failed or dead_lettered" in one_error_line(not_failed)


def test_jobs_with_an_unreachable_database_fail_with_one_line(
    node: NodeFactory,
) -> None:
    n = node(
        storage={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"},
        start=False,
    )
    result = n.cli("jobs", "list")
    assert result.returncode == 1
    assert "Cannot open the database" in one_error_line(result)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signals(node: NodeFactory, signum: int) -> None:
    n = node()
    assert n.proc is not None
    n.proc.send_signal(signum)
    assert n.proc.wait(30) == 0
    assert "node.stopped" in n.log_text
    assert n.sql("SELECT id FROM workers") == []


def test_serve_reports_a_port_in_use(node: NodeFactory) -> None:
    first = node()
    second = node(node={"port": first.port}, start=False)
    with pytest.raises(AssertionError, match="exited with 1"):
        second.start(timeout=30)
    assert "Cannot listen on" in second.log_text
