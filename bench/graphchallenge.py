"""Benchmark: distributed Graph Challenge inference against two serial yardsticks.

Runs the official 1024-neuron, 120-layer network (bias -0.3, cap 32) on ``--rows`` (10 000)
distinct images for each worker count and channel on the embedded local backend, and prints one
JSON document. The images: the first ``--rows`` of ``--images`` when it names a full official
file; otherwise the 1200 shipped official images followed by distinct images made from them
(``fsdgraph.sources.images.distinct_images``: moved and outline-jittered copies that die layer by
layer like the originals; ``--thicken`` inks thicker strokes, which keep more rows alive). Never
tiled copies. The live-row curve of the images used is in the JSON (``live_fraction``).

The two yardsticks, both timed in this process, between the distributed runs of every
configuration (the machines are shared and noisy, so a ratio compares times of the same minute):

* ``serial_s`` — the plain scipy Graph Challenge loop (``reference_inference(...,
  canonical=False)``: one CSR x CSR product per layer, the classic yardstick); ``ratio`` is
  ``wall_s / serial_s``;
* ``serial_best_s`` — the project's best serial code: every layer in one process with the
  fastest layer kernel (``serial_inference`` with ``kernel_from_env("auto", threads=1)``, the
  compiled one when numba is installed), one thread; ``ratio_best`` is ``wall_s / serial_best_s``.

Each time is the median of ``--repeat`` runs after one warm-up run (warm workers, as a busy FaaS
deployment has; the compiled kernel loaded). ``wall_s`` is submit-to-results (staging, launch,
all layers, fetching outputs). Every run's output is checked to equal the canonical serial
result bit for bit, and the first 1200 rows to hold the official categories. Serial peak memory
is measured in a fresh process.

    python bench/graphchallenge.py [--data ../shared/data/graphchallenge] [--workers 1,2,4,8]
        [--strategies model,auto] [--channels queue,object]

Each worker count runs with each strategy: ``model`` (every worker a slice of every layer),
``data``, ``hybrid:R``, and ``auto``, the planner's choice for this machine (the simulator's
``local`` profile) and these images; the row's ``parallelism`` says what ran and
``predicted_wall_s`` what the planner predicted.
"""

from __future__ import annotations

import argparse
import json
import os
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
from fsdgraph.kernels import kernel_from_env, serial_inference
from fsdgraph.sources.graphchallenge import load_images, load_truth, load_weights
from fsdgraph.sources.images import distinct_images, live_row_curve

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "graphchallenge"
SHIPPED = "sparse-images-1024-first1200.tsv.gz"
#: Layers after which the JSON gives the fraction of rows still alive.
CURVE_AT = (1, 2, 3, 4, 6, 10, 30, 120)


def benchmark_images(args: argparse.Namespace) -> tuple[sp.csr_matrix, str]:
    """The ``--rows`` distinct images of the run, and a description of where they come from."""
    if args.images is not None:
        y = load_images(args.images, 1024)
        if y.shape[0] >= args.rows:
            return sp.csr_matrix(y[: args.rows]), f"{args.images}, first {args.rows}"
        what = f"{args.images} ({y.shape[0]} images) and distinct images made from them"
    else:
        y = load_images(args.data / SHIPPED, 1024)
        what = f"the first {y.shape[0]} official images and distinct images made from them"
    made = distinct_images(y, args.rows, seed=args.seed, thicken=args.thicken)
    return made, f"{what} (seed {args.seed}, thicken {args.thicken})"


def serial_peak_rss(args: argparse.Namespace) -> int:
    """Peak RSS of a fresh process that loads the same inputs and runs the serial reference."""
    argv = [sys.executable, __file__, "--serial-rss", "--data", str(args.data),
            "--rows", str(args.rows), "--seed", str(args.seed), "--thicken", str(args.thicken)]
    if args.images:
        argv += ["--images", str(args.images)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def source_state() -> dict[str, Any]:
    """The commit measured, and whether the package had uncommitted changes then."""
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", *argv], cwd=HERE.parent, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "package_modified": bool(git("status", "--porcelain", "--untracked-files=no", "--",
                                         "fsdgraph", "kernels", "backends"))}


def timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def compile_for(graph: fsdgraph.Graph, workers: int, strategy: str, channel: str,
                y: sp.csr_matrix) -> fsdgraph.Plan:
    """The plan of one configuration: ``hybrid:R`` has R replicas; ``auto`` is the planner's
    choice for this machine (the simulator's local profile) and these images."""
    if strategy == "auto":
        return fsdgraph.compile(graph, workers, strategy="auto", channel=channel,
                                images=y.shape[0], sample=y[:1000], profile="local")
    name, _, replicas = strategy.partition(":")
    return fsdgraph.compile(graph, workers, strategy=name,
                            replicas=int(replicas) if replicas else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=Path,
                        help="an official image file (default: the shipped first 1200, and "
                             "distinct images made from them up to --rows)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--thicken", type=int, default=0,
                        help="extra ink pixels per generated image (distinct_images; "
                             "fsdgraph.sources.images.THICKER keeps twice the rows alive)")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--strategies", default="model,auto",
                        help="comma list of model, data, hybrid:R, auto (the planner's choice, "
                             "with the local profile)")
    parser.add_argument("--channels", default="queue,object")
    parser.add_argument("--kernel", default="auto", help="the workers' kernel: auto, numba, scipy")
    parser.add_argument("--kernel-threads", type=int, default=1,
                        help="threads per product in a worker (default 1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serial-rss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    load_before = os.getloadavg()  # a shared machine: how busy it was is part of the result
    weights = load_weights(args.data / "neuron1024", 1024, 120)
    y, source = benchmark_images(args)
    graph = fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True)
    layers = graph.layers()
    if args.serial_rss:  # the child of serial_peak_rss
        fsdgraph.reference_inference(y, layers, canonical=False)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return
    truth = load_truth(args.data / "neuron1024-l120-categories-first1200.tsv")
    reference = fsdgraph.reference_inference(y, layers)
    best = kernel_from_env("auto", threads=1)
    alive = live_row_curve(y, layers, best)  # also loads the compiled kernel before timing
    assert (serial_inference(y, layers, best) != reference).nnz == 0, "best serial differs"

    results: list[dict[str, Any]] = []
    config = fsdgraph.RunConfig(progress=False, kernel=args.kernel,
                                kernel_threads=args.kernel_threads)
    for workers, strategy, channel in ((int(w), s, c) for w in args.workers.split(",")
                                       for s in args.strategies.split(",")
                                       for c in args.channels.split(",")):
        plan = compile_for(graph, workers, strategy, channel, y)
        with fsdgraph.Scheduler("local", channel, config) as scheduler:
            scheduler.run_sync(plan, y)  # warm-up: warm launcher, page cache
            walls, serials, bests, report = [], [], [], {}
            for _ in range(args.repeat):
                serials.append(timed(fsdgraph.reference_inference, y, layers,
                                     canonical=False))
                bests.append(timed(serial_inference, y, layers, best))
                result = scheduler.run_sync(plan, y)
                walls.append(result.report["wall_s"])
                report = result.report
                assert (result.activations != reference).nnz == 0, "differs from serial"
                assert np.array_equal(result.categories[result.categories < 1200], truth)
        wall = statistics.median(walls)
        serial, serial_best = statistics.median(serials), statistics.median(bests)
        row = {
            "workers": workers, "strategy": strategy, "parallelism": plan.parallelism(),
            "channel": channel, "wall_s": round(wall, 3),
            "serial_s": round(serial, 3), "ratio": round(wall / serial, 3),
            "serial_best_s": round(serial_best, 3),
            "ratio_best": round(wall / serial_best, 3),
            "launch_s": round(report["launch_s"], 3),
            "cpu_s": round(report["cpu_s"], 3),
            "bytes_sent": report["bytes_sent"], "messages_sent": report["messages_sent"],
            "requests": report["requests"],
            "peak_rss_worker_max": report["peak_rss_bytes_max"],
            "categories": report["categories"],
            # name/threads of the workers' kernels (one entry unless they differ)
            "kernel": ", ".join(sorted({f"{w['kernel']}/{w['kernel_threads']}"
                                        for w in report["per_worker"]})),
        }
        results.append(row)
        if plan.planned is not None:
            row["predicted_wall_s"] = round(plan.planned["predicted"]["wall_s"], 3)
        print(json.dumps({k: row[k] for k in ("workers", "strategy", "channel", "wall_s",
                                              "serial_s", "ratio", "serial_best_s",
                                              "ratio_best", "bytes_sent")}), file=sys.stderr)
    doc = {
        "benchmark": "graphchallenge-1024x120",
        "rows": args.rows,
        "images": source,
        "live_fraction": {str(l): round(float(alive[l - 1]), 4) for l in CURVE_AT},
        **source_state(),
        "repeat": args.repeat,
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "yardsticks": {
            "serial_s": "plain scipy loop: reference_inference(canonical=False)",
            "serial_best_s": f"serial_inference, {best.name} kernel, {best.threads} thread",
        },
        "serial_best_kernel": best.name,
        "serial_peak_rss": serial_peak_rss(args),
        "bench_process_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "paper_bytes_p8_10000_images": 104_131_260,
        "runs": results,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
