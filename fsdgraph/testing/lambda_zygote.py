"""Warm starts for :mod:`fsdgraph.testing.lambda_endpoint`: a zygote per function configuration
forks a handler's process per execution.

A zygote (``python -m fsdgraph.testing.lambda_endpoint --zygote HANDLER``, with the function's
environment) imports the handler's module once, then forks one child per execution: a start costs
about a millisecond, and hundreds of executions share the imported modules' memory copy-on-write.
Each child starts from the zygote's state, so nothing a previous invocation did is seen, and runs
:func:`~fsdgraph.testing.lambda_runtime.run_handler` as a cold process would, in its own session.

Nothing outlives the server. A child dies with its zygote (``PR_SET_PDEATHSIG``); a zygote kills
its children and exits when its control socket to the server closes, whether the server closed it
(:meth:`ZygotePool.close`) or died, however it died.

The server's side is :class:`ZygotePool` (which zygote serves a function), :class:`Zygote` (one
zygote and its control socket) and :class:`ForkedProcess` (one forked child, as a
:class:`~fsdgraph.testing.lambda_runtime.Process`); the zygote's side is :func:`serve_forks`.
Forking and passing descriptors over a socket need Linux (:data:`WARM_SUPPORTED`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import json
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from fsdgraph.testing.lambda_functions import Function
from fsdgraph.testing.lambda_runtime import (
    COMMAND_MODULE,
    KILL_GRACE_S,
    LaunchError,
    describe_exit,
    run_handler,
)

__all__ = ["INIT_TIMEOUT_S", "WARM_SUPPORTED", "ForkedProcess", "Zygote", "ZygotePool",
           "serve_forks"]

log = logging.getLogger(__name__)

#: How long a zygote may take to import the handler's module (Lambda's init phase: 10 s, but a
#: loaded test machine may be slower).
INIT_TIMEOUT_S = 60.0
#: Zygotes kept beyond the busy ones (one per function configuration recently used).
MAX_IDLE_ZYGOTES = 8
#: Warm starts need fork and SOCK_SEQPACKET with descriptor passing: Linux.
WARM_SUPPORTED = sys.platform.startswith("linux")
#: prctl(2)'s option that has the kernel signal a process when its parent dies.
_PR_SET_PDEATHSIG = 1


# -- the server's side -----------------------------------------------------------------------------
class ForkedProcess:
    """A warm start: a child that a zygote forked. The server holds the other ends of its stdin,
    stdout and (``stderr=None``) stderr pipes; the zygote reports its pid and its exit status."""

    def __init__(self, zygote: Zygote, env: Mapping[str, str], stderr: int | None) -> None:
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
            raise LaunchError(f"cannot fork the handler: {self.error}")

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


class Zygote:
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
                [sys.executable, "-m", COMMAND_MODULE, "--zygote", handler,
                 "--control-fd", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=dict(env),
                pass_fds=(theirs.fileno(),), start_new_session=True)
        except OSError as exc:
            ours.close()
            raise LaunchError(f"cannot start a warm interpreter: {exc}") from exc
        finally:
            theirs.close()
        self._socket = ours
        self._lock = threading.Lock()
        self._tags = itertools.count()
        self._waiting: dict[int, ForkedProcess] = {}
        self._children: dict[int, ForkedProcess] = {}
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
            raise LaunchError(f"the warm interpreter for {self.handler} did not start within "
                              f"{INIT_TIMEOUT_S:g} s")
        if self.dead:
            raise LaunchError(f"the warm interpreter for {self.handler} exited "
                              f"({describe_exit(self.proc.wait())})")

    def fork(self, child: ForkedProcess, env: Mapping[str, str], fds: list[int]) -> None:
        """Ask for a child running with ``env`` added and ``fds`` as its stdin, stdout, stderr;
        ``child`` hears of its pid (``forked``) and exit (``ended``)."""
        with self._lock:
            if self.dead:
                raise LaunchError(f"the warm interpreter for {self.handler} exited")
            tag = next(self._tags)
            self._waiting[tag] = child
        try:
            socket.send_fds(self._socket, [json.dumps({"tag": tag, "env": dict(env)}).encode()],
                            fds)
        except OSError as exc:
            with self._lock:
                self._waiting.pop(tag, None)
            raise LaunchError(f"the warm interpreter for {self.handler} is gone: {exc}") from exc

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


class ZygotePool:
    """The zygotes, one per function configuration (handler and environment), started on first
    use; the least recently used idle ones beyond :data:`MAX_IDLE_ZYGOTES` are closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygotes: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], Zygote] = \
            OrderedDict()
        self._closed = False

    def lease(self, function: Function) -> Zygote:
        """The function's zygote, ready to fork; :meth:`release` it once the fork is asked."""
        env = function.base_environment()
        key = (function.handler, tuple(sorted(env.items())))
        retired = []
        with self._lock:
            if self._closed:
                raise LaunchError("the invoke server is shutting down")
            zygote = self._zygotes.get(key)
            if zygote is None or zygote.dead:
                if zygote is not None:
                    retired.append(zygote)
                zygote = Zygote(function.handler, env)
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

    def release(self, zygote: Zygote) -> None:
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


# -- the zygote's side: fork a handler per request -------------------------------------------------
def serve_forks(spec: str, control_fd: int) -> int:
    """Import the handler's module once, then fork a child per request on the control socket
    (see :class:`Zygote`) and report each child's end, until the socket closes; then kill the
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
        status = run_handler(spec)
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

