"""The queue channel: topics fan out to one queue per worker (SNS + SQS).

Run resources (:mod:`fsdgraph.channels.queue_resources`): ``S`` topic shards and one queue per
worker, the queue of worker ``w`` subscribed to shard ``w mod S`` with the filter policy
``{"target": [w]}``; ``S`` is the fewest shards SNS's filter-policy quota allows (one up to 200
workers). A sender publishes each target's chunks on the target's shard. A chunk is one message:
the base64 chunk as body, its identity as string attributes (``run``, ``layer``, ``src``,
``target``, ``index``, ``count``), the checksum of the chunk (``sum``) and the tag of all of these
under the run's key (``tag``, :mod:`fsdgraph.integrity`). A message whose tag does not verify
(forged, or damaged in its attributes) is deleted and counted (``unauthenticated_dropped``),
never used; an authentic message whose body does not match its checksum, or that is malformed,
fails the run with a :class:`~fsdgraph.errors.ProtocolError` naming the edge (a queue cannot be
asked for the message again). Chunks for the targets of one shard are packed into one batch
call (at most ``max_batch_entries`` entries and ``max_batch_bytes`` in all: the paper's payload
packing). A message on a worker's queue that is not a chunk addressed to it (a late readiness
probe, a misrouted message) is deleted and counted (``stray_dropped``), never fatal. Entries
that fail with a retryable error are retried alone, with exponential backoff and jitter, until
the peer timeout; a non-retryable failure fails the run with the target, layer and the service's
reason.

With ``ChannelConfig.direct`` (set by the user, or by the channel above the account's
filter-policy quota) there are no topics: chunks are packed per target and sent straight
to its queue (SQS ``SendMessageBatch``). That saves the SNS publish and its per-64 KiB charge, but
one batch call can no longer carry chunks for several targets.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from fsdgraph.backend import Services
from fsdgraph.channels import queue_resources
from fsdgraph.channels.base import Channel, ChannelConfig, OutChunk, WorkerContext
from fsdgraph.channels.queue_resources import PROBE, topic_shards
from fsdgraph.codec import TextCodec
from fsdgraph.errors import ProtocolError, RunError
from fsdgraph.integrity import checksum
from fsdgraph.resources import RunNames
from fsdgraph.retry import Backoff
from fsdgraph.transport import (
    CHUNK_BYTES,
    BatchResult,
    Entry,
    Limits,
    Message,
    MessageService,
    billing_units,
    delete_received,
    entry_size,
    pack_batches,
)

if TYPE_CHECKING:
    from fsdgraph.cost.estimate import ExchangeEstimate
    from fsdgraph.plan import Edge
    from fsdgraph.quotas import Quotas

_text = TextCodec()


#: The attributes a chunk's tag covers, in order (``kind`` is "chunk" or, on the auto channel,
#: "pointer").
TAGGED = ("run", "kind", "layer", "src", "target", "index", "count", "sum")


def chunk_attributes(names: RunNames, c: OutChunk, digest: str,
                     kind: str = "chunk") -> dict[str, str]:
    """The string attributes of chunk ``c`` of run ``names`` on a queue: its identity, the
    checksum ``digest`` of what the body carries, and their tag under the run's key."""
    a = {"run": names.run_id, "kind": kind, "layer": str(c.layer), "src": str(c.src),
         "target": str(c.dst), "index": str(c.index), "count": str(c.count), "sum": digest}
    a["tag"] = names.key.tag(*(a[k] for k in TAGGED))
    return a


def authentic(names: RunNames, attributes: Mapping[str, str]) -> bool:
    """Whether a message's attributes carry a valid tag under the run's key."""
    if any(not isinstance(attributes.get(k), str) for k in TAGGED):
        return False
    return names.key.verify(attributes.get("tag"), *(attributes[k] for k in TAGGED))


def queue_chunk_budget(limits: Limits, run_id: str) -> int:
    """The largest raw chunk whose base64 body and attributes fit one message and one batch."""
    widest = OutChunk(10**9, 10**6, 10**6, 10**6, 10**6, b"")
    attributes = chunk_attributes(RunNames(run_id), widest, checksum(b""), "pointer")
    overhead = entry_size(Entry("", attributes))
    return _text.raw_budget(min(limits.max_message_bytes, limits.max_batch_bytes) - overhead)


