"""Row-wise ops: each output row from its whole input row. They split by rows; split by
features, a worker needs its row's statistics from every share (a small reduction).

>>> import numpy as np
>>> Softmax().apply(np.log(np.array([[1.0, 3.0]], np.float32)))
array([[0.25, 0.75]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fsdgraph.errors import GraphError
from fsdgraph.ops import Block, Op, as_block, positive


@dataclass(frozen=True, eq=False)
class LayerNorm(Op):
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` over each row's features (ONNX's
    LayerNormalization on the last axis)."""

    kind = "layer_norm"
    splits: ClassVar[tuple[str, ...]] = ("rows",)
    scale: Any
    bias: Any = None
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        scale = np.ascontiguousarray(self.scale, dtype=np.float32).reshape(-1)
        bias = (np.zeros_like(scale) if self.bias is None
                else np.ascontiguousarray(self.bias, dtype=np.float32).reshape(-1))
        if bias.shape != scale.shape or not (np.isfinite(scale).all() and np.isfinite(bias).all()):
            raise GraphError(f"{self.kind}: scale and bias must be finite vectors of one width, "
                             f"got {scale.shape} and {bias.shape}")
        object.__setattr__(self, "epsilon", positive(self.kind, "epsilon", self.epsilon))
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "bias", bias)

    def width(self, widths: Sequence[int]) -> int:
        if widths[0] != len(self.scale):
            raise GraphError(f"{self.kind}: scale has {len(self.scale)} values, the input gives "
                             f"{widths[0]} features")
        return widths[0]

    def apply(self, *xs: Block) -> Block:
        x = as_block(xs[0]).astype(np.float64)
        mean = x.mean(axis=1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
        return as_block((x - mean) / np.sqrt(var + self.epsilon) * self.scale + self.bias)


@dataclass(frozen=True, eq=False)
class Softmax(Op):
    """``exp(x) / sum(exp(x))`` over each row."""

    kind = "softmax"
    splits: ClassVar[tuple[str, ...]] = ("rows",)

    def apply(self, *xs: Block) -> Block:
        x = as_block(xs[0]).astype(np.float64)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return as_block(e / e.sum(axis=1, keepdims=True))
