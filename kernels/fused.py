"""The fast layer kernels: one compiled pass per layer, product and epilogue fused (numba).

Each takes a layer's assembled inputs and returns its outputs with the epilogue applied (bias
where the sum is nonzero, ReLU, cap) and the zeros gone, summing every output over its input
neurons in ascending order in float32, exactly as scipy's products do for the canonical serial
reference (:mod:`fsdgraph.kernels.reference`): results are bit-identical to it and to the
fallback (:mod:`fsdgraph.kernels.fallback`). No floating-point contraction (numba's default,
``fastmath`` off): ``acc += x * w`` is a rounded product, then a rounded sum, as in scipy. A
dense product also adds the zero inputs' ``w * 0``; adding a zero never changes a float sum
(and a sum that starts at +0 stays +0), so that is the same result too.

* :func:`sparse_layer` — CSR inputs below :data:`TILED_ABOVE` density, row by row (Gustavson):
  the input nonzeros in ascending order scatter their weight rows into a dense accumulator;
  the touched outputs are read back in ascending column order (a sort of the few touched, or a
  scan of the accumulator when most are), so rows come out sorted with no extra pass;
* :func:`tiled_layer` — CSR inputs above it (the Graph Challenge's first layers): a tile of
  nonempty rows at a time scattered into a small dense block and multiplied as dense inputs
  are, which replaces scalar scatters by SIMD multiply-adds over rows; outputs visited in
  ascending order give sorted CSR rows;
* :func:`dense_layer` — a feature-major block (inputs x rows) times the transposed weight, one
  output neuron at a time over tiles of rows small enough for the input tile to stay in cache,
  eight inputs per pass.

Rows left without a nonzero are dropped by all three.

Threads: with ``threads > 1`` the rows (sparse) or output neurons (dense) are split among that
many threads (numba's ``prange``); each output is still computed by one thread in the same order,
so the result does not depend on the thread count. With one thread the serial build runs: no
thread pool is ever started in a process that only uses one (forked workers stay safe).

The serial kernels are compiled for their one signature (read-only arrays, which writable ones
convert to, so wire-decoded and computed arrays share one build) when this module is imported,
and cached on disk (``cache=_CACHE``, next to this file or under ``NUMBA_CACHE_DIR``): the first
import compiles for a few seconds, every later process loads the machine code (~0.2 s). The
threaded builds compile on first use and are cached the same way.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import scipy.sparse as sp
from numba import njit, prange, types

from fsdgraph.kernels.block import DENSE_ABOVE, Block
from fsdgraph.kernels.weights import WeightRows, kernel_arrays

# Threads from numba's own work queue unless the user chose a layer: unlike GNU OpenMP (numba's
# pick when present) it survives a fork, and its idle threads sleep instead of spinning, which
# matters where many worker processes share a few cores.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]

#: Input density above which sparse inputs are multiplied a tile of rows at a time as dense ones
#: (:func:`tiled_layer`) rather than row by row (:func:`sparse_layer`).
TILED_ABOVE = 0.05

#: Cache the machine code only when imported under the installed name: numba's cache is keyed by
#: this file, and an entry written while it was imported as another module (``kernels.fused``,
#: by a tool collecting the source tree by path) fails every later load under the right name.
_CACHE = __name__ == "fsdgraph.kernels.fused"

#: Rows per tile of the dense kernel (measured best on the official layers: 18 ms against 23
#: untiled and 35 for scipy, 5000 rows). Loops over a tile run over slices from 0 (``range(n)``),
#: which numba knows are non-negative: indices from ``range(r0, r1)`` get a wrap-around check
#: that stops the loop being vectorised (4x slower).
DENSE_TILE = 1024


@njit(cache=_CACHE, nogil=True, boundscheck=False, inline="always")
def _emit(j, acc, bias, relu, cap, out_indices, out_data, at):
    """Output ``j`` of a row from the accumulator (cleared for the next row): bias only where
    the sum is nonzero (scipy's products keep only those), ReLU, cap, written at ``at`` if it is
    still nonzero. Returns how many it wrote (0 or 1)."""
    s = acc[j]
    acc[j] = np.float32(0)
    if s == 0:
        return 0
    s += bias[j]
    if relu and s < 0:
        s = np.float32(0)
    if s > cap:
        s = cap
    if s == 0:
        return 0
    out_indices[at] = j
    out_data[at] = s
    return 1


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _sparse_row(i, x_indptr, x_indices, x_data, w_indptr, w_indices, w_data, bias, relu, cap,
                acc, seen, touched, bound, out_indices, out_data, at):
    """Row ``i``: product, epilogue and output in ascending column order, written from ``at``;
    returns how many outputs it wrote. ``acc`` and ``seen`` are all zero before and after."""
    width = len(bias)
    c = 0
    if bound * 8 < width:
        # Few outputs: remember which were touched, read back those sorted.
        n = 0
        for p in range(x_indptr[i], x_indptr[i + 1]):
            v = x_data[p]
            k = x_indices[p]
            for q in range(w_indptr[k], w_indptr[k + 1]):
                j = w_indices[q]
                if not seen[j]:
                    seen[j] = True
                    touched[n] = j
                    n += 1
                acc[j] += v * w_data[q]
        order = np.sort(touched[:n])
        for t in range(n):
            j = order[t]
            seen[j] = False
            c += _emit(j, acc, bias, relu, cap, out_indices, out_data, at + c)
        return c
    # Many: scatter, then scan the whole accumulator in column order.
    for p in range(x_indptr[i], x_indptr[i + 1]):
        v = x_data[p]
        k = x_indices[p]
        for q in range(w_indptr[k], w_indptr[k + 1]):
            acc[w_indices[q]] += v * w_data[q]
    for j in range(width):
        if acc[j] != 0:
            c += _emit(j, acc, bias, relu, cap, out_indices, out_data, at + c)
    return c


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _row_bound(i, x_indptr, x_indices, w_indptr, width):
    """An upper bound on row ``i``'s output nonzeros: the weights it touches, at most ``width``."""
    total = 0
    for p in range(x_indptr[i], x_indptr[i + 1]):
        k = x_indices[p]
        total += w_indptr[k + 1] - w_indptr[k]
    return min(total, width)


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _room(out_indices, out_data, at, need):
    """Output buffers (filled up to ``at``) with room for ``need`` more: the same ones, or
    copies twice as large (amortised linear, like a list)."""
    if at + need <= len(out_indices):
        return out_indices, out_data
    capacity = max(2 * len(out_indices), at + need)
    grown_indices = np.empty(capacity, np.int32)
    grown_indices[:at] = out_indices[:at]
    grown_data = np.empty(capacity, np.float32)
    grown_data[:at] = out_data[:at]
    return grown_indices, grown_data


def _ro(dtype: types.Type, ndim: int = 1) -> types.Array:
    return types.Array(dtype, ndim, "C", readonly=True)


_F32, _I32, _I64 = _ro(types.float32), _ro(types.int32), _ro(types.int64)


@njit((_I64, _I32, _F32, _I64, _I32, _F32, _F32, types.boolean, types.float32), cache=_CACHE,
      nogil=True, boundscheck=False)
def _sparse_serial(x_indptr, x_indices, x_data, w_indptr, w_indices, w_data, bias, relu,
                   cap):
    """All rows, written packed as they come (the buffers grow by doubling): the live rows'
    positions and their CSR arrays."""
    n_rows = len(x_indptr) - 1
    width = len(bias)
    acc = np.zeros(width, np.float32)
    seen = np.zeros(width, np.bool_)
    touched = np.empty(width, np.int32)
    out_indices = np.empty(max(len(x_indices), width), np.int32)
    out_data = np.empty(len(out_indices), np.float32)
    rows = np.empty(n_rows, np.int32)
    indptr = np.empty(n_rows + 1, np.int64)
    indptr[0] = 0
    live = 0
    at = 0
    for i in range(n_rows):
        bound = _row_bound(i, x_indptr, x_indices, w_indptr, width)
        if bound == 0:
            continue
        out_indices, out_data = _room(out_indices, out_data, at, bound)
        c = _sparse_row(i, x_indptr, x_indices, x_data, w_indptr, w_indices, w_data, bias,
                        relu, cap, acc, seen, touched, bound, out_indices, out_data, at)
        if c:
            at += c
            rows[live] = i
            live += 1
            indptr[live] = at
    return rows[:live].copy(), indptr[:live + 1].copy(), out_indices[:at].copy(), \
        out_data[:at].copy()


@njit(cache=_CACHE, nogil=True, parallel=True, boundscheck=False)
def _sparse_parallel(x_indptr, x_indices, x_data, w_indptr, w_indices, w_data, bias, relu, cap,
                     pieces):
    """All rows, ``pieces`` ranges of them in parallel, each written packed in its own share
    of an upper-bound buffer, then packed once more: as :func:`_sparse_serial`."""
    n_rows = len(x_indptr) - 1
    width = len(bias)
    bounds = np.empty(n_rows + 1, np.int64)
    bounds[0] = 0
    for i in range(n_rows):
        bounds[i + 1] = bounds[i] + _row_bound(i, x_indptr, x_indices, w_indptr, width)
    out_indices = np.empty(bounds[-1], np.int32)
    out_data = np.empty(bounds[-1], np.float32)
    counts = np.zeros(n_rows, np.int64)
    step = (n_rows + pieces - 1) // pieces
    for t in prange(pieces):
        acc = np.zeros(width, np.float32)
        seen = np.zeros(width, np.bool_)
        touched = np.empty(width, np.int32)
        for i in range(min(t * step, n_rows), min((t + 1) * step, n_rows)):
            bound = bounds[i + 1] - bounds[i]
            if bound:
                counts[i] = _sparse_row(i, x_indptr, x_indices, x_data, w_indptr, w_indices,
                                        w_data, bias, relu, cap, acc, seen, touched, bound,
                                        out_indices, out_data, bounds[i])
    return _compact(bounds, counts, out_indices, out_data)


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _compact(bounds, counts, out_indices, out_data):
    """The live rows' positions, their CSR indptr, indices and values, packed."""
    n = len(counts)
    live = 0
    total = 0
    for i in range(n):
        if counts[i] > 0:
            live += 1
            total += counts[i]
    rows = np.empty(live, np.int32)
    indptr = np.empty(live + 1, np.int64)
    indices = np.empty(total, np.int32)
    data = np.empty(total, np.float32)
    indptr[0] = 0
    r = 0
    for i in range(n):
        c = counts[i]
        if c == 0:
            continue
        at = indptr[r]
        src = bounds[i]
        for t in range(c):
            indices[at + t] = out_indices[src + t]
            data[at + t] = out_data[src + t]
        rows[r] = i
        indptr[r + 1] = at + c
        r += 1
    return rows, indptr, indices, data


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _output_row(j, x_t, r0, r1, wt_indptr, wt_indices, wt_data, bias, bias_on_nonzero, relu,
                cap, z, row_nnz, counted_from):
    """Output neuron ``j`` for input rows ``[r0, r1)`` of the feature-major ``x_t`` into ``z``
    (their length): product, bias, ReLU, cap; each nonzero counted in ``row_nnz`` from
    ``counted_from``."""
    n = r1 - r0
    zero = np.float32(0)  # float32 constants keep every operation in float32
    for r in range(n):
        z[r] = zero
    # Eight inputs per pass over the rows: the partial sum stays in a register and is still
    # rounded after every addition, in input order, so the bits do not change.
    q, end = wt_indptr[j], wt_indptr[j + 1]
    while q + 8 <= end:
        x0, w0 = x_t[wt_indices[q], r0:r1], wt_data[q]
        x1, w1 = x_t[wt_indices[q + 1], r0:r1], wt_data[q + 1]
        x2, w2 = x_t[wt_indices[q + 2], r0:r1], wt_data[q + 2]
        x3, w3 = x_t[wt_indices[q + 3], r0:r1], wt_data[q + 3]
        x4, w4 = x_t[wt_indices[q + 4], r0:r1], wt_data[q + 4]
        x5, w5 = x_t[wt_indices[q + 5], r0:r1], wt_data[q + 5]
        x6, w6 = x_t[wt_indices[q + 6], r0:r1], wt_data[q + 6]
        x7, w7 = x_t[wt_indices[q + 7], r0:r1], wt_data[q + 7]
        for r in range(n):
            z[r] = (((((((z[r] + w0 * x0[r]) + w1 * x1[r]) + w2 * x2[r]) + w3 * x3[r])
                      + w4 * x4[r]) + w5 * x5[r]) + w6 * x6[r]) + w7 * x7[r]
        q += 8
    while q < end:
        x0, w0 = x_t[wt_indices[q], r0:r1], wt_data[q]
        for r in range(n):
            z[r] += w0 * x0[r]
        q += 1
    b = bias[j]
    for r in range(n):
        s = z[r]
        if s != 0 or not bias_on_nonzero:
            s += b
        if relu and s < 0:
            s = zero
        if s > cap:
            s = cap
        z[r] = s
        if s != 0:
            row_nnz[counted_from + r] += 1


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _dense_outputs(lo, hi, x_t, wt_indptr, wt_indices, wt_data, bias, bias_on_nonzero, relu,
                   cap, z_t, row_nnz):
    """Output neurons ``[lo, hi)`` of ``z_t = W^T @ x_t``, tile by tile of rows, epilogue;
    each row's nonzero outputs counted into ``row_nnz``."""
    rows = x_t.shape[1]
    for r0 in range(0, rows, DENSE_TILE):
        r1 = min(r0 + DENSE_TILE, rows)
        for j in range(lo, hi):
            _output_row(j, x_t, r0, r1, wt_indptr, wt_indices, wt_data, bias, bias_on_nonzero,
                        relu, cap, z_t[j, r0:r1], row_nnz, r0)


@njit(cache=_CACHE, nogil=True)
def _sparse_tile(n_in):
    """Rows per tile of the tiled sparse kernel: the input tile about 1 MB (a core's L2)."""
    return max(8, min(DENSE_TILE, (1 << 18) // max(n_in, 1)))


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _tile_rows(lo, hi, live, x_indptr, x_indices, x_data, wt_indptr, wt_indices, wt_data, bias,
               relu, cap, x_tile, z_tile, counts, out_indices, out_data, at):
    """Sparse rows ``live[lo:hi]`` (at most a tile) multiplied as dense ones: scattered into the
    zeroed feature-major ``x_tile``, every output computed by :func:`_output_row`, then the
    live outputs appended from ``at`` as CSR rows. Output neurons are visited in ascending
    order, so each row's column ids come out sorted. Returns the new end; ``counts[t]`` holds
    the outputs of row ``live[t]``; ``x_tile`` is zero again on return."""
    n = hi - lo
    width = len(bias)
    zero = np.float32(0)
    for r in range(n):
        i = live[lo + r]
        for p in range(x_indptr[i], x_indptr[i + 1]):
            x_tile[x_indices[p], r] = x_data[p]
    for j in range(width):
        _output_row(j, x_tile, 0, n, wt_indptr, wt_indices, wt_data, bias, True, relu, cap,
                    z_tile[j, :n], counts, lo)
    starts = np.empty(n, np.int64)
    for r in range(n):
        starts[r] = at
        at += counts[lo + r]
    for j in range(width):
        z = z_tile[j, :n]
        for r in range(n):
            if z[r] != 0:
                out_indices[starts[r]] = j
                out_data[starts[r]] = z[r]
                starts[r] += 1
    for r in range(n):
        i = live[lo + r]
        for p in range(x_indptr[i], x_indptr[i + 1]):
            x_tile[x_indices[p], r] = zero
    return at


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _nonempty_rows(x_indptr):
    """The rows of a CSR matrix with any stored entry: only those are multiplied."""
    n_rows = len(x_indptr) - 1
    live = np.empty(n_rows, np.int32)
    m = 0
    for i in range(n_rows):
        if x_indptr[i + 1] > x_indptr[i]:
            live[m] = i
            m += 1
    return live[:m]


@njit(cache=_CACHE, nogil=True, boundscheck=False)
def _counted_rows(live, counts):
    """The rows ``live[t]`` with ``counts[t] > 0`` and their CSR indptr."""
    m = 0
    for t in range(len(live)):
        if counts[t]:
            m += 1
    rows = np.empty(m, np.int32)
    indptr = np.empty(m + 1, np.int64)
    indptr[0] = 0
    r = 0
    for t in range(len(live)):
        if counts[t]:
            rows[r] = live[t]
            indptr[r + 1] = indptr[r] + counts[t]
            r += 1
    return rows, indptr


@njit((_I64, _I32, _F32, types.int64, _I64, _I32, _F32, _F32, types.boolean, types.float32),
      cache=_CACHE, nogil=True, boundscheck=False)
def _tiled_serial(x_indptr, x_indices, x_data, n_in, wt_indptr, wt_indices, wt_data, bias, relu,
                  cap):
    """All nonempty rows, a tile at a time (:func:`_tile_rows`), written packed as they come
    (the buffers grow by doubling): as :func:`_sparse_serial`."""
    live = _nonempty_rows(x_indptr)
    width = len(bias)
    tile = _sparse_tile(n_in)
    x_tile = np.zeros((n_in, tile), np.float32)
    z_tile = np.empty((width, tile), np.float32)
    counts = np.zeros(len(live), np.int64)
    out_indices = np.empty(max(len(x_indices), width * tile), np.int32)
    out_data = np.empty(len(out_indices), np.float32)
    at = 0
    for lo in range(0, len(live), tile):
        hi = min(lo + tile, len(live))
        out_indices, out_data = _room(out_indices, out_data, at, (hi - lo) * width)
        at = _tile_rows(lo, hi, live, x_indptr, x_indices, x_data, wt_indptr, wt_indices,
                        wt_data, bias, relu, cap, x_tile, z_tile, counts, out_indices, out_data,
                        at)
    rows, indptr = _counted_rows(live, counts)
    return rows, indptr, out_indices[:at].copy(), out_data[:at].copy()


@njit(cache=_CACHE, nogil=True, parallel=True, boundscheck=False)
def _tiled_parallel(x_indptr, x_indices, x_data, n_in, wt_indptr, wt_indices, wt_data, bias,
                    relu, cap, pieces):
    """As :func:`_tiled_serial`, ``pieces`` ranges of tiles in parallel, each written packed in
    its own share of a buffer as large as the dense result (only what is written is touched),
    then packed once more."""
    live = _nonempty_rows(x_indptr)
    m = len(live)
    width = len(bias)
    tile = _sparse_tile(n_in)
    tiles = (m + tile - 1) // tile
    out_indices = np.empty(m * width, np.int32)
    out_data = np.empty(m * width, np.float32)
    counts = np.zeros(m, np.int64)
    bounds = np.empty(m + 1, np.int64)
    step = (tiles + pieces - 1) // pieces
    for t in prange(pieces):
        x_tile = np.zeros((n_in, tile), np.float32)
        z_tile = np.empty((width, tile), np.float32)
        for k in range(t * step, min((t + 1) * step, tiles)):
            lo = k * tile
            hi = min(lo + tile, m)
            at = lo * width
            _tile_rows(lo, hi, live, x_indptr, x_indices, x_data, wt_indptr, wt_indices,
                       wt_data, bias, relu, cap, x_tile, z_tile, counts, out_indices, out_data,
                       at)
            for r in range(lo, hi):  # where each row's outputs start, for _compact
                bounds[r] = at
                at += counts[r]
    positions, indptr, indices, data = _compact(bounds, counts, out_indices, out_data)
    return live[positions], indptr, indices, data


@njit((_ro(types.float32, 2), _I64, _I32, _F32, _F32, types.boolean, types.boolean,
       types.float32, types.Array(types.float32, 2, "C"), types.Array(types.int64, 1, "C")),
      cache=_CACHE, nogil=True, boundscheck=False)
def _dense_serial(x_t, wt_indptr, wt_indices, wt_data, bias, bias_on_nonzero, relu, cap,
                  z_t, row_nnz):
    _dense_outputs(0, len(bias), x_t, wt_indptr, wt_indices, wt_data, bias, bias_on_nonzero,
                   relu, cap, z_t, row_nnz)


@njit(cache=_CACHE, nogil=True, parallel=True, boundscheck=False)
def _dense_parallel(x_t, wt_indptr, wt_indices, wt_data, bias, bias_on_nonzero, relu, cap, z_t,
                    row_nnz, pieces):
    n = len(bias)
    step = (n + pieces - 1) // pieces
    counts = np.zeros((pieces, len(row_nnz)), np.int64)  # one row of counts per thread's share
    for t in prange(pieces):
        _dense_outputs(min(t * step, n), min((t + 1) * step, n), x_t, wt_indptr, wt_indices,
                       wt_data, bias, bias_on_nonzero, relu, cap, z_t, counts[t])
    row_nnz[:] = counts.sum(axis=0)


@njit((_I64, _I32, _F32, types.int64), cache=_CACHE, nogil=True, boundscheck=False)
def _transpose(indptr, indices, data, n_cols):
    """A CSR matrix's transpose by counting sort: rows of the result come out with ascending
    ids because the source rows are visited in order. Linear, a third of scipy's time."""
    out_ptr = np.zeros(n_cols + 1, np.int64)
    for q in range(len(indices)):
        out_ptr[indices[q] + 1] += 1
    for j in range(n_cols):
        out_ptr[j + 1] += out_ptr[j]
    fill = out_ptr[:-1].copy()
    out_indices = np.empty(len(indices), np.int32)
    out_data = np.empty(len(indices), np.float32)
    for i in range(len(indptr) - 1):
        for q in range(indptr[i], indptr[i + 1]):
            p = fill[indices[q]]
            out_indices[p] = i
            out_data[p] = data[q]
            fill[indices[q]] = p + 1
    return out_ptr, out_indices, out_data


def transpose(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
              n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The transpose of the CSR matrix ``(indptr, indices, data)`` with ``n_cols`` columns, in
    the kernels' types (int64 pointers, int32 ids, float32 values), ids sorted."""
    return _transpose(indptr, indices, data, n_cols)  # type: ignore[no-any-return]


def _f32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, np.float32)


def _cap(cap: float | None) -> np.float32:
    return np.float32(np.inf if cap is None else cap)


def sparse_layer(x_indptr: np.ndarray, x_indices: np.ndarray, x_data: np.ndarray,
                 w_indptr: np.ndarray, w_indices: np.ndarray, w_data: np.ndarray,
                 bias: np.ndarray, relu: bool, cap: float | None, threads: int = 1,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``h(x @ W + b)`` with bias on nonzeros, for CSR ``x`` (sorted ids) and CSR ``W``
    (inputs x outputs, sorted ids): the live rows' positions in ``x`` and their CSR
    ``(indptr, indices, data)``, column ids ascending. Row by row (Gustavson)."""
    args = (x_indptr, x_indices, x_data, w_indptr, w_indices, w_data, bias, relu, _cap(cap))
    if threads > 1:
        numba.set_num_threads(threads)
        return _sparse_parallel(*args, 4 * threads)  # type: ignore[no-any-return]
    # Serial: exactly the compiled signature, read-only arrays taking any writable ones.
    return _sparse_serial(*args)  # type: ignore[no-any-return]


def tiled_layer(x_indptr: np.ndarray, x_indices: np.ndarray, x_data: np.ndarray, n_in: int,
                wt_indptr: np.ndarray, wt_indices: np.ndarray, wt_data: np.ndarray,
                bias: np.ndarray, relu: bool, cap: float | None, threads: int = 1,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`sparse_layer`, with ``W^T`` (outputs x inputs): a tile of rows at a time made
    dense and multiplied as dense inputs are. Faster than row by row once the inputs are
    dense enough (:data:`TILED_ABOVE`): SIMD multiply-adds over rows against scalar scatters."""
    args = (x_indptr, x_indices, x_data, n_in, wt_indptr, wt_indices, wt_data, bias, relu,
            _cap(cap))
    if threads > 1:
        numba.set_num_threads(threads)
        return _tiled_parallel(*args, 4 * threads)  # type: ignore[no-any-return]
    return _tiled_serial(*args)  # type: ignore[no-any-return]


def dense_layer(x_t: np.ndarray, wt_indptr: np.ndarray, wt_indices: np.ndarray,
                wt_data: np.ndarray, bias: np.ndarray, bias_on_nonzero: bool, relu: bool,
                cap: float | None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``h(W^T @ x_t + b)`` for a C-ordered float32 ``x_t`` (inputs x rows) and CSR ``W^T``
    (outputs x inputs, sorted ids): the (outputs x rows) result, zeros included, and each
    row's count of nonzero outputs."""
    z_t = np.empty((len(bias), x_t.shape[1]), np.float32)
    row_nnz = np.zeros(x_t.shape[1], np.int64)
    args = (x_t, wt_indptr, wt_indices, wt_data, bias, bias_on_nonzero, relu, _cap(cap), z_t,
            row_nnz)
    if threads > 1:
        numba.set_num_threads(threads)
        _dense_parallel(*args, 4 * threads)
    else:
        _dense_serial(*args)
    return z_t, row_nnz


class FusedKernel:
    """The layer products through the compiled kernels above, in the interface of
    :class:`fsdgraph.kernels.fallback.ScipyKernel` (``threads``: see the module docstring)."""

    name = "numba"

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]

    def sparse(self, x: sp.csr_matrix, weight: WeightRows, bias: np.ndarray, *, relu: bool,
               cap: float | None) -> Block:
        """See :meth:`ScipyKernel.sparse <fsdgraph.kernels.fallback.ScipyKernel.sparse>`."""
        n_in = weight.shape[0]
        if x.nnz > TILED_ABOVE * x.shape[0] * n_in:
            rows, indptr, indices, data = tiled_layer(
                *kernel_arrays(x), n_in, *weight.by_output, _f32(bias), relu, cap, self.threads)
        else:
            rows, indptr, indices, data = sparse_layer(
                *kernel_arrays(x), *weight.by_input, _f32(bias), relu, cap, self.threads)
        csr = sp.csr_matrix((data, indices, indptr), shape=(len(rows), len(bias)))
        block = Block(rows, csr=csr)  # no zeros, no empty rows: stored by density only
        return block.as_dense() if block.density > DENSE_ABOVE else block

    def dense(self, x_t: np.ndarray, rows: np.ndarray, weight: WeightRows, bias: np.ndarray, *,
              bias_on_nonzero: bool, relu: bool, cap: float | None) -> Block:
        """See :meth:`ScipyKernel.dense <fsdgraph.kernels.fallback.ScipyKernel.dense>`."""
        z_t, row_nnz = dense_layer(np.ascontiguousarray(x_t, np.float32), *weight.by_output,
                                   _f32(bias), bias_on_nonzero, relu, cap, self.threads)
        return Block.from_dense_t(rows, z_t, row_nnz)
