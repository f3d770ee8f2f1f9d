"""The itemised AWS bill of a run: before it (:func:`estimate`), after it (:func:`bill`), and the
FSD-Inference paper's own spreadsheet (:func:`paper_bill`, :func:`paper_comparison`).

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
  ``finished_at - launched_at`` (its launch until it finished), when a backend reports them; the
  local backend reports neither, so every worker is billed the run's ``wall_s``: an upper bound
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

import csv
import json
import math
import os
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fsdgraph.errors import ConfigError, InputError
from fsdgraph.plan import Edge, Plan
from fsdgraph.transport import Entry, Limits, entry_size

#: AWS bills SNS and SQS payloads per started 64 KiB.
CHUNK_BYTES = 64 * 1024
#: Bytes in a billed GB of data transfer.
GB_BYTES = 2**30
#: Lambda's memory range, in MB.
MEMORY_RANGE = (128, 10240)
#: 1769 MB is the size that gets one full vCPU.
DEFAULT_MEMORY_MB = 1769


@dataclass(frozen=True)
class Prices:
    """AWS list prices in USD, in the units AWS publishes them in (us-east-1 by default).

    >>> Prices().sqs_requests_per_m
    0.4
    >>> Prices.for_region("eu-central-1").s3_put_per_k
    0.0054
    """

    region: str = "us-east-1"
    lambda_requests_per_m: float = 0.20  #: per million invocations
    lambda_gb_s: float = 0.0000166667  #: per GB-second, x86
    sns_publish_per_m: float = 0.50  #: per million publish requests (64 KiB units)
    sqs_requests_per_m: float = 0.40  #: per million requests (64 KiB units), standard queues
    s3_put_per_k: float = 0.005  #: per thousand PUT, COPY, POST or LIST requests
    s3_get_per_k: float = 0.0004  #: per thousand GET requests
    data_out_gb: float = 0.09  #: per GB out to the internet (first 10 TB/month)
    in_region_gb: float = 0.0  #: per GB between Lambda and SNS/SQS/S3 in the same region

    def __post_init__(self) -> None:
        if not isinstance(self.region, str):
            raise ConfigError(f"price field 'region' must be a string, got {self.region!r}")
        for f in fields(self):
            if f.name != "region":
                value = getattr(self, f.name)
                if not _is_price(value):
                    raise ConfigError(f"price field {f.name!r} must be a non-negative number, "
                                      f"got {value!r}")

    @staticmethod
    def for_region(name: str) -> Prices:
        """The list prices of region ``name`` (see :data:`REGIONS`)."""
        try:
            return REGIONS[name]
        except KeyError:
            known = ", ".join(sorted(REGIONS))
            raise ConfigError(f"no prices for region {name!r}; known regions: {known} "
                              f"(or give Prices(...) or Prices.from_file(path))") from None

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Prices:
        """Prices from a ``.toml`` or ``.json`` file: the field names of :class:`Prices` at the top
        level or under a ``prices`` table. ``region`` picks the base table (default us-east-1),
        the other fields override it. Errors name the file and the field.

        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "prices.toml"
        >>> _ = path.write_text('region = "eu-west-2"\\nsqs_requests_per_m = 0.5\\n')
        >>> p = Prices.from_file(path)
        >>> p.region, p.sqs_requests_per_m, p.s3_put_per_k
        ('eu-west-2', 0.5, 0.0053)
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read the price file: {exc}") from exc
        try:
            if p.suffix == ".json":
                data: Any = json.loads(text)
            elif p.suffix == ".toml":
                data = tomllib.loads(text)
            else:
                raise ConfigError(f"{p}: a price file must end in .toml or .json")
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            kind = "JSON" if p.suffix == ".json" else "TOML"
            raise ConfigError(f"{p}: not valid {kind}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("prices"), dict):
            data = data["prices"]
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a table of prices, got {type(data).__name__}")
        names = [f.name for f in fields(Prices)]
        for key in data:
            if key not in names:
                raise ConfigError(f"{p}: unknown field {key!r}; known fields: {', '.join(names)}")
        region = data.get("region", "us-east-1")
        if not isinstance(region, str):
            raise ConfigError(f"{p}: field 'region' must be a string, got {region!r}")
        if region in REGIONS:
            base = REGIONS[region]
        elif set(names) - {"region"} <= set(data):
            base = Prices(region=region)  # every price given: any region name will do
        else:
            raise ConfigError(f"{p}: field 'region': no built-in prices for {region!r} (known: "
                              f"{', '.join(sorted(REGIONS))}); give every price field for it")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "region":
                continue
            if not _is_price(value):
                raise ConfigError(f"{p}: field {key!r} must be a non-negative number, "
                                  f"got {value!r}")
            values[key] = float(value)
        return replace(base, **values)


def _is_price(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


#: A few regions' list prices (Lambda x86, SNS standard, SQS standard, S3 Standard requests,
#: first-tier internet egress). Other regions: give your own ``Prices``.
REGIONS: dict[str, Prices] = {
    "us-east-1": Prices(),
    "us-east-2": Prices(region="us-east-2"),
    "us-west-2": Prices(region="us-west-2"),
    "eu-west-1": Prices(region="eu-west-1"),
    "eu-west-2": Prices(region="eu-west-2", s3_put_per_k=0.0053, s3_get_per_k=0.00042),
    "eu-central-1": Prices(region="eu-central-1", s3_put_per_k=0.0054, s3_get_per_k=0.00043),
}

#: The prices of the paper's spreadsheet: Lambda at $2.1e-6 per 128 MB-s (= $1.68e-5 per GB-s),
#: S3 at $5.3 per million PUT/LIST and $0.42 per million GET (eu-west-2's S3 prices).
PAPER_PRICES = Prices(region="paper spreadsheet", lambda_gb_s=2.1e-6 * 8,
                      s3_put_per_k=0.0053, s3_get_per_k=0.00042)
#: The Lambda memory the paper's totals imply (the only size that reproduces them).
PAPER_MEMORY_MB = 1000
#: The paper's spreadsheet: SNS units of 64 000 bytes and data transfer per 10^9 bytes.
PAPER_CHUNK_BYTES = 64_000
PAPER_GB_BYTES = 10**9
#: The totals the paper prints (USD per run of 10 000 images), rounded to 7 decimals.
PAPER_TOTALS = {("queue", "c1_1024n_8w_10000bs_SQS"): 0.0215316,
                ("object", "c1_1024n_8w_10000bs_S3"): 0.0539095}


@dataclass(frozen=True)
class LineItem:
    """One line of a bill: ``quantity`` ``unit`` at ``unit_price`` USD each, ``cost`` in all.

    >>> item = bill({"workers": 2, "wall_s": 0.0, "requests": {"invoke": 2}}).items[0]
    >>> item.service, item.what, item.quantity, item.unit
    ('Lambda', 'invocations', 2.0, 'requests')
    >>> f"{item.unit_price:.2g} x {item.quantity:g} = {item.cost:.2g}"
    '2e-07 x 2 = 4e-07'
    """

    service: str
    what: str
    quantity: float
    unit: str
    unit_price: float
    cost: float


@dataclass
class Bill:
    """An itemised bill. ``per_worker`` and ``per_layer`` map a worker or layer to its cost;
    ``-1`` is what no worker (the scheduler) or no layer (setup, launch, cleanup) made.

    >>> b = bill({"workers": 1, "wall_s": 1.0, "requests": {"invoke": 1}}, memory_mb=1024)
    >>> [(i.what, i.quantity) for i in b.items]
    [('invocations', 1.0), ('duration (1024 MB)', 1.0)]
    >>> round(b.total, 10) == round(b.per_worker[0], 10)
    True
    """

    items: list[LineItem]
    per_worker: dict[int, float]
    per_layer: dict[int, float]
    notes: list[str] = field(default_factory=list)
    prices: Prices = field(default_factory=Prices)

    @property
    def total(self) -> float:
        """The whole bill in USD."""
        return sum(i.cost for i in self.items)

    def by_service(self) -> dict[str, float]:
        """Cost per service."""
        out: dict[str, float] = defaultdict(float)
        for item in self.items:
            out[item.service] += item.cost
        return dict(out)

    def item(self, service: str, what: str) -> LineItem:
        """The line ``what`` of ``service`` (KeyError if the bill has none)."""
        for i in self.items:
            if i.service == service and i.what == what:
                return i
        raise KeyError(f"no line {what!r} of {service}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (worker and layer keys as strings, ``"-1"`` for none).

        >>> d = bill({"workers": 1, "wall_s": 1.0, "requests": {"invoke": 1}}).to_dict()
        >>> sorted(d["per_worker"]), d["items"][0]["what"]
        (['-1', '0'], 'invocations')
        """
        return {"total": self.total, "items": [asdict(i) for i in self.items],
                "by_service": self.by_service(),
                "per_worker": {str(k): v for k, v in sorted(self.per_worker.items())},
                "per_layer": {str(k): v for k, v in sorted(self.per_layer.items())},
                "notes": list(self.notes), "prices": asdict(self.prices)}

    def table(self) -> str:
        """A printable table of the items and the total."""
        lines = [f"{'service':<13} {'what':<30} {'quantity':>11}  {'unit':<11} "
                 f"{'unit price':>11} {'cost':>14}"]
        for i in self.items:
            qty = f"{i.quantity:,.0f}" if float(i.quantity).is_integer() else f"{i.quantity:,.3f}"
            lines.append(f"{i.service:<13} {i.what:<30} {qty:>11}  {i.unit:<11} "
                         f"{i.unit_price:>11.6g} {_usd(i.cost):>14}")
        lines.append(f"{'total':<81}{_usd(self.total):>14}")
        return "\n".join(lines)


def _usd(x: float) -> str:
    return f"${x:.10f}"


class _Ledger:
    """Charges with their attribution to workers and layers (what is left over goes to -1)."""

    def __init__(self, prices: Prices, workers: Iterable[int] = (),
                 layers: Iterable[int] = ()) -> None:
        self.prices = prices
        self._qty: dict[tuple[str, str, str, float], float] = {}
        self.per_worker: dict[int, float] = {w: 0.0 for w in [*workers, -1]}
        self.per_layer: dict[int, float] = {l: 0.0 for l in [*layers, -1]}
        self.notes: list[str] = []

    def charge(self, service: str, what: str, unit: str, unit_price: float, quantity: float, *,
               workers: Mapping[int, float] | None = None,
               layers: Mapping[int, float] | None = None) -> None:
        if quantity < 0:
            raise InputError(f"{service} {what}: negative quantity {quantity}")
        key = (service, what, unit, unit_price)
        self._qty[key] = self._qty.get(key, 0.0) + quantity
        for split, target, name in ((workers, self.per_worker, "worker"),
                                    (layers, self.per_layer, "layer")):
            given = 0.0
            for k, q in (split or {}).items():
                if q:
                    target[k] = target.get(k, 0.0) + q * unit_price
                    given += q
            rest = quantity - given
            if rest < -1e-9 * max(1.0, quantity):
                raise InputError(f"{service} {what}: the per-{name} counts add up to {given:g}, "
                                 f"more than the total {quantity:g}")
            if rest > 0:
                target[-1] += rest * unit_price

    def bill(self) -> Bill:
        items = [LineItem(s, w, q, u, p, q * p) for (s, w, u, p), q in self._qty.items()]
        return Bill(items, dict(self.per_worker), dict(self.per_layer), self.notes, self.prices)


# --- after a run --------------------------------------------------------------------------------

_FREE_KINDS = ("create_topic", "subscribe", "delete_topic")


def bill(report: Mapping[str, Any], *, memory_mb: int = DEFAULT_MEMORY_MB,
         prices: Prices | None = None) -> Bill:
    """The bill of a finished run from its report (see docs/reports.md and the module docstring).

    >>> b = bill({"workers": 1, "wall_s": 0.0004, "requests": {"invoke": 1, "get": 2}},
    ...          memory_mb=1024)
    >>> b.item("Lambda", "duration (1024 MB)").quantity  # 0.4 ms is billed as 1 ms
    0.001
    """
    prices = prices or Prices()
    _check_memory(memory_mb)
    wall_s = _number(report.get("wall_s", 0.0), "report field 'wall_s'")
    requests = _counts(report.get("requests", {}), "report field 'requests'")
    workers_rows = list(report.get("per_worker") or [])
    layers_rows = list(report.get("per_layer") or [])
    ids = [int(w["worker"]) for w in workers_rows] or list(range(int(report.get("workers", 0))))
    layer_ids = [int(e["layer"]) for e in layers_rows]
    ledger = _Ledger(prices, ids, layer_ids)
    w_req = {int(w["worker"]): _counts(w.get("requests", {}), f"per_worker[{i}].requests")
             for i, w in enumerate(workers_rows)}
    l_req = {int(e["layer"]): _counts(e.get("requests", {}), f"per_layer[{i}].requests")
             for i, e in enumerate(layers_rows)}

    def split(rows: Mapping[int, Mapping[str, float]], kind: str) -> dict[int, float]:
        return {k: v.get(kind, 0.0) for k, v in rows.items()}

    def field_of(rows: Sequence[Mapping[str, Any]], key: str, name: str) -> dict[int, float]:
        return {int(r[key]): _number(r.get(name, 0), f"{key} {r[key]}: {name}") for r in rows}

    # Lambda: one invocation per worker (more calls, e.g. retries, stay with the scheduler).
    invokes = requests.get("invoke", float(len(ids)))
    if "invoke" not in requests:
        ledger.notes.append("the report counts no invocations: one per worker assumed")
    ledger.charge("Lambda", "invocations", "requests", prices.lambda_requests_per_m / 1e6,
                  invokes, workers={w: 1.0 for w in ids[:int(invokes)]})
    durations, source = _durations(workers_rows, ids, wall_s)
    ledger.notes.append(f"Lambda duration per worker: {source}, rounded up to the ms")
    gb = memory_mb / 1024
    billed = {w: _billed_s(d) for w, d in durations.items()}
    gb_s = {w: s * gb for w, s in billed.items()}
    total_gb_s = sum(gb_s.values())
    ledger.charge("Lambda", f"duration ({memory_mb} MB)", "GB-s", prices.lambda_gb_s, total_gb_s,
                  workers=gb_s, layers=_layer_time_split(layers_rows, billed, total_gb_s))

    def requests_line(service: str, what: str, unit: str, price: float, kind: str,
                      fallback: str | None = None, times: float = 1.0) -> None:
        use = kind if kind in requests or fallback is None else fallback
        quantity = requests.get(use, 0.0) * times
        if quantity:
            ledger.charge(service, what, unit, price, quantity,
                          workers={k: v * times for k, v in split(w_req, use).items()},
                          layers={k: v * times for k, v in split(l_req, use).items()})

    sns, sqs = prices.sns_publish_per_m / 1e6, prices.sqs_requests_per_m / 1e6
    put, get = prices.s3_put_per_k / 1e3, prices.s3_get_per_k / 1e3
    requests_line("SNS", "publish", "64 KB units", sns, "publish_units", "publish")
    requests_line("SQS", "send", "64 KB units", sqs, "send_units", "send")
    requests_line("SQS", "receive", "requests", sqs, "receive")
    if report.get("channel", "queue") == "queue":
        _receive_payload_units(ledger, requests, workers_rows, layers_rows, w_req, sqs)
    elif report.get("channel") == "auto":
        ledger.notes.append("auto channel: bytes_received mixes messages and objects, so the "
                            "extra 64 KiB units of large receives are not estimated")
    requests_line("SQS", "delete", "requests", sqs, "delete")
    requests_line("SQS", "create queue", "requests", sqs, "create_queue")
    requests_line("SQS", "delete queue", "requests", sqs, "delete_queue")
    requests_line("S3", "PUT", "requests", put, "put")
    requests_line("S3", "GET", "requests", get, "get")
    requests_line("S3", "LIST", "requests", put, "list")
    requests_line("S3", "cleanup (LIST + DeleteObjects)", "requests", put, "delete_objects",
                  times=2.0)
    sent = _number(report.get("bytes_sent", 0), "report field 'bytes_sent'")
    if sent:
        ledger.charge("data transfer", "in region", "GB", prices.in_region_gb, sent / GB_BYTES,
                      workers={k: v / GB_BYTES
                               for k, v in field_of(workers_rows, "worker", "bytes_sent").items()},
                      layers={k: v / GB_BYTES
                              for k, v in field_of(layers_rows, "layer", "bytes_sent").items()})
    priced = {"invoke", "publish", "publish_units", "send", "send_units", "receive", "delete",
              "create_queue", "delete_queue", "put", "get", "list", "delete_objects", *_FREE_KINDS}
    unpriced = sorted(set(requests) - priced)
    if unpriced:
        ledger.notes.append(f"not priced (unknown request kinds): {', '.join(unpriced)}")
    return ledger.bill()


def _durations(workers_rows: Sequence[Mapping[str, Any]], ids: Sequence[int],
               wall_s: float) -> tuple[dict[int, float], str]:
    out: dict[int, float] = {}
    sources: set[str] = set()
    rows = {int(w["worker"]): w for w in workers_rows}
    for w in ids:
        row = rows.get(w, {})
        if "duration_s" in row:
            out[w] = _number(row["duration_s"], f"worker {w}: duration_s")
            sources.add("its duration_s")
        elif "launched_at" in row and "finished_at" in row:
            out[w] = (_number(row["finished_at"], f"worker {w}: finished_at")
                      - _number(row["launched_at"], f"worker {w}: launched_at"))
            if out[w] < 0:
                raise InputError(f"worker {w}: finished_at is before launched_at")
            sources.add("finished_at - launched_at")
        else:
            out[w] = wall_s
            sources.add("the run's wall_s (the report has no per-worker duration; an upper bound)")
    return out, "; ".join(sorted(sources)) or "none"


def _layer_time_split(layers_rows: Sequence[Mapping[str, Any]], durations: Mapping[int, float],
                      total: float) -> dict[int, float]:
    """Lambda duration by layer: in proportion to each layer's time, the rest to -1."""
    times = {int(e["layer"]): sum(_number(e.get(k, 0.0), f"layer {e['layer']}: {k}")
                                  for k in ("compute_s", "wait_s", "codec_s"))
             for e in layers_rows}
    mean = sum(durations.values()) / len(durations) if durations else 0.0
    scale = max(mean, sum(times.values()))
    return {l: total * t / scale for l, t in times.items()} if scale > 0 else {}


def _receive_payload_units(ledger: _Ledger, requests: Mapping[str, float],
                           workers_rows: Sequence[Mapping[str, Any]],
                           layers_rows: Sequence[Mapping[str, Any]],
                           w_req: Mapping[int, Mapping[str, float]], price: float) -> None:
    """Extra 64 KiB units of receives that returned more than 64 KiB (module docstring)."""
    if workers_rows:
        received = {int(w["worker"]): _number(w.get("bytes_received", 0), "bytes_received")
                    for w in workers_rows}
        nonempty = sum(r.get("delete", 0.0) for r in w_req.values())
    else:
        received = {}
        nonempty = requests.get("delete", 0.0)
    total_bytes = sum(received.values()) if workers_rows else 0.0
    if not total_bytes or not nonempty:
        return
    per_call = math.ceil(total_bytes / nonempty / CHUNK_BYTES)
    extra = nonempty * max(0, per_call - 1)
    ledger.notes.append(f"{total_bytes:.0f} bytes received over {nonempty:.0f} non-empty "
                        f"receives: {per_call} x 64 KiB units each")
    if not extra:
        return
    layer_bytes = {int(e["layer"]): _number(e.get("bytes_received", 0), "bytes_received")
                   for e in layers_rows}
    layer_total = sum(layer_bytes.values())
    ledger.charge("SQS", "receive: extra 64 KB units", "64 KB units", price, extra,
                  workers={w: extra * b / total_bytes for w, b in received.items()},
                  layers=({l: extra * b / layer_total for l, b in layer_bytes.items()}
                          if layer_total else None))


# --- before a run -------------------------------------------------------------------------------

#: Defaults of :func:`estimate`, measured on the local backend with the generated 1024-neuron
#: RadiX-Net (``fsdgraph graphchallenge --synthetic --layers 24 --images 1000``): 9.16 M nonzeros
#: in 70.7 M exchanged (image, neuron) values = 0.13; the object channel wrote 6.55 MB for them,
#: 0.72 bytes per nonzero (compressed chunks; the queue channel's base64 adds a third).
DEFAULT_DENSITY = 0.13
DEFAULT_BYTES_PER_NONZERO = 0.72
#: Requests per exchange edge that find nothing (queue: empty long polls while waiting for peers;
#: object: GETs of a key not yet written). Measured: 0.25 (queue) to 0.9 (object) locally, about
#: 0.5 in the paper's queue runs.
DEFAULT_EMPTY_POLLS = 0.5
#: Runtime per worker when none is given: start-up plus a per-layer latency floor (rough; pass a
#: measured ``runtime_s``).
DEFAULT_START_S = 1.0
DEFAULT_LAYER_S = {"queue": 0.1, "object": 0.15, "auto": 0.1}
#: The scheduler's control-queue long poll and the workers' progress interval, seconds.
CONTROL_POLL_S = 0.5
_RUN_ID = "0" * 12
_OBJECT_OVERHEAD = 24  # msgpack of [run id, [payloads]]


def estimate(plan: Plan, *, channel: str, batch: int, memory_mb: int = DEFAULT_MEMORY_MB,
             runtime_s: float | None = None, prices: Prices | None = None,
             density: float = DEFAULT_DENSITY,
             bytes_per_nonzero: float = DEFAULT_BYTES_PER_NONZERO,
             empty_polls: float = DEFAULT_EMPTY_POLLS,
             object_above_bytes: int | None = None) -> Bill:
    """The predicted bill of running ``plan`` on ``batch`` inputs over ``channel``.

    Every exchange edge ``(layer, src, dst, neurons)`` of the plan carries
    ``batch x len(neurons) x density`` nonzeros of ``bytes_per_nonzero`` bytes each. Queue: split
    into chunks at the channel's message limit, base64 plus attributes on the wire, packed into
    publish calls per (layer, sender) as the channel does, received 10 at a time, plus
    ``empty_polls`` empty receives per edge. Object: one PUT per edge and ``1 + empty_polls``
    GETs. Auto: edges above ``object_above_bytes`` (default: the auto channel's
    ``object_threshold(prices)``) go as an object (PUT, GET) announced by a pointer message, the
    others as on the queue. Each worker runs ``runtime_s`` (default: :data:`DEFAULT_START_S`
    plus :data:`DEFAULT_LAYER_S` per layer). Staging (shard and input per worker), outputs, the
    control queue (a status every :data:`CONTROL_POLL_S` per worker) and cleanup are included.

    >>> import numpy as np, scipy.sparse as sp, fsdgraph
    >>> w = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    >>> plan = fsdgraph.compile(fsdgraph.sequential([w] * 3, bias=-0.01), workers=3)
    >>> b = estimate(plan, channel="object", batch=100, runtime_s=2.0, empty_polls=0)
    >>> b.item("S3", "PUT exchange").quantity == len(plan.edges)
    True
    """
    if channel not in DEFAULT_LAYER_S:
        raise ConfigError(f"estimate models the channels {', '.join(sorted(DEFAULT_LAYER_S))}; "
                          f"got {channel!r}")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    if bytes_per_nonzero <= 0 or empty_polls < 0:
        raise ConfigError("bytes_per_nonzero must be > 0 and empty_polls >= 0, got "
                          f"{bytes_per_nonzero} and {empty_polls}")
    _check_memory(memory_mb)
    prices = prices or Prices()
    default_runtime = runtime_s is None
    runtime = (DEFAULT_START_S + plan.layers * DEFAULT_LAYER_S[channel] if runtime_s is None
               else float(runtime_s))
    if runtime < 0:
        raise ConfigError(f"runtime_s must be >= 0, got {runtime}")
    P, L = plan.workers, plan.layers
    ledger = _Ledger(prices, range(P), range(L))
    sqs = prices.sqs_requests_per_m / 1e6
    put, get = prices.s3_put_per_k / 1e3, prices.s3_get_per_k / 1e3
    ledger.notes.append(f"assumed: density {density}, {bytes_per_nonzero} bytes per nonzero, "
                        f"{empty_polls} empty polls per edge, {runtime:g} s per worker"
                        + (" (default model)" if default_runtime else ""))

    # Lambda.
    ledger.charge("Lambda", "invocations", "requests", prices.lambda_requests_per_m / 1e6, P,
                  workers={w: 1.0 for w in range(P)})
    gb_s = _billed_s(runtime) * memory_mb / 1024
    setup_share = min(1.0, DEFAULT_START_S / runtime) if default_runtime and runtime else 0.0
    per_layer = gb_s * P * (1 - setup_share) / L if L else 0.0
    ledger.charge("Lambda", f"duration ({memory_mb} MB)", "GB-s", prices.lambda_gb_s, gb_s * P,
                  workers={w: gb_s for w in range(P)}, layers={l: per_layer for l in range(L)})

    # The exchange: messages (queue, auto) and objects (object, auto).
    raw = [(e, math.ceil(batch * len(e.neurons) * density * bytes_per_nonzero))
           for e in plan.edges]
    if channel == "auto":
        if object_above_bytes is None:
            from fsdgraph.channels.auto import object_threshold  # late: imports this module

            object_above_bytes = object_threshold(prices)
        as_objects = [(e, n) for e, n in raw if n > object_above_bytes]
        as_messages = [(e, n) for e, n in raw if n <= object_above_bytes]
        ledger.notes.append(f"{len(as_objects)} of {len(raw)} edges as objects (above "
                            f"{object_above_bytes} bytes)")
    else:
        as_objects = raw if channel == "object" else []
        as_messages = raw if channel == "queue" else []
    wire_by: dict[tuple[int, int], float] = defaultdict(float)  # (layer, src) -> bytes
    for e, n in as_objects:
        wire_by[e.layer, e.src] += n + _OBJECT_OVERHEAD
    if as_objects:
        polls = empty_polls if channel == "object" else 0.0  # auto: the pointer says when
        _charge_edges(ledger, "S3", "PUT exchange", put, as_objects, lambda e: (e.src, 1.0))
        _charge_edges(ledger, "S3", "GET exchange", get, as_objects,
                      lambda e: (e.dst, 1.0 + polls))
    if channel != "object":
        pointers = [e for e, _ in as_objects]
        _queue_exchange(ledger, as_messages, pointers, wire_by, prices, empty_polls)
    wire = sum(wire_by.values())
    ledger.notes.append(f"exchange: {len(plan.edges)} edges, {wire:.0f} bytes on the wire")
    if wire:
        w_bytes: dict[int, float] = defaultdict(float)
        l_bytes: dict[int, float] = defaultdict(float)
        for (l, s), b in wire_by.items():
            w_bytes[s] += b / GB_BYTES
            l_bytes[l] += b / GB_BYTES
        ledger.charge("data transfer", "in region", "GB", prices.in_region_gb, wire / GB_BYTES,
                      workers=w_bytes, layers=l_bytes)

    # Control queue, staging, outputs and cleanup.
    statuses = 2 + math.floor(runtime / CONTROL_POLL_S)  # first progress, heartbeats, done
    ledger.charge("SQS", "send (status)", "64 KB units", sqs, P * statuses,
                  workers={w: float(statuses) for w in range(P)})
    polls_control = math.ceil(runtime / CONTROL_POLL_S) + 1
    ledger.charge("SQS", "receive (control)", "requests", sqs, polls_control)
    ledger.charge("SQS", "delete (control)", "requests", sqs, polls_control)
    queues = 1 if channel == "object" else P + 1
    ledger.charge("SQS", "create queue", "requests", sqs, queues)
    ledger.charge("SQS", "delete queue", "requests", sqs, queues)
    ledger.charge("S3", "PUT staging + outputs", "requests", put, 3 * P,
                  workers={w: 1.0 for w in range(P)})
    ledger.charge("S3", "GET staging + outputs", "requests", get, 3 * P,
                  workers={w: 2.0 for w in range(P)})
    ledger.charge("S3", "cleanup (LIST + DeleteObjects)", "requests", put, 2)
    return ledger.bill()


def _charge_edges(ledger: _Ledger, service: str, what: str, price: float,
                  edges: Sequence[tuple[Edge, int]],
                  who: Callable[[Edge], tuple[int, float]]) -> None:
    workers: dict[int, float] = defaultdict(float)
    layers: dict[int, float] = defaultdict(float)
    for e, _ in edges:
        w, q = who(e)
        workers[w] += q
        layers[e.layer] += q
    ledger.charge(service, what, "requests", price, sum(workers.values()),
                  workers=workers, layers=layers)


def _queue_chunk_budget(limits: Limits) -> int:
    widest = {"run": _RUN_ID, "layer": str(10**9), "src": str(10**6), "target": str(10**6),
              "index": str(10**6), "count": str(10**6)}
    text = min(limits.max_message_bytes, limits.max_batch_bytes) - entry_size(Entry("", widest))
    return (text // 4) * 3  # raw bytes whose base64 fits


def _attributes(e: Edge, index: int, count: int) -> dict[str, str]:
    return {"run": _RUN_ID, "layer": str(e.layer), "src": str(e.src), "target": str(e.dst),
            "index": str(index), "count": str(count)}


def _queue_exchange(ledger: _Ledger, edges: Sequence[tuple[Edge, int]], pointers: Sequence[Edge],
                    wire_by: dict[tuple[int, int], float], prices: Prices,
                    empty_polls: float) -> None:
    """Publishes, receives and deletes of the edges sent as messages (and of pointers)."""
    sqs, sns = prices.sqs_requests_per_m / 1e6, prices.sns_publish_per_m / 1e6
    limits = Limits()
    budget = _queue_chunk_budget(limits)
    messages: list[tuple[Edge, list[int]]] = []
    for e, size in edges:
        count = max(1, math.ceil(size / budget))
        pieces = [min(budget, size - i * budget) for i in range(count)] if size else [0]
        overhead = entry_size(Entry("", _attributes(e, count - 1, count if size else 0)))
        messages.append((e, [4 * math.ceil(p / 3) + overhead for p in pieces]))
    for e in pointers:
        key = f"runs/{_RUN_ID}/x/{e.layer}/{e.dst}/{e.src}"
        messages.append((e, [entry_size(Entry(key, {**_attributes(e, 0, 1), "pointer": "1"}))]))
    out: dict[tuple[int, int], list[int]] = defaultdict(list)  # (layer, src) -> message sizes
    into: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for e, sizes in messages:
        out[e.layer, e.src] += sizes
        acc = into[e.layer, e.dst]
        acc[0] += len(sizes)
        acc[1] += sum(sizes)
        acc[2] += 1
        wire_by[e.layer, e.src] += sum(sizes)
    units_w: dict[int, float] = defaultdict(float)
    units_l: dict[int, float] = defaultdict(float)
    calls = 0
    for (l, s), sizes in out.items():
        for batch in _pack(sizes, limits.max_batch_entries, limits.max_batch_bytes):
            units = max(1, math.ceil(batch / CHUNK_BYTES))
            units_w[s] += units
            units_l[l] += units
            calls += 1
    ledger.charge("SNS", "publish", "64 KB units", sns, sum(units_w.values()),
                  workers=units_w, layers=units_l)
    ledger.notes.append(f"{calls} publish calls")
    recv_w: dict[int, float] = defaultdict(float)
    recv_l: dict[int, float] = defaultdict(float)
    extra_w: dict[int, float] = defaultdict(float)
    extra_l: dict[int, float] = defaultdict(float)
    data_w: dict[int, float] = defaultdict(float)
    data_l: dict[int, float] = defaultdict(float)
    for (l, d), (n_messages, nbytes, n_edges) in into.items():
        data = math.ceil(n_messages / 10)  # receives that return messages, 10 at most
        per_call = max(1, math.ceil(nbytes / data / CHUNK_BYTES))
        recv_w[d] += data + empty_polls * n_edges
        recv_l[l] += data + empty_polls * n_edges
        extra_w[d] += data * (per_call - 1)
        extra_l[l] += data * (per_call - 1)
        data_w[d] += data
        data_l[l] += data
    ledger.charge("SQS", "receive", "requests", sqs, sum(recv_w.values()),
                  workers=recv_w, layers=recv_l)
    if sum(extra_w.values()):
        ledger.charge("SQS", "receive: extra 64 KB units", "64 KB units", sqs,
                      sum(extra_w.values()), workers=extra_w, layers=extra_l)
    ledger.charge("SQS", "delete", "requests", sqs, sum(data_w.values()),
                  workers=data_w, layers=data_l)


def _pack(sizes: Sequence[int], max_entries: int, max_bytes: int) -> list[int]:
    """Byte totals of the batch calls first-fit-decreasing packing makes (as the channel does)."""
    totals: list[int] = []
    counts: list[int] = []
    for size in sorted(sizes, reverse=True):
        for i in range(len(totals)):
            if counts[i] < max_entries and totals[i] + size <= max_bytes:
                totals[i] += size
                counts[i] += 1
                break
        else:
            totals.append(size)
            counts.append(1)
    return totals


# --- the paper's spreadsheet --------------------------------------------------------------------


def paper_bill(row: Mapping[str, str], channel: str, *, simplified: bool = True,
               prices: Prices | None = None, memory_mb: int = PAPER_MEMORY_MB) -> Bill:
    """The bill of one row of the paper's CSVs (``channel`` "queue" or "object").

    ``simplified=True`` is the paper's spreadsheet (module docstring); ``simplified=False``
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

    >>> paper_data_dir().name if "FSDGRAPH_PAPER_DATA" not in os.environ else "fsd-inference"
    'fsd-inference'
    """
    env = os.environ.get("FSDGRAPH_PAPER_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "fsd-inference"


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


# --- helpers ------------------------------------------------------------------------------------


def _check_memory(memory_mb: int) -> None:
    lo, hi = MEMORY_RANGE
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or not lo <= memory_mb <= hi:
        raise ConfigError(f"Lambda memory_mb must be an integer in [{lo}, {hi}], got {memory_mb!r}")


def _billed_s(seconds: float) -> float:
    """Lambda duration billed: rounded up to the millisecond."""
    return math.ceil(round(seconds * 1000, 6)) / 1000


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where} must be a number, got {value!r}")
    if value < 0:
        raise InputError(f"{where} must be >= 0, got {value!r}")
    return float(value)


def _counts(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where} must be a mapping of request kind to count, got {value!r}")
    return {str(k): _number(v, f"{where}[{k!r}]") for k, v in value.items()}
