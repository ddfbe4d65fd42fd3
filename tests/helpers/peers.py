"""Real peers for the tests: the node as a subprocess, Orthanc, DCMTK's tools.

Everything listens on 127.0.0.1 on ports chosen free at run time, every wait
is a bounded loop, and every process started here can be stopped or killed by
the fixture that owns it (see ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy.pool import NullPool

LOOPBACK = "127.0.0.1"
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMCJPEG = "/usr/bin/dcmcjpeg"
DCMCJPLS = "/usr/bin/dcmcjpls"
DCMCRLE = "/usr/bin/dcmcrle"
DCMCONV = "/usr/bin/dcmconv"
DCMODIFY = "/usr/bin/dcmodify"
ORTHANC = "/usr/sbin/Orthanc"
DICOM_NODE = str(Path(sys.executable).parent / "dicom-node")
"""The console script installed with the project (never pynetdicom's look-alikes)."""

T = TypeVar("T")


# --------------------------------------------------------------------------- generic


def require_executable(path: str, package: str) -> str:
    """Return `path`, or raise AssertionError (a test failure, never a skip) if it is missing."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(
            f"{path} is missing: install the Debian package {package!r} (the tests need it)."
        )
    return path


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on the loopback right now, never handed out twice in this session."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise AssertionError("could not find a free TCP port")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str] = "condition",
    interval: float = 0.1,
) -> T:
    """Call `predicate` until it returns a truthy value, at most `timeout` seconds.

    Returns the truthy value; raises AssertionError naming `message` on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {text}")
        time.sleep(interval)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on `host`:`port`."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> int | None:
    """SIGTERM `proc`, wait up to `timeout`, then SIGKILL it. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL `proc` (if running) and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):  # a SIGKILLed process ends
        proc.wait(10)


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Nagle off (otherwise ≈ 40 ms per C-STORE)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def storescu(
    port: int,
    files: Iterable[Path | str],
    *,
    called: str = "NODE",
    calling: str = "MODALITY",
    args: Sequence[str] = (),
    timeout: float = 180.0,
    host: str = LOOPBACK,
) -> subprocess.CompletedProcess[str]:
    """Send `files` with DCMTK's ``storescu`` over ONE association; return the result.

    Add ``-xs`` (JPEG lossless), ``-xr`` (RLE), ``-xt`` (JPEG-LS), ``-xv``
    (JPEG 2000) or ``-xd`` (deflated) to `args` to propose compressed syntaxes.
    """
    require_executable(STORESCU, "dcmtk")
    cmd = [STORESCU, "-aet", calling, "-aec", called, *args, host, str(port)]
    cmd += [str(f) for f in files]
    return subprocess.run(
        cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def echoscu(
    port: int,
    *,
    called: str = "NODE",
    calling: str = "MODALITY",
    timeout: float = 60.0,
    host: str = LOOPBACK,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK's ``echoscu``; return the result."""
    require_executable(ECHOSCU, "dcmtk")
    cmd = [ECHOSCU, "-aet", calling, "-aec", called, host, str(port)]
    return subprocess.run(
        cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def mount_tmpfs(path: Path, size_kib: int) -> None:
    """Mount a tmpfs of `size_kib` KiB on `path` (root needed; failure fails the test)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"cannot mount a tmpfs on {path} (root needed): {result.stderr}")


def remount_tmpfs(path: Path, size_kib: int) -> None:
    """Resize a tmpfs mounted by :func:`mount_tmpfs` (its files are kept)."""
    subprocess.run(
        ["mount", "-o", f"remount,size={size_kib}k", str(path)], check=True, capture_output=True
    )


def unmount(path: Path) -> None:
    """Unmount `path`, retrying while busy for a few seconds, then lazily."""
    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# --------------------------------------------------------------------------- TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(document: Mapping[str, Any]) -> str:
    """Render a configuration (tables and arrays of tables only) as TOML."""
    lines: list[str] = []
    for name, value in document.items():
        if isinstance(value, Mapping):
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
            lines.append("")
        elif isinstance(value, list | tuple) and all(isinstance(v, Mapping) for v in value):
            for item in value:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            raise TypeError(f"top-level key {name!r} must be a table or an array of tables")
    return "\n".join(lines)


# --------------------------------------------------------------------------- Orthanc


class Orthanc:
    """An Orthanc PACS on loopback with its own configuration and storage.

    :meth:`stop` and :meth:`start` simulate an outage: the storage (and the
    ports) are kept, so what was stored before is still there afterwards.
    """

    def __init__(self, workdir: Path, ae_title: str = "TESTPACS") -> None:
        require_executable(ORTHANC, "orthanc")
        self.workdir = workdir
        self.ae_title = ae_title
        self.storage = workdir / "storage"
        self.config_path = workdir / "orthanc.json"
        self.log_path = workdir / "orthanc.log"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- lifecycle

    def _write_config(self) -> None:
        config = {
            "Name": self.ae_title,
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "StorageCompression": False,
            "HttpServerEnabled": True,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 30.0) -> None:
        """Start Orthanc and wait until both its REST API and DICOM port answer."""
        if self.running:
            return
        for attempt in range(3):
            self._write_config()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [ORTHANC, str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )
            try:
                wait_until(
                    lambda: (
                        self.proc is None
                        or self.proc.poll() is not None
                        or (self._system_ok() and port_open(self.dicom_port))
                    ),
                    timeout,
                    "Orthanc to answer",
                )
            except AssertionError:
                kill(self.proc)
                raise AssertionError(f"Orthanc did not start:\n{self.log_tail()}") from None
            if self.proc.poll() is None:
                return
            # It exited: most likely a port was taken meanwhile. Pick others, unless
            # the storage already has instances (an outage test needs the same ports).
            if attempt == 2 or (self.storage.exists() and any(self.storage.iterdir())):
                break
            self.dicom_port, self.http_port = free_port(), free_port()
        raise AssertionError(f"Orthanc exited at start-up:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop Orthanc (SIGTERM), keeping its storage."""
        terminate(self.proc, timeout)
        self.proc = None
        wait_until(lambda: not port_open(self.dicom_port), 10, "Orthanc's port to close")

    def kill(self) -> None:
        """SIGKILL Orthanc (used by the finalizer)."""
        kill(self.proc)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP Orthanc: it keeps its sockets but never answers (a hung PACS)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused Orthanc."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        """Whether the Orthanc process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of Orthanc's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def destination(self, name: str = "pacs", **extra: Any) -> dict[str, Any]:
        """This Orthanc as a ``[[destinations]]`` table of the node's configuration."""
        return {
            "name": name,
            "ae_title": self.ae_title,
            "host": LOOPBACK,
            "port": self.dicom_port,
            **extra,
        }

    # ---------------------------------------------------------------- REST

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

    def _system_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/system", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """One REST call; returns the raw body (raises on an HTTP error)."""
        req = urllib.request.Request(f"{self.url}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=30) as response:
            return bytes(response.read())

    def get_json(self, path: str) -> Any:
        """GET `path` and decode the JSON answer."""
        return json.loads(self.request("GET", path))

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return list(self.get_json("/instances"))

    def count(self) -> int:
        """How many instances Orthanc stores."""
        return len(self.instances())

    def tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's simplified tags (keyword → value)."""
        return dict(self.get_json(f"/instances/{instance_id}/simplified-tags"))

    def file(self, instance_id: str) -> bytes:
        """The DICOM file Orthanc stored."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def transfer_syntax(self, instance_id: str) -> str:
        """Transfer syntax UID the instance was received (and stored) with."""
        return self.request("GET", f"/instances/{instance_id}/metadata/TransferSyntax").decode()

    def sop_instance_uids(self) -> list[str]:
        """SOP Instance UIDs of every stored instance (a list: duplicates would show)."""
        expanded = self.get_json("/instances?expand")
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in expanded]

    def find(self, sop_instance_uid: str) -> str | None:
        """Orthanc identifier of the instance with that SOP Instance UID, if stored."""
        found = json.loads(self.request("POST", "/tools/lookup", sop_instance_uid.encode()))
        for item in found:
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return None

    def received_count(self) -> int:
        """Instances Orthanc has received since its database was created.

        Every C-STORE it accepts, duplicates included, bumps this counter in
        Orthanc's change log, so it shows an instance that arrived twice.
        """
        changes = self.get_json("/changes?limit=10000")["Changes"]
        return sum(1 for change in changes if change["ChangeType"] == "NewInstance")

    def wait_for_count(self, count: int, timeout: float = 60.0) -> list[str]:
        """Wait until Orthanc stores at least `count` instances; return their ids."""
        return wait_until(
            lambda: (ids := self.instances()) and len(ids) >= count and ids,
            timeout,
            lambda: f"{count} instances in Orthanc (has {self.count()})",
            interval=0.2,
        )


# --------------------------------------------------------------------------- the node


class NodeProcess:
    """``dicom-node serve`` as a subprocess with its own configuration and data dir."""

    def __init__(
        self,
        workdir: Path,
        document: dict[str, Any],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.document = document
        self.config_path = workdir / "node.toml"
        self.log_path = workdir / "node.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()

    # ---------------------------------------------------------------- configuration

    def write_config(self) -> None:
        """(Re)write the TOML file from :attr:`document`."""
        self.config_path.write_text(to_toml(self.document))

    @property
    def port(self) -> int:
        """The node's DICOM port."""
        return int(self.document["node"]["port"])

    @property
    def ae_title(self) -> str:
        """The node's AE title."""
        return str(self.document["node"]["ae_title"])

    @property
    def data_dir(self) -> Path:
        """The node's data directory."""
        return Path(self.document["storage"]["data_dir"])

    @property
    def spool_dir(self) -> Path:
        """Where received files are kept."""
        return self.data_dir / "spool"

    @property
    def database_url(self) -> str:
        """The database the node uses (SQLAlchemy URL)."""
        url = str(self.document["storage"].get("database_url", ""))
        return url or f"sqlite:///{(self.data_dir / 'node.sqlite3').resolve()}"

    def env(self) -> dict[str, str]:
        """Environment of the node and its CLI: no stray ``DICOM_NODE_*`` overrides."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0, wait: bool = True) -> None:
        """Start ``dicom-node serve`` and (unless `wait` is false) wait until it listens."""
        if self.running:
            raise AssertionError("the node is already running")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [DICOM_NODE, "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.workdir,
            )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the node started by :meth:`start` listens; fail if it exits."""
        proc = self.proc
        assert proc is not None, "the node was not started"
        wait_until(
            lambda: proc.poll() is not None or "scp.listening" in self.new_log(),
            timeout,
            lambda: f"the node to listen; log:\n{self.log_tail()}",
        )
        if proc.poll() is not None:
            raise AssertionError(
                f"the node exited with {proc.returncode} at start-up; log:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the node and wait for it; returns its exit code."""
        code = terminate(self.proc, timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the node (a crash)."""
        kill(self.proc)
        self.proc = None

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (SIGTERM) and start again with the same configuration."""
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        """Whether the node process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The node's process id."""
        assert self.proc is not None
        return self.proc.pid

    # ---------------------------------------------------------------- logs and CLI

    @property
    def log_text(self) -> str:
        """Everything the node has logged (all its runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def new_log(self) -> str:
        """What the node logged since its last start."""
        return self.log_text[self._log_offset :]

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the log (for failure messages)."""
        return self.log_text[-chars:]

    def log_events(self, event: str) -> list[dict[str, str]]:
        """The ``key=value`` fields of every log line for `event` (all runs)."""
        found = []
        for line in self.log_text.splitlines():
            try:
                parts = shlex.split(line)  # values with spaces are JSON-quoted
            except ValueError:
                continue
            if len(parts) >= 4 and parts[3] == event:
                fields = {}
                for part in parts[4:]:
                    key, sep, value = part.partition("=")
                    if sep:
                        fields[key] = value.strip('"')
                found.append(fields)
        return found

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until `text` appears in the log of the current run."""
        wait_until(
            lambda: text in self.new_log(),
            timeout,
            lambda: f"{text!r} in the node's log:\n{self.log_tail()}",
        )

    def cli(
        self, *args: str, config: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``dicom-node ARGS --config <this node's file>`` and return the result."""
        cmd = [DICOM_NODE, *args]
        if config:
            cmd += ["--config", str(self.config_path)]
        return subprocess.run(
            cmd,
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # ---------------------------------------------------------------- database

    def sql(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Run a read query on the node's database; rows as dictionaries."""
        engine = sqlalchemy.create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [
                    dict(row) for row in conn.execute(sqlalchemy.text(query), params).mappings()
                ]
        finally:
            engine.dispose()

    def jobs(self) -> list[dict[str, Any]]:
        """Every job with its instance's SOP Instance UID, oldest first."""
        return self.sql(
            "SELECT jobs.id, jobs.state, jobs.action, jobs.attempts, jobs.completions, "
            "jobs.recoveries, jobs.error, instances.sop_instance_uid "
            "FROM jobs JOIN instances ON instances.id = jobs.instance_id ORDER BY jobs.id"
        )

    def wait_jobs(
        self, count: int, states: Sequence[str] = ("done",), timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Wait until `count` jobs exist and all are in `states`; return them."""

        def ready() -> list[dict[str, Any]] | None:
            jobs = self.jobs()
            if len(jobs) >= count and all(job["state"] in states for job in jobs):
                return jobs
            return None

        return wait_until(
            ready,
            timeout,
            lambda: f"{count} jobs in {states}; have {self.jobs()}; log:\n{self.log_tail()}",
            interval=0.2,
        )

    def spool_files(self) -> list[Path]:
        """Every file under the spool (partial ones included)."""
        if not self.spool_dir.exists():
            return []
        return sorted(p for p in self.spool_dir.rglob("*") if p.is_file())
