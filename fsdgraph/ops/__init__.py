"""Operations of a model graph (:mod:`fsdgraph.model`): what each computes on a batch of rows,
its weights, its output width, and how its work may be shared among workers.

An op is a small frozen dataclass (like a numcodecs codec): its array fields are its weights
(``params``), its other fields its attributes (``attrs``, JSON-able), and :meth:`Op.apply` maps
its input blocks (float32, rows x features) to its output block. ``splits`` declares the ways a
worker may hold a share of it:

* ``"rows"``: a slice of the batch (every op: a row's outputs never depend on another row);
* ``"features"``: a slice of its output features, from the same slice of its inputs
  (element-wise ops) or from all of them (a matrix product's columns);
* ``"reduce"``: a slice of its input features, giving partial sums that must be added (a matrix
  product's rows).

The built-ins live in ``linear`` (products, bias), ``pointwise`` (element-wise ops),
``normalize`` (row-wise ops) and ``shape``; the submodules are not named after
:func:`elementwise` and :func:`rowwise`, which an import of them would hide.

Ops are found by name: the built-ins below, then the entry-point group ``fsdgraph.ops`` (the
precedence rule of :mod:`fsdgraph.plugins`), then those registered in this process with
:func:`register`, :func:`elementwise` or :func:`rowwise`:

>>> import numpy as np
>>> softplus = elementwise("softplus", lambda x: np.log1p(np.exp(x)))
>>> get_op("softplus")().apply(np.zeros((1, 2), np.float32))
array([[0.6931472, 0.6931472]], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ConfigError, GraphError
from fsdgraph.plugins import Registry

Block = np.ndarray


@dataclass(frozen=True, eq=False)
class Op:
    """Base of every op; see the module docstring."""

    #: The op's registry name (``"matmul"``, ``"relu"``, ...).
    kind: ClassVar[str] = ""
    #: How many inputs it takes; None: two or more.
    arity: ClassVar[int | None] = 1
    splits: ClassVar[tuple[str, ...]] = ("rows", "features")

    def width(self, widths: Sequence[int]) -> int:
        """Its output features from its inputs' (a GraphError saying what does not fit)."""
        return widths[0]

    def apply(self, *xs: Block) -> Block:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Its weights: the fields holding arrays (numpy or scipy sparse)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if is_array(getattr(self, f.name))}

    def attrs(self) -> dict[str, Any]:
        """Its other fields, JSON-able."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not is_array(getattr(self, f.name))}


def is_array(value: object) -> bool:
    """Whether ``value`` is a weight array: numpy or scipy sparse."""
    return isinstance(value, np.ndarray) or sp.issparse(value)


def as_block(x: Any) -> Block:
    """A float32 C-contiguous 2-D array of ``x`` (dense)."""
    if sp.issparse(x):
        x = x.toarray()
    return np.ascontiguousarray(x, dtype=np.float32)


_BUILTIN = {
    "matmul": "fsdgraph.ops.linear:MatMul",
    "gemm": "fsdgraph.ops.linear:Gemm",
    "bias_add": "fsdgraph.ops.linear:BiasAdd",
    "add": "fsdgraph.ops.pointwise:Add",
    "relu": "fsdgraph.ops.pointwise:Relu",
    "capped_relu": "fsdgraph.ops.pointwise:CappedRelu",
    "gelu": "fsdgraph.ops.pointwise:Gelu",
    "sigmoid": "fsdgraph.ops.pointwise:Sigmoid",
    "tanh": "fsdgraph.ops.pointwise:Tanh",
    "layer_norm": "fsdgraph.ops.normalize:LayerNorm",
    "softmax": "fsdgraph.ops.normalize:Softmax",
    "concat": "fsdgraph.ops.shape:Concat",
    "identity": "fsdgraph.ops.shape:Identity",
}
_REGISTRY: Registry[Op] = Registry("fsdgraph.ops", Op, _BUILTIN)
#: Ops registered in this process (:func:`register`); the built-ins and entry points win.
_LOCAL: dict[str, type[Op]] = {}


def get_op(name: str) -> type[Op]:
    """The op class registered as ``name``; a ConfigError naming the known ones otherwise."""
    if name in _REGISTRY.names():
        return _REGISTRY.load(name)
    if name in _LOCAL:
        return _LOCAL[name]
    raise ConfigError(f"unknown op {name!r}; known: {', '.join(op_names())}")


def in_process_only(name: str) -> bool:
    """Whether op ``name`` was registered in this process only (:func:`register`), so that a
    worker, in another process, would not find it."""
    return name in _LOCAL and name not in _REGISTRY.names()


def op_names() -> list[str]:
    """Every known op name."""
    return sorted(set(_REGISTRY.names()) | set(_LOCAL))


def register(cls: type[Op]) -> type[Op]:
    """Register an :class:`Op` subclass under its ``kind`` in this process (a decorator). Such
    an op serves :meth:`fsdgraph.model.Model.evaluate`; for workers, which run in other
    processes, publish it as an entry point of the group ``fsdgraph.ops``."""
    if not (isinstance(cls, type) and issubclass(cls, Op)) or not cls.kind:
        raise ConfigError(f"register: {cls!r} is not an Op subclass with a kind")
    if cls.kind in _BUILTIN:
        raise ConfigError(f"register: {cls.kind!r} is a built-in op")
    _LOCAL[cls.kind] = cls
    return cls


def elementwise(name: str, fn: Callable[[Block], Block]) -> type[Op]:
    """Register ``fn``, applied to every value independently, as the one-input op ``name``: it
    splits by rows and by features."""
    body = {"kind": name, "apply": lambda self, x: as_block(fn(x))}
    return register(dataclass(frozen=True, eq=False)(type(f"Elementwise_{name}", (Op,), body)))


def rowwise(name: str, fn: Callable[[Block], Block]) -> type[Op]:
    """Register ``fn``, applied to each row as a whole (its output as wide as its input), as the
    one-input op ``name``: it splits by rows only."""
    body = {"kind": name, "splits": ("rows",), "apply": lambda self, x: as_block(fn(x))}
    return register(dataclass(frozen=True, eq=False)(type(f"Rowwise_{name}", (Op,), body)))


def positive(kind: str, name: str, value: object) -> float:
    """``value`` as a float if it is a positive finite real number (numpy's too, not a bool);
    a GraphError naming the attribute otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not 0 < float(value) < math.inf:
        raise GraphError(f"{kind}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def same_widths(kind: str, widths: Sequence[int]) -> int:
    """The common width of an element-wise op's inputs; a GraphError if they differ."""
    if len(set(widths)) != 1:
        raise GraphError(f"{kind} needs inputs of equal width, got {', '.join(map(str, widths))}")
    return widths[0]


__all__ = ["Block", "GraphError", "Op", "as_block", "elementwise", "get_op", "in_process_only",
           "is_array", "op_names", "positive", "register", "rowwise", "same_widths"]
