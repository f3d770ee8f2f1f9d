"""Handler executions for :mod:`fsdgraph.testing.lambda_endpoint`, under the account's
concurrency quota.

An execution is one handler process: a RequestResponse invocation's, or one attempt of an Event
invocation (its retries and duplicates are executions of their own). :class:`Executions` starts
each one warm (forked by a zygote, :mod:`fsdgraph.testing.lambda_zygote`) or cold
(:class:`~fsdgraph.testing.lambda_runtime.ColdProcess`), runs it to its :class:`Outcome`, logs how
it ended and completes its log file; :func:`invocation_response` is what Lambda answers for that
outcome.

At most ``quotas.lambda_concurrency`` executions hold a slot at once, from the moment they are
admitted until they end (Lambda's "Concurrent executions"). A RequestResponse invocation takes a
free slot or is refused with 429 (:meth:`Executions.run`); Event invocations wait for one in
:class:`~fsdgraph.testing.lambda_async.EventQueue`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fsdgraph.quotas import Quotas
from fsdgraph.testing.lambda_functions import ApiError, Function
from fsdgraph.testing.lambda_runtime import (
    FUNCTION_ERROR_STATUS,
    ColdProcess,
    LaunchError,
    Process,
    describe_exit,
)
from fsdgraph.testing.lambda_zygote import ForkedProcess, ZygotePool

__all__ = ["Execution", "Executions", "Outcome", "invocation_response"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How one execution ended."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration_s: float
    #: Why no process could be started (the other fields then say nothing).
    launch_error: str | None = None


@dataclass(eq=False)
class Execution:
    """One handler process: an invocation's (or an Event's retry or duplicate)."""

    id: int
    function: Function
    request_id: str
    seq: int
    payload: bytes
    invocation_type: str
    log_path: Path | None
    #: The event when it is a JSON object (what kill requests match), else None.
    event: Mapping[str, Any] | None
    process: Process | None = None
    killed: bool = False
    started: float = field(default_factory=time.monotonic)

    def kill(self) -> None:
        self.killed = True
        if self.process is not None:
            self.process.kill()


def event_object(payload: bytes) -> Mapping[str, Any] | None:
    """The payload as a JSON object, or None if it is not one."""
    try:
        event = json.loads(payload) if payload.strip() else {}
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def event_matches(event: Mapping[str, Any] | None, match: Mapping[str, Any]) -> bool:
    """Whether ``event`` is an object with every member of ``match``."""
    return event is not None and all(k in event and event[k] == v for k, v in match.items())


class Executions:
    """The executions of one server: started, running, and the concurrency slots they hold.

    ``log_dir`` receives one log file per execution; ``warm`` forks executions from zygotes rather
    than starting fresh interpreters.
    """

    def __init__(self, quotas: Quotas, *, log_dir: Path | None, warm: bool) -> None:
        self.quotas = quotas
        self.log_dir = log_dir
        self.warm = warm
        #: Guards the state below. The event queue holds it too, so that taking a slot and
        #: starting a queued event are one step.
        self.lock = threading.Lock()
        #: Set by :meth:`close`: nothing new is admitted.
        self.closed = False
        #: Invocations accepted, per function (by name).
        self.invocations: Counter[str] = Counter()
        #: Processes started per function, retries and duplicates included: the log files' seq.
        self.started: Counter[str] = Counter()
        #: Executions holding one of the quotas.lambda_concurrency slots (starting, running).
        self.busy = 0
        #: Called, lock held, each time a slot frees: the event queue starts what waits for one.
        self.slot_freed: Callable[[], None] = lambda: None
        self.zygotes = ZygotePool()
        self._ids = itertools.count(1)
        self._running: dict[int, Execution] = {}

    # -- slots -------------------------------------------------------------------------------------
    def try_take_slot(self) -> bool:
        """Take a free slot if there is one (the caller holds :attr:`lock`)."""
        if self.busy >= self.quotas.lambda_concurrency:
            return False
        self.busy += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        with self.lock:
            self.busy -= 1
            self.slot_freed()

    def run(self, function: Function, payload: bytes, request_id: str,
            max_response_bytes: int) -> tuple[bytes, bool, bytes]:
        """A RequestResponse invocation: its response body, whether it is a function error, and
        its log. 429 when every slot is taken."""
        with self.lock:
            if self.closed:
                raise ApiError(500, "ServiceException", "the invoke server is shutting down")
            if not self.try_take_slot():
                raise ApiError(429, "TooManyRequestsException", "Rate Exceeded.",
                               {"Reason": "ConcurrentInvocationLimitExceeded"})
            self.invocations[function.name] += 1
        try:
            execution = self.new(function, payload, request_id, "RequestResponse")
            outcome = self.execute(execution)
        finally:
            self.release()
        if outcome.launch_error is not None:
            raise ApiError(500, "ServiceException", outcome.launch_error)
        body, failed = invocation_response(outcome, function, request_id, max_response_bytes)
        logs = outcome.stderr
        if outcome.timed_out:
            logs += _timeout_line(execution).encode() + b"\n"
        return body, failed, logs

    # -- one execution -----------------------------------------------------------------------------
    def new(self, function: Function, payload: bytes, request_id: str,
            invocation_type: str) -> Execution:
        """An execution of ``function`` on ``payload``, numbered, with its log file's path."""
        with self.lock:
            seq = self.started[function.name] = self.started[function.name] + 1
        log_path = None
        if self.log_dir is not None:
            log_path = self.log_dir / f"{function.name}-{seq}-{request_id}.log"
        return Execution(next(self._ids), function, request_id, seq, payload, invocation_type,
                         log_path, event_object(payload))

    def execute(self, execution: Execution) -> Outcome:
        """Run one execution to its end (the caller holds a slot for it)."""
        f = execution.function
        log.info("%s #%d (%s): %s execution started", f.name, execution.seq,
                 execution.request_id, execution.invocation_type)
        try:
            process, deadline = self._start_process(execution)
        except LaunchError as exc:
            outcome = Outcome(-1, b"", b"", False, time.monotonic() - execution.started,
                              launch_error=str(exc))
            self._record(execution, outcome)
            return outcome
        with self.lock:
            execution.process = process
            self._running[execution.id] = execution
            closing = self.closed
        if closing:
            process.kill()
        try:
            returncode, stdout, stderr, timed_out = process.finish(execution.payload, deadline)
        finally:
            with self.lock:
                self._running.pop(execution.id, None)
        outcome = Outcome(returncode, stdout, stderr, timed_out,
                          time.monotonic() - execution.started)
        self._record(execution, outcome)
        return outcome

    def _start_process(self, execution: Execution) -> tuple[Process, float]:
        """Start the handler; returns it and its deadline (:func:`time.monotonic`)."""
        function = execution.function
        # An Event execution's stderr streams into its log file; a RequestResponse one's is
        # returned with LogType=Tail, so it is read through a pipe.
        log_file: IO[bytes] | None = None
        if execution.invocation_type == "Event":
            log_file = open(execution.log_path or os.devnull, "ab")  # noqa: SIM115
        try:
            if self.warm:
                zygote = self.zygotes.lease(function)
                try:
                    # The Timeout counts from the fork.
                    deadline = time.monotonic() + function.timeout_s
                    env = function.invocation_environment(execution.request_id,
                                                          time.time() + function.timeout_s)
                    return (ForkedProcess(zygote, env, log_file.fileno() if log_file else None),
                            deadline)
                finally:
                    self.zygotes.release(zygote)
            # The Timeout counts from the process start: interpreter start-up and imports too.
            deadline = time.monotonic() + function.timeout_s
            env = {**function.base_environment(),
                   **function.invocation_environment(execution.request_id,
                                                     time.time() + function.timeout_s)}
            return ColdProcess(function.handler, env, log_file or subprocess.PIPE), deadline
        finally:
            if log_file is not None:
                log_file.close()

    def _record(self, execution: Execution, outcome: Outcome) -> None:
        """Log how the execution ended, and complete its log file."""
        f = execution.function
        what = f"{f.name} #{execution.seq} ({execution.request_id})"
        if outcome.launch_error is not None:
            log.error("%s: %s", what, outcome.launch_error)
        elif outcome.timed_out:
            log.warning("%s: timed out after %d s; killed", what, f.timeout_s)
        elif outcome.returncode == 0:
            log.info("%s: finished in %.2f s", what, outcome.duration_s)
        else:
            log.warning("%s: failed after %.2f s (%s)", what, outcome.duration_s,
                        describe_exit(outcome.returncode))
        if execution.log_path is not None:
            with open(execution.log_path, "ab") as log_file:
                # An Event's stderr is in the file already; its result follows, as it did when
                # the result went to stdout, which was the file.
                event = execution.invocation_type == "Event"
                log_file.write(outcome.stdout if event else outcome.stderr)
                if outcome.launch_error is not None:
                    log_file.write(f"[ERROR] {outcome.launch_error}\n".encode())
                if outcome.timed_out:
                    log_file.write(_timeout_line(execution).encode() + b"\n")

    # -- the running ones --------------------------------------------------------------------------
    def describe_running(self) -> list[dict[str, Any]]:
        """Function, request id and pid of each execution running (the caller holds
        :attr:`lock`)."""
        return [{"functionName": e.function.name, "requestId": e.request_id,
                 "pid": e.process.pid if e.process is not None else None}
                for e in self._running.values()]

    def kill(self, match: Mapping[str, Any]) -> list[tuple[str, str]]:
        """SIGKILL the running executions whose event has every member of ``match``; returns
        their (function name, request id)."""
        with self.lock:
            chosen = [e for e in self._running.values()
                      if e.process is not None and event_matches(e.event, match)]
        for execution in chosen:
            log.warning("%s #%d (%s): killed on request", execution.function.name, execution.seq,
                        execution.request_id)
            execution.kill()
        return [(e.function.name, e.request_id) for e in chosen]

    def close(self) -> list[Execution]:
        """Admit nothing more; returns the executions running, for the caller to kill (an
        execution that starts after this is killed as it starts)."""
        with self.lock:
            self.closed = True
            return list(self._running.values())


