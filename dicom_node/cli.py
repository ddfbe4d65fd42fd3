"""The ``dicom-node`` command line.

Exit codes: 0 success, 1 the operation failed (peer unreachable, a file could
not be processed), 2 invalid configuration or usage. Errors are one line on
stderr, starting with ``dicom-node: error:``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dicom_node import __version__
from dicom_node.config import DEFAULT_CONFIG_PATH, Config, load_config
from dicom_node.errors import ConfigError, NodeError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger(__name__)


class CommandError(NodeError):
    """A command could not do what was asked; exits 1 with the message."""


def _load(args: argparse.Namespace, installed_model: bool = True) -> Config:
    return load_config(Path(args.config) if args.config else None, installed_model=installed_model)


def _load_or_defaults(args: argparse.Namespace) -> Config:
    """The configuration, or the built-in defaults when no file was named and none exists."""
    try:
        return _load(args)
    except ConfigError:
        if args.config or os.environ.get("DICOM_NODE_CONFIG") or DEFAULT_CONFIG_PATH.exists():
            raise
        return Config()


def _runtime(config: Config) -> Any:
    from dicom_node.runtime import Runtime

    try:
        return Runtime.create(config)
    except Exception as exc:  # sqlalchemy errors: unreachable database, bad URL
        # The driver's message without SQLAlchemy's SQL and links, on one line.
        cause = getattr(exc, "orig", None) or exc
        raise CommandError(f"Cannot open the database: {' '.join(str(cause).split())}") from exc


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node until SIGTERM or SIGINT."""
    from dicom_node.logs import configure_logging, log_event
    from dicom_node.service import NodeService

    config = _load(args)
    configure_logging(config.logging.level, config.logging.format)
    runtime = _runtime(config)
    if any(rule.action == "enhance" for rule in config.rules):
        from dicom_node.inference import get_enhancer

        try:
            enhancer = get_enhancer(config.model)
        except NodeError as exc:
            raise ConfigError(f"model: {exc}") from exc
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


# --------------------------------------------------------------------------- echo


def cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO a configured destination or an explicit peer."""
    from dicom_node.config import validate_ae_title
    from dicom_node.scu import echo

    if args.name is None and None in (args.aet, args.host, args.port):
        raise ConfigError("Give a destination NAME, or all of --aet, --host and --port.")
    if args.name is not None and any(v is not None for v in (args.aet, args.host, args.port)):
        raise ConfigError("Give either a destination NAME or --aet/--host/--port, not both.")
    calling = args.calling_aet
    if args.name is not None:
        config = _load(args)
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
                calling = _load(args).node.ae_title
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


# --------------------------------------------------------------------------- jobs


def cmd_jobs(args: argparse.Namespace) -> int:
    """``jobs list``, ``jobs show ID``, ``jobs retry ID``."""
    from dicom_node import jobs_report

    config = _load(args)
    runtime = _runtime(config)
    try:
        if args.jobs_command == "list":
            rows = jobs_report.list_jobs(runtime, state=args.state, limit=args.limit)
            if args.json:
                print(json.dumps(rows, indent=2, default=str))
            else:
                print(jobs_report.format_table(rows))
            return EXIT_OK
        if args.jobs_command == "show":
            detail = jobs_report.show_job(runtime, args.id)
            if detail is None:
                raise CommandError(f"There is no job {args.id}.")
            if args.json:
                print(json.dumps(detail, indent=2, default=str))
            else:
                print(jobs_report.format_detail(detail))
            return EXIT_OK
        from dicom_node.jobs import JobNotFoundError, retry

        try:
            print(retry(runtime, args.id))
        except (JobNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        return EXIT_OK
    finally:
        runtime.close()


# --------------------------------------------------------------------------- config


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the configuration; with ``--explain FILE`` show the matching rule."""
    from dicom_node.routing import rule_strength
    from dicom_node.strength import format_strength

    config = _load(args)
    source = config.source or "defaults"
    print(f"Configuration {source} is valid.")
    print(
        f"  node: AE title {config.node.ae_title!r} on {config.node.host}:{config.node.port}, "
        f"callers {', '.join(config.node.allowed_calling_aets) or 'any'}, "
        f"max {config.node.max_associations} associations"
    )
    print(f"  storage: {config.storage.data_dir} ({config.storage.effective_database_url})")
    print(
        f"  model: {config.model.path or 'the bundled model'} ({config.model.source}), "
        f"strength {format_strength(config.model.strength)}"
    )
    for dest in config.destinations:
        print(f"  destination {dest.name}: {dest.ae_title}@{dest.host}:{dest.port}")
    for rule in config.rules:
        targets = ", ".join(rule.destinations) or "all destinations"
        strength = ""
        if rule.action == "enhance":
            strength = f", strength {format_strength(rule_strength(config, rule))}"
        print(f"  rule {rule.name}: {rule.action} -> {targets}{strength}")
    for path in args.explain or []:
        from dicom_node.dataset_info import inspect_file
        from dicom_node.routing import route

        try:
            info, _ds = inspect_file(Path(path))
        except ValueError as exc:
            raise CommandError(f"{path}: {exc}") from exc
        decision = route(config, info, args.calling_aet)
        targets = ", ".join(decision.destinations) or "none"
        print(
            f"{path}: action {decision.action}, rule {decision.rule or '-'} "
            f"({decision.reason}); destinations: {targets}"
        )
    return EXIT_OK


