"""Benchmark the enhancement pipeline: time and peak memory per image size.

Each case runs in its own subprocess so its peak resident memory (ru_maxrss)
is its own. Cases: RG1 (1955×1841, 15-bit CR) through the whole pipeline
(decode, normalise, infer, derive, encode), and synthetic 2048² / 4096²
16-bit images through inference, whole and tiled.

    python deploy/bench_enhance.py [--model FILE] [--repeat N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.shared_data import rg1_path

RG1 = rg1_path()


def _case(name: str, model: str | None, repeat: int) -> dict[str, object]:
    import numpy as np
    import pydicom

    from dicom_node.config import ModelSettings, OutputSettings
    from dicom_node.inference import get_enhancer
    from dicom_node.pipeline import enhance_instance

    settings = ModelSettings(path=Path(model) if model else None)
    if name.endswith("tiled"):
        settings = ModelSettings(path=settings.path, max_whole_pixels=256 * 256)
    enhancer = get_enhancer(settings)
    times: list[float] = []
    tiles = 1
    for _ in range(repeat):
        if name == "rg1-pipeline":
            source = pydicom.dcmread(RG1)
            start = time.perf_counter()
            enhance_instance(source, enhancer, OutputSettings())
            times.append(time.perf_counter() - start)
        else:
            side = int(name.split("-")[0])
            rng = np.random.default_rng(0)
            image = (rng.random((side, side), dtype=np.float32) * 0.1 + 0.45).astype(np.float32)
            start = time.perf_counter()
            _out, timings = enhancer.enhance(image)
            times.append(time.perf_counter() - start)
            tiles = timings.tiles
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": name,
        "provider": enhancer.provider,
        "model": f"{enhancer.metadata.name} {enhancer.metadata.version}",
        "tiles": tiles,
        "best_s": min(times),
        "median_s": sorted(times)[len(times) // 2],
        "peak_rss_mib": round(peak_mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX file (default: the bundled model)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument(
        "--cases",
        default="rg1-pipeline,2048-whole,2048-tiled,4096-tiled",
        help="comma-separated cases (rg1-pipeline, 2048-whole, 2048-tiled, 4096-whole, 4096-tiled)",
    )
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_case(args.case, args.model, args.repeat)))
        return
    print(f"host: {os.cpu_count()} CPU(s) visible; OMP/ORT threads default")
    print(
        f"{'case':<14} {'provider':<22} {'tiles':>5} {'best s':>8} {'median s':>9} "
        f"{'peak RSS MiB':>13}"
    )
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--repeat", str(args.repeat)]
        if args.model:
            cmd += ["--model", args.model]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{case:<14} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{row['case']:<14} {row['provider']:<22} {row['tiles']:>5} {row['best_s']:>8.2f} "
            f"{row['median_s']:>9.2f} {row['peak_rss_mib']:>13.1f}"
        )


if __name__ == "__main__":
    main()
