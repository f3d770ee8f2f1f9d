"""A local endpoint for AWS Lambda's ``Invoke`` that runs Python handlers as local processes, in
front of a moto server that holds everything else.

moto stores Lambda functions (CreateFunction, GetFunction, DeleteFunction,
PutFunctionEventInvokeConfig, ...) but can only run them in Docker. Point botocore's ``lambda``
endpoint at an :class:`InvokeServer` instead: every request it does not answer itself is proxied
verbatim to the upstream moto server, so functions are created and configured there as usual;
``POST /2015-03-31/functions/{FunctionName}/invocations`` looks the function up in moto (handler,
timeout, memory size, environment variables) and runs its handler here::

    python -m fsdgraph.testing.moto_quotas -H 127.0.0.1 -p 5000 &
    python -m fsdgraph.testing.lambda_endpoint --upstream http://127.0.0.1:5000 \\
        --port 5001 --log-dir /tmp/invocations
    # prints "listening on http://127.0.0.1:5001"; SIGTERM or Ctrl-C stops it
    AWS_ENDPOINT_URL_LAMBDA=http://127.0.0.1:5001 python my_client.py

or in-process: ``with InvokeServer("http://127.0.0.1:5000") as server: ... server.url ...``.

Invocation types follow Lambda: ``RequestResponse`` (the default) waits and answers 200 with the
handler's JSON result, or 200 with ``X-Amz-Function-Error: Unhandled`` and Lambda's
``{"errorMessage", "errorType", "stackTrace"}`` body when the handler raised, timed out or its
process died; ``Event`` answers 202 at once and lets the handler run; ``DryRun`` answers 204.
Errors use Lambda's codes (``ResourceNotFoundException``, ``RequestEntityTooLargeException``,
``InvalidRequestContentException``, ...), so botocore raises the same exceptions as against AWS.

**Concurrency.** At most ``quotas.lambda_concurrency`` handlers run at once (the account's
"Concurrent executions"; ``quotas`` default to :func:`~fsdgraph.quotas.load_quotas` of the
environment). A RequestResponse invocation beyond it is refused with HTTP 429
``TooManyRequestsException`` (Reason ``ConcurrentInvocationLimitExceeded``); an Event invocation
is accepted and waits in a first-in first-out queue until an execution ends, as Lambda queues
throttled asynchronous events. GetAccountSettings (``GET /2016-08-19/account-settings``) is
answered here: ``ConcurrentExecutions`` is the quota, ``UnreservedConcurrentExecutions`` the quota
minus the functions' reserved concurrency (PutFunctionConcurrency goes to moto, which stores it).
Reserved concurrency is reported, not enforced per function.

**Asynchronous failures.** An Event execution fails when its handler raises, times out or its
process dies (killed, out of memory). As on Lambda, it is retried ``MaximumRetryAttempts`` times
(PutFunctionEventInvokeConfig, stored by moto; 2 for a function without one), each retry
``retry_delay_s`` after the failure (Lambda waits about one, then two minutes), and an event that
has waited longer than ``MaximumEventAgeInSeconds`` is dropped instead of started. Then, if the
function's ``DestinationConfig.OnFailure.Destination`` is an SQS queue or an SNS topic, Lambda's
invocation record is sent there through moto::

    {"version": "1.0", "timestamp": "2026-01-01T12:00:00.000Z",
     "requestContext": {"requestId": "...", "functionArn": "arn:aws:lambda:...:function:f:$LATEST",
                        "condition": "RetriesExhausted", "approximateInvokeCount": 1},
     "requestPayload": {...the event...},
     "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                         "functionError": "Unhandled"},
     "responsePayload": {"errorMessage": "...", "errorType": "...", "stackTrace": [...]}}

(``"condition": "EventAgeExceeded"`` for a dropped event). The response payload is what a
RequestResponse invocation would have answered: the handler's error object, ``Sandbox.Timedout``,
or ``Runtime.ExitError`` ("Runtime exited with error: signal: killed"). OnSuccess destinations and
dead-letter queues are not served. moto appends every Put/UpdateFunctionEventInvokeConfig and keeps
answering the first, so the server replaces the stored configuration itself (an Update merges into
the current one, as Lambda's does).

**Test controls**, under ``/_fsdgraph/`` (never an AWS path): ``POST /_fsdgraph/kill`` with
``{"match": {"worker": 3}}`` SIGKILLs every running execution whose event is a JSON object with
all those members, and answers ``{"killed": [{"functionName": ..., "requestId": ...}, ...]}``
(in-process: :meth:`InvokeServer.kill`); the failure then takes the path above like any dead
process. ``GET /_fsdgraph/status`` answers :meth:`InvokeServer.status`: the executions running
(function, request id, pid), the Event deliveries queued, and the zygotes' pids. With
``duplicate_events`` every Event invocation runs twice (two executions, one request id), as
Lambda's at-least-once delivery may do.

**Processes.** Warm (the default, on Linux): per function configuration, a zygote (``python -m
fsdgraph.testing.lambda_endpoint --zygote HANDLER``, with the function's environment) imports the
handler's module once, then forks one child per invocation; a start costs about a millisecond and
hundreds of executions share the imported modules' memory copy-on-write. Each child starts from
the zygote's state (nothing a previous invocation did is seen) in its own session, and dies with
the zygote (``PR_SET_PDEATHSIG``); the zygote kills its children and exits when its control
socket to the server closes, on :meth:`InvokeServer.close` or when the server process dies, however
it dies. The function's Timeout counts from the fork. Cold (``warm=False``, ``--cold``): every
execution is a fresh ``python -m fsdgraph.testing.lambda_endpoint --run HANDLER``, and its Timeout
counts from the process start, interpreter start-up and imports included. Either way the handler
gets the event on stdin and writes its result to stdout, and its environment is the server's plus
the function's variables plus Lambda's reserved ones (``AWS_LAMBDA_FUNCTION_NAME``,
``AWS_REGION``, ...).

Other differences from Lambda, all deliberate:

* the handler is imported from the server's Python environment, never from the function's code
  package (moto keeps the zip, nobody unpacks it);
* MemorySize is reported to the handler (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, the context), not
  enforced: a process the kernel kills for memory fails as any killed process does;
* each execution's stderr goes to ``<function>-<seq>-<request id>.log`` in ``log_dir``, followed
  by its result for an Event one, not to CloudWatch; ``seq`` counts the function's executions, so
  a retry or a duplicate has its own file.

The handler only ever gets JSON: payloads are parsed with :func:`json.loads` and results written
with :func:`json.dumps`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import http.client
import importlib
import itertools
import json
import logging
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from types import FrameType, TracebackType
from typing import IO, Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fsdgraph.quotas import Quotas, load_quotas

__all__ = ["InvokeServer", "LambdaContext", "main"]

log = logging.getLogger(__name__)

#: What the subprocesses run (``__name__`` is ``__main__`` when the server itself runs with -m).
MODULE = "fsdgraph.testing.lambda_endpoint"

#: The Invoke operation's path, and the other requests answered here; everything else goes
#: upstream.
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<function>[^/]+)/invocations$")
ACCOUNT_SETTINGS_PATH = re.compile(r"^/2016-08-19/account-settings/?$")
EVENT_INVOKE_CONFIG_PATH = re.compile(
    r"^/2019-09-25/functions/(?P<function>[^/]+)/event-invoke-config/?$")
KILL_PATH = "/_fsdgraph/kill"
STATUS_PATH = "/_fsdgraph/status"
INVOCATION_TYPES = frozenset({"RequestResponse", "Event", "DryRun"})
#: Where the region comes from when neither the ARN nor the request's signature names one.
DEFAULT_REGION = "us-east-1"
#: Lambda's defaults for a function created without Timeout or MemorySize.
DEFAULT_TIMEOUT_S = 3
DEFAULT_MEMORY_MB = 128
#: Lambda's defaults for a function without an event invoke configuration, and the least
#: MaximumEventAgeInSeconds it accepts (a younger event cannot have expired).
DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_MAX_EVENT_AGE_S = 6 * 3600
MIN_MAX_EVENT_AGE_S = 60
#: The fields of an event invoke configuration that Update merges.
EVENT_INVOKE_CONFIG_FIELDS = ("MaximumRetryAttempts", "MaximumEventAgeInSeconds",
                              "DestinationConfig")
#: GetAccountSettings' fixed limits (Lambda's: 75 GB of code, 250 MB unzipped, 50 MB zipped).
CODE_LIMITS = {"TotalCodeSize": 80_530_636_800, "CodeSizeUnzipped": 262_144_000,
               "CodeSizeZipped": 52_428_800}
#: ``LogType=Tail`` returns the last 4 KB of the invocation's log, as Lambda does.
LOG_TAIL_BYTES = 4096
#: How long a killed invocation may take to release its pipes before they are closed on it.
KILL_GRACE_S = 5.0
#: How long a zygote may take to import the handler's module (Lambda's init phase: 10 s, but a
#: loaded test machine may be slower).
INIT_TIMEOUT_S = 60.0
#: Zygotes kept beyond the busy ones (one per function configuration recently used).
MAX_IDLE_ZYGOTES = 8
#: Warm starts need fork and SOCK_SEQPACKET with descriptor passing: Linux.
WARM_SUPPORTED = sys.platform.startswith("linux")
#: How long a request to the upstream server may take.
UPSTREAM_TIMEOUT_S = 60.0
#: A keep-alive connection idle this long is closed, so an abandoned client holds no thread.
IDLE_TIMEOUT_S = 120.0

#: Headers that describe one connection rather than the request, never forwarded (RFC 9110 7.6.1),
#: plus the ones the proxy sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_REWRITTEN = frozenset({"host", "content-length", "expect"})

# The pattern of a Lambda function name, partial ARN or ARN, with an optional qualifier.
_NAME = r"(?P<name>[A-Za-z0-9_-]{1,140})(?::(?P<qualifier>[A-Za-z0-9$_-]{1,128}))?"
_FUNCTION_ARN = re.compile(
    rf"^arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{{12}}):function:{_NAME}$")
_PARTIAL_ARN = re.compile(rf"^(?P<account>\d{{12}}):function:{_NAME}$")
_FUNCTION_NAME = re.compile(rf"^{_NAME}$")
# "Credential=AKID/20240101/eu-west-1/lambda/aws4_request" in a SigV4 Authorization header.
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/(?P<region>[a-z0-9-]+)/")

# The handler process's side of the protocol. Its exit status says how to read its stdout: 0, the
# handler's result; _FUNCTION_ERROR_STATUS, Lambda's error object; anything else (or output that
# does not parse) means the process died, as Lambda's Runtime.ExitError.
_FUNCTION_ERROR_STATUS = 1
_ENV_REQUEST_ID = "FSDGRAPH_INVOKE_REQUEST_ID"
_ENV_FUNCTION_ARN = "FSDGRAPH_INVOKE_FUNCTION_ARN"
_ENV_DEADLINE = "FSDGRAPH_INVOKE_DEADLINE"
#: prctl(2)'s option that has the kernel signal a process when its parent dies.
_PR_SET_PDEATHSIG = 1


class _ApiError(Exception):
    """An error answered in Lambda's format: HTTP ``status``, ``x-amzn-ErrorType: code``, and
    ``extra`` members in the body (TooManyRequestsException's ``Reason``)."""

    def __init__(self, status: int, code: str, message: str,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = dict(extra or {})


@dataclass(frozen=True)
class _FunctionRef:
    """What a FunctionName (plus ``?Qualifier=``) designates."""

    name: str
    qualifier: str | None
    #: From the ARN; None for a plain name or a partial ARN.
    region: str | None


def _parse_function(identifier: str, qualifier: str | None) -> _FunctionRef:
    """Parse a function name, partial ARN or ARN, each optionally ending in ``:qualifier``."""
    for pattern in (_FUNCTION_ARN, _PARTIAL_ARN, _FUNCTION_NAME):
        match = pattern.match(identifier)
        if match is not None:
            break
    else:
        raise _ApiError(400, "ValidationException",
                        f"1 validation error detected: Value '{identifier}' at 'functionName' "
                        "failed to satisfy constraint: Member must be a function name, a partial "
                        "ARN or an ARN")
    derived = match["qualifier"]
    if derived and qualifier and derived != qualifier:
        raise _ApiError(400, "InvalidParameterValueException",
                        "The derived qualifier from the function name does not match the "
                        "specified qualifier.")
    region = match.groupdict().get("region")
    return _FunctionRef(match["name"], derived or qualifier or None, region)


def _signing_region(authorization: str | None) -> str | None:
    """The region of a SigV4 ``Authorization`` header's credential scope."""
    match = _CREDENTIAL_SCOPE.search(authorization or "")
    return match["region"] if match else None


@dataclass(frozen=True)
class _Function:
    """What running one function needs, from its GetFunction ``Configuration``."""

    name: str
    #: The function's ARN as invoked: unqualified, or ending in the qualifier that was given.
    invoked_arn: str
    version: str
    handler: str
    timeout_s: int
    memory_mb: int
    variables: Mapping[str, str]
    region: str

    @classmethod
    def from_configuration(cls, config: Mapping[str, Any], ref: _FunctionRef,
                           region: str) -> _Function:
        # A qualified lookup may answer with a qualified ARN; keep the first seven fields.
        arn = ":".join(str(config.get("FunctionArn", "")).split(":")[:7])
        if ref.qualifier:
            arn = f"{arn}:{ref.qualifier}"
        variables = (config.get("Environment") or {}).get("Variables") or {}
        return cls(
            name=str(config["FunctionName"]), invoked_arn=arn,
            version=str(config.get("Version", "$LATEST")), handler=str(config.get("Handler", "")),
            timeout_s=int(config.get("Timeout") or DEFAULT_TIMEOUT_S),
            memory_mb=int(config.get("MemorySize") or DEFAULT_MEMORY_MB),
            variables={str(k): str(v) for k, v in variables.items()}, region=region,
        )

    @property
    def executed_arn(self) -> str:
        """The ARN of the version that runs, as invocation records name it (``...:$LATEST``)."""
        if len(self.invoked_arn.split(":")) > 7:
            return self.invoked_arn
        return f"{self.invoked_arn}:{self.version}"

    def base_environment(self) -> dict[str, str]:
        """What every execution's environment starts with: ours, then the function's, then
        Lambda's reserved variables (a zygote's whole environment)."""
        return {
            **os.environ,
            **self.variables,
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": self.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self.timeout_s),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "_HANDLER": self.handler,
            _ENV_FUNCTION_ARN: self.invoked_arn,
        }

    @staticmethod
    def invocation_environment(request_id: str, deadline: float) -> dict[str, str]:
        """The variables that differ from one execution to the next."""
        return {"AWS_LAMBDA_LOG_STREAM_NAME": request_id, _ENV_REQUEST_ID: request_id,
                _ENV_DEADLINE: f"{deadline:.3f}"}


@dataclass(frozen=True)
class _EventConfig:
    """A function's asynchronous invocation settings (GetFunctionEventInvokeConfig)."""

    max_retries: int = DEFAULT_RETRY_ATTEMPTS
    max_age_s: float = DEFAULT_MAX_EVENT_AGE_S
    on_failure: str | None = None

    @classmethod
    def from_response(cls, response: Mapping[str, Any]) -> _EventConfig:
        retries = response.get("MaximumRetryAttempts")
        age = response.get("MaximumEventAgeInSeconds")
        on_failure = ((response.get("DestinationConfig") or {}).get("OnFailure") or {})
        return cls(max_retries=DEFAULT_RETRY_ATTEMPTS if retries is None else int(retries),
                   max_age_s=DEFAULT_MAX_EVENT_AGE_S if age is None else float(age),
                   on_failure=on_failure.get("Destination") or None)


@dataclass(frozen=True)
class _Outcome:
    """How one execution ended."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration_s: float
    #: Why no process could be started (the other fields then say nothing).
    launch_error: str | None = None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the subprocess and whatever it started (it leads its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _describe_exit(returncode: int) -> str:
    """An exit status in the words Lambda's runtime errors use: "signal: killed", "exit status
    3"."""
    if returncode < 0:
        description = signal.strsignal(-returncode)
        return f"signal: {description.lower()}" if description else f"signal {-returncode}"
    return f"exit status {returncode}"


# -- handler processes: cold and warm --------------------------------------------------------------
class _LaunchError(Exception):
    """No process could be started for the execution."""


class _Process(Protocol):
    """A running handler, whichever way it was started."""

    @property
    def pid(self) -> int:
        """The handler's process id (it leads its own process group)."""
        ...

    def kill(self) -> None:
        """SIGKILL the handler and whatever it started."""

    def finish(self, payload: bytes, deadline: float) -> tuple[int, bytes, bytes, bool]:
        """Feed ``payload`` on stdin and wait for the end, killing the handler at ``deadline``
        (:func:`time.monotonic`); returns (exit status, stdout, stderr, timed out)."""
        ...


class _Subprocess:
    """A cold start: a fresh interpreter runs the handler (``--run``)."""

    def __init__(self, handler: str, env: Mapping[str, str], stderr: int | IO[bytes]) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--run", handler], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, env=dict(env),
                # Its own process group, so a timeout kills what the handler started too, and a
                # Ctrl-C meant for the server does not reach it.
                start_new_session=True)
        except OSError as exc:
            raise _LaunchError(f"cannot start the handler: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        _kill(self.proc)

    def finish(self, payload: bytes, deadline: float) -> tuple[int, bytes, bytes, bool]:
        proc = self.proc
        try:
            stdout, stderr = proc.communicate(payload,
                                              timeout=max(0.0, deadline - time.monotonic()))
            return proc.returncode, stdout or b"", stderr or b"", False
        except subprocess.TimeoutExpired:
            _kill(proc)
        try:
            stdout, stderr = proc.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            # Something the handler started left the process group and holds the pipes.
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
            stdout, stderr = b"", b""
        return proc.returncode, stdout or b"", stderr or b"", True


class _Forked:
    """A warm start: a child that a zygote forked. The server holds the other ends of its stdin,
    stdout and (``stderr=None``) stderr pipes; the zygote reports its pid and its exit status."""

    def __init__(self, zygote: _Zygote, env: Mapping[str, str], stderr: int | None) -> None:
        self.pid = 0
        self.returncode: int | None = None
        self.error: str | None = None
        #: Given up waiting for the fork: a child forked after all is killed at once.
        self.abandoned = False
        self.forked = threading.Event()
        self.exited = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._output: dict[int, list[bytes]] = {}
        self._payload = memoryview(b"")
        #: The server's ends still open.
        self._open: set[int] = set()
        theirs: list[int] = []
        try:
            stdin_r, self._stdin = os.pipe()
            self._stdout, stdout_w = os.pipe()
            self._open |= {self._stdin, self._stdout}
            theirs += [stdin_r, stdout_w]
            self._stderr: int | None = None
            if stderr is None:
                self._stderr, stderr = os.pipe()
                self._open.add(self._stderr)
                theirs.append(stderr)
            zygote.fork(self, env, [stdin_r, stdout_w, stderr])
        except BaseException:
            self._close()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        if not self.forked.wait(INIT_TIMEOUT_S):
            self.abandoned = True
            if self.forked.is_set():  # answered meanwhile
                self.kill()
            self.error = self.error or f"no answer in {INIT_TIMEOUT_S:g} s"
        if self.error is not None:
            self._close()
            raise _LaunchError(f"cannot fork the handler: {self.error}")

    def ended(self, returncode: int) -> None:
        """The zygote reaped the child (or died, taking it along)."""
        self.returncode = returncode
        self.exited.set()

    def kill(self) -> None:
        if self.pid and not self.exited.is_set():
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the child leads its own session
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.pid, signal.SIGKILL)  # killed before its setsid()

    def finish(self, payload: bytes, deadline: float) -> tuple[int, bytes, bytes, bool]:
        self._payload = memoryview(payload)
        if payload:
            os.set_blocking(self._stdin, False)
            self._selector.register(self._stdin, selectors.EVENT_WRITE)
        else:
            self._close_fd(self._stdin)
        for fd in (self._stdout, self._stderr):
            if fd is not None:
                self._output[fd] = []
                self._selector.register(fd, selectors.EVENT_READ)
        finished = (self._pump(deadline)
                    and self.exited.wait(max(0.0, deadline - time.monotonic())))
        if not finished:
            self.kill()
            self._pump(time.monotonic() + KILL_GRACE_S)  # what it wrote before it died
            self.exited.wait(KILL_GRACE_S)
        self._close()
        stdout = b"".join(self._output.get(self._stdout, []))
        stderr = b"".join(self._output.get(self._stderr, [])) if self._stderr is not None else b""
        returncode = -signal.SIGKILL if self.returncode is None else self.returncode
        return returncode, stdout, stderr, not finished

    def _pump(self, until: float) -> bool:
        """Write stdin and read stdout and stderr until all are closed (True) or ``until``."""
        while self._selector.get_map():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in self._selector.select(remaining):
                fd = key.fd
                if fd == self._stdin:
                    try:
                        self._payload = self._payload[os.write(fd, self._payload[:65536]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the handler stopped reading: its business
                        self._payload = memoryview(b"")
                    if not self._payload:
                        self._close_fd(fd)
                    continue
                data = os.read(fd, 65536)
                if data:
                    self._output[fd].append(data)
                else:
                    self._close_fd(fd)
        return True

    def _close_fd(self, fd: int) -> None:
        if fd in self._open:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            self._open.discard(fd)
            os.close(fd)

    def _close(self) -> None:
        for fd in list(self._open):
            self._close_fd(fd)
        self._selector.close()


class _Zygote:
    """A warm interpreter for one function configuration (``--zygote``), forking a child per
    execution.

    Its control socket is a SOCK_SEQPACKET pair, one message per datagram. The server sends
    ``{"tag", "env"}`` with the child's stdin, stdout and stderr attached (SCM_RIGHTS); the zygote
    answers ``{"ready": true}`` once its imports are done, ``{"tag", "pid"}`` (or ``{"tag",
    "error"}``) per request, and ``{"exit": pid, "code"}`` per child it reaps. Closing the socket
    tells it to kill its children and exit.
    """

    def __init__(self, handler: str, env: Mapping[str, str]) -> None:
        self.handler = handler
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--zygote", handler,
                 "--control-fd", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=dict(env),
                pass_fds=(theirs.fileno(),), start_new_session=True)
        except OSError as exc:
            ours.close()
            raise _LaunchError(f"cannot start a warm interpreter: {exc}") from exc
        finally:
            theirs.close()
        self._socket = ours
        self._lock = threading.Lock()
        self._tags = itertools.count()
        self._waiting: dict[int, _Forked] = {}
        self._children: dict[int, _Forked] = {}
        self._ready = threading.Event()
        #: Executions about to fork here (the pool does not retire a zygote they hold).
        self.leases = 0
        self.dead = False
        self._reader = threading.Thread(target=self._read, name=f"zygote-{self.proc.pid}",
                                        daemon=True)
        self._reader.start()

    @property
    def idle(self) -> bool:
        with self._lock:
            return not (self.leases or self._waiting or self._children)

    def wait_ready(self) -> None:
        if not self._ready.wait(INIT_TIMEOUT_S):
            self.close()
            raise _LaunchError(f"the warm interpreter for {self.handler} did not start within "
                               f"{INIT_TIMEOUT_S:g} s")
        if self.dead:
            raise _LaunchError(f"the warm interpreter for {self.handler} exited "
                               f"({_describe_exit(self.proc.wait())})")

    def fork(self, child: _Forked, env: Mapping[str, str], fds: list[int]) -> None:
        """Ask for a child running with ``env`` added and ``fds`` as its stdin, stdout, stderr;
        ``child`` hears of its pid (``forked``) and exit (``ended``)."""
        with self._lock:
            if self.dead:
                raise _LaunchError(f"the warm interpreter for {self.handler} exited")
            tag = next(self._tags)
            self._waiting[tag] = child
        try:
            socket.send_fds(self._socket, [json.dumps({"tag": tag, "env": dict(env)}).encode()],
                            fds)
        except OSError as exc:
            with self._lock:
                self._waiting.pop(tag, None)
            raise _LaunchError(f"the warm interpreter for {self.handler} is gone: {exc}") from exc

    def _read(self) -> None:
        try:
            while True:
                data = self._socket.recv(65536)
                if not data:
                    break
                self._handle(json.loads(data))
        except (OSError, ValueError) as exc:
            log.debug("zygote %d: %s", self.proc.pid, exc)
        finally:
            with self._lock:
                self.dead = True
                waiting, children = list(self._waiting.values()), list(self._children.values())
                self._waiting.clear()
                self._children.clear()
            for child in waiting:
                child.error = "the warm interpreter exited"
                child.forked.set()
            for child in children:  # killed along with it (PR_SET_PDEATHSIG)
                child.ended(-signal.SIGKILL)
            self._ready.set()

    def _handle(self, message: Mapping[str, Any]) -> None:
        if message.get("ready"):
            self._ready.set()
        elif "exit" in message:
            with self._lock:
                child = self._children.pop(int(message["exit"]), None)
            if child is not None:
                child.ended(int(message["code"]))
        else:
            with self._lock:
                child = self._waiting.pop(int(message["tag"]), None)
                if child is not None and "pid" in message:
                    child.pid = int(message["pid"])
                    self._children[child.pid] = child
            if child is not None:
                if "error" in message:
                    child.error = str(message["error"])
                child.forked.set()
                if child.abandoned:
                    child.kill()

    def close(self) -> None:
        """End the zygote, and with it its children (idempotent)."""
        # shutdown, unlike close, also wakes the reader blocked in recv.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(KILL_GRACE_S)
        self._socket.close()


class _ZygotePool:
    """The zygotes, one per function configuration (handler and environment), started on first
    use; the least recently used idle ones beyond :data:`MAX_IDLE_ZYGOTES` are closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygotes: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], _Zygote] = \
            OrderedDict()
        self._closed = False

    def lease(self, function: _Function) -> _Zygote:
        """The function's zygote, ready to fork; :meth:`release` it once the fork is asked."""
        env = function.base_environment()
        key = (function.handler, tuple(sorted(env.items())))
        retired = []
        with self._lock:
            if self._closed:
                raise _LaunchError("the invoke server is shutting down")
            zygote = self._zygotes.get(key)
            if zygote is None or zygote.dead:
                if zygote is not None:
                    retired.append(zygote)
                zygote = _Zygote(function.handler, env)
                self._zygotes[key] = zygote
            self._zygotes.move_to_end(key)
            zygote.leases += 1
            idle = [k for k, z in self._zygotes.items() if z.idle]
            for old in idle[:max(0, len(idle) - MAX_IDLE_ZYGOTES)]:
                retired.append(self._zygotes.pop(old))
        for old_zygote in retired:
            old_zygote.close()
        try:
            zygote.wait_ready()
        except BaseException:
            self.release(zygote)
            raise
        return zygote

    def release(self, zygote: _Zygote) -> None:
        with self._lock:
            zygote.leases -= 1

    def pids(self) -> list[int]:
        with self._lock:
            return [z.proc.pid for z in self._zygotes.values() if not z.dead]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            zygotes = list(self._zygotes.values())
            self._zygotes.clear()
        for zygote in zygotes:
            zygote.close()


# -- executions ------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Execution:
    """One handler process: an invocation's (or an Event's retry or duplicate)."""

    id: int
    function: _Function
    request_id: str
    seq: int
    payload: bytes
    invocation_type: str
    log_path: Path | None
    #: The event when it is a JSON object (what kill requests match), else None.
    event: Mapping[str, Any] | None
    process: _Process | None = None
    killed: bool = False
    started: float = field(default_factory=time.monotonic)

    def kill(self) -> None:
        self.killed = True
        if self.process is not None:
            self.process.kill()


@dataclass(eq=False)
class _Delivery:
    """One Event invocation (or a duplicate of it) through its attempts."""

    function: _Function
    request_id: str
    payload: bytes
    accepted: float = field(default_factory=time.monotonic)
    attempts: int = 0

    @property
    def event(self) -> Any:
        return json.loads(self.payload) if self.payload.strip() else {}


def _event_object(payload: bytes) -> Mapping[str, Any] | None:
    try:
        event = json.loads(payload) if payload.strip() else {}
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _matches(event: Mapping[str, Any] | None, match: Mapping[str, Any]) -> bool:
    return event is not None and all(k in event and event[k] == v for k, v in match.items())


def _response(outcome: _Outcome, function: _Function, request_id: str,
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
    if outcome.returncode in (0, _FUNCTION_ERROR_STATUS):
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
                       f"{_describe_exit(outcome.returncode)}", request_id), True


def _invocation_record(delivery: _Delivery, condition: str,
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


# -- the server ------------------------------------------------------------------------------------
class InvokeServer:
    """The endpoint: proxies to ``upstream`` (a moto server URL) and runs invocations itself.

    Binds 127.0.0.1:``port`` (0 for any free port) at construction; :meth:`start` serves in a
    daemon thread; :meth:`close` stops serving and kills the invocations still running. Usable as
    a context manager (entering starts it). ``log_dir`` receives one log file per execution
    (created if missing). Payloads above ``max_event_bytes`` (Event) or
    ``max_request_response_bytes`` (RequestResponse) are refused with HTTP 413. ``quotas``
    (default: :func:`~fsdgraph.quotas.load_quotas` of the environment) bound the executions
    running at once; ``duplicate_events`` runs every Event invocation twice; ``warm=False`` starts
    every execution in a fresh interpreter (always so where :data:`WARM_SUPPORTED` is false);
    ``retry_delay_s`` separates a failed Event execution from its retry. The module docstring
    says what each does.
    """

    def __init__(self, upstream: str, *, port: int = 0, log_dir: Path | None = None,
                 max_event_bytes: int = 1024 * 1024,
                 max_request_response_bytes: int = 6 * 1024 * 1024,
                 quotas: Quotas | None = None, duplicate_events: bool = False,
                 warm: bool = True, retry_delay_s: float = 1.0) -> None:
        self.upstream = upstream.rstrip("/")
        split = urlsplit(self.upstream)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"upstream must be an http(s) URL, not {upstream!r}")
        if retry_delay_s < 0:
            raise ValueError(f"retry_delay_s must be >= 0, not {retry_delay_s!r}")
        self._upstream = split
        self.log_dir = Path(log_dir) if log_dir is not None else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_event_bytes = max_event_bytes
        self.max_request_response_bytes = max_request_response_bytes
        self.quotas = load_quotas(environ=os.environ) if quotas is None else quotas
        self.duplicate_events = duplicate_events
        self.warm = warm and WARM_SUPPORTED
        self.retry_delay_s = retry_delay_s
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()  # invocations accepted
        self._executions: Counter[str] = Counter()  # processes started: the log files' seq
        self._ids = itertools.count(1)
        self._running: dict[int, _Execution] = {}
        #: Executions holding one of the quotas.lambda_concurrency slots (starting, running).
        self._busy = 0
        self._queue: deque[_Delivery] = deque()
        self._threads: set[threading.Thread] = set()
        self._timers: set[threading.Timer] = set()
        self._zygotes = _ZygotePool()
        self._session: botocore.session.Session | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._clients_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._httpd = _HTTPServer(("127.0.0.1", port), self)

    def __repr__(self) -> str:
        return f"InvokeServer({self.url!r}, upstream={self.upstream!r})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the endpoint URL to give botocore for ``lambda``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def invocations(self) -> Counter[str]:
        """How many invocations each function (by name) has had accepted so far (a copy)."""
        with self._lock:
            return Counter(self._counts)

    @property
    def executions(self) -> Counter[str]:
        """How many handler processes each function has had started so far, retries and
        duplicates included (a copy)."""
        with self._lock:
            return Counter(self._executions)

    def status(self) -> dict[str, Any]:
        """The executions running (function, request id, pid), how many Event deliveries wait
        for a slot, the two counters, and the zygotes' pids."""
        with self._lock:
            running = [{"functionName": e.function.name, "requestId": e.request_id,
                        "pid": e.process.pid if e.process is not None else None}
                       for e in self._running.values()]
            status = {"running": running, "queued": len(self._queue),
                      "invocations": dict(self._counts), "executions": dict(self._executions)}
        return {**status, "zygotes": self._zygotes.pids()}

    def kill(self, match: Mapping[str, Any]) -> list[tuple[str, str]]:
        """SIGKILL the running executions whose event has every member of ``match``; returns
        their (function name, request id)."""
        with self._lock:
            chosen = [e for e in self._running.values()
                      if e.process is not None and _matches(e.event, match)]
        for execution in chosen:
            log.warning("%s #%d (%s): killed on request", execution.function.name, execution.seq,
                        execution.request_id)
            execution.kill()
        return [(e.function.name, e.request_id) for e in chosen]

    def start(self) -> None:
        """Serve in a daemon thread (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the invoke server is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            kwargs={"poll_interval": 0.1},
                                            name="invoke-server", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop serving, drop the queued events, kill the executions still running and wait for
        them (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._thread
            running = list(self._running.values())
            self._queue.clear()
            timers = list(self._timers)
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        if serving is not None:
            self._httpd.shutdown()
            serving.join()
        # Idle keep-alive connections would otherwise keep their threads (which server_close
        # joins) waiting for a next request.
        self._httpd.close_connections()
        for execution in running:
            execution.kill()
        self._httpd.server_close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(KILL_GRACE_S * 2)
        self._zygotes.close()
        with self._clients_lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def __enter__(self) -> InvokeServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- upstream ----------------------------------------------------------------------------------
    def _client(self, service: str, region: str) -> Any:
        # Creating botocore clients is not thread-safe; using them is.
        with self._clients_lock:
            client = self._clients.get((service, region))
            if client is None:
                if self._session is None:
                    self._session = botocore.session.get_session()
                config = Config(retries={"mode": "standard", "max_attempts": 3},
                                connect_timeout=10, read_timeout=UPSTREAM_TIMEOUT_S)
                client = self._session.create_client(service, region_name=region,
                                                     endpoint_url=self.upstream, config=config)
                self._clients[(service, region)] = client
            return client

    def _function(self, identifier: str, ref: _FunctionRef, region: str) -> _Function:
        """The function's configuration, from upstream; 404 in Lambda's form when missing."""
        # Upstream gets the bare name: moto does not route a name with a qualifier in it, and
        # fails on partial ARNs.
        kwargs: dict[str, str] = {"FunctionName": ref.name}
        if ref.qualifier:
            kwargs["Qualifier"] = ref.qualifier
        try:
            response = self._client("lambda", region).get_function(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), str(error.get("Message", ""))
            if code == "ResourceNotFoundException":
                if not message.startswith("Function not found"):
                    message = f"Function not found: {identifier}"
                raise _ApiError(404, code, message) from exc
            raise _ApiError(500, "ServiceException",
                            f"GetFunction on {self.upstream} failed: {code}: {message}") from exc
        except BotoCoreError as exc:
            raise _ApiError(500, "ServiceException",
                            f"GetFunction on {self.upstream} failed: {exc}") from exc
        return _Function.from_configuration(response["Configuration"], ref, region)

    def _event_config(self, function: _Function) -> _EventConfig:
        """The function's asynchronous invocation settings (Lambda's defaults without any)."""
        try:
            response = self._client("lambda", function.region).get_function_event_invoke_config(
                FunctionName=function.name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                log.warning("%s: GetFunctionEventInvokeConfig failed (%s); using Lambda's "
                            "defaults", function.name, exc)
            return _EventConfig()
        except BotoCoreError as exc:
            log.warning("%s: GetFunctionEventInvokeConfig failed (%s); using Lambda's defaults",
                        function.name, exc)
            return _EventConfig()
        return _EventConfig.from_response(response)

    def _account_settings(self, region: str) -> dict[str, Any]:
        """GetAccountSettings: the concurrency quota, less the functions' reservations."""
        client = self._client("lambda", region)
        functions = [f for page in client.get_paginator("list_functions").paginate()
                     for f in page.get("Functions", [])]
        reserved = 0
        for f in functions:
            try:
                answer = client.get_function_concurrency(FunctionName=f["FunctionName"])
            except ClientError as exc:  # deleted since it was listed
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    continue
                raise
            reserved += int(answer.get("ReservedConcurrentExecutions") or 0)
        limit = self.quotas.lambda_concurrency
        return {
            "AccountLimit": {**CODE_LIMITS, "ConcurrentExecutions": limit,
                             "UnreservedConcurrentExecutions": max(0, limit - reserved)},
            "AccountUsage": {"TotalCodeSize": sum(int(f.get("CodeSize") or 0) for f in functions),
                             "FunctionCount": len(functions)},
        }

    def _replace_event_invoke_config(self, name: str, region: str, body: bytes,
                                     merge: bool) -> bytes:
        """Clear the function's stored event invoke configuration before a new one is put
        (moto would append it), and with ``merge`` (Update) return the request body merged into
        the current configuration, as Lambda's Update does."""
        client = self._client("lambda", region)
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

    def _send_record(self, destination: str, record: Mapping[str, Any]) -> None:
        """Send an invocation record to an SQS queue or SNS topic ARN, through upstream."""
        parts = destination.split(":")
        service = parts[2] if len(parts) >= 6 else ""
        body = json.dumps(record)
        try:
            if service == "sqs":
                sqs = self._client("sqs", parts[3])
                url = sqs.get_queue_url(QueueName=parts[5],
                                        QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
                sqs.send_message(QueueUrl=url, MessageBody=body)
            elif service == "sns":
                self._client("sns", parts[3]).publish(TopicArn=destination, Message=body)
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

    # -- admission: quotas.lambda_concurrency slots, and the Event queue ---------------------------
    def _accept_event(self, function: _Function, payload: bytes, request_id: str) -> None:
        """Queue an Event invocation (twice with duplicate_events); it starts when a slot frees."""
        copies = 2 if self.duplicate_events else 1
        with self._lock:
            if self._closed:
                raise _ApiError(500, "ServiceException", "the invoke server is shutting down")
            self._counts[function.name] += 1
            self._queue.extend(_Delivery(function, request_id, payload) for _ in range(copies))
            self._dispatch()
        log.info("%s (%s): Event invocation accepted", function.name, request_id)

    def _dispatch(self) -> None:
        """Start queued deliveries while slots are free (the lock is held)."""
        while self._queue and self._busy < self.quotas.lambda_concurrency and not self._closed:
            delivery = self._queue.popleft()
            self._busy += 1
            thread = threading.Thread(target=self._deliver, args=(delivery,),
                                      name=f"invoke-{delivery.function.name}", daemon=True)
            self._threads.add(thread)
            thread.start()

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1
            self._dispatch()

    def _requeue(self, delivery: _Delivery) -> None:
        with self._lock:
            self._timers.discard(cast(threading.Timer, threading.current_thread()))
            if not self._closed:
                self._queue.append(delivery)
                self._dispatch()

    # -- executions --------------------------------------------------------------------------------
    def _new_execution(self, function: _Function, payload: bytes, request_id: str,
                       invocation_type: str) -> _Execution:
        with self._lock:
            seq = self._executions[function.name] = self._executions[function.name] + 1
        log_path = None
        if self.log_dir is not None:
            log_path = self.log_dir / f"{function.name}-{seq}-{request_id}.log"
        return _Execution(next(self._ids), function, request_id, seq, payload, invocation_type,
                          log_path, _event_object(payload))

    def _start_process(self, execution: _Execution) -> tuple[_Process, float]:
        """Start the handler; returns it and its deadline (:func:`time.monotonic`)."""
        function = execution.function
        # An Event execution's stderr streams into its log file; a RequestResponse one's is
        # returned with LogType=Tail, so it is read through a pipe.
        log_file: IO[bytes] | None = None
        if execution.invocation_type == "Event":
            log_file = open(execution.log_path or os.devnull, "ab")  # noqa: SIM115
        try:
            if self.warm:
                zygote = self._zygotes.lease(function)
                try:
                    deadline = time.monotonic() + function.timeout_s
                    env = function.invocation_environment(execution.request_id,
                                                          time.time() + function.timeout_s)
                    return _Forked(zygote, env, log_file.fileno() if log_file else None), deadline
                finally:
                    self._zygotes.release(zygote)
            deadline = time.monotonic() + function.timeout_s
            env = {**function.base_environment(),
                   **function.invocation_environment(execution.request_id,
                                                     time.time() + function.timeout_s)}
            return _Subprocess(function.handler, env, log_file or subprocess.PIPE), deadline
        finally:
            if log_file is not None:
                log_file.close()

    def _execute(self, execution: _Execution) -> _Outcome:
        """Run one execution to its end (the caller holds a slot for it)."""
        f = execution.function
        log.info("%s #%d (%s): %s execution started", f.name, execution.seq,
                 execution.request_id, execution.invocation_type)
        try:
            process, deadline = self._start_process(execution)
        except _LaunchError as exc:
            outcome = _Outcome(-1, b"", b"", False, time.monotonic() - execution.started,
                               launch_error=str(exc))
            self._record(execution, outcome)
            return outcome
        with self._lock:
            execution.process = process
            self._running[execution.id] = execution
            closing = self._closed
        if closing:
            process.kill()
        try:
            returncode, stdout, stderr, timed_out = process.finish(execution.payload, deadline)
        finally:
            with self._lock:
                self._running.pop(execution.id, None)
        outcome = _Outcome(returncode, stdout, stderr, timed_out,
                           time.monotonic() - execution.started)
        self._record(execution, outcome)
        return outcome

    def _record(self, execution: _Execution, outcome: _Outcome) -> None:
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
                        _describe_exit(outcome.returncode))
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

    def _run(self, function: _Function, payload: bytes,
             request_id: str) -> tuple[bytes, bool, bytes]:
        """A RequestResponse invocation: its response body, whether it is a function error, and
        its log. 429 when every slot is taken."""
        with self._lock:
            if self._closed:
                raise _ApiError(500, "ServiceException", "the invoke server is shutting down")
            if self._busy >= self.quotas.lambda_concurrency:
                raise _ApiError(429, "TooManyRequestsException", "Rate Exceeded.",
                                {"Reason": "ConcurrentInvocationLimitExceeded"})
            self._busy += 1
            self._counts[function.name] += 1
        try:
            execution = self._new_execution(function, payload, request_id, "RequestResponse")
            outcome = self._execute(execution)
        finally:
            self._release()
        if outcome.launch_error is not None:
            raise _ApiError(500, "ServiceException", outcome.launch_error)
        body, failed = _response(outcome, function, request_id, self.max_request_response_bytes)
        logs = outcome.stderr
        if outcome.timed_out:
            logs += _timeout_line(execution).encode() + b"\n"
        return body, failed, logs

    def _deliver(self, delivery: _Delivery) -> None:
        """One attempt at an Event delivery, in its own thread holding a slot; then, if it
        failed, its retry or its on-failure record."""
        try:
            config: _EventConfig | None = None
            outcome: _Outcome | None = None
            try:
                # An event younger than the least MaximumEventAgeInSeconds cannot have expired:
                # only an old one costs a lookup.
                if time.monotonic() - delivery.accepted >= MIN_MAX_EVENT_AGE_S:
                    config = self._event_config(delivery.function)
                if config is None or time.monotonic() - delivery.accepted <= config.max_age_s:
                    delivery.attempts += 1
                    execution = self._new_execution(delivery.function, delivery.payload,
                                                    delivery.request_id, "Event")
                    outcome = self._execute(execution)
            finally:
                self._release()
            if outcome is None:
                self._discard(delivery, "EventAgeExceeded", None, cast(_EventConfig, config))
                return
            response, failed = _response(outcome, delivery.function, delivery.request_id,
                                         self.max_event_bytes)
            # An execution that close() killed did not fail: nothing to retry or report.
            if not failed or self._closed:
                return
            config = self._event_config(delivery.function)
            if delivery.attempts <= config.max_retries:
                self._retry_later(delivery, config)
            else:
                self._discard(delivery, "RetriesExhausted", response, config)
        except Exception:
            log.exception("%s (%s): delivering the event failed", delivery.function.name,
                          delivery.request_id)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _retry_later(self, delivery: _Delivery, config: _EventConfig) -> None:
        with self._lock:
            if self._closed:
                return
            timer = threading.Timer(self.retry_delay_s, self._requeue, args=(delivery,))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()
        log.info("%s (%s): retry %d of %d in %g s", delivery.function.name, delivery.request_id,
                 delivery.attempts, config.max_retries, self.retry_delay_s)

    def _discard(self, delivery: _Delivery, condition: str, response: bytes | None,
                 config: _EventConfig) -> None:
        """The event is given up: its record goes to the on-failure destination, if any."""
        log.warning("%s (%s): event discarded after %d attempts (%s)", delivery.function.name,
                    delivery.request_id, delivery.attempts, condition)
        if config.on_failure is not None:
            self._send_record(config.on_failure,
                              _invocation_record(delivery, condition, response))


def _timeout_message(function: _Function) -> str:
    return f"Task timed out after {function.timeout_s:.2f} seconds"


def _timeout_line(execution: _Execution) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{stamp} {execution.request_id} {_timeout_message(execution.function)}"


def _error_body(error_type: str, message: str, request_id: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type,
                       "requestId": request_id, "stackTrace": []}).encode()


