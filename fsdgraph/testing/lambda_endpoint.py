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

**Concurrency** (:mod:`fsdgraph.testing.lambda_executions`).
At most ``quotas.lambda_concurrency`` handlers run at once (the account's
"Concurrent executions"; ``quotas`` default to :func:`~fsdgraph.quotas.load_quotas` of the
environment). A RequestResponse invocation beyond it is refused with HTTP 429
``TooManyRequestsException`` (Reason ``ConcurrentInvocationLimitExceeded``); an Event invocation
is accepted and waits in a first-in first-out queue until an execution ends, as Lambda queues
throttled asynchronous events. GetAccountSettings (``GET /2016-08-19/account-settings``) is
answered here: ``ConcurrentExecutions`` is the quota, ``UnreservedConcurrentExecutions`` the quota
minus the functions' reserved concurrency (PutFunctionConcurrency goes to moto, which stores it).
Reserved concurrency is reported, not enforced per function.

**Asynchronous failures** (:mod:`fsdgraph.testing.lambda_async`).
An Event execution fails when its handler raises, times out or its
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
process. ``POST /_fsdgraph/hold`` with ``{"match": {...}}`` keeps the Event invocations accepted
from then on whose event matches from starting (their Timeout does not run), until ``POST
/_fsdgraph/release`` with the same match, which answers ``{"released": n}`` (in-process:
:meth:`InvokeServer.hold`, :meth:`InvokeServer.release`). ``GET /_fsdgraph/status`` answers
:meth:`InvokeServer.status`: the executions running (function, request id, pid), the Event
deliveries queued and held, and the zygotes' pids. With
``duplicate_events`` every Event invocation runs twice (two executions, one request id), as
Lambda's at-least-once delivery may do.

**Processes** (:mod:`fsdgraph.testing.lambda_zygote`, :mod:`fsdgraph.testing.lambda_runtime`).
Warm (the default, on Linux): per function configuration, a zygote (``python -m
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
  package (moto keeps the zip, nobody unpacks it); a container image function
  (``PackageType="Image"``, ``Code={"ImageUri": ...}``, which moto stores without checking the
  image) runs the same way, its handler the first word of its ``ImageConfig.Command``, with the
  function's environment variables but not the image's ENV (the image is never pulled);
* MemorySize is reported to the handler (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, the context), not
  enforced: a process the kernel kills for memory fails as any killed process does;
* each execution's stderr goes to ``<function>-<seq>-<request id>.log`` in ``log_dir``, followed
  by its result for an Event one, not to CloudWatch; ``seq`` counts the function's executions, so
  a retry or a duplicate has its own file.

The handler only ever gets JSON: payloads are parsed with :func:`json.loads` and results written
with :func:`json.dumps`.

The parts, one module each:

* this module: the HTTP endpoint (Invoke, GetAccountSettings, the test controls), the proxy to
  moto for everything else, :class:`InvokeServer` and the command line;
* :mod:`fsdgraph.testing.lambda_functions`: functions as moto stores them and requests name them,
  and errors in Lambda's format;
* :mod:`fsdgraph.testing.lambda_executions`: executions, from start to outcome, and the
  concurrency slots they hold;
* :mod:`fsdgraph.testing.lambda_async`: the Event queue, retries, expiry and on-failure records;
* :mod:`fsdgraph.testing.lambda_zygote`: warm starts, both the server's and the zygote's side;
* :mod:`fsdgraph.testing.lambda_runtime`: a handler's process: what runs in it, how the server
  talks to it, cold starts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from fsdgraph.quotas import Quotas, load_quotas
from fsdgraph.testing.lambda_async import EventQueue, replace_event_invoke_config
from fsdgraph.testing.lambda_executions import Executions
from fsdgraph.testing.lambda_functions import (
    DEFAULT_REGION,
    UPSTREAM_TIMEOUT_S,
    ApiError,
    Upstream,
    parse_function,
    signing_region,
)
from fsdgraph.testing.lambda_runtime import KILL_GRACE_S, LambdaContext, run_handler
from fsdgraph.testing.lambda_zygote import WARM_SUPPORTED, serve_forks

__all__ = ["InvokeServer", "LambdaContext", "main"]

log = logging.getLogger(__name__)

#: The Invoke operation's path, and the other requests answered here; everything else goes
#: upstream.
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<function>[^/]+)/invocations$")
ACCOUNT_SETTINGS_PATH = re.compile(r"^/2016-08-19/account-settings/?$")
EVENT_INVOKE_CONFIG_PATH = re.compile(
    r"^/2019-09-25/functions/(?P<function>[^/]+)/event-invoke-config/?$")
