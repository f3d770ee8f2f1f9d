"""The ``ray`` channel: activation chunks through the Ray object store, descriptors by mailbox.

A sender ``ray.put``\\ s each encoded chunk payload (plain ``bytes``) into the object store and
hands the receiver's mailbox one descriptor per chunk, ``(run id, layer, src, index, count,
[ObjectRef])`` (no reference for the explicit empty marker, ``count == 0``), in one call per
mailbox actor and layer. The receiver drains its own mailbox, waiting in the actor up to the poll
time when it is empty, and fetches the payloads straight from the object store. A payload of at
most :data:`INLINE_BYTES` travels inside its descriptor instead (``[bytes]``): for a small chunk,
the object store's put and fetch cost more round trips than the bytes cost the mailbox.

The mailboxes of a run live in ``RayBackend.mailbox_actors`` :class:`Mailbox` actors (worker
``w``'s in actor ``w mod n``). Each actor is a process started for the run, which costs a second
or two on a small machine, so the default is one; a large run on a cluster spreads the
descriptor traffic over more.

The protocol rules (:mod:`fsdgraph.channels.base`) hold as for every channel: mailboxes are
named after the run and a descriptor of another run is never consumed (run isolation); a chunk
seen before is dropped by the :class:`~fsdgraph.channels.base.Inbox` (deduplication); a layer is
complete when ``count`` distinct indices have arrived from every source; a source silent for
``peer_timeout_s`` fails the run.

A payload lives as long as a reference to it does: the mailbox's until the receiver takes it,
then the receiver's until it is decoded. Ray keeps the sending worker's process (the owner)
alive while its objects are referenced. The mailboxes are created with the run's other
resources and killed with them, which frees whatever was never read.

There is no cost model: the channel runs on a cluster that is not billed per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

import ray
from ray.exceptions import RayError

from fsdgraph.backend import Services
from fsdgraph.channels.base import Channel, ChannelConfig, OutChunk, WorkerContext
from fsdgraph.errors import ConfigError, ProtocolError, TransportError
from fsdgraph.integrity import checksum
from fsdgraph.resources import RunNames

from .store import RayRun, call

#: One chunk's descriptor: run id, layer, source, index, count, and [payload ref], [payload
#: bytes] (inline) or [] (the empty marker).
Descriptor = tuple[str, int, int, int, int, list[Any]]
#: Payloads up to this size travel inside their descriptor, not through the object store.
INLINE_BYTES = 64 * 1024


@ray.remote(num_cpus=0, max_restarts=0)
class Mailbox:
    """Mailboxes of some workers of one run: descriptors in arrival order, drained by their
    worker."""

    def __init__(self) -> None:
        self._entries: dict[int, list[Descriptor]] = {}
        self._arrived: dict[int, asyncio.Event] = {}

    async def ready(self) -> bool:
        """True once the actor is up."""
        return True

    def _event(self, worker: int) -> asyncio.Event:
        return self._arrived.setdefault(worker, asyncio.Event())

    async def deliver(self, batches: dict[int, list[Descriptor]]) -> None:
        """Append each worker's entries to its mailbox and wake it if it waits."""
        for worker, entries in batches.items():
            self._entries.setdefault(worker, []).extend(entries)
            self._event(worker).set()

    async def take(self, worker: int, wait_s: float) -> list[Descriptor]:
        """Everything delivered to ``worker`` so far, waiting up to ``wait_s`` while there is
        nothing."""
        if not self._entries.get(worker):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event(worker).wait(), wait_s)
        entries = self._entries.pop(worker, [])
        self._event(worker).clear()
        return entries


def _mailbox_role(index: int) -> str:
    return f"mbox-{index}"


def _mailbox_actors(run: RayRun, workers: int) -> int:
    return max(1, min(run.mailbox_actors, workers))


def _run_of(services: Services) -> RayRun:
    run = services.extensions.get("ray")
    if not isinstance(run, RayRun):
        raise ConfigError("channel 'ray' needs the ray backend's 'ray' extension")
    return run


