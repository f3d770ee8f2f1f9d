"""The compiled plan: who computes what, and which activation rows travel where.

For every layer ``l`` the plan fixes ``owners[l][j]``, the worker computing output neuron ``j``.
Worker ``w`` then needs, for layer ``l``, the input neurons with a nonzero weight into its outputs;
those owned by another worker ``s`` (owner of that neuron as an output of layer ``l - 1``) arrive
over the exchange edge ``(l, s, w)``. Layer 0 reads the input features, staged per worker, so it
has no exchange edges.

A :class:`WorkerShard` is everything one worker needs, and nothing else: its output columns, bias
and weight rows grouped by the source that sends them, and what it must send to whom. Shards
serialise separately (:meth:`WorkerShard.to_parts`, the staged form; :meth:`Plan.shard_bytes`),
so a worker downloads only its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ProtocolError
from fsdgraph.serialize import Joined, checked_csr, pack, pack_parts, unpack, unpack_parts

if TYPE_CHECKING:
    import networkx as nx

#: ``SourceRows.src`` of layer 0: the staged input features rather than a peer.
INPUT = -1

#: The layout of :meth:`WorkerShard.to_bytes` and :meth:`WorkerShard.to_parts`; a worker
#: refuses a shard of another version. 2: arrays may be narrowed or filled
#: (:func:`fsdgraph.serialize.pack_parts`).
SHARD_VERSION = 2


@dataclass(frozen=True)
class LayerSpec:
    """What every worker applies after the product of a layer."""

    width: int
    relu: bool
    cap: float | None
    bias_on_nonzero: bool


@dataclass(frozen=True)
class Edge:
    """Activation rows of ``neurons`` (input neurons of ``layer``) sent from ``src`` to ``dst``."""

    layer: int
    src: int
    dst: int
    neurons: np.ndarray


@dataclass(frozen=True)
class SourceRows:
    """What ``src`` provides: ``positions`` index the layer's ``inputs`` (and weight rows)."""

    src: int
    positions: np.ndarray


@dataclass(frozen=True)
class Send:
    """Before computing a layer, send ``columns`` (indices into the worker's previous outputs)."""

    dst: int
    columns: np.ndarray


@dataclass(frozen=True)
class LayerShard:
    """One worker's part of a layer.

    ``inputs`` are the input neurons with a nonzero weight into ``out_cols``, ascending, and
    ``weight`` their rows (inputs x out_cols): a worker multiplies its inputs in the same order as
    the serial product, so the result is the same bit for bit.
    """

    out_cols: np.ndarray
    bias: np.ndarray
    inputs: np.ndarray
    weight: sp.csr_matrix
    sources: list[SourceRows]
    sends: list[Send]