# -- HTTP ------------------------------------------------------------------------------------------
class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection; remembers the open connections so they can be shut down."""

    def __init__(self, address: tuple[str, int], owner: InvokeServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open connection down: its thread's next read ends, and so does the thread."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            # A client that went away, or a connection close() shut down.
            log.debug("connection from %s: %s", client_address, exc)
        else:
            log.exception("error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fsdgraph-invoke-server"
    timeout = IDLE_TIMEOUT_S

    @property
    def _owner(self) -> InvokeServer:
        return cast(_HTTPServer, self.server).owner

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._error(400, "InvalidRequestContentException", f"unreadable request body: {exc}",
                        str(uuid.uuid4()))
            return
        split = urlsplit(self.path)
        invoke = INVOKE_PATH.match(split.path)
        config = EVENT_INVOKE_CONFIG_PATH.match(split.path)
        if self.command == "POST" and invoke is not None:
            self._invoke(unquote(invoke["function"]), parse_qs(split.query), body)
        elif self.command == "GET" and ACCOUNT_SETTINGS_PATH.match(split.path):
            self._account_settings()
        elif self.command in ("PUT", "POST") and config is not None:
            self._put_event_invoke_config(unquote(config["function"]), body)
        elif self.command == "POST" and split.path == KILL_PATH:
            self._kill(body)
        elif self.command == "GET" and split.path == STATUS_PATH:
            self._json(200, self._owner.status())
        else:
            self._proxy(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError(f"Content-Length {length}")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise ValueError(f"the client sent {len(body)} of {length} bytes")
        return body

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            # A malformed chunk size (or an empty line) raises ValueError: a 400.
            size = int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _respond(self, status: int, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and status != 204:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, request_id: str,
               extra: Mapping[str, Any] | None = None) -> None:
        kind = "User" if status < 500 else "Service"
        body = json.dumps({"Type": kind, "message": message, **(extra or {})}).encode()
        self._respond(status, body, [("Content-Type", "application/json"),
                                     ("x-amzn-ErrorType", code),
                                     ("x-amzn-RequestId", request_id)])

    def _json(self, status: int, value: Any) -> None:
        self._respond(status, json.dumps(value).encode(),
                      [("Content-Type", "application/json"),
                       ("x-amzn-RequestId", str(uuid.uuid4()))])

    def _region(self) -> str:
        return _signing_region(self.headers.get("Authorization")) or DEFAULT_REGION

    # -- Invoke ------------------------------------------------------------------------------------
    def _invoke(self, identifier: str, query: Mapping[str, list[str]], body: bytes) -> None:
        request_id = str(uuid.uuid4())
        try:
            self._invoke_or_raise(identifier, query, body, request_id)
        except _ApiError as exc:
            self._error(exc.status, exc.code, exc.message, request_id, exc.extra)
        except OSError:
            raise  # the client went away: nobody to answer
        except Exception as exc:
            log.exception("invoking %s failed", identifier)
            self._error(500, "ServiceException", f"{type(exc).__name__}: {exc}", request_id)

    def _invoke_or_raise(self, identifier: str, query: Mapping[str, list[str]], body: bytes,
                         request_id: str) -> None:
        owner = self._owner
        invocation_type = self.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        if invocation_type not in INVOCATION_TYPES:
            raise _ApiError(400, "InvalidParameterValueException",
                            f"Unsupported invocation type {invocation_type!r}: expected one of "
                            f"{', '.join(sorted(INVOCATION_TYPES))}")
        if invocation_type == "Event" and len(body) > owner.max_event_bytes:
            raise _ApiError(413, "RequestEntityTooLargeException",
                            f"{len(body)} byte payload is too large for the Event invocation "
                            f"type (limit {owner.max_event_bytes} bytes)")
        if invocation_type == "RequestResponse" and len(body) > owner.max_request_response_bytes:
            raise _ApiError(413, "RequestEntityTooLargeException",
                            f"Request must be smaller than {owner.max_request_response_bytes} "
                            f"bytes for the InvokeFunction operation ({len(body)} bytes given)")
        qualifiers = query.get("Qualifier")
        ref = _parse_function(identifier, qualifiers[-1] if qualifiers else None)
        region = ref.region or _signing_region(self.headers.get("Authorization")) or DEFAULT_REGION
        function = owner._function(identifier, ref, region)
        if invocation_type == "DryRun":
            self._respond(204, b"", [("x-amzn-RequestId", request_id)])
            return
        try:
            if body.strip():
                json.loads(body)
        except ValueError as exc:
            raise _ApiError(400, "InvalidRequestContentException",
                            f"Could not parse request body into json: {exc}") from exc
        headers = [("x-amzn-RequestId", request_id)]
        if invocation_type == "Event":
            owner._accept_event(function, body, request_id)
            self._respond(202, b"", headers)
            return
        result, failed, logs = owner._run(function, body, request_id)
        headers += [("Content-Type", "application/json"),
                    ("X-Amz-Executed-Version", function.version)]
        if failed:
            headers.append(("X-Amz-Function-Error", "Unhandled"))
        if (self.headers.get("X-Amz-Log-Type") or "").lower() == "tail":
            headers.append(("X-Amz-Log-Result",
                            base64.b64encode(logs[-LOG_TAIL_BYTES:]).decode("ascii")))
        self._respond(200, result, headers)

    # -- answered here, or fixed up on the way -----------------------------------------------------
    def _account_settings(self) -> None:
        try:
            settings = self._owner._account_settings(self._region())
        except (ClientError, BotoCoreError) as exc:
            self._error(500, "ServiceException", f"reading functions upstream failed: {exc}",
                        str(uuid.uuid4()))
            return
        self._json(200, settings)

    def _put_event_invoke_config(self, identifier: str, body: bytes) -> None:
        """Put (PUT) or Update (POST) FunctionEventInvokeConfig: replace what moto stores."""
        try:
            body = self._owner._replace_event_invoke_config(
                identifier, self._region(), body, merge=self.command == "POST")
        except ValueError as exc:
            self._error(400, "InvalidRequestContentException", f"unreadable request: {exc}",
                        str(uuid.uuid4()))
            return
        except BotoCoreError as exc:
            self._error(502, "ServiceException", f"upstream failed: {exc}", str(uuid.uuid4()))
            return
        self._proxy(body)

    def _kill(self, body: bytes) -> None:
        """``{"match": {...}}``: kill the running executions whose event matches."""
        try:
            match = json.loads(body).get("match")
            if not isinstance(match, dict) or not match:
                raise ValueError("expected {\"match\": {a non-empty JSON object}}")
        except (ValueError, AttributeError) as exc:
            self._error(400, "InvalidRequestContentException", str(exc), str(uuid.uuid4()))
            return
        killed = self._owner.kill(match)
        self._json(200, {"killed": [{"functionName": name, "requestId": request_id}
                                    for name, request_id in killed]})

    # -- everything else ---------------------------------------------------------------------------
    def _proxy(self, body: bytes) -> None:
        owner = self._owner
        target = owner._upstream
        connection_class = (http.client.HTTPSConnection if target.scheme == "https"
                            else http.client.HTTPConnection)
        upstream = connection_class(target.netloc, timeout=UPSTREAM_TIMEOUT_S)
        try:
            upstream.putrequest(self.command, target.path + self.path, skip_host=True,
                                skip_accept_encoding=True)
            upstream.putheader("Host", target.netloc)
            for name, value in _forwarded(self.headers.items(), self.headers.get("Connection")):
                upstream.putheader(name, value)
            if body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
            status, reason, headers = response.status, response.reason, response.getheaders()
        except (OSError, http.client.HTTPException) as exc:
            log.warning("%s %s: upstream %s failed: %s", self.command, self.path, owner.upstream,
                        exc)
            self._error(502, "ServiceException", f"upstream {owner.upstream} failed: {exc}",
                        str(uuid.uuid4()))
            return
        finally:
            upstream.close()
        # Upstream's own status line and headers, verbatim: no Server or Date of ours added.
        self.send_response_only(status, reason)
        for name, value in _forwarded(headers, response.getheader("Connection")):
            self.send_header(name, value)
        no_body = self.command == "HEAD" or status in (204, 304) or status < 200
        if self.command == "HEAD":
            length = response.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        elif not no_body:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and not no_body:
            self.wfile.write(data)


def _forwarded(headers: Iterable[tuple[str, str]],
               connection: str | None) -> Iterator[tuple[str, str]]:
    """The end-to-end headers: not hop-by-hop, not named in ``Connection``, not rewritten."""
    dropped = HOP_BY_HOP | _REWRITTEN | {
        token.strip().lower() for token in (connection or "").split(",")}
    return ((name, value) for name, value in headers if name.lower() not in dropped)



# -- the subprocess: run one handler ---------------------------------------------------------------
@dataclass(frozen=True)
class LambdaContext:
    """The ``context`` a handler is called with: the attributes of Lambda's Python runtime.

    As there, ``memory_limit_in_mb`` is a string. ``deadline`` is the :func:`time.time` at which
    the invocation is killed.
    """

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: str
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline: float
    identity: None = None
    client_context: None = None

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation times out."""
        return max(0, int((self.deadline - time.time()) * 1000))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> LambdaContext:
        """The context of the invocation the server started this process for."""
        timeout_s = float(environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT", DEFAULT_TIMEOUT_S))
        return cls(
            function_name=environ.get("AWS_LAMBDA_FUNCTION_NAME", ""),
            function_version=environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            invoked_function_arn=environ.get(_ENV_FUNCTION_ARN, ""),
            memory_limit_in_mb=environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                                           str(DEFAULT_MEMORY_MB)),
            aws_request_id=environ.get(_ENV_REQUEST_ID, ""),
            log_group_name=environ.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
            log_stream_name=environ.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
            deadline=float(environ.get(_ENV_DEADLINE) or time.time() + timeout_s),
        )


