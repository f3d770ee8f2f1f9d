"""Benchmark: what checkpoints, a relaunch and continuations cost a run.

The official 1024-neuron, 120-layer network on the 1200 official images (``--data``; a generated
RadiX-Net and generated images without it), on the embedded default, per channel, in one
sitting, each configuration ``--repeat`` times (the median is kept):

* ``plain``: no relaunch possible (``relaunches=0``: no checkpoints, messages deleted at once);
* ``checkpoints``: a checkpoint every ``--every`` layers, nothing lost;
* ``killed``: the same, and worker 1 killed (SIGKILL) as it starts layer 60: found silent after
  ``relaunch_after_s`` (1 s here), relaunched from its checkpoint; its held messages come back
  after the queue's visibility timeout (2 s here);
* ``continued``: no periodic checkpoint, and every worker process limited to ``--limit`` seconds
  (``LocalBackend.function_timeout_s``; a worker hands over 1 s before its limit, so each attempt
  has ``limit - 1`` s of work): workers hand over to continuations again and again.

Every run is checked bit for bit against the serial reference. Ratios are to ``plain`` of the
same channel in the same sitting (the machine is shared: absolute times are noisy).

    python bench/relaunch.py [--data ../shared/data/graphchallenge] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends.local import LocalBackend
from fsdgraph.sources.graphchallenge import graphchallenge_bias, load_images, load_weights
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet


def network(data: Path | None) -> tuple[fsdgraph.Graph, sp.csr_matrix]:
    if data is not None and data.is_dir():
        weights = load_weights(data / "neuron1024", 1024, 120)
        images = load_images(data / "sparse-images-1024-first1200.tsv.gz", 1024)
    else:
        weights, images = radixnet(1024, 120, seed=0), synthetic_images(1024, 1200, seed=1)
    return fsdgraph.sequential(weights, graphchallenge_bias(1024),
                               cap=32.0, bias_on_nonzero=True), images


def run(backend: LocalBackend, channel: str, config: fsdgraph.RunConfig, plan: fsdgraph.Plan,
        images: sp.csr_matrix, reference: sp.csr_matrix) -> dict[str, Any]:
    try:
        result = fsdgraph.Scheduler(backend, channel, config).run_sync(plan, images)
    finally:
        backend.close()
    if (result.activations != reference).nnz:
        raise SystemExit(f"{channel}: the result differs from the serial reference")
    r = result.report
    return {"wall_s": r["wall_s"], "checkpoints": r["checkpoints"],
            "relaunches": r["relaunches"], "continuations": r["continuations"],
            "requests": sum(r["requests"].values())}


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/graphchallenge"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--every", type=int, default=10, help="layers between checkpoints")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--channels", default="queue,object")
    parser.add_argument("--limit", type=float, default=1.5,
                        help="function time limit of the continued runs (seconds)")
    args = parser.parse_args()
    graph, images = network(args.data)
    reference = fsdgraph.reference_inference(images, graph.layers())
    plan = fsdgraph.compile(graph, args.workers)
    channel_config = fsdgraph.ChannelConfig(visibility_timeout_s=2)
    base = {"progress": False, "relaunch_after_s": 1.0, "channel": channel_config}
    out: dict[str, Any] = {"workers": args.workers, "layers": plan.layers,
                           "images": images.shape[0], "every": args.every,
                           "data": "official" if args.data.is_dir() else "generated"}
    for channel in args.channels.split(","):
        rows: dict[str, dict[str, Any]] = {}
        plain = fsdgraph.RunConfig(**base, relaunches=0)  # type: ignore[arg-type]
        rows["plain"] = median([run(LocalBackend(), channel, plain, plan, images, reference)
                                for _ in range(args.repeat)])
        every = fsdgraph.RunConfig(**base, checkpoint_every=args.every)  # type: ignore[arg-type]
        rows["checkpoints"] = median([run(LocalBackend(), channel, every, plan, images,
                                          reference) for _ in range(args.repeat)])
        rows["killed"] = median([run(LocalBackend(kill=(1, 60)), channel, every, plan, images,
                                     reference) for _ in range(args.repeat)])
        limit = args.limit
        never = fsdgraph.RunConfig(**base, checkpoint_every=0)  # type: ignore[arg-type]
        rows["continued"] = median([run(LocalBackend(function_timeout_s=limit), channel, never,
                                        plan, images, reference) for _ in range(args.repeat)])
        rows["continued"]["function_timeout_s"] = round(limit, 3)
        for row in rows.values():
            row["wall_vs_plain"] = round(row["wall_s"] / rows["plain"]["wall_s"], 3)
        out[channel] = rows
        print(f"{channel}: done", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
