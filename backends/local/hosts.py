"""Workers as tasks of host processes: how the local backend runs more workers than the machine
holds as processes.

A worker process forked from the warm launcher peaks at about 45 MB of memory and costs the
scheduler of the operating system a process; a thousand of them do not fit a small machine. So
above ``max_processes`` workers in a run, the launcher forks ``pool_processes`` *host* processes
for the run instead (warm, like workers) and hands each invocation to host ``worker % hosts``. A
host runs each of its workers as one asyncio task of its single event loop, ``await
run_worker(event)``, exactly what the function entry point runs in a process of its own.

The rule (:func:`hosts_for`) reads only the worker count and the session's description, which
carries both numbers already resolved (:func:`auto_max_processes`, :func:`auto_pool_processes`
when not set by the user), so the launcher, the workers and whoever reads the logs take the same
decision for a run.

What a process would give a worker, a host gives each of its tasks:

* **state**: every worker attaches its own services (``Backend.attach``: its own message service,
  object store, control plane) and builds its own runtime; workers share nothing but imported
  modules, which hold no run state;
* **death**: a worker that must vanish (fault injection, ``LocalBackend(kill=...)``) raises
  :class:`WorkerVanished`, a ``BaseException`` the worker runtime does not catch, so nothing is
  reported; then every task the worker started (heartbeat, channel tasks) is cancelled, as a
  killed process takes its threads with it. The other workers of the host carry on;
* **output**: ``sys.stdout`` and ``sys.stderr`` send what a worker's tasks write to
  ``<run dir>/logs/worker-<w>.log`` (the task's context says whose it is), tracebacks of a
  failed worker included; anything else (the host's own messages, output written below Python)
  goes to ``logs/host-<h>.log``.

A host records its pid as ``<run dir>/pids/host-<h>.<pid>``, so the session's ``stop_workers``
kills it at the end of the run like a worker process, and exits by itself once the launcher is
gone (its event pipe ends, or it has another parent) or the run is over (the run directory or its
``pids`` directory has gone, or the session has marked the run closed).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import os
import struct
import sys
import traceback
import weakref
from collections.abc import Coroutine, Generator, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

from fsdgraph.backends.local.functions import register, run_over

T = TypeVar("T")

MiB = 1024 * 1024
#: What one worker process may use at its peak: measured at about 45 MB (RSS, forked from the
#: launcher), with headroom for larger shards.
PROCESS_BUDGET_BYTES = 64 * MiB
#: Worker processes per core beyond which forking and switching between them costs more than
#: running the same workers as tasks of a few processes. Measured on 2 cores (Graph Challenge
#: 4096 neurons, 12 layers, 256 images), processes against 2 hosts: 4 workers 0.21 s against
#: 0.18 s, 8 workers 0.41 s against 0.30 s, 16 workers 0.9 s against 0.46 s, and twice as slow
#: from there on (256 workers: 16.6 s against 7.5 s, and 3.8 GB against 1.0 GB of memory).
PROCESSES_PER_CORE = 4
#: Host processes per core when workers run as tasks. A host never waits on anything but its
#: workers (the local transports are file operations), so one per core keeps every core busy;
#: more only share the cores between more processes (1000 workers on 2 cores: 2 hosts 35 s,
#: 3 hosts 36 s, 4 hosts 46 s).
HOSTS_PER_CORE = 1
#: How often a host checks that its launcher and its run are still there (seconds).
WATCH_S = 0.5

#: An event on a host's pipe: this header (the JSON's length), then the JSON.
FRAME = struct.Struct("!I")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def auto_max_processes() -> int:
    """The most workers a run starts as processes of their own on this machine:
    :data:`PROCESSES_PER_CORE` per core, and no more than half of its memory holds at
    :data:`PROCESS_BUDGET_BYTES` each (2 cores and 24 GB: min(8, 188) = 8). Physical memory,
    not what is free now, so that a run is placed the same way every time on one machine."""
    by_memory = _memory_bytes() // 2 // PROCESS_BUDGET_BYTES
    return max(1, min(by_memory, PROCESSES_PER_CORE * _cores()))


def auto_pool_processes() -> int:
    """Host processes of a run whose workers are tasks: :data:`HOSTS_PER_CORE` per core (2 on
    2 cores)."""
    return HOSTS_PER_CORE * _cores()


def hosts_for(workers: int, max_processes: int, pool_processes: int) -> int:
    """How many host processes a run of ``workers`` workers uses: 0 (one process per worker) up
    to ``max_processes`` workers, else ``pool_processes`` (never more than the workers)."""
    if workers <= max_processes:
        return 0
    return max(1, min(pool_processes, workers))


class WorkerVanished(BaseException):
    """Raised in a hosted worker that must disappear without a word (a killed worker): a
    ``BaseException``, so the worker runtime, which reports every ``Exception``, lets it through.
    """


class _Hosted:
    """One worker running in this host: the tasks it started and its log file."""

    def __init__(self, worker: int, logs: Path) -> None:
        self.worker = worker
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._logs = logs
        self._log: TextIO | None = None

    def log(self) -> TextIO:
        if self._log is None:
            self._log = open(self._logs / f"worker-{self.worker}.log", "a",  # noqa: SIM115
                             buffering=1, encoding="utf-8", errors="replace")
        return self._log

    def vanish(self) -> None:
        """Cancel every task this worker started (the caller's own task ends by itself)."""
        me = asyncio.current_task()
        for task in list(self.tasks):
            if task is not me:
                task.cancel()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


#: The worker whose code is running, in a host (None in a process of one worker).
_current: contextvars.ContextVar[_Hosted | None] = contextvars.ContextVar(
    "fsdgraph_local_hosted_worker", default=None)


def hosted() -> bool:
    """True in a worker that runs as a task of a host process."""
    return _current.get() is not None


class _WorkerStreams(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a host: each write goes to the log of the worker whose
    task writes it, else to the host's own stream."""

    def __init__(self, fallback: TextIO) -> None:
        self._fallback = fallback

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        owner = _current.get()
        (owner.log() if owner is not None else self._fallback).write(text)
        return len(text)

    def flush(self) -> None:
        owner = _current.get()
        (owner.log() if owner is not None else self._fallback).flush()


def _task_factory(loop: asyncio.AbstractEventLoop,
                  coro: Generator[Any, None, T] | Coroutine[Any, Any, T],
                  context: contextvars.Context | None = None) -> asyncio.Task[T]:
    """Every task of a hosted worker is remembered by that worker, so that it can vanish."""
    task = asyncio.Task(coro, loop=loop, context=context)
    owner = context.get(_current) if context is not None else _current.get()
    if owner is not None:
        owner.tasks.add(task)
    return task


def serve_host(run_dir: Path, host: int, events: int, launcher: int) -> int:
    """Run host ``host`` of the run in ``run_dir``: workers as tasks, from the events framed on
    file descriptor ``events``, until the launcher (pid ``launcher``) or the run is gone."""
    logs = run_dir / "logs"
    try:
        log = os.open(logs / f"host-{host}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except FileNotFoundError:  # the run is over already
        return 0
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if register(run_dir, f"host-{host}") is None:
        return 0
    own = sys.stderr
    sys.stdout = sys.stderr = _WorkerStreams(own)
    print(f"host {host} of run {run_dir.name}: pid {os.getpid()}", file=own, flush=True)
    asyncio.run(_host(run_dir, os.fdopen(events, "rb", buffering=0), launcher, own))
    return 0


async def _host(run_dir: Path, events: io.RawIOBase, launcher: int, own: TextIO) -> None:
    loop = asyncio.get_running_loop()
    loop.set_task_factory(_task_factory)
    reader = asyncio.StreamReader(limit=2**31 - 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), events)
    watch = asyncio.ensure_future(_watch(run_dir, launcher))
    logs = run_dir / "logs"
    running: set[asyncio.Task[Any]] = set()
    while True:
        try:
            (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
            event = json.loads(await reader.readexactly(size))
        except asyncio.IncompleteReadError:  # the launcher closed the pipe: it is gone
            print("launcher gone: host exits", file=own, flush=True)
            break
        worker = _Hosted(int(event["worker"]), logs)
        context = contextvars.copy_context()
        context.run(_current.set, worker)
        task = loop.create_task(_run(worker, event), context=context)
        running.add(task)
        task.add_done_callback(running.discard)
    watch.cancel()
    os._exit(0)  # the workers go with their host, as with a killed process: no clean-up runs


async def _run(worker: _Hosted, event: Mapping[str, Any]) -> None:
    """One hosted worker, as ``run_invocation`` runs one in a process of its own."""
    from fsdgraph.worker import run_worker

    try:
        await run_worker(event)
    except WorkerVanished:
        worker.vanish()
    except Exception:  # reported to the scheduler already; the traceback goes to its log
        traceback.print_exc()
    finally:
        worker.close()


async def _watch(run_dir: Path, launcher: int) -> None:
    while True:
        await asyncio.sleep(WATCH_S)
        if os.getppid() != launcher or run_over(run_dir):
            os._exit(0)


__all__ = ["WorkerVanished", "auto_max_processes", "auto_pool_processes", "hosted", "hosts_for",
           "serve_host"]
