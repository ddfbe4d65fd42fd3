"""The ``dicom-node`` command line: the parser, ``config check`` and the entry point.

The commands live in ``cli_node`` (serve, echo), ``cli_jobs``, ``cli_db``
and ``cli_model`` (model, enhance); what they share in ``cli_common``.
Exit codes: 0 success, 1 the operation failed (peer unreachable, a file could
not be processed), 2 invalid configuration or usage, or a database made by a
newer node. Errors are one line on stderr, starting with
``dicom-node: error:``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dicom_node import __version__
from dicom_node.cli_common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, load
from dicom_node.cli_db import cmd_db
from dicom_node.cli_jobs import cmd_jobs
from dicom_node.cli_model import (
    cmd_enhance,
    cmd_model_info,
    cmd_model_install,
    cmd_model_list,
    cmd_model_recall,
)
from dicom_node.cli_node import cmd_echo, cmd_serve
from dicom_node.errors import ConfigError, NodeError
from dicom_node.migrations import SchemaVersionError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CommandError", "build_parser", "main"]


# --------------------------------------------------------------------------- config


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the configuration; with ``--explain FILE`` show the matching rule."""
    from dicom_node.routing import rule_strength
    from dicom_node.strength import format_strength

    config = load(args)
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
        if not rule.send:
            targets = f"none (shadow: kept, not sent; {targets} once send = true)"
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
    recall = model_sub.add_parser(
        "recall",
        parents=[common],
        help="stop using a model and send IOCM rejection notes for everything it made",
    )
    recall.add_argument("prefix", metavar="SHA256_PREFIX", help="8 to 64 hex digits of its SHA-256")
    recall.add_argument("--reason", required=True, metavar="TEXT", help="why (shown in the notes)")
    recall.set_defaults(func=cmd_model_recall)

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

    db_p = sub.add_parser("db", help="the database schema")
    db_sub = db_p.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser(
        "upgrade", parents=[common], help="migrate the database to this version's schema"
    )
    db_sub.add_parser("current", parents=[common], help="show the database's schema revision")
    db_p.set_defaults(func=cmd_db)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dicom-node`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, SchemaVersionError) as exc:
        print(f"dicom-node: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NodeError as exc:
        print(f"dicom-node: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
