"""RadiX-Net sparse DNNs: the synthetic networks of the Graph Challenge sparse-DNN benchmark.

Why generate instead of download: the official 4096/16384/65536-neuron networks are gigabytes of
TSV; the construction is fully described by a few integers, and a worker can rebuild exactly the
layers it owns (``radixnet_layer`` gives random access to one layer) instead of reading them.

Construction (checked against the official ``n1024-l{1..120}.tsv.gz``), with ``N`` neurons,
core size ``n = N / 16`` and ``m = log2(n)`` layers per block:

- base layers ``B_k = kron(ones(16, 16), I + S^(2^(k-1))) / 16`` for ``k = 1..m``, where ``S`` is
  the cyclic shift with ``S[(j + 1) % n, j] = 1``; so core row ``i`` has its two nonzeros in
  columns ``i`` and ``i - 2^(k-1)`` (mod ``n``) and the official file starts ``1 1``, ``2 1``,
  ``65 1``;
- layer ``l`` (1-based) is in block ``b = (l - 1) // m`` and uses ``k = (l - 1) % m + 1``;
- block 0 is the base layers themselves (the official layers 1-6 equal ``B_1..B_6`` exactly);
- every later block draws one random permutation ``p`` of the ``N`` rows (input neurons) and all
  its layers are ``W = B_k[p, :]`` (``P @ B_k``); the columns are never permuted. The official
  files show exactly this: in layers 7-120 the columns keep the ``j mod n`` structure, the rows
  of the six layers of a block share one permutation, and ``P B P^T`` does not fit.

Every weight is ``1/16`` and every row and column holds 32 nonzeros. The permutations come from
``numpy.random.default_rng((seed, block))``, so they cannot match the official (MATLAB) ones; the
official network's 1200-image truth (19 categories) is nevertheless reproduced by every seed
tried: the rows that survive block 0 are already (almost) dense, so which permutation mixes them
hardly matters. Permuting rows and columns (``P B P^T``) instead changes the categories.

>>> layers = radixnet(1024, 12, seed=7)
>>> len(layers), layers[0].shape, layers[0].nnz, float(layers[0].data[0])
(12, (1024, 1024), 32768, 0.0625)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fsdgraph.errors import InputError

__all__ = ["block_permutation", "layers_per_block", "radixnet", "radixnet_layer"]

#: The kron factor of every RadiX-Net layer: 16 x 16 copies of the core, so 32 nonzeros per row.
FANOUT_COPIES = 16
#: Every weight of the Graph Challenge networks.
WEIGHT = np.float32(1.0 / FANOUT_COPIES)


def layers_per_block(neurons: int) -> int:
    """Return ``log2(neurons / 16)``, the number of base layers in one block.

    Raises InputError unless ``neurons`` is 16 times a power of two >= 2 (32, 64, ..., 1024, ...).

    >>> [layers_per_block(n) for n in (1024, 4096, 16384, 65536)]
    [6, 8, 10, 12]
    """
    if isinstance(neurons, bool) or not isinstance(neurons, (int, np.integer)):
        raise InputError(f"neurons must be an integer, got {neurons!r}")
    core = int(neurons) // FANOUT_COPIES
    if int(neurons) % FANOUT_COPIES or core < 2 or core & (core - 1):
        raise InputError(
            f"neurons must be 16 times a power of two >= 2 (e.g. 1024, 4096, 16384, 65536), "
            f"got {neurons}"
        )
    return core.bit_length() - 1


def block_permutation(neurons: int, block: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """Return the row permutation of ``block`` (0-based): identity for block 0, else random.

    Seeded by ``(seed, block)`` so that any block can be rebuilt without drawing the earlier ones.
    """
    layers_per_block(neurons)
    _check_seed(seed)
    if block == 0:
        return np.arange(neurons, dtype=np.int64)
    rng = np.random.default_rng((int(seed), int(block)))
    return rng.permutation(neurons).astype(np.int64)


def radixnet_layer(neurons: int, layer: int, seed: int = 0) -> sp.csr_matrix:
    """Return layer ``layer`` (1-based) of ``radixnet(neurons, ..., seed)`` as float32 CSR."""
    per_block = layers_per_block(neurons)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 1:
        raise InputError(f"layer must be an integer >= 1, got {layer!r}")
    block, k = divmod(int(layer) - 1, per_block)
    return _base_rows(neurons, k + 1, block_permutation(neurons, block, seed))


def radixnet(neurons: int, layers: int, seed: int = 0) -> list[sp.csr_matrix]:
    """Return the ``layers`` float32 CSR weight matrices (in x out) of a RadiX-Net.

    ``radixnet(1024, 120)`` has the official network's layers 1-6 exactly and the same structure
    everywhere else (see the module docstring); ``seed`` picks the permutations of blocks >= 1.
    """
    layers_per_block(neurons)
    if isinstance(layers, bool) or not isinstance(layers, (int, np.integer)) or layers < 1:
        raise InputError(f"layers must be an integer >= 1, got {layers!r}")
    _check_seed(seed)
    return [radixnet_layer(neurons, layer, seed) for layer in range(1, int(layers) + 1)]


def _check_seed(seed: int) -> None:
    """Reject seeds numpy's SeedSequence would refuse, with a message that says why."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")


def _base_rows(neurons: int, k: int, rows: npt.NDArray[np.int64]) -> sp.csr_matrix:
    """Return ``B_k[rows, :]`` built directly (no kron, no fancy indexing: O(nnz))."""
    core = neurons // FANOUT_COPIES
    shift = 1 << (k - 1)
    c = rows % core
    pair = np.stack([c, (c - shift) % core], axis=1)  # (N, 2): the two core columns of each row
    copies = core * np.arange(FANOUT_COPIES, dtype=np.int64)
    cols = (pair[:, None, :] + copies[None, :, None]).reshape(neurons, 2 * FANOUT_COPIES)
    cols.sort(axis=1)
    nnz_per_row = 2 * FANOUT_COPIES
    indptr = np.arange(0, neurons * nnz_per_row + 1, nnz_per_row, dtype=np.int64)
    data = np.full(neurons * nnz_per_row, WEIGHT, dtype=np.float32)
    index_dtype = np.int32 if neurons * nnz_per_row < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (data, cols.ravel().astype(index_dtype), indptr.astype(index_dtype)),
        shape=(neurons, neurons),
    )
    matrix.has_sorted_indices = True
    return matrix
