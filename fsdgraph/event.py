"""The worker event: what the scheduler (or a parent worker) sends to start one worker.

It crosses a process, a machine or a cloud boundary as JSON, so it is a versioned dataclass built
and read in one place: a worker refuses an event of another version, or one that is malformed,
with a :class:`~fsdgraph.errors.ProtocolError` naming the field, instead of a ``KeyError``.

>>> e = WorkerEvent(run_id="r1", namespace="fsd", worker=0, workers=2, batch=5,
...                 channel="queue", backend="local")
>>> WorkerEvent.from_json(e.to_json()) == e
True
>>> WorkerEvent.from_json({**e.to_json(), "version": 99})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fsdgraph.errors.ProtocolError: worker event version 99 is not supported ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fsdgraph import tree
from fsdgraph.errors import ProtocolError
from fsdgraph.integrity import RunKey
from fsdgraph.resources import RunNames
from fsdgraph.wire import from_json

#: Bump when a field changes meaning or a required field is added.
EVENT_VERSION = 3


@dataclass(frozen=True)
class WorkerEvent:
    """Everything one worker is told at launch (JSON-able)."""

    run_id: str
    namespace: str
    worker: int
    workers: int
    batch: int
    channel: str
    backend: str
    #: ``ChannelConfig`` as a dict.
    channel_config: dict[str, Any] = field(default_factory=dict)
    #: ``Services.description`` of the backend's session.
    backend_config: dict[str, Any] = field(default_factory=dict)
    progress_interval_s: float = 0.5
    #: Children per node of the invocation tree (``fsdgraph.tree``): who this worker starts.
    branching: int = 4
    #: The run's key (:class:`~fsdgraph.integrity.RunKey`) as hex: a secret, never printed.
    run_key: str = field(default="", repr=False)
    #: 0 for the first invocation of this worker; a relaunch or a continuation counts up.
    attempt: int = 0
    #: Start from this worker's latest checkpoint (a relaunch or a continuation).
    resume: bool = False
    #: Invoke the children of the invocation tree (a relaunch or continuation does not: they
    #: run already).
    invoke_children: bool = True
    #: Checkpoint the layer output every this many layers (0: never, unless the time limit is
    #: near).
    checkpoint_every: int = 0
    #: Seconds this function may run (0: no limit known); near it, the worker checkpoints and
    #: invokes its continuation. On Lambda the context's remaining time is used instead.
    time_limit_s: float = 0.0
    #: The layer kernel (``fsdgraph.kernels.choice``: auto, numba, scipy); empty: the
    #: function's own ``FSDGRAPH_KERNEL``, else auto.
    kernel: str = ""
    #: Threads per layer product; 0: the function's own choice (one per vCPU on Lambda).
    kernel_threads: int = 0
    #: Workers per model-parallel group (a replica of the model); worker ``w`` reads the plan
    #: shard of its group position ``w % group``. 0: one group of all the workers.
    group: int = 0
    #: What the worker runs: ``layers`` (a layer chain's shard, :mod:`fsdgraph.plan`) or
    #: ``model`` (an op-level model on a slice of the rows, :mod:`fsdgraph.model_plan`).
    kind: str = "layers"
    version: int = EVENT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in ("layers", "model"):
            raise ProtocolError(f"worker event: kind must be 'layers' or 'model', got "
                                f"{self.kind!r}")
        if isinstance(self.branching, int) and self.branching < 1:
            raise ProtocolError(f"worker event: branching must be >= 1, got {self.branching}")
        if (isinstance(self.group, int) and isinstance(self.workers, int)
                and (self.group < 0 or (self.group and self.workers % self.group))):
            raise ProtocolError(f"worker event: group {self.group} does not divide the "
                                f"{self.workers} workers")

    @property
    def names(self) -> RunNames:
        try:
            key = RunKey.from_hex(self.run_key)
        except ValueError:
            raise ProtocolError("worker event: field 'run_key' is not a run key") from None
        return RunNames(self.run_id, self.namespace, key)

    @property
    def children(self) -> list[int]:
        """The workers this worker invokes (``fsdgraph.tree``)."""
        return tree.children(self.worker, self.workers, self.branching)

    def child(self, worker: int) -> WorkerEvent:
        """The event of another worker of the same run."""
        return replace(self, worker=worker)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerEvent:
        """The event a worker was sent; ProtocolError naming the field if it is not one this
        runtime reads (another version, a missing or unknown field, a value of the wrong type).
        """
        if isinstance(data, Mapping) and data.get("version") != EVENT_VERSION:
            raise ProtocolError(f"worker event version {data.get('version')} is not supported "
                                f"(this runtime reads version {EVENT_VERSION})")
        return from_json(cls, data, "worker event")
