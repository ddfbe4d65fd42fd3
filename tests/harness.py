"""An in-process node for fast tests: receive → store → job → infer → derive → send in seconds.

:class:`InProcessNode` builds a real :class:`~dicom_node.runtime.Runtime` on a
temporary SQLite database from a real TOML configuration, listens with the
node's own :class:`~dicom_node.scp.StorageSCP` on a free port chosen by the
kernel (port 0), and sends to a :class:`SinkSCP`: a pynetdicom storage SCP
that keeps what it receives in memory. Nothing runs in the background except
the two listeners: :meth:`InProcessNode.pump` runs the worker and the
dispatcher in the test's thread until neither has anything due, so a test
decides exactly when work happens.

The real-peer tests (DCMTK, Orthanc, ``dicom-node serve`` as a process) stay:
this harness is for the logic between them, not instead of them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from helpers.peers import LOOPBACK, to_toml
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicom_node.config import load_config
from dicom_node.dispatch import dispatch_due
from dicom_node.runtime import Runtime
from dicom_node.scp import StorageSCP
from dicom_node.worker import drain

FAST_JOBS: dict[str, Any] = {
    "max_attempts": 3,
    "retry_base_delay": 0.05,
    "retry_max_delay": 0.1,
    "retry_jitter": 0.0,
    "poll_interval": 0.2,
    "lease_seconds": 30.0,
}
"""Retry settings that let a test wait out a backoff in a fraction of a second."""

MAX_PUMP_ROUNDS = 200
"""Upper bound of :meth:`InProcessNode.pump` rounds: a test never loops forever."""


@dataclass
class SinkSCP:
    """A storage SCP standing in for the PACS: keeps every received dataset in memory.

    Parameters
    ----------
    ae_title : str
        Its AE title.
    status : int
        The C-STORE status it answers (``0x0000`` success; e.g. ``0xA700`` to
        play a PACS that is out of resources).
    """

    ae_title: str = "SINK"
    status: int = 0x0000
    received: list[Dataset] = field(default_factory=list)
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SinkSCP:
        """Listen on a free loopback port."""
        ae = AE(ae_title=self.ae_title)
        ae.network_timeout = 10
        ae.acse_timeout = 10
        ae.dimse_timeout = 10
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            (LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def _on_store(self, event: Any) -> int:
        if self.status == 0x0000:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            with self._lock:
                self.received.append(dataset)
        return self.status

    @property
    def port(self) -> int:
        """The port the sink listens on."""
        return int(self._server.server_address[1])

    def destination(self, name: str = "pacs", **extra: Any) -> dict[str, Any]:
        """This sink as a ``[[destinations]]`` table of the node's configuration."""
        return {
            "name": name,
            "ae_title": self.ae_title,
            "host": LOOPBACK,
            "port": self.port,
            **extra,
        }

    def stop(self) -> None:
        """Stop listening (a later send to it is refused: a PACS that is down)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


class InProcessNode:
    """The node's runtime, SCP, worker and dispatcher in the test's process.

    Parameters
    ----------
    workdir : pathlib.Path
        A temporary folder for the configuration, the SQLite database and the spool.
    rules : sequence of mapping
        The ``[[rules]]`` tables.
    destinations : sequence of mapping
        The ``[[destinations]]`` tables (e.g. :meth:`SinkSCP.destination`).
    model : pathlib.Path, optional
        ``[model] path`` (e.g. a tiny model of :mod:`onnx_models`); default the bundled one.
    sections : mapping, optional
        More top-level tables or keys merged over the defaults (``jobs``, ``output``…).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        rules: Sequence[Mapping[str, Any]],
        destinations: Sequence[Mapping[str, Any]],
        model: Path | None = None,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {
            "node": {"ae_title": "NODE", "host": LOOPBACK, "port": 11112},
            "storage": {"data_dir": str(workdir / "data")},
            "jobs": dict(FAST_JOBS),
            "logging": {"level": "INFO", "format": "text"},
        }
        if model is not None:
            document["model"] = {"path": str(model)}
        for name, values in (sections or {}).items():
            document[name] = {**document.get(name, {}), **values}
        document["destinations"] = [dict(d) for d in destinations]
        document["rules"] = [dict(r) for r in rules]
        self.config_path = workdir / "node.toml"
        self.config_path.write_text(to_toml(document), encoding="utf-8")
        self.config = load_config(self.config_path, environ={})
        self.runtime = Runtime.create(self.config)
        self.scp = StorageSCP(self.runtime)
        # Port 0: the kernel picks a free port, so parallel tests never collide.
        self.scp.start(port=0)

    @property
    def port(self) -> int:
        """The port the node's SCP listens on."""
        return self.scp.port

    def store(self, dataset: Dataset, calling_ae: str = "MODALITY") -> int:
        """Send one dataset to the node with C-STORE; return the status the node answered."""
        ae = AE(ae_title=calling_ae)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate(LOOPBACK, self.port, ae_title=self.config.node.ae_title)
        if not assoc.is_established:
            raise AssertionError(f"The node refused the association from {calling_ae}.")
        try:
            status = assoc.send_c_store(dataset)
        finally:
            assoc.release()
        if "Status" not in status:
            raise AssertionError("The node did not answer the C-STORE.")
        return int(status.Status)

    def pump(self, max_rounds: int = MAX_PUMP_ROUNDS) -> int:
        """Run the worker and the dispatcher until neither has anything due.

        Returns the number of rounds that did work. Work that is not due yet
        (a retry waiting out its backoff) is left alone: call again later.
        """
        for busy_rounds in range(max_rounds):
            processed = drain(self.runtime)
            sent = dispatch_due(self.runtime)
            if not processed and not sent:
                return busy_rounds
        raise AssertionError(f"The node was still busy after {max_rounds} rounds.")

    def close(self) -> None:
        """Stop listening and dispose of the database engine."""
        self.scp.stop()
        self.runtime.stopping.set()
        self.runtime.close()


def dataset_from_bytes(data: bytes) -> Dataset:
    """Decode a DICOM file held in memory (e.g. a spool file read back)."""
    return pydicom.dcmread(BytesIO(data))
