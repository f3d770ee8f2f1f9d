"""Benchmark: distributed Graph Challenge inference against the serial scipy reference.

Runs the official 1024-neuron, 120-layer network on 10 000 images (the shipped 1200 tiled, unless
``--images`` names a full official file) for each worker count and channel on the embedded local
backend, and prints one JSON document. Every ratio is measured against the serial reference timed
in the same process and the same minute (the machines are shared and noisy), and each timing is
the median of ``--repeat`` runs after one warm-up run (warm workers, as a busy FaaS deployment
has). Serial peak memory is measured in a fresh process.

    python bench/graphchallenge.py [--data ../shared/data/graphchallenge] [--workers 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import fsdgraph
from fsdgraph.sources.graphchallenge import load_images, load_truth, load_weights

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "graphchallenge"


def tiled_images(data: Path, rows: int, images: Path | None) -> sp.csr_matrix:
    y = load_images(images or data / "sparse-images-1024-first1200.tsv.gz", 1024)
    reps = -(-rows // y.shape[0])
    return sp.csr_matrix(sp.vstack([y] * reps)[:rows])


def serial_peak_rss(args: argparse.Namespace) -> int:
    """Peak RSS of a fresh process that loads the same inputs and runs the serial reference."""
    argv = [sys.executable, __file__, "--serial-rss", "--data", str(args.data),
            "--rows", str(args.rows)] + (["--images", str(args.images)] if args.images else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=Path, help="a full official image file (else tiled)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--channels", default="queue,object")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serial-rss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    weights = load_weights(args.data / "neuron1024", 1024, 120)
    y = tiled_images(args.data, args.rows, args.images)
    graph = fsdgraph.sequential(weights, -0.3, cap=32)
    layers = graph.layers()
    if args.serial_rss:  # the child of serial_peak_rss
        fsdgraph.reference_inference(y, layers, canonical=False)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return
    truth = load_truth(args.data / "neuron1024-l120-categories-first1200.tsv")
    reference = fsdgraph.reference_inference(y, layers)

    results: list[dict[str, Any]] = []
    for workers in (int(w) for w in args.workers.split(",")):
        plan = fsdgraph.compile(graph, workers)
        for channel in args.channels.split(","):
            with fsdgraph.Scheduler("local", channel,
                                    fsdgraph.RunConfig(progress=False)) as scheduler:
                scheduler.run_sync(plan, y)  # warm-up: warm launcher, page cache
                walls, serials, report = [], [], {}
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    fsdgraph.reference_inference(y, layers, canonical=False)
                    serials.append(time.perf_counter() - start)
                    result = scheduler.run_sync(plan, y)
                    walls.append(result.report["wall_s"])
                    report = result.report
                    assert (result.activations != reference).nnz == 0, "differs from serial"
                    assert np.array_equal(result.categories[result.categories < 1200], truth)
            wall, serial = statistics.median(walls), statistics.median(serials)
            row = {
                "workers": workers, "channel": channel, "wall_s": round(wall, 3),
                "serial_s": round(serial, 3), "ratio": round(wall / serial, 3),
                "launch_s": round(report["launch_s"], 3),
                "bytes_sent": report["bytes_sent"], "messages_sent": report["messages_sent"],
                "requests": report["requests"],
                "peak_rss_worker_max": report["peak_rss_bytes_max"],
                "categories": report["categories"],
            }
            results.append(row)
            print(json.dumps({k: row[k] for k in ("workers", "channel", "wall_s", "serial_s",
                                                  "ratio", "bytes_sent")}), file=sys.stderr)
    doc = {
        "benchmark": "graphchallenge-1024x120",
        "rows": args.rows,
        "images": str(args.images) if args.images else "first 1200 official images, tiled",
        "repeat": args.repeat,
        "serial_peak_rss": serial_peak_rss(args),
        "bench_process_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "paper_bytes_p8_10000_images": 104_131_260,
        "runs": results,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
