"""The model graph: what a user defines before compiling.

A graph is data: each node is a small object holding explicit references to the node it reads
from. Today's compiler takes a chain ``Input -> (Linear -> [ReLU])*`` — the shape of the sparse DNNs
of the Graph Challenge and of every MLP — and fuses each ``Linear`` with the ``ReLU`` after it
into one *layer* ``Y' = min(max(Y @ W + b, 0), cap)``.

Example::

    >>> import numpy as np, scipy.sparse as sp
    >>> g = Graph()
    >>> x = g.input(4)
    >>> h = g.relu(g.linear(x, sp.identity(4, dtype=np.float32, format="csr"), bias=-0.5), cap=32)
    >>> g.output(h)
    >>> [layer.weight.shape for layer in g.layers()]
    [(4, 4)]

Validation happens where the mistake is made (``linear`` checks the weight against its input), so
an error names the node and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import GraphError

Weight: TypeAlias = "sp.csr_matrix | np.ndarray"


@dataclass(frozen=True, eq=False)
class Node:
    """A node of the graph; ``width`` is the number of features it produces."""

    name: str
    width: int


@dataclass(frozen=True, eq=False)
class Input(Node):
    """The input features (batch x width)."""


@dataclass(frozen=True, eq=False)
class Linear(Node):
    """``source @ weight + bias``; with ``bias_on_nonzero`` the bias is added only where the
    product is nonzero (the Graph Challenge rule, which keeps a dead row dead)."""

    source: Node
    weight: sp.csr_matrix
    bias: np.ndarray  # float32, shape (width,)
    bias_on_nonzero: bool


@dataclass(frozen=True, eq=False)
class ReLU(Node):
    """``min(max(source, 0), cap)``; ``cap=None`` for a plain ReLU."""

    source: Node
    cap: float | None


@dataclass(frozen=True)
class Layer:
    """A fused layer as the compiler and the kernels see it."""

    weight: sp.csr_matrix  # (in x out) float32
    bias: np.ndarray  # (out,) float32
    bias_on_nonzero: bool
    relu: bool
    cap: float | None


@dataclass
class Graph:
    """A model under construction. See the module docstring for an example."""

    nodes: list[Node] = field(default_factory=list)
    output_node: Node | None = None

    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def input(self, width: int, name: str = "input") -> Input:
        """Declare the input: ``width`` features per row."""
        if any(isinstance(n, Input) for n in self.nodes):
            raise GraphError("graph already has an input; only one is supported")
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width <= 0:
            raise GraphError(f"input {name!r}: width must be a positive integer, got {width!r}")
        node = Input(name=name, width=int(width))
        self._add(node)
        return node

    def linear(
        self,
        source: Node,
        weight: Weight,
        bias: float | np.ndarray = 0.0,
        *,
        bias_on_nonzero: bool = False,
        name: str | None = None,
    ) -> Linear:
        """``source @ weight + bias`` with ``weight`` (in x out), sparse (scipy) or dense; with
        ``bias_on_nonzero`` (the Graph Challenge's rule) the bias goes only where the product
        is nonzero."""
        name = name or f"linear{sum(isinstance(n, Linear) for n in self.nodes)}"
        self._check_source(source, name)
        w = _as_weight(weight, name)
        if w.shape[0] != source.width:
            raise GraphError(
                f"{name}: weight has {w.shape[0]} rows but its input {source.name!r} has "
                f"{source.width} features (expected weight of shape ({source.width}, out))"
            )
        b = _as_bias(bias, w.shape[1], name)
        node = Linear(name=name, width=w.shape[1], source=source, weight=w, bias=b,
                      bias_on_nonzero=bias_on_nonzero)
        self._add(node)
        return node

    def relu(self, source: Node, cap: float | None = None, *, name: str | None = None) -> ReLU:
        """ReLU, optionally capped (the Graph Challenge caps at 32)."""
        name = name or f"relu{sum(isinstance(n, ReLU) for n in self.nodes)}"
        self._check_source(source, name)
        number = isinstance(cap, (int, float, np.integer, np.floating)) and not isinstance(
            cap, bool)
        if cap is not None and not (number and np.isfinite(cap) and cap > 0):
            raise GraphError(f"{name}: cap must be a positive finite number or None, got {cap!r}")
        node = ReLU(name=name, width=source.width, source=source,
                    cap=None if cap is None else float(cap))
        self._add(node)
        return node

    def output(self, node: Node) -> None:
        """Mark the node whose values the run returns."""
        self._check_source(node, "output")
        self.output_node = node

    def _check_source(self, source: Node, name: str) -> None:
        if not isinstance(source, Node) or source not in self.nodes:
            raise GraphError(f"{name}: source must be a node of this graph, got {source!r}")
        if any(getattr(n, "source", None) is source for n in self.nodes):
            raise GraphError(
                f"{name}: {source.name!r} already feeds another node; only chains are supported"
            )

    @property
    def input_width(self) -> int:
        for node in self.nodes:
            if isinstance(node, Input):
                return node.width
        raise GraphError("graph has no input; call graph.input(width) first")

    def layers(self) -> list[Layer]:
        """The chain from input to output as fused layers; raises GraphError if there is none."""
        if self.output_node is None:
            if not self.nodes:
                raise GraphError("graph is empty: add an input and at least one linear layer")
            raise GraphError("graph has no output; call graph.output(node)")
        chain: list[Node] = []
        node: Node | None = self.output_node
        while node is not None and not isinstance(node, Input):
            chain.append(node)
            node = getattr(node, "source", None)
        chain.reverse()
        layers: list[Layer] = []
        for node in chain:
            if isinstance(node, Linear):
                layers.append(Layer(node.weight, node.bias, node.bias_on_nonzero, False, None))
            elif isinstance(node, ReLU):
                if not layers or layers[-1].relu:
                    raise GraphError(f"{node.name}: a ReLU must follow a linear layer")
                last = layers[-1]
                layers[-1] = Layer(last.weight, last.bias, last.bias_on_nonzero, True, node.cap)
        if not layers:
            raise GraphError("graph has no linear layer between its input and output")
        return layers


def sequential(
    weights: list[Weight],
    bias: float | np.ndarray | list[float] | list[np.ndarray] = 0.0,
    *,
    cap: float | None = None,
    bias_on_nonzero: bool = False,
) -> Graph:
    """A chain of ``linear -> relu`` layers, as the Graph Challenge networks are (their own
    constructor, :func:`fsdgraph.sources.graphchallenge.graphchallenge_network`, adds the bias
    only where the product is nonzero and caps the ReLU at 32).

    >>> import scipy.sparse as sp, numpy as np
    >>> g = sequential([sp.eye(3, format="csr", dtype=np.float32)] * 2, bias=-0.3, cap=32)
    >>> len(g.layers())
    2
    """
    if isinstance(weights, (sp.spmatrix, sp.sparray, np.ndarray)) or not isinstance(
            weights, (list, tuple)):
        raise GraphError(f"sequential: weights must be a list of weight matrices, "
                         f"got {type(weights).__name__}")
    if not weights:
        raise GraphError("sequential: no weights given (the graph would be empty)")
    g = Graph()
    shape: tuple[int, ...] = getattr(weights[0], "shape", ())
    if len(shape) != 2 or not (sp.issparse(weights[0]) or isinstance(weights[0], np.ndarray)):
        _as_weight(weights[0], "layer1")  # raises the GraphError that says what is wrong
    h: Node = g.input(shape[0])
    biases: list[float | np.ndarray] = (list(bias) if isinstance(bias, list)
                                         else [bias] * len(weights))
    if len(biases) != len(weights):
        raise GraphError(f"sequential: {len(biases)} biases for {len(weights)} layers")
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = g.relu(g.linear(h, w, b, bias_on_nonzero=bias_on_nonzero, name=f"layer{i + 1}"),
                   cap=cap, name=f"relu{i + 1}")
    g.output(h)
    return g


def _as_weight(weight: Weight, name: str) -> sp.csr_matrix:
    if sp.issparse(weight):
        w = sp.csr_matrix(weight)
    elif isinstance(weight, np.ndarray):
        if weight.ndim != 2:
            raise GraphError(f"{name}: weight must be 2-D (in x out), got shape {weight.shape}")
        w = sp.csr_matrix(weight)
    else:
        raise GraphError(
            f"{name}: weight must be a scipy sparse matrix or a numpy array, "
            f"got {type(weight).__name__}"
        )
    if not np.issubdtype(w.dtype, np.floating):
        raise GraphError(f"{name}: weight must have a float dtype, got {w.dtype}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise GraphError(f"{name}: weight has an empty shape {w.shape}")
    original = np.asarray(weight.data if sp.issparse(weight) else weight)
    # Checked after the cast: a float64 beyond float32's range becomes inf there.
    with np.errstate(over="ignore", invalid="ignore"):
        w = w.astype(np.float32)
        w.sum_duplicates()  # a sum of large duplicates may overflow too
    _check_finite(w.data, original, f"{name}: weight")
    w.eliminate_zeros()
    return w


def _check_finite(kept: np.ndarray, original: np.ndarray, what: str) -> None:
    """GraphError if the float32 values ``kept`` (made from ``original``) hold NaN or inf."""
    bad = int(np.count_nonzero(~np.isfinite(kept)))
    if not bad:
        return
    if np.all(np.isfinite(original)):
        top = float(np.finfo(np.float32).max)
        largest = float(np.max(np.abs(original)))
        how = (f"the largest {largest:.4g}" if largest > top
               else "once duplicate entries are summed")
        raise GraphError(f"{what} has {bad} values outside the float32 range (|x| <= "
                         f"{top:.4g}), {how}")
    raise GraphError(f"{what} has {bad} NaN or infinite values")


def _as_bias(bias: float | np.ndarray, width: int, name: str) -> np.ndarray:
    try:
        b = np.asarray(bias, dtype=np.float64)
    except (TypeError, ValueError):
        raise GraphError(f"{name}: bias must be a number or an array of shape ({width},), "
                         f"got {type(bias).__name__}") from None
    if b.ndim == 0:
        b = np.full(width, float(b))
    if b.shape != (width,):
        raise GraphError(f"{name}: bias must be a scalar or have shape ({width},), got {b.shape}")
    with np.errstate(over="ignore"):
        kept = b.astype(np.float32)
    if not np.all(np.isfinite(kept)):
        if np.all(np.isfinite(b)):
            raise GraphError(f"{name}: bias {float(np.max(np.abs(b))):.4g} is outside the "
                             f"float32 range (|x| <= {float(np.finfo(np.float32).max):.4g})")
        raise GraphError(f"{name}: bias has NaN or infinite values")
    return kept
