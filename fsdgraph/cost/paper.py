"""The FSD-Inference paper's cost spreadsheet, reproduced from its measured runs (the CSVs): one
row's bill (:func:`paper_bill`) and every row's, spreadsheet against full rules
(:func:`paper_comparison`). What the spreadsheet charges: :mod:`fsdgraph.cost`."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsdgraph.cost.bill import Bill, _billed_s, _check_memory, _Ledger
from fsdgraph.errors import ConfigError, InputError
from fsdgraph.prices import CHUNK_BYTES, GB_BYTES, PAPER_PRICES, Prices

#: The Lambda memory the paper's totals imply (the only size that reproduces them).
PAPER_MEMORY_MB = 1000
#: The paper's spreadsheet: SNS units of 64 000 bytes and data transfer per 10^9 bytes.
PAPER_CHUNK_BYTES = 64_000
PAPER_GB_BYTES = 10**9
#: The totals the paper prints (USD per run of 10 000 images), rounded to 7 decimals.
PAPER_TOTALS = {("queue", "c1_1024n_8w_10000bs_SQS"): 0.0215316,
                ("object", "c1_1024n_8w_10000bs_S3"): 0.0539095}


def paper_bill(row: Mapping[str, str], channel: str, *, simplified: bool = True,
               prices: Prices | None = None, memory_mb: int = PAPER_MEMORY_MB) -> Bill:
    """The bill of one row of the paper's CSVs (``channel`` "queue" or "object").

    ``simplified=True`` is the paper's spreadsheet (:mod:`fsdgraph.cost`); ``simplified=False``
    applies the full rules to the same row with the same prices: Lambda billed per ms
    (each worker's share of the summed runtime rounded up), SNS units of 64 KiB, SQS deletes
    (one per receive that returned messages: ``min(polls, messages received)``, an upper bound)
    and the extra 64 KiB units of large receives (``METRIC_SIZE_MESSAGES_RECEIVED`` spread over
    those receives), data transfer at ``in_region_gb`` (free within a region) instead of internet
    egress. The coordinator's own duration is in neither (the CSV does not have it). The CSV has
    totals only: costs are spread evenly over the workers and kept in layer -1.

    >>> row = {"CONFIG": "c1_1024n_8w_10000bs_SQS", "TOTAL_NWORKERS": "8",
    ...        "METRIC_PUBLISH_CALLS": "1102", "METRIC_SIZE_MESSAGES_SENT": "104131260",
    ...        "METRIC_RECEIVE_POLL_CALLS": "4318", "METRIC_LAMBDA_RUNTIME": "568.61206"}
    >>> round(paper_bill(row, "queue").total, 7)
    0.0215316
    """
    prices = prices or PAPER_PRICES
    _check_memory(memory_mb)
    name = row.get("CONFIG", "?")

    def col(key: str) -> float:
        if key not in row:
            raise InputError(f"paper run {name}: missing column {key}")
        try:
            return float(row[key])
        except (TypeError, ValueError):
            raise InputError(f"paper run {name}: column {key} is not a number: "
                             f"{row[key]!r}") from None

    P = int(col("TOTAL_NWORKERS"))
    if P < 1:
        raise InputError(f"paper run {name}: TOTAL_NWORKERS must be >= 1")
    ledger = _Ledger(prices, range(P))

    def charge(service: str, what: str, unit: str, price: float, quantity: float) -> None:
        ledger.charge(service, what, unit, price, quantity,
                      workers={w: quantity / P for w in range(P)})

    ledger.charge("Lambda", "invocations (P + coordinator)", "requests",
                  prices.lambda_requests_per_m / 1e6, P + 1, workers={w: 1.0 for w in range(P)})
    runtime = col("METRIC_LAMBDA_RUNTIME")  # seconds, summed over the workers
    billed = runtime if simplified else P * _billed_s(runtime / P)
    charge("Lambda", f"duration ({memory_mb} MB)", "GB-s", prices.lambda_gb_s,
           billed * memory_mb / 1024)
    sqs, sns = prices.sqs_requests_per_m / 1e6, prices.sns_publish_per_m / 1e6
    if channel == "queue":
        calls, sent = col("METRIC_PUBLISH_CALLS"), col("METRIC_SIZE_MESSAGES_SENT")
        polls = col("METRIC_RECEIVE_POLL_CALLS")
        chunk = PAPER_CHUNK_BYTES if simplified else CHUNK_BYTES
        charge("SNS", "publish", "64 KB units", sns, calls * math.ceil(sent / calls / chunk))
        charge("SQS", "receive", "requests", sqs, polls)
        if simplified:
            charge("SNS", "data out (spreadsheet)", "GB (1e9 B)", prices.data_out_gb,
                   sent / PAPER_GB_BYTES)
        else:
            got = col("METRIC_SIZE_MESSAGES_RECEIVED")
            nonempty = min(polls, col("METRIC_NUM_MESSAGES_RECEIVED"))
            if nonempty:
                extra = nonempty * (math.ceil(got / nonempty / CHUNK_BYTES) - 1)
                charge("SQS", "receive: extra 64 KB units", "64 KB units", sqs, max(0.0, extra))
            charge("SQS", "delete", "requests", sqs, nonempty)
            charge("data transfer", "in region", "GB", prices.in_region_gb, sent / GB_BYTES)
    elif channel == "object":
        put, get = prices.s3_put_per_k / 1e3, prices.s3_get_per_k / 1e3
        charge("S3", "PUT", "requests", put, col("METRIC_S3_NUM_WRITES"))
        charge("S3", "LIST", "requests", put, col("METRIC_S3_FOLDER_SCANS"))
        charge("S3", "GET", "requests", get, col("METRIC_S3_NUM_READS"))
        if not simplified:
            charge("data transfer", "in region", "GB", prices.in_region_gb,
                   col("METRIC_S3_WRITE_SIZE") / GB_BYTES)
    else:
        raise ConfigError(f"unknown channel {channel!r}; known: object, queue")
    ledger.notes.append(f"paper run {name}, {'spreadsheet' if simplified else 'full'} rules")
    return ledger.bill()


def paper_data_dir() -> Path:
    """Where the paper's CSVs are: ``$FSDGRAPH_PAPER_DATA``, else ``shared/data/fsd-inference``
    beside the project.

    >>> import os
    >>> paper_data_dir().name if "FSDGRAPH_PAPER_DATA" not in os.environ else "fsd-inference"
    'fsd-inference'
    """
    env = os.environ.get("FSDGRAPH_PAPER_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "fsd-inference"


def paper_runs(data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, dict[str, str]]]:
    """Every row of the paper's ``queue_runs.csv`` and ``object_runs.csv``, as (channel, row)
    (example: :func:`paper_comparison`). A missing file is a ``ConfigError`` naming it."""
    folder = Path(data_dir) if data_dir is not None else paper_data_dir()
    runs: list[tuple[str, dict[str, str]]] = []
    for channel in ("queue", "object"):
        path = folder / f"{channel}_runs.csv"
        try:
            with path.open(newline="", encoding="utf-8") as f:
                runs += [(channel, dict(r)) for r in csv.DictReader(f)]
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the paper's runs: {exc}") from exc
    return runs


def paper_comparison(data_dir: str | os.PathLike[str] | None = None, *,
                     prices: Prices | None = None) -> list[dict[str, Any]]:
    """For every CSV row, at the same prices (:data:`PAPER_PRICES` unless given): the
    spreadsheet total (``simplified``), the full-rules total (``full``) and their
    ``difference``, split into ``omitted`` (what the spreadsheet left out: SQS deletes, extra
    64 KiB receive units, per-ms rounding, 64 KiB instead of 64 000-byte SNS units) and
    ``data_out_charged`` (the internet egress it charged for SNS bytes, free within a region);
    plus ``full_us_east_1``, the full rules at us-east-1 list prices.

    >>> import pathlib, shutil, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "queue_runs.csv").write_text(
    ...     "CONFIG,TOTAL_NWORKERS,METRIC_PUBLISH_CALLS,METRIC_SIZE_MESSAGES_SENT,"
    ...     "METRIC_RECEIVE_POLL_CALLS,METRIC_NUM_MESSAGES_RECEIVED,"
    ...     "METRIC_SIZE_MESSAGES_RECEIVED,METRIC_LAMBDA_RUNTIME\\n"
    ...     "q8,8,1102,104131260,4318,6774,104131260,568.61206\\n")
    >>> _ = (d / "object_runs.csv").write_text(
    ...     "CONFIG,TOTAL_NWORKERS,METRIC_S3_NUM_WRITES,METRIC_S3_NUM_READS,"
    ...     "METRIC_S3_FOLDER_SCANS,METRIC_S3_WRITE_SIZE,METRIC_LAMBDA_RUNTIME\\n"
    ...     "o8,8,6452,6450,1615,240694300,514.65564\\n")
    >>> [(r["config"], round(r["simplified"], 7), round(r["full"], 7), round(r["omitted"], 7))
    ...  for r in paper_comparison(d)]
    [('q8', 0.0215316, 0.0138871, 0.0017273), ('o8', 0.0539095, 0.0539095, 0.0)]
    >>> shutil.rmtree(d)
    """
    out = []
    for channel, row in paper_runs(data_dir):
        simple = paper_bill(row, channel, prices=prices)
        full = paper_bill(row, channel, simplified=False, prices=prices)
        images = float(row.get("NUM_DATA", "0") or 0)
        data_out = simple.by_service().get("SNS", 0.0) - sum(
            i.cost for i in simple.items if i.service == "SNS" and i.what == "publish")
        transfer = full.by_service().get("data transfer", 0.0)
        out.append({
            "config": row.get("CONFIG", "?"), "channel": channel,
            "workers": int(row["TOTAL_NWORKERS"]), "neurons": int(row.get("NUM_NEURONS", 0)),
            "simplified": simple.total, "full": full.total,
            "difference": full.total - simple.total,
            "omitted": (full.total - transfer) - (simple.total - data_out),
            "data_out_charged": data_out,
            "full_us_east_1": paper_bill(row, channel, simplified=False, prices=Prices()).total,
            "simplified_per_image": simple.total / images if images else None,
            "by_service_simplified": simple.by_service(), "by_service_full": full.by_service(),
        })
    return out

