"""The serial reference: the plain Graph Challenge loop, one sparse product per layer.

It is deliberately the textbook algorithm (``Y = Y @ W``; bias on the product's nonzeros; ReLU;
cap; drop zeros), with no dead-row or density tricks, so that it is easy to trust; the only
addition is canonical (sorted) CSR, which fixes the summation order. Distributed
results are compared with it; ``--compare-serial`` times it.

>>> import numpy as np, scipy.sparse as sp
>>> from fsdgraph.graph import Layer
>>> w = sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32))
>>> layer = Layer(w, np.array([-0.5, -0.5], np.float32), True, True, 32.0)
>>> y0 = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32))
>>> reference_inference(y0, [layer]).toarray()
array([[0.5, 0. ],
       [0. , 0. ]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from fsdgraph.graph import Layer


def apply_layer(y: sp.csr_matrix, layer: Layer, canonical: bool = True) -> sp.csr_matrix:
    """One layer of the reference: ``h(y @ W + b)``, bias only on nonzeros if asked."""
    z = (y @ layer.weight).tocsr()
    if canonical:
        # scipy leaves the product's column ids in first-encounter order, so the next layer
        # would sum its inputs in an arbitrary order; sorted ids make the order canonical
        # (ascending input neuron), the one every worker reproduces: bit-identical results.
        z.sort_indices()
    if layer.bias_on_nonzero:
        # scipy's product keeps only numerically nonzero entries, so these are the nonzeros.
        z.data += layer.bias[z.indices]
    else:
        z = sp.csr_matrix(z.toarray() + layer.bias[None, :])
    if layer.relu:
        np.maximum(z.data, 0, out=z.data)
    if layer.cap is not None:
        np.minimum(z.data, np.float32(layer.cap), out=z.data)
    z.eliminate_zeros()
    return z


def reference_inference(
    y0: sp.spmatrix, layers: Sequence[Layer], canonical: bool = True
) -> sp.csr_matrix:
    """Run every layer serially; returns the final activations (batch x out) as float32 CSR.

    ``canonical=False`` skips sorting column ids: the fastest plain loop, used as the timing
    baseline; its values can differ from the canonical ones in the last bits (summation order).
    """
    y = sp.csr_matrix(y0, dtype=np.float32)
    if canonical:
        y.sort_indices()
    for layer in layers:
        y = apply_layer(y, layer, canonical)
    return y


def categories(y: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Graph Challenge categories: the 0-based ids of rows with any nonzero activation."""
    if sp.issparse(y):
        return np.flatnonzero(np.diff(sp.csr_matrix(y).indptr) > 0).astype(np.int64)
    return np.flatnonzero(np.any(np.asarray(y) != 0, axis=1)).astype(np.int64)
