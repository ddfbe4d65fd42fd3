"""``dicom-node-train``: train, export and evaluate the enhancement generator.

Subcommands::

    dicom-node-train train    --run-dir DIR (--images PATH... | --manifest CSV | --archive) ...
    dicom-node-train export   CHECKPOINT --output MODEL.onnx ...
    dicom-node-train evaluate --run-dir DIR --model MODEL.onnx ...

A bad argument gives ``dicom-node-train: error: ...`` and exit status 2; an
input that cannot be read or a failed check (e.g. the export parity gate)
gives a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_node.errors import NodeError

PROG = "dicom-node-train"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger(__name__)


class CommandError(Exception):
    """A failure reported as one line with exit status 1."""


def _float_pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH numbers, got {text!r}") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH numbers, got {text!r}")
    return values[0], values[1]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 256,512, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _setting(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A,B,SIGMA numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected A,B,SIGMA numbers, got {text!r}")
    return values[0], values[1], values[2]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dicom-node-train``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train, export and evaluate the chest x-ray enhancement generator."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a generator (pix2pix or L1 only)")
    src = tr.add_argument_group("data (at least one source)")
    src.add_argument(
        "--images",
        nargs="+",
        type=Path,
        metavar="PATH",
        default=[],
        help="folders or files of DICOM/PNG/TIFF radiographs (synthetic pairs)",
    )
    src.add_argument(
        "--groups",
        type=Path,
        nargs="+",
        metavar="CSV",
        help="CSVs with columns file and group (or patient_group, patient_id) for --images",
    )
    src.add_argument("--recursive", action="store_true", help="search --images folders recursively")
    src.add_argument(
        "--manifest",
        type=Path,
        metavar="CSV",
        help="CSV of real pairs: low,high[,split][,patient_id]",
    )
    src.add_argument(
        "--archive",
        action="store_true",
        help="the CR/DX chest images in the node's database and spool",
    )
    src.add_argument(
        "--node-config",
        type=Path,
        metavar="TOML",
        help="node configuration for --archive (default: the node's default)",
    )
    src.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions by patient (0.7 0.15 0.15)",
    )
    run = tr.add_argument_group("run")
    run.add_argument(
        "--run-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="where the split, logs and checkpoints go",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="CHECKPOINT",
        help="continue from a last.pt (its run's split is reused)",
    )
    run.add_argument(
        "--start-from",
        type=Path,
        metavar="CHECKPOINT",
        help="initialise the generator from this checkpoint (e.g. an L1-only run)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    run.add_argument("--workers", type=_non_negative_int, default=0, help="data loader workers")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    opt = tr.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs",
        type=_positive_int,
        default=100,
        help="epochs at the initial learning rate (100)",
    )
    opt.add_argument(
        "--epochs-decay",
        type=_non_negative_int,
        default=100,
        help="epochs of linear decay to 0 (100)",
    )
    opt.add_argument("--batch-size", type=_positive_int, default=1)
    opt.add_argument("--crop", type=_positive_int, default=256, help="crop side: 256 or 512")
    opt.add_argument(
        "--crop-sizes",
        type=_int_list,
        default=(),
        metavar="S,S",
        help="crop sides used in turn, one per epoch (e.g. 256,512; default: --crop)",
    )
    opt.add_argument(
        "--crops-per-image",
        type=_positive_int,
        default=1,
        help="crops of each training image per epoch",
    )
    opt.add_argument("--lr", type=float, default=2e-4)
    opt.add_argument("--lr-d", type=float, help="discriminator learning rate (default: --lr)")
    opt.add_argument("--beta1", type=float, default=0.5)
    opt.add_argument("--lambda-l1", type=float, default=100.0)
    opt.add_argument("--l1-only", action="store_true", help="no discriminator, L1 loss only")
    opt.add_argument("--gan-loss", choices=("vanilla", "lsgan"), default="vanilla")
    opt.add_argument(
        "--spectral-norm", action="store_true", help="spectral normalisation in the discriminator"
    )
    opt.add_argument(
        "--select",
        choices=("psnr", "texture"),
        default="psnr",
        help="how best.pt is chosen: best val PSNR, or texture closest to the references "
        "within --max-psnr-loss of the starting generator",
    )
    opt.add_argument("--max-psnr-loss", type=float, default=0.3, metavar="DB")
    opt.add_argument(
        "--val-max-images",
        type=_non_negative_int,
        default=0,
        help="validate on at most this many images (0: all)",
    )
    net = tr.add_argument_group("networks")
    net.add_argument("--ngf", type=_positive_int, default=16)
    net.add_argument("--norm", choices=("none", "instance"), default="none")
    net.add_argument("--residual-scale", type=float, default=1.0)
    net.add_argument("--head", type=_positive_int, default=8, help="full-resolution head width")
    net.add_argument("--ndf", type=_positive_int, default=64)
    deg = tr.add_argument_group("degradation (training range; see training/README.md)")
    deg.add_argument("--noise-a", type=_float_pair, default=(0.0005, 0.005), metavar="LO,HI")
    deg.add_argument("--noise-b", type=_float_pair, default=(1e-6, 1e-4), metavar="LO,HI")
    deg.add_argument("--blur-sigma", type=_float_pair, default=(0.0, 1.5), metavar="LO,HI")
    deg.add_argument("--downsample-prob", type=float, default=0.0)
    deg.add_argument(
        "--exposure-prob",
        type=float,
        default=0.3,
        help="share of crops with a gamma and scatter change, applied to input and reference",
    )
    deg.add_argument("--gamma", type=_float_pair, default=(0.8, 1.2), metavar="LO,HI")
    deg.add_argument("--offset-max", type=float, default=0.05)
    deg.add_argument(
        "--noise-correlation",
        type=_float_pair,
        default=(0.0, 1.5),
        metavar="LO,HI",
        help="std (px) of the Gaussian PSF that correlates the noise, uniform per crop (0,1.5)",
    )
    deg.add_argument(
        "--identity-prob",
        type=float,
        default=0.15,
        help="share of crops whose input is the clean image itself (0.15)",
    )
    deg.add_argument(
        "--val-setting",
        type=_setting,
        default=(0.002, 2e-5, 0.8),
        metavar="A,B,SIGMA",
        help="fixed degradation of the validation images (0.002,2e-5,0.8)",
    )
    tr.set_defaults(func=cmd_train)

    ex = sub.add_parser("export", help="export a checkpoint to ONNX with metadata and parity check")
    ex.add_argument("checkpoint", type=Path, help="best.pt (or last.pt) of a run")
    ex.add_argument("--output", "-o", type=Path, required=True, metavar="ONNX")
    ex.add_argument("--name", default="cxr-pix2pix", help="model_name metadata")
    ex.add_argument(
        "--version", dest="model_version", default="1.0.0", help="model_version metadata"
    )
    ex.add_argument(
        "--evaluation",
        type=Path,
        metavar="JSON",
        help="evaluation.json of `evaluate` to record the test metrics",
    )
    ex.add_argument(
        "--parity-images",
        nargs="*",
        type=Path,
        default=[],
        metavar="PATH",
        help="real images for the parity check (default: up to 2 test images of the run)",
    )
    ex.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="maximum absolute difference allowed (fp32 default 1e-4)",
    )
    ex.add_argument("--fp16", type=Path, metavar="ONNX", help="also write an fp16 model here")
    ex.add_argument(
        "--fp16-tolerance",
        type=float,
        default=None,
        help="maximum absolute difference allowed for fp16 (default 1e-2)",
    )
    ex.add_argument("--opset", type=int, default=17)
    ex.set_defaults(func=cmd_export)

    ev = sub.add_parser("evaluate", help="compare the generator with baselines on the test split")
    ev.add_argument(
        "--run-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the training run whose split.json defines val and test",
    )
    ev.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="MODEL",
        help="the pix2pix generator (.onnx or a .pt checkpoint)",
    )
    ev.add_argument(
        "--l1-model",
        type=Path,
        metavar="MODEL",
        help="an L1-only generator for comparison (.onnx or .pt)",
    )
    ev.add_argument(
        "--setting",
        type=_evaluate_setting,
        action="append",
        metavar="A,B,SIGMA[,CORR]",
        help="degradation setting, CORR = noise correlation in px, 0,0,0 = identity (repeatable;"
        " default: white 0.002,2e-5,0.8; correlated 0.002,2e-5,0.8,1; blur 0,0,1.2; identity)",
    )
    ev.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="where evaluation.json, evaluation.md and the grids go (default RUN/eval)",
    )
    ev.add_argument("--no-bm3d", action="store_true", help="skip the BM3D baseline")
    ev.add_argument(
        "--bm3d-setting",
        type=_evaluate_setting,
        action="append",
        metavar="A,B,SIGMA[,CORR]",
        help="run BM3D only at this setting (repeatable; default: the white and correlated "
        "acceptance settings if evaluated, else every noisy setting)",
    )
    ev.add_argument(
        "--bm3d-profile",
        choices=("np", "lc"),
        default="np",
        help="BM3D profile: np (normal) or lc (low complexity, ~3x faster, ~0.1 dB lower)",
    )
    ev.add_argument(
        "--max-images",
        type=_non_negative_int,
        default=0,
        help="evaluate at most this many test images (0: all)",
    )
    ev.add_argument(
        "--tune-images",
        type=_positive_int,
        default=6,
        help="validation images used to tune NLM and BM3D (6)",
    )
    ev.add_argument(
        "--grid-cases",
        type=_non_negative_int,
        default=3,
        help="test cases drawn in the PNG grid (3)",
    )
    ev.add_argument(
        "--crop",
        type=_non_negative_int,
        default=768,
        help="score the central crop of at most this size per image (768; 0: whole images)",
    )
    ev.add_argument(
        "--context",
        type=_non_negative_int,
        default=32,
        help="margin around the crop that NLM and BM3D see (32)",
    )
    ev.add_argument(
        "--strength",
        type=_strengths,
        metavar="S[,S...]",
        default=(),
        help="also score the pix2pix generator blended with its input at these strengths",
    )
    ev.add_argument(
        "--detail-images",
        type=_non_negative_int,
        default=8,
        help="test images that get the detail-retention inserts (8; 0: none)",
    )
    ev.add_argument(
        "--detail-setting",
        type=_evaluate_setting,
        metavar="A,B,SIGMA[,CORR]",
        help="setting of the detail-retention test (default: the white acceptance setting)",
    )
    ev.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes for NLM and BM3D, beside the generators (1)",
    )
    ev.add_argument("--threads", type=_positive_int, help="CPU threads for the models")
    ev.add_argument("--seed", type=int, default=1234, help="seed of the test degradations")
    ev.set_defaults(func=cmd_evaluate)
    return parser


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Build the pair list and split, then train."""
    import torch

    from training.degrade import Degradation, DegradationRange
    from training.networks import GeneratorConfig
    from training.pairs import Split
    from training.train import TrainConfig, train

    if not (args.images or args.manifest or args.archive or args.resume):
        parser.error("train needs --images, --manifest or --archive (or --resume).")
    try:
        config = TrainConfig(
            epochs=args.epochs,
            epochs_decay=args.epochs_decay,
            batch_size=args.batch_size,
            crop=args.crop,
            crop_sizes=tuple(args.crop_sizes),
            crops_per_image=args.crops_per_image,
            lr=args.lr,
            lr_d=args.lr_d,
            beta1=args.beta1,
            lambda_l1=args.lambda_l1,
            l1_only=args.l1_only,
            generator=GeneratorConfig(args.ngf, args.norm, args.residual_scale, args.head),
            ndf=args.ndf,
            degradations=DegradationRange(
                noise_a=args.noise_a,
                noise_b=args.noise_b,
                blur_sigma=args.blur_sigma,
                downsample_probability=args.downsample_prob,
                exposure_probability=args.exposure_prob,
                gamma=args.gamma,
                offset_max=args.offset_max,
                noise_correlation=args.noise_correlation,
                identity_probability=args.identity_prob,
            ),
            val_degradation=Degradation(*args.val_setting),
            seed=args.seed,
            workers=args.workers,
            val_max_images=args.val_max_images,
            gan_loss=args.gan_loss,
            spectral_norm=args.spectral_norm,
            select=args.select,
            max_psnr_loss=args.max_psnr_loss,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume is not None:
        if not args.resume.is_file():
            raise CommandError(f"The checkpoint {args.resume} does not exist.")
        run_dir = args.resume.resolve().parent
        if run_dir != args.run_dir.resolve():
            parser.error(f"--resume {args.resume} is not in --run-dir {args.run_dir}.")
        split = Split.load(run_dir / "split.json")
        summary = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("data", {})
    else:
        if (args.run_dir / "last.pt").exists():
            raise CommandError(
                f"{args.run_dir} already holds a run; use --resume {args.run_dir / 'last.pt'} "
                "or another --run-dir."
            )
        previous = args.start_from.resolve().parent if args.start_from else None
        if previous is not None and (previous / "split.json").is_file():
            # Fine-tuning keeps the split of the run it starts from, so its
            # validation and test patients stay unseen.
            split = Split.load(previous / "split.json")
            config_file = previous / "config.json"
            summary = (
                json.loads(config_file.read_text(encoding="utf-8")).get("data", {})
                if config_file.is_file()
                else {}
            )
            logger.info("Reusing the split of %s.", previous)
        else:
            split, summary = _build_split(args)
    logger.info("Split: %s", json.dumps(split.summary()))
    result = train(
        config,
        split,
        args.run_dir,
        resume=args.resume,
        start_from=args.start_from,
        data_summary=summary,
        progress=not args.no_progress,
    )
    print(
        f"best epoch {result.best_epoch}: val PSNR "
        f"{result.best_metrics.get('val_psnr', 0):.3f} dB, "
        f"SSIM {result.best_metrics.get('val_ssim', 0):.4f}; {result.images_per_second:.2f} "
        f"images/s; checkpoints in {result.run_dir}"
    )
    return EXIT_OK


def _build_split(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from training.data import load_images, record_paths
    from training.pairs import (
        archive_records,
        check_pairs,
        folder_records,
        manifest_records,
        read_groups,
        resolve_duplicates,
        split_records,
    )

    records = []
    sources: list[str] = []
    if args.manifest:
        real = manifest_records(args.manifest)
        checks = check_pairs(real)
        bad = [c for c in checks if c.misregistered]
        args.run_dir.mkdir(parents=True, exist_ok=True)
        (args.run_dir / "pair_checks.json").write_text(
            json.dumps([c.__dict__ for c in checks], indent=1) + "\n", encoding="utf-8"
        )
        if bad:
            logger.warning(
                "%d of %d pairs look misregistered; see pair_checks.json.", len(bad), len(checks)
            )
        records += real
        sources.append(f"manifest {args.manifest.name}: {len(real)} real pairs")
    if args.images:
        groups: dict[str, str] | None = None
        for groups_file in args.groups or []:
            groups = groups or {}
            for name, group in read_groups(groups_file).items():
                if groups.setdefault(name, group) != group:
                    raise CommandError(
                        f"{name} has the group {groups[name]!r} in one --groups file and "
                        f"{group!r} in {groups_file}."
                    )
        found = folder_records(args.images, groups, recursive=args.recursive)
        records += found
        sources.append(f"{len(found)} images from {', '.join(p.name for p in args.images)}")
    if args.archive:
        archived = archive_records(args.node_config)
        records += archived
        sources.append(f"node archive: {len(archived)} CR/DX chest images")
    images = load_images(record_paths(records))
    records = resolve_duplicates(records, images)
    split = split_records(records, tuple(args.split), seed=args.seed)
    bits: dict[int, int] = {}
    for record in records:
        depth = images[record.high].bits_stored
        bits[depth] = bits.get(depth, 0) + 1
    summary = {
        "sources": sources,
        "images": len(records),
        "groups": len({r.group for r in records}),
        "bits_stored": {str(k): v for k, v in sorted(bits.items())},
        "split": split.summary(),
        "split_seed": args.seed,
    }
    return split, summary


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Export a checkpoint to ONNX behind the parity gate."""
    from training.export import ExportSettings, export_checkpoint

    if args.opset < 17:
        parser.error(f"--opset must be 17 or newer; got {args.opset}.")
    if not args.checkpoint.is_file():
        raise CommandError(f"The checkpoint {args.checkpoint} does not exist.")
    settings = ExportSettings(
        name=args.name,
        version=args.model_version,
        opset=args.opset,
        tolerance=args.tolerance,
        fp16_tolerance=args.fp16_tolerance,
    )
    report = export_checkpoint(
        args.checkpoint,
        args.output,
        settings,
        evaluation=args.evaluation,
        parity_images=args.parity_images,
        fp16_output=args.fp16,
    )
    for line in report.lines():
        print(line)
    return EXIT_OK


# --------------------------------------------------------------------------- evaluate


def _evaluate_setting(text: str) -> tuple[float, ...]:
    """``A,B,SIGMA`` or ``A,B,SIGMA,CORR`` (the evaluation's settings)."""
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected A,B,SIGMA[,CORR] numbers, got {text!r}"
        ) from None
    if len(values) not in (3, 4):
        raise argparse.ArgumentTypeError(f"expected A,B,SIGMA[,CORR] numbers, got {text!r}")
    return values


def _strengths(text: str) -> tuple[float, ...]:
    """Comma-separated strengths from 0 to 1."""
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected strengths like 0.8,0.6, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"strengths must be from 0 to 1, got {text!r}")
    return values


def cmd_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Evaluate on the test split and print every table."""
    from training.evaluate import DEFAULT_SETTINGS, EvaluationSettings, run_evaluation

    try:
        settings = EvaluationSettings(
            settings=tuple(args.setting) if args.setting else DEFAULT_SETTINGS,
            bm3d=not args.no_bm3d,
            bm3d_settings=tuple(args.bm3d_setting) if args.bm3d_setting else None,
            bm3d_profile=args.bm3d_profile,
            max_images=args.max_images,
            tune_images=args.tune_images,
            grid_cases=args.grid_cases,
            seed=args.seed,
            threads=args.threads,
            crop=args.crop,
            context=args.context,
            strengths=tuple(args.strength),
            detail_images=args.detail_images,
            detail_setting=args.detail_setting,
            workers=args.workers,
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    output = args.output_dir or args.run_dir / "eval"
    result = run_evaluation(args.run_dir, args.model, output, settings, l1_model=args.l1_model)
    print(result.report())
    print(f"written: {output / 'evaluation.json'}, {output / 'evaluation.md'}, grids in {output}")
    return EXIT_OK


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dicom-node-train``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args, parser))
    except (CommandError, NodeError, ValueError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
