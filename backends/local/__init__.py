"""The embedded default backend: workers run on this machine, transports are local files.

Nothing to start by hand and no network: each run gets a fresh directory (on ``/dev/shm`` when it
exists, so "files" live in memory) holding the object store, the queues and topics, the pid files
and logs of the run's processes; the session removes it, and stops any of those processes still
alive, when the run ends. If the coordinator is killed before, its launcher does, or else the
next session on the same root (the directory records its owner: :mod:`.owner`).
The transports keep the cloud semantics the protocol must survive: atomic objects, at-least-once
queues with visibility timeouts and size limits, and AWS's quotas (topics, filter policies;
``quotas``). The fault-injection knobs (``duplicate_rate``, ``shuffle``, ``kill`` and
``kill_signal``, and ``faults``: lost, damaged and forged traffic, :mod:`fsdgraph.testing.faults`)
exist so tests can prove that it does.

Where workers run: up to ``max_processes`` workers in a run, each is an OS process of its own;
above, they are asyncio tasks of ``pool_processes`` host processes of the run
(:mod:`fsdgraph.backends.local.hosts`, which gives the automatic numbers and why: on 2 cores and
24 GB, processes up to 8 workers, else 2 hosts). Either way each worker attaches its own services
through the same protocol; the description of the session records both numbers, so the
launcher, the workers and their logs all know how a run of P workers is placed.

>>> import asyncio
>>> from fsdgraph.resources import RunNames
>>> async def demo():
...     async with LocalBackend().session(RunNames("doc")) as services:
...         await services.objects.put("k", b"v")
...         return await services.objects.get("k")
>>> asyncio.run(demo())
b'v'
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fsdgraph.backend import Backend, Services
from fsdgraph.backends.local.functions import (
    ProcessFunctions,
    WarmPool,
    run_over,
    stop_workers,
)
from fsdgraph.backends.local.hosts import (
    WorkerVanished,
    auto_max_processes,
    auto_pool_processes,
    hosted,
    hosts_for,
)
from fsdgraph.backends.local.objectstore import DirectoryObjectStore
from fsdgraph.backends.local.owner import make_directory, sweep
from fsdgraph.backends.local.queues import SpoolMessageService
from fsdgraph.config import read_settings
from fsdgraph.control import QueueControlPlane
from fsdgraph.errors import ConfigError, TransportError
from fsdgraph.prices import Prices
from fsdgraph.quotas import Quotas, load_quotas
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits, MessageService, ObjectStore
from fsdgraph.wire import from_json

if TYPE_CHECKING:
    from fsdgraph.testing.faults import Faults

#: The ``[local]`` settings of the config file, each also ``FSDGRAPH_LOCAL_<SETTING>``.
SETTINGS: dict[str, type] = {"max_processes": int, "pool_processes": int, "root": str}
#: What ``LocalBackend.kill_signal`` may name: SIGKILL ends a worker, SIGSTOP hangs it.
KILL_SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}


def _default_parent() -> str:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return tempfile.gettempdir()


@dataclass(frozen=True)
class LocalDescription:
    """What a worker is told of its run's local session (``Services.description``)."""

    root: str  #: the run directory
    limits: dict[str, int]
    #: Workers of a run up to which each is a process of its own (resolved: never "auto").
    max_processes: int
    #: Host processes that run the workers as tasks above ``max_processes`` (resolved).
    pool_processes: int
    #: ``Quotas`` as a dict: what the spool message service enforces and the core checks.
    quotas: dict[str, float] = field(default_factory=lambda: asdict(Quotas()))
    duplicate_rate: float = 0.0
    shuffle: bool = False
    kill: list[int] | None = None  #: ``[worker, layer]``
    kill_signal: str = "KILL"  #: how ``kill`` ends the worker's process: "KILL" or "STOP"
    #: ``fsdgraph.testing.faults.Faults`` as a dict: what the transports inject (None: nothing).
    faults: dict[str, Any] | None = None
    launcher: str | None = None  #: the warm launcher's socket (None: cold processes)

    def hosts(self, workers: int) -> int:
        """Host processes of a run of ``workers`` workers: 0 when each worker is a process."""
        return hosts_for(workers, self.max_processes, self.pool_processes)


