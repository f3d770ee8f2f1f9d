"""A model as an op-level graph: named inputs, nodes that apply an op (:mod:`fsdgraph.ops`) to
explicitly named inputs, and named outputs. Any DAG: a node may feed several others (branches),
take several inputs (merges: ``add``, ``concat``), and a model may have several inputs and
outputs. The graph is data: :meth:`Model.to_dict` gives its structure (JSON-able) and weights,
and :meth:`Model.from_dict` reads it back, checked.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> m = Model()
>>> x = m.input("x", 8)
>>> h = m.add("gemm", x, weight=rng.normal(size=(8, 8)), name="fc1")
>>> r = m.add("add", m.add("gelu", h), x, name="residual")    # a residual block
>>> y = m.add("layer_norm", r, scale=np.ones(8))
>>> m.output(y)
>>> out = m.evaluate({"x": rng.normal(size=(4, 8))})
>>> out[y].shape, m.widths()["residual"]
((4, 8), 8)

:func:`Model.evaluate` is the serial reference every distributed run is checked against: it
runs the nodes in a topological order, each on whole blocks (float32).
"""

from __future__ import annotations

import graphlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ConfigError, GraphError
from fsdgraph.ops import Block, Op, as_block, get_op

#: Version of :meth:`Model.to_dict`'s layout.
FORMAT = "fsdgraph-model-1"


@dataclass(frozen=True)
class Node:
    """One op applied to the named inputs (model inputs or earlier nodes)."""

    name: str
    op: Op
    inputs: tuple[str, ...]


