"""An itemised bill (:class:`Bill` of :class:`LineItem`), the ledger every bill is written with,
and :func:`bill`, the bill of a finished run from its report (rules: :mod:`fsdgraph.cost`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fsdgraph.errors import ConfigError, InputError
from fsdgraph.prices import CHUNK_BYTES, DEFAULT_MEMORY_MB, GB_BYTES, MEMORY_RANGE, Prices


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


# --- Lambda rules every bill applies (bill, estimate, paper_bill) -------------------------------


def _check_memory(memory_mb: int) -> None:
    lo, hi = MEMORY_RANGE
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or not lo <= memory_mb <= hi:
        raise ConfigError(f"Lambda memory_mb must be an integer in [{lo}, {hi}], got {memory_mb!r}")


def _billed_s(seconds: float) -> float:
    """Lambda duration billed: rounded up to the millisecond."""
    return math.ceil(round(seconds * 1000, 6)) / 1000


# --- after a run --------------------------------------------------------------------------------

_FREE_KINDS = ("create_topic", "subscribe", "delete_topic")


def bill(report: Mapping[str, Any], *, memory_mb: int = DEFAULT_MEMORY_MB,
         prices: Prices | None = None) -> Bill:
    """The bill of a finished run from its report (see docs/reports.md and :mod:`fsdgraph.cost`).

    >>> b = bill({"workers": 1, "wall_s": 0.0004, "requests": {"invoke": 1, "get": 2}},
    ...          memory_mb=1024)
    >>> b.item("Lambda", "duration (1024 MB)").quantity  # 0.4 ms is billed as 1 ms
    0.001
    """
    prices = prices or Prices()
    _check_memory(memory_mb)
    check_report(report)
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
    """Extra 64 KiB units of receives that returned more than 64 KiB (:mod:`fsdgraph.cost`)."""
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


#: No count, byte total, duration or timestamp of a real run comes near this (2**53, the
#: largest integer a float holds exactly): a report above it is refused, not billed as inf.
MAX_QUANTITY = float(2**53)
#: Nor has any run this many workers or layers.
MAX_INDEX = 10**7

#: The fields of every ``per_layer`` entry that ``fsdgraph report`` prints.
LAYER_FIELDS = ("rows_sent", "bytes_sent", "messages_sent", "compute_s", "wait_s", "codec_s")
#: Numeric fields checked wherever they are present.
_TOP_NUMBERS = ("wall_s", "bytes_sent", "invoked_at")
_ROW_NUMBERS = ("duration_s", "launched_at", "finished_at", "bytes_sent", "bytes_received",
                "compute_s", "wait_s", "codec_s", "rows_sent", "messages_sent")


def check_report(report: Any, required: Sequence[str] = ()) -> None:
    """InputError naming the field unless ``report`` has the shape of a run report: a mapping
    whose ``workers`` and ``layers`` are counts, ``requests`` a mapping of counts,
    ``per_layer`` / ``per_worker`` lists of mappings with an integer ``layer`` / ``worker`` and
    finite, non-negative numbers of sensible size, and ``per_worker_layer`` lists of lists of
    numbers. Fields in ``required`` must be present (``fsdgraph report`` requires what it
    prints); other absent fields are fine (:func:`bill` bills what is there).

    >>> check_report({"workers": 2, "per_layer": [{"layer": "one"}]})
    Traceback (most recent call last):
    ...
    fsdgraph.errors.InputError: report field 'per_layer[0].layer' must be an integer, got 'one'
    """
    if not isinstance(report, Mapping):
        raise InputError(f"not a run report: expected a JSON object, got {_kind(report)}")
    missing = [k for k in required if k not in report]
    if missing:
        raise InputError(f"not a run report: missing {', '.join(missing)}")
    for name in ("workers", "layers"):
        if name in report:
            _index(report[name], f"report field {name!r}")
    if "requests" in report:
        _counts(report["requests"], "report field 'requests'")
    for name in _TOP_NUMBERS:
        if name in report:
            _number(report[name], f"report field {name!r}")
    for table, key in (("per_layer", "layer"), ("per_worker", "worker")):
        rows = report.get(table)
        if rows is None:
            continue
        if not isinstance(rows, list):
            raise InputError(f"report field {table!r} must be a list of objects, got "
                             f"{_kind(rows)}")
        for i, row in enumerate(rows):
            where = f"report field '{table}[{i}]"
            if not isinstance(row, Mapping):
                raise InputError(f"{where}' must be an object, got {_kind(row)}")
            if key not in row:
                raise InputError(f"{where}' has no {key!r}")
            _index(row[key], f"{where}.{key}'")
            for name in _ROW_NUMBERS:
                if name in row:
                    _number(row[name], f"{where}.{name}'")
            if "requests" in row:
                _counts(row["requests"], f"{where}.requests'")
            if table == "per_layer":
                absent = [n for n in LAYER_FIELDS if n not in row]
                if absent and "per_layer" in required:
                    raise InputError(f"{where}' has no {absent[0]!r}")
    grid = report.get("per_worker_layer")
    if grid is not None:
        if not isinstance(grid, Mapping):
            raise InputError(f"report field 'per_worker_layer' must be an object, got "
                             f"{_kind(grid)}")
        for name, rows in grid.items():
            where = f"report field 'per_worker_layer.{name}"
            if not isinstance(rows, list):
                raise InputError(f"{where}' must be a list of lists, got {_kind(rows)}")
            for w, row in enumerate(rows):
                if not isinstance(row, list):
                    raise InputError(f"{where}[{w}]' must be a list of numbers, got "
                                     f"{_kind(row)}")
                for l, value in enumerate(row):
                    _number(value, f"{where}[{w}][{l}]'")


def _short(value: Any) -> str:
    """``repr(value)``, shortened: a message never quotes the whole of a large value."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "<huge int>"
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    """What a JSON value is, for messages."""
    return f"{type(value).__name__} {_short(value)}"


def _index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where} must be an integer, got {_short(value)}")
    if not 0 <= value <= MAX_INDEX:
        raise InputError(f"{where} must be in [0, {MAX_INDEX}], got {_short(value)}")
    return value


def _number(value: Any, where: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))):
        raise InputError(f"{where} must be a finite number, got {_short(value)}")
    if value < 0:
        raise InputError(f"{where} must be >= 0, got {_short(value)}")
    if value > MAX_QUANTITY:
        raise InputError(f"{where} is too large: {_short(value)} (at most {MAX_QUANTITY:.0f})")
    return float(value)


def _counts(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where} must be a mapping of request kind to count, "
                         f"got {_kind(value)}")
    return {str(k): _number(v, f"{where}[{k!r}]") for k, v in value.items()}
