"""One worker's share of a layer: gather the input columns, one fused product, the epilogue.

A worker owning output columns ``O`` of a layer needs the input neurons ``I`` with a weight into
``O``; they arrive in pieces (its own previous outputs, then each peer's chunks).
:class:`LayerInputs` places every piece at its positions in ``I`` as it arrives and, once all
are in, multiplies the assembled inputs by the weight shard ``W[I, O]`` in one product, summing
over the input neurons in ascending order exactly as the serial reference does — so the
distributed result equals the serial one bit for bit, whatever the partition. The epilogue is
fused: bias where the sum is nonzero (the Graph Challenge rule), ReLU, cap, and the rows that
died are dropped.

The representation is chosen by the measured density of the assembled inputs: CSR x CSR below
:data:`~fsdgraph.kernels.block.DENSE_ABOVE` (the density threshold, and why it is 0.4, are
written once there), else a feature-major dense block times the transposed weight. Rows that no
piece carries cost nothing in either. The products themselves are a :class:`~fsdgraph.kernels.
choice.Kernel`: the compiled one when numba is installed, else scipy's (same results).

>>> import numpy as np, scipy.sparse as sp
>>> layer = LayerInputs(batch=4, weight=WeightRows(sp.csr_matrix(np.eye(2, dtype=np.float32))))
>>> layer.add(Block.from_dense(np.array([1, 3]), np.array([[1, 0], [2, 2]], np.float32)),
...           np.array([0, 1]))
>>> out = layer.finish(np.full(2, -1.5, np.float32), bias_on_nonzero=True, relu=True, cap=32.0)
>>> out.rows, out.to_csr().toarray()
(array([3], dtype=int32), array([[0.5, 0.5]], dtype=float32))
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from fsdgraph.graph import Layer
from fsdgraph.kernels.block import DENSE_ABOVE, Block
from fsdgraph.kernels.choice import Kernel, kernel_from_env
from fsdgraph.kernels.fallback import sorted_indices
from fsdgraph.kernels.weights import WeightRows


class LayerInputs:
    """The inputs of one layer of one worker, gathered piece by piece; see the module docstring."""

    def __init__(self, batch: int, weight: WeightRows, kernel: Kernel | None = None) -> None:
        self.batch = batch
        self.weight = weight
        self.kernel = kernel or kernel_from_env()
        # Pieces by the input positions they fill; several pieces for the same positions are row
        # chunks of one edge (disjoint rows).
        self._groups: dict[tuple[int, int, int], tuple[np.ndarray, list[Block]]] = {}
        self._all_rows = False

    def touch_all(self) -> None:
        """Keep every row, even one without inputs (a dense bias reaches it)."""
        self._all_rows = True

    def add(self, piece: Block, positions: np.ndarray) -> None:
        """Place ``piece``'s columns at input ``positions`` (one per column, in order)."""
        if len(positions) != piece.ncols:
            raise ValueError(f"{piece.ncols} columns but {len(positions)} positions")
        if len(piece.rows) == 0:
            return
        key = (int(positions[0]), int(positions[-1]), len(positions))
        self._groups.setdefault(key, (np.asarray(positions), []))[1].append(piece)

    def _merged(self) -> list[tuple[np.ndarray, Block]]:
        """One block per group, in input order (a contiguous partition then needs no sort):
        row chunks stacked in row order."""
        out = []
        for _, (positions, blocks) in sorted(self._groups.items()):
            if len(blocks) == 1:
                out.append((positions, blocks[0]))
                continue
            blocks = sorted(blocks, key=lambda b: int(b.rows[0]))
            rows = np.concatenate([b.rows for b in blocks])
            if np.any(np.diff(rows) <= 0):
                raise ValueError("row chunks of one edge overlap")
            if all(b.dense_t is not None for b in blocks):
                dense_t = np.concatenate([b.dense_t for b in blocks], axis=1)
                out.append((positions, Block(rows, dense_t=dense_t)))
            else:
                csr = sp.vstack([b.to_csr() for b in blocks], format="csr")
                out.append((positions, Block(rows, csr=csr)))
        return out

    @staticmethod
    def _rows(pieces: list[tuple[np.ndarray, Block]]) -> np.ndarray:
        parts = [b.rows for _, b in pieces]
        if not parts:
            return np.zeros(0, np.int32)
        if all(len(p) == len(parts[0]) and np.array_equal(p, parts[0]) for p in parts[1:]):
            return parts[0]  # the common case once rows are dense: every piece has the same rows
        return np.unique(np.concatenate(parts)).astype(np.int32)

    def finish(
        self, bias: np.ndarray, *, bias_on_nonzero: bool, relu: bool, cap: float | None
    ) -> Block:
        """Multiply, add bias, ReLU, cap; return the live rows of the outputs."""
        pieces = self._merged()
        rows = np.arange(self.batch, dtype=np.int32) if self._all_rows else self._rows(pieces)
        n_in, width = self.weight.shape
        if bias_on_nonzero and (len(rows) == 0 or not pieces):
            return Block.empty(width)  # no input, no nonzero product: nothing gets a bias
        nnz = sum(b.nnz for _, b in pieces)
        if bias_on_nonzero and nnz < DENSE_ABOVE * len(rows) * n_in:
            # Multiplied over the live rows only (their density picks the kernel's path, and
            # the rows that died cost nothing), then given back their ids in the batch.
            out = self.kernel.sparse(self._sparse_inputs(pieces, rows), self.weight, bias,
                                     relu=relu, cap=cap)
            return replace(out, rows=rows[out.rows])
        return self.kernel.dense(self._dense_inputs(pieces, rows), rows, self.weight, bias,
                                 bias_on_nonzero=bias_on_nonzero, relu=relu, cap=cap)

    def _sparse_inputs(self, pieces: list[tuple[np.ndarray, Block]],
                       rows: np.ndarray) -> sp.csr_matrix:
        """The pieces side by side over the live ``rows`` (a row some piece lacks is empty
        there), column ids mapped to input positions and sorted: the reference's summation
        order."""
        n_in = self.weight.shape[0]
        if len(pieces) == 1 and np.array_equal(pieces[0][0], np.arange(n_in)):
            x = pieces[0][1].to_csr()  # one piece with every input, in order
        else:
            side = sp.hstack([_on_rows(b, rows) for _, b in pieces], format="csr")
            positions = np.concatenate([p for p, _ in pieces]).astype(np.int32)
            x = sp.csr_matrix((side.data, positions[side.indices], side.indptr),
                              shape=(len(rows), n_in))
        # Only a check when the pieces' positions do not interleave: every kernel sorts its
        # outputs, so the next layer's pieces arrive in order on every worker.
        return sorted_indices(x)

    def _dense_inputs(self, pieces: list[tuple[np.ndarray, Block]],
                      rows: np.ndarray) -> np.ndarray:
        n_in = self.weight.shape[0]
        if (len(pieces) == 1 and pieces[0][1].dense_t is not None
                and len(pieces[0][1].rows) == len(rows)
                and np.array_equal(pieces[0][0], np.arange(n_in))):
            return pieces[0][1].dense_t  # one piece with every input and row, in order
        x_t = np.zeros((n_in, len(rows)), dtype=np.float32)
        for positions, piece in pieces:
            same_rows = len(piece.rows) == len(rows)
            if piece.dense_t is not None and same_rows:
                x_t[positions] = piece.dense_t
            elif piece.dense_t is not None:
                x_t[np.ix_(positions, np.searchsorted(rows, piece.rows))] = piece.dense_t
            else:
                coo = piece.to_csr().tocoo()
                x_t[positions[coo.col], np.searchsorted(rows, piece.rows[coo.row])] = coo.data
        return x_t


