"""``dicom-node model info|install|list|recall`` and ``dicom-node enhance`` (offline files)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    CommandError,
    database_reason,
    load,
    open_runtime,
    with_model_file,
)
from dicom_node.config import Config, check_strength
from dicom_node.errors import ConfigError, NodeError

if TYPE_CHECKING:
    from dicom_node.db import Recall


def _recall_of(config: Config, sha256: str) -> Recall | None:
    """The recall of the model `sha256` in the node's database (None: not recalled)."""
    from dicom_node.recall_report import recall_for_model

    try:
        return recall_for_model(config, sha256)
    except NodeError:
        raise
    except Exception as exc:  # sqlalchemy errors: unreachable database
        raise CommandError(
            f"Cannot read the recalls from the database: {database_reason(exc)}"
        ) from exc


def cmd_model_info(args: argparse.Namespace) -> int:
    """Show the loaded model's metadata, the execution provider and a recall, if any."""
    from dicom_node.inference import get_enhancer
    from dicom_node.recall_report import describe_recall

    config = load(args, missing_ok=True)
    settings = with_model_file(config.model, args.model)
    enhancer = get_enhancer(settings)
    info: dict[str, Any] = {}
    for key, value in enhancer.describe().items():
        info[key] = value
        if key == "path":
            info["source"] = settings.source
    recall = _recall_of(config, enhancer.metadata.sha256)
    if recall is not None:
        info["recalled"] = describe_recall(recall)
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

    config = load(args, installed_model=False)
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


def _model_rows(items: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "file": str(item.path),
            "active": item.active,
            **(
                {k: v for k, v in asdict(item.record).items() if k != "file"} if item.record else {}
            ),
        }
        for item in items
    ]


def cmd_model_list(args: argparse.Namespace) -> int:
    """List the installed models and mark the active one."""
    from dicom_node.model_store import list_installed, models_dir

    config = load(args, installed_model=False)
    items, problem = list_installed(config.storage.data_dir)
    if args.json:
        print(json.dumps({"models": _model_rows(items), "active_error": problem}, indent=2))
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
    from dicom_node.offline import enhance_files

    strength: float | None = None
    if args.strength is not None:
        try:
            strength = check_strength(args.strength, "--strength")
        except ValueError as exc:
            raise ConfigError(
                f"--strength: {args.strength} is out of range; expected 0 to 1."
            ) from exc
    from dicom_node.inference import get_enhancer
    from dicom_node.recall_report import refuse_recalled

    config = load(args, missing_ok=True)
    if args.model:
        config = replace(config, model=with_model_file(config.model, args.model))
    refuse_recalled(
        _recall_of(config, get_enhancer(config.model).metadata.sha256), "dicom-node enhance"
    )
    failures = enhance_files(
        config, [Path(p) for p in args.inputs], Path(args.output), strength=strength
    )
    return EXIT_FAILURE if failures else EXIT_OK


def cmd_model_recall(args: argparse.Namespace) -> int:
    """Recall a model: refuse it from now on and queue IOCM rejection notes for its outputs."""
    from dicom_node.recall import recall_model, summary
    from dicom_node.recall_report import note_status

    config = load(args, installed_model=False)
    runtime = open_runtime(config)
    try:
        outcome = recall_model(runtime, args.prefix, args.reason)
        for line in summary(outcome, note_status(runtime, outcome.recall.id)):
            print(line)
    finally:
        runtime.close()
    return EXIT_OK
