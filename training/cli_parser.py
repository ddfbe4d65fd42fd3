"""The argument parser of ``dicom-node-train`` and its argument types.

Every flag is declared here; :mod:`training.cli` turns the parsed arguments
into settings and calls the module that does the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli_types import (
    evaluate_setting,
    float_pair,
    int_list,
    non_negative_int,
    positive_int,
    setting,
    strengths,
)

PROG = "dicom-node-train"


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
    run.add_argument("--threads", type=positive_int, help="torch CPU threads")
    run.add_argument("--workers", type=non_negative_int, default=0, help="data loader workers")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    opt = tr.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs",
        type=positive_int,
        default=100,
        help="epochs at the initial learning rate (100)",
    )
    opt.add_argument(
        "--epochs-decay",
        type=non_negative_int,
        default=100,
        help="epochs of linear decay to 0 (100)",
    )
    opt.add_argument("--batch-size", type=positive_int, default=1)
    opt.add_argument("--crop", type=positive_int, default=256, help="crop side: 256 or 512")
    opt.add_argument(
        "--crop-sizes",
        type=int_list,
        default=(),
        metavar="S,S",
        help="crop sides used in turn, one per epoch (e.g. 256,512; default: --crop)",
    )
    opt.add_argument(
        "--crops-per-image",
        type=positive_int,
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
        type=non_negative_int,
        default=0,
        help="validate on at most this many images (0: all)",
    )
    net = tr.add_argument_group("networks")
    net.add_argument("--ngf", type=positive_int, default=16)
    net.add_argument("--norm", choices=("none", "instance"), default="none")
    net.add_argument("--residual-scale", type=float, default=1.0)
    net.add_argument("--head", type=positive_int, default=8, help="full-resolution head width")
    net.add_argument("--ndf", type=positive_int, default=64)
    deg = tr.add_argument_group("degradation (training range; see training/README.md)")
    deg.add_argument("--noise-a", type=float_pair, default=(0.0005, 0.005), metavar="LO,HI")
    deg.add_argument("--noise-b", type=float_pair, default=(1e-6, 1e-4), metavar="LO,HI")
    deg.add_argument("--blur-sigma", type=float_pair, default=(0.0, 1.5), metavar="LO,HI")
    deg.add_argument("--downsample-prob", type=float, default=0.0)
    deg.add_argument(
        "--exposure-prob",
        type=float,
        default=0.3,
        help="share of crops with a gamma and scatter change, applied to input and reference",
    )
    deg.add_argument("--gamma", type=float_pair, default=(0.8, 1.2), metavar="LO,HI")
    deg.add_argument("--offset-max", type=float, default=0.05)
    deg.add_argument(
        "--noise-correlation",
        type=float_pair,
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
        "--structure-prob",
        type=float,
        default=0.0,
        help="share of crops that get 1 to 4 faint thin curves or blobs in input and reference (0)",
    )
    deg.add_argument(
        "--val-setting",
        type=setting,
        default=(0.002, 2e-5, 0.8),
        metavar="A,B,SIGMA",
        help="fixed degradation of the validation images (0.002,2e-5,0.8)",
    )

    ca = sub.add_parser(
        "calibrate", help="measure the noise levels that make the node's strength noise-adaptive"
    )
    ca.add_argument("--run-dir", type=Path, required=True, metavar="DIR", help="its split.json")
    ca.add_argument(
        "--output", "-o", type=Path, metavar="JSON", help="default DIR/noise_calibration.json"
    )
    ca.add_argument("--seed", type=int, default=0, help="seeds the degradations (0)")

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
    ex.add_argument(
        "--noise-calibration",
        type=Path,
        metavar="JSON",
        help="noise_calibration.json of `calibrate`: the node scales the strength by the noise",
    )

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
        type=evaluate_setting,
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
        type=evaluate_setting,
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
        type=non_negative_int,
        default=0,
        help="evaluate at most this many test images (0: all)",
    )
    ev.add_argument(
        "--tune-images",
        type=positive_int,
        default=6,
        help="validation images used to tune NLM and BM3D (6)",
    )
    ev.add_argument(
        "--grid-cases",
        type=non_negative_int,
        default=3,
        help="test cases drawn in the PNG grid (3)",
    )
    ev.add_argument(
        "--crop",
        type=non_negative_int,
        default=768,
        help="score the central crop of at most this size per image (768; 0: whole images)",
    )
    ev.add_argument(
        "--context",
        type=non_negative_int,
        default=32,
        help="margin around the crop that NLM and BM3D see (32)",
    )
    ev.add_argument(
        "--strength",
        type=strengths,
        metavar="S[,S...]",
        default=(),
        help="also score the pix2pix generator blended with its input at these strengths",
    )
    ev.add_argument(
        "--detail-images",
        type=non_negative_int,
        default=8,
        help="test images that get the detail-retention inserts (8; 0: none)",
    )
    ev.add_argument(
        "--detail-setting",
        type=evaluate_setting,
        metavar="A,B,SIGMA[,CORR]",
        help="setting of the detail-retention test (default: the white acceptance setting)",
    )
    ev.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes for NLM and BM3D, beside the generators (1)",
    )
    ev.add_argument("--threads", type=positive_int, help="CPU threads for the models")
    ev.add_argument("--seed", type=int, default=1234, help="seed of the test degradations")
    return parser
