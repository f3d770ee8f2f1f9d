"""What a worker measures, and the transport wrappers that count requests for it.

Every counter is per layer (``LayerMetrics``) and summed per worker; the scheduler sums workers
into the run report. Requests are counted by kind (``publish``, ``send``, ``receive``,
``delete``, ``put``, ``get``, ``list``, ``invoke``) at the transport boundary, so a backend never
has to count anything itself: :func:`counted` wraps its services.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fsdgraph.backend import Functions, Services
from fsdgraph.control import ControlPlane, QueueControlPlane, Status
from fsdgraph.transport import (
    BatchResult,
    Entry,
    Message,
    MessageService,
    ObjectStore,
    billed_units,
)

#: The per-layer counters, in report order.
COUNTERS = ("rows_sent", "nnz_sent", "bytes_sent", "messages_sent", "rows_received",
            "nnz_received", "bytes_received", "messages_received", "duplicates_dropped",
            "unauthenticated_dropped", "checkpoints")
TIMERS = ("compute_s", "wait_s", "codec_s", "cpu_s")


@dataclass
class LayerMetrics:
    """Counters and timers of one worker for one layer (layer -1: staging and output)."""

    layer: int
    rows_sent: int = 0
    nnz_sent: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0
    rows_received: int = 0
    nnz_received: int = 0
    bytes_received: int = 0
    messages_received: int = 0
    duplicates_dropped: int = 0
    #: Messages and objects of this run whose tag did not verify (forged or damaged): dropped.
    unauthenticated_dropped: int = 0
    checkpoints: int = 0  #: layer outputs made durable (for a relaunch or a continuation)
    compute_s: float = 0.0
    wait_s: float = 0.0
    codec_s: float = 0.0
    cpu_s: float = 0.0  #: CPU time (user + system) of the worker process in this layer
    started_at: float = 0.0  #: wall clock (epoch seconds) when the worker began the layer
    requests: Counter[str] = field(default_factory=Counter)
    #: Counters the channel declares (``Channel.counters``), by name.
    channel: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["requests"] = dict(self.requests)
        d["channel"] = dict(self.channel)
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> LayerMetrics:
        names = {f.name for f in fields(LayerMetrics)} - {"requests", "channel"}
        m = LayerMetrics(**{k: v for k, v in d.items() if k in names})
        m.requests = Counter(d.get("requests", {}))
        m.channel = Counter(d.get("channel", {}))
        return m


class WorkerMetrics:
    """The metrics of one worker; ``current`` is the layer being worked on."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.setup = LayerMetrics(-1)
        self.layers: list[LayerMetrics] = []
        self.current = self.setup
        self.started = time.time()
        self._cpu_mark = time.process_time()
        #: The layer kernel that ran (``fsdgraph.kernels.choice``) and its threads.
        self.kernel = ""
        self.kernel_threads = 1

    def begin_layer(self, layer: int) -> LayerMetrics:
        self._close_current()
        while len(self.layers) < layer:  # layers an earlier attempt ran (a resumed worker)
            self.layers.append(LayerMetrics(len(self.layers)))
        self.current = LayerMetrics(layer, started_at=time.time())
        self.layers.append(self.current)
        return self.current

    def end_layers(self) -> None:
        self._close_current()
        self.current = self.setup

    def _close_current(self) -> None:
        now = time.process_time()
        self.current.cpu_s += now - self._cpu_mark
        self._cpu_mark = now

    def request(self, kind: str, count: int = 1) -> None:
        self.current.requests[kind] += count

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "started": self.started, "finished": time.time(),
                "setup": self.setup.to_dict(),
                "layers": [m.to_dict() for m in self.layers],
                "peak_rss_bytes": peak_rss_bytes(), "cpu_s": cpu_seconds(),
                "kernel": self.kernel, "kernel_threads": self.kernel_threads}


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports kilobytes, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _CountingStore(ObjectStore):
    # No ``limits`` of its own: the inner store checks sizes.
    def __init__(self, inner: ObjectStore, metrics: WorkerMetrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def _put(self, key: str, data: bytes) -> None:
        self.metrics.request("put")
        await self.inner.put(key, data)

    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        self.metrics.request("put")
        return await self.inner.put_if_absent(key, data)

    async def get(self, key: str) -> bytes:
        self.metrics.request("get")
        return await self.inner.get(key)

    async def list(self, prefix: str) -> list[str]:
        self.metrics.request("list")
        return await self.inner.list(prefix)

    async def delete_prefix(self, prefix: str) -> int:
        self.metrics.request("delete_objects")
        return await self.inner.delete_prefix(prefix)

    async def wait_for(self, keys: Sequence[str], timeout_s: float) -> None:
        await self.inner.wait_for(keys, timeout_s)


class _CountingMessages(MessageService):
    def __init__(self, inner: MessageService, metrics: WorkerMetrics) -> None:
        self.inner, self.metrics = inner, metrics
        self.limits = inner.limits  # a request the rules refuse is not made, so not counted

    async def create_queue(
        self, name: str, *, visibility_timeout_s: float, max_message_bytes: int
    ) -> str:
        self.metrics.request("create_queue")
        return await self.inner.create_queue(
            name, visibility_timeout_s=visibility_timeout_s, max_message_bytes=max_message_bytes)

    async def create_topic(self, name: str) -> str:
        self.metrics.request("create_topic")
        return await self.inner.create_topic(name)

    async def subscribe(
        self, topic: str, queue: str, *, filter_policy: Mapping[str, Sequence[str]]
    ) -> None:
        self.metrics.request("subscribe")
        await self.inner.subscribe(topic, queue, filter_policy=filter_policy)

    async def delete_queue(self, queue: str) -> None:
        self.metrics.request("delete_queue")
        await self.inner.delete_queue(queue)

    async def delete_topic(self, topic: str) -> None:
        self.metrics.request("delete_topic")
        await self.inner.delete_topic(topic)

    # The rules ran in this wrapper's public methods (same limits): forward to the inner
    # service's protected methods, so that sizes are measured and checked once.
    async def _publish_batch(self, topic: str, entries: Sequence[Entry],
                             sizes: Sequence[int | None]) -> BatchResult:
        self.metrics.request("publish")
        self.metrics.request("publish_units", _units(sizes))
        return await self.inner._publish_batch(topic, entries, sizes)

    async def _send_batch(self, queue: str, entries: Sequence[Entry],
                          sizes: Sequence[int | None]) -> BatchResult:
        self.metrics.request("send")
        self.metrics.request("send_units", _units(sizes))
        return await self.inner._send_batch(queue, entries, sizes)

    async def _receive(self, queue: str, max_messages: int, wait_s: float) -> list[Message]:
        self.metrics.request("receive")
        return await self.inner._receive(queue, max_messages, wait_s)

    async def _delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        self.metrics.request("delete")
        return await self.inner._delete_batch(queue, receipts)


def _units(sizes: Sequence[int | None]) -> int:
    """:func:`~fsdgraph.transport.billing_units` of a batch whose entry sizes are measured."""
    return billed_units(sum(s for s in sizes if s is not None))


class _CountingFunctions(Functions):
    def __init__(self, inner: Functions, metrics: WorkerMetrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def invoke(self, event: Mapping[str, Any]) -> None:
        self.metrics.request("invoke")
        await self.inner.invoke(event)


class _CountingControl(ControlPlane):
    """Counts a control plane that is not made of counted messages: ``status`` per report,
    ``poll`` per poll (a backend's own kinds, not priced)."""

    def __init__(self, inner: ControlPlane, metrics: WorkerMetrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def create(self) -> None:
        await self.inner.create()

    async def delete(self) -> None:
        await self.inner.delete()

    async def report(self, status: Status) -> None:
        self.metrics.request("status")
        await self.inner.report(status)

    async def poll(self, wait_s: float) -> list[Status]:
        self.metrics.request("poll")
        return await self.inner.poll(wait_s)


def precount_report(control: ControlPlane, metrics: WorkerMetrics) -> None:
    """Count now the requests one status report through ``control`` will make (for a report
    sent after the metrics are written)."""
    if isinstance(control, QueueControlPlane):
        metrics.request("send")
        metrics.request("send_units")
    else:
        metrics.request("status")


def counted(services: Services, metrics: WorkerMetrics) -> Services:
    """The same services, with every request counted into ``metrics``."""
    messages = (_CountingMessages(services.messages, metrics)
                if services.messages is not None else None)
    control = services.control
    if isinstance(control, QueueControlPlane) and messages is not None:
        # The same control plane (a subclass keeps its own behaviour, e.g. AWS's failures
        # queue), on the counted messages: its requests are counted there.
        control = copy.copy(control)
        control.messages = messages
    else:
        control = _CountingControl(control, metrics)
    return dataclasses.replace(
        services, objects=_CountingStore(services.objects, metrics), control=control,
        functions=_CountingFunctions(services.functions, metrics), messages=messages)