def invocation_response(outcome: Outcome, function: Function, request_id: str,
                        max_bytes: int) -> tuple[bytes, bool]:
    """What Lambda answers for the execution: the response body, and whether it is a function
    error."""
    if outcome.launch_error is not None:
        return _error_body("Runtime.Unknown",
                           f"RequestId: {request_id} Error: {outcome.launch_error}",
                           request_id), True
    if outcome.timed_out:
        return _error_body("Sandbox.Timedout",
                           f"RequestId: {request_id} Error: {_timeout_message(function)}",
                           request_id), True
    if outcome.returncode in (0, FUNCTION_ERROR_STATUS):
        try:
            value = json.loads(outcome.stdout)
        except ValueError:
            pass
        else:
            if outcome.returncode == 0:
                if len(outcome.stdout) > max_bytes:
                    return _error_body(
                        "Function.ResponseSizeTooLarge",
                        "Response payload size exceeded maximum allowed payload size "
                        f"({max_bytes} bytes).", request_id), True
                return outcome.stdout, False
            if isinstance(value, dict) and "errorType" in value:
                return outcome.stdout, True
    return _error_body("Runtime.ExitError",
                       f"RequestId: {request_id} Error: Runtime exited with error: "
                       f"{describe_exit(outcome.returncode)}", request_id), True


def _error_body(error_type: str, message: str, request_id: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type,
                       "requestId": request_id, "stackTrace": []}).encode()


def _timeout_message(function: Function) -> str:
    return f"Task timed out after {function.timeout_s:.2f} seconds"


def _timeout_line(execution: Execution) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{stamp} {execution.request_id} {_timeout_message(execution.function)}"
