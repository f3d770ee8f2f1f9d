"""moto's server without the costs that made it collapse under hundreds of clients.

Profiled under a 32-worker run, moto's server spent about 60% of its time building queue
attributes and checking message visibility, nearly all of it in ``moto.core.utils.unix_time``:
every call builds two datetimes (``utcnow`` and the epoch) to subtract them. Each ``SendMessage``
computes every attribute of its queue, three of which (the approximate counts) ask every message
of the queue whether it is visible or delayed; each received message rebuilds the attributes
again for its retention period. A queue holding a few hundred messages then makes each request
milliseconds long, statuses queue up on the control queue, which makes its requests slower
still: at 64 workers statuses reached the scheduler minutes late. At 256 workers, the next
wall: moto's server picks the service of each request under one lock, and what it does under
it lists moto's package directory on disk and tries a few hundred URL patterns; a dump of the
server showed 621 of its threads waiting for that lock. Past it, the next: every lookup of a
service's per-account backend takes moto's one global lock, even when the account's backend
exists, and an SNS publish looks up the SQS backend once per subscription (200 per message on
a full topic shard): 511 of 520 threads were waiting there.

:func:`install` changes only how fast those answers come, not what they are:

* ``unix_time`` and ``unix_time_millis`` as moto's SQS models see them read ``time.time()``
  (what the datetime arithmetic computes) when called without a datetime;
* a queue's attributes count its messages (``ApproximateNumberOfMessages`` and the delayed and
  in-flight counts) only when one of those is read, not whenever any attribute is (as
  ``SendMessage`` does for ``ContentBasedDeduplication``);
* ``DeleteMessage`` finds its message by an index of receipt handles (kept as moto hands them
  out) instead of asking every message of the queue for its list of handles, twice: the
  scheduler's control queue backs up when deletes slow down, which slows them down further;
* ``SQSBackend.is_message_valid_based_on_retention_period`` reads the queue's retention period
  instead of computing every attribute of the queue to take one;
* the service of a host name is looked up once (moto's list of its own modules is read once,
  and a host's match against the URL patterns is remembered), so the lock is held for a
  dictionary lookup;
* a per-account backend that exists is returned without moto's global lock (moto takes the lock
  to create one, and still does);
* werkzeug's access log line per request is off (errors are still logged).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import moto.backends as moto_backends
import moto.sqs.models as sqs_models
from moto.core import utils as moto_utils
from moto.core.base_backend import BackendDict
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.sqs.exceptions import ReceiptHandleIsInvalid
from moto.sqs.models import Message, Queue, SQSBackend

__all__ = ["install"]

_installed = False


def unix_time(dt: datetime.datetime | None = None) -> float:
    """Seconds since the epoch; ``time.time()`` unless given a datetime."""
    return time.time() if dt is None else moto_utils.unix_time(dt)


def unix_time_millis(dt: datetime.datetime | None = None) -> float:
    return unix_time(dt) * 1000.0


#: The attributes that walk every message of the queue.
_COUNTS = ("approximate_number_of_messages", "approximate_number_of_messages_delayed",
           "approximate_number_of_messages_not_visible")
_building = threading.local()  #: set while a thread builds a queue's attributes


class _Count:
    """A count not made yet: made when the attribute is read."""

    __slots__ = ("count", "queue")

    def __init__(self, queue: Queue, count: Callable[[Queue], int]) -> None:
        self.queue, self.count = queue, count


class _QueueAttributes(Mapping[str, Any]):
    """moto's attribute dict of a queue, with the counts made when read."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> Any:
        value = self._values[name]
        return value.count(value.queue) if isinstance(value, _Count) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _deferred(name: str) -> property:
    count: Callable[[Queue], int] = getattr(Queue, name).fget

    def get(self: Queue) -> Any:
        return _Count(self, count) if getattr(_building, "on", False) else count(self)

    return property(get)


def _lazy_attributes() -> property:
    build: Callable[[Queue], dict[str, Any]] = Queue.attributes.fget  # type: ignore[attr-defined]

    def attributes(self: Queue) -> Mapping[str, Any]:
        _building.on = True
        try:
            return _QueueAttributes(build(self))
        finally:
            _building.on = False

    return property(attributes)


#: The message each receipt handle moto gave out belongs to, while moto holds the message.
_receipts: weakref.WeakValueDictionary[str, Message] = weakref.WeakValueDictionary()
_mark_received = Message.mark_received


def _mark_received_indexed(self: Message, visibility_timeout: int | None = None) -> None:
    _mark_received(self, visibility_timeout)
    _receipts[self.receipt_handle] = self  # type: ignore[index]


def _delete_message(self: Queue, receipt_handle: str) -> None:
    """moto's ``Queue.delete_message``, with the message found through :data:`_receipts`."""
    if receipt_handle in self.deleted_messages:
        return  # already deleted: deleting again succeeds
    message = _receipts.get(receipt_handle)
    # A new list, as moto makes: other threads may be reading the old one.
    remaining = [m for m in self._messages if m is not message]
    if message is None or len(remaining) == len(self._messages):
        raise ReceiptHandleIsInvalid()  # unknown, or another queue's message
    self.pending_messages.discard(message)
    self.deleted_messages.update(message.all_receipt_handles)  # type: ignore[arg-type]
    for handle in message.all_receipt_handles:
        _receipts.pop(handle, None)  # type: ignore[arg-type]
    self._messages = remaining


def _within_retention(self: SQSBackend, queue_name: str, message: Message) -> bool:
    retention_s = int(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
    sent_s: float = message.sent_timestamp / 1000  # type: ignore[operator]
    return retention_s + sent_s > time.time()


_backend_of_host: dict[str, Any] = {}
_find_backend = DomainDispatcherApplication.get_backend_for_host


def _backend_for_host(self: DomainDispatcherApplication, host: str | None) -> Any:
    """moto's answer for ``host``, computed once (it depends only on the host)."""
    if host is None:
        return None
    if host not in _backend_of_host:
        _backend_of_host[host] = _find_backend(self, host)
    return _backend_of_host[host]


_account_backend = BackendDict.__getitem__


def _existing_account_backend(self: BackendDict[Any], account_id: str) -> Any:
    """``backends[account_id]``: without the lock when it exists (a dict read is atomic)."""
    if dict.__contains__(self, account_id):
        return dict.__getitem__(self, account_id)
    return _account_backend(self, account_id)


def install() -> None:
    """Patch this process's moto (its server, SQS and backend registry), once."""
    global _installed
    if _installed:
        return
    sqs_models.unix_time = unix_time  # type: ignore[attr-defined]
    sqs_models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]
    for name in _COUNTS:
        setattr(Queue, name, _deferred(name))
    Queue.attributes = _lazy_attributes()  # type: ignore[assignment,method-assign]
    Message.mark_received = _mark_received_indexed  # type: ignore[method-assign]
    Queue.delete_message = _delete_message  # type: ignore[method-assign]
    SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        _within_retention)
    modules = tuple(moto_backends.list_of_moto_modules())
    moto_backends.list_of_moto_modules = lambda: modules
    DomainDispatcherApplication.get_backend_for_host = (  # type: ignore[method-assign]
        _backend_for_host)
    BackendDict.__getitem__ = _existing_account_backend  # type: ignore[method-assign]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _installed = True
