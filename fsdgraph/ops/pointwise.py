"""Element-wise ops: each output value from the values at the same place of the inputs, so they
split by rows and by features alike.

>>> import numpy as np
>>> x = np.array([[-1.0, 0.5, 40.0]], np.float32)
>>> CappedRelu(32.0).apply(x)
array([[ 0. ,  0.5, 32. ]], dtype=float32)
>>> Add().apply(x, x)
array([[-2.,  1., 80.]], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from fsdgraph.errors import GraphError
from fsdgraph.ops import Block, Op, as_block, positive, same_widths


@dataclass(frozen=True, eq=False)
class Add(Op):
    """The sum of two or more inputs of equal width (a residual connection)."""

    kind = "add"
    arity = None

    def width(self, widths: Sequence[int]) -> int:
        return same_widths(self.kind, widths)

    def apply(self, *xs: Block) -> Block:
        out = as_block(xs[0]).copy()
        for x in xs[1:]:
            out += as_block(x)
        return out


@dataclass(frozen=True, eq=False)
class Relu(Op):
    """``max(x, 0)``."""

    kind = "relu"

    def apply(self, *xs: Block) -> Block:
        return as_block(np.maximum(as_block(xs[0]), np.float32(0)))


@dataclass(frozen=True, eq=False)
class CappedRelu(Op):
    """``min(max(x, 0), cap)`` (the Graph Challenge activation, cap 32)."""

    kind = "capped_relu"
    cap: float = 32.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cap", positive(self.kind, "cap", self.cap))

    def apply(self, *xs: Block) -> Block:
        return as_block(np.clip(as_block(xs[0]), np.float32(0), np.float32(self.cap)))


@dataclass(frozen=True, eq=False)
class Gelu(Op):
    """``x * Phi(x)`` with the exact normal CDF (``approximate="none"``) or its tanh form
    (``"tanh"``), as ONNX's Gelu."""

    kind = "gelu"
    approximate: str = "none"

    def __post_init__(self) -> None:
        if self.approximate not in ("none", "tanh"):
            raise GraphError(f"{self.kind}: approximate must be 'none' or 'tanh', got "
                             f"{self.approximate!r}")

    def apply(self, *xs: Block) -> Block:
        x = as_block(xs[0]).astype(np.float64)
        if self.approximate == "tanh":
            y = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        else:
            y = 0.5 * x * (1 + erf(x / math.sqrt(2)))
        return as_block(y)


@dataclass(frozen=True, eq=False)
class Sigmoid(Op):
    """``1 / (1 + exp(-x))``."""

    kind = "sigmoid"

    def apply(self, *xs: Block) -> Block:
        x = as_block(xs[0]).astype(np.float64)
        return as_block(0.5 * (1 + np.tanh(0.5 * x)))  # no overflow for large |x|


@dataclass(frozen=True, eq=False)
class Tanh(Op):
    """``tanh(x)``."""

    kind = "tanh"

    def apply(self, *xs: Block) -> Block:
        return as_block(np.tanh(as_block(xs[0])))
