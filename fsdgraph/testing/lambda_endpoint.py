"""A local endpoint for AWS Lambda's ``Invoke`` that runs Python handlers in subprocesses, in front
of a moto server that holds everything else.

moto stores Lambda functions (CreateFunction, GetFunction, DeleteFunction,
PutFunctionEventInvokeConfig, ...) but can only run them in Docker. Point botocore's ``lambda``
endpoint at an :class:`InvokeServer` instead: every request that is not an Invoke is proxied
verbatim to the upstream moto server, so functions are created and configured there as usual;
``POST /2015-03-31/functions/{FunctionName}/invocations`` looks the function up in moto (handler,
timeout, memory size, environment variables) and runs its handler here, one subprocess per
invocation::

    python -m moto.server -H 127.0.0.1 -p 5000 &
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

The subprocess is ``python -m fsdgraph.testing.lambda_endpoint --run HANDLER`` with the event
on stdin and the result on stdout; its environment is the server's plus the function's variables
plus Lambda's reserved ones (``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_REGION``, ...). Differences from
Lambda, all deliberate:

* the handler is imported from the server's Python environment, never from the function's code
  package (moto keeps the zip, nobody unpacks it);
* every invocation is a cold start in a fresh process, and the function's Timeout counts from the
  process start, interpreter start-up and imports included (Lambda times its init phase apart);
* an asynchronous invocation is never retried and has no destinations or dead-letter queue
  (fsdgraph deploys its workers with ``MaximumRetryAttempts=0``), and there is no concurrency
  limit;
* an Event invocation's stdout and stderr go to ``<function>-<seq>-<request id>.log`` in
  ``log_dir`` (a RequestResponse one's stderr too), not to CloudWatch.

The handler only ever gets JSON: payloads are parsed with :func:`json.loads` and results written
with :func:`json.dumps`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import importlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from types import FrameType, TracebackType
from typing import IO, Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

__all__ = ["InvokeServer", "LambdaContext", "main"]

log = logging.getLogger(__name__)

#: What the subprocesses run (``__name__`` is ``__main__`` when the server itself runs with -m).
MODULE = "fsdgraph.testing.lambda_endpoint"

#: The Invoke operation's path; every other request goes upstream.
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<function>[^/]+)/invocations$")
INVOCATION_TYPES = frozenset({"RequestResponse", "Event", "DryRun"})
#: Where the region comes from when neither the ARN nor the request's signature names one.
DEFAULT_REGION = "us-east-1"
#: Lambda's defaults for a function created without Timeout or MemorySize.
DEFAULT_TIMEOUT_S = 3
DEFAULT_MEMORY_MB = 128
#: ``LogType=Tail`` returns the last 4 KB of the invocation's log, as Lambda does.
LOG_TAIL_BYTES = 4096
#: How long a killed invocation may take to release its pipes before they are closed on it.
KILL_GRACE_S = 5.0
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

# The subprocess's side of the protocol. Its exit status says how to read its stdout: 0, the
# handler's result; _FUNCTION_ERROR_STATUS, Lambda's error object; anything else (or output that
# does not parse) means the process died, as Lambda's Runtime.ExitError.
_FUNCTION_ERROR_STATUS = 1
_ENV_REQUEST_ID = "FSDGRAPH_INVOKE_REQUEST_ID"
_ENV_FUNCTION_ARN = "FSDGRAPH_INVOKE_FUNCTION_ARN"
_ENV_DEADLINE = "FSDGRAPH_INVOKE_DEADLINE"


class _ApiError(Exception):
    """An error answered in Lambda's format: HTTP ``status``, ``x-amzn-ErrorType: code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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

    def environment(self, request_id: str, deadline: float) -> dict[str, str]:
        """The subprocess's environment: ours, then the function's, then Lambda's reserved."""
        return {
            **os.environ,
            **self.variables,
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": self.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self.timeout_s),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": request_id,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "_HANDLER": self.handler,
            _ENV_REQUEST_ID: request_id,
            _ENV_FUNCTION_ARN: self.invoked_arn,
            _ENV_DEADLINE: f"{deadline:.3f}",
        }