@dataclass(frozen=True)
class WorkerShard:
    """One worker's part of the plan. ``workers`` is the size of its model-parallel group; the
    worker and peer ids are global (a replica's shard is its group's shard :meth:`rebased`)."""

    worker: int
    workers: int
    input_neurons: np.ndarray
    specs: list[LayerSpec]
    layers: list[LayerShard]

    def rebased(self, base: int) -> WorkerShard:
        """The same shard for the replica whose workers start at ``base`` (every worker and
        peer id moved by ``base``; the arrays are shared, not copied)."""
        if base == 0:
            return self

        def moved(ls: LayerShard) -> LayerShard:
            sources = [SourceRows(r.src if r.src == INPUT else r.src + base, r.positions)
                       for r in ls.sources]
            sends = [Send(s.dst + base, s.columns) for s in ls.sends]
            return LayerShard(ls.out_cols, ls.bias, ls.inputs, ls.weight, sources, sends)

        return WorkerShard(self.worker + base, self.workers, self.input_neurons, self.specs,
                           [moved(ls) for ls in self.layers])

    def _fields(self) -> dict[str, Any]:
        # Column-wise: each kind of array, of every layer, joined into one (with the lengths
        # to split it again), so the encoding handles a few large arrays whatever the number
        # of layers and workers, not thousands of small ones.
        layers = self.layers
        weights = [w if w.format == "csr" else sp.csr_matrix(w) for w in
                   (ls.weight for ls in layers)]
        return {
            "version": SHARD_VERSION, "worker": self.worker, "workers": self.workers,
            "input_neurons": self.input_neurons,
            "specs": [[s.width, s.relu, s.cap, s.bias_on_nonzero] for s in self.specs],
            "out": Joined([ls.out_cols for ls in layers]),
            "bias": Joined([ls.bias for ls in layers]),
            "inputs": Joined([ls.inputs for ls in layers]),
            "weight_shape": [list(w.shape) for w in weights],
            "weight_indptr": Joined([w.indptr for w in weights]),
            "weight_indices": Joined([w.indices for w in weights]),
            "weight_data": Joined([w.data for w in weights]),
            "sources": [[r.src for r in ls.sources] for ls in layers],
            "positions": Joined([r.positions for ls in layers for r in ls.sources]),
            "sends": [[s.dst for s in ls.sends] for ls in layers],
            "columns": Joined([s.columns for ls in layers for s in ls.sends]),
        }

    def to_bytes(self) -> bytes:
        """The shard as one self-contained message (:func:`fsdgraph.serialize.pack`)."""
        return pack(self._fields())

    def to_parts(self) -> list[bytes | memoryview]:
        """The shard as the parts of its staged object (:func:`fsdgraph.serialize.pack_parts`:
        the weights raw, no copy until they are sealed)."""
        return pack_parts(self._fields())

    @staticmethod
    def from_bytes(data: bytes) -> WorkerShard:
        """The shard :meth:`to_bytes` wrote; ProtocolError if it is not one of this version."""
        return WorkerShard._from_fields(unpack(data))

    @staticmethod
    def from_parts(parts: Sequence[bytes | memoryview], key: str = "") -> WorkerShard:
        """The shard :meth:`to_parts` wrote (its arrays read-only views of ``parts``);
        ProtocolError, naming ``key`` if given, if it is not one of this version."""
        try:
            return WorkerShard._from_fields(unpack_parts(parts))
        except ProtocolError as exc:
            raise ProtocolError(f"object {key}: {exc}" if key else str(exc)) from exc

    @staticmethod
    def _from_fields(d: Any) -> WorkerShard:
        if not isinstance(d, dict) or "version" not in d:
            raise ProtocolError(f"not an fsdgraph worker shard (a {type(d).__name__} without "
                                "a version)")
        if d["version"] != SHARD_VERSION:
            raise ProtocolError(
                f"worker shard version {d['version']!r} is not {SHARD_VERSION}, the version this "
                "fsdgraph reads: the scheduler and the workers must run the same fsdgraph")
        try:
            specs = [LayerSpec(*s) for s in d["specs"]]
            count = len(specs)
            sources, sends = _ids(d["sources"], count), _ids(d["sends"], count)
            out, bias, inputs = (_arrays(d[name], count) for name in ("out", "bias", "inputs"))
            indptr, indices, data = (_arrays(d[f"weight_{name}"], count)
                                     for name in ("indptr", "indices", "data"))
            shapes = d["weight_shape"]
            if not isinstance(shapes, list) or len(shapes) != count:
                raise ProtocolError("malformed worker shard: a weight shape per layer expected")
            positions = iter(_arrays(d["positions"], sum(map(len, sources))))
            columns = iter(_arrays(d["columns"], sum(map(len, sends))))
            layers = [
                LayerShard(out_cols=out[l], bias=bias[l], inputs=inputs[l],
                           weight=checked_csr(shapes[l], indptr[l], indices[l], data[l]),
                           sources=[SourceRows(s, next(positions)) for s in sources[l]],
                           sends=[Send(dst, next(columns)) for dst in sends[l]])
                for l in range(count)]
            return WorkerShard(worker=d["worker"], workers=d["workers"],
                               input_neurons=d["input_neurons"], specs=specs, layers=layers)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed worker shard: {exc!r}") from exc


def _arrays(field: Any, count: int) -> list[np.ndarray]:
    """``count`` arrays (a :class:`~fsdgraph.serialize.Joined` read back)."""
    if (not isinstance(field, list) or len(field) != count
            or not all(isinstance(a, np.ndarray) for a in field)):
        raise ProtocolError(f"malformed worker shard: {count} joined arrays expected")
    return field


def _ids(field: Any, count: int) -> list[list[int]]:
    """Per layer, a list of worker ids."""
    if (not isinstance(field, list) or len(field) != count
            or not all(isinstance(ids, list) and all(type(i) is int for i in ids)
                       for ids in field)):
        raise ProtocolError("malformed worker shard: worker ids per layer expected")
    return field


