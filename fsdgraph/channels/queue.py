"""The queue channel: topics fan out to one queue per worker (SNS + SQS).

Run resources: ``topics`` topics and one queue per worker, the queue of worker ``w`` subscribed to
every topic with the filter policy ``{"target": [w]}``. Worker ``w`` publishes on topic
``w mod topics``. A chunk is one message: the base64 chunk as body, its identity as string
attributes (``run``, ``layer``, ``src``, ``target``, ``index``, ``count``). Chunks for several
targets are packed into one batch call (at most ``max_batch_entries`` entries and
``max_batch_bytes`` in all: the paper's payload packing). Entries that fail with a retryable error
are retried alone, with exponential backoff and jitter, until the peer timeout; a non-retryable
failure fails the run with the target, layer and the service's reason.

With ``ChannelConfig.direct`` there are no topics: chunks are packed per target and sent straight
to its queue (SQS ``SendMessageBatch``). That saves the SNS publish and its per-64 KiB charge, but
one batch call can no longer carry chunks for several targets.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from fsdgraph.backend import Services
from fsdgraph.channels.base import Channel, ChannelConfig, OutChunk
from fsdgraph.codec import TextCodec
from fsdgraph.errors import ProtocolError, RunError
from fsdgraph.resources import RunNames
from fsdgraph.transport import (
    BatchResult,
    Entry,
    Limits,
    Message,
    delete_received,
    entry_size,
)

_text = TextCodec()


def pack_batches(entries: Sequence[Entry], max_entries: int, max_bytes: int) -> list[list[Entry]]:
    """First-fit-decreasing packing of entries into batch calls within both limits.

    >>> sizes = [Entry("x" * n) for n in (90, 60, 40, 10)]
    >>> [[len(e.body) for e in b] for b in pack_batches(sizes, max_entries=10, max_bytes=100)]
    [[90, 10], [60, 40]]
    """
    batches: list[list[Entry]] = []
    room: list[int] = []
    for entry in sorted(entries, key=entry_size, reverse=True):
        size = entry_size(entry)
        for i, batch in enumerate(batches):
            if len(batch) < max_entries and room[i] >= size:
                batch.append(entry)
                room[i] -= size
                break
        else:
            batches.append([entry])
            room.append(max_bytes - size)
    return batches


def chunk_attributes(run_id: str, c: OutChunk) -> dict[str, str]:
    """The string attributes that identify chunk ``c`` of run ``run_id`` on a queue."""
    return {"run": run_id, "layer": str(c.layer), "src": str(c.src), "target": str(c.dst),
            "index": str(c.index), "count": str(c.count)}


def queue_chunk_budget(limits: Limits, run_id: str) -> int:
    """The largest raw chunk whose base64 body and attributes fit one message and one batch."""
    widest = OutChunk(10**9, 10**6, 10**6, 10**6, 10**6, b"")
    overhead = entry_size(Entry("", chunk_attributes(run_id, widest)))
    return _text.raw_budget(min(limits.max_message_bytes, limits.max_batch_bytes) - overhead)


class QueueChannel(Channel):
    """See the module docstring."""

    name = "queue"

    @classmethod
    async def create_resources(cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        messages = services.messages
        topics = [] if config.direct else [await messages.create_topic(names.topic(t))
                                           for t in range(min(config.topics, workers))]
        for w in range(workers):
            queue = await messages.create_queue(
                names.queue(w), visibility_timeout_s=config.visibility_timeout_s,
                max_message_bytes=services.limits.max_message_bytes)
            for topic in topics:
                await messages.subscribe(topic, queue, filter_policy={"target": [str(w)]})

    @classmethod
    async def delete_resources(cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        for t in range(0 if config.direct else min(config.topics, workers)):
            await services.messages.delete_topic(names.topic(t))
        for w in range(workers):
            await services.messages.delete_queue(names.queue(w))

    def _attributes(self, c: OutChunk) -> dict[str, str]:
        return chunk_attributes(self.names.run_id, c)

    def chunk_budget(self) -> int:
        return queue_chunk_budget(self.services.limits, self.names.run_id)

    def _entries(self, chunks: list[OutChunk]) -> list[Entry]:
        return [Entry(_text.encode(c.payload), self._attributes(c)) for c in chunks]

    async def _send_chunks(self, chunks: list[OutChunk]) -> None:
        await self._publish_entries(self._entries(chunks))

    async def _publish_entries(self, entries: list[Entry]) -> None:
        """Count, pack into batch calls and publish on this worker's topic (or, direct, send to
        each target's queue)."""
        m = self.metrics.current
        m.messages_sent += len(entries)
        m.bytes_sent += sum(entry_size(e) for e in entries)
        limits = self.services.limits
        messages = self.services.messages
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
            topic = self.names.topic(self.worker % min(self.config.topics, self.workers))
            calls += [(messages.publish_batch, topic, batch) for batch in
                      pack_batches(entries, limits.max_batch_entries, limits.max_batch_bytes)]
        await asyncio.gather(*(self._deliver(call, to, batch) for call, to, batch in calls))

    async def _deliver(self, call: Callable[[str, Sequence[Entry]], Awaitable[BatchResult]],
                       to: str, batch: list[Entry]) -> None:
        """One batch call; retry only the entries that failed retryably, with backoff."""
        deadline = time.monotonic() + self.config.peer_timeout_s
        delay = 0.01
        while True:
            result = await call(to, batch)
            if result.ok:
                return
            fatal = [f for f in result.failures if not f.retryable]
            if fatal or time.monotonic() + delay > deadline:
                f = (fatal or list(result.failures))[0]
                e = batch[f.index]
                raise RunError(
                    f"worker {self.worker} layer {e.attributes['layer']}: publishing a chunk for "
                    f"worker {e.attributes['target']} failed: {f.code}: {f.message}",
                    worker=self.worker, layer=int(e.attributes["layer"]))
            batch = [batch[f.index] for f in result.failures]
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _fetch(self, layer: int, pending: Sequence[int], wait_s: float) -> int:
        queue = self.names.queue(self.worker)
        messages = await self.services.messages.receive(queue, max_messages=10, wait_s=wait_s)
        kept, receipts = 0, []
        m = self.metrics.current
        for msg in messages:
            if msg.attributes.get("run") != self.names.run_id:
                continue  # another run's message: never consume it
            receipts.append(msg.receipt)
            if await self._take(msg, *self._identity(msg)):
                kept += 1
                m.messages_received += 1
                m.bytes_received += entry_size(Entry(msg.body, msg.attributes))
            else:
                m.duplicates_dropped += 1
        if receipts:
            # What cannot be deleted comes back later and is dropped as a duplicate.
            await delete_received(self.services.messages, queue, receipts)
        return kept

    def _identity(self, msg: Message) -> tuple[int, int, int, int]:
        """``(layer, src, index, count)`` of a message addressed to this worker."""
        a = msg.attributes
        try:
            layer, src, index, count = (int(a["layer"]), int(a["src"]), int(a["index"]),
                                        int(a["count"]))
            target = int(a["target"])
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"worker {self.worker}: message without valid chunk attributes "
                                f"{dict(a)!r}") from exc
        if target != self.worker:
            raise ProtocolError(f"worker {self.worker}: received a chunk for worker {target}")
        return layer, src, index, count

    async def _take(self, msg: Message, layer: int, src: int, index: int, count: int) -> bool:
        """Keep the chunk a message carries; False if it was a duplicate."""
        return self.inbox.offer(layer, src, index, count, _text.decode(msg.body))