class _RuntimeFailure(Exception):
    """A failure of the runtime rather than the handler, with Lambda's ``Runtime.*`` type."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _load_handler(spec: str) -> Callable[[Any, LambdaContext], Any]:
    """``module.function`` (or ``path/module.function``, as Lambda allows) as a callable."""
    module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise _RuntimeFailure("Runtime.MalformedHandlerName",
                              f"Bad handler '{spec}': not enough values to unpack "
                              "(expected 2, got 1)")
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        traceback.print_exc()
        raise _RuntimeFailure("Runtime.ImportModuleError",
                              f"Unable to import module '{module_name}': {exc}") from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise _RuntimeFailure("Runtime.HandlerNotFound",
                              f"Handler '{attribute}' missing on module '{module_name}'")
    return cast(Callable[[Any, LambdaContext], Any], handler)


def _run_handler(spec: str) -> int:
    """Call the handler on the JSON event on stdin; write its JSON result (or Lambda's error
    object) to stdout. The exit status tells which (see ``_FUNCTION_ERROR_STATUS``)."""
    # The result goes to the real stdout; whatever the handler prints goes to stderr, the
    # invocation's log, as on Lambda, so a print cannot corrupt the result.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    request_id = os.environ.get(_ENV_REQUEST_ID, "")
    status, result = 0, None
    try:
        payload = sys.stdin.buffer.read()
        try:
            event = json.loads(payload) if payload.strip() else {}
        except ValueError as exc:
            raise _RuntimeFailure("Runtime.UnmarshalError",
                                  f"Unable to unmarshal input: {exc}") from exc
        handler = _load_handler(spec)
        try:
            result = handler(event, LambdaContext.from_environ())
        except Exception as exc:
            traceback.print_exc()
            # The first frame is this function's call of the handler.
            stack = traceback.format_list(traceback.extract_tb(exc.__traceback__)[1:])
            status, result = _FUNCTION_ERROR_STATUS, {
                "errorMessage": str(exc), "errorType": type(exc).__name__,
                "requestId": request_id, "stackTrace": stack}
        try:
            data = json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            raise _RuntimeFailure("Runtime.MarshalError",
                                  f"Unable to marshal response: {exc}") from exc
    except _RuntimeFailure as failure:
        print(f"[ERROR] {failure.error_type}: {failure}", file=sys.stderr)
        status = _FUNCTION_ERROR_STATUS
        data = json.dumps({"errorMessage": str(failure), "errorType": failure.error_type,
                           "requestId": request_id, "stackTrace": []}).encode()
    with os.fdopen(result_fd, "wb") as out:
        out.write(data)
    return status


# -- the zygote: fork a handler per request --------------------------------------------------------
def _serve_forks(spec: str, control_fd: int) -> int:
    """Import the handler's module once, then fork a child per request on the control socket
    (see :class:`_Zygote`) and report each child's end, until the socket closes; then kill the
    children still running."""
    control = socket.socket(fileno=control_fd)
    module_name = spec.rpartition(".")[0].replace("/", ".")
    if module_name:
        try:
            importlib.import_module(module_name)
        except Exception:
            # Each child imports it again, and reports the failure as Lambda would.
            traceback.print_exc()
    global _PRCTL
    _PRCTL = _prctl()  # loaded once, not in every child
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    # SIGCHLD wakes the poll below through the pipe; the children are reaped there.
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    poller = select.poll()
    poller.register(control, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    children: set[int] = set()
    private = (control.fileno(), wake_r, wake_w)

    def send(message: Mapping[str, Any]) -> None:
        control.send(json.dumps(message).encode())

    send({"ready": True})
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    os.read(wake_r, 4096)
                    continue
                data, fds, _, _ = socket.recv_fds(control, 65536, 3)
                if not data:
                    return 0  # the server closed the socket, or died
                try:
                    request = json.loads(data)
                    reply: dict[str, Any] = {"tag": request["tag"]}
                    try:
                        pid = _fork_handler(spec, request["env"], fds, private)
                    except OSError as exc:
                        reply["error"] = f"fork failed: {exc}"
                    else:
                        children.add(pid)
                        reply["pid"] = pid
                finally:
                    for received in fds:
                        os.close(received)
                send(reply)
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                children.discard(pid)
                send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _fork_handler(spec: str, env: Mapping[str, str], fds: Sequence[int],
                  private: Sequence[int]) -> int:
    """Fork a child that runs the handler with ``fds`` as its stdin, stdout and stderr and
    ``env`` added to its environment; returns its pid. ``private`` are the zygote's own
    descriptors, closed in the child."""
    sys.stdout.flush()
    sys.stderr.flush()
    zygote = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    status = 70  # EX_SOFTWARE: the child's own set-up failed
    try:
        os.setsid()  # its own process group, as a cold start's
        _die_with_parent()
        if os.getppid() != zygote:  # the zygote died before the line above
            os._exit(status)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in private:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.environ.update(env)
        status = _run_handler(spec)
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


_PRCTL: Callable[..., int] | None = None


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, where there is one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return cast(Callable[..., int], ctypes.CDLL(None, use_errno=True).prctl)
    except (OSError, AttributeError):
        return None


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux)."""
    prctl = _PRCTL or _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# -- command line ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fsdgraph.testing.lambda_endpoint``: serve until SIGTERM or SIGINT, or
    (``--run``, ``--zygote``) be a handler's process."""
    parser = argparse.ArgumentParser(
        prog="python -m fsdgraph.testing.lambda_endpoint",
        description="A Lambda Invoke endpoint on 127.0.0.1 that runs Python handlers as local "
                    "processes and proxies every other request to a moto server. Quotas "
                    "(concurrent executions) come from FSDGRAPH_QUOTA_* and the config file's "
                    "[quotas].")
    parser.add_argument("--upstream", metavar="URL",
                        help="the moto server that stores the functions (required to serve)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any)")
    parser.add_argument("--log-dir", type=Path, metavar="DIR",
                        help="write each invocation's output to a file here")
    parser.add_argument("--max-event-bytes", type=int, default=1024 * 1024, metavar="N",
                        help="largest Event payload (default: %(default)s)")
    parser.add_argument("--max-request-response-bytes", type=int, default=6 * 1024 * 1024,
                        metavar="N", help="largest RequestResponse payload (default: %(default)s)")
    parser.add_argument("--cold", action="store_true",
                        help="start every execution in a fresh interpreter instead of forking it "
                             "from a warm one that imported the handler's module")
    parser.add_argument("--duplicate-events", action="store_true",
                        help="run every Event invocation twice, as Lambda's at-least-once "
                             "delivery may")
    parser.add_argument("--retry-delay", type=float, default=1.0, metavar="S",
                        help="seconds between a failed Event execution and its retry "
                             "(default: %(default)s; Lambda waits minutes)")
    parser.add_argument("--run", metavar="HANDLER",
                        help="internal: run HANDLER (module.function) on the JSON event on stdin "
                             "and write its result to stdout, as a cold execution does")
    parser.add_argument("--zygote", metavar="HANDLER",
                        help="internal: import HANDLER's module, then fork an execution per "
                             "request on --control-fd")
    parser.add_argument("--control-fd", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return _run_handler(args.run)
    if args.zygote:
        if args.control_fd is None:
            parser.error("--zygote needs --control-fd")
        return _serve_forks(args.zygote, args.control_fd)
    if not args.upstream:
        parser.error("--upstream is required")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with InvokeServer(args.upstream, port=args.port, log_dir=args.log_dir,
                      max_event_bytes=args.max_event_bytes,
                      max_request_response_bytes=args.max_request_response_bytes,
                      duplicate_events=args.duplicate_events, warm=not args.cold,
                      retry_delay_s=args.retry_delay) as server:
        print(f"listening on {server.url}", flush=True)
        stop.wait()
        log.info("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
