"""Ingest throughput: DCMTK storescu → the node's C-STORE SCP → spool + database.

Starts a node on loopback (a ``forward`` rule and no destination, so only
ingest is measured), writes N copies of RG1 with new SOP Instance UIDs, sends
them all over ONE ``storescu`` association (TCP_NODELAY=1) and prints
instances per second and MB per second, with the node's own per-instance
timings (write = spool file with fsync, total = write + database commit).

    python deploy/bench_ingest.py [--count N] [--image FILE] [--data-dir DIR] [--database-url URL]

Needs DCMTK (Debian package dcmtk).
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
from helpers.dicom_files import RG1_PATH, write_copies
from helpers.peers import LOOPBACK, NodeProcess, free_port, storescu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="instances to send (default 50)")
    parser.add_argument("--image", type=Path, default=RG1_PATH, help="template DICOM file")
    parser.add_argument("--data-dir", type=Path, help="node data dir (default: a temp dir)")
    parser.add_argument("--database-url", default="", help="default: SQLite under the data dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        template = pydicom.dcmread(args.image)
        warmup = write_copies(template, work / "warmup", 1)
        copies = write_copies(template, work / "copies", args.count)
        total_bytes = sum(c.path.stat().st_size for c in copies)
        storage = {"data_dir": str(args.data_dir or work / "data")}
        if args.database_url:
            storage["database_url"] = args.database_url
        document = {
            "node": {"ae_title": "NODE", "host": LOOPBACK, "port": free_port()},
            "storage": storage,
            "jobs": {"poll_interval": 0.5},
            "rules": [{"name": "forward-all", "action": "forward"}],
        }
        node = NodeProcess(work / "node", document)
        try:
            node.start(timeout=60)
            # One instance first, so lazy imports and table warm-up are not timed.
            if storescu(node.port, [warmup[0].path]).returncode != 0:
                raise SystemExit("the warm-up store failed")
            before = len(node.log_events("instance.stored"))
            start = time.perf_counter()
            result = storescu(node.port, [c.path for c in copies], timeout=3600)
            elapsed = time.perf_counter() - start
            if result.returncode != 0:
                raise SystemExit(f"storescu failed ({result.returncode}): {result.stderr}")
            stored = node.log_events("instance.stored")[before:]
            rows = node.sql("SELECT COUNT(*) AS n FROM instances")[0]["n"]
            if len(stored) != args.count or rows != args.count + 1:
                raise SystemExit(f"expected {args.count} stored instances, got {len(stored)}")
        finally:
            node.stop()
    write_ms = [float(e["write_ms"]) for e in stored]
    total_ms = [float(e["total_ms"]) for e in stored]
    size_mb = total_bytes / args.count / 1e6
    print(
        f"{args.count} x {args.image.name} ({size_mb:.1f} MB each) over one storescu association "
        f"in {elapsed:.2f} s: {args.count / elapsed:.1f} instances/s, "
        f"{total_bytes / elapsed / 1e6:.1f} MB/s"
    )
    print(
        f"node per instance: check+write+fsync median {statistics.median(write_ms):.1f} ms, "
        f"write+record median {statistics.median(total_ms):.1f} ms "
        f"(max {max(total_ms):.1f} ms)"
    )


if __name__ == "__main__":
    main()
