"""fsdgraph: fully serverless distributed inference.

Three steps — define, compile, submit::

    >>> import numpy as np, scipy.sparse as sp
    >>> import fsdgraph
    >>> w = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    >>> graph = fsdgraph.sequential([w] * 3, bias=-0.01, cap=32)             # 1. define
    >>> plan = fsdgraph.compile(graph, workers=3)                            # 2. compile
    >>> y = sp.random(8, 64, density=0.5, format="csr", dtype=np.float32, random_state=1)
    >>> result = fsdgraph.Scheduler("local", "queue").run_sync(plan, y)       # 3. submit
    >>> ref = fsdgraph.reference_inference(y, graph.layers())
    >>> bool(np.allclose(result.activations.toarray(), ref.toarray(), rtol=1e-6))
    True

The names below are imported on first use (PEP 562), so a worker that imports
``fsdgraph.worker`` does not load the scheduler, the compiler or their dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsdgraph.channels import ChannelConfig
    from fsdgraph.compiler import compile
    from fsdgraph.errors import FsdError, GraphError, InputError, RunError, RunTimeout
    from fsdgraph.graph import Graph, Layer, sequential
    from fsdgraph.kernels import categories, reference_inference
    from fsdgraph.model import Model
    from fsdgraph.plan import Plan
    from fsdgraph.scheduler import Result, RunConfig, Scheduler
    from fsdgraph.sources.onnx import from_onnx

__version__ = "0.1.0"

#: Each public name and the module it comes from.
_LAZY: dict[str, str] = {
    "ChannelConfig": "fsdgraph.channels",
    "compile": "fsdgraph.compiler",
    "FsdError": "fsdgraph.errors",
    "GraphError": "fsdgraph.errors",
    "InputError": "fsdgraph.errors",
    "RunError": "fsdgraph.errors",
    "RunTimeout": "fsdgraph.errors",
    "Graph": "fsdgraph.graph",
    "Layer": "fsdgraph.graph",
    "sequential": "fsdgraph.graph",
    "categories": "fsdgraph.kernels",
    "reference_inference": "fsdgraph.kernels",
    "Model": "fsdgraph.model",
    "Plan": "fsdgraph.plan",
    "Result": "fsdgraph.scheduler",
    "RunConfig": "fsdgraph.scheduler",
    "Scheduler": "fsdgraph.scheduler",
    "from_onnx": "fsdgraph.sources.onnx",
}

__all__ = [
    "ChannelConfig", "FsdError", "Graph", "GraphError", "InputError", "Layer", "Model", "Plan",
    "Result", "RunConfig", "RunError", "RunTimeout", "Scheduler", "categories", "compile",
    "from_onnx", "reference_inference", "sequential",
]


def __getattr__(name: str) -> object:
    """Import a public name's module on first access, and keep the name here."""
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
