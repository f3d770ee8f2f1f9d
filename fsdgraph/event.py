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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from fsdgraph.errors import ProtocolError
from fsdgraph.resources import RunNames

#: Bump when a field changes meaning or a required field is added.
EVENT_VERSION = 1


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
    #: Subtrees of the invocation tree this worker starts (``fsdgraph.tree``).
    children: list[dict[str, Any]] = field(default_factory=list)
    version: int = EVENT_VERSION

    @property
    def names(self) -> RunNames:
        return RunNames(self.run_id, self.namespace)

    def child(self, subtree: Mapping[str, Any]) -> WorkerEvent:
        """The event of a child in the invocation tree: the same run, another worker."""
        return replace(self, worker=int(subtree["worker"]), children=list(subtree["children"]))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerEvent:
        if not isinstance(data, Mapping):
            raise ProtocolError(f"worker event must be a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != EVENT_VERSION:
            raise ProtocolError(f"worker event version {version} is not supported (this runtime "
                                f"reads version {EVENT_VERSION})")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ProtocolError(f"worker event has unknown fields {unknown}")
        kinds: dict[str, type | tuple[type, ...]] = {
            "run_id": str, "namespace": str, "worker": int, "workers": int, "batch": int,
            "channel": str, "backend": str, "channel_config": dict, "backend_config": dict,
            "progress_interval_s": (int, float), "children": list, "version": int}
        for name, kind in kinds.items():
            if name not in data:
                if name in ("run_id", "namespace", "worker", "workers", "batch", "channel",
                            "backend"):
                    raise ProtocolError(f"worker event has no field {name!r}")
                continue
            value = data[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ProtocolError(f"worker event field {name!r} has the wrong type: "
                                    f"{type(value).__name__}")
        return cls(**dict(data))
