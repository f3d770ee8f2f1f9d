"""The itemised AWS bill of a run: before it (:func:`estimate`), after it (:func:`bill`), and the
FSD-Inference paper's own spreadsheet (:func:`paper_bill`, :func:`paper_comparison`).

Modules: :mod:`~fsdgraph.prices` (the price tables), :mod:`~fsdgraph.cost.bill` (bills, their
ledger, :func:`bill`), :mod:`~fsdgraph.cost.estimate` and :mod:`~fsdgraph.cost.paper`; every public
name is importable from ``fsdgraph.cost``. The price tables live in :mod:`fsdgraph.prices`, outside
this package, so that what reads prices at run time loads no bill or estimate code.

Prices
------
One table, :class:`Prices`: AWS list prices, us-east-1 unless told otherwise. Override a region
with :meth:`Prices.for_region` (a small table, :data:`REGIONS`), a field with
``dataclasses.replace(prices, sqs_requests_per_m=0.5)``, or everything from a TOML/JSON file with
:meth:`Prices.from_file`. Prices are in the units AWS publishes them in (per million requests, per
thousand S3 requests, per GB-second, per GB); the free tier is ignored.

Rules (AWS's billing, applied request by request)
-------------------------------------------------
* **Lambda**: every invocation; duration per invocation rounded *up* to the millisecond, times the
  configured memory in GB (MB / 1024).
* **SNS**: every publish call, per started 64 KiB of its payload (a ``PublishBatch`` of 10 x 20 KB
  entries is 4 requests). Deliveries to SQS are free, and so is the control plane
  (``CreateTopic``, ``Subscribe``, ``DeleteTopic``).
* **SQS**: every request. A send is billed per started 64 KiB of its payload; a receive is one
  request plus one more per further started 64 KiB of the messages it returned (at most 10);
  a batch delete, ``CreateQueue`` and ``DeleteQueue`` are one request each.
* **S3**: PUT, COPY, POST and LIST at the tier-1 price, GET at tier 2; DELETE is free. A prefix
  delete (``delete_objects``) is counted as one LIST plus one POST (``DeleteObjects``).
* **Data transfer**: between Lambda and SNS/SQS/S3 in the same region it is free
  (``in_region_gb`` = 0). Set ``in_region_gb`` for a cross-region deployment; ``data_out_gb``
  (internet egress) is what the paper's spreadsheet charged for SNS bytes.

What a run report does not say, and the choice made
---------------------------------------------------
* *How long each Lambda ran.* Lambda bills wall-clock duration, not CPU (``process_cpu_s``) nor the
  per-layer ``compute_s``/``wait_s``. :func:`bill` takes, per worker, ``duration_s``, else
  ``finished_at - launched_at`` (its launch until it finished), as every run report has them;
  without either (an older report), every worker is billed the run's ``wall_s``: an upper bound
  (it also covers staging, launch and fetching the outputs).
* *How many bytes each receive returned.* The report has ``bytes_received`` per worker and layer,
  not per call. Every non-empty receive is followed by exactly one batch delete, so the workers'
  ``delete`` count is the number of receives that returned messages; ``bytes_received`` is spread
  evenly over those, and each is billed ``ceil(average / 64 KiB)`` units (the extra units are
  attributed to workers and layers by their share of ``bytes_received``). Receives that came back
  empty are one request each.
* *Where a cost belongs.* Every charge is attributed to a worker and a layer. Key ``-1`` holds
  what no worker (the scheduler: staging, control queue, cleanup) or no layer (launch, setup,
  outputs, cleanup) made. Lambda duration goes to layers in proportion to each layer's time
  (``compute_s + wait_s + codec_s``, slowest worker), the rest of a worker's duration to ``-1``.
  So ``sum(per_worker.values()) == sum(per_layer.values()) == total``.

A worked example
----------------
Two workers ran 1.5 s each at 1024 MB; they published 4 batches billed as 6 units, made 10
receives (4 returned messages, so 4 deletes), 4 PUTs and 6 GETs::

    Lambda  2 invocations x $0.20/M                  = $0.0000004
    Lambda  2 x 1.5 s x 1 GB = 3 GB-s x $0.0000166667 = $0.0000500001
    SNS     6 units x $0.50/M                        = $0.000003
    SQS     (10 receives + 4 deletes) x $0.40/M      = $0.0000056
    S3      4 PUT x $0.005/1k + 6 GET x $0.0004/1k   = $0.0000224
                                                total = $0.0000814001

>>> report = {"workers": 2, "wall_s": 1.5, "channel": "queue",
...           "requests": {"invoke": 2, "publish": 4, "publish_units": 6, "receive": 10,
...                        "delete": 4, "put": 4, "get": 6}}
>>> b = bill(report, memory_mb=1024)
>>> round(b.total, 10)
8.14001e-05
>>> print(b.table())
service       what                              quantity  unit         unit price           cost
Lambda        invocations                              2  requests          2e-07  $0.0000004000
Lambda        duration (1024 MB)                       3  GB-s        1.66667e-05  $0.0000500001
SNS           publish                                  6  64 KB units       5e-07  $0.0000030000
SQS           receive                                 10  requests          4e-07  $0.0000040000
SQS           delete                                   4  requests          4e-07  $0.0000016000
S3            PUT                                      4  requests          5e-06  $0.0000200000
S3            GET                                      6  requests          4e-07  $0.0000024000
total                                                                             $0.0000814001

The paper's spreadsheet
-----------------------
:func:`paper_bill` reproduces it from one row of the paper's CSVs (``queue_runs.csv``,
``object_runs.csv``): Lambda ``(P+1)`` invocations and ``METRIC_LAMBDA_RUNTIME`` (seconds, summed
over the workers) at **1000 MB** and $2.1e-6 per 128 MB-s; SNS ``METRIC_PUBLISH_CALLS`` x
``ceil(METRIC_SIZE_MESSAGES_SENT / calls / 64 000)`` units at $0.50/M plus the bytes at $0.09 per
10^9 bytes; SQS ``METRIC_RECEIVE_POLL_CALLS`` at $0.40/M; S3 ``METRIC_S3_NUM_WRITES`` and
``METRIC_S3_FOLDER_SCANS`` (LISTs) at $5.3/M, ``METRIC_S3_NUM_READS`` at $0.42/M
(:data:`PAPER_PRICES`). Its printed totals are rounded to 7 decimals: 1024 neurons / 8 workers
gives $0.021531605 (queue) and $0.053909469 (object), printed $0.0215316 and $0.0539095.
``simplified=False`` applies the rules above to the same row and the same prices.
"""

