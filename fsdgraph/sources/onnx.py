"""Import an ONNX model as an op-level :class:`~fsdgraph.model.Model`.

:func:`from_onnx` reads a ``.onnx`` file (or an ``onnx.ModelProto``) and maps each ONNX node to
a registered op (:mod:`fsdgraph.ops`), its weights (the graph's initializers) becoming the op's
params as float32 arrays. Every value of the graph must be a 2-D batch, ``[batch, features]``,
as the ops compute on blocks of rows: the graph inputs (those not given by an initializer) each
need a known feature count, and the ops below are accepted only in forms that keep that layout.

====================  ===========  ========================================================
ONNX op               fsdgraph op  accepted form
====================  ===========  ========================================================
MatMul                matmul       activation @ 2-D weight initializer
Gemm                  gemm         ``alpha``, ``beta``, ``transB``; bias C an initializer
                                   broadcasting to one row; ``transA=1`` refused
Add                   bias_add     activation + initializer broadcasting to one row
Add                   add          two activations of equal width
Relu, Sigmoid, Tanh   same name
Gelu                  gelu         opset 20 (``approximate``) or ``com.microsoft``
LayerNormalization    layer_norm   last axis; scale and bias initializers; ``epsilon``
Softmax               softmax      last axis
Concat                concat       feature axis (one input: identity)
Identity, Flatten     identity     on a 2-D batch (Flatten with axis 1)
Reshape               identity     to the same 2-D batch: ``[-1, F]``, ``[0, F]``, ``[0, -1]``
Cast                  identity     to FLOAT
Constant              (none)       read as an initializer
====================  ===========  ========================================================

Identity, Cast, Reshape and Flatten of initializers are folded into new initializers. Nodes that
no selected graph output depends on are skipped (``outputs=`` selects some of the graph's
outputs, e.g. a classifier's probabilities without its label path). Anything else raises a
:class:`~fsdgraph.errors.GraphError` naming the ONNX node (its name, or its index when unnamed,
and its op type) and what is not supported.

The file is only parsed (``onnx.load``); nothing in it is run. ``onnx`` is an optional
dependency, imported when :func:`from_onnx` is called: ``pip install 'fsdgraph[onnx]'``.
Usage::

    from fsdgraph.sources.onnx import from_onnx

    model = from_onnx("mlp.onnx", outputs=["probabilities"])
    probabilities = model.evaluate({"input": x})["probabilities"]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fsdgraph.errors import ConfigError, GraphError
from fsdgraph.model import Model

if TYPE_CHECKING:
    import onnx

#: ONNX's element type numbers (``onnx.TensorProto.DataType``), fixed by the format; kept here
#: so that reading them does not need onnx.
_FLOAT = 1
#: The element types a graph input may have: numbers and booleans (a Cast to FLOAT turns them
#: into float32, which is what fsdgraph computes in).
_NUMERIC = {
    1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BFLOAT16",
}

#: The supported ops of the default domain, as error messages list them.
SUPPORTED = ("Add", "Cast", "Concat", "Constant", "Flatten", "Gelu", "Gemm", "Identity",
             "LayerNormalization", "MatMul", "Relu", "Reshape", "Sigmoid", "Softmax", "Tanh")
#: Ops of other domains, as ``domain.op_type``.
SUPPORTED_CUSTOM = ("com.microsoft.Gelu",)


def from_onnx(source: str | os.PathLike[str] | onnx.ModelProto, *,
              outputs: Sequence[str] | None = None) -> Model:
    """The :class:`~fsdgraph.model.Model` of an ONNX model: ``source`` is a path to a ``.onnx``
    file or an ``onnx.ModelProto``.

    The model's inputs are the graph inputs that no initializer gives, by name; its outputs the
    graph's outputs (or those named in ``outputs``, in that order), by name; its nodes are named
    after the ONNX values they compute. A GraphError says what cannot be imported (see the
    module docstring); a ConfigError, that onnx is not installed.
    """
    onnx = _import_onnx()
    proto = _load(onnx, source)
    return _Importer(onnx, proto.graph).run(outputs)


def _import_onnx() -> Any:
    try:
        import onnx
        import onnx.external_data_helper
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as exc:
        raise ConfigError("importing ONNX models needs the onnx package: "
                          "pip install 'fsdgraph[onnx]'") from exc
    return onnx


def _load(onnx: Any, source: object) -> Any:
    if isinstance(source, onnx.ModelProto):
        proto = source
        where = "the ONNX model"
    elif isinstance(source, (str, os.PathLike)):
        from google.protobuf.message import DecodeError  # onnx's own dependency

        where = os.fspath(source)
        try:
            proto = onnx.load(where)
        except FileNotFoundError:
            raise GraphError(f"{where}: file not found") from None
        except OSError as exc:
            raise GraphError(f"{where}: cannot read: {exc.strerror or exc}") from None
        except DecodeError as exc:
            raise GraphError(f"{where}: not an ONNX model ({exc})") from None
        except Exception as exc:  # onnx's own: an external data file outside the model's folder
            raise GraphError(f"{where}: cannot load the ONNX model ({type(exc).__name__}: "
                             f"{exc})") from None
    else:
        raise TypeError(f"from_onnx: expected a path to a .onnx file or an onnx.ModelProto, got "
                        f"{type(source).__name__}")
    if not proto.HasField("graph"):
        raise GraphError(f"{where}: not an ONNX model (no graph)")
    return proto


@dataclass(frozen=True)
class _Node:
    """One ONNX node as its handler sees it: how errors name it, its inputs and attributes."""

    where: str
    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any]

    def error(self, message: str) -> GraphError:
        return GraphError(f"{self.where}: {message}")


class _Importer:
    """The state of one import: the model being built and what is known of each ONNX value."""

    def __init__(self, onnx: Any, graph: Any) -> None:
        self.onnx = onnx
        self.graph = graph
        self.model = Model()
        #: Features and element type of each activation (graph input or node output).
        self.widths: dict[str, int] = {}
        self.dtypes: dict[str, int] = {}
        #: Initializers, Constant nodes' values and what was folded from them.
        self.consts: dict[str, np.ndarray] = {}
        self.sparse = {t.values.name for t in graph.sparse_initializer}

    def run(self, outputs: Sequence[str] | None) -> Model:
        graph = self.graph
        for tensor in graph.initializer:
            self.consts[tensor.name] = self._array(tensor, f"initializer {tensor.name!r}")
        for value in graph.input:
            if value.name not in self.consts:
                self._input(value)
        if not self.model.inputs:
            raise GraphError("the ONNX graph has no input other than initializers")
        names = [value.name for value in graph.output]
        chosen = list(names if outputs is None else outputs)
        for name in chosen:
            if name not in names:
                raise GraphError(f"outputs: {name!r} is not an output of the ONNX graph; its "
                                 f"outputs: {', '.join(names)}")
        if not chosen:
            raise GraphError("outputs: no output selected")
        hint = (f"; to import only some of the graph's outputs ({', '.join(names)}), pass "
                f"outputs=[...]" if outputs is None and len(names) > 1 else "")
        needed, used = self._needed(chosen)
        for index, node in enumerate(graph.node):
            if index in needed:
                self._node(index, node, used, hint)
        for name in chosen:
            if name in self.consts:
                raise GraphError(f"graph output {name!r} is a constant (an initializer); "
                                 f"fsdgraph computes outputs from the inputs only")
            if name not in self.widths:
                raise GraphError(f"graph output {name!r} is not a graph input or a node's "
                                 f"output")
            if self.dtypes[name] != _FLOAT:
                raise GraphError(f"graph output {name!r} is {_type_name(self.dtypes[name])}; "
                                 f"fsdgraph computes in float32 only")
            self.model.output(name)
        return self.model

    # -- graph ------------------------------------------------------------------------------

    def _input(self, value: Any) -> None:
        name = value.name
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise GraphError(f"graph input {name!r}: must be a tensor, got {kind or 'no type'}")
        tensor = value.type.tensor_type
        if tensor.elem_type not in _NUMERIC:
            raise GraphError(f"graph input {name!r}: element type "
                             f"{_type_name(tensor.elem_type)} is not numeric")
        dims = list(tensor.shape.dim) if tensor.HasField("shape") else None
        if dims is None or len(dims) != 2 or dims[1].WhichOneof("value") != "dim_value" \
                or dims[1].dim_value < 1:
            shape = ("unknown" if dims is None else
                     "[" + ", ".join(_dim_text(d) for d in dims) + "]")
            raise GraphError(f"graph input {name!r}: must be 2-D [batch, features] with a known "
                             f"feature count, got shape {shape}")
        self.model.input(name, int(dims[1].dim_value))
        self.widths[name] = int(dims[1].dim_value)
        self.dtypes[name] = tensor.elem_type

    def _needed(self, chosen: Sequence[str]) -> tuple[set[int], set[str]]:
        """The indices of the nodes the chosen outputs depend on, and the values those nodes
        and outputs read."""
        producer: dict[str, int] = {}
        for index, node in enumerate(self.graph.node):
            for out in node.output:
                if out:
                    producer.setdefault(out, index)
        needed: set[int] = set()
        used = set(chosen)
        todo = [producer[name] for name in chosen if name in producer]
        while todo:
            index = todo.pop()
            if index in needed:
                continue
            needed.add(index)
            for name in self.graph.node[index].input:
                used.add(name)
                if name in producer and name not in self.consts:
                    todo.append(producer[name])
        return needed, used

    def _node(self, index: int, proto: Any, used: set[str], hint: str) -> None:
        domain = "" if proto.domain in ("", "ai.onnx") else proto.domain
        op = f"{domain}.{proto.op_type}" if domain else proto.op_type
        where = f"ONNX node {proto.name!r} ({op})" if proto.name \
            else f"ONNX node #{index} ({op})"
        handler = _HANDLERS.get(op)
        if handler is None:
            raise GraphError(f"{where}: unsupported op; supported: "
                             f"{', '.join(SUPPORTED + SUPPORTED_CUSTOM)}{hint}")
        if not proto.output or not proto.output[0]:
            raise GraphError(f"{where}: no output")
        for extra in proto.output[1:]:
            if extra and extra in used:
                raise GraphError(f"{where}: only its first output is supported, and "
                                 f"{extra!r} is used")
        attrs = {a.name: self._attribute(a, where) for a in proto.attribute}
        handler(self, _Node(where, op, tuple(proto.input), proto.output[0], attrs))

    def _attribute(self, attribute: Any, where: str) -> Any:
        value = self.onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, self.onnx.TensorProto):
            return self._array(value, f"{where}: attribute {attribute.name!r}")
        return value

    def _array(self, tensor: Any, what: str) -> np.ndarray:
        # An initializer still pointing at an external file (a ModelProto loaded without its
        # data) is refused rather than read: the file name comes from the model.
        if self.onnx.external_data_helper.uses_external_data(tensor):
            raise GraphError(f"{what}: its data is in an external file; load the model with "
                             f"onnx.load(path), which reads it, or pass the path")
        return np.asarray(self.onnx.numpy_helper.to_array(tensor))

    # -- values -----------------------------------------------------------------------------

    def activation(self, node: _Node, name: str, *, any_type: bool = False) -> str:
        """``name``, checked to be a float activation (graph input or earlier node's output)."""
        if name in self.consts:
            raise node.error(f"input {name!r} is an initializer (a constant); it must be "
                             f"computed from the graph inputs")
        if name not in self.widths:
            raise node.error(f"input {name!r} is not a graph input, an initializer or an "
                             f"earlier node's output")
        if not any_type and self.dtypes[name] != _FLOAT:
            raise node.error(f"input {name!r} is {_type_name(self.dtypes[name])}; fsdgraph "
                             f"computes in float32: cast it to FLOAT first")
        return name

    def const(self, node: _Node, name: str, what: str) -> np.ndarray:
        """The constant value ``name`` (an initializer or a Constant node's output)."""
        if name in self.consts:
            return self.consts[name]
        if name in self.widths:
            raise node.error(f"{what} {name!r} must be an initializer, but it is computed by "
                             f"the graph")
        if name in self.sparse:
            raise node.error(f"{what} {name!r} is a sparse initializer, which is not supported")
        raise node.error(f"{what} {name!r}: no initializer of that name")

    def weights(self, node: _Node, name: str, what: str) -> np.ndarray:
        """The constant ``name`` as float32 numbers."""
        value = self.const(node, name, what)
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise node.error(f"{what} {name!r} must be numeric, got {value.dtype}")
        return np.ascontiguousarray(value, dtype=np.float32)

    def row(self, node: _Node, name: str, width: int, what: str) -> np.ndarray:
        """The constant ``name`` as ``width`` values, broadcasting like ONNX over a 2-D batch:
        a single value, a vector or a one-row matrix."""
        value = self.weights(node, name, what)
        if value.size == 1:
            return np.full(width, value.reshape(-1)[0], np.float32)
        if value.ndim > 2 or value.shape[-1] != width or value.size != width:
            raise node.error(f"{what} {name!r} must broadcast to one row of {width} values, got "
                             f"shape {list(value.shape)}")
        return value.reshape(-1)

    def emit(self, node: _Node, kind: str, *inputs: str, dtype: int = _FLOAT,
             **attrs: Any) -> None:
        """Add the fsdgraph node ``kind`` computing ``node``'s output; the model's own checks
        (widths, attributes) come back as errors naming the ONNX node."""
        try:
            self.model.add(kind, *inputs, name=node.output, **attrs)
        except GraphError as exc:
            raise node.error(str(exc).removeprefix(f"node {node.output!r}: ")) from None
        op = self.model.nodes[node.output].op
        self.widths[node.output] = op.width([self.widths[name] for name in inputs])
        self.dtypes[node.output] = dtype

    def fold(self, node: _Node, value: np.ndarray) -> None:
        """``node``'s output is the constant ``value``."""
        if node.output in self.consts or node.output in self.widths:
            raise node.error(f"output {node.output!r}: the name is taken")
        self.consts[node.output] = value


# -- handlers: one per supported op, each given the importer and the node ---------------------


def _arity(node: _Node, low: int, high: int | None = None) -> list[str]:
    """The node's inputs, with optional ones left out as ``""`` (ONNX's way of omitting)."""
    inputs = list(node.inputs)
    high = low if high is None else high
    if not low <= len(inputs) <= high or any(not name for name in inputs[:low]):
        count = str(low) if low == high else f"{low} to {high}"
        raise node.error(f"takes {count} input(s), got {len(inputs)}")
    return inputs + [""] * (high - len(inputs))


def _feature_axis(node: _Node, name: str, default: int | None) -> None:
    """Refuse an axis other than the last of a 2-D batch (1 or -1)."""
    axis = node.attrs.get(name, default)
    if axis not in (1, -1):
        raise node.error(f"{name}={axis} is not supported: only the feature axis (1 or -1) of "
                         f"a 2-D batch")


def _product(im: _Importer, node: _Node, a: str, b: str,
             layout: str = " (in x out)") -> tuple[str, np.ndarray]:
    """The activation ``a`` and the 2-D weight initializer ``b`` of a product."""
    x = im.activation(node, a)
    if b in im.widths:
        raise node.error(f"a product of two activations ({a!r} @ {b!r}) is not supported: the "
                         f"second input must be a weight initializer")
    weight = im.weights(node, b, "weight")
    if weight.ndim != 2:
        raise node.error(f"weight {b!r} must be 2-D{layout}, got shape {list(weight.shape)}")
    return x, weight


def _matmul(im: _Importer, node: _Node) -> None:
    a, b = _arity(node, 2)
    x, weight = _product(im, node, a, b)
    im.emit(node, "matmul", x, weight=weight)


def _gemm(im: _Importer, node: _Node) -> None:
    a, b, c = _arity(node, 2, 3)
    if node.attrs.get("transA", 0):
        raise node.error("transA=1 is not supported: the first input must be the activation, "
                         "[batch, features]")
    x, weight = _product(im, node, a, b, layout="")  # (out x in) with transB
    if node.attrs.get("transB", 0):
        weight = np.ascontiguousarray(weight.T)
    # Scaling the weight rather than the product: the same values up to float32 rounding (and
    # no copy of a large weight for the usual alpha of 1).
    alpha = np.float32(node.attrs.get("alpha", 1.0))
    if alpha != 1:
        weight = weight * alpha
    bias = None
    if c:
        bias = im.row(node, c, weight.shape[1], "bias") * np.float32(node.attrs.get("beta", 1.0))
    im.emit(node, "gemm", x, weight=weight, bias=bias)


def _add(im: _Importer, node: _Node) -> None:
    a, b = _arity(node, 2)
    if a in im.consts and b in im.consts:
        raise node.error(f"both inputs ({a!r}, {b!r}) are initializers: a constant sum is not "
                         f"supported")
    if a in im.consts or b in im.consts:
        x, c = (b, a) if a in im.consts else (a, b)
        x = im.activation(node, x)
        im.emit(node, "bias_add", x, bias=im.row(node, c, im.widths[x], "initializer"))
    else:
        im.emit(node, "add", im.activation(node, a), im.activation(node, b))


def _unary(kind: str, **attrs: Any) -> Callable[[_Importer, _Node], None]:
    def handler(im: _Importer, node: _Node) -> None:
        (a,) = _arity(node, 1)
        im.emit(node, kind, im.activation(node, a), **attrs)
    return handler


def _gelu(im: _Importer, node: _Node) -> None:
    (a,) = _arity(node, 1)
    im.emit(node, "gelu", im.activation(node, a), approximate=node.attrs.get("approximate",
                                                                             "none"))


def _layer_norm(im: _Importer, node: _Node) -> None:
    a, scale, bias = _arity(node, 2, 3)
    _feature_axis(node, "axis", -1)
    x = im.activation(node, a)
    width = im.widths[x]
    im.emit(node, "layer_norm", x, scale=im.row(node, scale, width, "scale"),
            bias=im.row(node, bias, width, "bias") if bias else None,
            epsilon=float(node.attrs.get("epsilon", 1e-5)))


def _softmax(im: _Importer, node: _Node) -> None:
    (a,) = _arity(node, 1)
    # Opsets before 13 default to axis 1 (and flatten from it), 13 on to -1: on a 2-D batch
    # both are the feature axis.
    _feature_axis(node, "axis", -1)
    im.emit(node, "softmax", im.activation(node, a))


def _concat(im: _Importer, node: _Node) -> None:
    if not node.inputs:
        raise node.error("takes one or more inputs, got 0")
    if "axis" not in node.attrs:
        raise node.error("the axis attribute is required")
    _feature_axis(node, "axis", None)
    xs = [im.activation(node, name) for name in node.inputs]
    if len(xs) == 1:
        im.emit(node, "identity", xs[0])
    else:
        im.emit(node, "concat", *xs)


def _identity(im: _Importer, node: _Node) -> None:
    (a,) = _arity(node, 1)
    if a in im.consts:
        im.fold(node, im.consts[a])
    else:
        x = im.activation(node, a, any_type=True)
        im.emit(node, "identity", x, dtype=im.dtypes[x])


def _cast(im: _Importer, node: _Node) -> None:
    (a,) = _arity(node, 1)
    to = node.attrs.get("to")
    if to != _FLOAT:
        raise node.error(f"a cast to {_type_name(to)} is not supported: only to FLOAT")
    if a in im.consts:
        im.fold(node, im.weights(node, a, "input"))
    else:
        im.emit(node, "identity", im.activation(node, a, any_type=True))


def _flatten(im: _Importer, node: _Node) -> None:
    (a,) = _arity(node, 1)
    axis = node.attrs.get("axis", 1)
    if a in im.consts:
        value = im.consts[a]
        axis = axis + value.ndim if axis < 0 else axis
        im.fold(node, value.reshape(int(np.prod(value.shape[:axis])), -1))
        return
    if axis not in (1, -1):
        raise node.error(f"axis={axis} is not supported: on a 2-D batch only axis 1 (or -1) "
                         f"keeps [batch, features]")
    x = im.activation(node, a, any_type=True)
    im.emit(node, "identity", x, dtype=im.dtypes[x])


def _reshape(im: _Importer, node: _Node) -> None:
    a, s = _arity(node, 2)
    shape = im.const(node, s, "shape")
    if not np.issubdtype(shape.dtype, np.integer) or shape.ndim != 1:
        raise node.error(f"shape {s!r} must be a vector of integers, got {shape.dtype} of shape "
                         f"{list(shape.shape)}")
    target = [int(d) for d in shape]
    allowzero = bool(node.attrs.get("allowzero", 0))
    if a in im.consts:
        value = im.consts[a]
        if not allowzero:  # 0 copies the input's size on that axis
            target = [value.shape[i] if d == 0 and i < value.ndim else d
                      for i, d in enumerate(target)]
        try:
            im.fold(node, value.reshape(target))
        except ValueError:
            raise node.error(f"cannot reshape {a!r} of shape {list(value.shape)} to "
                             f"{target}") from None
        return
    x = im.activation(node, a, any_type=True)
    width = im.widths[x]
    batch_kept = len(target) == 2 and (target[0] == -1 or (target[0] == 0 and not allowzero))
    features_kept = len(target) == 2 and (
        target[1] == width or (target[1] == 0 and not allowzero)
        or (target[1] == -1 and target[0] != -1))
    if not (batch_kept and features_kept):
        raise node.error(f"a reshape of [batch, {width}] to {target} is not supported: only "
                         f"to the same 2-D batch, [-1, {width}] or [0, {width}]")
    im.emit(node, "identity", x, dtype=im.dtypes[x])


def _constant(im: _Importer, node: _Node) -> None:
    _arity(node, 0)
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            im.fold(node, np.asarray(node.attrs[key]))
            return
    raise node.error(f"only a value, value_float(s) or value_int(s) attribute is supported, "
                     f"got {', '.join(node.attrs) or 'none'}")


_HANDLERS: dict[str, Callable[[_Importer, _Node], None]] = {
    "Add": _add,
    "Cast": _cast,
    "Concat": _concat,
    "Constant": _constant,
    "Flatten": _flatten,
    "Gelu": _gelu,
    "Gemm": _gemm,
    "Identity": _identity,
    "LayerNormalization": _layer_norm,
    "MatMul": _matmul,
    "Relu": _unary("relu"),
    "Reshape": _reshape,
    "Sigmoid": _unary("sigmoid"),
    "Softmax": _softmax,
    "Tanh": _unary("tanh"),
    # com.microsoft's Gelu is the exact (erf) form; the tanh one is its FastGelu.
    "com.microsoft.Gelu": _unary("gelu", approximate="none"),
}


def _type_name(elem_type: object) -> str:
    known = {**_NUMERIC, 0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128"}
    return known.get(elem_type, f"type {elem_type}") if isinstance(elem_type, int) \
        else repr(elem_type)


def _dim_text(dim: Any) -> str:
    which = dim.WhichOneof("value")
    return str(dim.dim_value) if which == "dim_value" else (dim.dim_param or "?")


__all__ = ["SUPPORTED", "SUPPORTED_CUSTOM", "from_onnx"]
