"""Compile a graph into a :class:`~fsdgraph.plan.Plan` for ``P`` workers.

Steps, per layer ``l`` with weight ``W`` (in x out):

1. the partitioner assigns each output neuron to a worker (``owners[l]``);
2. worker ``w`` needs the input neurons ``I = rows of W[:, O_l(w)] with a nonzero``;
3. ``I`` is grouped by who owns each neuron as an output of layer ``l - 1`` (for layer 0: the
   staged input), giving the weight rows per source and the exchange edges ``(l, s, w)``;
4. sender ``s`` is told which of its previous output columns go to ``w``.

>>> import numpy as np, scipy.sparse as sp
>>> from fsdgraph.graph import sequential
>>> w = sp.csr_matrix(np.ones((4, 4), np.float32))
>>> plan = compile(sequential([w, w]), workers=2)
>>> [(e.layer, e.src, e.dst, e.neurons.tolist()) for e in plan.edges]
[(1, 1, 0, [2, 3]), (1, 0, 1, [0, 1])]
"""

from __future__ import annotations

import builtins

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ConfigError, GraphError
from fsdgraph.graph import Graph, Layer
from fsdgraph.partitioners import Partitioner, get_partitioner
from fsdgraph.plan import INPUT, Edge, LayerShard, LayerSpec, Plan, Send, SourceRows, WorkerShard


def compile(
    graph: Graph | builtins.list[Layer],
    workers: int,
    partitioner: str | Partitioner = "hypergraph",
) -> Plan:
    """Partition every layer of ``graph`` over ``workers`` and derive the exchange edges."""
    layers = graph.layers() if isinstance(graph, Graph) else _check_layers(graph)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    workers = int(workers)
    narrowest = min(layer.weight.shape[1] for layer in layers)
    if workers > narrowest:
        raise ConfigError(
            f"workers={workers} exceeds the narrowest layer ({narrowest} neurons): "
            "every worker must own at least one neuron")
    part = get_partitioner(partitioner)
    weights = [layer.weight for layer in layers]
    owners = part.partition([w.shape[1] for w in weights], workers, weights)
    _check_owners(owners, weights, workers, part.name)
    owners = [own.astype(np.int32, copy=False) for own in owners]

    specs = [LayerSpec(int(layer.weight.shape[1]), layer.relu, layer.cap, layer.bias_on_nonzero)
             for layer in layers]
    per_worker: list[list[LayerShard]] = [[] for _ in range(workers)]
    input_neurons: list[np.ndarray] = []
    edges: list[Edge] = []
    prev_cols: list[np.ndarray] = []
    for l, (layer, own) in enumerate(zip(layers, owners, strict=True)):
        by_col = layer.weight.tocsc()
        out_cols = [np.flatnonzero(own == w).astype(np.int32) for w in range(workers)]
        sends: list[list[Send]] = [[] for _ in range(workers)]
        for w in range(workers):
            sub = sp.csr_matrix(by_col[:, out_cols[w]])
            needed = np.flatnonzero(np.diff(sub.indptr) > 0).astype(np.int32)
            if l == 0:
                input_neurons.append(needed)
                sources = [SourceRows(INPUT, np.arange(len(needed), dtype=np.int32))]
            else:
                holder = owners[l - 1][needed]
                sources = []
                for s in np.unique(holder):
                    positions = np.flatnonzero(holder == s).astype(np.int32)
                    sources.append(SourceRows(int(s), positions))
                    if s != w:
                        neurons = needed[positions]
                        edges.append(Edge(l, int(s), w, neurons))
                        local = np.searchsorted(prev_cols[s], neurons).astype(np.int32)
                        sends[int(s)].append(Send(w, local))
            # This worker's own rows come first: they are ready before any peer's arrive.
            sources.sort(key=lambda r: (r.src != w, r.src))
            per_worker[w].append(LayerShard(out_cols[w], layer.bias[out_cols[w]], needed,
                                            sub[needed], sources, []))
        for w in range(workers):
            if sends[w]:
                shard = per_worker[w][l]
                per_worker[w][l] = LayerShard(shard.out_cols, shard.bias, shard.inputs,
                                              shard.weight, shard.sources, sends[w])
        prev_cols = out_cols

    shards = [WorkerShard(w, workers, input_neurons[w], specs, per_worker[w])
              for w in range(workers)]
    return Plan(workers=workers, input_width=int(layers[0].weight.shape[0]),
                partitioner=part.name, specs=specs, owners=owners, shards=shards, edges=edges)


def _check_layers(layers: object) -> builtins.list[Layer]:
    """A list of layers given instead of a Graph: non-empty, every item a ``Layer``, each
    layer's input width the previous layer's output width."""
    if not isinstance(layers, (builtins.list, tuple)):
        raise GraphError(f"compile: expected a Graph or a list of Layer, "
                         f"got {type(layers).__name__}")
    if not layers:
        raise GraphError("compile: no layers given: expected a Graph or a non-empty list of "
                         "Layer (graph.layers())")
    for l, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise GraphError(f"compile: layer {l} must be a Layer (from graph.layers()), "
                             f"got {type(layer).__name__}")
        if l and layer.weight.shape[0] != layers[l - 1].weight.shape[1]:
            raise GraphError(f"compile: layer {l} takes {layer.weight.shape[0]} inputs but "
                             f"layer {l - 1} has {layers[l - 1].weight.shape[1]} outputs")
    return builtins.list(layers)


def _check_owners(
    owners: builtins.list[np.ndarray], weights: builtins.list[sp.csr_matrix], workers: int,
    name: str,
) -> None:
    """A partitioner is a plugin: check what it returned before trusting it."""
    if len(owners) != len(weights):
        raise ConfigError(f"partitioner {name!r} returned {len(owners)} layers, "
                          f"expected {len(weights)}")
    for l, (own, w) in enumerate(zip(owners, weights, strict=True)):
        if (not isinstance(own, np.ndarray) or not np.issubdtype(own.dtype, np.integer)
                or own.shape != (w.shape[1],) or own.min() < 0 or own.max() >= workers):
            raise ConfigError(f"partitioner {name!r}: layer {l} owners must be {w.shape[1]} "
                              f"worker ids in [0, {workers})")
        if np.bincount(own, minlength=workers).min() == 0:
            raise ConfigError(f"partitioner {name!r}: layer {l} leaves a worker without neurons")
