"""The control plane: workers report their status, the scheduler polls it.

A worker reports ``progress`` (layers done, every ``interval_s`` for as long as it is alive,
waiting included: a heartbeat, so a silent worker is a dead one), ``done`` (its output object is
written), ``error`` (the error's type and message, and the remote traceback as text: failures
travel as data), ``duplicate`` (a second invocation of a worker that already runs, or an attempt
the scheduler has replaced; it exits) or ``continued`` (near its function's time limit it
checkpointed and invoked its next attempt, which carries on from there). Each status says which
attempt of the worker sent it; the scheduler ignores attempts it has replaced.
Every status carries the wall-clock time it was sent, so the scheduler measures how late
statuses reach it (``status_lag_s``), and a tag under the run's key (:mod:`fsdgraph.integrity`):
a status whose tag does not verify (forged by whoever can write to the control queue, or
damaged) is decoded as kind ``rejected``, which the scheduler counts and otherwise ignores, so a
forged ``error`` never fails a run.

The control plane must hold at a thousand workers: the heartbeat interval grows with the worker
count (:func:`heartbeat_interval`, so all workers together send about :data:`STATUS_RATE`
statuses a second) and the scheduler polls with several concurrent receives
(:func:`pollers`).

A backend provides a :class:`ControlPlane` for each run: four small methods, nothing about
topics or queues. Backends with a message service get one for free, :class:`QueueControlPlane`
(one queue per run, JSON bodies; nothing received is ever evaluated); a backend that can call
its coordinator directly (an in-process or cluster backend) implements the four methods itself.

>>> import asyncio
>>> from fsdgraph.backends.local.queues import SpoolMessageService
>>> from fsdgraph.resources import RunNames
>>> import tempfile, pathlib
>>> async def demo():
...     messages = SpoolMessageService(pathlib.Path(tempfile.mkdtemp()), Limits())
...     control = QueueControlPlane(messages, RunNames("r1"), Limits())
...     await control.create()
...     await control.report(Status("done", worker=3, layer=120))
...     return await control.poll(wait_s=1.0)
>>> [(s.kind, s.worker, s.layer) for s in asyncio.run(demo())]
[('done', 3, 120)]
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fsdgraph.errors import MessageTooLarge, ProtocolError, TransportError
from fsdgraph.resources import RunNames
from fsdgraph.retry import retry
from fsdgraph.transport import Entry, Limits, Message, MessageService, delete_received, entry_size
from fsdgraph.wire import from_json

KINDS = ("progress", "done", "error", "duplicate", "continued", "rejected")
#: How long one poll of the scheduler waits before it checks its deadlines again, and the
#: workers' default heartbeat interval (seconds); the cost estimate counts statuses with it.
CONTROL_POLL_S = 0.5
#: ``Status.error_type`` of an invocation the backend reports failed (Lambda's on-failure
#: record of a timeout, an out-of-memory kill...): the scheduler relaunches the worker.
FUNCTION_FAILED = "FunctionFailed"
#: Heartbeats per second of all workers together that the scheduler is sized for.
STATUS_RATE = 100.0
#: Statuses one poll returns at most (one SQS receive); pollers are added to drain more.
STATUSES_PER_POLLER = 100


def heartbeat_interval(workers: int, base_s: float, stall_timeout_s: float) -> float:
    """Seconds between two heartbeats of a worker: ``base_s``, or longer once ``workers``
    workers would send more than :data:`STATUS_RATE` a second together, and always well within
    ``stall_timeout_s`` (a quarter of it), so that one lost heartbeat never fails a run.

    >>> heartbeat_interval(8, 0.5, 120.0), heartbeat_interval(1000, 0.5, 120.0)
    (0.5, 10.0)
    """
    return min(max(base_s, workers / STATUS_RATE), stall_timeout_s / 4)


def pollers(workers: int) -> int:
    """Concurrent polls the scheduler keeps open on the control plane of ``workers`` workers:
    one per :data:`STATUSES_PER_POLLER` workers, at most 8.

    >>> pollers(8), pollers(1000)
    (1, 8)
    """
    return max(1, min(8, -(-workers // STATUSES_PER_POLLER)))


@dataclass(frozen=True)
class Status:
    """One status report of a worker."""

    #: one of :data:`KINDS` (``rejected``: a message that was not an authentic status, made by
    #: the decoder only; ``message`` says why)
    kind: str
    worker: int
    layer: int  #: layers completed so far (progress/done) or the failing layer (error)
    message: str = ""
    details: str = ""
    launched_at: float = 0.0
    error_type: str = ""  #: the class name of a worker's error (RunTimeout, RunError, ...)
    sent_at: float = 0.0  #: wall clock (epoch seconds) when the status was sent
    #: Which invocation of the worker sent it (0 first; relaunches and continuations count up).
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProtocolError(f"status kind must be one of {', '.join(KINDS)}, "
                                f"got {self.kind!r}")


class ControlPlane(ABC):
    """A run's status channel, workers to scheduler (see the module docstring).

    ``report`` raises :class:`~fsdgraph.errors.TransportError` (``retryable`` when trying again
    may help); callers retry through :func:`fsdgraph.retry.retry`. ``poll`` returns each status
    at least once; a status seen twice changes nothing.
    """

    async def create(self) -> None:  # noqa: B027 - optional hook
        """Scheduler side, before any worker starts: create what the run's statuses need."""

    async def delete(self) -> None:  # noqa: B027 - optional hook
        """Scheduler side, after the run: remove it (no error if it is already gone)."""

    @abstractmethod
    async def report(self, status: Status) -> None:
        """Worker side: deliver one status to the scheduler."""

    @abstractmethod
    async def poll(self, wait_s: float) -> list[Status]:
        """Scheduler side: statuses that arrived, waiting at most ``wait_s`` for the first."""


