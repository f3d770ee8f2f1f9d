"""Matrix products and bias: the ops that hold most of a model's weights.

A product's weight is ``(in x out)``, dense (numpy) or sparse (scipy); it may be split by its
output features (a worker holds columns and needs all its input features) or by its input
features (a worker holds rows and produces partial sums of every output, which are added).

>>> import numpy as np
>>> x = np.ones((2, 3), np.float32)
>>> Gemm(np.eye(3, 2, dtype=np.float32), np.array([1, 2], np.float32)).apply(x)
array([[2., 3.],
       [2., 3.]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import GraphError
from fsdgraph.ops import Block, Op, as_block


def _matrix(weight: Any, kind: str) -> Any:
    """``weight`` as float32 CSR (sparse) or a C-contiguous float32 array (dense), 2-D, finite."""
    w = weight.tocsr().astype(np.float32) if sp.issparse(weight) else np.asarray(weight)
    if w.ndim != 2 or 0 in w.shape:
        raise GraphError(f"{kind}: the weight must be a non-empty 2-D matrix (in x out), "
                         f"got shape {w.shape}")
    values = np.asarray(w.data if sp.issparse(w) else w)
    if not np.issubdtype(values.dtype, np.number):
        raise GraphError(f"{kind}: the weight must be numeric, got {values.dtype}")
    if not sp.issparse(w):
        w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(w.data if sp.issparse(w) else w).all():
        raise GraphError(f"{kind}: the weight has NaN or infinite values (after float32)")
    return w


def _vector(bias: Any, width: int, kind: str) -> np.ndarray:
    b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if b.shape != (width,) or not np.isfinite(b).all():
        raise GraphError(f"{kind}: the bias must be {width} finite values, got shape "
                         f"{np.shape(bias)}")
    return b


def product(x: Block, weight: Any) -> Block:
    """``x @ weight`` in float32. BLAS may sum a row in another order depending on how many
    rows it is given (its kernels treat a block's tail rows apart), so a slice of rows agrees
    with the whole batch to float32 rounding, not always bit for bit."""
    return as_block(as_block(x) @ weight)


@dataclass(frozen=True, eq=False)
class MatMul(Op):
    """``x @ weight``."""

    kind = "matmul"
    splits: ClassVar[tuple[str, ...]] = ("rows", "features", "reduce")
    weight: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _matrix(self.weight, self.kind))

    def width(self, widths: Sequence[int]) -> int:
        if widths[0] != self.weight.shape[0]:
            raise GraphError(f"{self.kind}: the weight takes {self.weight.shape[0]} input "
                             f"features, the input gives {widths[0]}")
        return int(self.weight.shape[1])

    def apply(self, *xs: Block) -> Block:
        return product(xs[0], self.weight)


@dataclass(frozen=True, eq=False)
class Gemm(MatMul):
    """``x @ weight + bias``."""

    kind = "gemm"
    #: Not "reduce": split by input features, the bias must be added once, after the sum.
    splits: ClassVar[tuple[str, ...]] = ("rows", "features")
    bias: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        width = self.weight.shape[1]
        bias = np.zeros(width, np.float32) if self.bias is None else self.bias
        object.__setattr__(self, "bias", _vector(bias, width, self.kind))

    def apply(self, *xs: Block) -> Block:
        return as_block(product(xs[0], self.weight) + self.bias)


@dataclass(frozen=True, eq=False)
class BiasAdd(Op):
    """``x + bias``; with ``on_nonzero`` only where ``x`` is nonzero (the Graph Challenge rule,
    which keeps a dead row dead)."""

    kind = "bias_add"
    bias: Any
    on_nonzero: bool = False

    def __post_init__(self) -> None:
        b = np.ascontiguousarray(self.bias, dtype=np.float32).reshape(-1)
        object.__setattr__(self, "bias", _vector(b, len(b), self.kind))

    def width(self, widths: Sequence[int]) -> int:
        if widths[0] != len(self.bias):
            raise GraphError(f"{self.kind}: the bias has {len(self.bias)} values, the input "
                             f"gives {widths[0]} features")
        return widths[0]

    def apply(self, *xs: Block) -> Block:
        x = as_block(xs[0])
        return np.where(x != 0, x + self.bias, x) if self.on_nonzero else x + self.bias
