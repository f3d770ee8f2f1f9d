"""Benchmark: the same plan on every backend and channel that is installed, against the serial
reference timed in the same process.

The official 1024-neuron network (``--layers`` of its 120) on the 1200 distinct official images,
compiled once for ``--workers`` workers; for each (backend, channel) pair, one warm-up run, then
the median wall time of ``--repeat`` runs, its ratio to the serial scipy loop timed between them
(the machines are shared and noisy: ratios, not seconds, compare), and the run's requests and
bytes. Every run is checked against the canonical serial reference, bit for bit. Pairs whose
backend or channel is not available here (``ray`` without the extra, say) are reported as
skipped, with the reason. Prints one JSON document.

    python bench/backends.py [--data ../shared/data/graphchallenge] [--workers 4] [--layers 120]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import fsdgraph
from fsdgraph.sources.graphchallenge import graphchallenge_bias, load_images, load_weights

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "graphchallenge"
PAIRS = [("local", "queue"), ("local", "object"), ("local", "auto"), ("inproc", "object"),
         ("ray", "object"), ("ray", "ray")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--layers", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default=",".join(sorted({b for b, _ in PAIRS})),
                        help="comma-separated backends to run (default: all)")
    args = parser.parse_args()
    wanted = set(args.backends.split(","))

    weights = load_weights(args.data / "neuron1024", 1024, args.layers)
    images = load_images(args.data / "sparse-images-1024-first1200.tsv.gz", 1024)
    graph = fsdgraph.sequential(weights, graphchallenge_bias(1024), cap=32.0, bias_on_nonzero=True)
    plan = fsdgraph.compile(graph, args.workers)
    reference = fsdgraph.reference_inference(images, graph.layers())

    def serial_s() -> float:
        start = time.perf_counter()
        fsdgraph.reference_inference(images, graph.layers(), canonical=False)
        return time.perf_counter() - start

    results: list[dict[str, Any]] = []
    config = fsdgraph.RunConfig(progress=False)
    for backend, channel in (p for p in PAIRS if p[0] in wanted):
        row: dict[str, Any] = {"backend": backend, "channel": channel}
        try:
            scheduler = fsdgraph.Scheduler(backend, channel, config)
        except fsdgraph.FsdError as exc:
            results.append({**row, "skipped": str(exc)})
            continue
        with scheduler:
            walls, serials, report = [], [], {}
            for i in range(args.repeat + 1):
                result = scheduler.run_sync(plan, images)
                if (result.activations != reference).nnz:
                    raise SystemExit(f"{backend}/{channel}: result differs from the reference")
                if i:  # the first run warms workers up
                    walls.append(result.report["wall_s"])
                    serials.append(serial_s())
                report = result.report
        wall, serial = statistics.median(walls), statistics.median(serials)
        results.append({**row, "wall_s": round(wall, 4), "serial_s": round(serial, 4),
                        "wall_over_serial": round(wall / serial, 3),
                        "bytes_sent": report["bytes_sent"], "requests": report["requests"],
                        "bill": report["bill"]["total"] if report["bill"] else None})
    print(json.dumps({"network": f"1024x{args.layers}", "images": images.shape[0],
                      "workers": args.workers, "repeat": args.repeat, "runs": results},
                     indent=2))


if __name__ == "__main__":
    main()
