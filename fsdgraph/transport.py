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

The rules, checked here once for every implementation
------------------------------------------------------

The public data-plane methods are written here; each checks its arguments against the
service's ``limits`` (a :class:`Limits`) and only then calls the method an implementation
writes, of the same name with a leading underscore. The rules follow AWS's, so that a call has
the same outcome on every backend:

* ``receive(queue, max_messages=..., wait_s=...)`` needs ``1 <= max_messages <=
  limits.max_batch_entries`` (SQS takes at most 10) and a finite ``wait_s >= 0``; anything else
  raises :class:`~fsdgraph.errors.ConfigError` before any request.
* ``publish_batch`` and ``send_batch`` with more than ``limits.max_batch_entries`` entries, or
  entries of more than ``limits.max_batch_bytes`` bytes in total (:func:`entry_size`), raise
  :class:`~fsdgraph.errors.MessageTooLarge` for the whole call, as AWS rejects the whole request;
  nothing of it is sent. ``delete_batch`` with more than ``limits.max_batch_entries`` receipts
  does the same.
* An entry that does not fit alone (over ``limits.max_message_bytes`` or the queue's own
  ``max_message_bytes``, or not encodable as UTF-8 text) is not sent and is reported in the
  :class:`BatchResult` with code ``MessageTooLong`` (or ``InvalidMessageContents``) and
  ``retryable=False``; the rest of the batch goes in. The implementation reports these, since
  only it knows each queue's limit: :func:`entry_failure` words them.
* An empty batch sends nothing and returns an ok :class:`BatchResult` (where AWS would refuse
  the request, there is simply nothing to do). The queue or topic must still exist: the
  implementation is called with the empty batch so that it raises
  :class:`~fsdgraph.errors.NotFound` for a missing one, as any other call does.
* ``ObjectStore.put`` of an object larger than ``limits.max_object_bytes`` raises
  :class:`~fsdgraph.errors.MessageTooLarge` before any request (a store without ``limits``
  takes any size).

The invocation event of a worker is checked the same way, by the caller, before
``Functions.invoke`` (:func:`check_invoke_payload`).

Writing an implementation: subclass :class:`ObjectStore` or :class:`MessageService`, set
``self.limits`` in the constructor and write the protected methods (``_put``;
``_publish_batch``, ``_send_batch``, ``_receive``, ``_delete_batch``) plus the other abstract
ones. A wrapper around another service writes the protected methods too, forwarding to the
other service's protected methods: the rules then run once, in the wrapper's public methods.
:mod:`fsdgraph.testing.transports` checks an implementation against all of this.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fsdgraph.errors import ConfigError, MessageTooLarge
from fsdgraph.retry import Backoff

KiB = 1024
MiB = 1024 * KiB
#: SNS and SQS bill a request per started 64 KiB of its payload.
CHUNK_BYTES = 64 * KiB
#: How long :func:`delete_received` retries throttled deletes: short, since what is left costs
#: only one more receive later (it comes back and is dropped as a duplicate).
DELETE_DEADLINE_S = 0.25


@dataclass(frozen=True)
class Limits:
    """Service limits. The defaults are AWS's (SNS/SQS 256 KiB, 10 entries per batch).

    Every limit must be a positive integer, else :class:`~fsdgraph.errors.ConfigError`:

    >>> Limits(max_batch_entries=0)
    Traceback (most recent call last):
    ...
    fsdgraph.errors.ConfigError: Limits.max_batch_entries must be a positive integer, got 0
    """

    max_message_bytes: int = 256 * KiB
    max_batch_entries: int = 10
    max_batch_bytes: int = 256 * KiB
    max_invoke_payload_bytes: int = 256 * KiB
    max_object_bytes: int = 5 * 1024 * MiB

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_batch_entries", "max_batch_bytes",
                     "max_invoke_payload_bytes", "max_object_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"Limits.{name} must be a positive integer, got {value!r}")


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


def measured_size(entry: Entry) -> int | None:
    """:func:`entry_size`, or None for an entry that is not text with string attributes
    encodable as UTF-8 (it then fails alone, see :func:`entry_failure`).

    >>> measured_size(Entry("abc", {"k": "v"})), measured_size(Entry("\\udcff"))
    (11, None)
    """
    try:
        return entry_size(entry)
    except (UnicodeEncodeError, AttributeError, TypeError):
        return None


