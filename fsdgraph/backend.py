"""What a backend plugin provides: compute, an object store and a control plane.

A backend is a class registered in the entry-point group ``fsdgraph.backends`` (see
:mod:`fsdgraph.plugins`). The scheduler opens a :meth:`Backend.session` for one run; the session
yields :class:`Services` and removes everything the run created when it closes. A worker, started
by :meth:`Functions.invoke`, re-attaches to the same services from the JSON-able
``Services.description`` with :meth:`Backend.attach` (on Lambda this is all a function gets).

What every backend implements (docs/plugins.md walks through one):

* :class:`Functions` — ``invoke(event)``: start one worker, asynchronously;
* :class:`~fsdgraph.transport.ObjectStore` — ``put``, ``get``, ``list``, ``delete_prefix``:
  staging, outputs and the object channel;
* :class:`~fsdgraph.control.ControlPlane` — ``report`` and ``poll`` (``create``/``delete``
  optional): worker statuses;
* :class:`Backend` — ``session`` and ``attach``.

A :class:`~fsdgraph.transport.MessageService` (SNS + SQS shaped) is optional: only the queue and
auto channels need one, and :class:`~fsdgraph.control.QueueControlPlane` turns one into a control
plane. Channels a backend carries itself (the Ray object store, say) find what they need in
``Services.extensions``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fsdgraph import defaults
from fsdgraph.control import ControlPlane
from fsdgraph.quotas import Quotas, check_workers
from fsdgraph.resources import RunNames
from fsdgraph.transport import Limits, MessageService, ObjectStore

if TYPE_CHECKING:
    from fsdgraph.prices import Prices


class Functions(ABC):
    """Asynchronous invocation of the worker function (as Lambda ``InvocationType=Event``).

    Callers check the event against ``Limits.max_invoke_payload_bytes`` before calling
    (:func:`fsdgraph.transport.check_invoke_payload`), so an implementation only starts workers.
    """

    @abstractmethod
    async def invoke(self, event: Mapping[str, Any]) -> None:
        """Start one worker with a JSON-able ``event``; return once the invocation is accepted.
        Raises :class:`~fsdgraph.errors.TransportError` if it is not."""


@dataclass
class Services:
    """Everything a run needs from a backend."""

    objects: ObjectStore
    control: ControlPlane
    functions: Functions
    limits: Limits
    #: JSON-able; ``Backend.attach(description, names)`` gives a worker the same services.
    description: dict[str, Any]
    #: Topics and queues, as SNS + SQS; None where the backend has none (the queue and auto
    #: channels then refuse to run, saying so).
    messages: MessageService | None = None
    #: How many of a thing, and how fast, the run may use (AWS's defaults where the backend
    #: is AWS or stands in for it; unlimited by default).
    quotas: Quotas = field(default_factory=Quotas.unlimited)
    #: What a backend's own channels need (e.g. a handle to a cluster's object store).
    extensions: dict[str, Any] = field(default_factory=dict)
    #: Called by the worker runtime as ``hook(worker, layer)`` before each layer of a worker's
    #: first attempt (fault injection in the local backend's tests; None elsewhere).
    layer_hook: Callable[[int, int], None] | None = field(default=None)


class Backend(ABC):
    """A compute + transport provider. Two methods to write: :meth:`session`, :meth:`attach`."""

    #: The name users pass as ``--backend``; also the entry-point name.
    name: ClassVar[str]
    #: The channel a run uses when none is named (one whose services this backend provides).
    default_channel: ClassVar[str] = defaults.CHANNEL

    @classmethod
    def configure(cls, config_file: Path | None = None) -> Backend:
        """The backend as configured by ``config_file`` (default: the usual config file) and the
        environment; what the command line uses. The default takes no configuration."""
        return cls()

    @property
    def namespace(self) -> str:
        """The first part of every queue and topic name a run creates (see ``RunNames``)."""
        return "fsd"

    def prices(self) -> Prices | None:
        """The price table a run's bill and the auto channel use; None: this backend is not
        billed per request (the report then carries no bill). Default: none."""
        return None

    @abstractmethod
    def session(self, names: RunNames) -> AbstractAsyncContextManager[Services]:
        """Services for one run; closing the context removes what the run left behind."""

    @classmethod
    @abstractmethod
    def attach(cls, description: Mapping[str, Any],
               names: RunNames) -> AbstractAsyncContextManager[Services]:
        """Services for a worker of run ``names``, from ``Services.description``."""

    async def preflight(self, services: Services, workers: int, timeout_s: float) -> None:
        """Before anything of a run is created: raise :class:`~fsdgraph.errors.ConfigError`,
        saying what to change, if a run of ``workers`` workers lasting up to ``timeout_s`` seconds
        cannot succeed here (concurrency, function timeout...). Default: the workers must fit
        ``services.quotas.lambda_concurrency``."""
        check_workers(services.quotas, workers)

    def time_limit_s(self) -> float:
        """Seconds one function invocation may run (0: no limit known). Workers near it
        checkpoint and continue in a new invocation. Default: none."""
        return 0.0

    def prewarm(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Start whatever makes the first run faster (warm sandboxes); optional."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what :meth:`prewarm` or earlier runs kept alive; optional."""