KILL_PATH = "/_fsdgraph/kill"
HOLD_PATH = "/_fsdgraph/hold"
RELEASE_PATH = "/_fsdgraph/release"
STATUS_PATH = "/_fsdgraph/status"
INVOCATION_TYPES = frozenset({"RequestResponse", "Event", "DryRun"})
#: ``LogType=Tail`` returns the last 4 KB of the invocation's log, as Lambda does.
LOG_TAIL_BYTES = 4096
#: A keep-alive connection idle this long is closed, so an abandoned client holds no thread.
IDLE_TIMEOUT_S = 120.0

#: Headers that describe one connection rather than the request, never forwarded (RFC 9110 7.6.1),
#: plus the ones the proxy sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_REWRITTEN = frozenset({"host", "content-length", "expect"})


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
    every execution in a fresh interpreter (always so where
    :data:`~fsdgraph.testing.lambda_zygote.WARM_SUPPORTED` is false); ``retry_delay_s``
    separates a failed Event execution from its retry. The module docstring says what each does.
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
        self._proxy_target = split
        self.log_dir = Path(log_dir) if log_dir is not None else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_event_bytes = max_event_bytes
        self.max_request_response_bytes = max_request_response_bytes
        self.quotas = load_quotas(environ=os.environ) if quotas is None else quotas
        self.duplicate_events = duplicate_events
        self.warm = warm and WARM_SUPPORTED
        self.retry_delay_s = retry_delay_s
        self._moto = Upstream(self.upstream)
        self._executions = Executions(self.quotas, log_dir=self.log_dir, warm=self.warm)
        self._events = EventQueue(self._executions, self._moto, retry_delay_s=retry_delay_s,
                                  max_event_bytes=max_event_bytes,
                                  duplicate_events=duplicate_events)
        self._lock = threading.Lock()
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
        with self._executions.lock:
            return Counter(self._executions.invocations)

    @property
    def executions(self) -> Counter[str]:
        """How many handler processes each function has had started so far, retries and
        duplicates included (a copy)."""
        with self._executions.lock:
            return Counter(self._executions.started)

    def status(self) -> dict[str, Any]:
        """The executions running (function, request id, pid), how many Event deliveries wait
        for a slot and how many are held, the two counters, and the zygotes' pids."""
        executions = self._executions
        # The event queue shares the executions' lock: all the numbers are of one instant.
        with executions.lock:
            status = {"running": executions.describe_running(), "queued": self._events.queued,
                      "held": self._events.held,
                      "invocations": dict(executions.invocations),
                      "executions": dict(executions.started)}
        return {**status, "zygotes": executions.zygotes.pids()}

    def kill(self, match: Mapping[str, Any]) -> list[tuple[str, str]]:
        """SIGKILL the running executions whose event has every member of ``match``; returns
        their (function name, request id)."""
        return self._executions.kill(match)

    def hold(self, match: Mapping[str, Any]) -> None:
        """Hold the Event invocations accepted from now on whose event has every member of
        ``match``: they start only once :meth:`release` ends the hold."""
        self._events.hold(match)

    def release(self, match: Mapping[str, Any]) -> int:
        """End the hold of ``match``; returns how many invocations it frees to start."""
        return self._events.release(match)

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
        running = self._executions.close()
        self._events.close()
        if serving is not None:
            self._httpd.shutdown()
            serving.join()
        # Idle keep-alive connections would otherwise keep their threads (which server_close
        # joins) waiting for a next request.
        self._httpd.close_connections()
        for execution in running:
            execution.kill()
        self._httpd.server_close()
        self._events.join(KILL_GRACE_S * 2)
        self._executions.zygotes.close()
        self._moto.close()

    def __enter__(self) -> InvokeServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


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
        elif self.command == "POST" and split.path in (KILL_PATH, HOLD_PATH, RELEASE_PATH):
            self._control(split.path, body)
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
        return signing_region(self.headers.get("Authorization")) or DEFAULT_REGION

    # -- Invoke ------------------------------------------------------------------------------------
    def _invoke(self, identifier: str, query: Mapping[str, list[str]], body: bytes) -> None:
        request_id = str(uuid.uuid4())
        try:
            self._invoke_or_raise(identifier, query, body, request_id)
        except ApiError as exc:
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
            raise ApiError(400, "InvalidParameterValueException",
                           f"Unsupported invocation type {invocation_type!r}: expected one of "
                           f"{', '.join(sorted(INVOCATION_TYPES))}")
        if invocation_type == "Event" and len(body) > owner.max_event_bytes:
            raise ApiError(413, "RequestEntityTooLargeException",
                           f"{len(body)} byte payload is too large for the Event invocation "
                           f"type (limit {owner.max_event_bytes} bytes)")
        if invocation_type == "RequestResponse" and len(body) > owner.max_request_response_bytes:
            raise ApiError(413, "RequestEntityTooLargeException",
                           f"Request must be smaller than {owner.max_request_response_bytes} "
                           f"bytes for the InvokeFunction operation ({len(body)} bytes given)")
        qualifiers = query.get("Qualifier")
        ref = parse_function(identifier, qualifiers[-1] if qualifiers else None)
        region = ref.region or signing_region(self.headers.get("Authorization")) or DEFAULT_REGION
        function = owner._moto.function(identifier, ref, region)
        if invocation_type == "DryRun":
            self._respond(204, b"", [("x-amzn-RequestId", request_id)])
            return
        try:
            if body.strip():
                json.loads(body)
        except ValueError as exc:
            raise ApiError(400, "InvalidRequestContentException",
                           f"Could not parse request body into json: {exc}") from exc
        headers = [("x-amzn-RequestId", request_id)]
        if invocation_type == "Event":
            owner._events.accept(function, body, request_id)
            self._respond(202, b"", headers)
            return
        result, failed, logs = owner._executions.run(function, body, request_id,
                                                     owner.max_request_response_bytes)
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
            owner = self._owner
            settings = owner._moto.account_settings(self._region(),
                                                    owner.quotas.lambda_concurrency)
        except (ClientError, BotoCoreError) as exc:
            self._error(500, "ServiceException", f"reading functions upstream failed: {exc}",
                        str(uuid.uuid4()))
            return
        self._json(200, settings)

    def _put_event_invoke_config(self, identifier: str, body: bytes) -> None:
        """Put (PUT) or Update (POST) FunctionEventInvokeConfig: replace what moto stores."""
        try:
            body = replace_event_invoke_config(
                self._owner._moto, identifier, self._region(), body, merge=self.command == "POST")
        except ValueError as exc:
            self._error(400, "InvalidRequestContentException", f"unreadable request: {exc}",
                        str(uuid.uuid4()))
            return
        except BotoCoreError as exc:
            self._error(502, "ServiceException", f"upstream failed: {exc}", str(uuid.uuid4()))
            return
        self._proxy(body)

    def _control(self, path: str, body: bytes) -> None:
        """``{"match": {...}}``: kill the running executions whose event matches, or hold or
        release the Event invocations whose event matches."""
        try:
            match = json.loads(body).get("match")
            if not isinstance(match, dict) or not match:
                raise ValueError("expected {\"match\": {a non-empty JSON object}}")
        except (ValueError, AttributeError) as exc:
            self._error(400, "InvalidRequestContentException", str(exc), str(uuid.uuid4()))
            return
        owner = self._owner
        if path == KILL_PATH:
            self._json(200, {"killed": [{"functionName": name, "requestId": request_id}
                                        for name, request_id in owner.kill(match)]})
        elif path == HOLD_PATH:
            owner.hold(match)
            self._json(200, {"held": match})
        else:
            self._json(200, {"released": owner.release(match)})

    # -- everything else ---------------------------------------------------------------------------
    def _proxy(self, body: bytes) -> None:
        owner = self._owner
        target = owner._proxy_target
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
        return run_handler(args.run)
    if args.zygote:
        if args.control_fd is None:
            parser.error("--zygote needs --control-fd")
        return serve_forks(args.zygote, args.control_fd)
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
