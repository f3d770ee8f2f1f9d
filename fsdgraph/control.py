"""Status messages from workers to the scheduler, over the run's control queue.

A worker reports ``progress`` (layers done, every ``progress_interval_s`` for as long as it is
alive, waiting included: a heartbeat, so a silent worker is a dead one), ``done`` (its output
object is written) or ``error`` (the error's type and message, and the remote traceback as text:
failures travel as data). Bodies are JSON; nothing received is ever evaluated.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

from fsdgraph.errors import ProtocolError, TransportError
from fsdgraph.transport import Entry, Message, MessageService

KINDS = ("progress", "done", "error")


@dataclass(frozen=True)
class Status:
    kind: str
    worker: int
    layer: int  #: layers completed so far (progress/done) or the failing layer (error)
    message: str = ""
    details: str = ""
    launched_at: float = 0.0
    error_type: str = ""  #: the class name of a worker's error (RunTimeout, RunError, ...)


def encode_status(run_id: str, status: Status) -> Entry:
    body = json.dumps({"kind": status.kind, "worker": status.worker, "layer": status.layer,
                       "message": status.message, "details": status.details,
                       "launched_at": status.launched_at, "error_type": status.error_type})
    return Entry(body, {"run": run_id, "kind": status.kind})


def decode_status(msg: Message) -> Status:
    try:
        d: dict[str, Any] = json.loads(msg.body)
        return Status(str(d["kind"]), int(d["worker"]), int(d["layer"]), str(d["message"]),
                      str(d["details"]), float(d["launched_at"]), str(d.get("error_type", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed status message {msg.body[:200]!r}") from exc


class Reporter:
    """A worker's side of the control queue."""

    def __init__(self, messages: MessageService, queue: str, run_id: str, worker: int,
                 interval_s: float = 0.5) -> None:
        self.messages, self.queue, self.run_id, self.worker = messages, queue, run_id, worker
        self.interval_s = interval_s
        self.launched_at = 0.0
        self.layers_done = 0  #: what the heartbeat reports; the worker advances it

    async def report(self, kind: str, layer: int, message: str = "", details: str = "",
                     error_type: str = "") -> None:
        """Send a status; a traceback too long for the queue is cut (its end says most)."""
        delay = 0.01
        while True:
            status = Status(kind, self.worker, layer, message, details, self.launched_at,
                            error_type)
            result = await self.messages.send_batch(self.queue,
                                                    [encode_status(self.run_id, status)])
            if result.ok:
                return
            failure = result.failures[0]
            if failure.retryable:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, 1.0)
                continue
            if not details and len(message) <= 200:
                raise TransportError(f"worker {self.worker}: cannot report {kind!r} status: "
                                     f"{failure.code}: {failure.message}")
            details = details[-len(details) // 2:] if len(details) > 64 else ""
            message = message[:200]

    async def heartbeat(self) -> None:
        """Report progress now (the worker is up) and every ``interval_s`` until cancelled."""
        while True:
            await self.report("progress", self.layers_done)
            await asyncio.sleep(self.interval_s)
