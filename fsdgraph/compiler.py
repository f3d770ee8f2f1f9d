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
from typing import Any, overload

import numpy as np
import scipy.sparse as sp

from fsdgraph.defaults import STRATEGIES
from fsdgraph.errors import ConfigError, GraphError
from fsdgraph.graph import Graph, Layer
from fsdgraph.model import Model
from fsdgraph.model_plan import ModelPlan, compile_model
from fsdgraph.partitioners import Partitioner, get_partitioner
from fsdgraph.plan import INPUT, Edge, LayerShard, LayerSpec, Plan, Send, SourceRows, WorkerShard


@overload
def compile(graph: Model, workers: int, partitioner: str | Partitioner = ..., *,
            strategy: str | None = ..., replicas: int | None = ..., collapse_at: int | None = ...,
            collapse_to: int = ..., **planning: Any) -> ModelPlan: ...


@overload
def compile(graph: Graph | builtins.list[Layer], workers: int,
            partitioner: str | Partitioner = ..., *, strategy: str | None = ...,
            replicas: int | None = ..., collapse_at: int | None = ..., collapse_to: int = ...,
            **planning: Any) -> Plan: ...


def compile(
    graph: Graph | builtins.list[Layer] | Model,
    workers: int,
    partitioner: str | Partitioner = "hypergraph",
    *,
    strategy: str | None = None,
    replicas: int | None = None,
    collapse_at: int | None = None,
    collapse_to: int = 1,
    **planning: Any,
) -> Plan | ModelPlan:
    """Partition every layer of ``graph`` over ``workers`` and derive the exchange edges.

    ``strategy`` says how the workers share the work, all with the serial reference's results:

    * ``model`` (default): every worker owns a slice of every layer's neurons and computes it for
      all images; activations are exchanged every layer;
    * ``data``: every worker holds the whole model and computes a slice of the images; nothing
      is exchanged;
    * ``hybrid``: ``replicas`` groups of ``workers / replicas`` model-parallel workers, each group
      computing its slice of the images;
    * ``auto``: the planner (:func:`fsdgraph.planner.choose`, given ``planning`` keywords such as
      ``objective``, ``memory_mb``, ``channel``, ``images``) picks one of these, and whether to
      collapse; the plan's ``planned`` says what it chose and predicted.

    An op-level :class:`~fsdgraph.model.Model` compiles to a
    :class:`~fsdgraph.model_plan.ModelPlan`: ``data`` parallel (its default), every worker
    running the whole model on a slice of the rows, or ``model`` (tensor) parallel, every worker
    holding a share of each op's features and weights, with the collectives that needs
    (:mod:`fsdgraph.model_lowering`); ``auto`` picks data parallel unless the weights do not fit
    ``memory_mb`` (a ``planning`` keyword).

    ``collapse_at`` (model, hybrid): from that layer on, only the first ``collapse_to`` workers of
    each group own neurons: the previous layer's outputs are gathered onto them once, and the
    layers where few images are still alive run with less exchange (none for ``collapse_to=1``).
    """
    if isinstance(graph, Model):  # an op-level model (fsdgraph.model_plan)
        memory_mb = planning.pop("memory_mb", None)
        if planning or replicas is not None or collapse_at is not None:
            raise ConfigError("compile: an op-level model takes only workers, strategy and "
                              "memory_mb")
        return compile_model(graph, workers, strategy or "data", memory_mb)
    strategy = strategy or "model"
    layers = graph.layers() if isinstance(graph, Graph) else _check_layers(graph)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    workers = int(workers)
    if strategy == "auto":
        from fsdgraph.planner import choose  # the planner compiles candidates with this module

        choice = choose(layers, workers, partitioner=partitioner, **planning)
        plan = choice.plan
        plan.planned = choice.to_dict()
        return plan
    if planning:
        raise ConfigError(f"compile: {', '.join(sorted(planning))} only apply with "
                          "strategy='auto'")
    replicas = _replicas(strategy, workers, replicas)
    group = workers // replicas
    collapse = _collapse(collapse_at, collapse_to, len(layers), group)
    narrowest = min(layer.weight.shape[1] for layer in layers)
    if group > narrowest:
        who = f"workers={workers}" if replicas == 1 else f"a group of {group} workers"
        raise ConfigError(f"{who} exceeds the narrowest layer ({narrowest} neurons): every "
                          "worker must own at least one neuron")
    part = get_partitioner(partitioner)
    owners = _owners(part, layers, group, collapse)
    shards, input_neurons, edges = _group_shards(layers, owners, group)
    specs = [LayerSpec(int(layer.weight.shape[1]), layer.relu, layer.cap, layer.bias_on_nonzero)
             for layer in layers]
    group_shards = [WorkerShard(w, group, input_neurons[w], specs, shards[w])
                    for w in range(group)]
    all_shards = [group_shards[w % group].rebased(w - w % group)
                  for w in range(workers)]
    all_edges = [Edge(e.layer, e.src + base, e.dst + base, e.neurons)
                 for base in range(0, workers, group) for e in edges]
    return Plan(workers=workers, input_width=int(layers[0].weight.shape[0]),
                partitioner=part.name, specs=specs, owners=owners, shards=all_shards,
                edges=all_edges, replicas=replicas, strategy=strategy,
                collapse_at=None if collapse is None else collapse[0],
                collapse_to=group if collapse is None else collapse[1])


