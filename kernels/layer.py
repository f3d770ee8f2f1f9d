"""One worker's share of a layer, computed piece by piece as inputs arrive.

A worker owning output columns ``O`` of a layer receives its input columns in pieces (its own
previous outputs, then each peer's rows as they come off the channel). Each piece goes into an
:class:`Accumulator` with the matching rows of the weight shard as it arrives, so computing
overlaps receiving. :meth:`Accumulator.finish` applies the fused
epilogue: bias where the sum is nonzero (the Graph Challenge rule), ReLU, cap, and drops the rows
that died. Rows never touched by any piece cost nothing.

>>> import numpy as np, scipy.sparse as sp
>>> acc = Accumulator(batch=4, width=2)
>>> piece = Block.from_dense(np.array([1, 3]), np.array([[1, 0], [2, 2]], np.float32))
>>> acc.add(piece, sp.csr_matrix(np.eye(2, dtype=np.float32)))
>>> out = acc.finish(np.full(2, -1.5, np.float32), bias_on_nonzero=True, relu=True, cap=32.0)
>>> out.rows, out.to_csr().toarray()
(array([3], dtype=int32), array([[0.5, 0.5]], dtype=float32))
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fsdgraph.kernels.block import Block

#: Multiply sparse x sparse below this input density; above it, dense x sparse is faster
#: (measured on the 1024-neuron Graph Challenge layers: see docs/benchmarks.md).
SPARSE_PRODUCT_BELOW = 0.4


class WeightRows:
    """Rows of a weight shard (k x width), kept in both layouts the products need."""

    def __init__(self, csr: sp.csr_matrix) -> None:
        self.csr = sp.csr_matrix(csr, dtype=np.float32)
        self.transposed = self.csr.T.tocsr()  # for dense inputs: W^T @ dense_t

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.csr.shape[0]), int(self.csr.shape[1]))

    def slice(self, lo: int, hi: int) -> WeightRows:
        return WeightRows(self.csr[lo:hi])


def dense_product_t(piece: Block, weight: WeightRows) -> np.ndarray:
    """``(piece @ weight)^T`` as a (width x rows) array, for a dense or sparse piece."""
    values_t = piece.as_dense().dense_t
    assert values_t is not None
    return np.asarray(weight.transposed @ values_t)


class Accumulator:
    """Sums the products of input pieces with their weight rows: one layer of one worker.

    Dense pieces are multiplied as they arrive (their products are dense anyway). Sparse pieces
    are kept and multiplied together at :meth:`finish` as one horizontally stacked CSR product,
    which is exactly the serial reference's cost divided among the workers (adding many sparse
    partial products would merge the same rows again and again). The dense sum is feature-major
    (width x rows) and covers only the rows some piece touched, never the whole batch.
    """

    def __init__(self, batch: int, width: int) -> None:
        self.batch = batch
        self.width = width
        self._sparse: list[tuple[sp.csr_matrix, sp.csr_matrix]] = []
        self._dense: list[tuple[np.ndarray, np.ndarray]] = []
        self._all_rows = False

    def touch_all(self) -> None:
        """Treat every row as present (a dense bias reaches rows with no input)."""
        self._all_rows = True

    def add(self, piece: Block, weight: WeightRows | sp.csr_matrix) -> None:
        """Add ``piece @ weight`` (``weight``: the shard's rows for the piece's columns)."""
        if len(piece.rows) == 0:
            return
        w = weight if isinstance(weight, WeightRows) else WeightRows(weight)
        if piece.csr is not None and piece.density < SPARSE_PRODUCT_BELOW:
            self._sparse.append((piece.to_matrix(self.batch), w.csr))
        else:
            self._dense.append((piece.rows, dense_product_t(piece, w)))

    def _sparse_sum(self) -> sp.csr_matrix | None:
        if not self._sparse:
            return None
        if len(self._sparse) == 1:
            x, w = self._sparse[0]
        else:
            x = sp.hstack([p for p, _ in self._sparse], format="csr")
            w = sp.vstack([w for _, w in self._sparse], format="csr")
        return sp.csr_matrix(x @ w)

    def _dense_sum(self, z: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        parts = [rows for rows, _ in self._dense]
        if z is not None:
            parts.append(np.flatnonzero(np.diff(z.indptr)).astype(np.int32))
        if self._all_rows:
            rows = np.arange(self.batch, dtype=np.int32)
        elif len(parts) == 1 or all(np.array_equal(parts[0], p) for p in parts[1:]):
            rows = parts[0]  # the common case once rows are dense: every piece has the same rows
        else:
            rows = np.unique(np.concatenate(parts)).astype(np.int32)
        d = np.zeros((self.width, len(rows)), dtype=np.float32)
        for r, partial_t in self._dense:
            if len(r) == len(rows):
                d += partial_t
            else:
                d[:, np.searchsorted(rows, r)] += partial_t
        if z is not None:
            coo = z.tocoo()
            d[coo.col, np.searchsorted(rows, coo.row)] += coo.data
        return rows, d

    def finish(
        self, bias: np.ndarray, *, bias_on_nonzero: bool, relu: bool, cap: float | None
    ) -> Block:
        """Apply bias / ReLU / cap to the summed rows; return the live rows as a Block."""
        z = self._sparse_sum()
        if not self._dense and not self._all_rows and bias_on_nonzero:
            if z is None:
                return Block.empty(self.width)
            z.eliminate_zeros()  # bias goes only where the sum is nonzero
            z.data += bias[z.indices]
            _clip(z.data, relu, cap)
            return Block.from_csr(np.arange(self.batch, dtype=np.int32), z)
        rows, d = self._dense_sum(z)
        b = bias[:, None]
        if bias_on_nonzero:
            d += np.where(d != 0, b, np.float32(0))
        else:
            d += b
        _clip(d, relu, cap)
        return Block.from_dense_t(rows, d)


def _clip(values: np.ndarray, relu: bool, cap: float | None) -> None:
    if relu:
        np.maximum(values, 0, out=values)
    if cap is not None:
        np.minimum(values, np.float32(cap), out=values)