class QueueChannel(Channel):
    """See the module docstring."""

    name = "queue"
    requires = ("messages",)
    counters: ClassVar[tuple[str, ...]] = ("stray_dropped",)
    estimate_layer_s: ClassVar[float] = 0.1

    def __init__(self, context: WorkerContext) -> None:
        super().__init__(context)
        #: Receipts of messages kept undeleted (``hold_until_durable``), by layer, and the
        #: layer up to which a checkpoint covers everything.
        self._held: dict[int, list[str]] = {}
        self._durable = -1

    @property
    def messages(self) -> MessageService:
        return _messages_of(self.services)

    @classmethod
    def fit(cls, config: ChannelConfig, workers: int,
            quotas: Quotas) -> tuple[ChannelConfig, dict[str, Any]]:
        """Topic shards within the filter-policy quotas, or direct sends above them."""
        return queue_resources.fit(config, workers, quotas)

    @classmethod
    async def create_resources(cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        await queue_resources.create(_messages_of(services), names, workers, config,
                                     services.limits)

    @classmethod
    async def delete_resources(cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        await queue_resources.delete(_messages_of(services), names, workers, config)

    def _attributes(self, c: OutChunk, digest: str, kind: str = "chunk") -> dict[str, str]:
        return chunk_attributes(self.names, c, digest, kind)

    def chunk_budget(self) -> int:
        return queue_chunk_budget(self.services.limits, self.names.run_id)

    def _entries(self, chunks: list[OutChunk]) -> list[Entry]:
        return [Entry(_text.encode(c.payload), self._attributes(c, checksum(c.payload)))
                for c in chunks]

    async def _send_chunks(self, chunks: list[OutChunk]) -> None:
        await self._publish_entries(self._entries(chunks))

    async def _publish_entries(self, entries: list[Entry]) -> None:
        """Count, pack into batch calls and publish on this worker's topic (or, direct, send to
        each target's queue)."""
        m = self.metrics.current
        m.messages_sent += len(entries)
        m.bytes_sent += sum(entry_size(e) for e in entries)
        limits = self.services.limits
        messages = self.messages
        calls: list[tuple[Callable[[str, Sequence[Entry]], Awaitable[BatchResult]], str,
                          list[Entry]]] = []
        if self.config.direct:
            by_target: dict[str, list[Entry]] = {}
            for e in entries:
                by_target.setdefault(e.attributes["target"], []).append(e)
            for target, group in by_target.items():
                queue = self.names.queue(int(target))
                calls += [(messages.send_batch, queue, batch) for batch in
                          pack_batches(group, limits.max_batch_entries, limits.max_batch_bytes)]
        else:
            shards = topic_shards(self.config, self.workers)
            by_shard: dict[int, list[Entry]] = {}
            for e in entries:
                by_shard.setdefault(int(e.attributes["target"]) % shards, []).append(e)
            for shard, group in by_shard.items():
                topic = self.names.topic(shard)
                calls += [(messages.publish_batch, topic, batch) for batch in
                          pack_batches(group, limits.max_batch_entries, limits.max_batch_bytes)]
        await asyncio.gather(*(self._deliver(call, to, batch) for call, to, batch in calls))

    async def _deliver(self, call: Callable[[str, Sequence[Entry]], Awaitable[BatchResult]],
                       to: str, batch: list[Entry]) -> None:
        """One batch call; retry only the entries that failed retryably, with backoff."""
        backoff = Backoff(self.config.peer_timeout_s)
        while True:
            result = await call(to, batch)
            if result.ok:
                return
            fatal = [f for f in result.failures if not f.retryable]
            if fatal or backoff.expired:
                f = (fatal or list(result.failures))[0]
                e = batch[f.index]
                raise RunError(
                    f"worker {self.worker} layer {e.attributes['layer']}: publishing a chunk for "
                    f"worker {e.attributes['target']} failed: {f.code}: {f.message}",
                    worker=self.worker, layer=int(e.attributes["layer"]))
            batch = [batch[f.index] for f in result.failures]
            await backoff.wait()

    async def _fetch(self, layer: int, pending: Sequence[int], wait_s: float) -> int:
        queue = self.names.queue(self.worker)
        messages = await self.messages.receive(
            queue, max_messages=self.services.limits.max_batch_entries, wait_s=wait_s)
        kept, receipts = 0, []
        m = self.metrics.current
        for msg in messages:
            if msg.attributes.get("run") != self.names.run_id:
                m.channel["stray_dropped"] += 1
                continue  # another run's message: never consume it
            receipts.append(msg.receipt)
            if msg.attributes.get("kind") == PROBE or msg.attributes.get("target") != str(
                    self.worker):
                m.channel["stray_dropped"] += 1
                continue
            if not authentic(self.names, msg.attributes):
                m.unauthenticated_dropped += 1
                continue
            identity = self._identity(msg)
            if self.hold_until_durable and identity[0] > self._durable:
                # Not deleted until a checkpoint covers its layer (``durable``).
                self._held.setdefault(identity[0], []).append(msg.receipt)
                receipts.remove(msg.receipt)
            if await self._take(msg, *identity):
                kept += 1
                m.messages_received += 1
                m.bytes_received += entry_size(Entry(msg.body, msg.attributes))
            else:
                m.duplicates_dropped += 1
        if receipts:
            # What cannot be deleted comes back later and is dropped as a duplicate.
            await delete_received(self.messages, queue, receipts)
        return kept

    async def durable(self, layer: int) -> None:
        """Delete the messages held for layers up to ``layer`` (a checkpoint covers them)."""
        self._durable = max(self._durable, layer)
        receipts = [r for l in sorted(self._held) if l <= layer for r in self._held.pop(l)]
        per_call = self.services.limits.max_batch_entries
        queue = self.names.queue(self.worker)
        await asyncio.gather(*(delete_received(self.messages, queue, receipts[i:i + per_call])
                               for i in range(0, len(receipts), per_call)))

    def _identity(self, msg: Message) -> tuple[int, int, int, int]:
        """``(layer, src, index, count)`` of an authentic chunk addressed to this worker."""
        a = msg.attributes
        try:
            return int(a["layer"]), int(a["src"]), int(a["index"]), int(a["count"])
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"worker {self.worker}: message without valid chunk attributes "
                                f"{dict(a)!r}") from exc

    async def _take(self, msg: Message, layer: int, src: int, index: int, count: int) -> bool:
        """Keep the chunk an authentic message carries; False if it was a duplicate."""
        if msg.attributes["kind"] != "chunk":
            raise ProtocolError(f"{self.inbox.edge(layer, src)}: a {msg.attributes['kind']!r} "
                                f"message on the {self.name} channel")
        try:
            payload = _text.decode(msg.body)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.inbox.edge(layer, src)}: {exc}") from exc
        return self.inbox.offer(layer, src, index, count, payload,
                                verified(self.inbox.edge(layer, src), payload, msg.attributes))

    # -- the cost model ---------------------------------------------------------------------------
    @classmethod
    def estimate_exchange(cls, exchange: ExchangeEstimate) -> None:
        """Every edge as messages: publishes (direct: SQS sends), receives and deletes, packed as
        the channel packs them, plus one queue per worker."""
        queue_requests(exchange, exchange.edges, [])
        queue_setup_requests(exchange)


