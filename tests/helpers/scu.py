"""An in-process pynetdicom SCU, for tests that need the exact DIMSE status or rejection reason.

DCMTK's tools print statuses as text; these helpers return the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from helpers.peers import LOOPBACK


class Rejection(NamedTuple):
    """An A-ASSOCIATE-RJ as received (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int


def make_ae(calling: str, timeout: float = 30.0) -> AE:
    """A requestor AE with short timeouts."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def associate(
    port: int,
    *,
    called: str = "NODE",
    calling: str = "PYSCU",
    contexts: Sequence[Any] | None = None,
    timeout: float = 30.0,
) -> Any:
    """Open an association (Verification by default); the caller releases it."""
    ae = make_ae(calling, timeout)
    ae.requested_contexts = list(contexts or [build_context(Verification)])
    return ae.associate(LOOPBACK, port, ae_title=called)


def rejection_of(assoc: Any) -> Rejection | None:
    """The rejection an association got, or ``None`` if it was not rejected."""
    if not assoc.is_rejected:
        return None
    primitive = assoc.acceptor.primitive
    return Rejection(int(primitive.result), int(primitive.result_source), int(primitive.diagnostic))


def store(
    port: int,
    items: Sequence[Dataset | Path],
    *,
    called: str = "NODE",
    calling: str = "PYSCU",
    timeout: float = 60.0,
) -> list[int | None]:
    """C-STORE every item over one association; return each response status.

    ``None`` stands for an empty response (timeout or abort). Datasets are sent
    in the transfer syntax of their ``file_meta`` (Explicit VR Little Endian
    when they have none).
    """
    datasets: list[Dataset] = []
    for item in items:
        if isinstance(item, Path):
            import pydicom

            datasets.append(pydicom.dcmread(item))
        else:
            datasets.append(item)
    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            raise ValueError("give every dataset a file_meta.TransferSyntaxUID")
        ts = str(ds.file_meta.TransferSyntaxUID)
        wanted = syntaxes.setdefault(str(ds.SOPClassUID), [])
        if ts not in wanted:
            wanted.append(ts)
    contexts = [
        build_context(
            sop_class, list(dict.fromkeys([*ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        )
        for sop_class, ts in syntaxes.items()
    ]
    assoc = associate(port, called=called, calling=calling, contexts=contexts, timeout=timeout)
    if not assoc.is_established:
        raise AssertionError(f"association failed: {rejection_of(assoc)}")
    statuses: list[int | None] = []
    try:
        for ds in datasets:
            response = assoc.send_c_store(ds)
            statuses.append(int(response.Status) if "Status" in response else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