def _replicas(strategy: str, workers: int, replicas: int | None) -> int:
    """The number of model replicas ``strategy`` means for ``workers``."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r}: expected auto or one of "
                          f"{', '.join(STRATEGIES)}")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                 or replicas < 1):
        raise ConfigError(f"replicas must be a positive integer, got {replicas!r}")
    if strategy == "model":
        if replicas not in (None, 1):
            raise ConfigError(f"strategy 'model' has one replica, got replicas={replicas}")
        return 1
    if strategy == "data":
        if replicas not in (None, workers):
            raise ConfigError(f"strategy 'data' has one replica per worker ({workers}), got "
                              f"replicas={replicas}")
        return workers
    if replicas is None:
        raise ConfigError("strategy 'hybrid' needs replicas (the number of model-parallel "
                          "groups)")
    if workers % replicas:
        raise ConfigError(f"hybrid: replicas={replicas} must divide workers={workers}")
    return replicas


def _collapse(at: int | None, to: int, layers: int, group: int) -> tuple[int, int] | None:
    """``(collapse_at, collapse_to)`` checked, or None when nothing collapses."""
    if at is None:
        return None
    if isinstance(at, bool) or not isinstance(at, int) or not 0 < at < layers:
        raise ConfigError(f"collapse_at must be a layer in [1, {layers - 1}], got {at!r}")
    if isinstance(to, bool) or not isinstance(to, int) or not 1 <= to <= group:
        raise ConfigError(f"collapse_to must be in [1, {group}] (the workers of a group), "
                          f"got {to!r}")
    return None if to == group else (at, to)


def _owners(part: Partitioner, layers: builtins.list[Layer], group: int,
            collapse: tuple[int, int] | None) -> builtins.list[np.ndarray]:
    """Owners per layer within one group: ``group`` workers, or after ``collapse_at`` only the
    first ``collapse_to``; one worker needs no partitioner."""
    at, to = collapse if collapse is not None else (len(layers), group)
    owners: builtins.list[np.ndarray] = []
    for segment, width in ((layers[:at], group), (layers[at:], to)):
        if not segment:
            continue
        weights = [layer.weight for layer in segment]
        if width == 1:
            found = [np.zeros(w.shape[1], np.int32) for w in weights]
        else:
            found = part.partition([w.shape[1] for w in weights], width, weights)
            _check_owners(found, weights, width, part.name)
        owners += [own.astype(np.int32, copy=False) for own in found]
    return owners


def _group_shards(
    layers: builtins.list[Layer], owners: builtins.list[np.ndarray], workers: int,
) -> tuple[builtins.list[builtins.list[LayerShard]], builtins.list[np.ndarray],
           builtins.list[Edge]]:
    """Every worker's layer shards, its input neurons and the exchange edges of one group."""
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
    return per_worker, input_neurons, edges


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
