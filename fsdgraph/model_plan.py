"""Plans of op-level models (:mod:`fsdgraph.model`) and the objects their runs stage and read.

Two strategies, both lowered to one instruction list per worker (:mod:`fsdgraph.model_lowering`):

* ``data``: every worker holds the whole model and computes a contiguous slice of the batch's
  rows (:meth:`ModelPlan.image_slices`); nothing is exchanged, and every op is exact row by row,
  so the outputs are the serial evaluator's, bit for bit;
* ``model`` (tensor parallel): every worker holds every row and a share of each op's features
  and weights, so a model larger than one function's memory runs; the collectives the split
  needs travel over the run's channel. Sums split over workers add in another order than the
  serial evaluator's: outputs agree to float32 rounding.

The objects, all sealed (:mod:`fsdgraph.sealed`) and raw-array packed
(:func:`fsdgraph.serialize.pack_parts`):

* ``runs/<run>/shard/<g>``: ``{"version", "program", "outputs", "widths"}``, the program of group
  position ``g`` (worker ``w`` reads ``w % group``), each instruction checked when read (an op is
  built through the op registry with its checks: never executed as code);
* ``runs/<run>/input/<r>``: ``{"version", "rows": [start, stop], "inputs": {name: rows x
  features float32}}``, the rows of replica ``r`` (worker ``w`` reads ``w // group``);
* ``runs/<run>/out/<w>``: ``{"version", "rows", "outputs": {name: array}, "cols": {name: [lo,
  hi]}, "metrics"}``: the features of the outputs this worker holds, for its rows.

>>> import numpy as np
>>> from fsdgraph.model import Model
>>> m = Model()
>>> m.output(m.add("relu", m.input("x", 3)))
>>> plan = compile_model(m, 2)
>>> plan.image_slices(5), plan.parallelism()["strategy"]
([(0, 2), (2, 5)], 'data')
>>> compile_model(m, 2, "model").image_slices(5)
[(0, 5)]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsdgraph.errors import ConfigError, GraphError, ProtocolError
from fsdgraph.model import Model
from fsdgraph.model_lowering import Collective, Instruction, Lowering, lower
from fsdgraph.ops import get_op, in_process_only, is_array
from fsdgraph.plan import row_slices
from fsdgraph.serialize import pack_parts, unpack_parts

#: Layout of the staged program, input and output objects of a model run.
MODEL_OBJECTS_VERSION = 2
#: The strategies of an op-level model (``auto``: data parallel, unless the weights do not fit
#: one worker's memory).
MODEL_STRATEGIES = ("data", "model", "auto")

Parts = list[bytes | memoryview]


@dataclass
class ModelPlan:
    """``model`` on ``workers`` workers: data or model (tensor) parallel."""

    model: Model
    workers: int
    strategy: str = "data"
    #: How the plan was chosen (the layer planner's field; None: asked for as it is).
    planned: dict[str, Any] | None = None
    lowering: Lowering = field(init=False)

    def __post_init__(self) -> None:
        self.lowering = lower(self.model, self.group)

    @property
    def group(self) -> int:
        """Workers sharing one copy of the model (all of them, tensor parallel)."""
        return self.workers if self.strategy == "model" else 1

    @property
    def replicas(self) -> int:
        return self.workers // self.group

    @property
    def partitioner(self) -> str:
        return "features" if self.strategy == "model" else "rows"

    @property
    def edges(self) -> list[Collective]:
        """The exchanges of a run (none, data parallel)."""
        return self.lowering.collectives

    @property
    def relaunchable(self) -> bool:
        """Whether a lost worker can be started again: a data-parallel one restarts from its
        input; a tensor-parallel one's peers would not send it their shares again."""
        return not self.edges

    @property
    def layers(self) -> int:
        """Progress is counted in instructions: a worker reports after each."""
        return len(self.lowering.programs[0])

    def image_slices(self, batch: int) -> list[tuple[int, int]]:
        """The rows ``[start, stop)`` each replica computes: near-equal contiguous runs."""
        return row_slices(batch, self.replicas)

    def parallelism(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "replicas": self.replicas, "group": self.group,
                "collapse_at": None, "collapse_to": None}

    def weight_bytes(self) -> list[int]:
        """Each group position's bytes of weights (what a worker holds of the model)."""
        return [sum(_nbytes(v) for i in program
                    for v in [*i.get("params", {}).values(), *i.values()] if is_array(v))
                for program in self.lowering.programs]

    def steps(self) -> list[str]:
        """What each instruction does (the report's ``per_layer`` entries, in order): ``op
        <kind> -> <key>`` or ``<collective> <value>``."""
        return [f"op {i['kind']} -> {i['out']}" if i["do"] == "op"
                else f"{i['do']} {i['src']} -> {i['out']}"
                for i in self.lowering.programs[0]]

    def summary(self) -> dict[str, Any]:
        """A JSON-able description of the plan."""
        widths = self.model.widths()
        kinds = [c.kind for c in self.edges]
        return {"workers": self.workers, "ops": len(self.model.nodes),
                "instructions": self.layers,
                "inputs": dict(self.model.inputs),
                "outputs": {name: widths[name] for name in self.model.outputs},
                "partitioner": self.partitioner, **self.parallelism(), "edges": len(self.edges),
                "collectives": {k: kinds.count(k) for k in sorted(set(kinds))},
                "weight_bytes": self.weight_bytes()}

    def program_parts(self, position: int) -> Parts:
        """The parts of group position ``position``'s staged program."""
        widths = self.model.widths()
        return pack_parts({"version": MODEL_OBJECTS_VERSION,
                           "program": self.lowering.programs[position],
                           "outputs": dict(self.lowering.outputs),
                           "inputs": dict(self.model.inputs),
                           "widths": {n: widths[n] for n in self.model.outputs}})