class RayChannel(Channel):
    """See the module docstring."""

    name = "ray"
    requires: ClassVar[tuple[str, ...]] = ("ray",)
    estimate_layer_s: ClassVar[float] = 0.02
    #: Scheduler side: the handles of each open run's mailboxes, by run prefix (a named actor
    #: lives while its creator holds a handle).
    _created: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, context: WorkerContext) -> None:
        super().__init__(context)
        self._run = _run_of(self.services)
        self._boxes: dict[int, Any] = {}

    @classmethod
    async def create_resources(cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        """The run's mailbox actors, named after the run."""
        run = _run_of(services)
        boxes = [run.start_actor(Mailbox, _mailbox_role(i))
                 for i in range(_mailbox_actors(run, workers))]
        cls._created[run.prefix] = boxes
        await asyncio.gather(*(call(b.ready, what=f"start mailbox actor {i}")
                               for i, b in enumerate(boxes)))

    @classmethod
    async def delete_resources(cls, services: Services, names: RunNames, workers: int,
                               config: ChannelConfig) -> None:
        """Kill the run's mailboxes, freeing the payloads nobody read."""
        for box in cls._created.pop(_run_of(services).prefix, []):
            ray.kill(box)

    def chunk_budget(self) -> int:
        return self.services.limits.max_object_bytes - 64

    def _box_index(self, worker: int) -> int:
        return worker % _mailbox_actors(self._run, self.workers)

    def _box(self, worker: int) -> Any:
        """The actor holding ``worker``'s mailbox."""
        index = self._box_index(worker)
        if index not in self._boxes:
            self._boxes[index] = self._run.get_actor(_mailbox_role(index))
        return self._boxes[index]

    async def _send_chunks(self, chunks: list[OutChunk]) -> None:
        run_id = self.names.run_id
        m = self.metrics.current
        by_dst: dict[int, list[Descriptor]] = {}
        for c in chunks:
            payload = bytes(c.payload)
            refs: list[Any] = ([] if not c.count else [payload] if len(payload) <= INLINE_BYTES
                               else [ray.put(payload)])
            by_dst.setdefault(c.dst, []).append((run_id, c.layer, c.src, c.index, c.count, refs))
            m.bytes_sent += len(c.payload)
            m.messages_sent += 1
        by_box: dict[int, dict[int, list[Descriptor]]] = {}  # one call per mailbox actor
        for dst, entries in by_dst.items():
            by_box.setdefault(self._box_index(dst), {})[dst] = entries
        await asyncio.gather(*(
            call(self._box(next(iter(batches))).deliver, batches,
                 what=f"worker {self.worker}: deliver to workers {sorted(batches)}")
            for batches in by_box.values()))

    async def _fetch(self, layer: int, pending: Sequence[int], wait_s: float) -> int:
        entries = await call(self._box(self.worker).take, self.worker, float(wait_s),
                             what=f"worker {self.worker}: take from its mailbox")
        ours = [d for d in map(_descriptor, entries) if d[0] == self.names.run_id]
        try:
            payloads = await asyncio.gather(*(_payload(d) for d in ours))
        except RayError as exc:
            raise TransportError(f"ray: worker {self.worker}: fetch chunks: "
                                 f"{type(exc).__name__}: {exc}") from exc
        m = self.metrics.current
        kept = 0
        for (_, l, src, index, count, _refs), payload in zip(ours, payloads, strict=True):
            m.messages_received += 1
            m.bytes_received += len(payload)
            if self.inbox.offer(l, src, index, count, payload, checksum(payload)):
                kept += 1
            else:
                m.duplicates_dropped += 1
        return kept


def _descriptor(entry: Any) -> Descriptor:
    """``entry`` checked to be a descriptor; ProtocolError otherwise."""
    try:
        run_id, layer, src, index, count, refs = entry
        ok = (isinstance(run_id, str) and isinstance(refs, list)
              and all(isinstance(x, int) and not isinstance(x, bool)
                      for x in (layer, src, index, count))
              and 0 <= index < max(count, 1) and len(refs) == (1 if count else 0)
              and all(isinstance(r, (ray.ObjectRef, bytes)) for r in refs))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ProtocolError(f"malformed chunk descriptor {entry!r:.200}")
    return run_id, layer, src, index, count, refs


async def _payload(descriptor: Descriptor) -> bytes:
    refs = descriptor[5]
    if not refs:
        return b""
    if isinstance(refs[0], bytes):  # inline
        return refs[0]
    payload = await refs[0]
    if not isinstance(payload, bytes):
        raise ProtocolError(f"chunk payload is {type(payload).__name__}, not bytes")
    return payload


__all__ = ["Descriptor", "Mailbox", "RayChannel"]
