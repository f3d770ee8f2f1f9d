"""Lowering an op-level model (:mod:`fsdgraph.model`) to one instruction list per worker.

**Tensor parallel** (``workers > 1``): every worker holds every row of the batch and a share of
each op's features. A value (a model input or a node's output) is held in one or more layouts:

* ``full``: every feature, the same on every worker;
* ``split``: worker ``w`` holds the features ``row_slices(width, P)[w]``;
* ``partial``: every worker holds a full-width partial sum; the value is their sum.

Each op is lowered by its partition rule, and the compiler inserts the exchange a choice needs:

* a matrix product from a ``full`` input is split by output features (``split`` out, nothing
  sent); from a ``split`` input, by input features (``partial`` out) when its output is narrower
  than its input, else its input is all-gathered first. Two dense layers thus pair up column then
  row, and send one reduction per pair instead of an all-gather per layer;
* a ``partial`` value is made ``split`` by a **reduce-scatter** (worker ``d`` receives every
  worker's partial of its features and adds them, in worker order, then the product's bias), and
  ``full`` by an **all-gather** of that;
* element-wise ops run on whatever layout their inputs share (``full`` inputs are sliced for
  free); ``add`` of partial sums stays a partial sum;
* LayerNorm and softmax on ``split`` values exchange only each row's statistics (an all-reduce of
  a few numbers per row); other row-wise ops, concatenation and ops with weights the compiler
  cannot split get ``full`` inputs and are computed whole on every worker;
* every model output is written ``full`` by worker 0 or ``split`` by every worker.

**Data parallel** is the same lowering at one worker per replica: every value ``full``, no
exchange; each replica computes its slice of the rows.

An instruction is a JSON-able dict plus arrays (the sliced weights), so a worker's program is
staged like a shard (:mod:`fsdgraph.model_plan`):

* ``{"do": "op", "kind", "attrs", "params", "inputs": [key...], "out": key}``;
* ``{"do": "slice", "src", "out", "cols": [lo, hi]}``;
* ``{"do": "all_gather", "src", "out", "step", "bounds": [[lo, hi] per worker]}``;
* ``{"do": "reduce_scatter", "src", "out", "step", "bounds", "bias": array or None}``;
* ``{"do": "layer_norm" | "softmax", "src", "out", "steps": [s1, s2], "width", ...}``: the
  split form (``scale``, ``bias``, ``epsilon`` for LayerNorm).

A key is ``<value>@<layout>``; ``step`` numbers the run's exchanges (the channel's layer index).

>>> import numpy as np
>>> from fsdgraph.model import Model
>>> m = Model()
>>> x = m.input("x", 4)
>>> h = m.add("gelu", m.add("gemm", x, weight=np.ones((4, 8))))
>>> m.output(m.add("gemm", h, weight=np.ones((8, 4))))
>>> lowering = lower(m, 2)
>>> [c.kind for c in lowering.collectives], lowering.outputs
(['reduce_scatter'], {'gemm1': 'gemm1@split'})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsdgraph.model import Model, Node
from fsdgraph.plan import row_slices

FULL, SPLIT, PARTIAL = "full", "split", "partial"
#: Row-wise ops the compiler can split by features (with a row-statistics exchange).
STATS_OPS = ("layer_norm", "softmax")
#: Exchange rounds of each row-statistics op (LayerNorm: the mean, then the variance; softmax:
#: the maximum, then the sum of exponentials).
STATS_ROUNDS = 2
#: Columns of a row-statistics message: a float64 as two float32 (high and low part).
STATS_COLUMNS = 2

Instruction = dict[str, Any]


def key(value: str, layout: str) -> str:
    return f"{value}@{layout}"


@dataclass(frozen=True)
class Collective:
    """One exchange of a lowered model: ``kind`` (all_gather, reduce_scatter, row_stats) of
    ``value``, ``width`` features wide (the statistics' columns for row_stats), at ``step``."""

    kind: str
    value: str
    width: int
    step: int

    def lower_bound_bytes(self, batch: int, workers: int) -> int:
        """The float32 bytes all workers together must send for it, uncompressed: an all-gather
        or reduce-scatter moves every feature but a worker's own share to each other worker;
        each round of row statistics, every worker's to every other."""
        if self.kind == "row_stats":
            return int(batch * self.width * 4 * workers * (workers - 1) * STATS_ROUNDS)
        return int(batch * self.width * 4 * (workers - 1))


@dataclass
class Lowering:
    """Every worker's program, where each model output is read from, and the exchanges."""

    workers: int
    programs: list[list[Instruction]]
    outputs: dict[str, str]
    collectives: list[Collective] = field(default_factory=list)

    def lower_bound_bytes(self, batch: int) -> int:
        return sum(c.lower_bound_bytes(batch, self.workers) for c in self.collectives)


class _Lowerer:
    def __init__(self, model: Model, workers: int) -> None:
        self.model = model
        self.workers = workers
        self.widths = model.widths()
        self.programs: list[list[Instruction]] = [[] for _ in range(workers)]
        #: value -> layout -> key of the instruction output holding it
        self.held: dict[str, dict[str, str]] = {name: {FULL: key(name, FULL)}
                                                for name in model.inputs}
        #: bias to add once a partial sum is reduced (a Gemm split by input features)
        self.pending_bias: dict[str, np.ndarray] = {}
        self.collectives: list[Collective] = []
        self.step = 0

    # -- emitting --------------------------------------------------------------------------

    def emit(self, make: Callable[[int], Instruction]) -> None:
        for w, program in enumerate(self.programs):
            program.append(make(w))

    def bounds(self, value: str) -> list[tuple[int, int]]:
        return row_slices(self.widths[value], self.workers)

    def exchange(self, kind: str, value: str, width: int) -> int:
        step = self.step
        self.collectives.append(Collective(kind, value, width, step))
        self.step += STATS_ROUNDS if kind == "row_stats" else 1
        return step

    # -- layouts ---------------------------------------------------------------------------

    def split(self, value: str) -> str:
        """The key of ``value`` split by features, exchanging what that needs."""
        held = self.held[value]
        if SPLIT in held:
            return held[SPLIT]
        out = key(value, SPLIT)
        bounds = self.bounds(value)
        if FULL in held:
            src = held[FULL]
            self.emit(lambda w: {"do": "slice", "src": src, "out": out, "cols": list(bounds[w])})
        else:
            src = held[PARTIAL]
            step = self.exchange("reduce_scatter", value, self.widths[value])
            bias = self.pending_bias.pop(value, None)
            self.emit(lambda w: {"do": "reduce_scatter", "src": src, "out": out, "step": step,
                                 "bounds": [list(b) for b in bounds],
                                 "bias": None if bias is None else bias[slice(*bounds[w])]})
        held[SPLIT] = out
        return out

    def full(self, value: str) -> str:
        """The key of ``value`` whole on every worker, exchanging what that needs."""
        held = self.held[value]
        if FULL in held:
            return held[FULL]
        src = self.split(value)
        out = key(value, FULL)
        step = self.exchange("all_gather", value, self.widths[value])
        bounds = [list(b) for b in self.bounds(value)]
        self.emit(lambda w: {"do": "all_gather", "src": src, "out": out, "step": step,
                             "bounds": bounds})
        held[FULL] = out
        return out

    # -- ops -------------------------------------------------------------------------------

    def node(self, node: Node) -> None:
        kind = node.op.kind
        if kind in ("matmul", "gemm"):
            self.product(node)
        elif kind == "identity":
            src = node.inputs[0]
            self.held[node.name] = dict(self.held[src])
            if src in self.pending_bias:
                self.pending_bias[node.name] = self.pending_bias[src]
        elif kind == "add" and all(set(self.held[s]) == {PARTIAL} and s not in self.pending_bias
                                   for s in node.inputs):
            self.compute(node, [self.held[s][PARTIAL] for s in node.inputs], PARTIAL)
        elif self.elementwise(node):
            if all(FULL in self.held[s] for s in node.inputs) or not self.splittable(node.name):
                self.compute(node, [self.full(s) for s in node.inputs], FULL)
            else:
                self.compute(node, [self.split(s) for s in node.inputs], SPLIT, sliced=True)
        elif kind in STATS_OPS and FULL not in self.held[node.inputs[0]] \
                and self.splittable(node.name):
            self.row_stats(node, self.split(node.inputs[0]))
        else:
            self.compute(node, [self.full(s) for s in node.inputs], FULL)

    def splittable(self, value: str) -> bool:
        """Whether every worker can hold a share of ``value``'s features (a narrower value is
        held whole by every worker)."""
        return self.widths[value] >= self.workers

    def elementwise(self, node: Node) -> bool:
        """Whether the op maps each feature on its own (its weights, if any, per feature)."""
        op = node.op
        return "features" in op.splits and op.kind not in ("concat", *STATS_OPS) and (
            not op.params() or op.kind == "bias_add")

    def compute(self, node: Node, inputs: Sequence[str], layout: str,
                sliced: bool = False) -> None:
        out = key(node.name, layout)
        attrs, params = node.op.attrs(), node.op.params()
        bounds = self.bounds(node.name)
        self.emit(lambda w: {"do": "op", "kind": node.op.kind, "attrs": attrs,
                             "params": {k: v[slice(*bounds[w])] for k, v in params.items()}
                             if sliced else params,
                             "inputs": list(inputs), "out": out})
        self.held[node.name] = {layout: out}

    def product(self, node: Node) -> None:
        op, src = node.op, node.inputs[0]
        weight, bias = op.params()["weight"], getattr(op, "bias", None)
        held = self.held[src]
        n_in, n_out = weight.shape
        if FULL not in held and n_out < n_in and self.splittable(src):
            x = self.split(src)
            bounds = self.bounds(src)
            out = key(node.name, PARTIAL)
            self.emit(lambda w: {"do": "op", "kind": "matmul", "attrs": {},
                                 "params": {"weight": weight[slice(*bounds[w])]},
                                 "inputs": [x], "out": out})
            self.held[node.name] = {PARTIAL: out}
            if bias is not None and np.any(bias):
                self.pending_bias[node.name] = bias
            return
        if not self.splittable(node.name):
            self.compute(node, [self.full(src)], FULL)
            return
        x = self.full(src)
        bounds = self.bounds(node.name)
        out = key(node.name, SPLIT)

        def columns(w: int) -> Instruction:
            lo, hi = bounds[w]
            params = {"weight": _columns(weight, lo, hi)}
            if bias is not None:  # a Gemm's
                params["bias"] = bias[lo:hi]
            return {"do": "op", "kind": op.kind, "attrs": {}, "params": params,
                    "inputs": [x], "out": out}

        self.emit(columns)
        self.held[node.name] = {SPLIT: out}

    def row_stats(self, node: Node, x: str) -> None:
        op = node.op
        step = self.exchange("row_stats", node.name, STATS_COLUMNS)
        out = key(node.name, SPLIT)
        bounds = self.bounds(node.name)
        width = self.widths[node.name]

        def stats(w: int) -> Instruction:
            instruction: Instruction = {"do": op.kind, "src": x, "out": out,
                                        "steps": [step, step + 1], "width": width}
            if op.kind == "layer_norm":
                cols = slice(*bounds[w])
                instruction.update(scale=op.params()["scale"][cols],
                                   bias=op.params()["bias"][cols],
                                   epsilon=op.attrs()["epsilon"])
            return instruction

        self.emit(stats)
        self.held[node.name] = {SPLIT: out}

    def output(self, name: str) -> str:
        held = self.held[name]
        return held[FULL] if FULL in held else self.split(name)


def _columns(weight: Any, lo: int, hi: int) -> Any:
    """Columns ``[lo, hi)`` of a weight, as a compact matrix of their own."""
    if sp.issparse(weight):
        return weight[:, lo:hi].tocsr()
    return np.ascontiguousarray(weight[:, lo:hi])


def lower(model: Model, workers: int) -> Lowering:
    """Every worker's program for ``model`` split by features over ``workers`` workers (one
    worker: the whole model, every value ``full``)."""
    lowerer = _Lowerer(model, workers)
    for name in model.order():
        node = model.nodes[name]
        if workers == 1:  # the whole model, op by op, as the serial evaluator runs it
            lowerer.compute(node, [lowerer.full(s) for s in node.inputs], FULL)
        else:
            lowerer.node(node)
    outputs = {name: lowerer.output(name) for name in model.outputs}
    return Lowering(workers, lowerer.programs, outputs, lowerer.collectives)
