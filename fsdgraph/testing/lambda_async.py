"""Asynchronous (``Event``) invocations for :mod:`fsdgraph.testing.lambda_endpoint`: the queue
that waits for a concurrency slot, retries, expiry, and the invocation records sent to on-failure
destinations.

An accepted Event waits in a first-in first-out queue until one of the account's concurrency
slots (:class:`~fsdgraph.testing.lambda_executions.Executions`) is free, as Lambda queues throttled
asynchronous events; with ``duplicate_events`` it is queued twice, one request id for both, as
Lambda's at-least-once delivery may do. A test may hold the events that match a pattern
(:meth:`EventQueue.hold`) and release them later, as a busy Lambda may start one function's event
long after another's.

An execution fails when its handler raises, times out or its process dies. Then, as on Lambda, the
event is retried ``MaximumRetryAttempts`` times (2 for a function without an event invoke
configuration), ``retry_delay_s`` after each failure (Lambda waits about one, then two minutes),
and an event that has waited longer than ``MaximumEventAgeInSeconds`` is dropped instead of
started. An event given up sends Lambda's invocation record (:func:`invocation_record`) to the
function's ``DestinationConfig.OnFailure.Destination`` if that is an SQS queue or an SNS topic,
through moto. An execution that the server's close killed did not fail: it is neither retried nor
reported.

The configuration is what moto stores (PutFunctionEventInvokeConfig), read at each failure. moto
appends every Put/UpdateFunctionEventInvokeConfig and keeps answering the first, so
:func:`replace_event_invoke_config` clears the stored one before a new one goes to moto, merging an
Update into the current configuration as Lambda's Update does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from fsdgraph.testing.lambda_executions import (
    Executions,
    Outcome,
    event_matches,
    event_object,
    invocation_response,
)
from fsdgraph.testing.lambda_functions import ApiError, Function, Upstream

__all__ = ["Delivery", "EventConfig", "EventQueue", "invocation_record",
           "replace_event_invoke_config"]

log = logging.getLogger(__name__)

#: Lambda's defaults for a function without an event invoke configuration, and the least
#: MaximumEventAgeInSeconds it accepts (a younger event cannot have expired).
DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_MAX_EVENT_AGE_S = 6 * 3600
MIN_MAX_EVENT_AGE_S = 60
#: The fields of an event invoke configuration that Update merges.
EVENT_INVOKE_CONFIG_FIELDS = ("MaximumRetryAttempts", "MaximumEventAgeInSeconds",
                              "DestinationConfig")


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventConfig:
    """A function's asynchronous invocation settings (GetFunctionEventInvokeConfig)."""

    max_retries: int = DEFAULT_RETRY_ATTEMPTS
    max_age_s: float = DEFAULT_MAX_EVENT_AGE_S
    on_failure: str | None = None

    @classmethod
    def from_response(cls, response: Mapping[str, Any]) -> EventConfig:
        retries = response.get("MaximumRetryAttempts")
        age = response.get("MaximumEventAgeInSeconds")
        on_failure = ((response.get("DestinationConfig") or {}).get("OnFailure") or {})
        return cls(max_retries=DEFAULT_RETRY_ATTEMPTS if retries is None else int(retries),
                   max_age_s=DEFAULT_MAX_EVENT_AGE_S if age is None else float(age),
                   on_failure=on_failure.get("Destination") or None)

    @classmethod
    def read(cls, upstream: Upstream, function: Function) -> EventConfig:
        """The function's settings, from moto (Lambda's defaults without any)."""
        try:
            response = upstream.client("lambda", function.region).get_function_event_invoke_config(
                FunctionName=function.name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                log.warning("%s: GetFunctionEventInvokeConfig failed (%s); using Lambda's "
                            "defaults", function.name, exc)
            return cls()
        except BotoCoreError as exc:
            log.warning("%s: GetFunctionEventInvokeConfig failed (%s); using Lambda's defaults",
                        function.name, exc)
            return cls()
        return cls.from_response(response)


def replace_event_invoke_config(upstream: Upstream, name: str, region: str, body: bytes,
                                merge: bool) -> bytes:
    """Clear the function's stored event invoke configuration before a new one is put (moto
    would append it), and with ``merge`` (Update) return the request body merged into the current
    configuration, as Lambda's Update does."""
    client = upstream.client("lambda", region)
    if merge:
        try:
            current = client.get_function_event_invoke_config(FunctionName=name)
        except ClientError:
            current = {}
        update = json.loads(body or b"{}")
        merged = {k: update.get(k, current.get(k)) for k in EVENT_INVOKE_CONFIG_FIELDS}
        body = json.dumps({k: v for k, v in merged.items() if v is not None}).encode()
    with contextlib.suppress(ClientError):
        client.delete_function_event_invoke_config(FunctionName=name)
    return body


# -- records ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class Delivery:
    """One Event invocation (or a duplicate of it) through its attempts."""

    function: Function
    request_id: str
    payload: bytes
    accepted: float = field(default_factory=time.monotonic)
    attempts: int = 0

    @property
    def event(self) -> Any:
        return json.loads(self.payload) if self.payload.strip() else {}


def invocation_record(delivery: Delivery, condition: str,
                      response: bytes | None) -> dict[str, Any]:
    """Lambda's record of an asynchronous invocation that failed, for its on-failure
    destination."""
    now = datetime.now(UTC)
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "requestContext": {"requestId": delivery.request_id,
                           "functionArn": delivery.function.executed_arn,
                           "condition": condition,
                           "approximateInvokeCount": delivery.attempts},
        "requestPayload": delivery.event,
    }
    if response is not None:
        record["responseContext"] = {"statusCode": 200,
                                     "executedVersion": delivery.function.version,
                                     "functionError": "Unhandled"}
        record["responsePayload"] = json.loads(response)
    return record