@dataclass
class LocalBackend(Backend):
    """Local processes + directory object store + spool queues. See the module docstring."""

    name: ClassVar[str] = "local"

    #: Where run directories are created (default: /dev/shm, else the temp dir).
    root: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: Probability that a queue message is delivered twice (at-least-once fault injection).
    duplicate_rate: float = 0.0
    #: Receive visible messages in random order instead of oldest first.
    shuffle: bool = False
    #: ``(worker, layer)``: that worker dies as it starts the layer, reporting nothing: its
    #: process is SIGKILLed, or, run as a task of a host, it alone vanishes.
    kill: tuple[int, int] | None = None
    #: The signal ``kill`` sends a worker process: "KILL", or "STOP" (it hangs, silent, until
    #: the end of the run kills it).
    kill_signal: str = "KILL"
    #: Faults the transports inject (``fsdgraph.testing.faults``; tests only). None: none.
    faults: Faults | None = None
    #: Fork workers from a launcher that has the runtime imported (False: a cold process each,
    #: whatever the worker count: for debugging the entry point, not for large runs).
    warm: bool = True
    #: Up to this many workers in a run, each is a process of its own; above, workers are tasks
    #: of ``pool_processes`` host processes. None: derived from this machine's memory and cores
    #: (``hosts.auto_max_processes``).
    max_processes: int | None = None
    #: Host processes of a run above ``max_processes`` workers. None: one per core
    #: (``hosts.auto_pool_processes``).
    pool_processes: int | None = None
    #: What the run may use (AWS's defaults, so that a run fails here where it would on AWS);
    #: the spool message service enforces the topic and filter-policy quotas.
    quotas: Quotas = field(default_factory=Quotas)
    #: What runs are billed at (their report's bill, the auto channel's line): AWS list prices
    #: by default, as if the same run were made on AWS.
    price_table: Prices = field(default_factory=Prices)
    #: Seconds a worker process may run, as a Lambda function's timeout: a worker process
    #: still running then is killed (SIGALRM); workers near it checkpoint and continue in a new
    #: invocation. None: no limit. (Workers run as tasks of host processes are not killed.)
    function_timeout_s: float | None = None
    _pool: WarmPool | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limit = self.function_timeout_s
        if limit is not None and not (isinstance(limit, (int, float)) and 0 < limit < 1e9):
            raise ConfigError(f"LocalBackend.function_timeout_s must be a positive number of "
                              f"seconds or None, got {limit!r}")
        _check_options(self)
        for name in ("max_processes", "pool_processes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ConfigError(f"LocalBackend.{name} must be a positive integer or None "
                                  f"(automatic), got {value!r}")
        if self.kill_signal not in KILL_SIGNALS:
            raise ConfigError(f"LocalBackend.kill_signal must be one of "
                              f"{', '.join(KILL_SIGNALS)}, got {self.kill_signal!r}")
        if not self.warm and self.pool_processes is not None:
            raise ConfigError("LocalBackend.pool_processes needs the warm launcher (warm=True): "
                              "cold workers are one process each")

    @classmethod
    def configure(cls, config_file: Path | None = None) -> LocalBackend:
        """The local backend as ``config_file`` says: the ``[local]`` table (:data:`SETTINGS`)
        and ``FSDGRAPH_LOCAL_<SETTING>`` variables, the quotas of the ``[quotas]`` table and
        ``FSDGRAPH_QUOTA_<NAME>`` variables (AWS's defaults otherwise)."""
        found = read_settings(config_file, "local", SETTINGS, "FSDGRAPH_LOCAL_", os.environ)
        try:
            return cls(quotas=load_quotas(config_file),
                       **{key: value for key, (value, _) in found.items()})
        except ConfigError as exc:
            where = "; ".join(sorted({w for _, w in found.values()}))
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from exc

    def placement(self) -> tuple[int, int]:
        """``(max_processes, pool_processes)`` as a session records them: the options, or the
        automatic numbers for this machine; cold workers are always processes."""
        if not self.warm:
            return 2**62, 1
        return (self.max_processes or auto_max_processes(),
                self.pool_processes or auto_pool_processes())

    def prewarm(self) -> None:
        """Start the warm launcher now (it imports the runtime while the caller does other
        work); runs reuse it until :meth:`close`."""
        if self.warm and (self._pool is None or not self._pool.alive):
            self.close()  # a launcher that died: its directory goes
            self._pool = WarmPool(self.root)

    def close(self) -> None:
        """Stop the warm launcher (also done when the backend is garbage collected)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def time_limit_s(self) -> float:
        return self.function_timeout_s or 0.0

    def prices(self) -> Prices:
        return self.price_table

    @asynccontextmanager
    async def session(self, names: RunNames) -> AsyncIterator[Services]:
        """The run's directory (``<root>/fsdgraph-<run id>-XXXXXXXX``, recording this process
        as its owner) and its services. Whatever happens once anything exists, the run's
        processes are stopped and its directory removed. What coordinators that died left in
        ``root`` is swept first (:func:`~fsdgraph.backends.local.owner.sweep`)."""
        parent = self.root or _default_parent()
        sweep(parent)
        run_dir: str | None = None
        services: Services | None = None
        try:
            run_dir = make_directory(parent, f"fsdgraph-{names.run_id}-")
            for sub in ("pids", "logs"):  # workers never create these: a run over stays gone
                os.mkdir(os.path.join(run_dir, sub))
            if self.warm:
                self.prewarm()
                assert self._pool is not None
            max_processes, pool_processes = self.placement()
            description = LocalDescription(
                root=run_dir, limits=asdict(self.limits), max_processes=max_processes,
                pool_processes=pool_processes, quotas=asdict(self.quotas),
                duplicate_rate=self.duplicate_rate, shuffle=self.shuffle,
                kill=list(self.kill) if self.kill else None, kill_signal=self.kill_signal,
                faults=self.faults.to_dict() if self.faults is not None else None,
                launcher=self._pool.socket if self.warm and self._pool else None)
            services = _services(description, names)
            if isinstance(services.functions, ProcessFunctions):
                services.functions.pool = self._pool
            yield services
        finally:
            if run_dir is not None:
                stop_workers(run_dir)
            if services is not None:
                if isinstance(services.functions, ProcessFunctions):
                    services.functions.reap()
                _close(services)
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)

    @classmethod
    @asynccontextmanager
    async def attach(cls, description: Mapping[str, Any],
                     names: RunNames) -> AsyncIterator[Services]:
        found = from_json(LocalDescription, description, "local backend description")
        if run_over(Path(found.root)):  # attaching would create the run's directory again
            raise TransportError(f"local run directory {found.root} is gone or closed: the run "
                                 f"is over")
        services = _services(found, names)
        try:
            yield services
        finally:  # a hosted worker ends, its process does not: release what it holds
            _close(services)


def _check_options(backend: LocalBackend) -> None:
    """ConfigError for an option no run could use (checked when the backend is made, before
    anything exists)."""
    rate = backend.duplicate_rate
    if (isinstance(rate, bool) or not isinstance(rate, (int, float))
            or not 0.0 <= rate <= 1.0):
        raise ConfigError(f"LocalBackend.duplicate_rate must be a probability between 0 and 1, "
                          f"got {rate!r}")
    for name in ("shuffle", "warm"):
        if not isinstance(getattr(backend, name), bool):
            raise ConfigError(f"LocalBackend.{name} must be True or False, "
                              f"got {getattr(backend, name)!r}")
    kill = backend.kill
    if kill is not None and not (
            isinstance(kill, (tuple, list)) and len(kill) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in kill)):
        raise ConfigError(f"LocalBackend.kill must be (worker, layer), two integers >= 0, or "
                          f"None, got {kill!r}")
    if backend.root is not None and (not isinstance(backend.root, (str, os.PathLike))
                                     or not os.path.isdir(backend.root)):
        raise ConfigError(f"LocalBackend.root must be an existing directory, got "
                          f"{backend.root!r}")
    if not isinstance(backend.limits, Limits):
        raise ConfigError(f"LocalBackend.limits must be a Limits, got {backend.limits!r}")
    if not isinstance(backend.quotas, Quotas):
        raise ConfigError(f"LocalBackend.quotas must be a Quotas, got {backend.quotas!r}")


def _services(description: LocalDescription, names: RunNames) -> Services:
    root = Path(description.root)
    limits = Limits(**description.limits)
    quotas = from_json(Quotas, description.quotas, "local backend quotas")
    kill = description.kill
    kill_signal = KILL_SIGNALS[description.kill_signal]

    def die_at(worker: int, layer: int) -> None:
        if kill and [worker, layer] == list(kill):
            if hosted():  # the host runs other workers too: only this one disappears
                raise WorkerVanished(f"worker {worker} killed at layer {layer}")
            os.kill(os.getpid(), kill_signal)

    messages: MessageService = SpoolMessageService(
        root / "messaging", limits, duplicate_rate=description.duplicate_rate,
        shuffle=description.shuffle, quotas=quotas)
    objects: ObjectStore = DirectoryObjectStore(root / "objects", limits=limits)
    if description.faults is not None:  # tests only: the test tools are not loaded otherwise
        from fsdgraph.testing.faults import Faults, FaultyMessageService, FaultyObjectStore

        faults = from_json(Faults, description.faults, "local backend faults")
        messages = FaultyMessageService(messages, faults, names)
        objects = FaultyObjectStore(objects, faults, names)
    return Services(
        objects=objects,
        messages=messages,
        control=QueueControlPlane(messages, names, limits),
        functions=ProcessFunctions(launcher=description.launcher, blocking=hosted()),
        limits=limits,
        description=asdict(description),
        quotas=quotas,
        layer_hook=die_at if kill else None,
    )


def _close(services: Services) -> None:
    close = getattr(services.messages, "close", None)  # the spool's, or that of faults around it
    if close is not None:
        close()


__all__ = ["SETTINGS", "LocalBackend", "LocalDescription"]
