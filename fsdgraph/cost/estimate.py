"""The predicted bill of a plan before it runs (:func:`estimate`), with its model's defaults."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

from fsdgraph.channels.base import OutChunk
from fsdgraph.channels.queue import chunk_attributes, pack_batches, queue_chunk_budget
from fsdgraph.codec import TextCodec
from fsdgraph.cost.bill import Bill, _billed_s, _check_memory, _Ledger
from fsdgraph.cost.prices import CHUNK_BYTES, DEFAULT_MEMORY_MB, GB_BYTES, Prices
from fsdgraph.errors import ConfigError
from fsdgraph.metrics import billing_units
from fsdgraph.plan import Edge, Plan
from fsdgraph.resources import RunNames
from fsdgraph.transport import Entry, Limits, entry_size

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
_RUN_ID = "0" * 12  # as long as the scheduler's run ids
_OBJECT_OVERHEAD = 24  # msgpack of [run id, [payloads]]


def estimate(plan: Plan, *, channel: str, batch: int, memory_mb: int = DEFAULT_MEMORY_MB,
             runtime_s: float | None = None, prices: Prices | None = None,
             density: float = DEFAULT_DENSITY,
             bytes_per_nonzero: float = DEFAULT_BYTES_PER_NONZERO,
             empty_polls: float = DEFAULT_EMPTY_POLLS,
             object_above_bytes: int | None = None, direct: bool = False) -> Bill:
    """The predicted bill of running ``plan`` on ``batch`` inputs over ``channel``.

    Every exchange edge ``(layer, src, dst, neurons)`` of the plan carries
    ``batch x len(neurons) x density`` nonzeros of ``bytes_per_nonzero`` bytes each. Queue: split
    into chunks at the channel's message limit, base64 plus attributes on the wire, packed into
    publish calls per (layer, sender) as the channel does, received 10 at a time, plus
    ``empty_polls`` empty receives per edge. Object: one PUT per edge and ``1 + empty_polls``
    GETs. Auto: edges above ``object_above_bytes`` (default: the auto channel's
    ``object_threshold(prices)``) go as an object (PUT, GET) announced by a pointer message, the
    others as on the queue. ``direct`` (queue, auto): messages go straight to each target's queue
    in SQS send calls packed per target, instead of SNS publishes. Each worker runs
    ``runtime_s`` (default: :data:`DEFAULT_START_S` plus :data:`DEFAULT_LAYER_S` per layer).
    Staging (shard and input per worker), outputs, the control queue (a status every
    :data:`CONTROL_POLL_S` per worker) and cleanup are included.

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
            from fsdgraph.channels.auto import object_threshold  # late: auto imports fsdgraph.cost

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
        _queue_exchange(ledger, as_messages, pointers, wire_by, prices, empty_polls, direct)
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


def _messages(e: Edge, size: int, budget: int,
              texts: dict[int, str]) -> list[Entry]:
    """The messages of an edge of ``size`` raw bytes: chunks of at most ``budget`` bytes in
    base64, each with the attributes of the edge's last chunk. ``texts`` keeps one body per length
    (only the length counts)."""
    count = max(1, math.ceil(size / budget))
    pieces = [min(budget, size - i * budget) for i in range(count)] if size else [0]
    attributes = chunk_attributes(_RUN_ID, OutChunk(e.layer, e.src, e.dst, count - 1,
                                                    count if size else 0, b""))
    entries = []
    for piece in pieces:
        n = TextCodec.encoded_size(piece)
        if n not in texts:
            texts[n] = "A" * n
        entries.append(Entry(texts[n], attributes))
    return entries


def _pointer(e: Edge) -> Entry:
    """The auto channel's pointer message of an edge sent as an object."""
    attributes = chunk_attributes(_RUN_ID, OutChunk(e.layer, e.src, e.dst, 0, 1, b""))
    return Entry(RunNames(_RUN_ID).exchange_key(e.layer, e.src, e.dst),
                 {**attributes, "pointer": "1"})


def _queue_exchange(ledger: _Ledger, edges: Sequence[tuple[Edge, int]], pointers: Sequence[Edge],
                    wire_by: dict[tuple[int, int], float], prices: Prices,
                    empty_polls: float, direct: bool) -> None:
    """Publishes (direct: SQS sends), receives and deletes of the edges sent as messages (and of
    pointers): the queue channel's own messages, packed into calls as the channel packs them."""
    sqs, sns = prices.sqs_requests_per_m / 1e6, prices.sns_publish_per_m / 1e6
    limits = Limits()  # AWS's
    budget = queue_chunk_budget(limits, _RUN_ID)
    texts: dict[int, str] = {}
    messages = [(e, _messages(e, size, budget, texts)) for e, size in edges]
    messages += [(e, [_pointer(e)]) for e in pointers]
    # (layer, src, dst if direct else -1) -> the messages one packing covers
    out: dict[tuple[int, int, int], list[Entry]] = defaultdict(list)
    into: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for e, entries in messages:
        size = sum(map(entry_size, entries))
        out[e.layer, e.src, e.dst if direct else -1] += entries
        acc = into[e.layer, e.dst]
        acc[0] += len(entries)
        acc[1] += size
        acc[2] += 1
        wire_by[e.layer, e.src] += size
    units_w: dict[int, float] = defaultdict(float)
    units_l: dict[int, float] = defaultdict(float)
    calls = 0
    for (l, s, _), entries in out.items():
        for batch in pack_batches(entries, limits.max_batch_entries, limits.max_batch_bytes):
            units = billing_units(batch)  # as a run's metrics count publish_units
            units_w[s] += units
            units_l[l] += units
            calls += 1
    if direct:
        ledger.charge("SQS", "send (direct)", "64 KB units", sqs, sum(units_w.values()),
                      workers=units_w, layers=units_l)
        ledger.notes.append(f"{calls} SQS send calls")
    else:
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