# --------------------------------------------------------------------------- model / enhance


def cmd_model_info(args: argparse.Namespace) -> int:
    """Show the loaded model's metadata and the execution provider."""
    from dataclasses import replace

    from dicom_node.inference import get_enhancer

    config = _load_or_defaults(args)
    settings = config.model
    if args.model:
        settings = replace(settings, path=Path(args.model), path_source="command line")
    enhancer = get_enhancer(settings)
    info: dict[str, Any] = {}
    for key, value in enhancer.describe().items():
        info[key] = value
        if key == "path":
            info["source"] = settings.source
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key.ljust(width)}  {value}")
    return EXIT_OK


def cmd_model_install(args: argparse.Namespace) -> int:
    """Validate an ONNX file, copy it under data_dir/models and make it the active model."""
    from dicom_node.model_store import install_model

    config = _load(args, installed_model=False)
    result = install_model(Path(args.file), config.storage.data_dir)
    record = result.record
    what = f"{record.model_name} {record.model_version} (sha256 {record.short_hash})"
    if result.activated:
        print(f"Installed {what} as {result.path}; it is the active model.")
    else:
        print(f"{what} is installed and active already: {result.path}.")
    print("A running node loads it at its next start (for example: systemctl restart dicom-node).")
    if config.model.path is not None:
        print(
            f"Note: [model] path = {str(config.model.path)!r} in the configuration takes "
            "precedence over the installed model; empty it to use the installed one."
        )
    return EXIT_OK