def _nbytes(value: Any) -> int:
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    return int(value.data.nbytes + value.indices.nbytes + value.indptr.nbytes)  # scipy CSR


def compile_model(model: Model, workers: int, strategy: str = "data",
                  memory_mb: float | None = None) -> ModelPlan:
    """The plan of ``model`` on ``workers`` workers, ``data`` or ``model`` (tensor) parallel;
    ``auto`` picks data parallel unless twice the model's weights exceed ``memory_mb``."""
    if not isinstance(model, Model):
        raise ConfigError(f"compile_model: expected a Model, got {type(model).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if strategy not in MODEL_STRATEGIES:
        raise ConfigError(f"strategy {strategy!r}: an op-level model runs 'data' parallel "
                          f"(rows split), 'model' parallel (features split) or 'auto'; hybrid "
                          f"splits layer chains (fsdgraph.sequential)")
    if not model.outputs:
        raise GraphError("model has no output: declare them with output()")
    local = sorted({n.op.kind for n in model.nodes.values() if in_process_only(n.op.kind)})
    if local:
        raise ConfigError(f"op {local[0]!r} is registered in this process only: workers run in "
                          f"other processes and find ops by entry point (group fsdgraph.ops); "
                          f"publish it there to run the model distributed")
    planned = None
    if strategy == "auto":
        whole = ModelPlan(model, 1).weight_bytes()[0]
        fits = memory_mb is None or 2 * whole <= memory_mb * 2**20
        strategy = "data" if fits or workers == 1 else "model"
        planned = {"strategy": strategy, "weight_bytes": whole, "memory_mb": memory_mb,
                   "why": "the weights fit one worker: rows split, nothing exchanged" if fits
                   else "the weights do not fit one worker: features split"}
    return ModelPlan(model, int(workers), strategy, planned)


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


#: What each instruction kind must carry: field -> expected type.
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "op": {"kind": str, "attrs": dict, "params": dict, "inputs": list, "out": str},
    "slice": {"src": str, "out": str, "cols": list},
    "all_gather": {"src": str, "out": str, "step": int, "bounds": list},
    "reduce_scatter": {"src": str, "out": str, "step": int, "bounds": list},
    "layer_norm": {"src": str, "out": str, "steps": list, "width": int, "scale": np.ndarray,
                   "bias": np.ndarray, "epsilon": float},
    "softmax": {"src": str, "out": str, "steps": list, "width": int},
}