#: The fields a status is encoded with (and its tag covers), in order.
FIELDS = tuple(f.name for f in dataclasses.fields(Status))


def _canonical(run_id: str, fields: Mapping[str, Any]) -> str:
    return json.dumps([run_id, fields], sort_keys=True)


def encode_status(names: RunNames, status: Status) -> Entry:
    """The message of a status: its fields as JSON, with their tag under the run's key."""
    fields = {name: getattr(status, name) for name in FIELDS}
    tag = names.key.tag(_canonical(names.run_id, fields))
    return Entry(json.dumps({**fields, "tag": tag}), {"run": names.run_id, "kind": status.kind})


def decode_status(names: RunNames, msg: Message) -> Status:
    """The status a message carries; kind ``rejected`` (saying why) if it is not an authentic
    status of this run. Nothing received is evaluated."""
    try:
        d = json.loads(msg.body)
    except ValueError:
        return _rejected("not JSON", msg)
    if not isinstance(d, dict) or set(d) != {*FIELDS, "tag"}:
        return _rejected("not a status", msg)
    tag = d.pop("tag")
    if not names.key.verify(tag, _canonical(names.run_id, d)):
        return _rejected("its tag does not verify", msg)
    return from_json(Status, d, "status message")  # authentic, yet malformed: a bug


def _rejected(why: str, msg: Message) -> Status:
    return Status("rejected", -1, 0, f"{why}: {msg.body[:100]!r}")


class QueueControlPlane(ControlPlane):
    """The control plane as one queue of a :class:`~fsdgraph.transport.MessageService`."""

    def __init__(self, messages: MessageService, names: RunNames, limits: Limits,
                 visibility_timeout_s: float = 30.0) -> None:
        self.messages = messages
        self.names = names
        self.limits = limits
        self.visibility_timeout_s = visibility_timeout_s

    @property
    def queue(self) -> str:
        return self.names.control_queue

    async def create(self) -> None:
        await self.messages.create_queue(
            self.queue, visibility_timeout_s=self.visibility_timeout_s,
            max_message_bytes=self.limits.max_message_bytes)

    async def delete(self) -> None:
        await self.messages.delete_queue(self.queue)

    async def report(self, status: Status) -> None:
        entry = encode_status(self.names, self._fit(status))
        result = await self.messages.send_batch(self.queue, [entry])
        if not result.ok:
            f = result.failures[0]
            raise TransportError(f"worker {status.worker}: cannot report {status.kind!r} "
                                 f"status: {f.code}: {f.message}", retryable=f.retryable)

    def _fit(self, status: Status) -> Status:
        """The status, with its traceback (then message) cut to fit one message: the end of a
        traceback says most."""
        limit = min(self.limits.max_message_bytes, self.limits.max_batch_bytes)
        while entry_size(encode_status(self.names, status)) > limit:
            if len(status.details) > 64:
                status = replace(status, details=status.details[-len(status.details) // 2:])
            elif status.details:
                status = replace(status, details="")
            elif len(status.message) > 200:
                status = replace(status, message=status.message[:200])
            else:
                raise MessageTooLarge(f"worker {status.worker}: a {status.kind!r} status does "
                                      f"not fit a message of {limit} bytes")
        return status

    async def poll(self, wait_s: float) -> list[Status]:
        messages = await self.messages.receive(
            self.queue, max_messages=self.limits.max_batch_entries, wait_s=wait_s)
        ours = [m for m in messages if m.attributes.get("run") == self.names.run_id]
        if ours:  # what stays undeleted comes back later and is folded in again, harmlessly
            await delete_received(self.messages, self.queue, [m.receipt for m in ours])
        return [decode_status(self.names, m) for m in ours]


class Reporter:
    """A worker's side of the control plane: statuses with retries, and the heartbeat."""

    def __init__(self, control: ControlPlane, worker: int, *, interval_s: float = CONTROL_POLL_S,
                 deadline_s: float = 60.0, launched_at: float = 0.0, attempt: int = 0) -> None:
        self.control = control
        self.worker = worker
        self.attempt = attempt
        self.interval_s = interval_s
        self.deadline_s = deadline_s  #: how long one status is retried before giving up
        self.launched_at = launched_at
        self.layers_done = 0  #: what the heartbeat reports; the worker advances it

    async def report(self, kind: str, layer: int, message: str = "", details: str = "",
                     error_type: str = "") -> None:
        """Send a status, retrying retryable failures until the deadline."""
        async def send() -> None:  # stamped at each try: the lag is measured from the last one
            await self.control.report(Status(kind, self.worker, layer, message, details,
                                             self.launched_at, error_type, time.time(),
                                             self.attempt))

        await retry(send, deadline_s=self.deadline_s)

    async def heartbeat(self) -> None:
        """Report progress now (the worker is up) and every ``interval_s`` until cancelled."""
        while True:
            await self.report("progress", self.layers_done)
            await asyncio.sleep(self.interval_s)
