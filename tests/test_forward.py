"""The ``forward`` route and the C-STORE SCU, with Orthanc as the destination PACS.

Covers: forwarded instances arrive unchanged (transfer syntax included), a
PACS outage loses nothing and delivers everything once, in one association
per batch, failure statuses and timeouts are retried, attempts exhausted
dead-letter the job and ``jobs retry`` re-queues it. The last tests drive
:func:`dicom_node.scu.send_batch` against an in-process pynetdicom SCP to
pin down status handling (warnings, failures, empty responses).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from helpers.dicom_files import SampleFile, dataset_bytes, describe
from helpers.peers import (
    LOOPBACK,
    NodeProcess,
    Orthanc,
    free_port,
    remount_tmpfs,
    storescu,
    wait_until,
)
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_node.config import Destination
from dicom_node.scu import SendItem, send_batch

pytestmark = pytest.mark.network

NodeFactory = Callable[..., NodeProcess]

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def dispatch_rows(node: NodeProcess) -> list[dict[str, Any]]:
    return node.sql(
        "SELECT id, job_id, sop_instance_uid, state, attempts, last_error FROM dispatches "
        "ORDER BY id"
    )


def attempt_rows(node: NodeProcess) -> list[dict[str, Any]]:
    return node.sql("SELECT dispatch_id, status, error FROM dispatch_attempts ORDER BY id")


def assert_delivered_once(node: NodeProcess, orthanc: Orthanc, uids: list[str]) -> None:
    """Every job done once, every dispatch sent by exactly one successful C-STORE."""
    jobs = node.jobs()
    assert sorted(j["sop_instance_uid"] for j in jobs) == sorted(uids)
    assert all(j["state"] == "done" and j["completions"] == 1 for j in jobs), jobs
    dispatches = dispatch_rows(node)
    assert len(dispatches) == len(uids) and all(d["state"] == "sent" for d in dispatches)
    successes: dict[int, int] = {}
    for attempt in attempt_rows(node):
        if attempt["status"] == 0:
            successes[attempt["dispatch_id"]] = successes.get(attempt["dispatch_id"], 0) + 1
    assert successes == {d["id"]: 1 for d in dispatches}
    # Orthanc holds each instance once and received each exactly once.
    assert sorted(orthanc.sop_instance_uids()) == sorted(uids)
    assert orthanc.received_count() == len(uids)


def test_forwarded_instances_arrive_unchanged(
    node: NodeFactory, orthanc: Orthanc, rg1_path: Path, rg1_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node(destinations=[orthanc])
    samples = [describe(rg1_path), *rg1_copies(2)]
    result = storescu(n.port, [s.path for s in samples])
    assert result.returncode == 0, result.stdout + result.stderr
    n.wait_jobs(3, timeout=90)
    orthanc.wait_for_count(3)
    assert_delivered_once(n, orthanc, [s.sop_instance_uid for s in samples])

    instance_id = orthanc.find(samples[0].sop_instance_uid)
    assert instance_id is not None
    tags = orthanc.tags(instance_id)
    assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.1"
    assert tags["StudyInstanceUID"] == samples[0].study_instance_uid
    assert orthanc.transfer_syntax(instance_id) == EXPLICIT_LE
    received = pydicom.dcmread(io.BytesIO(orthanc.file(instance_id)))
    original = pydicom.dcmread(rg1_path)
    # The same dataset, element for element, pixel data byte for byte.
    assert received.PixelData == original.PixelData
    assert Dataset(received) == Dataset(original)
    # Sent byte for byte as stored in the spool, not decoded and re-encoded.
    (row,) = n.sql(
        "SELECT path FROM instances WHERE sop_instance_uid = :uid",
        uid=samples[0].sop_instance_uid,
    )
    stored = Path(row["path"]).read_bytes()
    assert dataset_bytes(orthanc.file(instance_id)) == dataset_bytes(stored)


def test_outage_loses_nothing_and_delivers_once_in_one_association(
    node: NodeFactory, orthanc: Orthanc, small_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node(destinations=[orthanc])
    orthanc.stop()
    samples = small_copies(8)
    result = storescu(n.port, [s.path for s in samples])
    assert result.returncode == 0, "the node must accept while the PACS is down"

    def all_failing() -> bool:
        rows = dispatch_rows(n)
        return (
            len(rows) == 8
            and all(r["attempts"] >= 1 for r in rows)
            and max(r["attempts"] for r in rows) >= 2
        )

    wait_until(all_failing, 60, lambda: f"failed attempts: {dispatch_rows(n)}")
    assert all(r["state"] == "pending" for r in dispatch_rows(n))
    assert all(j["state"] == "sending" for j in n.jobs())
    failed_before = len(n.log_events("dispatch.batch"))

    orthanc.start()
    n.wait_jobs(8, timeout=60)
    assert_delivered_once(n, orthanc, [s.sop_instance_uid for s in samples])
    # The backlog went out together: one association for the whole batch, not one per file.
    delivered = [b for b in n.log_events("dispatch.batch")[failed_before:] if b["sent"] != "0"]
    assert [(b["size"], b["sent"]) for b in delivered] == [("8", "8")]


def test_compressed_instances_are_forwarded_in_their_transfer_syntax(
    node: NodeFactory, orthanc: Orthanc, rg1_path: Path, rg1_jpeg_lossless: SampleFile
) -> None:
    n = node(destinations=[orthanc])
    orthanc.stop()  # so that both wait for the same retry and go in ONE association
    result = storescu(n.port, [rg1_path, rg1_jpeg_lossless.path], args=["-xs"])
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(
        lambda: len(rows := dispatch_rows(n)) == 2 and all(r["attempts"] >= 1 for r in rows),
        60,
        "both dispatches to fail once",
    )
    orthanc.start()
    n.wait_jobs(2, timeout=60)
    rg1 = describe(rg1_path)
    assert_delivered_once(n, orthanc, [rg1.sop_instance_uid, rg1_jpeg_lossless.sop_instance_uid])

    jpeg_id = orthanc.find(rg1_jpeg_lossless.sop_instance_uid)
    plain_id = orthanc.find(rg1.sop_instance_uid)
    assert jpeg_id and plain_id
    assert orthanc.transfer_syntax(jpeg_id) == JPEG_LOSSLESS_SV1
    assert orthanc.transfer_syntax(plain_id) == EXPLICIT_LE
    received = pydicom.dcmread(io.BytesIO(orthanc.file(jpeg_id)))
    original = pydicom.dcmread(rg1_jpeg_lossless.path)
    assert received.PixelData == original.PixelData  # the JPEG fragments, untouched


def test_pacs_failure_status_is_retried_until_stored(
    tmpfs: Callable[[Path, int], Path],
    orthanc_factory: Callable[..., Orthanc],
    node: NodeFactory,
    rg1_path: Path,
) -> None:
    pacs = orthanc_factory(start=False)
    tmpfs(pacs.storage, 3 * 1024)  # too small for the 7 MB image: Orthanc answers 0xA700
    pacs.start()
    n = node(destinations=[pacs], jobs={"max_attempts": 50})
    assert storescu(n.port, [rg1_path]).returncode == 0

    def refused() -> bool:
        return any(a["status"] == 0xA700 for a in attempt_rows(n))

    wait_until(refused, 60, lambda: f"a 0xA700 from Orthanc; attempts: {attempt_rows(n)}")
    assert [d["state"] for d in dispatch_rows(n)] == ["pending"]
    assert "0xA700" in (dispatch_rows(n)[0]["last_error"] or "")
    assert n.jobs()[0]["state"] == "sending"
    shown = n.cli("jobs", "show", str(n.jobs()[0]["id"]))
    assert "status 0xA700" in shown.stdout

    remount_tmpfs(pacs.storage, 64 * 1024)
    n.wait_jobs(1, timeout=60)
    assert_delivered_once(n, pacs, [describe(rg1_path).sop_instance_uid])


def test_hung_pacs_times_out_and_is_retried(
    node: NodeFactory, orthanc: Orthanc, small_copies: Callable[..., list[SampleFile]]
) -> None:
    timeouts = {"acse_timeout": 1.5, "dimse_timeout": 1.5, "network_timeout": 1.5}
    n = node(destinations=[orthanc], node=timeouts)
    orthanc.pause()  # the kernel still accepts connections; Orthanc never answers
    try:
        sample = small_copies(1)[0]
        assert storescu(n.port, [sample.path]).returncode == 0
        wait_until(
            lambda: any(a["status"] is None for a in attempt_rows(n)),
            30,
            "a failed attempt against the hung PACS",
        )
        assert dispatch_rows(n)[0]["state"] == "pending"
    finally:
        orthanc.resume()
    n.wait_jobs(1, timeout=60)
    assert_delivered_once(n, orthanc, [sample.sop_instance_uid])


def test_exhausted_attempts_dead_letter_and_jobs_retry_requeues(
    node: NodeFactory, orthanc: Orthanc, small_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node(
        destinations=[orthanc],
        jobs={"max_attempts": 2, "retry_base_delay": 0.2, "retry_max_delay": 0.5},
    )
    orthanc.stop()
    sample = small_copies(1)[0]
    assert storescu(n.port, [sample.path]).returncode == 0
    job = n.wait_jobs(1, states=("dead_lettered",), timeout=60)[0]
    assert "dead-lettered" in job["error"]
    assert [(d["state"], d["attempts"]) for d in dispatch_rows(n)] == [("dead", 2)]
    listed = n.cli("jobs", "list", "--state", "dead_lettered")
    assert sample.sop_instance_uid in listed.stdout

    orthanc.start()
    retried = n.cli("jobs", "retry", str(job["id"]))
    assert retried.returncode == 0, retried.stderr
    assert "re-queued" in retried.stdout
    n.wait_jobs(1, timeout=60)
    assert_delivered_once(n, orthanc, [sample.sop_instance_uid])


def test_a_removed_destination_dead_letters_its_deliveries(
    node: NodeFactory, orthanc: Orthanc, small_copies: Callable[..., list[SampleFile]]
) -> None:
    n = node(destinations=[orthanc])
    orthanc.stop()
    sample = small_copies(1)[0]
    assert storescu(n.port, [sample.path]).returncode == 0
    wait_until(lambda: any(d["attempts"] for d in dispatch_rows(n)), 30, "a failed attempt")
    assert n.stop() == 0
    del n.document["destinations"]  # the PACS is taken out of the configuration
    n.write_config()
    n.start()
    job = n.wait_jobs(1, states=("dead_lettered",), timeout=30)[0]
    assert "no longer configured" in job["error"]
    assert [d["state"] for d in dispatch_rows(n)] == ["dead"]


# --------------------------------------------------------------------------- send_batch


class RecordingSCP:
    """A pynetdicom storage SCP on loopback whose C-STORE answer a test chooses."""

    def __init__(self, answer: Callable[[Dataset], int]) -> None:
        self.answer = answer
        self.associations = 0
        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="FAKEPACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        self.server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)],
        )

    def _accepted(self, event: Any) -> None:
        self.associations += 1

    def _store(self, event: Any) -> int:
        ds = event.dataset
        self.received.append(str(ds.SOPInstanceUID))
        return self.answer(ds)

    def destination(self) -> Destination:
        return Destination(name="fake", ae_title="FAKEPACS", host=LOOPBACK, port=self.port)


@pytest.fixture
def scp_factory() -> Iterator[Callable[[Callable[[Dataset], int]], RecordingSCP]]:
    servers: list[RecordingSCP] = []

    def make(answer: Callable[[Dataset], int]) -> RecordingSCP:
        server = RecordingSCP(answer)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.server.shutdown()


def _items(samples: list[SampleFile]) -> list[SendItem]:
    return [
        SendItem(
            key=index,
            path=s.path,
            sop_class_uid=s.sop_class_uid,
            sop_instance_uid=s.sop_instance_uid,
            transfer_syntax_uid=EXPLICIT_LE,
        )
        for index, s in enumerate(samples)
    ]


def test_send_batch_checks_every_status_over_one_association(
    scp_factory: Callable[..., RecordingSCP], small_copies: Callable[..., list[SampleFile]]
) -> None:
    samples = small_copies(4)
    answers = {
        samples[0].sop_instance_uid: 0x0000,
        samples[1].sop_instance_uid: 0xB000,  # warning: stored (coercion)
        samples[2].sop_instance_uid: 0xA700,  # out of resources
        samples[3].sop_instance_uid: 0xC000,  # cannot understand
    }
    scp = scp_factory(lambda ds: answers[str(ds.SOPInstanceUID)])
    results = send_batch("NODE", scp.destination(), _items(samples), timeout=10)
    assert [(r.ok, r.status) for r in results] == [
        (True, 0x0000),
        (True, 0xB000),
        (False, 0xA700),
        (False, 0xC000),
    ]
    assert "0xA700" in (results[2].error or "")
    assert scp.associations == 1
    assert scp.received == [s.sop_instance_uid for s in samples]


def test_send_batch_treats_an_empty_response_as_failure(
    scp_factory: Callable[..., RecordingSCP], small_copies: Callable[..., list[SampleFile]]
) -> None:
    release = threading.Event()

    def too_slow(ds: Dataset) -> int:
        release.wait(10)  # longer than the sender's DIMSE timeout
        return 0x0000

    scp = scp_factory(too_slow)
    samples = small_copies(2)
    start = time.monotonic()
    try:
        results = send_batch("NODE", scp.destination(), _items(samples), timeout=1.0)
    finally:
        release.set()
    assert time.monotonic() - start < 9
    assert results[0].ok is False and results[0].status is None
    assert "no response" in (results[0].error or "")
    # The association is gone after a timeout: the rest fails too, never "succeeds".
    assert results[1].ok is False


def test_send_batch_to_an_unreachable_peer_fails_every_item(
    small_copies: Callable[..., list[SampleFile]],
) -> None:
    dest = Destination(name="nowhere", ae_title="NOBODY", host=LOOPBACK, port=free_port())
    results = send_batch("NODE", dest, _items(small_copies(3)), timeout=2)
    assert [r.ok for r in results] == [False, False, False]
    assert all(r.status is None and r.error for r in results)