def _send_record(upstream: Upstream, destination: str, record: Mapping[str, Any]) -> None:
    """Send an invocation record to an SQS queue or SNS topic ARN, through moto."""
    parts = destination.split(":")
    service = parts[2] if len(parts) >= 6 else ""
    body = json.dumps(record)
    try:
        if service == "sqs":
            sqs = upstream.client("sqs", parts[3])
            url = sqs.get_queue_url(QueueName=parts[5],
                                    QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
            sqs.send_message(QueueUrl=url, MessageBody=body)
        elif service == "sns":
            upstream.client("sns", parts[3]).publish(TopicArn=destination, Message=body)
        else:
            log.warning("destination %s: only SQS queues and SNS topics are served; record "
                        "dropped", destination)
            return
    except (ClientError, BotoCoreError) as exc:
        # Lambda counts these as DestinationDeliveryFailures.
        log.warning("sending the invocation record to %s failed: %s", destination, exc)
        return
    log.info("%s (%s): %s record sent to %s", record["requestContext"]["functionArn"],
             record["requestContext"]["requestId"], record["requestContext"]["condition"],
             destination)


# -- the queue -------------------------------------------------------------------------------------
class EventQueue:
    """The Event invocations accepted and not yet started, each started in a thread of its own
    when a slot of ``executions`` frees; their retries and on-failure records.

    ``max_event_bytes`` bounds an Event execution's result, as it bounds the payload.
    """

    def __init__(self, executions: Executions, upstream: Upstream, *, retry_delay_s: float,
                 max_event_bytes: int, duplicate_events: bool) -> None:
        self.retry_delay_s = retry_delay_s
        self.max_event_bytes = max_event_bytes
        self.duplicate_events = duplicate_events
        self._executions = executions
        self._upstream = upstream
        # The executions' lock: a freed slot goes to the first event waiting, in the same step.
        self._lock = executions.lock
        self._queue: deque[Delivery] = deque()
        self._holds: list[dict[str, Any]] = []  # events matching one of these wait in _held
        self._held: list[Delivery] = []
        self._threads: set[threading.Thread] = set()
        self._timers: set[threading.Timer] = set()
        executions.slot_freed = self._dispatch

    @property
    def queued(self) -> int:
        """How many deliveries wait for a slot."""
        return len(self._queue)

    @property
    def held(self) -> int:
        """How many deliveries are held (:meth:`hold`)."""
        return len(self._held)

    def hold(self, match: Mapping[str, Any]) -> None:
        """Keep the Event invocations accepted from now on whose event has every member of
        ``match`` from starting, until :meth:`release` of the same ``match``."""
        with self._lock:
            self._holds.append(dict(match))

    def release(self, match: Mapping[str, Any]) -> int:
        """End the hold of ``match``: what it held and no other hold holds is queued to start;
        returns how many deliveries that is."""
        with self._lock:
            if dict(match) in self._holds:
                self._holds.remove(dict(match))
            still = [d for d in self._held if self._is_held(d)]
            freed = [d for d in self._held if not self._is_held(d)]
            self._held = still
            self._queue.extend(freed)
            self._dispatch()
        return len(freed)

    def _is_held(self, delivery: Delivery) -> bool:
        event = event_object(delivery.payload)
        return any(event_matches(event, match) for match in self._holds)

    def accept(self, function: Function, payload: bytes, request_id: str) -> None:
        """Queue an Event invocation (twice with duplicate_events); it starts when a slot frees."""
        copies = 2 if self.duplicate_events else 1
        with self._lock:
            if self._executions.closed:
                raise ApiError(500, "ServiceException", "the invoke server is shutting down")
            self._executions.invocations[function.name] += 1
            deliveries = [Delivery(function, request_id, payload) for _ in range(copies)]
            (self._held if self._is_held(deliveries[0]) else self._queue).extend(deliveries)
            self._dispatch()
        log.info("%s (%s): Event invocation accepted", function.name, request_id)

    def close(self) -> None:
        """Drop the deliveries waiting, and the retries not yet due."""
        with self._lock:
            self._queue.clear()
            self._held.clear()
            timers = list(self._timers)
            self._timers.clear()
        for timer in timers:
            timer.cancel()

    def join(self, timeout_s: float) -> None:
        """Wait for the deliveries under way, up to ``timeout_s`` each."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout_s)

    def _dispatch(self) -> None:
        """Start queued deliveries while slots are free (the lock is held)."""
        while self._queue and not self._executions.closed and self._executions.try_take_slot():
            delivery = self._queue.popleft()
            thread = threading.Thread(target=self._deliver, args=(delivery,),
                                      name=f"invoke-{delivery.function.name}", daemon=True)
            self._threads.add(thread)
            thread.start()

    def _requeue(self, delivery: Delivery) -> None:
        with self._lock:
            self._timers.discard(cast(threading.Timer, threading.current_thread()))
            if not self._executions.closed:
                self._queue.append(delivery)
                self._dispatch()

    def _deliver(self, delivery: Delivery) -> None:
        """One attempt at an Event delivery, in its own thread holding a slot; then, if it
        failed, its retry or its on-failure record."""
        executions = self._executions
        try:
            config: EventConfig | None = None
            outcome: Outcome | None = None
            try:
                # An event younger than the least MaximumEventAgeInSeconds cannot have expired:
                # only an old one costs a lookup.
                if time.monotonic() - delivery.accepted >= MIN_MAX_EVENT_AGE_S:
                    config = EventConfig.read(self._upstream, delivery.function)
                if config is None or time.monotonic() - delivery.accepted <= config.max_age_s:
                    delivery.attempts += 1
                    execution = executions.new(delivery.function, delivery.payload,
                                               delivery.request_id, "Event")
                    outcome = executions.execute(execution)
            finally:
                executions.release()
            if outcome is None:
                self._discard(delivery, "EventAgeExceeded", None, cast(EventConfig, config))
                return
            answer, failed = invocation_response(outcome, delivery.function,
                                                 delivery.request_id, self.max_event_bytes)
            # An execution that close() killed did not fail: nothing to retry or report.
            if not failed or executions.closed:
                return
            config = EventConfig.read(self._upstream, delivery.function)
            if delivery.attempts <= config.max_retries:
                self._retry_later(delivery, config)
            else:
                self._discard(delivery, "RetriesExhausted", answer, config)
        except Exception:
            log.exception("%s (%s): delivering the event failed", delivery.function.name,
                          delivery.request_id)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _retry_later(self, delivery: Delivery, config: EventConfig) -> None:
        with self._lock:
            if self._executions.closed:
                return
            timer = threading.Timer(self.retry_delay_s, self._requeue, args=(delivery,))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()
        log.info("%s (%s): retry %d of %d in %g s", delivery.function.name, delivery.request_id,
                 delivery.attempts, config.max_retries, self.retry_delay_s)

    def _discard(self, delivery: Delivery, condition: str, response: bytes | None,
                 config: EventConfig) -> None:
        """The event is given up: its record goes to the on-failure destination, if any."""
        log.warning("%s (%s): event discarded after %d attempts (%s)", delivery.function.name,
                    delivery.request_id, delivery.attempts, condition)
        if config.on_failure is not None:
            _send_record(self._upstream, config.on_failure,
                         invocation_record(delivery, condition, response))
