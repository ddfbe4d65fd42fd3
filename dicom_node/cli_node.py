"""``dicom-node serve`` and ``dicom-node echo``: the running node and a C-ECHO."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from dicom_node.cli_common import EXIT_FAILURE, EXIT_OK, CommandError, load, open_runtime
from dicom_node.config import validate_ae_title
from dicom_node.errors import ConfigError, NodeError

logger = logging.getLogger("dicom_node.cli")


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node until SIGTERM or SIGINT (the database is migrated first)."""
    from dicom_node.logs import configure_logging, log_event
    from dicom_node.service import NodeService

    config = load(args)
    configure_logging(config.logging.level, config.logging.format)
    runtime = open_runtime(config)
    if any(rule.action == "enhance" for rule in config.rules):
        from dicom_node.inference import get_enhancer

        try:
            enhancer = get_enhancer(config.model)
        except NodeError as exc:
            raise ConfigError(f"model: {exc}") from exc
        from dicom_node.recall_report import find_recall, refuse_recalled

        with runtime.session() as session:
            recall = find_recall(session, enhancer.metadata.sha256)
        if recall is not None:
            runtime.close()
        refuse_recalled(recall, "dicom-node serve")
        log_event(logger, "model.loaded", source=config.model.source, **enhancer.describe())
        import dicom_node.enhance_job  # noqa: F401 - import now, not during the first job
    service = NodeService(runtime)
    stop = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    try:
        service.start()
    except OSError as exc:
        raise CommandError(
            f"Cannot listen on {config.node.host}:{config.node.port}: {exc.strerror or exc}."
        ) from exc
    while not stop.wait(1.0):
        pass
    service.stop()
    runtime.close()
    return EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO a configured destination or an explicit peer."""
    from dicom_node.scu import echo

    if args.name is None and None in (args.aet, args.host, args.port):
        raise ConfigError("Give a destination NAME, or all of --aet, --host and --port.")
    if args.name is not None and any(v is not None for v in (args.aet, args.host, args.port)):
        raise ConfigError("Give either a destination NAME or --aet/--host/--port, not both.")
    calling = args.calling_aet
    if args.name is not None:
        config = load(args)
        dest = config.destination(args.name)
        aet, host, port = dest.ae_title, dest.host, dest.port
        calling = calling or config.node.ae_title
    else:
        aet = validate_ae_title(args.aet, "--aet")
        host, port = args.host, args.port
        if not 1 <= port <= 65535:
            raise ConfigError(f"--port: {port} is not a valid TCP port; expected 1 to 65535.")
        if calling is None:
            try:
                calling = load(args).node.ae_title
            except ConfigError:
                calling = "DICOM_NODE"
    calling = validate_ae_title(calling, "--calling-aet")
    result = echo(calling, aet, host, port, timeout=args.timeout)
    target = f"{aet}@{host}:{port}"
    if result.ok:
        print(f"C-ECHO {target}: success (status 0x0000), round trip {result.rtt_ms:.1f} ms")
        return EXIT_OK
    print(
        f"dicom-node: error: C-ECHO {target} failed: {result.error} (after {result.rtt_ms:.1f} ms)",
        file=sys.stderr,
    )
    return EXIT_FAILURE
