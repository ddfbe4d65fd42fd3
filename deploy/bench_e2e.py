"""End-to-end latency: DCMTK storescu start → derived instance stored in Orthanc.

Starts an Orthanc PACS and a node (default chest rule, bundled model unless
--model) on loopback, sends RG1 (each run with fresh UIDs, so every run is a
new image), and prints the time until Orthanc has the derived instance.

    python deploy/bench_e2e.py [--runs N] [--model FILE]

Needs DCMTK and Orthanc (Debian packages dcmtk, orthanc).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pydicom
from helpers.peers import LOOPBACK, NodeProcess, Orthanc, free_port, storescu
from helpers.shared_data import rg1_path
from pydicom.uid import generate_uid

from dicom_node.config import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING

RG1 = rg1_path()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", help="ONNX file (default: the bundled model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        orthanc = Orthanc(work / "orthanc")
        orthanc.start()
        document = {
            "node": {"ae_title": "NODE", "host": LOOPBACK, "port": free_port()},
            "storage": {"data_dir": str(work / "data")},
            "jobs": {"poll_interval": 0.5},
            "destinations": [orthanc.destination()],
            "rules": [
                {
                    "name": "chest-xray",
                    "action": "enhance",
                    "modality": ["CR", "DX"],
                    "sop_class_uid": [CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING],
                    "body_part_examined": ["CHEST", ""],
                }
            ],
        }
        if args.model:
            document["model"] = {"path": str(Path(args.model).resolve())}
        node = NodeProcess(work / "node", document)
        try:
            node.start(timeout=120)
            source = pydicom.dcmread(RG1)
            times = []
            for run in range(args.runs):
                source.SOPInstanceUID = generate_uid()
                source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
                source.SeriesInstanceUID = generate_uid()
                path = work / f"rg1_{run}.dcm"
                source.save_as(path)
                start = time.perf_counter()
                result = storescu(node.port, [path], called="NODE")
                if result.returncode != 0:
                    raise SystemExit(f"storescu failed: {result.stderr}")
                orthanc.wait_for_count(run + 1, timeout=300)
                elapsed = time.perf_counter() - start
                times.append(elapsed)
                print(f"run {run + 1}: {elapsed:.2f} s", flush=True)
            stored = node.log_events("job.processed")
            inference = [float(e["infer_ms"]) for e in stored if "infer_ms" in e]
            print(
                f"RG1 1955x1841 end to end (storescu start -> derived stored in Orthanc): "
                f"median {statistics.median(times):.2f} s, best {min(times):.2f} s "
                f"over {len(times)} runs; "
                f"inference median {statistics.median(inference) / 1000:.2f} s"
            )
        finally:
            node.stop()
            orthanc.stop()


if __name__ == "__main__":
    main()