@dataclass
class _Invocation:
    """One running subprocess."""

    function: _Function
    request_id: str
    seq: int
    payload: bytes
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Outcome:
    """How an invocation's subprocess ended."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration_s: float


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the subprocess and whatever it started (it leads its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal: {signal.Signals(-returncode).name.removeprefix('SIG').lower()}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class InvokeServer:
    """The endpoint: proxies to ``upstream`` (a moto server URL) and runs invocations itself.

    Binds 127.0.0.1:``port`` (0 for any free port) at construction; :meth:`start` serves in a
    daemon thread; :meth:`close` stops serving and kills the invocations still running. Usable as
    a context manager (entering starts it). ``log_dir`` receives one log file per invocation
    (created if missing). Payloads above ``max_event_bytes`` (Event) or
    ``max_request_response_bytes`` (RequestResponse) are refused with HTTP 413.
    """

    def __init__(self, upstream: str, *, port: int = 0, log_dir: Path | None = None,
                 max_event_bytes: int = 1024 * 1024,
                 max_request_response_bytes: int = 6 * 1024 * 1024) -> None:
        self.upstream = upstream.rstrip("/")
        split = urlsplit(self.upstream)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"upstream must be an http(s) URL, not {upstream!r}")
        self._upstream = split
        self.log_dir = Path(log_dir) if log_dir is not None else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_event_bytes = max_event_bytes
        self.max_request_response_bytes = max_request_response_bytes
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._running: dict[str, _Invocation] = {}
        self._watchers: set[threading.Thread] = set()
        self._session: botocore.session.Session | None = None
        self._clients: dict[str, Any] = {}
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
        """Stop serving, kill the invocations still running and wait for them (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._thread
            running = list(self._running.values())
        if serving is not None:
            self._httpd.shutdown()
            serving.join()
        # Idle keep-alive connections would otherwise keep their threads (which server_close
        # joins) waiting for a next request.
        self._httpd.close_connections()
        for invocation in running:
            _kill(invocation.proc)
        self._httpd.server_close()
        with self._lock:
            watchers = list(self._watchers)
        for thread in watchers:
            thread.join(KILL_GRACE_S * 2)
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

    # -- looking functions up ----------------------------------------------------------------------
    def _lambda_client(self, region: str) -> Any:
        # Creating botocore clients is not thread-safe; using them is.
        with self._clients_lock:
            client = self._clients.get(region)
            if client is None:
                if self._session is None:
                    self._session = botocore.session.get_session()
                config = Config(retries={"mode": "standard", "max_attempts": 3},
                                connect_timeout=10, read_timeout=UPSTREAM_TIMEOUT_S)
                client = self._session.create_client("lambda", region_name=region,
                                                     endpoint_url=self.upstream, config=config)
                self._clients[region] = client
            return client

    def _function(self, identifier: str, ref: _FunctionRef, region: str) -> _Function:
        """The function's configuration, from upstream; 404 in Lambda's form when missing."""
        # Upstream gets the bare name: moto does not route a name with a qualifier in it, and
        # fails on partial ARNs.
        kwargs: dict[str, str] = {"FunctionName": ref.name}
        if ref.qualifier:
            kwargs["Qualifier"] = ref.qualifier
        try:
            response = self._lambda_client(region).get_function(**kwargs)
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

    # -- running them ------------------------------------------------------------------------------
    def _launch(self, function: _Function, payload: bytes, request_id: str, *,
                wait: bool) -> _Invocation:
        """Start the handler's subprocess and count the invocation. With ``wait`` the caller
        supervises it (its stdout and stderr are pipes); without, a watcher thread does."""
        command = [sys.executable, "-m", MODULE, "--run", function.handler]
        with self._lock:
            if self._closed:
                raise _ApiError(500, "ServiceException", "the invoke server is shutting down")
            seq = self._counts[function.name] + 1
            log_path = None
            if self.log_dir is not None:
                log_path = self.log_dir / f"{function.name}-{seq}-{request_id}.log"
            output: IO[bytes] | int = subprocess.PIPE
            if not wait:
                output = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
            try:
                proc = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=output,
                    stderr=subprocess.PIPE if wait else subprocess.STDOUT,
                    env=function.environment(request_id, time.time() + function.timeout_s),
                    # Its own process group, so a timeout kills what the handler started too,
                    # and a Ctrl-C meant for the server does not reach it.
                    start_new_session=True,
                )
            except OSError as exc:
                raise _ApiError(500, "ServiceException",
                                f"cannot start the handler: {exc}") from exc
            finally:
                if not isinstance(output, int):
                    output.close()
            self._counts[function.name] = seq
            invocation = _Invocation(function, request_id, seq, payload, proc, log_path)
            self._running[request_id] = invocation
            if not wait:
                watcher = threading.Thread(target=self._watch, args=(invocation,),
                                           name=f"invoke-{function.name}-{seq}", daemon=True)
                self._watchers.add(watcher)
                watcher.start()
        log.info("%s #%d (%s): %s invocation started", function.name, seq, request_id,
                 "RequestResponse" if wait else "Event")
        return invocation

    def _supervise(self, invocation: _Invocation) -> _Outcome:
        """Feed the event, wait for the end, kill the subprocess past the function's Timeout."""
        proc, timeout_s = invocation.proc, invocation.function.timeout_s
        timed_out = False
        try:
            try:
                stdout, stderr = proc.communicate(invocation.payload, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
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
        finally:
            with self._lock:
                self._running.pop(invocation.request_id, None)
        outcome = _Outcome(proc.returncode, stdout or b"", stderr or b"", timed_out,
                           time.monotonic() - invocation.started)
        self._record(invocation, outcome)
        return outcome

    def _record(self, invocation: _Invocation, outcome: _Outcome) -> None:
        """Log how the invocation ended, and complete its log file."""
        f = invocation.function
        what = f"{f.name} #{invocation.seq} ({invocation.request_id})"
        if outcome.timed_out:
            log.warning("%s: timed out after %d s; killed", what, f.timeout_s)
        elif outcome.returncode == 0:
            log.info("%s: finished in %.2f s", what, outcome.duration_s)
        else:
            log.warning("%s: failed after %.2f s (%s)", what, outcome.duration_s,
                        _describe_exit(outcome.returncode))
        if invocation.log_path is not None:
            with open(invocation.log_path, "ab") as log_file:
                log_file.write(outcome.stderr)
                if outcome.timed_out:
                    log_file.write(_timeout_line(invocation).encode() + b"\n")

    def _watch(self, invocation: _Invocation) -> None:
        try:
            self._supervise(invocation)
        except Exception:
            log.exception("%s #%d: supervising the invocation failed", invocation.function.name,
                          invocation.seq)
        finally:
            with self._lock:
                self._watchers.discard(threading.current_thread())

    def _run(self, function: _Function, payload: bytes,
             request_id: str) -> tuple[bytes, bool, bytes]:
        """A RequestResponse invocation: its response body, whether it is a function error, and
        its log."""
        invocation = self._launch(function, payload, request_id, wait=True)
        outcome = self._supervise(invocation)
        logs = outcome.stderr
        if outcome.timed_out:
            logs += _timeout_line(invocation).encode() + b"\n"
            return _error_body("Sandbox.Timedout",
                               f"RequestId: {request_id} Error: {_timeout_message(function)}",
                               request_id), True, logs
        if outcome.returncode in (0, _FUNCTION_ERROR_STATUS):
            try:
                value = json.loads(outcome.stdout)
            except ValueError:
                pass
            else:
                if outcome.returncode == 0:
                    if len(outcome.stdout) > self.max_request_response_bytes:
                        return _error_body(
                            "Function.ResponseSizeTooLarge",
                            "Response payload size exceeded maximum allowed payload size "
                            f"({self.max_request_response_bytes} bytes).", request_id), True, logs
                    return outcome.stdout, False, logs
                if isinstance(value, dict) and "errorType" in value:
                    return outcome.stdout, True, logs
        return _error_body("Runtime.ExitError",
                           f"RequestId: {request_id} Error: Runtime exited with error: "
                           f"{_describe_exit(outcome.returncode)}", request_id), True, logs


def _timeout_message(function: _Function) -> str:
    return f"Task timed out after {function.timeout_s:.2f} seconds"


def _timeout_line(invocation: _Invocation) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{stamp} {invocation.request_id} {_timeout_message(invocation.function)}"


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
        match = INVOKE_PATH.match(split.path)
        if self.command == "POST" and match is not None:
            self._invoke(unquote(match["function"]), parse_qs(split.query), body)
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

    def _error(self, status: int, code: str, message: str, request_id: str) -> None:
        kind = "User" if status < 500 else "Service"
        body = json.dumps({"Type": kind, "message": message}).encode()
        self._respond(status, body, [("Content-Type", "application/json"),
                                     ("x-amzn-ErrorType", code),
                                     ("x-amzn-RequestId", request_id)])

    # -- Invoke ------------------------------------------------------------------------------------
    def _invoke(self, identifier: str, query: Mapping[str, list[str]], body: bytes) -> None:
        request_id = str(uuid.uuid4())
        try:
            self._invoke_or_raise(identifier, query, body, request_id)
        except _ApiError as exc:
            self._error(exc.status, exc.code, exc.message, request_id)
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
            owner._launch(function, body, request_id, wait=False)
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


# -- command line ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fsdgraph.testing.lambda_endpoint``: serve until SIGTERM or SIGINT, or
    (``--run``) be one invocation's subprocess."""
    parser = argparse.ArgumentParser(
        prog="python -m fsdgraph.testing.lambda_endpoint",
        description="A Lambda Invoke endpoint on 127.0.0.1 that runs Python handlers in "
                    "subprocesses and proxies every other request to a moto server.")
    parser.add_argument("--upstream", metavar="URL",
                        help="the moto server that stores the functions (required to serve)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any)")
    parser.add_argument("--log-dir", type=Path, metavar="DIR",
                        help="write each invocation's output to a file here")
    parser.add_argument("--max-event-bytes", type=int, default=1024 * 1024, metavar="N",
                        help="largest Event payload (default: %(default)s)")
    parser.add_argument("--max-request-response-bytes", type=int, default=6 * 1024 * 1024,
                        metavar="N", help="largest RequestResponse payload (default: %(default)s)")
    parser.add_argument("--run", metavar="HANDLER",
                        help="internal: run HANDLER (module.function) on the JSON event on stdin "
                             "and write its result to stdout, as the server's subprocesses do")
    args = parser.parse_args(argv)
    if args.run:
        return _run_handler(args.run)
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
                      max_request_response_bytes=args.max_request_response_bytes) as server:
        print(f"listening on {server.url}", flush=True)
        stop.wait()
        log.info("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
