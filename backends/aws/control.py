"""The AWS backend's control plane: the run's status queue, and Lambda's records of the
invocations that failed.

A worker reports its own errors (:class:`~fsdgraph.control.QueueControlPlane`). One that cannot
(its function timed out or ran out of memory, its runtime could not start, its event expired
before it ran) says nothing, and the scheduler would only find it silent after the stall
timeout. Lambda knows at once, though: ``fsdgraph deploy`` makes the deployment's failures queue
the function's on-failure destination, and Lambda sends it a record of each failed invocation::

    {"version": "1.0", "timestamp": "...",
     "requestContext": {"requestId": "...", "functionArn": "...",
                        "condition": "RetriesExhausted", "approximateInvokeCount": 1},
     "requestPayload": {<the invocation event: run_id, worker, ...>},
     "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
     "responsePayload": {"errorType": "...", "errorMessage": "...", "stackTrace": [...]}}

:class:`AwsControlPlane` reads that queue beside the run's own. Every deployment's runs share
it, so a record is sorted by its event's ``run_id``: one of this run becomes an ``error`` status
of its worker (``error_type`` :data:`FUNCTION_FAILED`) and is deleted; one of another run is left
alone (it is visible to the other runs' schedulers again after the queue's visibility timeout);
one that is not a record of a worker's event (malformed) is deleted and ignored.

Only the scheduler polls: a worker's description of the session does not name the failures
queue, and a worker's control plane has none.

>>> run, status = failure_status(json.dumps({
...     "requestContext": {"condition": "RetriesExhausted"},
...     "requestPayload": {"run_id": "r1", "worker": 3},
...     "responsePayload": {"errorType": "Runtime.ExitError", "errorMessage": "signal: killed"}}))
>>> run, status.kind, status.worker, status.error_type
('r1', 'error', 3, 'FunctionFailed')
>>> status.message
'the function invocation of worker 3 failed: Runtime.ExitError: signal: killed'
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fsdgraph.control import FUNCTION_FAILED, QueueControlPlane, Status
from fsdgraph.errors import NotFound, ProtocolError, TransportError
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits, Message, MessageService, delete_received

__all__ = ["FUNCTION_FAILED", "AwsControlPlane", "failure_status"]

#: One receive on the failures queue long-polls this long (SQS's longest): records are rare, so
#: the queue costs about three requests a minute while none comes.
FAILURES_WAIT_S = 20.0
#: A record's error message is cut to this many characters (a status must fit one message).
MAX_ERROR_CHARS = 1000


class AwsControlPlane(QueueControlPlane):
    """The run's status queue, plus the deployment's ``failures_queue`` (None: none is read; a
    worker's control plane). See the module docstring."""

    def __init__(self, messages: MessageService, names: RunNames, limits: Limits,
                 failures_queue: str | None = None, visibility_timeout_s: float = 30.0) -> None:
        super().__init__(messages, names, limits, visibility_timeout_s)
        self.failures_queue = failures_queue
        #: The receive on the failures queue in flight, if any. It outlives one ``poll`` (whose
        #: wait is short) so that the failures queue adds no latency to the run's statuses.
        self._failures: asyncio.Future[list[Message]] | None = None

    async def poll(self, wait_s: float) -> list[Status]:
        """The run's statuses, and an error status for each record of this run's failed
        invocations that arrived meanwhile. Safe to call concurrently."""
        self._watch_failures()
        statuses = await super().poll(wait_s)
        task = self._failures
        if task is not None and task.done():
            self._failures = None  # before any await: one concurrent poll takes the records
            statuses += await self._failed(task)
        return statuses

    def _watch_failures(self) -> None:
        if self.failures_queue is not None and self._failures is None:
            self._failures = asyncio.ensure_future(self.messages.receive(
                self.failures_queue, max_messages=min(10, self.limits.max_batch_entries),
                wait_s=FAILURES_WAIT_S))

    async def _failed(self, task: asyncio.Future[list[Message]]) -> list[Status]:
        """Error statuses of this run's records among what ``task`` received; those and the
        malformed ones are deleted, other runs' records left for their schedulers."""
        queue = self.failures_queue
        try:
            received = task.result()
        except NotFound:
            # A deployment made before it had a failures queue: only the stall timeout then
            # finds a worker that could not report.
            self.failures_queue = None
            return []
        except TransportError as exc:
            if not exc.retryable:  # e.g. not allowed to read it: as if there were none
                self.failures_queue = None
            return []  # a passing failure: the next poll receives again
        if queue is None:  # stopped meanwhile
            return []
        ours: list[Status] = []
        done: list[str] = []
        for message in received:
            try:
                run, status = failure_status(message.body)
            except ProtocolError:
                done.append(message.receipt)
                continue
            if run == self.names.run_id:
                ours.append(status)
                done.append(message.receipt)
        if done:  # what stays undeleted comes back and is folded in again, harmlessly
            await delete_received(self.messages, queue, done)
        return ours

    async def stop(self) -> None:
        """Stop reading the failures queue (idempotent); the run's own queue is untouched."""
        task, self._failures = self._failures, None
        if task is not None:
            task.cancel()
            # Its outcome (cancelled, or an error it had already) is of no use any more.
            await asyncio.gather(task, return_exceptions=True)

    async def delete(self) -> None:
        await self.stop()
        await super().delete()


def failure_status(body: str) -> tuple[str, Status]:
    """The run id and the error status of worker ``requestPayload.worker`` in Lambda's record
    ``body`` of a failed invocation; ProtocolError if it is not the record of a worker's event."""
    try:
        record = json.loads(body)
        payload = record["requestPayload"]
        run_id, worker = payload["run_id"], payload["worker"]
        if not isinstance(run_id, str) or not isinstance(worker, int) \
                or isinstance(worker, bool):
            raise TypeError("run_id must be a string and worker an integer")
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed invocation record {body[:200]!r}: {exc}") from exc
    error_type, error_message, trace = _cause(record)
    return run_id, Status(
        "error", worker=worker, layer=0,
        message=f"the function invocation of worker {worker} failed: {error_type}: "
                f"{error_message[:MAX_ERROR_CHARS]}",
        details=trace, error_type=FUNCTION_FAILED, attempt=_attempt(payload))


def _attempt(payload: dict[str, Any]) -> int:
    """The attempt of the worker's event (0 for an event without one)."""
    attempt = payload.get("attempt", 0)
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0


def _cause(record: dict[str, Any]) -> tuple[str, str, str]:
    """Lambda's error type, message and stack trace in ``record`` (what it has of them)."""
    context = record.get("requestContext")
    condition = str(context.get("condition", "")) if isinstance(context, dict) else ""
    response = record.get("responsePayload")
    if isinstance(response, dict) and (response.get("errorType") or response.get("errorMessage")):
        trace = response.get("stackTrace")
        lines = "".join(str(line) for line in trace) if isinstance(trace, list) else ""
        return (str(response.get("errorType") or "Error"), str(response.get("errorMessage", "")),
                lines)
    if condition == "EventAgeExceeded":
        return condition, "the event was never run: it waited longer than the function's " \
                          "maximum event age", ""
    return condition or "Unknown", "Lambda gave no reason", ""
