"""One worker's share of a layer, computed piece by piece as inputs arrive.

A worker owning output columns ``O`` of a layer receives its input columns in pieces (its own
previous outputs, then each peer's rows as they come off the channel). Each piece is multiplied by
the matching rows of the weight shard at once (:func:`partial_product`) and added into an
:class:`Accumulator`, so computing overlaps receiving. :meth:`Accumulator.finish` applies the fused
epilogue: bias where the sum is nonzero (the Graph Challenge rule), ReLU, cap, and drops the rows
that died. Rows never touched by any piece cost nothing.

>>> import numpy as np, scipy.sparse as sp
>>> acc = Accumulator(batch=4, width=2)
>>> piece = Block.from_dense(np.array([1, 3]), np.array([[1, 0], [2, 2]], np.float32))
>>> acc.add(piece.rows, partial_product(piece, sp.csr_matrix(np.eye(2, dtype=np.float32))))
>>> out = acc.finish(np.full(2, -1.5, np.float32), bias_on_nonzero=True, relu=True, cap=32.0)
>>> out.rows, out.values
(array([3], dtype=int32), array([[0.5, 0.5]], dtype=float32))
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fsdgraph.kernels.block import Block, Values

#: Multiply sparse x sparse below this input density; above it, dense x sparse is faster
#: (measured on the 1024-neuron Graph Challenge layers: see docs/benchmarks.md).
SPARSE_PRODUCT_BELOW = 0.08


class WeightRows:
    """Rows of a weight shard (k x width), kept in both layouts the products need."""

    def __init__(self, csr: sp.csr_matrix) -> None:
        self.csr = sp.csr_matrix(csr, dtype=np.float32)
        self.transposed = self.csr.T.tocsr()  # for dense inputs: (W^T @ Y^T)^T

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.csr.shape[0]), int(self.csr.shape[1]))


def partial_product(piece: Block, weight: WeightRows | sp.csr_matrix) -> Values:
    """``piece.values @ weight`` in the representation that is cheapest for the piece's density.

    ``weight`` holds the rows of the worker's weight shard for the piece's columns, in order.
    """
    w = weight if isinstance(weight, WeightRows) else WeightRows(weight)
    values = piece.values
    if isinstance(values, sp.csr_matrix) and piece.density < SPARSE_PRODUCT_BELOW:
        return (values @ w.csr).tocsr()
    dense = values if isinstance(values, np.ndarray) else values.toarray()
    if dense.shape[0] == 0:
        return np.zeros((0, w.shape[1]), np.float32)
    return np.ascontiguousarray((w.transposed @ dense.T).T)


class Accumulator:
    """Sums partial products into the (batch x width) pre-activation of one layer."""

    def __init__(self, batch: int, width: int) -> None:
        self.batch = batch
        self.width = width
        self._sum = np.zeros((batch, width), dtype=np.float32)
        self._touched = np.zeros(batch, dtype=bool)

    def touch_all(self) -> None:
        """Treat every row as present (a dense bias reaches rows with no input)."""
        self._touched[:] = True

    def add(self, rows: np.ndarray, partial: Values) -> None:
        """Add ``partial`` (len(rows) x width) into rows ``rows``."""
        if len(rows) == 0:
            return
        if isinstance(partial, np.ndarray):
            self._sum[rows] += partial
        else:
            csr = sp.csr_matrix(partial)
            nz_rows = np.repeat(rows, np.diff(csr.indptr))
            # A canonical CSR has no repeated (row, col), so fancy-index += is exact here.
            self._sum[nz_rows, csr.indices] += csr.data
        self._touched[rows] = True

    def finish(
        self, bias: np.ndarray, *, bias_on_nonzero: bool, relu: bool, cap: float | None
    ) -> Block:
        """Apply bias / ReLU / cap to the touched rows; return the live rows as a Block."""
        rows = np.flatnonzero(self._touched).astype(np.int32)
        z = self._sum[rows]
        if bias_on_nonzero:
            z += np.where(z != 0, bias[None, :], np.float32(0))
        else:
            z += bias[None, :]
        if relu:
            np.maximum(z, 0, out=z)
        if cap is not None:
            np.minimum(z, np.float32(cap), out=z)
        return Block.from_dense(rows, z)
