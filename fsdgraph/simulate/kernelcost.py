"""The cost of a multiply-add on each path of the project's layer kernel, measured on this machine
(:func:`measure_kernel_costs`), and which path a layer takes (:func:`kernel_path`).

The paths are those of :mod:`fsdgraph.kernels.fused` and :mod:`fsdgraph.kernels.layer`: CSR
inputs below ``TILED_ABOVE`` (5%) density go row by row (Gustavson), CSR inputs above it in dense
tiles, and inputs above ``DENSE_ABOVE`` (40%) feature-major dense. Work is counted in useful
multiply-adds: for each nonzero input, the length of its weight row (dense path: every weight
nonzero times every live row, zeros included).
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

#: Paths of the layer kernel, in the order of the profile's ``kernel.<path>_s_per_mac`` keys.
PATHS = ("gustavson", "tiled", "dense")


def kernel_path(density: float, tiled_above: float, dense_above: float) -> str:
    """The path a layer whose live input rows have ``density`` takes.

    >>> kernel_path(0.01, 0.05, 0.4), kernel_path(0.1, 0.05, 0.4), kernel_path(0.9, 0.05, 0.4)
    ('gustavson', 'tiled', 'dense')
    """
    if density > dense_above:
        return "dense"
    return "tiled" if density > tiled_above else "gustavson"


def macs(path: str, weight_nnz: float, inputs: float, live_rows: float, density: float) -> float:
    """Multiply-adds of one product: ``live_rows`` rows of ``density`` over ``inputs`` input
    neurons into a weight of ``weight_nnz`` nonzeros (rows of ``weight_nnz / inputs``)."""
    if path == "dense":
        return weight_nnz * live_rows
    return live_rows * density * weight_nnz


def _time(fn: Any, repeat: int) -> float:
    fn()  # warm-up (and compilation)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_kernel_costs(neurons: int = 1024, rows: int = 2000, repeat: int = 3,
                         seed: int = 0) -> dict[str, Any]:
    """Seconds per useful multiply-add of each kernel path on this machine, one thread.

    Times ``fsdgraph.kernels`` (the compiled kernel if numba is installed, else the scipy one,
    as a run would choose) on a generated RadiX-Net layer (32 nonzeros per row) with ``rows``
    random input rows of 2% (Gustavson), 20% (tiled) and 100% (dense) density; the best of
    ``repeat`` timings. Returns ``{"gustavson": s, "tiled": s, "dense": s, "source": ...}``.
    """
    from fsdgraph.kernels import kernel_from_env
    from fsdgraph.kernels.weights import WeightRows
    from fsdgraph.sources.radixnet import radixnet_layer

    kernel = kernel_from_env(None, threads=1)
    layer = radixnet_layer(neurons, 1, seed=seed)
    weight = WeightRows(layer)
    nnz = float(layer.nnz)
    bias = np.full(neurons, -0.3, np.float32)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for path, density in (("gustavson", 0.02), ("tiled", 0.2), ("dense", 1.0)):
        x = sp.random(rows, neurons, density=density, format="csr", dtype=np.float32,
                      random_state=rng)
        x.data[:] = 1.0
        x.sort_indices()
        if path == "dense":
            x_t = np.ascontiguousarray(x.toarray().T)
            row_ids = np.arange(rows, dtype=np.int32)
            seconds = _time(lambda: kernel.dense(x_t, row_ids, weight, bias,  # noqa: B023
                                                 bias_on_nonzero=True, relu=True, cap=32.0),
                            repeat)
            work = nnz * rows
        else:
            seconds = _time(lambda: kernel.sparse(x, weight, bias, relu=True,  # noqa: B023
                                                  cap=32.0), repeat)
            work = x.nnz * nnz / neurons
        out[path] = seconds / work
    out["source"] = (f"measured: measure_kernel_costs({neurons} neurons, {rows} rows, best of "
                     f"{repeat}), kernel {kernel.name}, 1 thread, {platform.machine()} "
                     f"{platform.processor() or platform.system()}")
    return out
