"""Ops that only arrange features: concatenation and identity.

>>> import numpy as np
>>> Concat().apply(np.ones((1, 1), np.float32), np.zeros((1, 2), np.float32))
array([[1., 0., 0.]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fsdgraph.ops import Block, Op, as_block


@dataclass(frozen=True, eq=False)
class Concat(Op):
    """The inputs side by side, in order (on the feature axis)."""

    kind = "concat"
    arity = None

    def width(self, widths: Sequence[int]) -> int:
        return sum(widths)

    def apply(self, *xs: Block) -> Block:
        return np.ascontiguousarray(np.hstack([as_block(x) for x in xs]))


@dataclass(frozen=True, eq=False)
class Identity(Op):
    """Its input, unchanged (ONNX's Identity, Flatten and Reshape of a 2-D batch)."""

    kind = "identity"

    def apply(self, *xs: Block) -> Block:
        return as_block(xs[0])
