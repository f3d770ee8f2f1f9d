"""The channel protocol, written once; a channel only says how chunks move.

Per layer, a worker calls :meth:`Channel.send` with one block per destination (possibly empty)
and iterates :meth:`Channel.receive` over the chunks its sources sent it. The rules every channel
follows (docs/protocol.md):

* a chunk is identified by ``(run, layer, src, dst, index)`` and carries ``count``, the number of
  chunks of its edge; ``count == 0`` is the explicit "nothing for you this layer" marker;
* the receiver knows its sources from the plan, and a layer is complete when, for every source,
  ``count`` distinct indices have arrived (no database, no listing);
* transports deliver at least once: a chunk seen before is dropped (:class:`Inbox`), never added
  twice; chunks of later layers are kept until their layer is read; chunks of another run are
  never consumed;
* a source that sends nothing new for ``peer_timeout_s`` fails the run with a
  :class:`~fsdgraph.errors.RunTimeout` naming the worker, the layer and the missing sources.

Subclasses implement :meth:`Channel.chunk_budget`, :meth:`Channel._send_chunks` and
:meth:`Channel._fetch`; docs/plugins.md shows one.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from fsdgraph import defaults
from fsdgraph.backend import Services
from fsdgraph.codec import WIRE_DENSE_ABOVE, BlockCodec, Chunk
from fsdgraph.errors import ConfigError, ProtocolError, RunTimeout
from fsdgraph.kernels import Block
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.resources import RunNames

if TYPE_CHECKING:
    from fsdgraph.cost.estimate import ExchangeEstimate
    from fsdgraph.prices import Prices
    from fsdgraph.quotas import Quotas


@dataclass(frozen=True)
class ChannelConfig:
    """Tunables of the channels (all times in seconds)."""

    #: Queue channels: the fewest topic shards (0: as few as the filter-policy quota allows;
    #: target w's messages travel on shard w mod topics).
    topics: int = defaults.TOPICS
    #: Queue channels: send straight to each target's queue (SQS SendMessageBatch), no topics.
    direct: bool = False
    peer_timeout_s: float = defaults.PEER_TIMEOUT_S  #: fail if a source is silent this long
    poll_wait_s: float = defaults.POLL_WAIT_S  #: long-poll wait of one receive call
    visibility_timeout_s: float = defaults.VISIBILITY_TIMEOUT_S
    object_poll_min_s: float = 0.0005  #: object channel: first retry of a missing key...
    object_poll_max_s: float = 0.02  #: ...backing off to this
    #: Send blocks dense above this density (fewer bytes, more CPU).
    wire_dense_above: float = WIRE_DENSE_ABOVE
    auto_object_above_bytes: int = 0  #: auto channel: objects above this (0: by the prices)
    #: Queue channels: how long setup waits for every queue to receive through its topic.
    ready_timeout_s: float = defaults.READY_TIMEOUT_S
    #: Object channel: GETs per second of keys not yet written, per worker (0: from the
    #: S3 request-rate quota and the worker count).
    object_get_rate_s: float = 0.0

    def __post_init__(self) -> None:
        # ``not x >= 0`` style checks: NaN fails every comparison, so it is refused too.
        for name in ("topics", "auto_object_above_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not value >= 0:
                raise ConfigError(f"channel {name} must be an integer >= 0, got {value!r}")
        if not 0 <= self.object_get_rate_s < float("inf"):
            raise ConfigError(f"channel object_get_rate_s must be a finite number >= 0, "
                              f"got {self.object_get_rate_s}")
        for name in ("peer_timeout_s", "poll_wait_s", "visibility_timeout_s",
                     "object_poll_min_s", "object_poll_max_s", "ready_timeout_s"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ConfigError(f"channel {name} must be a positive finite number of seconds, "
                                  f"got {value}")
        if not self.object_poll_min_s <= self.object_poll_max_s:
            raise ConfigError(f"channel object_poll_min_s ({self.object_poll_min_s}) must not "
                              f"exceed object_poll_max_s ({self.object_poll_max_s})")
        if not 0.0 <= self.wire_dense_above <= 1.0:
            raise ConfigError(f"channel wire_dense_above must be in [0, 1], "
                              f"got {self.wire_dense_above}")

    def codec(self) -> BlockCodec:
        """The chunk codec these settings ask for."""
        return BlockCodec(dense_above=self.wire_dense_above)


@dataclass(frozen=True)
class OutChunk:
    """One encoded chunk on its way: edge ``layer, src -> dst``, number ``index`` of ``count``."""

    layer: int
    src: int
    dst: int
    index: int
    count: int
    payload: bytes


class Inbox:
    """Received chunks by layer: deduplication and completeness, independent of transport.

    A chunk is offered with the checksum of its payload (verified by the channel): a second
    delivery of the same identity is dropped when its content is the same, and is a
    :class:`~fsdgraph.errors.ProtocolError` naming the edge when it differs (never first-wins).
    """

    def __init__(self, worker: int = -1) -> None:
        self.worker = worker
        self._count: dict[tuple[int, int], int] = {}
        self._seen: dict[tuple[int, int], dict[int, str]] = {}
        self._ready: dict[int, dict[tuple[int, int], bytes]] = {}  #: layer: (src, index): data
        #: What :meth:`take` gave out, until its layer closes (a hand-over exports it too).
        self._taken: dict[int, dict[tuple[int, int], bytes]] = {}
        self._notes: dict[tuple[int, int], str] = {}
        self._closed_below = 0

    def offer(self, layer: int, src: int, index: int, count: int, payload: bytes,
              digest: str = "") -> bool:
        """Keep a chunk unless it was seen before (or its layer is done); True if kept."""
        if layer < self._closed_below:
            return False
        if count < 0 or not (0 <= index < max(count, 1)):
            raise ProtocolError(f"{self.edge(layer, src)}: chunk index {index} of {count}")
        seen = self._seen.setdefault((layer, src), {})
        known = self._count.get((layer, src))
        if known is not None and known != count:
            raise ProtocolError(f"{self.edge(layer, src)}: two deliveries disagree on the "
                                f"number of chunks ({known} and {count})")
        if index in seen:
            if seen[index] != digest:
                raise ProtocolError(f"{self.edge(layer, src)}: two deliveries of chunk {index} "
                                    f"of {count} with different content")
            return False
        seen[index] = digest
        self._count[(layer, src)] = count
        if count:
            self._ready.setdefault(layer, {})[(src, index)] = payload
        return True

    def edge(self, layer: int, src: int) -> str:
        """The edge ``src -> this worker`` of ``layer``, in words."""
        return f"layer {layer} edge worker {src} -> worker {self.worker}"

    def note(self, layer: int, src: int, what: str) -> None:
        """Remember why an edge is not complete yet (said if its layer times out)."""
        self._notes[(layer, src)] = what

    def take(self, layer: int) -> list[tuple[int, bytes]]:
        ready = self._ready.pop(layer, {})
        self._taken.setdefault(layer, {}).update(ready)
        return [(src, payload) for (src, _), payload in ready.items()]

    def export(self, after: int) -> list[list[Any]]:
        """Every chunk kept for a layer after ``after`` (received early, or taken from a layer
        not yet closed), as
        ``[layer, src, index, count, checksum, payload]``: what a continuation that resumes
        after ``after`` would otherwise wait for (its messages stay invisible for the
        visibility timeout). :meth:`offer` each to restore them."""
        out: list[list[Any]] = []
        for (layer, src), seen in sorted(self._seen.items()):
            if layer <= after:
                continue
            count = self._count[(layer, src)]
            kept = {**self._taken.get(layer, {}), **self._ready.get(layer, {})}
            out += [[layer, src, index, count, digest, kept.get((src, index), b"")]
                    for index, digest in sorted(seen.items())]
        return out

    def missing(self, layer: int, sources: Sequence[int]) -> dict[int, str]:
        """Sources of ``layer`` still incomplete, with what is missing in words."""
        out = {}
        for src in sources:
            seen = len(self._seen.get((layer, src), ()))
            count = self._count.get((layer, src))
            if count is None:
                out[src] = "no chunk yet"
            elif seen < max(count, 1):
                out[src] = f"{seen} of {count} chunks"
            else:
                continue
            if (layer, src) in self._notes:
                out[src] += f", {self._notes[(layer, src)]}"
        return out

    def close(self, layer: int) -> None:
        """Forget ``layer`` and everything before it; later copies of its chunks are dropped."""
        self._closed_below = layer + 1
        for key in [k for k in self._seen if k[0] <= layer]:
            del self._seen[key]
            self._count.pop(key, None)
        for key in [k for k in self._notes if k[0] <= layer]:
            del self._notes[key]
        for closed in [k for k in self._taken if k <= layer]:
            del self._taken[closed]


@dataclass
class WorkerContext:
    """What one worker's channel works with: the run's services and names, who it is, its
    settings, its metrics and its codec."""

    services: Services
    names: RunNames
    worker: int
    workers: int
    config: ChannelConfig
    metrics: WorkerMetrics
    codec: BlockCodec


class Channel(ABC):
    """Moves one worker's chunks; see the module docstring for the protocol.

    A channel is a plugin (entry-point group ``fsdgraph.channels``). Besides moving chunks it
    says what it needs from a backend (:attr:`requires`), which counters it adds to the metrics
    (:attr:`counters`), how it describes a run in the report (:meth:`describe`) and how many
    requests it makes, for the cost estimate (:meth:`estimate_exchange`).
    """

    name: ClassVar[str]
    #: Optional ``Services`` fields (``"messages"``) or ``Services.extensions`` keys this channel
    #: needs; a backend without them is refused before the run starts.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The per-layer counters this channel adds (``metrics.current.channel[name] += n``); the
    #: report sums them like the core's own.
    counters: ClassVar[tuple[str, ...]] = ()
    #: The cost estimate's per-layer latency floor for this channel, seconds (a rough default;
    #: ``estimate(runtime_s=...)`` takes a measured runtime instead).
    estimate_layer_s: ClassVar[float] = 0.1

    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self.services = context.services
        self.names = context.names
        self.worker = context.worker
        self.workers = context.workers
        self.config = context.config
        self.metrics = context.metrics
        self.codec = context.codec
        self.inbox = Inbox(context.worker)
        #: Set by the worker when it checkpoints: keep received data until :meth:`durable`
        #: says a checkpoint no longer needs it (a relaunch must be able to read it again).
        self.hold_until_durable = False

    # -- the run (scheduler side) -------------------------------------------------------------
    @classmethod
    def missing_services(cls, services: Services) -> list[str]:
        """What :attr:`requires` names that ``services`` lacks."""
        return [r for r in cls.requires
                if getattr(services, r, None) is None and r not in services.extensions]

    @classmethod
    def prepare(cls, config: ChannelConfig, prices: Prices | None) -> ChannelConfig:
        """The settings the workers get, given the backend's price table (None: unbilled).
        Default: ``config`` unchanged."""
        return config

    @classmethod
    def fit(cls, config: ChannelConfig, workers: int,
            quotas: Quotas) -> tuple[ChannelConfig, dict[str, Any]]:
        """The settings sized for a run of ``workers`` workers within the backend's ``quotas``
        (shards, rates...), and what was chosen and why, for the report's ``channel_setup``;
        ConfigError, saying which quota to raise, if no setting fits. Default: unchanged."""
        return config, {}

    @classmethod
    def describe(cls, config: ChannelConfig, prices: Prices | None,
                 totals: Mapping[str, Any]) -> dict[str, Any] | None:
        """What the report says about this channel's choices in a run (``channel_details``);
        ``totals`` are the run's summed counters. Default: nothing."""
        return None

    @classmethod
    def estimate_exchange(cls, exchange: ExchangeEstimate) -> None:
        """Charge the requests this channel makes for ``exchange.edges`` to ``exchange.ledger``
        (see :mod:`fsdgraph.cost.estimate`). Default: the channel has no cost model."""
        raise ConfigError(f"channel {cls.name!r} has no cost model; estimate cannot price it")

    @classmethod  # noqa: B027 - an optional hook: most channels need nothing
    async def create_resources(
        cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        """Create what the channel needs for a run (queues, topics...). Default: nothing."""

    @classmethod  # noqa: B027 - an optional hook
    async def delete_resources(
        cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        """Remove what :meth:`create_resources` made. Default: nothing."""

    # -- data plane -----------------------------------------------------------------------------
    @abstractmethod
    def chunk_budget(self) -> int:
        """The largest encoded chunk, in bytes, this channel can carry."""

    @abstractmethod
    async def _send_chunks(self, chunks: list[OutChunk]) -> None:
        """Deliver every chunk (retrying what the transport rejected as retryable)."""

    @abstractmethod
    async def _fetch(self, layer: int, pending: Sequence[int], wait_s: float) -> int:
        """Move whatever has arrived for this worker into ``self.inbox``, waiting at most
        ``wait_s`` for something; return how many new chunks were kept."""

    async def send(self, layer: int, outgoing: Sequence[tuple[int, Block]]) -> None:
        """Send each ``(dst, block)`` of ``layer``; an empty block sends the empty marker."""
        start = time.perf_counter()
        budget = self.chunk_budget()
        chunks: list[OutChunk] = []
        m = self.metrics.current
        encoded: dict[int, list[bytes]] = {}  # one encoding for a block several peers need
        for dst, block in outgoing:
            if id(block) not in encoded:
                encoded[id(block)] = (self.codec.encode_chunks(block, budget)
                                      if len(block.rows) else [])
            payloads = encoded[id(block)]
            for i, p in enumerate(payloads):
                chunks.append(OutChunk(layer, self.worker, dst, i, len(payloads), p))
            if not payloads:
                chunks.append(OutChunk(layer, self.worker, dst, 0, 0, b""))
            m.rows_sent += len(block.rows)
            m.nnz_sent += block.nnz
        m.codec_s += time.perf_counter() - start
        await self._send_chunks(chunks)

    async def receive(self, layer: int, sources: Sequence[int]) -> AsyncIterator[tuple[int, Chunk]]:
        """Yield ``(src, chunk)`` for every chunk of ``layer`` from ``sources``, as they arrive."""
        m = self.metrics.current
        deadline = time.monotonic() + self.config.peer_timeout_s
        while True:
            for src, payload in self.inbox.take(layer):
                start = time.perf_counter()
                try:
                    chunk = self.codec.decode(payload)
                except ProtocolError as exc:
                    raise ProtocolError(f"{self.inbox.edge(layer, src)}: {exc}") from exc
                m.codec_s += time.perf_counter() - start
                m.rows_received += len(chunk.block.rows)
                m.nnz_received += chunk.block.nnz
                yield src, chunk
            pending = list(self.inbox.missing(layer, sources))
            if not pending:
                self.inbox.close(layer)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = self.inbox.missing(layer, sources)
                detail = "; ".join(f"{self.inbox.edge(layer, s)}: {what}"
                                   for s, what in missing.items())
                raise RunTimeout(
                    f"worker {self.worker} layer {layer}: nothing new from "
                    f"{sorted(missing)} for {self.config.peer_timeout_s:g} s ({detail})",
                    worker=self.worker, layer=layer)
            start = time.perf_counter()
            kept = await self._fetch(layer, pending, min(remaining, self.config.poll_wait_s))
            m.wait_s += time.perf_counter() - start
            if kept:
                deadline = time.monotonic() + self.config.peer_timeout_s

    async def durable(self, layer: int) -> None:  # noqa: B027 - optional hook
        """The worker's output after ``layer`` is checkpointed: data of layers up to ``layer``
        will never be needed again and may be deleted. Default: nothing (a channel whose
        received data stays readable, like the object channel's, has nothing to do)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the channel holds (background tasks, clients)."""
