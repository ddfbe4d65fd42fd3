"""``dicom-node-train``: train, export and evaluate the enhancement generator.

Subcommands::

    dicom-node-train train    --run-dir DIR (--images PATH... | --manifest CSV | --archive) ...
    dicom-node-train calibrate --run-dir DIR [--output JSON]
    dicom-node-train export   CHECKPOINT --output MODEL.onnx [--noise-calibration JSON] ...
    dicom-node-train evaluate --run-dir DIR --model MODEL.onnx ...

The flags are declared in :mod:`training.cli_parser`. Each command turns its
arguments into settings and calls one function: :func:`training.pipeline.run_training`,
:func:`training.export.export_checkpoint` or :func:`training.evaluate.run_evaluation`.
A bad argument gives ``dicom-node-train: error: ...`` and exit status 2; a
:class:`~training.errors.TrainingError` (an input that cannot be read, a failed
check such as the export parity gate) gives a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from dicom_node.errors import NodeError
from training.cli_parser import PROG, build_parser
from training.errors import RunError, TrainingError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger(__name__)


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the arguments, then run :func:`training.pipeline.run_training`."""
    import torch

    from training.degrade import Degradation, DegradationRange
    from training.networks import GeneratorConfig
    from training.pipeline import DataSources, run_training
    from training.train_config import TrainConfig

    sources = DataSources(
        images=tuple(args.images),
        groups=tuple(args.groups or ()),
        recursive=args.recursive,
        manifest=args.manifest,
        archive=args.archive,
        node_config=args.node_config,
        fractions=(args.split[0], args.split[1], args.split[2]),
        seed=args.seed,
    )
    if not (sources.any or args.resume):
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
                structure_probability=args.structure_prob,
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
    if args.resume is not None and args.resume.resolve().parent != args.run_dir.resolve():
        parser.error(f"--resume {args.resume} is not in --run-dir {args.run_dir}.")
    result = run_training(
        config,
        sources,
        args.run_dir,
        resume=args.resume,
        start_from=args.start_from,
        progress=not args.no_progress,
    )
    print(
        f"best epoch {result.best_epoch}: val PSNR "
        f"{result.best_metrics.get('val_psnr', 0):.3f} dB, "
        f"SSIM {result.best_metrics.get('val_ssim', 0):.4f}; {result.images_per_second:.2f} "
        f"images/s; checkpoints in {result.run_dir}"
    )
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Measure the noise levels of a run's validation split (:mod:`training.noise_calibration`)."""
    import json

    from training.data import load_images, record_paths
    from training.noise_calibration import calibrate_noise
    from training.split import Split

    val = Split.load(args.run_dir / "split.json").subset("val")
    images = load_images(record_paths(val))
    result = calibrate_noise([image.pixels for image in images.values()], seed=args.seed)
    output = args.output or args.run_dir / "noise_calibration.json"
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"noise floor {result['noise_floor']:.5f}, full {result['noise_full']:.5f} "
        f"({result['clean']['images']} validation images); written to {output}"
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Export a checkpoint to ONNX behind the parity gate."""
    from training.export import ExportSettings, export_checkpoint
    from training.noise_calibration import read_calibration

    if args.opset < 17:
        parser.error(f"--opset must be 17 or newer; got {args.opset}.")
    if not args.checkpoint.is_file():
        raise RunError(f"The checkpoint {args.checkpoint} does not exist.")
    settings = ExportSettings(
        name=args.name,
        version=args.model_version,
        opset=args.opset,
        tolerance=args.tolerance,
        fp16_tolerance=args.fp16_tolerance,
        noise_calibration=read_calibration(args.noise_calibration)
        if args.noise_calibration is not None
        else None,
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


COMMANDS: dict[str, Callable[[argparse.Namespace, argparse.ArgumentParser], int]] = {
    "train": cmd_train,
    "calibrate": cmd_calibrate,
    "export": cmd_export,
    "evaluate": cmd_evaluate,
}


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
        return COMMANDS[args.command](args, parser)
    except (TrainingError, NodeError, ValueError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
