"""fsdgraph: fully serverless distributed inference.

Three steps — define, compile, submit::

    >>> import numpy as np, scipy.sparse as sp
    >>> import fsdgraph
    >>> w = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    >>> graph = fsdgraph.sequential([w] * 3, bias=-0.01, cap=32)            # 1. define
    >>> plan = fsdgraph.compile(graph, workers=3)                            # 2. compile
    >>> y = sp.random(8, 64, density=0.5, format="csr", dtype=np.float32, random_state=1)
    >>> result = fsdgraph.Scheduler("local", "queue").run_sync(plan, y)       # 3. submit
    >>> ref = fsdgraph.reference_inference(y, graph.layers())
    >>> bool(np.allclose(result.activations.toarray(), ref.toarray(), rtol=1e-6))
    True
"""

from fsdgraph.channels import ChannelConfig
from fsdgraph.compiler import compile
from fsdgraph.errors import FsdError, GraphError, InputError, RunError, RunTimeout
from fsdgraph.graph import Graph, Layer, sequential
from fsdgraph.kernels import categories, reference_inference
from fsdgraph.plan import Plan
from fsdgraph.scheduler import Result, RunConfig, Scheduler

__version__ = "0.1.0"

__all__ = [
    "ChannelConfig", "FsdError", "Graph", "GraphError", "InputError", "Layer", "Plan", "Result",
    "RunConfig", "RunError", "RunTimeout", "Scheduler", "categories", "compile",
    "reference_inference", "sequential",
]
