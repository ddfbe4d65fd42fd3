"""Time an exported model on the CPU with onnxruntime, as the node runs it.

Usage::

    python -m training.bench_cpu [MODEL.onnx] [--size 2048] [--threads 2] [--repeats 5]

Prints the session load time, the first (warm-up) run and the median, minimum
and maximum of the timed runs for one (1, 1, size, size) image in an
onnxruntime session limited to ``--threads``, then the median time of the
node's own ``Enhancer.enhance`` (padding, whole image or tiles, crop; the
node's default onnxruntime threading). The default model is the one shipped
in ``dicom_node/bundled_model``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME
from training.errors import EvaluationError

BUNDLED = (
    Path(__file__).resolve().parent.parent / "dicom_node" / "bundled_model" / "cxr_pix2pix.onnx"
)


def benchmark(model: Path, size: int, threads: int, repeats: int) -> dict[str, float]:
    """Seconds to load `model` and to enhance one size×size image.

    Raises
    ------
    ValueError
        If the arguments are out of range.
    EvaluationError
        If the model cannot be loaded.
    """
    import onnxruntime as ort

    if size < 256 or size % 256:
        raise ValueError(f"size must be a positive multiple of 256; got {size}.")
    if threads < 1 or repeats < 1:
        raise ValueError(f"threads and repeats must be at least 1; got {threads}, {repeats}.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EvaluationError(f"The model {model} cannot be loaded: {exc}") from exc
    load = time.perf_counter() - started
    rng = np.random.default_rng(0)
    image = np.clip(
        np.linspace(0.2, 0.8, size * size, dtype=np.float32).reshape(1, 1, size, size)
        + 0.03 * rng.standard_normal((1, 1, size, size)).astype(np.float32),
        0.0,
        1.0,
    )
    started = time.perf_counter()
    session.run([OUTPUT_NAME], {INPUT_NAME: image})
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: image})
        times.append(time.perf_counter() - started)
    out = {
        "load_s": load,
        "first_run_s": first,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }
    out["node_enhance_s"] = _node_enhance(model, image[0, 0], repeats)
    return out


def _node_enhance(model: Path, image: np.ndarray, repeats: int) -> float:
    """Median seconds of the node's own ``Enhancer.enhance`` (padding, run, crop)."""
    from dicom_node.config import ModelSettings
    from dicom_node.inference import Enhancer

    enhancer = Enhancer(ModelSettings(path=model, provider="cpu", warmup=True))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        enhancer.enhance(image)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints one line per measurement."""
    parser = argparse.ArgumentParser(prog="python -m training.bench_cpu", description=__doc__)
    parser.add_argument("model", nargs="?", type=Path, default=BUNDLED)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        result = benchmark(args.model, args.size, args.threads, args.repeats)
    except ValueError as exc:
        print(f"bench_cpu: error: {exc}", file=sys.stderr)
        return 1
    import onnxruntime as ort

    print(f"model      {args.model} ({args.model.stat().st_size / 1e6:.1f} MB)")
    print(
        f"machine    {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
        f"onnxruntime {ort.__version__}, {args.threads} threads"
    )
    print(f"image      1x1x{args.size}x{args.size} float32")
    for key, value in result.items():
        print(f"{key:<10} {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
