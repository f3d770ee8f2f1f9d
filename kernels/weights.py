"""A worker's weight shard in the layouts its kernels read, prepared once per shard.

Every layer product reads the shard one of two ways: by input neuron (``csr``: a sparse input
row scatters the weight rows of its nonzeros) or by output neuron (``transposed``: a dense
output row gathers its inputs). A worker builds them once per shard it loads, not per product
(the by-output layout when a layer first needs it), with
sorted ids (the canonical summation order), as scipy matrices for the fallback kernel and as
the raw arrays the compiled kernel takes (``by_input``, ``by_output``: int64 pointers, int32 ids,
float32 values), so no product converts anything.

>>> import numpy as np, scipy.sparse as sp
>>> w = WeightRows(sp.csr_matrix(np.array([[0, 2], [3, 0]], np.float32)))
>>> w.shape, w.transposed.toarray().tolist()
((2, 2), [[0.0, 3.0], [2.0, 0.0]])
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp

#: A CSR matrix as the compiled kernels take it: (indptr int64, indices int32, data float32).
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def canonical_csr(matrix: sp.spmatrix) -> sp.csr_matrix:
    """``matrix`` as float32 CSR with sorted ids and no duplicates."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sum_duplicates()  # also sorts
    return csr


def kernel_arrays(csr: sp.csr_matrix) -> Arrays:
    """The raw arrays of a CSR matrix in the compiled kernels' types (copies only if needed)."""
    return (csr.indptr.astype(np.int64, copy=False), csr.indices.astype(np.int32, copy=False),
            csr.data.astype(np.float32, copy=False))


class WeightRows:
    """A weight shard (inputs x outputs), kept in both layouts the products need."""

    def __init__(self, csr: sp.spmatrix) -> None:
        self.csr = canonical_csr(csr)
        self.by_input = kernel_arrays(self.csr)

    # The by-output layout only for a layer whose inputs turn out dense, built once then.
    @cached_property
    def transposed(self) -> sp.csr_matrix:
        """W^T (outputs x inputs): for dense inputs, ``W^T @ dense_t``."""
        return canonical_csr(self.csr.T)

    @cached_property
    def by_output(self) -> Arrays:
        """W^T as the compiled kernels take it (only they read it), transposed by them."""
        from fsdgraph.kernels.fused import transpose

        return transpose(*self.by_input, self.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.csr.shape[0]), int(self.csr.shape[1]))
