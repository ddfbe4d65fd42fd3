"""The sending side: C-ECHO and batched C-STORE SCU (pynetdicom).

:func:`send_batch` opens **one** association for a batch of files to one
destination and checks every response. An empty response (timeout, abort)
is a failure, never a success. A file whose transfer syntax the peer accepts
is sent byte for byte as it was stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.config import Destination
from dicom_node.scp import set_nodelay

logger = logging.getLogger(__name__)

# A file sent by path is streamed from disk as stored, not decoded and re-encoded.
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128
SUCCESS_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
"""Success, and the three warnings that still mean "stored"."""


@dataclass(frozen=True)
class SendItem:
    """One file to send."""

    key: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class SendResult:
    """Outcome of one C-STORE."""

    key: int
    ok: bool
    status: int | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True)
class EchoResult:
    """Outcome of one C-ECHO."""

    ok: bool
    status: int | None
    rtt_ms: float
    error: str | None


def _make_ae(calling_aet: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def echo(
    calling_aet: str, ae_title: str, host: str, port: int, timeout: float = 10.0
) -> EchoResult:
    """Send a C-ECHO and time the round trip.

    Returns
    -------
    EchoResult
        ``ok`` is true only for a 0x0000 response; `error` says why otherwise.
    """
    ae = _make_ae(calling_aet, timeout)
    ae.add_requested_context(Verification)
    start = time.perf_counter()
    assoc, connection = _associate(ae, host, port, ae_title)
    if not assoc.is_established:
        rtt = (time.perf_counter() - start) * 1000
        return EchoResult(False, None, rtt, _association_failure(assoc, connection, host, port))
    try:
        status = assoc.send_c_echo()
        rtt = (time.perf_counter() - start) * 1000
        code = int(status.Status) if "Status" in status else None
        if code is None:
            return EchoResult(False, None, rtt, "no response (timeout or abort)")
        return EchoResult(code == 0, code, rtt, None if code == 0 else f"status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()


class _Connection:
    """Notes whether the TCP connection opened, to tell "refused" from "aborted"."""

    def __init__(self) -> None:
        self.opened = False

    def on_open(self, event: Any) -> None:
        self.opened = True
        set_nodelay(event)

    @property
    def handlers(self) -> list[Any]:
        return [(evt.EVT_CONN_OPEN, self.on_open)]


def _associate(ae: AE, host: str, port: int, ae_title: str) -> tuple[Any, _Connection]:
    connection = _Connection()
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=connection.handlers)
    return assoc, connection


def _association_failure(assoc: Any, connection: _Connection, host: str, port: int) -> str:
    if not connection.opened:
        return f"cannot connect to {host}:{port} (connection refused or timed out)"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        if rj is not None:
            return (
                f"association rejected (result {rj.result_str}, source {rj.source_str}, "
                f"reason {rj.reason_str})"
            )
        return "association rejected"
    if assoc.is_aborted:
        return "association aborted"
    return "connection failed or timed out"


UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


def _context_keys(item: SendItem) -> list[tuple[str, tuple[str, ...]]]:
    """The presentation contexts `item` needs: its own syntax, and uncompressed as fallback.

    An acceptor picks ONE transfer syntax per context (often an uncompressed
    one), so a compressed syntax proposed in the same context as the
    uncompressed ones is usually refused and the file would be decompressed.
    Each other syntax therefore gets a context of its own.
    """
    keys: list[tuple[str, tuple[str, ...]]] = []
    if item.transfer_syntax_uid not in UNCOMPRESSED:
        keys.append((item.sop_class_uid, (item.transfer_syntax_uid,)))
    keys.append((item.sop_class_uid, UNCOMPRESSED))
    return keys


def _contexts_for(items: Sequence[SendItem]) -> list[Any]:
    keys: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        for key in _context_keys(item):
            keys[key] = None
    return [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in keys]


def split_for_contexts(items: Sequence[SendItem]) -> list[list[SendItem]]:
    """Split `items` so no batch needs more than the 128 presentation contexts allowed."""
    batches: list[list[SendItem]] = []
    current: list[SendItem] = []
    keys: set[tuple[str, tuple[str, ...]]] = set()
    for item in items:
        needed = set(_context_keys(item)) - keys
        if current and len(keys) + len(needed) > MAX_CONTEXTS:
            batches.append(current)
            current, keys = [], set()
            needed = set(_context_keys(item))
        current.append(item)
        keys |= needed
    if current:
        batches.append(current)
    return batches


def _accepted_syntax(assoc: Any, sop_class_uid: str, wanted: str) -> str | None:
    syntaxes = [
        cx.transfer_syntax[0]
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class_uid
    ]
    if wanted in syntaxes:
        return wanted
    for ts in UNCOMPRESSED:
        if ts in syntaxes:
            return ts
    return None


def send_batch(
    calling_aet: str,
    destination: Destination,
    items: Sequence[SendItem],
    timeout: float = 30.0,
) -> list[SendResult]:
    """C-STORE `items` to `destination` over one association.

    Parameters
    ----------
    calling_aet : str
        The node's own AE title.
    destination : Destination
        The peer.
    items : Sequence[SendItem]
        Files to send; at most 128 distinct SOP classes
        (see :func:`split_for_contexts`).
    timeout : float, optional
        ACSE, DIMSE and network timeout in seconds.

    Returns
    -------
    list[SendResult]
        One result per item, in order. A compressed file is decompressed when
        the peer accepts its SOP class only uncompressed.
    """
    if not items:
        return []
    ae = _make_ae(calling_aet, timeout)
    ae.requested_contexts = _contexts_for(items)
    start = time.perf_counter()
    assoc, connection = _associate(ae, destination.host, destination.port, destination.ae_title)
    if not assoc.is_established:
        reason = _association_failure(assoc, connection, destination.host, destination.port)
        elapsed = (time.perf_counter() - start) * 1000
        return [SendResult(item.key, False, None, reason, elapsed) for item in items]
    results: list[SendResult] = []
    try:
        for item in items:
            results.append(_send_one(assoc, item))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _send_one(assoc: Any, item: SendItem) -> SendResult:
    start = time.perf_counter()

    def result(ok: bool, status: int | None, error: str | None) -> SendResult:
        return SendResult(item.key, ok, status, error, (time.perf_counter() - start) * 1000)

    if not assoc.is_established:
        return result(False, None, "association lost before sending")
    syntax = _accepted_syntax(assoc, item.sop_class_uid, item.transfer_syntax_uid)
    if syntax is None:
        return result(False, None, f"the peer accepted no context for {item.sop_class_uid}")
    if syntax == item.transfer_syntax_uid:
        # The peer takes the file's own transfer syntax: send the stored bytes as they
        # are (pynetdicom streams the dataset from the file, no decode/re-encode).
        return _store(assoc, item.path, result)
    try:
        ds = pydicom.dcmread(item.path)
        if syntax != item.transfer_syntax_uid:
            if UID(item.transfer_syntax_uid).is_compressed:
                ds.decompress()
            elif UID(item.transfer_syntax_uid).is_deflated:
                # Inflated on reading: pynetdicom re-encodes it in the accepted syntax.
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except Exception as exc:  # noqa: BLE001 - an unreadable file fails this item only
        return result(False, None, f"cannot read {item.path}: {exc}")
    return _store(assoc, ds, result)


def _store(
    assoc: Any,
    dataset: Dataset | Path,
    result: Callable[[bool, int | None, str | None], SendResult],
) -> SendResult:
    try:
        response = assoc.send_c_store(dataset)
    except Exception as exc:  # noqa: BLE001 - any failure is this item's failure
        return result(False, None, f"send failed: {exc}")
    if "Status" not in response:
        return result(False, None, "no response (timeout or abort)")
    status = int(response.Status)
    if status in SUCCESS_STATUSES:
        return result(True, status, None)
    comment = str(response.get("ErrorComment", "")).strip()
    return result(False, status, f"status 0x{status:04X}" + (f": {comment}" if comment else ""))