class Model:
    """An op-level graph under construction; see the module docstring."""

    def __init__(self) -> None:
        self.inputs: dict[str, int] = {}
        self.nodes: dict[str, Node] = {}
        self.outputs: list[str] = []
        self._widths: dict[str, int] = {}  #: every input's and node's features, as added

    # -- building ---------------------------------------------------------------------------

    def input(self, name: str, features: int) -> str:
        """Declare input ``name``: ``features`` values per row. Returns its name."""
        self._check_new(name, "input")
        if isinstance(features, bool) or not isinstance(features, (int, np.integer)) \
                or features < 1:
            raise GraphError(f"input {name!r}: features must be a positive integer, got "
                             f"{features!r}")
        self.inputs[name] = self._widths[name] = int(features)
        return name

    def add(self, op: str | Op, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        """Add a node applying ``op`` (an :class:`~fsdgraph.ops.Op`, or its name and
        ``attrs``) to ``inputs``; returns the node's name (given, or ``<kind><n>``)."""
        if isinstance(op, str):
            kind = op
            name = name or self._fresh(kind)
            try:
                op = get_op(kind)(**attrs)
            except ConfigError as exc:
                raise GraphError(f"node {name!r}: {exc}") from None
            except TypeError as exc:
                raise GraphError(f"node {name!r}: {kind} attributes: {exc}") from None
            except GraphError as exc:
                raise GraphError(f"node {name!r}: {exc}") from None
        elif attrs:
            raise GraphError(f"node {name or op.kind!r}: attributes go with an op name, not an "
                             f"Op instance")
        name = name or self._fresh(op.kind)
        self._check_new(name, "node")
        node = Node(name, op, tuple(inputs))
        self._widths[name] = self._check_node(node, self._widths)
        self.nodes[name] = node
        return name

    def output(self, *names: str) -> None:
        """Declare the model's outputs (nodes or inputs), in order."""
        for name in names:
            if name not in self.nodes and name not in self.inputs:
                raise GraphError(f"output {name!r}: no input or node of that name")
            if name in self.outputs:
                raise GraphError(f"output {name!r} is declared twice")
            self.outputs.append(name)

    # -- reading ----------------------------------------------------------------------------

    def order(self) -> list[str]:
        """The nodes in an order where each comes after its inputs."""
        return list(self.nodes)  # nodes are added (and read back) only after their inputs

    def widths(self) -> dict[str, int]:
        """Every input's and node's output features."""
        return dict(self._widths)

    def graph(self) -> Any:
        """The DAG as a ``networkx.DiGraph``: an edge from each input or node to each node it
        feeds."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.inputs)
        g.add_nodes_from(self.nodes)
        g.add_edges_from((src, n.name) for n in self.nodes.values() for src in n.inputs)
        return g

    def evaluate(self, inputs: Mapping[str, Any] | Any) -> dict[str, Block]:
        """The outputs (by name) of the model on ``inputs`` (a mapping from input name to a
        rows x features array, dense or sparse; or one array when there is one input)."""
        values = self.bind(inputs)
        for _ in self.steps(values):
            pass
        return {name: values[name] for name in self.outputs}

    def steps(self, values: dict[str, Block]) -> Iterator[str]:
        """Compute the nodes one at a time into ``values`` (the bound inputs, :meth:`bind`),
        yielding each node's name once its output is there; a value no later node or output
        reads is dropped as soon as it is used, so memory holds only the live ones."""
        last_use = {src: i for i, name in enumerate(self.order())
                    for src in self.nodes[name].inputs}
        keep = set(self.outputs)
        for i, name in enumerate(self.order()):
            node = self.nodes[name]
            values[name] = node.op.apply(*(values[src] for src in node.inputs))
            for src in node.inputs:
                if last_use.get(src) == i and src not in keep:
                    values.pop(src, None)
            yield name

    # -- as data ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"format", "inputs", "nodes", "outputs"}``: each node's ``name``, ``op``,
        ``inputs``, ``attrs`` (JSON-able) and ``params`` (its weights, numpy or scipy
        arrays)."""
        return {"format": FORMAT, "inputs": dict(self.inputs),
                "nodes": [{"name": n.name, "op": n.op.kind, "inputs": list(n.inputs),
                           "attrs": n.op.attrs(), "params": n.op.params()}
                          for n in self.nodes.values()],
                "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Model:
        """A model from :meth:`to_dict`'s layout, nodes in any order; every error names the
        field or node."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise GraphError(f"model: expected a mapping with format {FORMAT!r}")
        model = cls()
        inputs, nodes, outputs = data.get("inputs"), data.get("nodes"), data.get("outputs")
        if not isinstance(inputs, Mapping) or not isinstance(nodes, list) \
                or not isinstance(outputs, list):
            raise GraphError("model: 'inputs' must be a mapping, 'nodes' and 'outputs' lists")
        for name, features in inputs.items():
            model.input(str(name), features)
        by_name: dict[str, Mapping[str, Any]] = {}
        for i, spec in enumerate(nodes):
            if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) \
                    or not isinstance(spec.get("op"), str):
                raise GraphError(f"model: nodes[{i}] needs a string 'name' and 'op'")
            if spec["name"] in by_name:
                raise GraphError(f"model: node {spec['name']!r} is defined twice")
            by_name[spec["name"]] = spec
        # graphlib, not networkx: a worker reads models too, and keeps its imports small.
        deps = graphlib.TopologicalSorter(
            {name: [src for src in spec.get("inputs", []) if src in by_name]
             for name, spec in by_name.items()})
        try:
            order = list(deps.static_order())
        except graphlib.CycleError as exc:
            cycle = " -> ".join(exc.args[1][:-1])
            raise GraphError(f"model: the nodes form a cycle ({cycle})") from None
        for name in order:
            spec = by_name[name]
            inputs, attrs, params = (spec.get("inputs", []), spec.get("attrs", {}),
                                     spec.get("params", {}))
            if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
                raise GraphError(f"node {name!r}: 'inputs' must be a list of names")
            if not isinstance(attrs, Mapping) or not isinstance(params, Mapping) \
                    or set(attrs) & set(params) or "name" in attrs or "name" in params:
                raise GraphError(f"node {name!r}: 'attrs' and 'params' must be mappings with "
                                 f"distinct keys other than 'name'")
            model.add(spec["op"], *inputs, name=name, **{**attrs, **params})
        model.output(*outputs)
        return model

    def __repr__(self) -> str:
        return (f"Model(inputs={json.dumps(self.inputs)}, nodes={len(self.nodes)}, "
                f"outputs={self.outputs})")

    # -- checks -----------------------------------------------------------------------------

    def _fresh(self, kind: str) -> str:
        n = sum(node.op.kind == kind for node in self.nodes.values())
        while f"{kind}{n}" in self.nodes or f"{kind}{n}" in self.inputs:
            n += 1
        return f"{kind}{n}"

    def _check_new(self, name: str, what: str) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"{what} name must be a non-empty string, got {name!r}")
        if name in self.inputs or name in self.nodes:
            raise GraphError(f"{what} {name!r}: the name is taken")

    def _check_node(self, node: Node, widths: Mapping[str, int]) -> int:
        """The node's output features, once its arity, inputs and widths are checked."""
        arity = node.op.arity
        if arity is None and len(node.inputs) < 2:
            raise GraphError(f"node {node.name!r}: {node.op.kind} takes two or more inputs, got "
                             f"{len(node.inputs)}")
        if arity is not None and len(node.inputs) != arity:
            raise GraphError(f"node {node.name!r}: {node.op.kind} takes {arity} input(s), got "
                             f"{len(node.inputs)}")
        for src in node.inputs:
            if src not in widths:
                raise GraphError(f"node {node.name!r}: input {src!r} is not a model input or "
                                 f"an earlier node")
        try:
            return node.op.width([widths[src] for src in node.inputs])
        except GraphError as exc:
            raise GraphError(f"node {node.name!r}: {exc}") from None

    def _check_complete(self) -> None:
        if not self.inputs:
            raise GraphError("model has no input")
        if not self.outputs:
            raise GraphError("model has no output: declare them with output()")

    def bind(self, inputs: Mapping[str, Any] | Any) -> dict[str, Block]:
        """The model's inputs checked against their declared widths and made float32 blocks:
        a mapping from input name to a rows x features array, dense or sparse (or one array
        when there is one input)."""
        self._check_complete()
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                raise GraphError(f"the model has inputs {', '.join(self.inputs)}: give a mapping "
                                 f"from input name to array")
            inputs = {next(iter(self.inputs)): inputs}
        missing = [name for name in self.inputs if name not in inputs]
        extra = [name for name in inputs if name not in self.inputs]
        if missing or extra:
            raise GraphError(f"inputs: missing {missing}, unknown {extra}")
        values: dict[str, Block] = {}
        rows = None
        for name, features in self.inputs.items():
            x = inputs[name]
            shape = x.shape if sp.issparse(x) else np.shape(x)
            if len(shape) != 2 or shape[1] != features:
                raise GraphError(f"input {name!r}: expected rows x {features}, got shape {shape}")
            if rows is not None and shape[0] != rows:
                raise GraphError(f"input {name!r}: {shape[0]} rows, the other inputs have {rows}")
            rows = shape[0]
            block = as_block(x)
            if not np.isfinite(block).all():
                raise GraphError(f"input {name!r}: NaN or infinite values")
            values[name] = block
        return values


def from_layers(layers: Any, features: int | None = None) -> Model:
    """The op-level model of a chain of fused layers (:meth:`fsdgraph.Graph.layers`, the Graph
    Challenge network among them): per layer a sparse ``matmul``, a ``bias_add`` (on nonzero
    values where the layer says so) and its ReLU, capped or not."""
    layers = list(layers)
    if not layers:
        raise GraphError("from_layers: no layers")
    model = Model()
    prev = model.input("x", features or layers[0].weight.shape[0])
    for l, layer in enumerate(layers):
        prev = model.add("matmul", prev, weight=layer.weight, name=f"l{l}.matmul")
        prev = model.add("bias_add", prev, bias=layer.bias, on_nonzero=layer.bias_on_nonzero,
                         name=f"l{l}.bias")
        if layer.relu:
            prev = (model.add("capped_relu", prev, cap=layer.cap, name=f"l{l}.relu")
                    if layer.cap is not None else model.add("relu", prev, name=f"l{l}.relu"))
    model.output(prev)
    return model
