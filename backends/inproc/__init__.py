"""The in-process backend: workers are asyncio tasks in the caller's own event loop.

The smallest complete backend, and the worked example of docs/plugins.md. Each part is one small
class: :class:`TaskFunctions` starts a worker as a task (the event still goes through JSON, as it
would over a wire), :class:`MemoryObjectStore` keeps objects in a dict, :class:`MemoryControlPlane`
passes statuses through an :class:`asyncio.Queue`. It has no message service, so it runs the
``object`` channel (and any channel that needs only objects), not ``queue`` or ``auto``.

What it is for: debugging and testing. Everything runs in one thread, so a breakpoint in a
kernel or a channel stops the whole run where you put it; with ``debug=True`` a worker's
exception is chained to the run's :class:`~fsdgraph.errors.RunError` as its ``__cause__``, so
the original traceback is shown instead of its text.

>>> import numpy as np, scipy.sparse as sp, fsdgraph
>>> w = sp.random(32, 32, density=0.2, format="csr", dtype=np.float32, random_state=0)
>>> graph = fsdgraph.sequential([w] * 2, bias=-0.01)
>>> y = sp.random(4, 32, density=0.5, format="csr", dtype=np.float32, random_state=1)
>>> result = fsdgraph.Scheduler("inproc", "object").run_sync(fsdgraph.compile(graph, 3), y)
>>> ref = fsdgraph.reference_inference(y, graph.layers())
>>> (result.activations != ref).nnz, result.report["backend"], result.report["bill"]
(0, 'inproc', None)
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from fsdgraph.backend import Backend, Functions, Services
from fsdgraph.control import ControlPlane, Status
from fsdgraph.errors import NotFound, RunError, TransportError
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits, ObjectStore


class MemoryObjectStore(ObjectStore):
    """Objects in a dict; a reader waiting for a key wakes as soon as anything is written."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits  # the core refuses an object over limits.max_object_bytes
        self._objects: dict[str, bytes] = {}
        self._written = asyncio.Event()

    async def _put(self, key: str, data: bytes) -> None:
        self._objects[key] = bytes(data)
        self._written.set()  # wake every waiting reader, then re-arm
        self._written = asyncio.Event()

    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        if key in self._objects:
            return False
        await self._put(key, data)
        return True

    async def get(self, key: str) -> bytes:
        try:
            return self._objects[key]
        except KeyError:
            raise NotFound(f"no object {key}") from None

    async def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self._objects if k.startswith(prefix))

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [k for k in self._objects if k.startswith(prefix)]
        for k in doomed:
            del self._objects[k]
        return len(doomed)

    async def wait_for(self, keys: Sequence[str], timeout_s: float) -> None:
        if any(k in self._objects for k in keys):
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(self._written.wait(), timeout_s)


class MemoryControlPlane(ControlPlane):
    """Statuses through an asyncio queue (nothing to create or delete)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Status] = asyncio.Queue()

    async def report(self, status: Status) -> None:
        self._queue.put_nowait(status)

    async def poll(self, wait_s: float) -> list[Status]:
        try:
            first = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return []
        out = [first]
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out


class TaskFunctions(Functions):
    """Each invocation is a task running :func:`fsdgraph.worker.run_worker`."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    async def invoke(self, event: Mapping[str, Any]) -> None:
        from fsdgraph.worker import run_worker  # late: the worker runtime imports the backends

        try:
            wire = json.loads(json.dumps(event))  # what a real invocation would deliver
        except (TypeError, ValueError) as exc:
            raise TransportError(f"invoke event is not JSON-able: {exc}") from exc
        self.tasks.append(asyncio.get_running_loop().create_task(run_worker(wire)))


@dataclass
class _Run:
    objects: MemoryObjectStore
    control: MemoryControlPlane
    functions: TaskFunctions


#: Runs open in this process, by session id: how a worker task attaches from a JSON description.
_RUNS: dict[str, _Run] = {}
_ids = itertools.count()


@dataclass
class InProcBackend(Backend):
    """Workers as tasks in one process. See the module docstring."""

    name: ClassVar[str] = "inproc"
    default_channel: ClassVar[str] = "object"  # no message service, so not the queue channel

    limits: Limits = field(default_factory=Limits)
    #: Chain a worker's own exception to the run's error (full traceback; see the docstring).
    debug: bool = False

    @asynccontextmanager
    async def session(self, names: RunNames) -> AsyncIterator[Services]:
        session_id = f"{names.run_id}-{next(_ids)}"
        run = _Run(MemoryObjectStore(self.limits), MemoryControlPlane(), TaskFunctions())
        _RUNS[session_id] = run
        try:
            yield _services(run, self.limits, session_id)
        except RunError as exc:
            if self.debug:
                cause = _first_worker_error(run.functions.tasks)
                if cause is not None:
                    raise exc from cause
            raise
        finally:
            for task in run.functions.tasks:
                task.cancel()
            await asyncio.gather(*run.functions.tasks, return_exceptions=True)
            del _RUNS[session_id]

    @classmethod
    @asynccontextmanager
    async def attach(cls, description: Mapping[str, Any],
                     names: RunNames) -> AsyncIterator[Services]:
        session_id = str(description["session"])
        if session_id not in _RUNS:
            raise TransportError(f"inproc run {session_id} is not open in this process")
        yield _services(_RUNS[session_id], Limits(**description["limits"]), session_id)


def _services(run: _Run, limits: Limits, session_id: str) -> Services:
    return Services(objects=run.objects, control=run.control, functions=run.functions,
                    limits=limits, description={"session": session_id, "limits": asdict(limits)})


def _first_worker_error(tasks: Sequence[asyncio.Task[Any]]) -> BaseException | None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
    return None


__all__ = ["InProcBackend", "MemoryControlPlane", "MemoryObjectStore", "TaskFunctions"]
