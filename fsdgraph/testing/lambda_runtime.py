"""A handler's process, for :mod:`fsdgraph.testing.lambda_endpoint`: what runs inside it, how the
server talks to it, and how a cold one is started.

The protocol is the same whether the process was started cold (a fresh ``python -m
fsdgraph.testing.lambda_endpoint --run HANDLER``, :class:`ColdProcess`) or forked warm from a
zygote (:mod:`fsdgraph.testing.lambda_zygote`): the event arrives as JSON on stdin; the process
writes the handler's JSON result to stdout and exits 0, or writes Lambda's error object and exits
:data:`FUNCTION_ERROR_STATUS`. Any other exit status, or output that does not parse, means the
process died, which the server reports as Lambda's ``Runtime.ExitError``. Whatever the handler
prints goes to stderr, the invocation's log. The invocation's request id, invoked ARN and deadline
come in the environment (:data:`ENV_REQUEST_ID`, ...), next to Lambda's reserved variables, and
become the handler's :class:`LambdaContext`.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

__all__ = [
    "COMMAND_MODULE", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "ENV_DEADLINE", "ENV_FUNCTION_ARN",
    "ENV_REQUEST_ID", "FUNCTION_ERROR_STATUS", "KILL_GRACE_S", "ColdProcess", "LambdaContext",
    "LaunchError", "Process", "describe_exit", "run_handler",
]

#: The module whose command line starts a handler's process (``--run``) or a zygote
#: (``--zygote``): the endpoint's, so one documented command line covers every process the server
#: starts. Named here because ``__name__`` is ``__main__`` when the server itself runs with -m.
COMMAND_MODULE = "fsdgraph.testing.lambda_endpoint"
#: Lambda's defaults for a function created without Timeout or MemorySize.
DEFAULT_TIMEOUT_S = 3
DEFAULT_MEMORY_MB = 128
#: How long a killed invocation may take to release its pipes before they are closed on it.
KILL_GRACE_S = 5.0

# The exit status that says stdout holds Lambda's error object rather than the handler's result.
FUNCTION_ERROR_STATUS = 1
# The variables that carry what differs from one execution to the next.
ENV_REQUEST_ID = "FSDGRAPH_INVOKE_REQUEST_ID"
ENV_FUNCTION_ARN = "FSDGRAPH_INVOKE_FUNCTION_ARN"
ENV_DEADLINE = "FSDGRAPH_INVOKE_DEADLINE"


# -- inside the process ----------------------------------------------------------------------------
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
            invoked_function_arn=environ.get(ENV_FUNCTION_ARN, ""),
            memory_limit_in_mb=environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                                           str(DEFAULT_MEMORY_MB)),
            aws_request_id=environ.get(ENV_REQUEST_ID, ""),
            log_group_name=environ.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
            log_stream_name=environ.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
            deadline=float(environ.get(ENV_DEADLINE) or time.time() + timeout_s),
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


def run_handler(spec: str) -> int:
    """Call the handler on the JSON event on stdin; write its JSON result (or Lambda's error
    object) to stdout. The exit status tells which (see :data:`FUNCTION_ERROR_STATUS`)."""
    # The result goes to the real stdout; whatever the handler prints goes to stderr, the
    # invocation's log, as on Lambda, so a print cannot corrupt the result.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    request_id = os.environ.get(ENV_REQUEST_ID, "")
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
            status, result = FUNCTION_ERROR_STATUS, {
                "errorMessage": str(exc), "errorType": type(exc).__name__,
                "requestId": request_id, "stackTrace": stack}
        try:
            data = json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            raise _RuntimeFailure("Runtime.MarshalError",
                                  f"Unable to marshal response: {exc}") from exc
    except _RuntimeFailure as failure:
        print(f"[ERROR] {failure.error_type}: {failure}", file=sys.stderr)
        status = FUNCTION_ERROR_STATUS
        data = json.dumps({"errorMessage": str(failure), "errorType": failure.error_type,
                           "requestId": request_id, "stackTrace": []}).encode()
    with os.fdopen(result_fd, "wb") as out:
        out.write(data)
    return status


# -- the server's side -----------------------------------------------------------------------------
def describe_exit(returncode: int) -> str:
    """An exit status in the words Lambda's runtime errors use: "signal: killed", "exit status
    3"."""
    if returncode < 0:
        description = signal.strsignal(-returncode)
        return f"signal: {description.lower()}" if description else f"signal {-returncode}"
    return f"exit status {returncode}"


class LaunchError(Exception):
    """No process could be started for the execution."""


class Process(Protocol):
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


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the subprocess and whatever it started (it leads its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


class ColdProcess:
    """A cold start: a fresh interpreter runs the handler (``--run``), so its Timeout counts
    interpreter start-up and imports too."""

    def __init__(self, handler: str, env: Mapping[str, str], stderr: int | IO[bytes]) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", COMMAND_MODULE, "--run", handler], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, env=dict(env),
                # Its own process group, so a timeout kills what the handler started too, and a
                # Ctrl-C meant for the server does not reach it.
                start_new_session=True)
        except OSError as exc:
            raise LaunchError(f"cannot start the handler: {exc}") from exc

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
