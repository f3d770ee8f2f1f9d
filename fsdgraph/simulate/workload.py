"""What a run asks of the simulator: per worker and layer, the work, the bytes and the requests,
and which peers each worker waits for (:class:`Workload`); and the Graph Challenge live-row curve
that scales them (:func:`graphchallenge_curve`)."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np
import numpy.typing as npt

from fsdgraph.errors import ConfigError

Array = npt.NDArray[np.float64]
#: Requests a sender makes before its peers can read (the rest are made by the receiver).
SEND_KINDS = ("publish", "send", "put")
RECEIVE_KINDS = ("receive", "delete", "get", "list", "query")


@dataclass
class Workload:
    """Everything the engine simulates, as (workers x layers) arrays.

    ``macs[w, l]`` useful multiply-adds and ``path[w, l]`` the kernel path (index into
    :data:`fsdgraph.simulate.kernelcost.PATHS`); ``send_bytes``/``recv_bytes`` on the wire before
    layer ``l``; ``requests[kind]`` counts per worker and layer (senders' kinds in
    :data:`SEND_KINDS`, receivers' in :data:`RECEIVE_KINDS`); ``edges[l]`` the (src, dst) pairs
    whose data ``dst`` waits for before finishing layer ``l``; ``load_bytes[w]`` what worker
    ``w`` downloads before layer 0 (its shard and inputs).
    """

    workers: int
    layers: int
    channel: str
    images: int
    branching: int
    macs: Array
    path: npt.NDArray[np.int64]
    send_bytes: Array
    recv_bytes: Array
    requests: dict[str, Array]
    edges: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]
    load_bytes: Array
    notes: list[str] = field(default_factory=list)

    def count(self, kind: str) -> Array:
        """Requests of ``kind`` per worker and layer (zeros if none)."""
        got = self.requests.get(kind)
        return got if got is not None else np.zeros((self.workers, self.layers))

    def totals(self) -> dict[str, float]:
        """Requests per kind over the whole run (the invocations included)."""
        out = {k: float(v.sum()) for k, v in sorted(self.requests.items()) if v.sum() > 0}
        out["invoke"] = float(self.workers)
        return out

    def check(self) -> None:
        """Shapes and signs (a ConfigError if a builder made something inconsistent)."""
        shape = (self.workers, self.layers)
        arrays = {"macs": self.macs, "path": self.path, "send_bytes": self.send_bytes,
                  "recv_bytes": self.recv_bytes, **self.requests}
        for name, arr in arrays.items():
            if arr.shape != shape:
                raise ConfigError(f"workload {name}: shape {arr.shape}, expected {shape}")
            if np.any(arr < 0) or not np.all(np.isfinite(arr)):
                raise ConfigError(f"workload {name}: negative or non-finite values")
        if len(self.edges) != self.layers:
            raise ConfigError(f"workload: {len(self.edges)} edge lists for {self.layers} layers")


@dataclass(frozen=True)
class Curve:
    """Per layer: the fraction of rows alive entering it and their density; ``source``."""

    live: Array
    density: Array
    source: str


@cache
def _official() -> Curve:
    ref = resources.files("fsdgraph.simulate") / "data" / "graphchallenge_1024.toml"
    data = tomllib.loads(ref.read_text(encoding="utf-8"))
    return Curve(np.asarray(data["live"], np.float64), np.asarray(data["density"], np.float64),
                 str(data["source"]))


def graphchallenge_curve(layers: int, live_rows: Sequence[float] | None = None) -> Curve:
    """The live-row curve for ``layers`` layers: ``live_rows`` if given (fractions 0..1, one per
    layer), else the official 1024-neuron curve (``data/graphchallenge_1024.toml``; beyond its
    120 layers the last value holds). Densities always come from the official curve.

    >>> c = graphchallenge_curve(3)
    >>> c.live.tolist(), bool(c.density[0] < 0.2)
    ([1.0, 0.915, 0.655], True)
    """
    base = _official()

    def stretch(values: Array) -> Array:
        if layers <= len(values):
            return values[:layers].copy()
        return np.concatenate([values, np.full(layers - len(values), values[-1])])

    density = stretch(base.density)
    if live_rows is None:
        return Curve(stretch(base.live), density, base.source)
    live = np.asarray(live_rows, np.float64)
    if live.shape != (layers,):
        raise ConfigError(f"live_rows: {live.size} values for {layers} layers")
    if not np.all((live >= 0) & (live <= 1)):
        raise ConfigError("live_rows: every fraction must be in [0, 1]")
    return Curve(live, density, "given live_rows")


def all_to_all(group: int, replicas: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Every ordered pair of distinct workers within each replica's group (src, dst arrays)."""
    src, dst = np.meshgrid(np.arange(group), np.arange(group), indexing="ij")
    keep = src != dst
    s, d = src[keep].astype(np.int64), dst[keep].astype(np.int64)
    return (np.concatenate([s + r * group for r in range(replicas)]),
            np.concatenate([d + r * group for r in range(replicas)]))
