"""The local function service: starts warm workers on request.

Starting a Python process that imports numpy and scipy takes a few hundred milliseconds, much
like a Lambda cold start. A cloud provider hides most of that behind warm sandboxes; locally, a
launcher process imports the worker runtime once and then ``fork``s what each invocation needs,
so an invocation costs about a millisecond. Inner workers invoke their children through this
service too (the hierarchical tree is real), so invocations arrive from many processes at once.

Where a worker runs is decided per run from its event alone (the worker count and the session's
description, :func:`fsdgraph.backends.local.hosts.hosts_for`):

* up to ``max_processes`` workers, every worker is a process of its own, forked for its
  invocation;
* above, the launcher forks the run's host processes on first use and writes each invocation to
  the pipe of host ``worker % hosts``, which runs it as a task
  (:mod:`fsdgraph.backends.local.hosts`).

The launcher outlives single runs, as warm sandboxes do: a
:class:`~fsdgraph.backends.local.functions.WarmPool` (one per ``LocalBackend``) starts it on first
use and stops it when the backend is closed or garbage collected; every run's events say where
their run directory is. It forgets (closes the pipes of) the hosts of a run once the run is over.

It never outlives the process that started it (the coordinator), however that process ends
(SIGKILL included): it watches the read end of a pipe only the coordinator writes to
(``--watch FD``), whose end it sees at once; on Linux it asks for a signal when its parent ends
(``PR_SET_PDEATHSIG``; the signal is :data:`PARENT_DEATH_SIGNAL`, not SIGTERM, because the kernel
sends it when the parent *thread* ends, which a coordinator that lives on survives); and it
checks its parent every :data:`PRUNE_S`. Then it stops, as its coordinator can no longer do: it
kills the processes of the runs it served whose coordinator is gone and removes their
directories, then its own directory, and exits. Every process it forks dies with it: the
kernel kills it when the launcher ends (``PR_SET_PDEATHSIG`` with SIGKILL, set right after the
fork), and it checks its parent itself too (a worker process from a thread, a host from its
loop). Nothing it starts holds the coordinator's stdout or stderr.

Protocol on its UNIX socket: the client sends the JSON event and shuts down its write side; the
launcher answers ``ok`` once the worker is forked or its event is queued for its host, or says
why not. One thread serves every connection without blocking on any (a selector loop): a slow
client or a busy host delays no one else, and the listen backlog is as deep as the system allows.
Nothing received is ever evaluated or unpickled.

``python -m fsdgraph.backends.local serve SOCKET`` runs the service; ``... run`` runs one cold
invocation whose event is on stdin.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import selectors
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsdgraph.backends.local.functions import (
    DIRECTORY_PREFIX,
    register,
    run_over,
    stop_workers,
    watch_process,
)
from fsdgraph.backends.local.hosts import FRAME, hosts_for, serve_host
from fsdgraph.backends.local.owner import (
    LAUNCHER_PID,
    pid_alive,
    read_owner,
    set_parent_death_signal,
)

#: Connections waiting to be accepted; the kernel caps it (``net.core.somaxconn``).
BACKLOG = 65535
#: The largest event taken (the invoke payload limit is far below it).
MAX_EVENT_BYTES = 16 * 1024 * 1024
#: A host's event pipe is grown to this size where the system allows (Linux), so that a busy host
#: rarely leaves events queued in the launcher.
PIPE_BYTES = 1024 * 1024
#: How often runs that are over are looked for, and the parent checked (seconds).
PRUNE_S = 1.0
#: How long the launcher waits for its coordinator to be gone once the watched pipe has ended
#: (it ends as the coordinator's files close, a moment before the process is gone).
OWNER_EXIT_S = 10.0
#: What the kernel sends the launcher when its parent ends (Linux). Not SIGTERM, whose default
#: (to exit) stays for whoever wants the launcher gone; the handler checks the parent first.
PARENT_DEATH_SIGNAL = signal.SIGUSR1


def run_invocation(event: dict[str, Any], launcher: int | None = None) -> int:
    """Run one worker in this process: pid file, log file, handler; return the exit code.
    ``launcher``: the pid of the launcher that forked this process (None: a cold process)."""
    from fsdgraph.worker import handler

    run_dir = Path(event["backend_config"]["root"])
    worker = int(event["worker"])
    try:
        log = os.open(run_dir / "logs" / f"worker-{worker}.log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except FileNotFoundError:  # the run is over
        return 0
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    record = register(run_dir, str(worker))
    if record is None:
        return 0
    watch_process(run_dir, launcher)
    try:
        limit = event.get("time_limit_s")
        if isinstance(limit, (int, float)) and limit > 0:
            signal.alarm(math.ceil(limit))  # as Lambda ends a function at its timeout
        handler(event)
        return 0
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        record.unlink(missing_ok=True)


@dataclass
class _Host:
    """A host process of a run, seen from the launcher: its pid and the events not yet written
    to its pipe."""

    pid: int
    pipe: int
    pending: bytearray = field(default_factory=bytearray)
    forgotten: bool = False  #: its pipe is closed (the host is gone, or its run is over)


class Launcher:
    """The service on one socket (see the module docstring). ``watch``: the read end of the
    coordinator's pipe (-1: none); ``owner``: the coordinator's pid (None: the parent)."""

    def __init__(self, path: Path, watch: int = -1, owner: int | None = None) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(tmp))
        self.server.listen(BACKLOG)
        self.server.setblocking(False)
        os.replace(tmp, path)  # clients see the socket only once it accepts
        self.path = path
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.server, selectors.EVENT_READ)
        self.clients: dict[socket.socket, bytearray] = {}
        self.hosts: dict[tuple[str, int], _Host] = {}
        #: The run directories it has started workers of (until each run is over).
        self.runs: set[str] = set()
        self._pruned = time.monotonic()
        #: The process that started the launcher (its ``WarmPool``): once it is gone, nobody
        #: can use or stop the launcher any more, so it leaves too (and its runs with it).
        self.owner = os.getppid() if owner is None else owner
        self.watch = watch
        if watch >= 0:
            os.set_blocking(watch, False)
            self.selector.register(watch, selectors.EVENT_READ, "watch")
        # A signal wakes the loop: the parent-death signal is handled at once, not at the next
        # prune.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self.selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.signal(PARENT_DEATH_SIGNAL, lambda *_: None)  # (the wake-up pipe tells the loop)
        if self.path.parent.name.startswith(DIRECTORY_PREFIX):  # a WarmPool's, for us
            (self.path.parent / LAUNCHER_PID).write_text(str(os.getpid()))

    def serve(self) -> None:
        if not self._owner_alive():  # it died before the parent-death signal was asked for
            self._orphaned()
        while True:
            for key, events in self.selector.select(timeout=PRUNE_S):
                if key.fileobj is self.server:
                    self._accept()
                elif isinstance(key.fileobj, socket.socket):
                    self._read(key.fileobj)
                elif key.data == "watch":
                    self._read_watch()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        os.read(self._wake_read, 4096)
                    if not self._owner_alive():
                        self._orphaned()
                elif events & selectors.EVENT_WRITE:
                    self._flush(key.data)
            if time.monotonic() - self._pruned > PRUNE_S:
                self._prune()

    # -- the coordinator ----------------------------------------------------------------------
    def _owner_alive(self) -> bool:
        return os.getppid() == self.owner and pid_alive(self.owner)

    def _read_watch(self) -> None:
        try:
            data = os.read(self.watch, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            return
        # Every write end is closed: the coordinator is exiting (its files close before it is
        # gone) or, oddly, closed it. Wait until it is gone; if it lives on, the other two ties
        # remain.
        self.selector.unregister(self.watch)
        os.close(self.watch)
        self.watch = -1
        deadline = time.monotonic() + OWNER_EXIT_S
        while time.monotonic() < deadline:
            if not self._owner_alive():
                self._orphaned()
            time.sleep(0.01)
        print(f"launcher: its coordinator (pid {self.owner}) closed the watched pipe but runs "
              f"on", file=sys.stderr, flush=True)

    def _orphaned(self) -> None:
        """The coordinator is gone: stop what it can no longer stop, then exit. A run whose
        directory names another, live owner is left alone."""
        for run_dir in sorted(self.runs):
            owner = read_owner(run_dir)
            if owner is None or owner.pid == self.owner or not owner.alive():
                stop_workers(run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)
        for host in list(self.hosts.values()):
            self._forget(host)
        if self.path.parent.name.startswith(DIRECTORY_PREFIX):  # a WarmPool's, for us
            shutil.rmtree(self.path.parent, ignore_errors=True)
        print("launcher: its coordinator is gone: stopped its runs and exits", file=sys.stderr,
              flush=True)
        raise SystemExit(0)

    # -- clients ------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:  # everything waiting in the backlog, not one per wake-up
            try:
                conn, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the client will try again
                print(f"launcher: accept failed: {exc}", file=sys.stderr, flush=True)
                return
            conn.setblocking(False)
            self.clients[conn] = bytearray()
            self.selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if data:
            buffer = self.clients[conn]
            buffer += data
            if len(buffer) > MAX_EVENT_BYTES:
                self._answer(conn, b"event too large")
            return
        try:  # the client shut down its side: the event is complete
            answer = self._dispatch(bytes(self.clients[conn]))
        except Exception as exc:  # a bad event must not stop the service for everyone else
            answer = f"launcher failed: {type(exc).__name__}: {exc}".encode()
        self._answer(conn, answer)

    def _answer(self, conn: socket.socket, answer: bytes) -> None:
        with contextlib.suppress(OSError):  # a client that left does not need the answer
            conn.send(answer)  # a few bytes: always fit an empty socket buffer
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        del self.clients[conn]
        conn.close()

    def _dispatch(self, data: bytes) -> bytes:
        """Start the worker of one event (fork it, or queue it for its host); the answer."""
        try:
            event = json.loads(data)
            run_dir = Path(event["backend_config"]["root"])
            worker, workers = int(event["worker"]), int(event["workers"])
            config = event["backend_config"]
            hosts = hosts_for(workers, int(config["max_processes"]),
                              int(config["pool_processes"]))
        except (ValueError, KeyError, TypeError) as exc:
            return f"bad event: {type(exc).__name__}: {exc}".encode()
        if run_over(run_dir):
            return f"run {run_dir.name} is over".encode()
        self.runs.add(str(run_dir))
        if hosts == 0:
            launcher = os.getpid()
            self._fork(lambda: run_invocation(event, launcher))
            return b"ok"
        host = self._host(run_dir, worker % hosts)
        host.pending += FRAME.pack(len(data)) + data
        self._flush(host)
        return b"ok"

    # -- hosts --------------------------------------------------------------------------------
    def _host(self, run_dir: Path, index: int) -> _Host:
        key = (str(run_dir), index)
        host = self.hosts.get(key)
        if host is None:
            read, write = os.pipe()
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            launcher = os.getpid()
            pid = self._fork(lambda: serve_host(run_dir, index, read, launcher), close=write)
            os.close(read)
            os.set_blocking(write, False)
            host = self.hosts[key] = _Host(pid, write)
        return host

    def _flush(self, host: _Host) -> None:
        """Write what the pipe takes now; the rest when the host has read some (never wait)."""
        if host.forgotten:
            return
        try:
            while host.pending:
                written = os.write(host.pipe, host.pending)
                del host.pending[:written]
        except BlockingIOError:
            pass
        except OSError:  # the host is gone (killed at the end of its run): so are its events
            self._forget(host)
            return
        self._watch_writes(host)

    def _watch_writes(self, host: _Host) -> None:
        registered = host.pipe in self.selector.get_map()
        if host.pending and not registered:
            self.selector.register(host.pipe, selectors.EVENT_WRITE, host)
        elif not host.pending and registered:
            self.selector.unregister(host.pipe)

    def _forget(self, host: _Host) -> None:
        for key, known in list(self.hosts.items()):
            if known is host:
                del self.hosts[key]
        host.pending.clear()
        self._watch_writes(host)
        host.forgotten = True
        os.close(host.pipe)  # the host reads the end of its events and exits, if still alive

    def _prune(self) -> None:
        self._pruned = time.monotonic()
        if not self._owner_alive():
            self._orphaned()
        for (run_dir, _), host in list(self.hosts.items()):
            if run_over(Path(run_dir)):
                self._forget(host)
        self.runs = {run_dir for run_dir in self.runs if not run_over(Path(run_dir))}

    # -- processes ----------------------------------------------------------------------------
    def _fork(self, main: Callable[[], int], close: int = -1) -> int:
        """Fork a child that runs ``main()`` and exits with its code. The child closes the
        launcher's descriptors (and ``close``): a host holding its own or another host's pipe
        open would never see the end of its events when the launcher goes."""
        launcher = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            # Dies with the launcher; if the launcher is gone already, so is this.
            set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != launcher:
                os._exit(0)
            signal.set_wakeup_fd(-1)
            signal.signal(PARENT_DEATH_SIGNAL, signal.SIG_DFL)
            self.selector.close()
            self.server.close()
            for conn in self.clients:
                conn.close()
            for host in self.hosts.values():
                os.close(host.pipe)
            for fd in (close, self.watch, self._wake_read, self._wake_write):
                if fd >= 0:
                    os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setpgid(0, 0)
            code = main()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def serve(path: Path, watch: int = -1, owner: int | None = None) -> None:
    """Accept invocations on the UNIX socket ``path`` until killed, or until the coordinator
    (``owner``, else the parent) is gone (see the module docstring); ``watch``: the read end of
    the coordinator's pipe."""
    # First, before the imports: a coordinator killed while this starts is noticed at once.
    set_parent_death_signal(PARENT_DEATH_SIGNAL)
    signal.signal(PARENT_DEATH_SIGNAL, lambda *_: None)  # (checked by the loop)
    import fsdgraph.worker  # noqa: F401 - the point: import once, fork many

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    Launcher(path, watch, owner).serve()


USAGE = "usage: python -m fsdgraph.backends.local (serve SOCKET [--watch FD] [--owner PID] | run)"


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) in (2, 4, 6):
        options = dict(zip(argv[2::2], argv[3::2], strict=True))
        try:
            watch, owner = int(options.pop("--watch", -1)), options.pop("--owner", None)
            owner_pid = None if owner is None else int(owner)
        except ValueError as exc:
            options["error"] = str(exc)
        if options:
            print(f"{USAGE}\nnot understood: {options}", file=sys.stderr)
            return 2
        serve(Path(argv[1]), watch, owner_pid)
        return 0
    if argv == ["run"]:
        return run_invocation(json.loads(sys.stdin.buffer.read()))
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