def _on_rows(piece: Block, rows: np.ndarray) -> sp.csr_matrix:
    """``piece`` as a CSR matrix of ``len(rows)`` rows: its own rows (a subset of the sorted
    ``rows``) at their places, the others empty."""
    csr = piece.to_csr()
    if len(piece.rows) == len(rows):
        return csr
    counts = np.zeros(len(rows) + 1, dtype=np.int64)
    counts[np.searchsorted(rows, piece.rows) + 1] = np.diff(csr.indptr)
    return sp.csr_matrix((csr.data, csr.indices, np.cumsum(counts)),
                         shape=(len(rows), csr.shape[1]))


def serial_inference(y0: sp.spmatrix, layers: Sequence[Layer],
                     kernel: Kernel | None = None) -> sp.csr_matrix:
    """Every layer in this process with the layer kernel (default: the one
    :func:`~fsdgraph.kernels.choice.kernel_from_env` chooses): the project's best serial code,
    one worker owning every neuron, with no transport. The result equals
    :func:`~fsdgraph.kernels.reference.reference_inference` bit for bit.

    >>> import numpy as np, scipy.sparse as sp
    >>> from fsdgraph.graph import Layer
    >>> w = sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32))
    >>> layer = Layer(w, np.array([-0.5, -0.5], np.float32), True, True, 32.0)
    >>> y0 = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32))
    >>> serial_inference(y0, [layer]).toarray()
    array([[0.5, 0. ],
           [0. , 0. ]], dtype=float32)
    """
    last = deque(serial_layers(y0, layers, kernel), maxlen=1)  # only the final output kept
    block = last[0] if last else Block.from_matrix(sp.csr_matrix(y0, dtype=np.float32))
    return block.to_matrix(y0.shape[0])


def serial_layers(y0: sp.spmatrix, layers: Sequence[Layer],
                  kernel: Kernel | None = None) -> Iterator[Block]:
    """As :func:`serial_inference`, yielding every layer's output (its live rows) in turn."""
    kernel = kernel or kernel_from_env()
    batch = y0.shape[0]
    block = Block.from_matrix(sp.csr_matrix(y0, dtype=np.float32))
    for layer in layers:
        inputs = LayerInputs(batch, WeightRows(layer.weight), kernel)
        if not layer.bias_on_nonzero:
            inputs.touch_all()
        inputs.add(block, np.arange(layer.weight.shape[0]))
        block = inputs.finish(layer.bias, bias_on_nonzero=layer.bias_on_nonzero,
                              relu=layer.relu, cap=layer.cap)
        yield block
