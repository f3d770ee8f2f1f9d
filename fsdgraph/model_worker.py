"""What one worker of an op-level model run does (:mod:`fsdgraph.model_plan`): read the model
and its rows of the inputs, run every op on them in order (one progress step per op), write its
rows of the outputs. It exchanges nothing, so it needs no channel; a relaunched attempt simply
starts again from its input.

It offers the :class:`fsdgraph.worker.WorkerRuntime` interface :func:`fsdgraph.worker.run_worker`
drives: ``layers()``, ``layer_count``, ``continued_after`` and ``write_output``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from fsdgraph.backend import Services
from fsdgraph.errors import RunError
from fsdgraph.event import WorkerEvent
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.model import Model
from fsdgraph.model_plan import output_parts, read_inputs, read_model
from fsdgraph.sealed import seal, unseal_parts
from fsdgraph.transport import ObjectStore


class ModelRuntime:
    """One worker's rows of an op-level model."""

    #: A model worker never hands over to a continuation.
    continued_after: int | None = None

    def __init__(self, services: Services, event: WorkerEvent, metrics: WorkerMetrics) -> None:
        self.services = services
        self.event = event
        self.names = event.names
        self.metrics = metrics
        self.model: Model | None = None
        self.rows = (0, 0)
        self.outputs: dict[str, np.ndarray] | None = None

    @property
    def layer_count(self) -> int:
        return len(self.model.nodes) if self.model else 0

    async def layers(self) -> AsyncIterator[int]:
        """Run every op; yields the index of each once its output is there."""
        objects, names = self.services.objects, self.names
        model_key, input_key = names.shard_key(0), names.input_key(self.event.worker)
        model_body, input_body = await asyncio.gather(objects.get(model_key),
                                                      objects.get(input_key))
        model = read_model(model_key, unseal_parts(names, model_key, model_body))
        self.model = model
        self.rows, inputs = read_inputs(input_key, unseal_parts(names, input_key, input_body),
                                        model)
        values = model.bind(inputs)
        steps = model.steps(values)
        for i in range(len(model.nodes)):
            m = self.metrics.begin_layer(i)
            start = time.perf_counter()
            next(steps)
            m.compute_s += time.perf_counter() - start
            yield i
        self.metrics.end_layers()
        self.outputs = {name: values[name] for name in model.outputs}

    async def write_output(self, objects: ObjectStore) -> None:
        """Put this worker's rows of every output and the metrics (through ``objects``)."""
        if self.outputs is None:
            raise RunError(f"worker {self.event.worker}: no output to write",
                           worker=self.event.worker)
        key = self.names.output_key(self.event.worker)
        parts = output_parts(self.rows, self.outputs, self.metrics.to_dict())
        await objects.put(key, seal(self.names, key, parts))