def entry_failure(index: int, size: int | None, limit: int) -> Failure | None:
    """The failure of entry ``index`` of a batch, of :func:`measured_size` ``size``, against a
    message limit of ``limit`` bytes; None if it fits.

    >>> entry_failure(2, 300, 256).message
    'entry 2 of 300 bytes exceeds the limit of 256 bytes'
    """
    if size is None:
        return Failure(index, "InvalidMessageContents",
                       f"entry {index} is not text with string attributes encodable as UTF-8",
                       retryable=False)
    if size > limit:
        return Failure(index, "MessageTooLong",
                       f"entry {index} of {size} bytes exceeds the limit of {limit} bytes",
                       retryable=False)
    return None


def check_batch(entries: Sequence[Entry], limits: Limits) -> list[int | None]:
    """Each entry's :func:`measured_size`; MessageTooLarge if the batch as a whole is over the
    entry or the byte limit (see the module docstring).

    >>> try:
    ...     check_batch([Entry("x" * 6), Entry("y" * 6)], Limits(max_batch_bytes=10))
    ... except MessageTooLarge as exc:
    ...     print(exc)
    batch of 2 entries totalling 12 bytes exceeds the limit of 10 bytes per batch
    """
    check_batch_length(len(entries), limits)
    sizes = [measured_size(e) for e in entries]
    total = sum(s for s in sizes if s is not None)
    if total > limits.max_batch_bytes:
        raise MessageTooLarge(
            f"batch of {len(entries)} entries totalling {total} bytes exceeds the limit of "
            f"{limits.max_batch_bytes} bytes per batch")
    return sizes


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


def check_batch_length(count: int, limits: Limits) -> None:
    """MessageTooLarge if a batch of ``count`` entries is over ``limits.max_batch_entries``."""
    if count > limits.max_batch_entries:
        raise MessageTooLarge(f"batch of {count} entries exceeds the limit of "
                              f"{limits.max_batch_entries} entries per batch")


def check_receive(max_messages: int, wait_s: float, limits: Limits) -> None:
    """ConfigError unless ``1 <= max_messages <= limits.max_batch_entries`` and ``wait_s`` is a
    finite number >= 0.

    >>> try:
    ...     check_receive(11, 1.0, Limits())
    ... except ConfigError as exc:
    ...     print(exc)
    max_messages must be an integer from 1 to 10 (Limits.max_batch_entries), got 11
    """
    if (not isinstance(max_messages, int) or isinstance(max_messages, bool)
            or not 1 <= max_messages <= limits.max_batch_entries):
        raise ConfigError(f"max_messages must be an integer from 1 to "
                          f"{limits.max_batch_entries} (Limits.max_batch_entries), "
                          f"got {max_messages!r}")
    if (not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool)
            or not math.isfinite(wait_s) or wait_s < 0):
        raise ConfigError(f"wait_s must be a finite number >= 0, got {wait_s!r}")


def check_object_size(key: str, size: int, limits: Limits | None) -> None:
    """MessageTooLarge if an object of ``size`` bytes is over ``limits.max_object_bytes``."""
    if limits is not None and size > limits.max_object_bytes:
        raise MessageTooLarge(f"object {key!r} of {size} bytes exceeds the limit of "
                              f"{limits.max_object_bytes} bytes")


def invoke_payload(event: Mapping[str, object]) -> bytes:
    """The bytes an invocation event travels as: compact JSON, as every backend sends it."""
    return json.dumps(event, separators=(",", ":")).encode()


def check_invoke_payload(event: Mapping[str, object], limits: Limits) -> int:
    """The size of ``event`` as it travels (:func:`invoke_payload`); MessageTooLarge if it is
    over the asynchronous invoke payload limit (checked by the caller, once, for every backend).

    >>> try:
    ...     check_invoke_payload({"worker": 1}, Limits(max_invoke_payload_bytes=10))
    ... except MessageTooLarge as exc:
    ...     print(exc)
    invocation event of 12 bytes exceeds the limit of 10 bytes (Limits.max_invoke_payload_bytes)
    """
    size = len(invoke_payload(event))
    if size > limits.max_invoke_payload_bytes:
        raise MessageTooLarge(f"invocation event of {size} bytes exceeds the limit of "
                              f"{limits.max_invoke_payload_bytes} bytes "
                              f"(Limits.max_invoke_payload_bytes)")
    return size


def billing_units(entries: Sequence[Entry]) -> int:
    """Billed requests of one batch call: one per started 64 KiB of its total payload.

    >>> billing_units([Entry("x" * 40_000), Entry("y" * 40_000)])
    2
    """
    return billed_units(sum(entry_size(e) for e in entries))


