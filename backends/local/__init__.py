"""The embedded default backend: workers are local OS processes, transports are local files.

Nothing to start by hand and no network: each run gets a fresh directory (on ``/dev/shm`` when it
exists, so "files" live in memory) holding the object store, the queues and topics, the workers'
pid files and logs; the session removes it, and stops any worker still alive, when the run ends.
The transports keep the cloud semantics the protocol must survive: atomic objects, at-least-once
queues with visibility timeouts and size limits. The fault-injection knobs (``duplicate_rate``,
``shuffle``, ``kill``) exist so tests can prove that it does.

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
from typing import Any, ClassVar

from fsdgraph.backend import Backend, Services
from fsdgraph.backends.local.functions import ProcessFunctions, WarmPool, stop_workers
from fsdgraph.backends.local.objectstore import DirectoryObjectStore
from fsdgraph.backends.local.queues import SpoolMessageService
from fsdgraph.control import QueueControlPlane
from fsdgraph.prices import Prices
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits
from fsdgraph.wire import from_json


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
    duplicate_rate: float = 0.0
    shuffle: bool = False
    kill: list[int] | None = None  #: ``[worker, layer]``
    launcher: str | None = None  #: the warm launcher's socket (None: cold processes)


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
    #: ``(worker, layer)``: that worker dies by SIGKILL as it starts the layer.
    kill: tuple[int, int] | None = None
    #: Fork workers from a launcher that has the runtime imported (False: a cold process each).
    warm: bool = True
    #: What runs are billed at (their report's bill, the auto channel's line): AWS list prices
    #: by default, as if the same run were made on AWS.
    price_table: Prices = field(default_factory=Prices)
    _pool: WarmPool | None = field(default=None, init=False, repr=False, compare=False)

    def prewarm(self) -> None:
        """Start the warm launcher now (it imports the runtime while the caller does other
        work); runs reuse it until :meth:`close`."""
        if self.warm and (self._pool is None or not self._pool.alive):
            self._pool = WarmPool()

    def close(self) -> None:
        """Stop the warm launcher (also done when the backend is garbage collected)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def prices(self) -> Prices:
        return self.price_table

    @asynccontextmanager
    async def session(self, names: RunNames) -> AsyncIterator[Services]:
        run_dir = tempfile.mkdtemp(prefix=f"fsdgraph-{names.run_id}-",
                                   dir=self.root or _default_parent())
        if self.warm:
            self.prewarm()
            assert self._pool is not None
        description = LocalDescription(
            root=run_dir, limits=asdict(self.limits), duplicate_rate=self.duplicate_rate,
            shuffle=self.shuffle, kill=list(self.kill) if self.kill else None,
            launcher=self._pool.socket if self.warm and self._pool else None)
        services = _services(description, names)
        if isinstance(services.functions, ProcessFunctions):
            services.functions.pool = self._pool
        try:
            yield services
        finally:
            stop_workers(run_dir)
            if isinstance(services.functions, ProcessFunctions):
                services.functions.reap()
            shutil.rmtree(run_dir, ignore_errors=True)

    @classmethod
    @asynccontextmanager
    async def attach(cls, description: Mapping[str, Any],
                     names: RunNames) -> AsyncIterator[Services]:
        yield _services(from_json(LocalDescription, description, "local backend description"),
                        names)


def _services(description: LocalDescription, names: RunNames) -> Services:
    root = Path(description.root)
    limits = Limits(**description.limits)
    kill = description.kill

    def die_at(worker: int, layer: int) -> None:
        if kill and [worker, layer] == list(kill):
            os.kill(os.getpid(), signal.SIGKILL)

    messages = SpoolMessageService(root / "messaging", limits,
                                   duplicate_rate=description.duplicate_rate,
                                   shuffle=description.shuffle)
    return Services(
        objects=DirectoryObjectStore(root / "objects", limits=limits),
        messages=messages,
        control=QueueControlPlane(messages, names, limits),
        functions=ProcessFunctions(launcher=description.launcher),
        limits=limits,
        description=asdict(description),
        layer_hook=die_at if kill else None,
    )


__all__ = ["LocalBackend", "LocalDescription"]