@dataclass
class Plan:
    """A compiled graph: see the module docstring. Built by :func:`fsdgraph.compile`."""

    workers: int
    input_width: int
    partitioner: str
    specs: list[LayerSpec]
    owners: list[np.ndarray]
    shards: list[WorkerShard]
    edges: list[Edge] = field(default_factory=list)
    #: Replicas of the model (data parallelism): ``workers = replicas x group``; worker ``w``
    #: belongs to replica ``w // group`` and computes only that replica's share of the images.
    replicas: int = 1
    #: The parallelism the plan was compiled for (``model``, ``data``, ``hybrid``).
    strategy: str = "model"
    #: From layer ``collapse_at`` on (None: never), only the first ``collapse_to`` workers of
    #: each group own neurons: the live rows are gathered onto them.
    collapse_at: int | None = None
    collapse_to: int = 0
    #: What the planner chose and predicted (``strategy="auto"``), for the run's report.
    planned: dict[str, Any] | None = None

    @property
    def group(self) -> int:
        """Workers per replica: the model-parallel width."""
        return self.workers // self.replicas

    @property
    def layers(self) -> int:
        return len(self.specs)

    @property
    def output_width(self) -> int:
        return self.specs[-1].width

    def image_slices(self, batch: int) -> list[tuple[int, int]]:
        """The rows ``[start, stop)`` of a ``batch`` of images each replica computes: near-equal
        contiguous runs."""
        return row_slices(batch, self.replicas)

    def parallelism(self) -> dict[str, Any]:
        """How the work is shared: strategy, replicas, group width, collapse (JSON-able)."""
        return {"strategy": self.strategy, "replicas": self.replicas, "group": self.group,
                "collapse_at": self.collapse_at,
                "collapse_to": self.collapse_to if self.collapse_at is not None else None}

    def shard_bytes(self, worker: int) -> bytes:
        return self.shards[worker].to_bytes()

    @cached_property
    def dag(self) -> nx.DiGraph:
        """Tasks ``(layer, worker)``; an edge carries ``neurons`` (how many travel) and
        ``exchange`` (False for a worker's own previous outputs)."""
        import networkx as nx  # only here: workers never need it, and it is slow to import

        g = nx.DiGraph()
        for layer in range(self.layers):
            for w in range(self.workers):
                g.add_node((layer, w), layer=layer, worker=w,
                           outputs=len(self.shards[w].layers[layer].out_cols))
                if layer:
                    g.add_edge((layer - 1, w), (layer, w), neurons=0, exchange=False)
        for e in self.edges:
            g.add_edge((e.layer - 1, e.src), (e.layer, e.dst), neurons=len(e.neurons),
                       exchange=True)
        return g

    def rows_to_send(self) -> list[int]:
        """Per layer: the number of (neuron, destination) pairs that cross between workers,
        i.e. the activation columns each row must ship (the partitioners' connectivity cost)."""
        per_layer = [0] * self.layers
        for e in self.edges:
            per_layer[e.layer] += len(e.neurons)
        return per_layer

    def summary(self) -> dict[str, Any]:
        """A JSON-able description of the plan (``fsdgraph plan`` prints it)."""
        # A replica's shards are its group's (staged once): size them once.
        shard_sizes = [sum(len(memoryview(p).cast("B")) for p in self.shards[w].to_parts())
                       for w in range(self.group)] * self.replicas
        return {
            "workers": self.workers,
            "layers": self.layers,
            "input_width": self.input_width,
            "output_width": self.output_width,
            "partitioner": self.partitioner,
            **self.parallelism(),
            "edges": len(self.edges),
            "exchanged_neurons_per_layer": self.rows_to_send(),
            "exchanged_neurons_total": sum(self.rows_to_send()),
            "owned_per_worker": [len(s.layers[0].out_cols) for s in self.shards],
            "shard_bytes": shard_sizes,
            "tasks": self.dag.number_of_nodes(),
            "dag_edges": self.dag.number_of_edges(),
        }


def row_slices(batch: int, parts: int) -> list[tuple[int, int]]:
    """``batch`` rows cut into ``parts`` near-equal contiguous runs ``[start, stop)``."""
    cuts = [r * batch // parts for r in range(parts + 1)]
    return list(itertools.pairwise(cuts))
