"""Benchmark: traffic and the modelled AWS bill per partitioner and channel.

The official 1024-neuron, 120-layer network on 10 000 images (the shipped 1200 tiled) with 8
workers on the local backend, for every partitioner and every channel: rows to send (from the
plan), bytes and messages sent, requests, and the itemised bill of the run (``fsdgraph.cost``,
AWS list prices, Lambda at the paper's 1000 MB so the Lambda lines compare) per 1 000 images,
beside the paper's own totals for the same configuration. Prints JSON.

    python bench/costs.py [--data ../shared/data/graphchallenge] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import scipy.sparse as sp

import fsdgraph
from fsdgraph.cost import bill
from fsdgraph.sources.graphchallenge import load_images, load_weights

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "graphchallenge"
#: The paper's totals for 1024 neurons, 8 workers, 10 000 images (USD per run).
PAPER = {"queue": 0.0215316, "object": 0.0539095}
PAPER_BYTES = 104_131_260


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--memory-mb", type=int, default=1000)
    parser.add_argument("--partitioners", default="contiguous,random,hypergraph")
    parser.add_argument("--channels", default="queue,object,auto")
    args = parser.parse_args()

    weights = load_weights(args.data / "neuron1024", 1024, 120)
    y = load_images(args.data / "sparse-images-1024-first1200.tsv.gz", 1024)
    y = sp.csr_matrix(sp.vstack([y] * -(-args.rows // y.shape[0]))[: args.rows])
    graph = fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True)
    per_1000 = 1000 / args.rows
    runs = []
    for partitioner in args.partitioners.split(","):
        plan = fsdgraph.compile(graph, args.workers, partitioner)
        for channel in args.channels.split(","):
            with fsdgraph.Scheduler("local", channel,
                                    fsdgraph.RunConfig(progress=False)) as scheduler:
                report = scheduler.run_sync(plan, y).report
            the_bill = bill(report, memory_mb=args.memory_mb)
            row = {
                "partitioner": partitioner, "channel": channel,
                "rows_to_send": sum(plan.rows_to_send()),
                "bytes_sent": report["bytes_sent"], "messages_sent": report["messages_sent"],
                "edges_via_object": report["edges_via_object"],
                "requests": report["requests"], "wall_s": round(report["wall_s"], 3),
                "bill_usd_per_1000_images": the_bill.total * per_1000,
                "bill_by_service_per_1000_images": {
                    k: v * per_1000 for k, v in the_bill.by_service().items()},
            }
            runs.append(row)
            print(json.dumps({k: row[k] for k in ("partitioner", "channel", "rows_to_send",
                                                  "bytes_sent", "bill_usd_per_1000_images")}),
                  file=sys.stderr)
    print(json.dumps({
        "benchmark": "costs-1024x120", "rows": args.rows, "workers": args.workers,
        "lambda_memory_mb": args.memory_mb,
        "paper_usd_per_1000_images": {k: v / 10 for k, v in PAPER.items()},
        "paper_bytes_sent": PAPER_BYTES,
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
