"""The node's network edge against hostile or broken peers (real sockets on loopback).

Covers: stalled (partial A-ASSOCIATE-RQ) and idle connections do not lock out
a legitimate DCMTK ``echoscu``; the per-host limit drops that host's oldest
pending connection; the A-ASSOCIATE-RQ must be complete within
``acse_timeout``; a silent peer in the middle of a PDU is dropped after
``network_timeout``; pending connections do not count against
``max_associations``; a PDU header that claims 4 GiB is answered with
A-ABORT without the node's memory growing. Attackers connect from other
loopback addresses (127.0.0.2 …), which Linux routes to ``lo``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.peers import LOOPBACK, NodeProcess, echoscu, wait_until
from helpers.scu import associate, rejection_of

from dicom_node.connection_limits import A_ABORT_PDU, PduFraming

pytestmark = pytest.mark.network

NodeFactory = Callable[..., NodeProcess]

# The first 16 bytes of an A-ASSOCIATE-RQ (PS3.8 9.3.2) announcing 300 bytes:
# type 1, reserved, length, protocol version 1, reserved, the start of the called AE title.
STALLED_RQ = b"\x01\x00" + (300).to_bytes(4, "big") + b"\x00\x01\x00\x00" + b"NODE  "
FOUR_GIB = 0xFFFFFFFF
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 12)]
"""Source addresses of the attacking connections (the legitimate caller is 127.0.0.1)."""


def connect_from(source: str, port: int, first_bytes: bytes = b"") -> socket.socket:
    """A TCP connection from `source` to the node, having sent `first_bytes`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((LOOPBACK, port))
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end has closed (or reset) `sock`."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` (KiB, from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opens; all closed at teardown."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


class Flood:
    """`stalled` connections with a partial A-ASSOCIATE-RQ and `idle` ones, kept topped up."""

    def __init__(self, port: int, stalled: int, idle: int) -> None:
        self.port = port
        self.wanted = [STALLED_RQ] * stalled + [b""] * idle
        self.held: list[socket.socket | None] = [None] * len(self.wanted)
        self.opened = 0

    def top_up(self) -> None:
        """Re-open every connection the node has closed (a persistent attacker)."""
        for i, first in enumerate(self.wanted):
            sock = self.held[i]
            if sock is not None and not closed_by_peer(sock):
                continue
            if sock is not None:
                sock.close()
            self.held[i] = connect_from(ATTACKERS[i % len(ATTACKERS)], self.port, first)
            self.opened += 1

    def close(self) -> None:
        for sock in self.held:
            if sock is not None:
                sock.close()


def timed_echo(port: int, limit: float = 5.0) -> tuple[bool, float]:
    """DCMTK echoscu; (answered within `limit` seconds, seconds taken)."""
    started = time.monotonic()
    try:
        result = echoscu(port, timeout=limit)
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started
    return result.returncode == 0, time.monotonic() - started


# --------------------------------------------------------------------------- flood


def test_stalled_and_idle_connections_do_not_lock_out_a_legitimate_echo(
    node: NodeFactory,
) -> None:
    n = node()  # defaults: max_pending_connections 16, max_connections_per_host 8
    flood = Flood(n.port, stalled=20, idle=50)
    rounds, answered, slowest = 10, 0, 0.0
    try:
        for _ in range(rounds):
            flood.top_up()
            ok, took = timed_echo(n.port)
            answered += ok
            slowest = max(slowest, took)
    finally:
        flood.close()
    print(
        f"\nlegitimate C-ECHO under 20 stalled + 50 idle connections: {answered}/{rounds} "
        f"answered within 5 s (slowest {slowest:.2f} s; {flood.opened} attacking connections)"
    )
    assert answered == rounds, n.log_tail()
    dropped = n.log_events("connection.dropped")
    assert any("max_pending_connections 16" in d["reason"] for d in dropped)
    assert all(d["peer"].split(":")[0] in ATTACKERS for d in dropped), dropped
    assert len(n.log_events("echo.received")) == rounds


