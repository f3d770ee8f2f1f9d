"""Benchmark: how much each partitioner leaves to send, and how long it takes.

For a network (the official 1024-neuron one with ``--data``, or a generated RadiX-Net with
``--neurons``/``--layers``) and a worker count, compiles a plan with each partitioner and prints
JSON: compile seconds, the connectivity (rows each activation row must be sent to, summed over
layers, exactly what the plan's exchange edges carry), its per-layer values, balance, and the
ratios against contiguous and random.

    python bench/partitioners.py --workers 8                       # official 1024 x 120
    python bench/partitioners.py --neurons 65536 --layers 120 --workers 64 --only hypergraph
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import fsdgraph
from fsdgraph.sources.graphchallenge import graphchallenge_bias, load_weights
from fsdgraph.sources.radixnet import radixnet

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "graphchallenge"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--neurons", type=int, help="a generated RadiX-Net of this width")
    parser.add_argument("--layers", type=int, default=120)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--only", help="comma-separated partitioners (default: all built-ins)")
    args = parser.parse_args()

    start = time.perf_counter()
    if args.neurons:
        weights = radixnet(args.neurons, args.layers)
        network = f"radixnet-{args.neurons}x{args.layers}"
    else:
        weights = load_weights(args.data / "neuron1024", 1024, args.layers)
        network = f"official-1024x{args.layers}"
    load_s = time.perf_counter() - start
    neurons = weights[0].shape[0]
    graph = fsdgraph.sequential(weights, graphchallenge_bias(neurons), cap=32, bias_on_nonzero=True)
    names = args.only.split(",") if args.only else ["contiguous", "random", "hypergraph"]
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        start = time.perf_counter()
        plan = fsdgraph.compile(graph, args.workers, name)
        compile_s = time.perf_counter() - start
        per_layer = plan.rows_to_send()
        loads = np.array([np.bincount(o, minlength=args.workers) for o in plan.owners])
        runs[name] = {
            "compile_s": round(compile_s, 2), "rows_to_send": sum(per_layer),
            "rows_to_send_per_layer": per_layer,
            "max_load_over_mean": round(float(loads.max() / (neurons / args.workers)), 4),
        }
        print(json.dumps({"partitioner": name, "compile_s": runs[name]["compile_s"],
                          "rows_to_send": sum(per_layer)}), file=sys.stderr)
    for name, run in runs.items():
        for base in ("contiguous", "random"):
            if base in runs and base != name and runs[base]["rows_to_send"]:
                run[f"ratio_vs_{base}"] = round(run["rows_to_send"] / runs[base]["rows_to_send"],
                                                4)
    print(json.dumps({"benchmark": "partitioners", "network": network, "neurons": neurons,
                      "layers": args.layers, "workers": args.workers,
                      "load_s": round(load_s, 2), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
