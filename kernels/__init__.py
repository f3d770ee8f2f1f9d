"""Numerical kernels: pure numpy/scipy functions, no transport or cloud imports.

* :mod:`fsdgraph.kernels.reference` — the plain serial Graph Challenge loop, the yardstick for
  every distributed result;
* :mod:`fsdgraph.kernels.block` — a worker's slice of activations (live rows only, stored dense or
  CSR by measured density);
* :mod:`fsdgraph.kernels.layer` — one worker's share of a layer: partial products accumulated as
  they arrive, then the fused bias-on-nonzero / ReLU / cap.
"""

from fsdgraph.kernels.block import Block
from fsdgraph.kernels.layer import Accumulator, WeightRows, dense_product_t
from fsdgraph.kernels.reference import categories, reference_inference

__all__ = ["Accumulator", "Block", "WeightRows", "categories", "dense_product_t", "reference_inference"]
