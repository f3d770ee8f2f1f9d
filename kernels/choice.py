"""Which layer kernel runs: the compiled one when numba is installed, else the scipy fallback.

Both give bit-identical results (:mod:`fsdgraph.kernels.fused`,
:mod:`fsdgraph.kernels.fallback`); the choice only changes speed. A run chooses with
``RunConfig.kernel`` (``--kernel``); otherwise :func:`kernel_from_env` reads two environment
variables, so a function's configuration (or a test) can pin it without touching code:

* ``FSDGRAPH_KERNEL``: ``auto`` (the default: ``numba`` if it imports, else ``scipy``),
  ``numba`` (an error if numba is missing) or ``scipy``;
* ``FSDGRAPH_KERNEL_THREADS``: threads per product (default 1, or on Lambda one per vCPU the
  function's memory buys: 1 per 1769 MB, at most 6).

>>> kernel_from_env("scipy").name
'scipy'
"""

from __future__ import annotations

import importlib.util
import os
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ConfigError
from fsdgraph.kernels.block import Block
from fsdgraph.kernels.weights import WeightRows

KERNEL_ENV = "FSDGRAPH_KERNEL"
THREADS_ENV = "FSDGRAPH_KERNEL_THREADS"
#: Kernel names, fastest first.
NAMES = ("numba", "scipy")
#: Lambda's memory per vCPU and its most vCPUs (AWS_FIGURES.md).
LAMBDA_MB_PER_VCPU = 1769
LAMBDA_MAX_VCPUS = 6


class Kernel(Protocol):
    """One implementation of a layer's two products (see :class:`ScipyKernel
    <fsdgraph.kernels.fallback.ScipyKernel>` for the contract)."""

    name: str
    threads: int

    def sparse(self, x: sp.csr_matrix, weight: WeightRows, bias: np.ndarray, *, relu: bool,
               cap: float | None) -> Block: ...

    def dense(self, x_t: np.ndarray, rows: np.ndarray, weight: WeightRows, bias: np.ndarray, *,
              bias_on_nonzero: bool, relu: bool, cap: float | None) -> Block: ...


def fast_available() -> bool:
    """Whether the compiled kernel can run here (numba is installed)."""
    return importlib.util.find_spec("numba") is not None


def default_threads() -> int:
    """``FSDGRAPH_KERNEL_THREADS``, else one per vCPU of a Lambda function, else 1."""
    raw = os.environ.get(THREADS_ENV)
    if raw:
        try:
            threads = int(raw)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ConfigError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads >= 1")
        return threads
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if memory.isdigit():
        return max(1, min(LAMBDA_MAX_VCPUS, int(memory) // LAMBDA_MB_PER_VCPU))
    return 1


def resolve(name: str | None = None) -> str:
    """The kernel name ``name`` stands for (default: ``FSDGRAPH_KERNEL``, else ``auto``)."""
    name = (name or os.environ.get(KERNEL_ENV) or "auto").strip().lower()
    if name == "auto":
        return "numba" if fast_available() else "scipy"
    if name not in NAMES:
        raise ConfigError(f"kernel {name!r}: expected one of auto, {', '.join(NAMES)}")
    return name


def preload() -> None:
    """Load the kernel :func:`kernel_from_env` would choose now (for the compiled one, its
    machine code): at import in a worker's module, so Lambda's init phase and a local launcher
    (once, before it forks workers) pay for it rather than every worker's first layer. A
    kernel that cannot load is left for the worker to report."""
    try:
        if resolve() == "numba":
            import fsdgraph.kernels.fused  # noqa: F401
    except (ConfigError, ImportError):
        pass


def kernel_from_env(name: str | None = None, threads: int | None = None) -> Kernel:
    """The kernel called ``name`` (default: ``FSDGRAPH_KERNEL``, else ``auto``) with ``threads``
    (default: :func:`default_threads`)."""
    name = resolve(name)
    if name == "scipy":
        from fsdgraph.kernels.fallback import ScipyKernel

        return ScipyKernel()
    if name == "numba":
        if not fast_available():
            raise ConfigError("kernel 'numba' but numba is not installed here: pip install "
                              "numba, or choose auto or scipy")
        from fsdgraph.kernels.fused import FusedKernel

        return FusedKernel(default_threads() if threads is None else threads)
    raise AssertionError(name)
