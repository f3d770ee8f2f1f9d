"""Benchmark: how setup, launch, the control plane and the exchange scale with the worker count.

A generated RadiX-Net (``--neurons`` x ``--layers``, the Graph Challenge's bias) on ``--images``
generated images, compiled for each worker count P; one run per P on the embedded default
(``--local``, default 8, 64, 256, 1000) and, with ``--aws``, against the local AWS-API servers
(moto behind the quota-enforcing wrapper, and the Lambda endpoint; default P 8, 64, 256), each
after ``fsdgraph deploy``. Every run is checked against the serial reference, bit for bit, and
reports: ``setup_s``, ``teardown_s`` and their requests, ``launch_s`` (first invoke to last worker
running), ``wall_s``, ``status_lag_s`` (the latest a ``done`` reached the scheduler),
``progress_lag_s`` (the latest any status did), the topic shards, and messages and requests per
worker and layer. moto delivers at once and in full batches: request counts measured against it
are a lower bound of AWS's.

Prints one JSON document; ``--plot FILE.png`` also draws the times against P.

    python bench/scale.py [--local 8,64,256,1000] [--aws 8,64,256] [--plot docs/scale.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import scipy.sparse as sp

import fsdgraph
from fsdgraph.sources.graphchallenge import graphchallenge_bias
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet


def sizes(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def measure(scheduler: fsdgraph.Scheduler, plan: fsdgraph.Plan, inputs: sp.csr_matrix,
            reference: sp.csr_matrix) -> dict[str, Any]:
    result = scheduler.run_sync(plan, inputs)
    if (result.activations != reference).nnz:
        raise SystemExit(f"P={plan.workers}: the result differs from the serial reference")
    r = result.report
    cells = plan.workers * plan.layers
    return {
        "workers": plan.workers, "wall_s": round(r["wall_s"], 3),
        "stage_s": round(r["stage_s"], 3), "setup_s": round(r["setup_s"], 3),
        "setup_requests": sum(r["setup_requests"].values()),
        "launch_s": round(r["launch_s"], 3), "teardown_s": round(r["teardown_s"], 3),
        "teardown_requests": sum(r["teardown_requests"].values()),
        "status_lag_s": round(r["status_lag_s"], 3),
        "progress_lag_s": round(r["progress_lag_s"], 3),
        "topics": r["channel_setup"].get("topics"), "mode": r["channel_setup"].get("mode"),
        "messages_per_worker_layer": round(r["messages_sent"] / cells, 2),
        "requests_per_worker_layer": round(
            sum(v for k, v in r["requests"].items() if not k.endswith("_units")) / cells, 2),
        "duplicate_invocations": r["duplicate_invocations"],
        "relaunches": r["relaunches"],
        "peak_rss_mb_max": round(r["peak_rss_bytes_max"] / 2**20, 1),
    }


def run_local(counts: list[int], network: Any, say: Any) -> list[dict[str, Any]]:
    graph, inputs, reference = network
    rows = []
    with fsdgraph.Scheduler("local", "queue", fsdgraph.RunConfig(progress=False)) as scheduler:
        for p in counts:
            say(f"local, {p} workers")
            rows.append({"backend": "local",
                         **measure(scheduler, fsdgraph.compile(graph, p), inputs, reference)})
    return rows


def run_aws(counts: list[int], network: Any, say: Any) -> list[dict[str, Any]]:
    from fsdgraph.backends.aws import AwsBackend
    from fsdgraph.cli import EXIT_PASSED
    from fsdgraph.cli import main as cli
    from fsdgraph.testing.aws_servers import CREDENTIALS, PATIENT, LocalAws

    if not counts:
        return []
    os.environ.update(CREDENTIALS)  # dummy ones: the servers are local
    graph, inputs, reference = network
    rows = []
    with LocalAws() as servers, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(servers.config_toml("scale").replace(
            "[aws]\n", "[aws]\ntimeout_s = 900\n"))
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the benchmark's JSON
            deployed = cli(["deploy", "--config", str(config), "--no-dependencies"])
        if deployed != EXIT_PASSED:
            raise SystemExit("fsdgraph deploy failed against the local AWS servers")
        backend = AwsBackend.configure(config)
        for p in counts:
            say(f"aws (local servers), {p} workers")
            scheduler = fsdgraph.Scheduler(backend, "queue", PATIENT)
            rows.append({"backend": "aws (local servers)",
                         **measure(scheduler, fsdgraph.compile(graph, p), inputs, reference)})
        with contextlib.redirect_stdout(sys.stderr):
            cli(["teardown", "--config", str(config)])
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in sorted({r["backend"] for r in rows}):
        mine = [r for r in rows if r["backend"] == backend]
        ps = [r["workers"] for r in mine]
        for key, style in (("setup_s", "o-"), ("launch_s", "s-"), ("wall_s", "^-"),
                           ("status_lag_s", "x--")):
            axes[0].plot(ps, [r[key] for r in mine], style, label=f"{backend}: {key}")
        axes[1].plot(ps, [r["setup_requests"] / r["workers"] for r in mine], "o-",
                     label=f"{backend}: setup requests / P")
        axes[1].plot(ps, [r["requests_per_worker_layer"] for r in mine], "s-",
                     label=f"{backend}: requests / (P x layer)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("workers P")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("seconds")
    axes[0].set_title("time to set up, launch, run; status lag")
    axes[1].set_title("requests per worker")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=sizes, default=[8, 64, 256, 1000])
    parser.add_argument("--aws", type=sizes, default=[],
                        help="worker counts against the local AWS servers (e.g. 8,64,256)")
    parser.add_argument("--neurons", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    weights = radixnet(args.neurons, args.layers, seed=0)
    graph = fsdgraph.sequential(weights, graphchallenge_bias(args.neurons),
                                cap=32.0, bias_on_nonzero=True)
    inputs = synthetic_images(args.neurons, args.images, seed=1)
    reference = fsdgraph.reference_inference(inputs, graph.layers())
    network = (graph, inputs, reference)
    started = time.perf_counter()

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {what}", file=sys.stderr, flush=True)

    rows = run_local(args.local, network, say) + run_aws(args.aws, network, say)
    if args.plot:
        plot(rows, args.plot)
    print(json.dumps({"network": f"{args.neurons}x{args.layers}", "images": args.images,
                      "channel": "queue", "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
