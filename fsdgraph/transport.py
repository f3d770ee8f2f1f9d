"""The two transports every backend provides, as thin async interfaces.

An :class:`ObjectStore` behaves like S3 (whole-object put/get by key, prefix listing); a
:class:`MessageService` behaves like SNS topics fanning out to SQS queues:

* ``publish_batch(topic, entries)`` delivers every entry to each queue subscribed to ``topic``
  whose filter policy matches the entry's string attributes (``{"target": ["3"]}`` matches an
  entry whose attribute ``target`` is ``"3"``);
* ``send_batch(queue, entries)`` writes straight to one queue (the direct mode, no topic);
* ``receive`` long-polls: it returns as soon as at least one message is visible, or an empty
  list after ``wait_s``. A received message stays invisible for the queue's visibility timeout;
  if it is not deleted by then it is delivered again (at-least-once, so consumers deduplicate).

Bodies are text (``str``), as SQS requires; binary payloads travel base64-encoded (see
``fsdgraph.codec``). Sizes are measured by :func:`entry_size` the way SNS/SQS count them, and every
limit lives in :class:`Limits` (configuration, never a constant in code).

All methods are coroutines. They raise :class:`~fsdgraph.errors.NotFound` for a missing key,
queue or topic, :class:`~fsdgraph.errors.MessageTooLarge` for an entry or batch over a limit and
:class:`~fsdgraph.errors.TransportError` for anything else. Batch calls report per-entry failures
in :class:`BatchResult` instead of raising, as the AWS APIs do, so a caller retries only those.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fsdgraph.errors import MessageTooLarge

KiB = 1024
MiB = 1024 * KiB
#: SNS and SQS bill a request per started 64 KiB of its payload.
CHUNK_BYTES = 64 * KiB


@dataclass(frozen=True)
class Limits:
    """Service limits. The defaults are AWS's (SNS/SQS 256 KiB, 10 entries per batch)."""

    max_message_bytes: int = 256 * KiB
    max_batch_entries: int = 10
    max_batch_bytes: int = 256 * KiB
    max_invoke_payload_bytes: int = 256 * KiB
    max_object_bytes: int = 5 * 1024 * MiB

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_batch_entries", "max_batch_bytes",
                     "max_invoke_payload_bytes", "max_object_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Entry:
    """One message to publish or send: a text body and string attributes."""

    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One received message. ``receipt`` is what :meth:`MessageService.delete_batch` takes."""

    body: str
    attributes: Mapping[str, str]
    receipt: str
    receive_count: int = 1


@dataclass(frozen=True)
class Failure:
    """One entry of a batch call that failed; ``retryable`` says whether to try it again."""

    index: int
    code: str
    message: str
    retryable: bool


@dataclass(frozen=True)
class BatchResult:
    """The outcome of a batch call: the indices that failed (an empty tuple when all went in)."""

    failures: tuple[Failure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


def entry_size(entry: Entry) -> int:
    """Bytes an entry counts against a message limit: body plus attribute names, types, values."""
    size = len(entry.body.encode("utf-8"))
    for name, value in entry.attributes.items():
        size += len(name.encode("utf-8")) + len("String") + len(value.encode("utf-8"))
    return size


def check_invoke_payload(event: Mapping[str, object], limits: Limits) -> int:
    """The size of ``event`` as JSON; MessageTooLarge if it is over the asynchronous invoke
    payload limit (checked by the caller, once, for every backend).

    >>> check_invoke_payload({"worker": 1}, Limits(max_invoke_payload_bytes=10))
    Traceback (most recent call last):
    ...
    fsdgraph.errors.MessageTooLarge: invoke payload of 13 bytes exceeds the limit of 10 bytes
    """
    size = len(json.dumps(event).encode())
    if size > limits.max_invoke_payload_bytes:
        raise MessageTooLarge(f"invoke payload of {size} bytes exceeds the limit of "
                              f"{limits.max_invoke_payload_bytes} bytes")
    return size


def billing_units(entries: Sequence[Entry]) -> int:
    """Billed requests of one batch call: one per started 64 KiB of its total payload.

    >>> billing_units([Entry("x" * 40_000), Entry("y" * 40_000)])
    2
    """
    total = sum(entry_size(e) for e in entries)
    return max(1, -(-total // CHUNK_BYTES))


class ObjectStore(ABC):
    """Whole objects by key, as S3."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` atomically (readers see all of it or nothing)."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """Return the object at ``key``; raise NotFound if there is none."""

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; return how many were deleted."""

    async def wait_for(self, keys: Sequence[str], timeout_s: float) -> None:
        """Wait until one of ``keys`` may exist, at most ``timeout_s``; not a request.

        The default just sleeps (S3 cannot notify, so readers poll with backoff); a store that
        can be notified returns as soon as something is written beside the keys.
        """
        import asyncio

        await asyncio.sleep(timeout_s)


class MessageService(ABC):
    """Topics fanning out to queues, as SNS + SQS. Resource names are plain strings."""

    # -- provisioning ---------------------------------------------------------------------------
    @abstractmethod
    async def create_queue(
        self, name: str, *, visibility_timeout_s: float, max_message_bytes: int
    ) -> str:
        """Create (or reuse) a queue; return its id for the other calls."""

    @abstractmethod
    async def create_topic(self, name: str) -> str:
        """Create (or reuse) a topic; return its id."""

    @abstractmethod
    async def subscribe(
        self, topic: str, queue: str, *, filter_policy: Mapping[str, Sequence[str]]
    ) -> None:
        """Deliver the topic's messages whose attributes match ``filter_policy`` to ``queue``
        (raw delivery: the body arrives unchanged)."""

    @abstractmethod
    async def delete_queue(self, queue: str) -> None:
        """Delete a queue and its messages (no error if it is already gone)."""

    @abstractmethod
    async def delete_topic(self, topic: str) -> None:
        """Delete a topic and its subscriptions (no error if it is already gone)."""

    # -- data plane -----------------------------------------------------------------------------
    @abstractmethod
    async def publish_batch(self, topic: str, entries: Sequence[Entry]) -> BatchResult:
        """Publish up to ``max_batch_entries`` entries to a topic."""

    @abstractmethod
    async def send_batch(self, queue: str, entries: Sequence[Entry]) -> BatchResult:
        """Send up to ``max_batch_entries`` entries straight to a queue."""

    @abstractmethod
    async def receive(
        self, queue: str, *, max_messages: int = 10, wait_s: float = 1.0
    ) -> list[Message]:
        """Long-poll: return up to ``max_messages`` visible messages, waking as soon as one
        is available; an empty list after ``wait_s``."""

    @abstractmethod
    async def delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        """Delete received messages by receipt."""


async def delete_received(messages: MessageService, queue: str, receipts: Sequence[str],
                          attempts: int = 3) -> tuple[Failure, ...]:
    """Delete received messages, retrying the entries that failed retryably (throttling) with a
    short backoff; return the failures left (``index`` into ``receipts``).

    What is left is safe to leave: an undeleted message comes back after the visibility timeout
    and its consumer drops it as a duplicate, at the price of one more receive.
    """
    import asyncio

    origin = list(range(len(receipts)))  # index in ``receipts`` of each entry of the next call
    delay = 0.01
    for attempt in range(attempts):
        result = await messages.delete_batch(queue, [receipts[i] for i in origin])
        retry = [f for f in result.failures if f.retryable]
        if not retry or attempt == attempts - 1:
            return tuple(replace(f, index=origin[f.index]) for f in result.failures)
        origin = [origin[f.index] for f in retry]
        await asyncio.sleep(delay)
        delay *= 4
    return ()
