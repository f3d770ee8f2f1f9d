"""Benchmark: what AWS would bill, counted on real AWS API requests against local servers.

The official 1024-neuron, 120-layer network on the shipped 1200 images, run by the AWS backend
(``fsdgraph deploy`` + ``Scheduler("aws")``) against a moto server and the local Lambda invoke
endpoint (``fsdgraph.testing.aws_servers``), with 4 and 8 workers and each channel. Every run is
checked against the official categories. Per run: invocations, SNS publish calls and their
64 KiB units, SQS requests by kind (send, receive, delete) and units, S3 requests, and the bill
of those requests at AWS list prices. Beside them: the paper's 1024-neuron/8-worker queue run
(``queue_runs.csv``, 10 000 images) scaled to the same number of images, and as measured.
Linear scaling understates the paper's per-layer requests (a publish or a poll per worker and
layer does not shrink with the batch); ``--images 10000`` (the 1200 tiled) compares like with
like. Prints JSON.

The Lambda duration lines are left out of the comparison: here every "function" is a process on
one shared machine talking to an emulator, so its wall time says nothing about Lambda's.

    python bench/aws_counts.py [--data ../shared/data/graphchallenge] [--workers 4,8]
                               [--channels queue,queue-direct,object] [--images 1200]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends.aws import AwsBackend
from fsdgraph.backends.aws.deploy import deploy, teardown
from fsdgraph.channels import ChannelConfig
from fsdgraph.cost import bill
from fsdgraph.sources.graphchallenge import load_images, load_truth, load_weights
from fsdgraph.testing.aws_servers import CREDENTIALS, LocalAws

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PAPER_ROW = "c1_1024n_8w_10000bs_SQS"
UNIT = 64 * 1024
REQUEST_SERVICES = ("SNS", "SQS", "S3")


def counts(report: dict[str, Any]) -> dict[str, int]:
    r = report["requests"]
    return {
        "invocations": r.get("invoke", 0),
        "sns_publish_calls": r.get("publish", 0),
        "sns_publish_units": r.get("publish_units", 0),
        "sqs_send_calls": r.get("send", 0),
        "sqs_send_units": r.get("send_units", 0),
        "sqs_receive_calls": r.get("receive", 0),
        "sqs_delete_calls": r.get("delete", 0),
        "s3_put": r.get("put", 0),
        "s3_get": r.get("get", 0),
        "s3_list_and_delete": r.get("list", 0) + r.get("delete_objects", 0),
        "messages_sent": report["messages_sent"],
        "bytes_sent": report["bytes_sent"],
    }


def paper_counts(path: Path, images: int) -> dict[str, Any]:
    """The paper's run scaled from its 10 000 images to ``images`` (invocations are per run)."""
    with open(path, newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["CONFIG"] == PAPER_ROW)
    scale = images / int(row["NUM_DATA"])
    calls = int(row["METRIC_PUBLISH_CALLS"])
    sent = int(row["METRIC_SIZE_MESSAGES_SENT"])
    polls = int(row["METRIC_RECEIVE_POLL_CALLS"])
    received = int(row["METRIC_NUM_MESSAGES_RECEIVED"])
    return {
        "config": PAPER_ROW, "scale": scale,
        "invocations": int(row["TOTAL_NWORKERS"]),
        "sns_publish_calls": round(calls * scale),
        # The CSV has totals only: at least one unit per call and one per 64 KiB sent.
        "sns_publish_units_at_least": round(max(calls, math.ceil(sent / UNIT)) * scale),
        "sqs_receive_calls": round(polls * scale),
        "sqs_delete_calls_at_most": round(min(polls, received) * scale),
        "messages_sent": round(int(row["METRIC_NUM_MESSAGES_SENT"]) * scale),
        "bytes_sent": round(sent * scale),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "graphchallenge")
    parser.add_argument("--paper", type=Path, default=SHARED / "fsd-inference" / "queue_runs.csv")
    parser.add_argument("--workers", default="4,8")
    parser.add_argument("--channels", default="queue,queue-direct,object")
    parser.add_argument("--images", type=int, default=1200, help="rows (the 1200 tiled)")
    args = parser.parse_args()

    weights = load_weights(args.data / "neuron1024", 1024, 120)
    images = load_images(args.data / "sparse-images-1024-first1200.tsv.gz", 1024)
    truth = load_truth(args.data / "neuron1024-l120-categories-first1200.tsv")
    tiles = -(-args.images // images.shape[0])
    images = sp.csr_matrix(sp.vstack([images] * tiles)[:args.images])
    truth = np.concatenate([truth + k * 1200 for k in range(tiles)])
    truth = truth[truth < args.images]
    graph = fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True)
    os.environ.update(CREDENTIALS)  # the local servers want credentials, any will do
    runs = []
    with LocalAws() as aws:
        settings = aws.settings(deployment="bench")
        deploy(settings, dependencies=False, say=lambda line: print(line, file=sys.stderr))
        try:
            for workers in map(int, args.workers.split(",")):
                plan = fsdgraph.compile(graph, workers)
                for channel in args.channels.split(","):
                    config = fsdgraph.RunConfig(progress=False, channel=ChannelConfig(
                        direct=channel.endswith("-direct")))
                    with fsdgraph.Scheduler(AwsBackend(settings),
                                            channel.removesuffix("-direct"),
                                            config) as scheduler:
                        result = scheduler.run_sync(plan, images)
                    report = result.report
                    ok = bool(np.array_equal(result.categories, truth))
                    the_bill = bill(report)
                    requests_usd = sum(v for k, v in the_bill.by_service().items()
                                       if k in REQUEST_SERVICES)
                    runs.append({"workers": workers, "channel": channel,
                                 "categories_ok": ok, **counts(report),
                                 "requests_usd": requests_usd,
                                 "wall_s": round(report["wall_s"], 2)})
                    print(json.dumps(runs[-1]), file=sys.stderr)
        finally:
            teardown(settings, say=lambda _: None)
    print(json.dumps({"images": images.shape[0], "runs": runs,
                      "paper_scaled": paper_counts(args.paper, images.shape[0]),
                      "paper_measured": paper_counts(args.paper, 10_000),
                      "categories_expected": len(truth)}, indent=2))


if __name__ == "__main__":
    main()
