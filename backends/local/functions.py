"""Local "functions": every invocation is a worker started on this machine.

``invoke`` returns once the worker is started or queued to start, as Lambda's
``InvocationType=Event`` returns once the event is queued. With a warm launcher
(:mod:`fsdgraph.backends.local.launcher`, the default) the worker is forked from a parent that
has already imported the runtime, as a process of its own or, in a run of more workers than the
machine holds as processes, as a task of one of the run's host processes
(:mod:`fsdgraph.backends.local.hosts`); without one, a cold ``python -m fsdgraph.backends.local
run`` is started. Either way the event travels as compact JSON (never pickled,
:func:`fsdgraph.transport.invoke_payload`); the callers have checked it against the same payload
limit as an asynchronous Lambda invoke (:func:`fsdgraph.transport.check_invoke_payload`).

Invocations reach the launcher from the scheduler and from every worker that starts its children
(the invocation tree), so from many processes at once: a connection the launcher cannot take yet
(its backlog is full) or that breaks is tried again with backoff until ``startup_timeout_s``, so
an invocation can be delivered twice (at-least-once, as Lambda's; workers claim their identity,
so a second copy exits).

The run directory (``LocalBackend.session``) holds ``pids/``, where every worker process and host
process records its pid as it starts (:func:`register`: ``<worker>.<pid>``, ``host-<h>.<pid>``),
and ``logs/``, where they write their
output. :func:`stop_workers` ends a run: it marks the run closed, so that nothing starts in it any
more, then kills every process recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsdgraph.backend import Functions
from fsdgraph.backends.local.owner import (
    CLOSED,
    LAUNCHER_PREFIX,
    make_directory,
    read_owner,
    recorded_process,
    sweep,
)
from fsdgraph.errors import TransportError
from fsdgraph.retry import Backoff
from fsdgraph.transport import invoke_payload

_MODULE = "fsdgraph.backends.local"


#: While the launcher starts, or while it cannot take a connection, an invocation is tried again
#: after these waits (doubling from the first to the second, with jitter).
_RETRY_S = (0.005, 0.1)
#: The longest a blocking exchange with the launcher may hold up its caller's event loop.
_BLOCKING_S = 0.25
#: A directory so named was made for one launcher (by its :class:`WarmPool`): socket and log.
DIRECTORY_PREFIX = LAUNCHER_PREFIX
#: The longest path of a UNIX socket that every system takes (Linux: 107 bytes, macOS: 103).
SOCKET_PATH_MAX = 100
#: How often a worker process checks that its launcher (or, cold, its coordinator) and its run
#: are still there (seconds).
WATCH_S = 0.5


class ProcessFunctions(Functions):
    """Start workers on this machine (see the module docstring). The event's size is
    checked by the caller against ``Limits.max_invoke_payload_bytes``, once, in the core."""

    def __init__(self, *, launcher: str | None = None, startup_timeout_s: float = 60.0,
                 blocking: bool = False) -> None:
        self.launcher = launcher
        self.startup_timeout_s = startup_timeout_s
        #: Try the exchange with the launcher once without yielding to the event loop (for up
        #: to :data:`_BLOCKING_S`) before the asynchronous tries: in a host process hundreds of
        #: workers share one loop, and waiting for its turn at each step of the exchange costs
        #: far more than the exchange itself (a fraction of a millisecond).
        self.blocking = blocking
        self._cold: list[subprocess.Popen[bytes]] = []
        #: Set where the launcher process is known (the session's side): a launcher that died
        #: starting up fails the invocation at once, with its own error, not after a timeout.
        self.pool: WarmPool | None = None

    async def invoke(self, event: Mapping[str, Any]) -> None:
        payload = invoke_payload(event)
        if self.launcher:
            await self._invoke_warm(Path(self.launcher), payload)
        else:
            self._invoke_cold(payload, event)

    async def _invoke_warm(self, path: Path, payload: bytes) -> None:
        if self.blocking:
            try:
                answer = _send_blocking(path, payload)
            except OSError:  # busy or not there yet: the tries below wait their turn
                pass
            else:
                if answer == b"ok":
                    return
        backoff = Backoff(self.startup_timeout_s, *_RETRY_S)
        while True:
            if self.pool is not None and not self.pool.alive:
                when = "while starting" if not path.exists() else "during the run"
                raise TransportError(f"local launcher exited {when}: {self.pool.log()}")
            if not path.exists():
                failure = (f"local launcher did not start within {self.startup_timeout_s:g} s "
                           f"(no {path})")
            else:
                try:
                    answer = await asyncio.wait_for(
                        _send(path, payload), max(0.1, backoff.deadline - time.monotonic()))
                except (TimeoutError, OSError) as exc:
                    failure = (f"local launcher at {path} refused the invocation: "
                               f"{exc or type(exc).__name__} (tried for "
                               f"{self.startup_timeout_s:g} s)")
                else:
                    if answer != b"ok":
                        raise TransportError(f"local launcher rejected the invocation: "
                                             f"{answer.decode(errors='replace')}")
                    return
            if backoff.expired:
                raise TransportError(failure)
            await backoff.wait()

    def _invoke_cold(self, payload: bytes, event: Mapping[str, Any]) -> None:
        # Never the caller's stdout or stderr: a reader of the coordinator's output must see it
        # end when the coordinator does. What the worker writes before it opens its own log
        # (an import error, say) goes to that log too.
        log: int | None = None
        with contextlib.suppress(KeyError, TypeError, ValueError, OSError):
            log = os.open(Path(event["backend_config"]["root"]) / "logs"
                          / f"worker-{int(event['worker'])}.log",
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = subprocess.Popen([sys.executable, "-m", _MODULE, "run"],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL if log is None else log,
                                    close_fds=True, env=_worker_env())
        except OSError as exc:
            raise TransportError(f"cannot start a local worker process: {exc}") from exc
        finally:
            if log is not None:
                os.close(log)
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        self._cold.append(proc)

    def reap(self) -> None:
        """Collect exited cold children (no zombies in a long-lived scheduler process)."""
        self._cold = [p for p in self._cold if p.poll() is None]


async def _send(path: Path, payload: bytes) -> bytes:
    """One invocation over the launcher's socket: the event, then its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Connected at once, or BlockingIOError while the launcher's backlog is full. (Left to
        # asyncio, a full backlog would pass for a connection and fail at the first write.)
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        writer.write(payload)
        writer.write_eof()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _send_blocking(path: Path, payload: bytes) -> bytes:
    """:func:`_send` without the event loop, given up after :data:`_BLOCKING_S`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_BLOCKING_S)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


class WarmPool:
    """A running launcher (:mod:`fsdgraph.backends.local.launcher`) and its socket.

    Its directory (``<parent>/fsdgraph-launcher-XXXXXXXX``: socket, log, the launcher's pid)
    records this process as its owner; directories of launchers whose owner died are swept
    first. The launcher is tied to this process three ways, so that it never outlives it: it
    watches the read end of a pipe whose write end only this process holds (the end of the
    pipe, when this process dies however it dies, is its cue to stop its runs' workers, remove
    their directories and its own, and exit); on Linux the kernel signals it when this process
    ends (``PR_SET_PDEATHSIG``); and it checks every second that its parent is still this
    process. It never holds this process's stdout or stderr (both go to its log)."""

    def __init__(self, parent: str | None = None) -> None:
        # The first place whose socket path fits (a long $TMPDIR does not: then /tmp).
        candidates = [d for d in (parent, tempfile.gettempdir(), "/tmp") if d is not None]
        where = next((d for d in candidates if _fits_socket(d)), candidates[-1])
        sweep(where)  # what launchers of dead coordinators left
        self.directory = make_directory(where, DIRECTORY_PREFIX)
        self.socket = str(Path(self.directory) / "launcher.sock")
        self._log = Path(self.directory) / "launcher.log"
        watch, self._watch = os.pipe()  # both ends close on exec: passed on explicitly
        try:
            with open(self._log, "wb") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", _MODULE, "serve", self.socket, "--watch", str(watch),
                     "--owner", str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                    pass_fds=(watch,), env=_worker_env())
        except BaseException:
            os.close(self._watch)
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        finally:
            os.close(watch)
        self._finalizer = weakref.finalize(self, _stop_pool, self.process, self.directory,
                                           self._watch)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """The end of what the launcher wrote to stderr (why it died)."""
        try:
            lines = self._log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(no output)"

    def close(self) -> None:
        self._finalizer()


def _stop_pool(process: subprocess.Popen[bytes], directory: str, watch: int) -> None:
    process.kill()  # first: the end of the pipe would have it stop the runs as orphans
    process.wait()
    with contextlib.suppress(OSError):
        os.close(watch)
    shutil.rmtree(directory, ignore_errors=True)


def _fits_socket(parent: str) -> bool:
    """Whether a launcher's socket in a new directory of ``parent`` has a path short enough."""
    return len(os.fsencode(os.path.abspath(parent))) + len(
        f"/{DIRECTORY_PREFIX}XXXXXXXX/launcher.sock.tmp") <= SOCKET_PATH_MAX


def _worker_env() -> dict[str, str]:
    """One thread per worker process: workers are the parallelism, BLAS pools would fight."""
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def register(run_dir: Path, name: str) -> Path | None:
    """Record this process as ``<run dir>/pids/<name>.<pid>`` and return that file; None (start
    nothing) if the run is over.

    One file per process, not per worker: two copies of one worker (a duplicated invocation)
    must not remove each other's record. Recorded first, checked second: :func:`stop_workers`
    marks the run closed before it looks for pids, so a process either is found and killed or
    sees the mark and leaves."""
    pid = os.getpid()
    record = run_dir / "pids" / f"{name}.{pid}"
    try:
        record.write_text(str(pid))
    except FileNotFoundError:  # the run directory is gone
        return None
    return None if run_over(run_dir) else record


def run_over(run_dir: Path) -> bool:
    """Whether the session has ended (or is ending) the run: nothing may start in it then."""
    return not (run_dir / "pids").is_dir() or (run_dir / CLOSED).exists()


def stop_workers(run_dir: str | Path) -> int:
    """End the run: mark it closed, then SIGKILL every worker and host process of it still
    alive; return how many were."""
    stopped = 0
    run_dir = Path(run_dir)
    pids = run_dir / "pids"
    if not pids.is_dir():
        return 0
    with contextlib.suppress(FileNotFoundError):  # removed meanwhile (by its launcher)
        (run_dir / CLOSED).touch()
    with contextlib.suppress(OSError):
        for f in pids.iterdir():
            # A pid file can outlive its process (SIGKILL) and the pid be reused: check first.
            pid = recorded_process(f)
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    stopped += 1
    return stopped


def watch_process(run_dir: Path, launcher: int | None) -> None:
    """Exit this worker process (at once: nothing it does matters any more) when its run is over
    or its launcher (pid ``launcher``) is gone or, for a cold worker (``launcher`` None), when
    the coordinator that owns the run is gone. Watched from a daemon thread, every
    :data:`WATCH_S`: the portable counterpart of the parent-death signal set on Linux."""
    owner = read_owner(run_dir) if launcher is None else None

    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            if (run_over(run_dir) or (launcher is not None and os.getppid() != launcher)
                    or (owner is not None and not owner.alive())):
                os._exit(0)

    threading.Thread(target=watch, name="fsdgraph-watch", daemon=True).start()
