"""Plans of op-level models (:mod:`fsdgraph.model`) and the objects their runs stage and read.

An op-level model runs **data parallel**: every worker holds the whole model and computes a
contiguous slice of the batch's rows (:meth:`ModelPlan.image_slices`); nothing is exchanged, and
every op is exact row by row, so the run's outputs are the serial evaluator's. (Splitting ops by
features, with the collectives that needs, is the layer chains' model parallelism today:
:func:`fsdgraph.compile` on a :class:`~fsdgraph.Graph`.)

The objects, all sealed (:mod:`fsdgraph.sealed`) and raw-array packed
(:func:`fsdgraph.serialize.pack_parts`):

* ``runs/<run>/shard/0``: ``{"version", "model"}``, the model as :meth:`Model.to_dict` gives it,
  read back through :meth:`Model.from_dict` (checked like any model: never executed as code);
* ``runs/<run>/input/<w>``: ``{"version", "rows": [start, stop], "inputs": {name: rows x
  features float32}}``;
* ``runs/<run>/out/<w>``: ``{"version", "rows", "outputs": {name: array}, "metrics"}``.

>>> import numpy as np
>>> from fsdgraph.model import Model
>>> m = Model()
>>> m.output(m.add("relu", m.input("x", 3)))
>>> plan = compile_model(m, 2)
>>> plan.image_slices(5), plan.parallelism()["strategy"]
([(0, 2), (2, 5)], 'data')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsdgraph.errors import ConfigError, GraphError, ProtocolError
from fsdgraph.model import Model
from fsdgraph.ops import in_process_only
from fsdgraph.plan import row_slices
from fsdgraph.serialize import pack_parts, unpack_parts

#: Layout of the staged model, input and output objects of a model run.
MODEL_OBJECTS_VERSION = 1

Parts = list[bytes | memoryview]


@dataclass
class ModelPlan:
    """``workers`` workers, each computing ``model`` on its slice of the rows."""

    model: Model
    workers: int
    strategy: str = "data"
    #: How the plan was chosen (the layer planner's field; None: asked for as it is).
    planned: dict[str, Any] | None = None
    #: No exchange between workers.
    edges: list[Any] = field(default_factory=list)

    #: Rows are split, not neurons.
    partitioner = "rows"
    group = 1

    @property
    def replicas(self) -> int:
        return self.workers

    @property
    def layers(self) -> int:
        """Progress is counted in ops: a worker reports after each node."""
        return len(self.model.nodes)

    def image_slices(self, batch: int) -> list[tuple[int, int]]:
        """The rows ``[start, stop)`` each worker computes: near-equal contiguous runs."""
        return row_slices(batch, self.workers)

    def parallelism(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "replicas": self.workers, "group": 1,
                "collapse_at": None, "collapse_to": None}

    def summary(self) -> dict[str, Any]:
        """A JSON-able description of the plan."""
        widths = self.model.widths()
        return {"workers": self.workers, "ops": len(self.model.nodes),
                "inputs": dict(self.model.inputs),
                "outputs": {name: widths[name] for name in self.model.outputs},
                "partitioner": self.partitioner, **self.parallelism(), "edges": 0,
                "shard_bytes": [sum(len(memoryview(p).cast("B")) for p in self.model_parts())]
                * self.workers}

    def model_parts(self) -> Parts:
        """The parts of the staged model object (one, shared by every worker)."""
        return pack_parts({"version": MODEL_OBJECTS_VERSION, "model": self.model.to_dict()})


def compile_model(model: Model, workers: int, strategy: str = "data") -> ModelPlan:
    """The plan of ``model`` on ``workers`` workers (data parallel; ``"auto"`` picks it)."""
    if not isinstance(model, Model):
        raise ConfigError(f"compile_model: expected a Model, got {type(model).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if strategy not in ("data", "auto"):
        raise ConfigError(f"strategy {strategy!r}: an op-level model runs data parallel "
                          f"(strategy 'data' or 'auto'); model and hybrid split layer chains "
                          f"(fsdgraph.sequential)")
    if not model.outputs:
        raise GraphError("model has no output: declare them with output()")
    local = sorted({n.op.kind for n in model.nodes.values() if in_process_only(n.op.kind)})
    if local:
        raise ConfigError(f"op {local[0]!r} is registered in this process only: workers run in "
                          f"other processes and find ops by entry point (group fsdgraph.ops); "
                          f"publish it there to run the model distributed")
    return ModelPlan(model, int(workers))


def _read(what: str, key: str, parts: Sequence[bytes | memoryview]) -> dict[str, Any]:
    try:
        d = unpack_parts(parts)
    except ProtocolError as exc:
        raise ProtocolError(f"object {key}: {exc}") from exc
    if not isinstance(d, dict) or d.get("version") != MODEL_OBJECTS_VERSION:
        got = d.get("version") if isinstance(d, dict) else type(d).__name__
        raise ProtocolError(f"object {key}: {what} version {got!r} is not "
                            f"{MODEL_OBJECTS_VERSION}, the version this fsdgraph reads")
    return d


def read_model(key: str, parts: Sequence[bytes | memoryview]) -> Model:
    """The model staged at ``key``; ProtocolError naming the key if it is not a valid one."""
    try:
        return Model.from_dict(_read("model", key, parts).get("model", {}))
    except (GraphError, ConfigError, TypeError, ValueError) as exc:
        raise ProtocolError(f"object {key}: not a valid model: {exc}") from exc


def input_parts(rows: tuple[int, int], inputs: Mapping[str, np.ndarray]) -> Parts:
    """The parts of a worker's input object: its rows of every model input."""
    return pack_parts({"version": MODEL_OBJECTS_VERSION, "rows": list(rows),
                       "inputs": dict(inputs)})


