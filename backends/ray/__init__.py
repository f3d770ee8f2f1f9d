"""The Ray backend: workers are Ray tasks, a run's state is one Ray actor.

A plugin like any third party's: it registers ``ray`` in the entry-point groups
``fsdgraph.backends`` and ``fsdgraph.channels`` and uses nothing of fsdgraph but its plugin
surface. What a run gets (:mod:`fsdgraph.backends.ray.store`):

* **compute** — each worker is a Ray *task* running :func:`fsdgraph.worker.run_worker`. A task,
  not an actor: a worker is one invocation that runs to completion, as a function invocation is;
  tasks run in Ray's pool of warm worker processes (an actor takes a process of its own for its
  life), and tasks are what Ray spreads over a cluster. Workers reserve no CPU, because a run
  needs all of its workers at once (they wait for each other's activations);
* **objects, statuses, invocations** — one named actor per run (``RunActor``), which also owns the
  run's worker tasks;
* **the** ``ray`` **channel** (:mod:`fsdgraph.backends.ray.channel`) — activations through the Ray
  object store, chunk descriptors through mailbox actors. The ``object`` channel works too;
  ``queue`` and ``auto`` need a message service, which this backend does not have, and are
  refused.

There is no price table (``prices()`` is None): a run on Ray has no bill.

**Where Ray runs**, from ``address`` (the ``[ray]`` table of the config file, or the variable
``FSDGRAPH_RAY_ADDRESS``)::

    [ray]
    address = "auto"       # a cluster started with `ray start` on this machine
    # address = "10.0.0.5:6379"          a cluster's GCS address
    # address = "ray://10.0.0.5:10001"   Ray Client (needs ray[client]; fsdgraph on the cluster)
    num_cpus = 4           # without an address: the CPUs of the local instance started
    mailbox_actors = 1     # actors holding the ray channel's mailboxes, per run

Without an address the backend joins the Ray instance ``ray.init()`` finds, or starts a local
one. **Lifetime**: if this process is already connected to Ray (``ray.init`` was called by the
caller), the backend uses that connection and never shuts it down. Otherwise the first session
connects (starting a local instance if there is none) and keeps the connection for the next
runs; :meth:`RayBackend.close` — called by ``Scheduler.close`` and on leaving ``with
Scheduler(...)`` — disconnects and stops the local instance it started. (Ray also shuts down what
a process started when the process exits.) Each run's own state is removed when its session
closes: its actors are killed by name, which stops its workers and frees its objects.

>>> RayBackend(address="auto").address
'auto'
>>> RayBackend(address="here")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fsdgraph.errors.ConfigError: RayBackend: address must be 'auto', 'HOST:PORT' or ..., got 'here'
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import ray
from ray.exceptions import RayError

from fsdgraph.backend import Backend, Services
from fsdgraph.config import read_settings
from fsdgraph.errors import ConfigError, TransportError
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits
from fsdgraph.wire import from_json

from .store import (
    NAMESPACE,
    RayControlPlane,
    RayFunctions,
    RayObjectStore,
    RayRun,
    RunActor,
    call,
)

_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9._-]+:[0-9]{1,5}$")
#: Settings of the ``[ray]`` table and ``FSDGRAPH_RAY_<NAME>`` variables, with their types.
SETTINGS: dict[str, type] = {"address": str, "num_cpus": int, "mailbox_actors": int}


def check_address(address: str | None, where: str) -> None:
    """ConfigError naming ``where`` unless ``address`` is None, ``auto`` or ``[ray://]HOST:PORT``."""
    if address is not None and address != "auto" and not _ADDRESS.match(address):
        raise ConfigError(f"{where}: address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT', "
                          f"got {address!r}")


@dataclass(frozen=True)
class RayDescription:
    """What a worker is told of its run's Ray session (``Services.description``)."""

    prefix: str  #: the run's actor names start with it
    mailbox_actors: int
    address: str | None  #: the cluster's GCS address, for a process outside its workers
    limits: dict[str, int]


@dataclass
class RayBackend(Backend):
    """Workers as Ray tasks, a run's state in a Ray actor. See the module docstring."""

    name: ClassVar[str] = "ray"
    default_channel: ClassVar[str] = "ray"

    #: None: join what ``ray.init()`` finds or start a local instance; ``"auto"``: a cluster
    #: running on this machine; ``HOST:PORT`` or ``ray://HOST:PORT``: that cluster.
    address: str | None = None
    #: CPUs of a local instance this backend starts (None: Ray's default, every CPU).
    num_cpus: int | None = None
    #: Actors holding the ``ray`` channel's mailboxes in a run (at most one per worker).
    mailbox_actors: int = 1
    limits: Limits = field(default_factory=Limits)
    #: True while this backend holds a connection it opened (``close`` ends it).
    _connected: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_address(self.address, "RayBackend")
        for key in ("num_cpus", "mailbox_actors"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"RayBackend: {key} must be >= 1, got {value}")

    @classmethod
    def configure(cls, config_file: Path | None = None) -> RayBackend:
        """Settings from the ``[ray]`` table of the config file, then the variables
        ``FSDGRAPH_RAY_<FIELD>`` (:data:`SETTINGS`); errors name the file or variable and the
        field."""
        found = read_settings(config_file, "ray", SETTINGS, "FSDGRAPH_RAY_", os.environ)
        values = {key: value for key, (value, _) in found.items()}
        sources = {key: where for key, (_, where) in found.items()}
        if "address" in values:
            check_address(values["address"], sources["address"])
        for key in ("num_cpus", "mailbox_actors"):
            if values.get(key, 1) < 1:
                raise ConfigError(f"{sources[key]}: {key} must be >= 1, got {values[key]}")
        return cls(**values)

    def connect(self) -> None:
        """Connect to Ray unless this process already is (see the module docstring)."""
        if ray.is_initialized():
            return
        options: dict[str, Any] = {}
        if self.num_cpus is not None:
            options["num_cpus"] = self.num_cpus
        if self.address is None:
            options["include_dashboard"] = False
        _init(self.address, **options)
        self._connected = True

    def prewarm(self) -> None:
        """Connect now (starting a local instance takes seconds), not at the first run."""
        self.connect()

    def close(self) -> None:
        """Disconnect from Ray if this backend connected, stopping a local instance it
        started; a connection the caller opened is left alone."""
        if self._connected:
            ray.shutdown()
            self._connected = False

    @asynccontextmanager
    async def session(self, names: RunNames) -> AsyncIterator[Services]:
        self.connect()
        run = RayRun(f"{names.namespace}-{names.run_id}", mailbox_actors=self.mailbox_actors)
        actor = run.start_actor(RunActor, "run")
        try:
            await call(actor.ready, what=f"start {run.actor_name('run')}")
            description = RayDescription(prefix=run.prefix, mailbox_actors=run.mailbox_actors,
                                         address=_gcs_address(), limits=asdict(self.limits))
            yield _services(actor, run, names, self.limits, asdict(description))
        finally:
            try:
                ray.kill(actor)  # and with it the workers it owns
                remove_run(run)  # whatever else the run started (the ray channel's mailboxes)
            except (RayError, RuntimeError) as exc:  # must not hide the run's own error
                print(f"fsdgraph: cleanup of run {names.run_id}: {exc}", file=sys.stderr)

    @classmethod
    @asynccontextmanager
    async def attach(cls, description: Mapping[str, Any],
                     names: RunNames) -> AsyncIterator[Services]:
        typed = from_json(RayDescription, description, "ray backend description")
        run = RayRun(typed.prefix, mailbox_actors=typed.mailbox_actors)
        limits = Limits(**typed.limits)
        joined = not ray.is_initialized()
        if joined:  # a process outside the cluster's workers (inside a Ray task, Ray is up)
            _init(typed.address or "auto")
        try:
            actor = run.get_actor("run")
            yield _services(actor, run, names, limits, dict(description))
        finally:
            if joined:
                ray.shutdown()


def _init(address: str | None, **options: Any) -> None:
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, ImportError) as exc:
        where = address or "a local Ray instance"
        raise TransportError(f"ray backend: cannot connect to {where}: {exc}") from exc


def _services(actor: Any, run: RayRun, names: RunNames, limits: Limits,
              description: dict[str, Any]) -> Services:
    return Services(objects=RayObjectStore(actor, limits), control=RayControlPlane(
        actor, names), functions=RayFunctions(actor), limits=limits,
        description=description, extensions={"ray": run})


def _gcs_address() -> str | None:
    """The address of the cluster this process is connected to, for processes that join it."""
    try:
        return cast("str | None", ray.get_runtime_context().gcs_address)
    except (AttributeError, RuntimeError):  # e.g. Ray Client
        return None


def remove_run(run: RayRun) -> int:
    """Kill every actor of ``run`` (named ``<prefix>-...``), whoever created it; how many."""
    entries = cast("list[dict[str, str]]", ray.util.list_named_actors(all_namespaces=True))
    killed = 0
    for entry in entries:
        if entry["namespace"] == run.namespace and entry["name"].startswith(run.prefix + "-"):
            try:
                ray.kill(ray.get_actor(entry["name"], namespace=run.namespace))
            except ValueError:  # gone in the meantime
                continue
            killed += 1
    return killed


__all__ = ["NAMESPACE", "SETTINGS", "RayBackend", "RayDescription", "check_address",
           "remove_run"]
