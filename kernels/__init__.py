"""Numerical kernels: pure numpy/scipy functions, no transport or cloud imports.

* :mod:`fsdgraph.kernels.reference` — the plain serial Graph Challenge loop, the yardstick for
  every distributed result;
* :mod:`fsdgraph.kernels.block` — a worker's slice of activations (live rows only, stored dense or
  CSR by measured density);
* :mod:`fsdgraph.kernels.weights` — a worker's weight shard in the layouts the products read,
  prepared once;
* :mod:`fsdgraph.kernels.layer` — one worker's share of a layer: input pieces gathered as they
  arrive, one product in the serial order (bit-identical results), the fused bias / ReLU / cap;
* the products, one class each, chosen by :mod:`fsdgraph.kernels.choice`:
  :mod:`fsdgraph.kernels.fused` (compiled with numba, when installed) and
  :mod:`fsdgraph.kernels.fallback` (numpy/scipy, always there).
"""

from fsdgraph.kernels.block import Block
from fsdgraph.kernels.choice import Kernel, kernel_from_env
from fsdgraph.kernels.layer import LayerInputs, serial_inference
from fsdgraph.kernels.reference import categories, reference_inference
from fsdgraph.kernels.weights import WeightRows

__all__ = ["Block", "Kernel", "LayerInputs", "WeightRows", "categories", "kernel_from_env",
           "reference_inference", "serial_inference"]