def billed_units(payload_bytes: int) -> int:
    """Billed requests of a batch call carrying ``payload_bytes`` in all (at least one)."""
    return max(1, -(-payload_bytes // CHUNK_BYTES))


class ObjectStore(ABC):
    """Whole objects by key, as S3.

    An implementation may set ``self.limits`` (a :class:`Limits`) to bound the size of an object
    (``limits.max_object_bytes``); without one (or with None) any size is taken. It writes
    :meth:`_put` (called once the size is checked), :meth:`get`, :meth:`list` and
    :meth:`delete_prefix`.
    """

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` atomically (readers see all of it or nothing);
        MessageTooLarge above ``limits.max_object_bytes``."""
        check_object_size(key, len(data), getattr(self, "limits", None))
        await self._put(key, data)

    @abstractmethod
    async def _put(self, key: str, data: bytes) -> None:
        """:meth:`put`, its size checked already."""

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` holding ``data`` unless it exists; True if this call created it.
        Atomic: of concurrent callers exactly one gets True (S3's ``If-None-Match: *``). Workers
        claim their identity with it, so that a duplicated invocation event runs once."""
        check_object_size(key, len(data), getattr(self, "limits", None))
        return await self._put_if_absent(key, data)

    @abstractmethod
    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        """:meth:`put_if_absent`, its size checked already."""

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
    """Topics fanning out to queues, as SNS + SQS. Resource names are plain strings.

    ``limits`` (set by the implementation's constructor) is what the public data-plane methods
    check their arguments against before they call the implementation's protected ones (see
    the module docstring).
    """

    limits: Limits

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

    # -- data plane: the rules here, the work in the protected methods --------------------------
    async def publish_batch(self, topic: str, entries: Sequence[Entry]) -> BatchResult:
        """Publish up to ``limits.max_batch_entries`` entries to a topic."""
        sizes = check_batch(entries, self.limits)
        result = await self._publish_batch(topic, entries, sizes)
        return result if entries else BatchResult()

    async def send_batch(self, queue: str, entries: Sequence[Entry]) -> BatchResult:
        """Send up to ``limits.max_batch_entries`` entries straight to a queue."""
        sizes = check_batch(entries, self.limits)
        result = await self._send_batch(queue, entries, sizes)
        return result if entries else BatchResult()

    async def receive(
        self, queue: str, *, max_messages: int = 10, wait_s: float = 1.0
    ) -> list[Message]:
        """Long-poll: return up to ``max_messages`` visible messages, waking as soon as one
        is available; an empty list after ``wait_s``."""
        check_receive(max_messages, wait_s, self.limits)
        return await self._receive(queue, max_messages, wait_s)

    async def delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        """Delete up to ``limits.max_batch_entries`` received messages by receipt."""
        check_batch_length(len(receipts), self.limits)
        result = await self._delete_batch(queue, receipts)
        return result if receipts else BatchResult()

    # What every implementation writes.
    @abstractmethod
    async def _publish_batch(self, topic: str, entries: Sequence[Entry],
                             sizes: Sequence[int | None]) -> BatchResult:
        """:meth:`publish_batch`, the batch checked already; ``sizes[i]`` is
        :func:`measured_size` of ``entries[i]``. Entries that do not fit alone fail alone
        (:func:`entry_failure`); an empty batch only checks that the topic exists."""

    @abstractmethod
    async def _send_batch(self, queue: str, entries: Sequence[Entry],
                          sizes: Sequence[int | None]) -> BatchResult:
        """:meth:`send_batch`, as :meth:`_publish_batch`."""

    @abstractmethod
    async def _receive(self, queue: str, max_messages: int, wait_s: float) -> list[Message]:
        """:meth:`receive`, its arguments checked already."""

    @abstractmethod
    async def _delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        """:meth:`delete_batch`, its length checked already; an empty batch only checks that
        the queue exists."""


async def delete_received(messages: MessageService, queue: str, receipts: Sequence[str], *,
                          deadline_s: float = DELETE_DEADLINE_S) -> tuple[Failure, ...]:
    """Delete received messages, retrying the entries that failed retryably (throttling) with
    :class:`~fsdgraph.retry.Backoff` until ``deadline_s``; return the failures left (``index``
    into ``receipts``), non-retryable ones as soon as they are known.

    What is left is safe to leave: an undeleted message comes back after the visibility timeout
    and its consumer drops it as a duplicate, at the price of one more receive.
    """
    backoff = Backoff(deadline_s)
    origin = list(range(len(receipts)))  # index in ``receipts`` of each entry of the next call
    final: list[Failure] = []
    while True:
        result = await messages.delete_batch(queue, [receipts[i] for i in origin])
        again = [f for f in result.failures if f.retryable]
        final += [replace(f, index=origin[f.index]) for f in result.failures if not f.retryable]
        if not again or backoff.expired:
            final += [replace(f, index=origin[f.index]) for f in again]
            return tuple(sorted(final, key=lambda f: f.index))
        origin = [origin[f.index] for f in again]
        await backoff.wait()
