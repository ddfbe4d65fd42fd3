"""The listening side: C-STORE and C-ECHO SCP (pynetdicom).

Handlers are thin: the C-STORE handler parses the received bytes just enough
to check and route them, hands them to :func:`~dicom_node.ingest.ingest`
and maps every failure class to its own DIMSE status. The calling and called
AE title checks are pynetdicom's, which answers with the proper
A-ASSOCIATE-RJ reasons; timeouts, connection limits, ``max_associations`` and
the PDU size cap are the node's own (:mod:`dicom_node.connection_limits`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.connection_limits import EdgeLimits, GuardedServer
from dicom_node.dataset_info import NonConformantError, UndecodableError, inspect_encoded
from dicom_node.errors import StorageError
from dicom_node.ingest import ingest
from dicom_node.logs import log_event
from dicom_node.runtime import Runtime

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
"""How long :meth:`StorageSCP.stop` lets open associations finish before aborting them."""

UNLIMITED_BY_PYNETDICOM = 1_000_000
"""``AE.maximum_associations``: pynetdicom counts every connection thread, pending ones
too; :class:`~dicom_node.connection_limits.GuardedServer` counts associations instead."""

REJECTION_REASONS: dict[tuple[int, int], str] = {
    (0x01, 0x03): "calling AE title not in allowed_calling_aets",
    (0x01, 0x07): "called AE title is not this node's",
    (0x02, 0x01): "user identity not accepted",
    (0x03, 0x02): "association limit reached (max_associations {max_associations})",
}
"""Why an association was rejected, by (result source, diagnostic) of the A-ASSOCIATE-RJ."""

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0xC211

STORE_STATUSES: dict[int, str] = {
    STATUS_SUCCESS: "Success: the instance is on disk and recorded (never answered before).",
    STATUS_OUT_OF_RESOURCES: "Refused, out of resources: the spool or the database cannot "
    "persist it (disk full, database down); the sender should retry later.",
    STATUS_DATASET_MISMATCH: "Error, data set does not match SOP class: identifying attributes "
    "are missing, invalid or disagree with the request.",
    STATUS_CANNOT_UNDERSTAND: "Error, cannot understand: the data set cannot be decoded.",
    STATUS_PROCESSING_FAILURE: "Failure, processing failure: anything unexpected; the node "
    "keeps serving.",
}
"""Every C-STORE status the SCP answers, and when (the conformance statement lists them)."""

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


def set_nodelay(event: Any) -> None:
    """Disable Nagle's algorithm on the association's socket (≈ 40 ms per C-STORE)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StorageSCP:
    """The node's application entity as an association acceptor.

    Parameters
    ----------
    runtime : Runtime
        The process runtime; its configuration's ``[node]`` section sets the
        AE title, address, allowed callers and limits.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.config.node
        ae = AE(ae_title=settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.require_called_aet = True
        ae.require_calling_aet = list(settings.allowed_calling_aets)
        ae.maximum_associations = UNLIMITED_BY_PYNETDICOM
        ae.acse_timeout = settings.acse_timeout
        ae.dimse_timeout = settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        ae.maximum_pdu_size = settings.max_pdu_size
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae = ae
        self._server: ThreadedAssociationServer | None = None
        self._stats: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The TCP port actually listened on (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("The SCP is not started.")
        return int(self._server.server_address[1])

    def start(self, port: int | None = None) -> None:
        """Start listening in background threads.

        Parameters
        ----------
        port : int, optional
            Listen on this port instead of ``[node] port``; ``0`` lets the
            kernel choose a free one (read it back from :attr:`port`). For
            tests and tools that run the SCP in-process.
        """
        settings = self.runtime.config.node
        listen_port = settings.port if port is None else port
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed, ["released"]),
            (evt.EVT_ABORTED, self._on_closed, ["aborted"]),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        # ae.start_server() does not take a server class: this is its
        # non-blocking branch with GuardedServer (ae._servers lets
        # AssociationServer.shutdown() find it).
        server = self.ae.make_server(
            (settings.host, listen_port),
            evt_handlers=handlers,
            server_class=GuardedServer,
            limits=EdgeLimits.from_settings(settings),
        )
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="scp-listener", daemon=True).start()
        self._server = server
        log_event(
            logger,
            "scp.listening",
            ae_title=settings.ae_title,
            host=settings.host,
            port=self.port,
            allowed_calling_aets=",".join(settings.allowed_calling_aets) or "*",
            max_associations=settings.max_associations,
            max_pending_connections=settings.max_pending_connections,
            max_connections_per_host=settings.max_connections_per_host,
            max_pdu_size=settings.max_pdu_size,
        )

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting associations, let open ones end for `grace` seconds, abort the rest.

        A modality in the middle of a study gets to finish it; one that keeps an
        idle association open does not hold the node's shutdown for its whole
        network timeout. What an aborted association had not been answered for
        is re-sent by its modality (nothing is acknowledged before it is stored).
        """
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()
        deadline = time.monotonic() + grace
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = server.active_associations
        for assoc in remaining:
            assoc.abort()
        log_event(logger, "scp.stopped", aborted=len(remaining))

    # ------------------------------------------------------------------ association events

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        with self._lock:
            self._stats[id(assoc)] = {"start": time.perf_counter(), "stored": 0, "failed": 0}
        log_event(
            logger,
            "association.accepted",
            calling_aet=assoc.requestor.ae_title,
            called_aet=assoc.acceptor.ae_title,
            peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
            contexts=len(assoc.accepted_contexts),
        )

    def _on_rejected(self, event: Any) -> None:
        assoc = event.assoc
        answer = assoc.acceptor.primitive
        source, diagnostic = (
            (int(answer.result_source), int(answer.diagnostic)) if answer is not None else (0, 0)
        )
        reason = REJECTION_REASONS.get(
            (source, diagnostic), f"result source {source}, diagnostic {diagnostic}"
        ).format(max_associations=self.runtime.config.node.max_associations)
        request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ, rejected before or after
        log_event(  # pynetdicom copied its calling AE title to assoc.requestor
            logger,
            "association.rejected",
            level=logging.WARNING,
            reason=reason,
            calling_aet=request.calling_ae_title if request is not None else None,
            called_aet=request.called_ae_title if request is not None else None,
            peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
        )

    def _on_closed(self, event: Any, how: str) -> None:
        assoc = event.assoc
        with self._lock:
            stats = self._stats.pop(id(assoc), None)
        if stats is None:
            return
        log_event(
            logger,
            f"association.{how}",
            calling_aet=assoc.requestor.ae_title,
            stored=stats["stored"],
            failed=stats["failed"],
            duration_ms=(time.perf_counter() - stats["start"]) * 1000,
        )

    def _count(self, event: Any, key: str) -> None:
        with self._lock:
            stats = self._stats.get(id(event.assoc))
            if stats is not None:
                stats[key] += 1

    # ------------------------------------------------------------------ DIMSE handlers

    def _on_echo(self, event: Any) -> int:
        log_event(logger, "echo.received", calling_aet=event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        status = self.handle_store(event)
        self._count(event, "stored" if status == STATUS_SUCCESS else "failed")
        return status

    def handle_store(self, event: Any) -> int:
        """Persist one C-STORE request and return its DIMSE status.

        0x0000 only once the instance is on disk and recorded; 0xC210 when
        the dataset cannot be decoded; 0xA900 when identifying attributes are
        missing or disagree with the request; 0xA700 when the spool or the
        database cannot persist it; 0xC211 for anything unexpected.
        """
        calling_aet = event.assoc.requestor.ae_title
        requested_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset(include_meta=True)
            info, _ds = inspect_encoded(data)
        except UndecodableError as exc:
            return self._refuse(STATUS_CANNOT_UNDERSTAND, requested_uid, calling_aet, str(exc))
        except NonConformantError as exc:
            return self._refuse(STATUS_DATASET_MISMATCH, requested_uid, calling_aet, str(exc))
        except Exception as exc:  # noqa: BLE001 - a peer must get a status, never a crash
            return self._refuse(STATUS_CANNOT_UNDERSTAND, requested_uid, calling_aet, str(exc))
        if requested_uid and info.sop_instance_uid != requested_uid:
            return self._refuse(
                STATUS_DATASET_MISMATCH,
                requested_uid,
                calling_aet,
                f"The dataset's SOP Instance UID {info.sop_instance_uid} differs from the "
                "request's Affected SOP Instance UID.",
            )
        try:
            ingest(self.runtime, data, info, calling_aet)
        except StorageError as exc:
            return self._refuse(STATUS_OUT_OF_RESOURCES, requested_uid, calling_aet, str(exc))
        except Exception as exc:
            logger.exception("unexpected error while storing %s", requested_uid)
            return self._refuse(STATUS_PROCESSING_FAILURE, requested_uid, calling_aet, str(exc))
        return STATUS_SUCCESS

    def _refuse(self, status: int, sop_instance_uid: str, calling_aet: str, reason: str) -> int:
        log_event(
            logger,
            "instance.refused",
            level=logging.WARNING,
            status=f"0x{status:04X}",
            sop_instance_uid=sop_instance_uid,
            calling_aet=calling_aet,
            reason=reason,
        )
        return status
