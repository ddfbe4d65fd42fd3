"""The network edge: socket timeouts, pending-connection limits and the PDU size cap.

pynetdicom's :class:`~pynetdicom.transport.ThreadedAssociationServer` is
subclassed (:class:`GuardedServer`) where its behaviour leaves the node open:

* Its ``network_timeout`` is set on the *listening* socket only, and
  ``accept()`` returns a blocking socket, so a peer that sends part of a PDU
  blocks the reading thread for ever. :meth:`GuardedServer.get_request` wraps
  every accepted socket in a :class:`GuardedSocket` with a read timeout of
  ``[node] network_timeout``.
* Its ARTIM timer (the wait for the A-ASSOCIATE-RQ) is checked by the same
  thread that is blocked in ``recv``, so it never fires on a partial request.
  :meth:`GuardedServer.service_actions` (run by ``serve_forever`` every half
  second) drops a connection whose A-ASSOCIATE-RQ is not complete
  ``[node] acse_timeout`` seconds after it was accepted.
* Its ``maximum_associations`` counts every connection thread, so idle TCP
  connections lock legitimate callers out. Here a connection that has not
  sent its whole A-ASSOCIATE-RQ is *pending*: pending connections count
  against ``[node] max_pending_connections`` and, per remote address,
  ``[node] max_connections_per_host``; when a limit is hit, the oldest pending
  connection is dropped. ``max_associations`` counts negotiated associations
  only (:meth:`GuardedServer._on_requested`; the AE's own limit is set out of
  reach by :mod:`dicom_node.scp`).
* It reads whatever length a PDU header announces into memory.
  :class:`GuardedSocket` follows the PDU framing of what it reads; a PDU
  longer than ``[node] max_pdu_size`` is answered with an A-ABORT and the
  connection is closed before its body is read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.logs import log_event

logger = logging.getLogger(__name__)

P_DATA_TF = 0x04
"""PDU type whose variable field the Maximum Length Received (``max_pdu_size``) bounds."""

PDU_TYPES = frozenset(range(0x01, 0x08))
"""The PDU types of PS3.8 9.3; pynetdicom aborts on any other without reading a body."""

ASSOCIATION_PDU_LIMIT = 256 * 1024
"""Longest non-P-DATA PDU read (an A-ASSOCIATE-RQ with 128 contexts is about 50 KB)."""

A_ABORT_PDU = bytes([0x07, 0x00, 0, 0, 0, 4, 0x00, 0x00, 0x02, 0x06])
"""A-ABORT (PS3.8 9.3.8): source service provider (2), invalid PDU parameter value (6)."""

REJECTED_TRANSIENT, SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED = 0x02, 0x03, 0x02


@dataclass(frozen=True)
class EdgeLimits:
    """The ``[node]`` settings the network edge enforces (see :class:`NodeSettings`)."""

    network_timeout: float
    acse_timeout: float
    max_associations: int
    max_pending_connections: int
    max_connections_per_host: int
    max_pdu_size: int

    @classmethod
    def from_settings(cls, node: Any) -> EdgeLimits:
        """The limits of a :class:`~dicom_node.config_sections.NodeSettings`."""
        return cls(
            network_timeout=node.network_timeout,
            acse_timeout=node.acse_timeout,
            max_associations=node.max_associations,
            max_pending_connections=node.max_pending_connections,
            max_connections_per_host=node.max_connections_per_host,
            max_pdu_size=node.max_pdu_size,
        )


class PduFraming:
    """Follows PDU boundaries in a received byte stream and checks each announced length."""

    def __init__(self, max_pdu_size: int) -> None:
        self.max_pdu_size = max_pdu_size
        self._header = bytearray()
        self._remaining = 0

    def feed(self, data: bytes) -> str | None:
        """Account for `data`; return why the stream must be refused, or ``None``."""
        pos, size = 0, len(data)
        while pos < size:
            if self._remaining:
                taken = min(self._remaining, size - pos)
                self._remaining -= taken
                pos += taken
                continue
            taken = min(6 - len(self._header), size - pos)
            self._header += data[pos : pos + taken]
            pos += taken
            if len(self._header) < 6:
                break
            pdu_type, length = self._header[0], int.from_bytes(self._header[2:6], "big")
            self._header.clear()
            if pdu_type not in PDU_TYPES:
                continue  # pynetdicom aborts the association itself (unrecognised PDU)
            limit = self.max_pdu_size
            if pdu_type != P_DATA_TF:
                limit = max(limit, ASSOCIATION_PDU_LIMIT)
            if length > limit:
                return (
                    f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds the limit of "
                    f"{limit} bytes (max_pdu_size {self.max_pdu_size})"
                )
            self._remaining = length
        return None


class Connection:
    """One accepted TCP connection: its peer, age, socket and (once known) association."""

    def __init__(self, sock: GuardedSocket, address: Any, limits: EdgeLimits) -> None:
        self.socket = sock
        self.host = str(address[0])
        self.peer = f"{address[0]}:{address[1]}"
        self.accepted_at = time.monotonic()
        self.limits = limits
        self.framing = PduFraming(limits.max_pdu_size)
        self.pending = True
        self.assoc: Any = None
        self.closed = False
        self._closing = threading.Lock()

    @property
    def alive(self) -> bool:
        """Whether neither the node nor pynetdicom has closed the socket yet."""
        return not self.closed and self.socket.fileno() != -1

    def drop(self, event: str, reason: str, *, abort: bool = False) -> None:
        """Close the connection (after an A-ABORT when `abort`), log why, free its threads."""
        with self._closing:  # the listener and the reading thread may both get here
            if self.closed:
                return
            self.closed = True
        log_event(
            logger,
            event,
            level=logging.WARNING,
            reason=reason,
            peer=self.peer,
            pending=self.pending,
            age_ms=(time.monotonic() - self.accepted_at) * 1000,
        )
        with contextlib.suppress(OSError):
            if abort:
                self.socket.sendall(A_ABORT_PDU)
            self.socket.shutdown(socket.SHUT_RDWR)
        assoc = self.assoc
        if self.pending and assoc is not None:
            # pynetdicom's acceptor waits up to acse_timeout for an A-ASSOCIATE
            # primitive that will not come; None ends that wait (as a timeout would).
            assoc.dul.to_user_queue.put(None)


class GuardedSocket(socket.socket):
    """An accepted socket whose reads time out and follow the PDU framing.

    pynetdicom reads a PDU as ``recv(6)`` for the header, then ``recv`` until
    the announced length is read; both go through :meth:`recv`. A read that
    times out, or a header that announces too long a PDU, ends the connection:
    :meth:`recv` then returns ``b""``, which pynetdicom takes as the peer
    closing the connection (its Evt17), without logging a traceback.
    """

    connection: Connection | None = None

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        """Read like :meth:`socket.socket.recv`; ``b""`` once the connection is dropped."""
        conn = self.connection
        if conn is None or flags & socket.MSG_PEEK:
            return super().recv(bufsize, flags)
        if conn.closed:
            return b""
        try:
            data = super().recv(bufsize, flags)
        except TimeoutError:
            conn.drop(
                "connection.dropped",
                f"no data for network_timeout ({conn.limits.network_timeout:g} s) "
                "in the middle of a PDU",
            )
            return b""
        problem = conn.framing.feed(data)
        if problem is not None:
            conn.drop("connection.aborted", problem, abort=True)
            return b""
        return data


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the node's edge limits.

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`~pynetdicom.transport.ThreadedAssociationServer`
        (pass this class to :meth:`pynetdicom.ae.ApplicationEntity.make_server`).
    limits : EdgeLimits
        The limits to enforce.
    """

    request_queue_size = 128
    """Listen backlog (pynetdicom keeps socketserver's 5): in a burst of connections the
    node accepts them all and drops pending ones itself, rather than leave callers
    retrying their SYN for seconds."""

    def __init__(self, *args: Any, limits: EdgeLimits, **kwargs: Any) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._pending: list[Connection] = []
        self._slots: set[Any] = set()
        super().__init__(*args, **kwargs)
        self.bind(evt.EVT_CONN_OPEN, self._on_conn_open)
        self.bind(evt.EVT_REQUESTED, self._on_requested)
        for event in (evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE):
            self.bind(event, self._free_slot)

    # ------------------------------------------------------------------ socketserver hooks

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; give its socket a read timeout and PDU framing.

        Overrides pynetdicom, whose accepted sockets block without a timeout.
        The node does not use TLS, so the accepted socket is a plain one.
        """
        raw, address = super().get_request()
        sock = GuardedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        sock.settimeout(self.limits.network_timeout)
        sock.connection = Connection(sock, address, self.limits)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Register the new connection as pending, dropping the oldest ones over a limit."""
        conn: Connection = request.connection
        limits = self.limits
        with self._lock:
            self._pending = [c for c in self._pending if c.alive]
            drops: list[tuple[Connection, str]] = []
            same_host = [c for c in self._pending if c.host == conn.host]
            if len(same_host) >= limits.max_connections_per_host:
                drops.append(
                    (
                        same_host[0],
                        "pending connections per host limit reached "
                        f"(max_connections_per_host {limits.max_connections_per_host})",
                    )
                )
            others = [c for c in self._pending if all(c is not d for d, _ in drops)]
            if len(others) >= limits.max_pending_connections:
                drops.append(
                    (
                        others[0],
                        "pending connections limit reached "
                        f"(max_pending_connections {limits.max_pending_connections})",
                    )
                )
            for dropped, _ in drops:
                self._pending.remove(dropped)
            self._pending.append(conn)
        for dropped, reason in drops:
            dropped.drop("connection.dropped", reason)
        super().process_request(request, client_address)

    def service_actions(self) -> None:
        """Also drop pending connections whose A-ASSOCIATE-RQ is late (every poll interval).

        pynetdicom's ARTIM timer cannot do it while its reader is blocked on a
        partial PDU.
        """
        super().service_actions()
        deadline = time.monotonic() - self.limits.acse_timeout
        with self._lock:
            late = [c for c in self._pending if c.accepted_at < deadline]
            self._pending = [c for c in self._pending if c.alive and c not in late]
        for conn in late:
            conn.drop(
                "connection.dropped",
                f"no complete A-ASSOCIATE-RQ within acse_timeout ({self.limits.acse_timeout:g} s)",
            )

    # ------------------------------------------------------------------ association events

    def _on_conn_open(self, event: Any) -> None:
        conn = connection_of(event.assoc)
        if conn is not None:
            conn.assoc = event.assoc
            if conn.closed and conn.pending:  # dropped before its association existed
                event.assoc.dul.to_user_queue.put(None)

    def _on_requested(self, event: Any) -> None:
        """The A-ASSOCIATE-RQ is in: no longer pending; take an association slot or reject.

        Replaces pynetdicom's ``maximum_associations`` check, which counts
        pending and closing connections too. The rejection is sent as
        pynetdicom sends its own (A-ASSOCIATE-RJ, then wait for the peer).
        """
        assoc = event.assoc
        conn = connection_of(assoc)
        with self._lock:
            if conn is not None:
                conn.pending = False
                if conn in self._pending:
                    self._pending.remove(conn)
            self._slots = {a for a in self._slots if a.is_alive() and not _ended(a)}
            full = len(self._slots) >= self.limits.max_associations
            if not full:
                self._slots.add(assoc)
        if full:
            assoc.acse.send_reject(REJECTED_TRANSIENT, SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()

    def _free_slot(self, event: Any) -> None:
        with self._lock:
            self._slots.discard(event.assoc)

    @property
    def pending_connections(self) -> int:
        """How many open connections have not sent their whole A-ASSOCIATE-RQ."""
        with self._lock:
            return sum(1 for c in self._pending if c.alive)


def connection_of(assoc: Any) -> Connection | None:
    """The :class:`Connection` of an acceptor association (``None`` for others)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    return getattr(sock, "connection", None)


def _ended(assoc: Any) -> bool:
    return bool(assoc.is_released or assoc.is_aborted or assoc.is_rejected)
