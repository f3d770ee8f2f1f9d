"""A worker's slice of activations: only the live rows, stored the way that is cheapest.

In the Graph Challenge networks most rows die within a few layers and the survivors become dense
(saturated at the cap). A :class:`Block` therefore keeps the sorted global ids of the rows that have
any nonzero (``rows``) and their values for a set of columns, chosen by measured density
(:data:`DENSE_ABOVE`), never by habit:

* sparse: ``csr``, a (rows x columns) CSR matrix;
* dense: ``dense_t``, a C-ordered (columns x rows) array — feature-major, because everything a
  worker does with dense activations works on whole columns: it sends a subset of its columns
  (a row gather here), and multiplies by the weight as ``W^T @ dense_t`` (scipy's ``csr_matvecs``
  wants exactly this operand, so no transpose is ever copied).

>>> import numpy as np
>>> b = Block.from_dense(np.array([2, 5]), np.array([[0, 1], [3, 0]], np.float32))
>>> b.nnz, b.is_dense
(2, True)
>>> b.select_columns(np.array([0])).rows
array([5], dtype=int32)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

#: The one density threshold of fsdgraph: a block with more than this fraction of its cells
#: nonzero is stored dense, the layer kernel multiplies inputs of at least this density dense
#: (:mod:`fsdgraph.kernels.layer`), and the codec sends a CSR block dense above it by default
#: (``fsdgraph.codec.BlockCodec``'s ``dense_above``). Why 0.4, as measured by bench/kernels.py on
#: the official Graph Challenge layers (docs/benchmarks.md): below it the CSR form is 2-5x smaller
#: on the wire and keeps memory proportional to the nonzeros; the dense product alone is faster
#: at every density, but the inputs arrive as CSR pieces and converting them to dense below 0.4
#: cost as much as the faster product saved, end to end.
DENSE_ABOVE = 0.4


def dense_to_csr(dense: np.ndarray) -> sp.csr_matrix:
    """A C-ordered 2-D array as CSR, several times faster than ``scipy.sparse.csr_matrix(dense)``
    (which goes through COO and a general ``nonzero``)."""
    mask = dense != 0
    flat = np.flatnonzero(mask)
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    columns = (flat % dense.shape[1]).astype(np.int32)
    return sp.csr_matrix((dense.ravel()[flat], columns, indptr), shape=dense.shape)


@dataclass(frozen=True)
class Block:
    """Rows ``rows`` (sorted global row ids, int32) of a (batch x ncols) activation matrix.

    Exactly one of ``csr`` (rows x ncols) and ``dense_t`` (ncols x rows) is set.
    """

    rows: np.ndarray
    csr: sp.csr_matrix | None = None
    dense_t: np.ndarray | None = None

    @property
    def ncols(self) -> int:
        if self.dense_t is not None:
            return int(self.dense_t.shape[0])
        assert self.csr is not None
        return int(self.csr.shape[1])

    @property
    def is_dense(self) -> bool:
        return self.dense_t is not None

    @cached_property
    def nnz(self) -> int:
        if self.dense_t is not None:
            return int(np.count_nonzero(self.dense_t))
        assert self.csr is not None
        return int(self.csr.nnz)

    @property
    def density(self) -> float:
        cells = len(self.rows) * self.ncols
        return self.nnz / cells if cells else 0.0

    @staticmethod
    def empty(ncols: int) -> Block:
        return Block(np.zeros(0, np.int32), csr=sp.csr_matrix((0, ncols), dtype=np.float32))

    @staticmethod
    def from_dense(rows: np.ndarray, values: np.ndarray) -> Block:
        """From a (rows x ncols) array: see :meth:`from_dense_t`."""
        return Block.from_dense_t(rows, np.ascontiguousarray(np.asarray(values, np.float32).T))

    @staticmethod
    def from_dense_t(rows: np.ndarray, values_t: np.ndarray,
                     row_nnz: np.ndarray | None = None) -> Block:
        """From a (ncols x rows) array: drop all-zero rows, then store by density.
        ``row_nnz``: each row's nonzero count, if the producer counted them already."""
        values_t = np.asarray(values_t, dtype=np.float32)
        alive = values_t.any(axis=0) if row_nnz is None else row_nnz > 0
        if not alive.all():
            rows, values_t = rows[alive], values_t[:, alive]
        block = Block(np.asarray(rows, dtype=np.int32), dense_t=np.ascontiguousarray(values_t))
        if row_nnz is not None:
            block.__dict__["nnz"] = int(row_nnz.sum())  # the cached property, known already
        return block if block.density > DENSE_ABOVE else block.as_csr()

    @staticmethod
    def from_csr(rows: np.ndarray, values: sp.spmatrix) -> Block:
        """From a (rows x ncols) sparse matrix: drop all-zero rows, then store by density."""
        csr = sp.csr_matrix(values, dtype=np.float32)
        csr.eliminate_zeros()
        alive = np.diff(csr.indptr) > 0
        if not alive.all():
            rows, csr = rows[alive], csr[alive]
        block = Block(np.asarray(rows, dtype=np.int32), csr=csr)
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
        if self.dense_t is not None:
            return self
        assert self.csr is not None
        return Block(self.rows, dense_t=np.ascontiguousarray(self.csr.T.toarray()))

    def as_csr(self) -> Block:
        if self.csr is not None:
            return self
        assert self.dense_t is not None
        return Block(self.rows, csr=dense_to_csr(self.dense_t).T.tocsr())

    def select_columns(self, columns: np.ndarray) -> Block:
        """The block restricted to ``columns`` (local indices), without rows that became empty.

        Asking for every column returns the block itself (no copy): a peer that needs all of a
        worker's outputs, common in well-mixed networks, costs nothing to prepare.
        """
        if len(columns) == self.ncols and np.array_equal(columns, np.arange(self.ncols)):
            return self
        if self.dense_t is not None:
            return Block.from_dense_t(self.rows, self.dense_t[columns])
        assert self.csr is not None
        return Block.from_csr(self.rows, self.csr[:, columns])

    def take_rows(self, index: np.ndarray | slice) -> Block:
        """The block restricted to some of its rows (positions, not global ids)."""
        if self.dense_t is not None:
            return Block(self.rows[index], dense_t=np.ascontiguousarray(self.dense_t[:, index]))
        assert self.csr is not None
        return Block(self.rows[index], csr=self.csr[index])

    def take_columns(self, lo: int, hi: int) -> Block:
        """Columns ``[lo, hi)`` as they are (rows kept even if they become empty)."""
        if self.dense_t is not None:
            return Block(self.rows, dense_t=self.dense_t[lo:hi])
        assert self.csr is not None
        return Block(self.rows, csr=self.csr[:, lo:hi])

    def to_csr(self) -> sp.csr_matrix:
        """The (rows x ncols) values as CSR."""
        csr = self.as_csr().csr
        assert csr is not None
        return csr

    def to_matrix(self, batch: int) -> sp.csr_matrix:
        """The full (batch x ncols) CSR matrix."""
        csr = self.to_csr()
        if len(self.rows) == batch:  # every row present: rows are 0..batch-1
            return csr
        counts = np.zeros(batch, dtype=np.int64)
        counts[self.rows] = np.diff(csr.indptr)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return sp.csr_matrix((csr.data, csr.indices, indptr), shape=(batch, self.ncols))