def test_pending_connections_do_not_count_against_max_associations(
    node: NodeFactory, sockets: list[socket.socket]
) -> None:
    n = node(node={"max_associations": 2})
    sockets += [connect_from(ATTACKERS[i], n.port) for i in range(5)]
    held = [associate(n.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        extra = associate(n.port, calling="THIRD")
        assert rejection_of(extra) == (2, 3, 2)  # transient, local limit exceeded
    finally:
        for assoc in held:
            assoc.release()
    rejected = wait_until(lambda: n.log_events("association.rejected"), 10, "the rejection")
    assert rejected[0]["reason"] == "association limit reached (max_associations 2)"
    assert rejected[0]["calling_aet"] == "THIRD"
    assert rejected[0]["peer"].startswith(f"{LOOPBACK}:")


# --------------------------------------------------------------------------- per-host limit


def test_per_host_limit_drops_that_hosts_oldest_pending_connection(
    node: NodeFactory, sockets: list[socket.socket]
) -> None:
    n = node(node={"max_connections_per_host": 3})
    busy, other = ATTACKERS[0], ATTACKERS[1]
    first = connect_from(busy, n.port, STALLED_RQ)
    sockets.append(first)
    first_peer = f"{busy}:{first.getsockname()[1]}"
    time.sleep(0.2)  # accepted in order: `first` is the oldest
    sockets += [connect_from(busy, n.port, STALLED_RQ) for _ in range(2)]
    sockets += [connect_from(other, n.port, STALLED_RQ) for _ in range(2)]
    time.sleep(0.5)
    assert not any(closed_by_peer(s) for s in sockets)

    sockets.append(connect_from(busy, n.port, STALLED_RQ))  # the host's fourth
    wait_until(lambda: closed_by_peer(first), 5, "the oldest pending connection to be dropped")
    time.sleep(0.5)
    assert [closed_by_peer(s) for s in sockets[1:]] == [False] * 5
    dropped = n.log_events("connection.dropped")
    assert [d["peer"] for d in dropped] == [first_peer]
    assert "max_connections_per_host 3" in dropped[0]["reason"]
    assert echoscu(n.port).returncode == 0


# --------------------------------------------------------------------------- timeouts


def test_association_request_must_be_complete_within_acse_timeout(
    node: NodeFactory, sockets: list[socket.socket]
) -> None:
    n = node(node={"acse_timeout": 1.0})
    stalled = connect_from(ATTACKERS[0], n.port, STALLED_RQ)
    trickle = connect_from(ATTACKERS[1], n.port, STALLED_RQ[:6])
    sockets += [stalled, trickle]
    started = time.monotonic()
    for byte in STALLED_RQ[6:]:  # one byte every 0.2 s: never silent for long
        if closed_by_peer(trickle):
            break
        with contextlib.suppress(OSError):
            trickle.send(bytes([byte]))
        time.sleep(0.2)
    wait_until(lambda: closed_by_peer(stalled) and closed_by_peer(trickle), 5, "both dropped")
    assert time.monotonic() - started < 4
    reasons = [d["reason"] for d in n.log_events("connection.dropped")]
    assert len(reasons) == 2 and all("acse_timeout (1 s)" in r for r in reasons), reasons
    assert echoscu(n.port).returncode == 0


def test_silence_in_the_middle_of_a_pdu_ends_after_network_timeout(node: NodeFactory) -> None:
    n = node(node={"network_timeout": 1.0})
    assoc = associate(n.port)
    assert assoc.is_established
    # A P-DATA-TF header announcing 100 bytes, then 10 of them, then nothing.
    assoc.dul.socket.socket.sendall(b"\x04\x00" + (100).to_bytes(4, "big") + bytes(10))
    wait_until(lambda: not assoc.is_established, 10, "the association to end")
    dropped = wait_until(lambda: n.log_events("connection.dropped"), 5, "the log line")
    assert "network_timeout (1 s)" in dropped[0]["reason"]
    assert echoscu(n.port).returncode == 0


# --------------------------------------------------------------------------- PDU size


def _stream_zeros(sock: socket.socket, mib: int) -> int:
    """Send up to `mib` MiB of zeros; return how many MiB went out before the node closed."""
    chunk = bytes(1024 * 1024)
    for sent in range(mib):
        try:
            sock.sendall(chunk)
        except OSError:
            return sent
    return mib


def test_a_pdu_claiming_4_gib_is_aborted_without_buffering(
    node: NodeFactory, sockets: list[socket.socket]
) -> None:
    n = node()
    assert echoscu(n.port).returncode == 0  # warm: the first association allocates
    before = rss_kib(n.pid)

    # Before any association: an A-ASSOCIATE-RQ header claiming 4 GiB, then 64 MiB.
    raw = connect_from(ATTACKERS[0], n.port, b"\x01\x00" + FOUR_GIB.to_bytes(4, "big"))
    sockets.append(raw)
    assert raw.recv(len(A_ABORT_PDU)) == A_ABORT_PDU
    assert _stream_zeros(raw, 64) < 64  # the node closed the connection

    # In an established association: a P-DATA-TF header claiming 4 GiB.
    assoc = associate(n.port)
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(b"\x04\x00" + FOUR_GIB.to_bytes(4, "big"))
    with contextlib.suppress(OSError, AttributeError):
        _stream_zeros(assoc.dul.socket.socket, 64)
    wait_until(lambda: assoc.is_aborted, 10, "the association to be aborted")

    aborted = wait_until(
        lambda: len(n.log_events("connection.aborted")) == 2 and n.log_events("connection.aborted"),
        10,
        "two connection.aborted lines",
    )
    assert all("of 4294967295 bytes exceeds the limit" in a["reason"] for a in aborted)
    assert aborted[0]["peer"].startswith(f"{ATTACKERS[0]}:")
    grown_mib = (rss_kib(n.pid) - before) / 1024
    assert grown_mib < 16, f"the node's RSS grew by {grown_mib:.0f} MiB"
    assert echoscu(n.port).returncode == 0


def test_pdu_framing_follows_headers_split_anywhere() -> None:
    framing = PduFraming(max_pdu_size=16384)
    p_data = b"\x04\x00" + (16384).to_bytes(4, "big") + bytes(16384)
    stream = p_data * 2
    for start in range(0, len(stream), 5):  # headers split across reads
        assert framing.feed(stream[start : start + 5]) is None
    too_long = b"\x04\x00" + (16385).to_bytes(4, "big")
    assert framing.feed(too_long[:3]) is None
    problem = framing.feed(too_long[3:])
    assert problem is not None and "16385 bytes exceeds the limit of 16384" in problem
    # An A-ASSOCIATE-RQ may be longer than max_pdu_size (it is not a P-DATA-TF PDU).
    assert PduFraming(16384).feed(b"\x01\x00" + (60000).to_bytes(4, "big")) is None
