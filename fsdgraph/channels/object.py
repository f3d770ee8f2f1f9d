"""The object channel: one object per edge and layer (S3).

Sender ``src`` writes ``runs/<run>/x/<dst>/<layer>/<src>`` holding every chunk of the edge (an
object holds up to ``max_object_bytes``, so one object nearly always suffices; a larger edge is
split into several chunks inside the same object). An empty edge is an object with no chunks: the
explicit empty marker. An object is sealed (:mod:`fsdgraph.sealed`: tagged under the run's key
with its key and its chunks' checksums): one that does not verify (damaged, forged, another
run's, or malformed) is counted (``unauthenticated_dropped``) and read again with backoff, as a
missing one is; if it never verifies, the peer timeout names the edge and says so.

The reader knows every key it expects from the plan and GETs them, backing off while they are
missing, instead of LISTing a prefix (a LIST costs as much as a PUT and lags).

At scale, S3's request rates bind (5 500 GETs/s per prefix, 503 SlowDown above, and a new run's
prefix starts in one partition): keys start with their reader, so that S3 can split the readers
apart, and a worker's GETs of keys *not yet written* are paced to ``object_get_rate_s``, which
:meth:`ObjectChannel.fit` sets to half the prefix's quota shared among the workers. A GET or PUT
that fails retryably (SlowDown, throttling) is tried again with backoff and jitter until the peer
timeout; the failed GETs are counted (``slowdowns``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from fsdgraph.channels.base import Channel, ChannelConfig, Inbox, OutChunk, WorkerContext
from fsdgraph.errors import NotFound, TransportError
from fsdgraph.integrity import checksum
from fsdgraph.retry import retry
from fsdgraph.sealed import OVERHEAD, seal, unseal

if TYPE_CHECKING:
    from fsdgraph.cost.estimate import ExchangeEstimate
    from fsdgraph.plan import Edge
    from fsdgraph.quotas import Quotas

#: Bytes an edge object adds around its payloads (:data:`fsdgraph.sealed.OVERHEAD`).
OBJECT_OVERHEAD = OVERHEAD


class ObjectChannel(Channel):
    """See the module docstring."""

    name = "object"
    estimate_layer_s: ClassVar[float] = 0.15
    counters: ClassVar[tuple[str, ...]] = ("slowdowns",)

    def __init__(self, context: WorkerContext) -> None:
        super().__init__(context)
        self._delay = self.config.object_poll_min_s

    @classmethod
    def fit(cls, config: ChannelConfig, workers: int,
            quotas: Quotas) -> tuple[ChannelConfig, dict[str, Any]]:
        """Pace the polling of missing keys so that all workers together stay within half of
        one prefix's GET quota (the other half is left to the GETs that find their object)."""
        if config.object_get_rate_s:
            return config, {"get_rate_s": config.object_get_rate_s,
                            "why": "set by ChannelConfig.object_get_rate_s"}
        if not math.isfinite(quotas.s3_get_per_prefix_s):
            return config, {"get_rate_s": 0.0, "why": "the backend has no request-rate quota"}
        rate = quotas.s3_get_per_prefix_s / 2 / workers
        return replace(config, object_get_rate_s=rate), {
            "get_rate_s": rate,
            "why": f"half of s3_get_per_prefix_s={quotas.s3_get_per_prefix_s:g} shared by "
                   f"{workers} workers polling for keys not yet written"}

    @classmethod
    def estimate_exchange(cls, exchange: ExchangeEstimate) -> None:
        """One PUT per edge; a GET per edge plus ``empty_polls`` GETs of a key not yet there."""
        object_requests(exchange, exchange.edges, empty_polls=exchange.empty_polls)

    def chunk_budget(self) -> int:
        return self.services.limits.max_object_bytes - 64

    async def _send_chunks(self, chunks: list[OutChunk]) -> None:
        by_edge: dict[tuple[int, int], list[OutChunk]] = {}
        for c in chunks:
            by_edge.setdefault((c.layer, c.dst), []).append(c)
        puts = []
        for (layer, dst), edge in by_edge.items():
            key = self.names.exchange_key(layer, self.worker, dst)
            body = seal(self.names, key, [c.payload for c in edge if c.count])
            self.metrics.current.bytes_sent += len(body)
            self.metrics.current.messages_sent += 1
            puts.append(retry(partial(self.services.objects.put, key, body),
                              deadline_s=self.config.peer_timeout_s))
        await asyncio.gather(*puts)

    async def _fetch(self, layer: int, pending: Sequence[int], wait_s: float) -> int:
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        keys = {src: self.names.exchange_key(layer, src, self.worker) for src in pending}
        while True:
            kept, absent = 0, []
            for src, key in keys.items():
                try:
                    body = await self.services.objects.get(key)
                except NotFound:
                    absent.append(key)
                    continue
                except TransportError as exc:
                    if not exc.retryable:
                        raise
                    self.metrics.current.channel["slowdowns"] += 1  # tried again below
                    absent.append(key)
                    continue
                got = self._unpack(layer, src, key, body)
                kept += got or 0  # None: read it again after the backoff (it may be replaced)
            if kept or loop.time() >= until:
                if kept:
                    self._delay = self.config.object_poll_min_s
                return kept
            # Back off between GETs (each is billed, and the prefix's rate is shared): at least
            # as long as this round's misses take at the paced rate. A store that can notify
            # wakes us early when a missing key is written. (A key holding another run's object
            # is not missing: it waits out the backoff.)
            delay = self._delay
            if self.config.object_get_rate_s:
                delay = max(delay, len(absent) / self.config.object_get_rate_s)
            delay = min(delay, max(0.0, until - loop.time()))
            if absent:
                await self.services.objects.wait_for(absent, delay)
            else:
                await asyncio.sleep(delay)
            self._delay = min(self._delay * 2, self.config.object_poll_max_s)

    def _unpack(self, layer: int, src: int, key: str, body: bytes) -> int | None:
        """Chunks kept from an edge object; None if it did not verify (counted, noted for the
        timeout's message)."""
        m = self.metrics.current
        chunks = unseal(self.names, key, body)
        if chunks is None:
            m.unauthenticated_dropped += 1
            self.inbox.note(layer, src, f"object {key} failed its integrity check")
            return None
        m.messages_received += 1
        m.bytes_received += len(body)
        return offer_edge(self.inbox, layer, src, chunks)


def offer_edge(inbox: Inbox, layer: int, src: int, chunks: Sequence[tuple[bytes, str]]) -> int:
    """Offer every chunk of a verified edge object to ``inbox``; how many were kept."""
    if not chunks:
        return int(inbox.offer(layer, src, 0, 0, b"", checksum(b"")))
    return sum(inbox.offer(layer, src, i, len(chunks), p, digest)
               for i, (p, digest) in enumerate(chunks))


def object_requests(exchange: ExchangeEstimate, edges: Sequence[tuple[Edge, int]], *,
                    empty_polls: float) -> None:
    """PUTs and GETs of ``edges`` sent as one object each (the object and auto channels)."""
    for e, n in edges:
        exchange.wire_by[e.layer, e.src] += n + OBJECT_OVERHEAD
    if not edges:
        return
    put, get = exchange.prices.s3_put_per_k / 1e3, exchange.prices.s3_get_per_k / 1e3
    exchange.charge_edges("S3", "PUT exchange", put, edges, lambda e: (e.src, 1.0))
    exchange.charge_edges("S3", "GET exchange", get, edges, lambda e: (e.dst, 1.0 + empty_polls))
