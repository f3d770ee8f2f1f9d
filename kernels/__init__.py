"""Numerical kernels: pure numpy/scipy functions, no transport or cloud imports.

* :mod:`fsdgraph.kernels.reference` — the plain serial Graph Challenge loop, the yardstick for
  every distributed result;
* :mod:`fsdgraph.kernels.block` — a worker's slice of activations (live rows only, stored dense or
  CSR by measured density);
* :mod:`fsdgraph.kernels.layer` — one worker's share of a layer: input pieces gathered as they
  arrive, one product in the serial order (bit-identical results), the fused bias / ReLU / cap.
"""

from fsdgraph.kernels.block import Block
from fsdgraph.kernels.layer import LayerInputs, WeightRows
from fsdgraph.kernels.reference import categories, reference_inference

__all__ = ["Block", "LayerInputs", "WeightRows", "categories", "reference_inference"]