def read_inputs(key: str, parts: Sequence[bytes | memoryview],
                model: Model) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
    """The rows and input arrays of the input object ``key``, checked against ``model``."""
    d = _read("input", key, parts)
    rows, inputs = d.get("rows"), d.get("inputs")
    if (not isinstance(rows, list) or len(rows) != 2 or not all(isinstance(r, int) for r in rows)
            or not 0 <= rows[0] <= rows[1] or not isinstance(inputs, dict)):
        raise ProtocolError(f"object {key}: malformed model input")
    for name, features in model.inputs.items():
        x = inputs.get(name)
        if not isinstance(x, np.ndarray) or x.shape != (rows[1] - rows[0], features):
            raise ProtocolError(f"object {key}: input {name!r} is not {rows[1] - rows[0]} x "
                                f"{features}")
    return (rows[0], rows[1]), inputs


def output_parts(rows: tuple[int, int], outputs: Mapping[str, np.ndarray],
                 metrics: dict[str, Any]) -> Parts:
    """The parts of a worker's output object: its rows of every model output, its metrics."""
    return pack_parts({"version": MODEL_OBJECTS_VERSION, "rows": list(rows),
                       "outputs": dict(outputs), "metrics": metrics})


def read_outputs(key: str, parts: Sequence[bytes | memoryview], rows: tuple[int, int],
                 widths: Mapping[str, int]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The output arrays and metrics of the output object ``key``, which must hold ``rows`` of
    every output of ``widths``."""
    d = _read("output", key, parts)
    outputs, metrics = d.get("outputs"), d.get("metrics")
    if d.get("rows") != list(rows) or not isinstance(outputs, dict) \
            or not isinstance(metrics, dict):
        raise ProtocolError(f"object {key}: malformed model output (expected rows {list(rows)})")
    for name, width in widths.items():
        y = outputs.get(name)
        if not isinstance(y, np.ndarray) or y.shape != (rows[1] - rows[0], width) \
                or y.dtype != np.float32:
            raise ProtocolError(f"object {key}: output {name!r} is not {rows[1] - rows[0]} x "
                                f"{width} float32")
    return outputs, metrics
