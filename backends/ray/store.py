"""A run's state in one Ray actor, and the three services a run gets from it.

:class:`RunActor` is a named asyncio actor, one per run, that holds

* the run's objects (a dict of bytes: staging, outputs and the object channel);
* the run's statuses (an :class:`asyncio.Queue` of JSON bodies);
* the run's workers: :meth:`RunActor.invoke` submits the worker task, so the actor owns every
  worker of the run. Ray fate-shares a task with its owner, so killing the actor at the end of
  the run stops the workers still running and frees everything the run kept.

Objects are kept as bytes in the actor rather than as ``ObjectRef``\\ s of the Ray object store.
Measured on one 2-CPU node (Ray 2.60), a put plus a get through the actor took 2.3 ms for 1 kB
and 4.3 ms for 100 kB, against 4.4 ms and 5.4 ms for ``ray.put`` plus a reference handed to the
actor (one more round trip); only at 2 MB did references win (13 ms against 16 ms). Staged
shards, outputs and object-channel edges are mostly well below that; bulk exchange data takes
the ``ray`` channel, which does go through the object store
(:mod:`fsdgraph.backends.ray.channel`).

:class:`RayObjectStore`, :class:`RayControlPlane` and :class:`RayFunctions` are the client sides;
they hold only an actor handle, so a worker builds the same three from the actor's name. What
crosses the actor boundary is plain ``str``, ``bytes``, ``int`` and ``float`` (statuses and
events as JSON text), never an arbitrary object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayError

from fsdgraph.backend import Functions
from fsdgraph.control import ControlPlane, Status, decode_status, encode_status
from fsdgraph.errors import NotFound, ProtocolError, TransportError
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits, Message, ObjectStore

#: The Ray namespace of every named actor fsdgraph creates (apart from a user's own actors).
NAMESPACE = "fsdgraph"


@dataclass(frozen=True)
class RayRun:
    """Where a run's actors are: ``Services.extensions["ray"]`` for the backend's own channels.

    Every actor of the run is named ``<prefix>-<role>`` in the Ray namespace ``namespace``, the
    prefix carrying the run id, so that a run's actors can be found and removed by name.
    """

    prefix: str
    namespace: str = NAMESPACE
    #: How many actors hold the ``ray`` channel's mailboxes (``RayBackend.mailbox_actors``).
    mailbox_actors: int = 1

    def actor_name(self, role: str) -> str:
        """The name of the run's actor playing ``role``."""
        return f"{self.prefix}-{role}"

    def start_actor(self, actor_class: Any, role: str) -> Any:
        """Start ``actor_class`` as the run's actor playing ``role``; its handle. The actor
        lives while a handle does, or until it is killed."""
        name = self.actor_name(role)
        try:
            return actor_class.options(name=name, namespace=self.namespace).remote()
        except ValueError as exc:  # what Ray raises for a name taken
            raise TransportError(f"ray actor {name} cannot be created: {exc}") from exc

    def get_actor(self, role: str) -> Any:
        """A handle of the run's actor playing ``role``; TransportError if there is none."""
        name = self.actor_name(role)
        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError as exc:  # what Ray raises for an unknown name
            raise TransportError(f"ray actor {name} does not exist (the run is over?)") from exc


async def call(method: Any, *args: Any, what: str) -> Any:
    """``await method.remote(*args)``, Ray's errors raised as TransportError naming ``what``."""
    try:
        return await method.remote(*args)
    except RayError as exc:
        raise TransportError(f"ray: {what}: {type(exc).__name__}: {exc}",
                             retryable=isinstance(exc, ActorUnavailableError)) from exc


@ray.remote(num_cpus=0, max_retries=0, scheduling_strategy="SPREAD")
def worker_task(event: str) -> str:
    """One worker: :func:`fsdgraph.worker.run_worker` on the JSON ``event``, to completion.

    It reserves no CPU (every worker of a run must run at the same time, whatever the cluster's
    CPU count) and is spread over the cluster's nodes. It is never retried: a failed worker has
    reported its error, and the scheduler fails the run. The result is a line of text; failures
    travel through the control plane, not as Ray task errors.
    """
    from fsdgraph.worker import run_worker  # late: the worker runtime imports the backends

    try:
        result = asyncio.run(run_worker(json.loads(event)))
    except Exception as exc:  # already reported to the scheduler by run_worker
        return f"failed: {type(exc).__name__}: {exc}"
    return str(result.get("status", ""))


