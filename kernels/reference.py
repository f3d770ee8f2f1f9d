"""The serial reference: the plain Graph Challenge loop, one sparse product per layer.

It is deliberately the textbook algorithm (``Y = Y @ W``; bias on the product's nonzeros; ReLU;
cap; drop zeros), with no dead-row or density tricks, so that it is easy to trust. Distributed
results are compared with it; ``--compare-serial`` times it.

>>> import numpy as np, scipy.sparse as sp
>>> from fsdgraph.graph import Layer
>>> w = sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32))
>>> layer = Layer(w, np.array([-0.5, -0.5], np.float32), True, True, 32.0)
>>> reference_inference(sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)), [layer]).toarray()
array([[0.5, 0. ],
       [0. , 0. ]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from fsdgraph.graph import Layer


def apply_layer(y: sp.csr_matrix, layer: Layer) -> sp.csr_matrix:
    """One layer of the reference: ``h(y @ W + b)``, bias only on nonzeros if asked."""
    z = (y @ layer.weight).tocsr()
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


def reference_inference(y0: sp.spmatrix, layers: Sequence[Layer]) -> sp.csr_matrix:
    """Run every layer serially; returns the final activations (batch x out) as float32 CSR."""
    y = sp.csr_matrix(y0, dtype=np.float32)
    for layer in layers:
        y = apply_layer(y, layer)
    return y


def categories(y: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Graph Challenge categories: the 0-based ids of rows with any nonzero activation."""
    if sp.issparse(y):
        return np.flatnonzero(np.diff(sp.csr_matrix(y).indptr) > 0).astype(np.int64)
    return np.flatnonzero(np.any(np.asarray(y) != 0, axis=1)).astype(np.int64)