def queue_setup_requests(exchange: ExchangeEstimate) -> None:
    """One queue per worker, and through topics a readiness probe to each: published packed per
    shard, received and deleted once (SNS topic and subscription calls are not billed)."""
    sqs, sns = exchange.prices.sqs_requests_per_m / 1e6, exchange.prices.sns_publish_per_m / 1e6
    P = exchange.workers
    exchange.charge("SQS", "create queue", "requests", sqs, P)
    exchange.charge("SQS", "delete queue", "requests", sqs, P)
    if exchange.direct:
        return
    per_call = Limits().max_batch_entries
    publishes = sum(math.ceil(len(range(t, P, exchange.topics)) / per_call)
                    for t in range(min(exchange.topics, P)))
    exchange.charge("SNS", "publish (readiness probes)", "64 KB units", sns, publishes)
    exchange.charge("SQS", "receive + delete (readiness probes)", "requests", sqs, 2 * P)


def verified(edge: str, payload: bytes, attributes: Mapping[str, str]) -> str:
    """The checksum of ``payload``, which must be the one its authentic attributes carry."""
    digest = checksum(payload)
    if digest != attributes["sum"]:
        raise ProtocolError(f"{edge}: chunk {attributes['index']} of {attributes['count']} "
                            f"does not match its checksum (damaged in transit)")
    return digest


def _messages_of(services: Services) -> MessageService:
    if services.messages is None:  # checked before a run starts (Channel.requires)
        raise RunError("this channel needs a message service; the backend has none")
    return services.messages