@ray.remote(num_cpus=0, max_restarts=0)
class RunActor:
    """The state of one run (see the module docstring). Every method is a coroutine, so calls
    run concurrently and a long poll does not hold up a put."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._written = asyncio.Event()
        self._statuses: asyncio.Queue[str] = asyncio.Queue()
        self._workers: list[Any] = []  # ObjectRefs of the worker tasks this actor owns

    async def ready(self) -> bool:
        """True once the actor is up."""
        return True

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` and wake the readers waiting for a key."""
        self._objects[key] = data
        self._written.set()
        self._written = asyncio.Event()

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists (the actor runs one call at a time: atomic)."""
        if key in self._objects:
            return False
        await self.put(key, data)
        return True

    async def get(self, key: str) -> bytes | None:
        """The object at ``key``, None if there is none."""
        return self._objects.get(key)

    async def keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        return sorted(k for k in self._objects if k.startswith(prefix))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; how many were deleted."""
        doomed = [k for k in self._objects if k.startswith(prefix)]
        for k in doomed:
            del self._objects[k]
        return len(doomed)

    async def wait_for(self, keys: list[str], timeout_s: float) -> None:
        """Return when one of ``keys`` exists or anything is written, at most ``timeout_s``."""
        if any(k in self._objects for k in keys):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._written.wait(), timeout_s)

    async def report(self, body: str) -> None:
        """Queue one status (JSON text) for the scheduler."""
        self._statuses.put_nowait(body)

    async def poll(self, wait_s: float) -> list[str]:
        """The statuses queued, waiting at most ``wait_s`` for the first."""
        try:
            first = await asyncio.wait_for(self._statuses.get(), wait_s)
        except TimeoutError:
            return []
        out = [first]
        while not self._statuses.empty():
            out.append(self._statuses.get_nowait())
        return out

    async def invoke(self, event: str) -> None:
        """Submit one worker task (this actor becomes its owner)."""
        self._workers.append(worker_task.remote(event))


class RayObjectStore(ObjectStore):
    """The run actor's objects (``put`` refuses an object above ``limits.max_object_bytes``)."""

    def __init__(self, actor: Any, limits: Limits) -> None:
        self.actor = actor
        self.limits = limits

    async def _put(self, key: str, data: bytes) -> None:
        await call(self.actor.put, key, bytes(data), what=f"put {key}")

    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        return bool(await call(self.actor.put_if_absent, key, bytes(data),
                               what=f"create {key}"))

    async def get(self, key: str) -> bytes:
        data = await call(self.actor.get, key, what=f"get {key}")
        if data is None:
            raise NotFound(f"no object at key {key!r}")
        if not isinstance(data, bytes):
            raise ProtocolError(f"object {key} is {type(data).__name__}, not bytes")
        return data

    async def list(self, prefix: str) -> list[str]:
        return [str(k) for k in await call(self.actor.keys, prefix, what=f"list {prefix}")]

    async def delete_prefix(self, prefix: str) -> int:
        return int(await call(self.actor.delete_prefix, prefix, what=f"delete {prefix}"))

    async def wait_for(self, keys: Sequence[str], timeout_s: float) -> None:
        await call(self.actor.wait_for, list(keys), timeout_s, what="wait for objects")


class RayControlPlane(ControlPlane):
    """Statuses through the run actor's queue, as the JSON bodies of
    :func:`fsdgraph.control.encode_status` (nothing received is evaluated)."""

    def __init__(self, actor: Any, names: RunNames) -> None:
        self.actor = actor
        self.names = names

    async def report(self, status: Status) -> None:
        body = encode_status(self.names, status).body
        await call(self.actor.report, body, what=f"worker {status.worker}: report {status.kind}")

    async def poll(self, wait_s: float) -> list[Status]:
        bodies = await call(self.actor.poll, float(wait_s), what="poll statuses")
        return [decode_status(self.names, Message(str(body), {}, "")) for body in bodies]


class RayFunctions(Functions):
    """Invocation through the run actor, which submits the worker task and owns it."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def invoke(self, event: Mapping[str, Any]) -> None:
        try:
            text = json.dumps(event)
        except (TypeError, ValueError) as exc:
            raise TransportError(f"invoke event is not JSON-able: {exc}") from exc
        await call(self.actor.invoke, text, what=f"invoke worker {event.get('worker')}")


__all__ = ["NAMESPACE", "RayControlPlane", "RayFunctions", "RayObjectStore", "RayRun",
           "RunActor", "call", "worker_task"]
