"""The auto channel: each edge takes the cheaper of the two ways, decided per layer and edge.

An edge whose chunks are small travels as queue messages (as the queue channel). A large one is
written as one object (as the object channel) and announced by a single queue message, the
*pointer*, whose body is the object's key and whose ``count`` is the number of chunks inside: the
receiver long-polls its queue as usual and GETs the object when the pointer arrives — no polling
of the object store, no listing. Completeness, deduplication and run isolation are the queue
channel's own (a duplicated pointer only makes the chunks arrive twice, and the inbox drops them).

Why and where the line is: on the queue an edge costs a publish and an SQS receive for every
64 KiB of payload; as an object it costs a PUT, a GET and one pointer message. With the
backend's price table (AWS list prices by default, ``fsdgraph.cost.Prices``) that is
:func:`object_threshold` bytes, about 450 KB; below it the queue is also faster (no extra round
trip). ``ChannelConfig.auto_object_above_bytes`` overrides the line. Each layer's metrics count
the edges sent each way (the channel's counters ``edges_via_queue`` and ``edges_via_object``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fsdgraph.channels.base import ChannelConfig, OutChunk
from fsdgraph.channels.object import object_requests, offer_edge
from fsdgraph.channels.queue import (
    MODEL_RUN_ID,
    QueueChannel,
    chunk_attributes,
    queue_requests,
    queue_setup_requests,
    verified,
)
from fsdgraph.errors import ProtocolError
from fsdgraph.integrity import checksum
from fsdgraph.prices import Prices
from fsdgraph.resources import RunNames
from fsdgraph.retry import Backoff
from fsdgraph.sealed import seal, unseal
from fsdgraph.transport import CHUNK_BYTES, Entry, Message

if TYPE_CHECKING:
    from fsdgraph.cost.estimate import ExchangeEstimate


def object_threshold(prices: Prices | None = None) -> int:
    """Payload bytes above which an object plus a pointer costs less than queue messages.

    >>> object_threshold()
    458752
    """
    p = prices or Prices()
    per_unit = (p.sns_publish_per_m + p.sqs_requests_per_m) / 1e6  # publish + receive
    as_object = p.s3_put_per_k / 1e3 + p.s3_get_per_k / 1e3 + per_unit  # + the pointer
    # At equal cost the queue is faster.
    return math.floor(as_object / per_unit + 1e-9) * CHUNK_BYTES


class AutoChannel(QueueChannel):
    """See the module docstring."""

    name = "auto"
    counters = ("edges_via_queue", "edges_via_object", "stray_dropped")

    @classmethod
    def prepare(cls, config: ChannelConfig, prices: Prices | None) -> ChannelConfig:
        """Fix the line from the backend's price table unless the user set one."""
        if config.auto_object_above_bytes:
            return config
        return replace(config, auto_object_above_bytes=object_threshold(prices))

    @classmethod
    def describe(cls, config: ChannelConfig, prices: Prices | None,
                 totals: Mapping[str, Any]) -> dict[str, Any]:
        line = cls.prepare(config, prices).auto_object_above_bytes
        why = ("set by ChannelConfig.auto_object_above_bytes" if config.auto_object_above_bytes
               else "break-even of the backend's prices: above it a PUT + GET + one pointer "
                    "message costs less than a publish and an SQS receive per 64 KiB")
        return {"object_above_bytes": line, "why": why,
                "edges_via_queue": totals.get("edges_via_queue", 0),
                "edges_via_object": totals.get("edges_via_object", 0)}

    @classmethod
    def estimate_exchange(cls, exchange: ExchangeEstimate) -> None:
        """Edges above the line as an object (PUT, GET) announced by a pointer message, the
        others as on the queue channel."""
        line = (exchange.object_above_bytes if exchange.object_above_bytes is not None
                else object_threshold(exchange.prices))
        as_objects = [(e, n) for e, n in exchange.edges if n > line]
        as_messages = [(e, n) for e, n in exchange.edges if n <= line]
        exchange.note(f"{len(as_objects)} of {len(exchange.edges)} edges as objects (above "
                      f"{line} bytes)")
        object_requests(exchange, as_objects, empty_polls=0.0)  # the pointer says when
        names = RunNames(MODEL_RUN_ID)
        pointers = []
        for e, _ in as_objects:
            key = names.exchange_key(e.layer, e.src, e.dst)
            pointers.append((e, Entry(key, chunk_attributes(
                names, OutChunk(e.layer, e.src, e.dst, 0, 1, b""), checksum(key.encode()),
                "pointer"))))
        queue_requests(exchange, as_messages, pointers)
        queue_setup_requests(exchange)

    def threshold(self) -> int:
        return self.config.auto_object_above_bytes or object_threshold()

    async def _send_chunks(self, chunks: list[OutChunk]) -> None:
        by_edge: dict[tuple[int, int], list[OutChunk]] = {}
        for c in chunks:
            by_edge.setdefault((c.layer, c.dst), []).append(c)
        small: list[OutChunk] = []
        pointers: list[Entry] = []
        puts = []
        m = self.metrics.current
        for (layer, dst), edge in by_edge.items():
            payloads = [c.payload for c in edge if c.count]
            # An empty edge is its count-0 marker: never an object of nothing.
            if not payloads or sum(map(len, payloads)) <= self.threshold():
                small.extend(edge)
                m.channel["edges_via_queue"] += 1
                continue
            key = self.names.exchange_key(layer, self.worker, dst)
            body = seal(self.names, key, payloads)
            puts.append(self.services.objects.put(key, body))
            m.channel["edges_via_object"] += 1
            m.bytes_sent += len(body)
            attributes = self._attributes(OutChunk(layer, self.worker, dst, 0, len(payloads),
                                                   b""), checksum(key.encode()), "pointer")
            pointers.append(Entry(key, attributes))
        await asyncio.gather(*puts)  # objects first: a pointer must never point at nothing
        await self._publish_entries(pointers + self._entries(small))

    async def _take(self, msg: Message, layer: int, src: int, index: int, count: int) -> bool:
        if msg.attributes["kind"] != "pointer":
            return await super()._take(msg, layer, src, index, count)
        edge = self.inbox.edge(layer, src)
        key = self.names.exchange_key(layer, src, self.worker)
        if msg.body != key:
            raise ProtocolError(f"{edge}: pointer to unexpected key {msg.body!r}")
        verified(edge, msg.body.encode(), msg.attributes)
        backoff = Backoff(self.config.peer_timeout_s)
        while True:  # the pointer follows the PUT: a bad read is damage, read it again
            body = await self.services.objects.get(key)
            chunks = unseal(self.names, key, body)
            if chunks is not None:
                break
            self.metrics.current.unauthenticated_dropped += 1
            if backoff.expired:
                raise ProtocolError(f"{edge}: object {key} failed its integrity check on every "
                                    f"read for {self.config.peer_timeout_s:g} s")
            await backoff.wait()
        if len(chunks) != count:
            raise ProtocolError(f"{edge}: object {key} holds {len(chunks)} chunks, its pointer "
                                f"announced {count}")
        self.metrics.current.bytes_received += len(body)
        return offer_edge(self.inbox, layer, src, chunks) > 0