def _ints(value: Any, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _shape_problem(instruction: Instruction) -> str:
    """What is wrong with an instruction's lists and optional fields ('' if nothing)."""
    do = instruction["do"]
    if do == "op" and not all(isinstance(s, str) for s in instruction["inputs"]):
        return "field 'inputs' must be a list of value keys"
    if do == "slice" and not (_ints(instruction["cols"], 2)
                              and instruction["cols"][0] <= instruction["cols"][1]):
        return "field 'cols' must be [lo, hi] with 0 <= lo <= hi"
    if do in ("all_gather", "reduce_scatter"):
        bounds = instruction["bounds"]
        if not bounds or not all(_ints(b, 2) for b in bounds) or bounds[0][0] != 0 or any(
                a[1] != b[0] for a, b in itertools.pairwise(bounds)) \
                or any(lo > hi for lo, hi in bounds):
            return "field 'bounds' must be contiguous [lo, hi] shares from 0"
        bias = instruction.get("bias")
        if do == "reduce_scatter" and bias is not None and not isinstance(bias, np.ndarray):
            return "field 'bias' must be an array or None"
    if do in ("layer_norm", "softmax") and not _ints(instruction["steps"], 2):
        return "field 'steps' must be two step numbers"
    return ""


@dataclass
class Program:
    """A worker's instructions as read back, each op built (and checked) by its registry."""

    instructions: list[Instruction]
    outputs: dict[str, str]  #: model output -> the key holding it
    widths: dict[str, int]  #: model output -> features
    inputs: dict[str, int]  #: model input -> features


def read_program(key: str, parts: Sequence[bytes | memoryview]) -> Program:
    """The program staged at ``key``; ProtocolError naming the key and the instruction if it
    is not a valid one."""
    d = _read("program", key, parts)
    program, outputs, widths, inputs = (d.get("program"), d.get("outputs"), d.get("widths"),
                                        d.get("inputs"))
    if not isinstance(program, list) or not isinstance(outputs, dict) \
            or not isinstance(widths, dict) or not isinstance(inputs, dict) \
            or not all(isinstance(v, int) and v > 0 for v in [*widths.values(), *inputs.values()]):
        raise ProtocolError(f"object {key}: malformed program")
    known = {f"{name}@full" for name in inputs}
    checked = []
    for i, instruction in enumerate(program):
        where = f"object {key}: instruction {i}"
        if not isinstance(instruction, dict) or instruction.get("do") not in _FIELDS:
            raise ProtocolError(f"{where}: expected one of {sorted(_FIELDS)}")
        for name, expected in _FIELDS[instruction["do"]].items():
            if not isinstance(instruction.get(name), expected):
                raise ProtocolError(f"{where}: field {name!r} is not a {expected}")
        problem = _shape_problem(instruction)
        if problem:
            raise ProtocolError(f"{where}: {problem}")
        sources = instruction["inputs"] if instruction["do"] == "op" else [instruction["src"]]
        unknown = [s for s in sources if s not in known]
        if unknown:
            raise ProtocolError(f"{where}: reads {unknown[0]!r} before any instruction makes it")
        if instruction["do"] == "op":
            try:
                op = get_op(instruction["kind"])(**instruction["attrs"], **instruction["params"])
            except (ConfigError, GraphError, TypeError, ValueError) as exc:
                raise ProtocolError(f"{where}: not a valid {instruction['kind']} op: "
                                    f"{exc}") from exc
            instruction = {**instruction, "op": op}
        known.add(instruction["out"])
        checked.append(instruction)
    missing = [k for k in outputs.values() if k not in known]
    if missing or set(outputs) != set(widths):
        raise ProtocolError(f"object {key}: the outputs are not all made by the program")
    return Program(checked, {str(k): str(v) for k, v in outputs.items()},
                   {str(k): int(v) for k, v in widths.items()},
                   {str(k): int(v) for k, v in inputs.items()})


def input_parts(rows: tuple[int, int], inputs: Mapping[str, np.ndarray]) -> Parts:
    """The parts of a worker's input object: its rows of every model input."""
    return pack_parts({"version": MODEL_OBJECTS_VERSION, "rows": list(rows),
                       "inputs": dict(inputs)})


def read_inputs(key: str, parts: Sequence[bytes | memoryview],
                features: Mapping[str, int]) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
    """The rows and input arrays of the input object ``key``, checked against the model's
    input ``features``."""
    d = _read("input", key, parts)
    rows, inputs = d.get("rows"), d.get("inputs")
    if (not isinstance(rows, list) or len(rows) != 2 or not all(isinstance(r, int) for r in rows)
            or not 0 <= rows[0] <= rows[1] or not isinstance(inputs, dict)):
        raise ProtocolError(f"object {key}: malformed model input")
    for name, width in features.items():
        x = inputs.get(name)
        if not isinstance(x, np.ndarray) or x.shape != (rows[1] - rows[0], width) \
                or x.dtype != np.float32:
            raise ProtocolError(f"object {key}: input {name!r} is not {rows[1] - rows[0]} x "
                                f"{width} float32")
    return (rows[0], rows[1]), inputs


def output_parts(rows: tuple[int, int], outputs: Mapping[str, np.ndarray],
                 cols: Mapping[str, tuple[int, int]], metrics: dict[str, Any]) -> Parts:
    """The parts of a worker's output object: its rows of the output features ``cols`` it
    holds, its metrics."""
    return pack_parts({"version": MODEL_OBJECTS_VERSION, "rows": list(rows),
                       "outputs": dict(outputs), "cols": {n: list(c) for n, c in cols.items()},
                       "metrics": metrics})


def read_outputs(key: str, parts: Sequence[bytes | memoryview], rows: tuple[int, int],
                 widths: Mapping[str, int]
                 ) -> tuple[dict[str, tuple[tuple[int, int], np.ndarray]], dict[str, Any]]:
    """The output pieces (name -> (columns, array)) and metrics of the output object ``key``,
    which must hold ``rows`` of outputs of ``widths``."""
    d = _read("output", key, parts)
    outputs, cols, metrics = d.get("outputs"), d.get("cols"), d.get("metrics")
    if d.get("rows") != list(rows) or not isinstance(outputs, dict) \
            or not isinstance(cols, dict) or not isinstance(metrics, dict) \
            or set(outputs) != set(cols) or not set(outputs) <= set(widths):
        raise ProtocolError(f"object {key}: malformed model output (expected rows {list(rows)} "
                            f"of outputs among {sorted(widths)})")
    pieces = {}
    for name, y in outputs.items():
        c = cols[name]
        if not (isinstance(c, list) and len(c) == 2 and all(isinstance(v, int) for v in c)
                and 0 <= c[0] <= c[1] <= widths[name]):
            raise ProtocolError(f"object {key}: output {name!r} columns {c!r} are not within "
                                f"[0, {widths[name]}]")
        if not isinstance(y, np.ndarray) or y.shape != (rows[1] - rows[0], c[1] - c[0]) \
                or y.dtype != np.float32:
            raise ProtocolError(f"object {key}: output {name!r} is not {rows[1] - rows[0]} x "
                                f"{c[1] - c[0]} float32")
        pieces[name] = ((c[0], c[1]), y)
    return pieces, metrics