#: As long as the scheduler's run ids (names and attributes count towards message sizes).
MODEL_RUN_ID = "0" * 12


def _edge_messages(e: Edge, size: int, budget: int, texts: dict[int, str]) -> list[Entry]:
    """The messages of an edge of ``size`` raw bytes: chunks of at most ``budget`` bytes in
    base64, each with the attributes of the edge's last chunk. ``texts`` keeps one body per length
    (only the length counts)."""
    count = max(1, math.ceil(size / budget))
    pieces = [min(budget, size - i * budget) for i in range(count)] if size else [0]
    attributes = chunk_attributes(RunNames(MODEL_RUN_ID),
                                  OutChunk(e.layer, e.src, e.dst, count - 1, count if size else 0,
                                           b""), checksum(b""))
    entries = []
    for piece in pieces:
        n = TextCodec.encoded_size(piece)
        if n not in texts:
            texts[n] = "A" * n
        entries.append(Entry(texts[n], attributes))
    return entries


def queue_requests(exchange: ExchangeEstimate, edges: Sequence[tuple[Edge, int]],
                   pointers: Sequence[tuple[Edge, Entry]]) -> None:
    """Publishes (direct: SQS sends), receives and deletes of ``edges`` sent as messages and of
    the given single ``pointers`` messages, packed into calls as the channel packs them."""
    prices = exchange.prices
    sqs, sns = prices.sqs_requests_per_m / 1e6, prices.sns_publish_per_m / 1e6
    limits = Limits()  # AWS's
    budget = queue_chunk_budget(limits, MODEL_RUN_ID)
    texts: dict[int, str] = {}
    messages = [(e, _edge_messages(e, size, budget, texts)) for e, size in edges]
    messages += [(e, [entry]) for e, entry in pointers]
    # (layer, src, dst if direct else dst's topic shard) -> the messages one packing covers
    out: dict[tuple[int, int, int], list[Entry]] = defaultdict(list)
    into: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for e, entries in messages:
        size = sum(map(entry_size, entries))
        out[e.layer, e.src, e.dst if exchange.direct else e.dst % exchange.topics] += entries
        acc = into[e.layer, e.dst]
        acc[0] += len(entries)
        acc[1] += size
        acc[2] += 1
        exchange.wire_by[e.layer, e.src] += size
    units_w: dict[int, float] = defaultdict(float)
    units_l: dict[int, float] = defaultdict(float)
    calls = 0
    for (l, s, _), entries in out.items():
        for batch in pack_batches(entries, limits.max_batch_entries, limits.max_batch_bytes):
            units = billing_units(batch)  # as a run's metrics count publish_units
            units_w[s] += units
            units_l[l] += units
            calls += 1
    if exchange.direct:
        exchange.charge("SQS", "send (direct)", "64 KB units", sqs, sum(units_w.values()),
                        workers=units_w, layers=units_l)
        exchange.note(f"{calls} SQS send calls")
    else:
        exchange.charge("SNS", "publish", "64 KB units", sns, sum(units_w.values()),
                        workers=units_w, layers=units_l)
        exchange.note(f"{calls} publish calls")
    recv_w: dict[int, float] = defaultdict(float)
    recv_l: dict[int, float] = defaultdict(float)
    extra_w: dict[int, float] = defaultdict(float)
    extra_l: dict[int, float] = defaultdict(float)
    data_w: dict[int, float] = defaultdict(float)
    data_l: dict[int, float] = defaultdict(float)
    for (l, d), (n_messages, nbytes, n_edges) in into.items():
        data = math.ceil(n_messages / limits.max_batch_entries)  # receives that return messages
        per_call = max(1, math.ceil(nbytes / data / CHUNK_BYTES))
        recv_w[d] += data + exchange.empty_polls * n_edges
        recv_l[l] += data + exchange.empty_polls * n_edges
        extra_w[d] += data * (per_call - 1)
        extra_l[l] += data * (per_call - 1)
        data_w[d] += data
        data_l[l] += data
    exchange.charge("SQS", "receive", "requests", sqs, sum(recv_w.values()),
                    workers=recv_w, layers=recv_l)
    if sum(extra_w.values()):
        exchange.charge("SQS", "receive: extra 64 KB units", "64 KB units", sqs,
                        sum(extra_w.values()), workers=extra_w, layers=extra_l)
    exchange.charge("SQS", "delete", "requests", sqs, sum(data_w.values()),
                    workers=data_w, layers=data_l)
