"""A worker's slice of activations: only the live rows, stored the way that is cheapest.

In the Graph Challenge networks most rows die within a few layers and the survivors become dense
(saturated at the cap). A :class:`Block` therefore keeps the sorted global ids of the rows that have
any nonzero (``rows``) and their values for a set of columns, either as a dense float32 array or as
CSR, chosen by measured density (:data:`DENSE_ABOVE`), never by habit.

>>> import numpy as np
>>> b = Block.from_dense(np.array([2, 5]), np.array([[0, 1], [3, 0]], np.float32))
>>> b.nnz, b.is_dense
(2, True)
>>> b.select_columns(np.array([0])).rows
array([5], dtype=int32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import scipy.sparse as sp

#: Store a block dense when more than this fraction of its cells is nonzero. Dense cells cost 4
#: bytes, CSR entries 8 (value + column), and dense products run several times faster per cell.
DENSE_ABOVE = 0.4

Values = Union[np.ndarray, sp.csr_matrix]


@dataclass(frozen=True)
class Block:
    """Rows ``rows`` (sorted global row ids, int32) of a (batch x ncols) activation matrix."""

    rows: np.ndarray
    values: Values

    @property
    def ncols(self) -> int:
        return int(self.values.shape[1])

    @property
    def is_dense(self) -> bool:
        return isinstance(self.values, np.ndarray)

    @property
    def nnz(self) -> int:
        if isinstance(self.values, np.ndarray):
            return int(np.count_nonzero(self.values))
        return int(self.values.nnz)

    @property
    def density(self) -> float:
        cells = len(self.rows) * self.ncols
        return self.nnz / cells if cells else 0.0

    @staticmethod
    def empty(ncols: int) -> Block:
        return Block(np.zeros(0, np.int32), np.zeros((0, ncols), np.float32))

    @staticmethod
    def from_dense(rows: np.ndarray, values: np.ndarray) -> Block:
        """Drop all-zero rows, then store dense or CSR by density."""
        values = np.asarray(values, dtype=np.float32)
        alive = values.any(axis=1)
        if not alive.all():
            rows, values = rows[alive], values[alive]
        block = Block(np.asarray(rows, dtype=np.int32), values)
        return block if block.density > DENSE_ABOVE else block.as_csr()

    @staticmethod
    def from_csr(rows: np.ndarray, values: sp.spmatrix) -> Block:
        """Drop all-zero rows, then store dense or CSR by density."""
        csr = sp.csr_matrix(values, dtype=np.float32)
        csr.eliminate_zeros()
        alive = np.diff(csr.indptr) > 0
        if not alive.all():
            rows, csr = rows[alive], csr[alive]
        block = Block(np.asarray(rows, dtype=np.int32), csr)
        return block.as_dense() if block.density > DENSE_ABOVE else block

    @staticmethod
    def from_matrix(matrix: sp.spmatrix | np.ndarray) -> Block:
        """A whole (batch x ncols) matrix as a block of its live rows."""
        if sp.issparse(matrix):
            csr = sp.csr_matrix(matrix, dtype=np.float32)
            return Block.from_csr(np.arange(csr.shape[0], dtype=np.int32), csr)
        dense = np.asarray(matrix, dtype=np.float32)
        return Block.from_dense(np.arange(dense.shape[0], dtype=np.int32), dense)

    def as_dense(self) -> Block:
        if isinstance(self.values, np.ndarray):
            return self
        return Block(self.rows, self.values.toarray())

    def as_csr(self) -> Block:
        if isinstance(self.values, np.ndarray):
            return Block(self.rows, sp.csr_matrix(self.values))
        return self

    def select_columns(self, columns: np.ndarray) -> Block:
        """The block restricted to ``columns`` (local indices), without rows that became empty."""
        if isinstance(self.values, np.ndarray):
            return Block.from_dense(self.rows, self.values[:, columns])
        return Block.from_csr(self.rows, self.values[:, columns])

    def to_matrix(self, batch: int) -> sp.csr_matrix:
        """The full (batch x ncols) CSR matrix."""
        csr = sp.csr_matrix(self.values, dtype=np.float32)
        counts = np.zeros(batch, dtype=np.int64)
        counts[self.rows] = np.diff(csr.indptr)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return sp.csr_matrix((csr.data, csr.indices, indptr), shape=(batch, self.ncols))
