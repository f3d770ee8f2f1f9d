"""The predicted bill of a plan before it runs (:func:`estimate`), with its model's defaults."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fsdgraph.control import CONTROL_POLL_S, heartbeat_interval, pollers
from fsdgraph.cost.bill import Bill, _billed_s, _check_memory, _Ledger
from fsdgraph.defaults import STALL_TIMEOUT_S
from fsdgraph.errors import ConfigError
from fsdgraph.plan import Edge, Plan
from fsdgraph.prices import DEFAULT_MEMORY_MB, GB_BYTES, Prices
from fsdgraph.quotas import Quotas

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
#: (the per-layer floor is the channel's ``estimate_layer_s``).
DEFAULT_START_S = 1.0
#: As long as the scheduler's run ids (names and attributes count towards message sizes).
RUN_ID = "0" * 12


@dataclass
class ExchangeEstimate:
    """What a channel's :meth:`~fsdgraph.channels.Channel.estimate_exchange` is given: every
    exchange edge with its predicted raw payload bytes, and the ledger to charge.

    A channel charges its requests with :meth:`charge` / :meth:`charge_edges` and adds the bytes
    each (layer, sender) puts on the wire to :attr:`wire_by`.
    """

    ledger: _Ledger
    edges: list[tuple[Edge, int]]
    prices: Prices
    empty_polls: float
    direct: bool = False
    #: Topic shards of the queue channels (``Channel.fit`` for the plan's worker count).
    topics: int = 1
    #: The auto channel's line (None: its default from :attr:`prices`).
    object_above_bytes: int | None = None
    #: (layer, src) -> bytes sent on the wire.
    wire_by: dict[tuple[int, int], float] = field(default_factory=lambda: defaultdict(float))

    @property
    def workers(self) -> int:
        return len(self.ledger.per_worker) - 1

    def charge(self, service: str, what: str, unit: str, unit_price: float, quantity: float, *,
               workers: dict[int, float] | None = None,
               layers: dict[int, float] | None = None) -> None:
        self.ledger.charge(service, what, unit, unit_price, quantity, workers=workers,
                           layers=layers)

    def note(self, text: str) -> None:
        self.ledger.notes.append(text)

    def charge_edges(self, service: str, what: str, price: float,
                     edges: Sequence[tuple[Edge, int]],
                     who: Callable[[Edge], tuple[int, float]]) -> None:
        """One charge per edge: ``who(edge)`` is (the worker billed, the quantity)."""
        workers: dict[int, float] = defaultdict(float)
        layers: dict[int, float] = defaultdict(float)
        for e, _ in edges:
            w, q = who(e)
            workers[w] += q
            layers[e.layer] += q
        self.ledger.charge(service, what, "requests", price, sum(workers.values()),
                           workers=workers, layers=layers)


def estimate(plan: Plan, *, channel: str, batch: int, memory_mb: int = DEFAULT_MEMORY_MB,
             runtime_s: float | None = None, prices: Prices | None = None,
             density: float = DEFAULT_DENSITY,
             bytes_per_nonzero: float = DEFAULT_BYTES_PER_NONZERO,
             empty_polls: float = DEFAULT_EMPTY_POLLS,
             object_above_bytes: int | None = None, direct: bool = False,
             quotas: Quotas | None = None, checkpoint_every: int = 0) -> Bill:
    """The predicted bill of running ``plan`` on ``batch`` inputs over ``channel``.

    Every exchange edge ``(layer, src, dst, neurons)`` of the plan carries
    ``batch x len(neurons) x density`` nonzeros of ``bytes_per_nonzero`` bytes each. Queue: split
    into chunks at the channel's message limit, base64 plus attributes on the wire, packed into
    publish calls per (layer, sender) as the channel does, received 10 at a time, plus
    ``empty_polls`` empty receives per edge. Object: one PUT per edge and ``1 + empty_polls``
    GETs. Auto: edges above ``object_above_bytes`` (default: the auto channel's
    ``object_threshold(prices)``) go as an object (PUT, GET) announced by a pointer message, the
    others as on the queue. ``direct`` (queue, auto): messages go straight to each target's queue
    in SQS send calls packed per target, instead of SNS publishes; the queue channels shard
    their topics (or switch to direct sends) by ``quotas`` (AWS's by default) as a run would.
    Each worker runs
    ``runtime_s`` (default: :data:`DEFAULT_START_S` plus the channel's ``estimate_layer_s`` per
    layer).
    Staging (shard and input per worker), each worker's claim and attempt check, its
    checkpoints (one PUT every ``checkpoint_every`` layers but after the last), outputs, the
    control queue
    (heartbeats at :func:`~fsdgraph.control.heartbeat_interval`, polled by
    :func:`~fsdgraph.control.pollers` concurrent receives) and cleanup are included.

    >>> import numpy as np, scipy.sparse as sp, fsdgraph
    >>> w = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    >>> plan = fsdgraph.compile(fsdgraph.sequential([w] * 3, bias=-0.01), workers=3)
    >>> b = estimate(plan, channel="object", batch=100, runtime_s=2.0, empty_polls=0)
    >>> b.item("S3", "PUT exchange").quantity == len(plan.edges)
    True
    """
    # The registry: any channel plugin can be priced.
    from fsdgraph.channels import ChannelConfig, get_channel

    channel_cls = get_channel(channel)
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
    runtime = (DEFAULT_START_S + plan.layers * channel_cls.estimate_layer_s if runtime_s is None
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

    # The exchange: the channel's own request model.
    raw = [(e, math.ceil(batch * len(e.neurons) * density * bytes_per_nonzero))
           for e in plan.edges]
    fitted, _ = channel_cls.fit(ChannelConfig(direct=direct), P, quotas or Quotas())
    exchange = ExchangeEstimate(ledger, raw, prices, empty_polls, fitted.direct,
                                topics=max(1, fitted.topics),
                                object_above_bytes=object_above_bytes)
    channel_cls.estimate_exchange(exchange)
    wire_by = exchange.wire_by
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
    interval = heartbeat_interval(P, CONTROL_POLL_S, STALL_TIMEOUT_S)
    statuses = 2 + math.floor(runtime / interval)  # first progress, heartbeats, done
    ledger.charge("SQS", "send (status)", "64 KB units", sqs, P * statuses,
                  workers={w: float(statuses) for w in range(P)})
    polls_control = max(pollers(P) * (math.ceil(runtime / CONTROL_POLL_S) + 1),
                        math.ceil(P * statuses / 10))
    ledger.charge("SQS", "receive (control)", "requests", sqs, polls_control)
    ledger.charge("SQS", "delete (control)", "requests", sqs, polls_control)
    ledger.charge("SQS", "create queue (control)", "requests", sqs, 1)
    ledger.charge("SQS", "delete queue (control)", "requests", sqs, 1)
    # One shard per group position (replicas share them), an input, a claim and an output per
    # worker.
    ledger.charge("S3", "PUT staging, claims + outputs", "requests", put, 3 * P + plan.group,
                  workers={w: 2.0 for w in range(P)})
    ledger.charge("S3", "GET staging, attempt checks + outputs", "requests", get, 4 * P,
                  workers={w: 3.0 for w in range(P)})
    if checkpoint_every:
        per_worker = (plan.layers - 1) // checkpoint_every
        if per_worker:
            ledger.charge("S3", "PUT checkpoints", "requests", put, P * per_worker,
                          workers={w: float(per_worker) for w in range(P)})
            ledger.charge("S3", "GET attempt checks (before a checkpoint)", "requests", get,
                          P * per_worker, workers={w: float(per_worker) for w in range(P)})
    ledger.charge("S3", "cleanup (LIST + DeleteObjects)", "requests", put, 2)
    return ledger.bill()