from __future__ import annotations

import inspect
from typing import Any

from fsdgraph.control import CONTROL_POLL_S
from fsdgraph.cost.bill import Bill, LineItem, bill
from fsdgraph.cost.estimate import (
    DEFAULT_BYTES_PER_NONZERO,
    DEFAULT_DENSITY,
    DEFAULT_EMPTY_POLLS,
    DEFAULT_START_S,
    ExchangeEstimate,
    estimate,
)
from fsdgraph.cost.paper import (
    PAPER_CHUNK_BYTES,
    PAPER_GB_BYTES,
    PAPER_MEMORY_MB,
    PAPER_TOTALS,
    paper_bill,
    paper_comparison,
    paper_data_dir,
    paper_runs,
)
from fsdgraph.prices import (
    CHUNK_BYTES,
    DEFAULT_MEMORY_MB,
    GB_BYTES,
    MEMORY_RANGE,
    PAPER_PRICES,
    REGIONS,
    Prices,
)

__all__ = ["CHUNK_BYTES", "CONTROL_POLL_S", "DEFAULT_BYTES_PER_NONZERO", "DEFAULT_DENSITY",
           "DEFAULT_EMPTY_POLLS", "DEFAULT_MEMORY_MB", "DEFAULT_START_S", "GB_BYTES",
           "MEMORY_RANGE", "PAPER_CHUNK_BYTES", "PAPER_GB_BYTES", "PAPER_MEMORY_MB",
           "PAPER_PRICES", "PAPER_TOTALS", "REGIONS", "Bill", "ExchangeEstimate", "LineItem",
           "Prices", "bill", "estimate", "paper_bill", "paper_comparison", "paper_data_dir",
           "paper_runs"]


def _examples() -> dict[str, Any]:
    """The public functions, classes and methods of the package, for ``__test__``.

    ``doctest.testmod(fsdgraph.cost)`` looks only at what this file defines; with these it runs
    every example of the package, in this namespace (each module's own examples also run with
    ``pytest --doctest-modules fsdgraph/cost``).
    """
    found: dict[str, Any] = {}
    for name in __all__:
        obj = globals()[name]
        if callable(obj):
            found[name] = obj
        if isinstance(obj, type):
            found |= {f"{name}.{attr}": getattr(obj, attr) for attr in vars(obj)
                      if inspect.isfunction(getattr(obj, attr))}
    return found


__test__ = _examples()
