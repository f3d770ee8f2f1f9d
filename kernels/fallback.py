"""The plain numpy/scipy layer kernel: always available, the fast kernel's fallback.

Same contract and bit-identical results as :mod:`fsdgraph.kernels.fused` (summing every output
over its inputs in ascending order in float32, as scipy's products do), built from scipy's
sparse products and numpy's element-wise operations: a few passes over the data where the fused
kernel makes one.

>>> import numpy as np, scipy.sparse as sp
>>> from fsdgraph.kernels.weights import WeightRows
>>> w = WeightRows(sp.csr_matrix(np.eye(2, dtype=np.float32)))
>>> x = sp.csr_matrix(np.array([[0, 0], [2, 1]], np.float32))
>>> out = ScipyKernel().sparse(x, w, np.full(2, -1.5, np.float32), relu=True, cap=None)
>>> out.rows, out.to_csr().toarray()
(array([1], dtype=int32), array([[0.5, 0. ]], dtype=float32))
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fsdgraph.kernels.block import Block
from fsdgraph.kernels.weights import WeightRows


class ScipyKernel:
    """The layer products through scipy: see the module docstring."""

    name = "scipy"
    threads = 1

    def sparse(self, x: sp.csr_matrix, weight: WeightRows, bias: np.ndarray, *, relu: bool,
               cap: float | None) -> Block:
        """``h(x @ W + b)``, bias on nonzeros, for a (batch x inputs) CSR ``x`` with sorted
        ids: the live rows of the result."""
        z = sorted_indices(sp.csr_matrix(x @ weight.csr))
        z.eliminate_zeros()  # bias goes only where the sum is nonzero
        z.data += bias[z.indices]
        clip(z.data, relu, cap)
        return Block.from_csr(np.arange(x.shape[0], dtype=np.int32), z)

    def dense(self, x_t: np.ndarray, rows: np.ndarray, weight: WeightRows, bias: np.ndarray, *,
              bias_on_nonzero: bool, relu: bool, cap: float | None) -> Block:
        """``h(W^T @ x_t + b)`` for a feature-major (inputs x rows) ``x_t`` whose columns are
        the rows ``rows``: the live rows of the result."""
        z_t = np.asarray(weight.transposed @ x_t)  # scipy's csr_matvecs
        if bias_on_nonzero:
            z_t += np.where(z_t != 0, bias[:, None], np.float32(0))
        else:
            z_t += bias[:, None]
        clip(z_t, relu, cap)
        return Block.from_dense_t(rows, z_t)


def sorted_indices(m: sp.csr_matrix) -> sp.csr_matrix:
    """``m`` with ascending column ids in every row. Two linear transpositions (counting sorts)
    beat scipy's per-row comparison sort several times over on products' outputs."""
    if m.has_sorted_indices:
        return m
    return m.tocsc().tocsr()


def clip(values: np.ndarray, relu: bool, cap: float | None) -> None:
    """ReLU and cap, in place."""
    if relu:
        np.maximum(values, 0, out=values)
    if cap is not None:
        np.minimum(values, np.float32(cap), out=values)