def cmd_model_list(args: argparse.Namespace) -> int:
    """List the installed models and mark the active one."""
    from dicom_node.model_store import list_installed, models_dir

    config = _load(args, installed_model=False)
    items, problem = list_installed(config.storage.data_dir)
    if args.json:
        rows = [
            {
                "file": str(item.path),
                "active": item.active,
                **(
                    {k: v for k, v in asdict(item.record).items() if k != "file"}
                    if item.record
                    else {}
                ),
            }
            for item in items
        ]
        print(json.dumps({"models": rows, "active_error": problem}, indent=2))
        return EXIT_OK
    if not items:
        print(f"No models are installed in {models_dir(config.storage.data_dir)}.")
    else:
        table = [("", "FILE", "NAME", "VERSION", "SHA256", "INSTALLED")]
        for item in items:
            rec = item.record
            table.append(
                (
                    "*" if item.active else "",
                    item.path.name,
                    rec.model_name if rec else "-",
                    rec.model_version if rec else "-",
                    rec.short_hash if rec else "-",
                    rec.installed_at if rec else "(no install record)",
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        print(f"(* active; folder {models_dir(config.storage.data_dir)})")
    if problem:
        print(f"No usable active model: {problem}")
    if config.model.path is not None:
        print(f"[model] path = {str(config.model.path)!r} overrides the installed models.")
    return EXIT_OK


def cmd_enhance(args: argparse.Namespace) -> int:
    """Enhance files offline: DICOM in → derived DICOM out; PNG/TIFF/JPEG in → PNG out."""
    from dataclasses import replace

    from dicom_node.offline import enhance_files
    from dicom_node.strength import check_strength

    strength: float | None = None
    if args.strength is not None:
        try:
            strength = check_strength(args.strength, "--strength")
        except ValueError as exc:
            raise ConfigError(
                f"--strength: {args.strength} is out of range; expected 0 to 1."
            ) from exc
    config = _load_or_defaults(args)
    if args.model:
        model = replace(config.model, path=Path(args.model), path_source="command line")
        config = replace(config, model=model)
    failures = enhance_files(
        config, [Path(p) for p in args.inputs], Path(args.output), strength=strength
    )
    return EXIT_FAILURE if failures else EXIT_OK


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``dicom-node``."""
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="PACS-integrated DICOM node that enhances chest x-rays.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $DICOM_NODE_CONFIG or config/node.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the node")
    serve.set_defaults(func=cmd_serve)

    echo_p = sub.add_parser("echo", parents=[common], help="C-ECHO a destination or a peer")
    echo_p.add_argument("name", nargs="?", help="name of a configured destination")
    echo_p.add_argument("--aet", help="called AE title")
    echo_p.add_argument("--host")
    echo_p.add_argument("--port", type=int)
    echo_p.add_argument("--calling-aet", help="calling AE title (default: the node's)")
    echo_p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    echo_p.set_defaults(func=cmd_echo)

    jobs_p = sub.add_parser("jobs", help="inspect and retry jobs")
    jobs_sub = jobs_p.add_subparsers(dest="jobs_command", required=True)
    jl = jobs_sub.add_parser("list", parents=[common], help="list recent jobs")
    jl.add_argument(
        "--state",
        choices=("queued", "running", "sending", "done", "failed", "dead_lettered"),
        help="only jobs in this state",
    )
    jl.add_argument("--limit", type=int, default=50)
    jl.add_argument("--json", action="store_true")
    js = jobs_sub.add_parser("show", parents=[common], help="show one job")
    js.add_argument("id", type=int)
    js.add_argument("--json", action="store_true")
    jr = jobs_sub.add_parser("retry", parents=[common], help="re-queue a failed job")
    jr.add_argument("id", type=int)
    jobs_p.set_defaults(func=cmd_jobs)

    config_p = sub.add_parser("config", help="configuration tools")
    config_sub = config_p.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", parents=[common], help="validate the configuration")
    check.add_argument(
        "--explain", metavar="FILE", action="append", help="show which rule matches FILE"
    )
    check.add_argument(
        "--calling-aet", default="", help="calling AE title to assume with --explain"
    )
    check.set_defaults(func=cmd_config_check)

    model_p = sub.add_parser("model", help="the ONNX model")
    model_sub = model_p.add_subparsers(dest="model_command", required=True)
    info = model_sub.add_parser("info", parents=[common], help="show the model and provider")
    info.add_argument("--model", metavar="FILE", help="an ONNX file instead of the configured one")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_model_info)
    install = model_sub.add_parser(
        "install", parents=[common], help="validate an ONNX file and make it the active model"
    )
    install.add_argument("file", metavar="FILE", help="the ONNX model to install")
    install.set_defaults(func=cmd_model_install)
    listing = model_sub.add_parser("list", parents=[common], help="list the installed models")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_model_list)

    enh = sub.add_parser("enhance", parents=[common], help="enhance files offline")
    enh.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM, PNG, TIFF or JPEG files")
    enh.add_argument("--output", "-o", required=True, metavar="DIR")
    enh.add_argument("--model", metavar="FILE", help="an ONNX file instead of the configured one")
    enh.add_argument(
        "--strength",
        type=float,
        metavar="S",
        help="share of the generator's correction, 0 (source) to 1 (generator output); "
        "default: the matching rule's strength, else [model] strength",
    )
    enh.set_defaults(func=cmd_enhance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dicom-node`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"dicom-node: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NodeError as exc:
        print(f"dicom-node: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
