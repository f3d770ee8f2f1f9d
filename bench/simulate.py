"""fsdgraph's predicted time and cost against the FSD-Inference paper's measured AWS runs.

For every row of the paper's ``queue_runs.csv`` and ``object_runs.csv`` (10 000 images, 120
layers): the simulator's prediction of fsdgraph's protocol (profile ``aws``,
``fsdgraph.simulate.predict``, model parallel over the same workers, same channel, same memory as
the paper's 1000 MB and at 1769 MB = 1 vCPU) next to the paper's measurement. Times: the paper
has no end-to-end wall clock (PAPER.md weakness 9), so its per-worker mean runtime
(``METRIC_LAMBDA_RUNTIME / P``) stands in; fsdgraph's wall time is the simulated first invoke to
last output. Costs per image: the paper's own spreadsheet (``paper_bill``), the same run at the
full us-east-1 rules (``paper_bill(simplified=False, prices=Prices())``), and fsdgraph's
predicted bill (``fsdgraph.cost.bill`` of the prediction, full rules, us-east-1). Then the
headline: 65536 neurons on 62 workers, both channels. Prints JSON::

    python bench/simulate.py > simulate.json

``--local``: the ``local`` profile against real runs on this machine instead (object channel, a
24-layer 1024-neuron RadiX-Net on 1000 images, P = 1, 2, 4, after a warm-up): the predicted wall
time over the fastest of five measured runs (other load only ever adds to a run's time).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fsdgraph.cost.paper import paper_bill, paper_runs
from fsdgraph.prices import Prices
from fsdgraph.simulate import predict
from fsdgraph.simulate.calibrate import calibrate

MEMORIES = (1000, 1769)


def row_result(channel: str, row: dict[str, str]) -> dict[str, Any]:
    P, N = int(row["TOTAL_NWORKERS"]), int(row["NUM_NEURONS"])
    images, layers = int(row["NUM_DATA"]), int(row["NUM_LAYERS"])
    runtime = float(row["METRIC_LAMBDA_RUNTIME"])
    out: dict[str, Any] = {
        "config": row["CONFIG"], "channel": channel, "workers": P, "neurons": N,
        "paper": {
            "runtime_s": runtime, "per_worker_s": runtime / P,
            "cost_per_image_spreadsheet": paper_bill(row, channel).total / images,
            "cost_per_image_full_rules": paper_bill(row, channel, simplified=False,
                                                    prices=Prices()).total / images,
        },
    }
    for memory in MEMORIES:
        p = predict(neurons=N, layers=layers, workers=P, images=images, channel=channel,
                    memory_mb=memory, profile="aws")
        out[f"fsdgraph_{memory}mb"] = {
            "wall_s": p.wall_s, "runtime_s": p.runtime_s, "cost_usd": p.cost_usd,
            "cost_per_image": p.cost_usd / images, "bytes": p.bytes,
            "breakdown": p.breakdown,
        }
    f = out["fsdgraph_1000mb"]
    out["speedup_vs_paper_per_worker_time"] = out["paper"]["per_worker_s"] / f["wall_s"]
    out["cost_ratio_vs_paper_full_rules"] = (f["cost_per_image"]
                                             / out["paper"]["cost_per_image_full_rules"])
    return out


def local_check() -> dict[str, Any]:
    """Predicted (profile ``local``) against measured wall times on this machine."""
    import fsdgraph
    from fsdgraph.simulate import predict_plan
    from fsdgraph.sources.graphchallenge import graphchallenge_network
    from fsdgraph.sources.images import live_row_curve, synthetic_images
    from fsdgraph.sources.radixnet import radixnet

    graph = graphchallenge_network(radixnet(1024, 24, seed=3))
    images = synthetic_images(1024, 1000, seed=4)
    alive = live_row_curve(images, graph.layers())
    live = [1.0, *alive[:-1].tolist()]
    rows = []
    with fsdgraph.Scheduler("local", "object", fsdgraph.RunConfig(progress=False)) as scheduler:
        scheduler.run_sync(fsdgraph.compile(graph, 1), images)  # warm-up
        for workers in (1, 2, 4):
            plan = fsdgraph.compile(graph, workers)
            predicted = predict_plan(plan, images=1000, channel="object", profile="local",
                                     live_rows=live).wall_s
            measured = min(scheduler.run_sync(plan, images).report["wall_s"] for _ in range(5))
            rows.append({"workers": workers, "predicted_s": predicted, "measured_s": measured,
                         "ratio": predicted / measured})
    return {"what": "profile local vs runs on this machine (object channel)", "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true",
                        help="the local profile against real runs on this machine")
    if parser.parse_args().local:
        print(json.dumps(local_check(), indent=2))
        return
    started = time.perf_counter()
    rows = [row_result(channel, row) for channel, row in paper_runs()]
    cal = calibrate(fit_params=False)
    headline = {
        channel: next(r for r in rows if r["channel"] == channel and r["workers"] == 62
                      and r["neurons"] == 65536 and "RANDOM" not in r["config"])
        for channel in ("queue", "object")
    }
    print(json.dumps({
        "what": "fsdgraph predicted (simulator, profile aws) vs the paper's measured runs",
        "calibration": {"median_abs_err_time": cal.median_abs_err_time,
                        "median_abs_err_cost": cal.median_abs_err_cost,
                        "split": cal.split},
        "headline_65536n_62w": headline,
        "runs": rows,
        "seconds": time.perf_counter() - started,
    }, indent=2))


if __name__ == "__main__":
    main()
