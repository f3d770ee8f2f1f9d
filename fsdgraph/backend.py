"""What a backend plugin provides: compute (function invocation) and the two transports.

A backend is a class registered in the entry-point group ``fsdgraph.backends`` (see
``fsdgraph.backends``). The scheduler opens a :meth:`Backend.session` for one run; the session
yields :class:`Services` and removes everything the run created when it closes. A worker, started
by :meth:`Functions.invoke`, re-attaches to the same services from the JSON-able
``Services.description`` with :meth:`Backend.attach` (on Lambda this is all a function gets).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fsdgraph.transport import Limits, MessageService, ObjectStore


class Functions(ABC):
    """Asynchronous invocation of the worker function (as Lambda ``InvocationType=Event``)."""

    @abstractmethod
    async def invoke(self, event: Mapping[str, Any]) -> None:
        """Start one worker with a JSON-able ``event``; return once the invocation is accepted.
        Raises :class:`~fsdgraph.errors.TransportError` if it is not."""


@dataclass
class Services:
    """Everything a run needs from a backend."""

    objects: ObjectStore
    messages: MessageService
    functions: Functions
    limits: Limits
    #: JSON-able; ``Backend.attach(description)`` gives a worker the same services.
    description: dict[str, Any]
    #: Called by the worker runtime as ``hook(worker, layer)`` before each layer (fault
    #: injection in the local backend's tests; None elsewhere).
    layer_hook: Callable[[int, int], None] | None = field(default=None)


class Backend(ABC):
    """A compute + transport provider."""

    #: The name users pass as ``--backend``; also the entry-point name.
    name: ClassVar[str]

    @classmethod
    def configure(cls, config_file: Path | None = None) -> Backend:
        """The backend as configured by ``config_file`` (default: the usual config file) and the
        environment; what the command line uses. The default takes no configuration."""
        return cls()

    @property
    def namespace(self) -> str:
        """The first part of every queue and topic name a run creates (see ``RunNames``)."""
        return "fsd"

    @abstractmethod
    def session(self, run_id: str) -> AbstractAsyncContextManager[Services]:
        """Services for one run; closing the context removes what the run left behind."""

    def prewarm(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Start whatever makes the first run faster (warm sandboxes); optional."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what :meth:`prewarm` or earlier runs kept alive; optional."""

    @classmethod
    @abstractmethod
    def attach(cls, description: Mapping[str, Any]) -> AbstractAsyncContextManager[Services]:
        """Services for a worker of a run, from ``Services.description``."""
