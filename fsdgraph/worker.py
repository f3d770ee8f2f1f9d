"""The worker runtime: what one function invocation does.

:func:`handler` is the function entry point (Lambda-shaped: ``handler(event, context)``). A
worker

1. attaches to its backend's services from the event and claims its identity (an atomic create
   of ``runs/<run>/claim/<worker>``: a duplicated invocation event finds the claim, reports
   ``duplicate`` and exits); then invokes its children in the invocation tree
   (:mod:`fsdgraph.tree`) before anything else, so the tree fans out fast;
2. downloads only its own plan shard and input columns;
3. per layer: sends each peer the activation rows it needs (started first, so peers are not kept
   waiting), places its own columns and then each peer chunk, as it arrives, into
   :class:`~fsdgraph.kernels.LayerInputs`, and runs the fused product + bias/ReLU/cap;
4. writes its final columns and metrics to the object store and reports ``done`` — or, on any
   failure, reports ``error`` with the traceback so the scheduler can raise it.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Mapping
from typing import Any

import numpy as np

from fsdgraph.backend import Services
from fsdgraph.channels import Channel, ChannelConfig, WorkerContext, get_channel
from fsdgraph.control import Reporter
from fsdgraph.errors import FsdError, RunError
from fsdgraph.event import WorkerEvent
from fsdgraph.kernels import Block, LayerInputs, WeightRows
from fsdgraph.metrics import WorkerMetrics, counted, precount_report
from fsdgraph.plan import INPUT, WorkerShard
from fsdgraph.serialize import pack
from fsdgraph.transport import ObjectStore, check_invoke_payload


def handler(event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
    """Function entry point: run one worker to completion."""
    return asyncio.run(run_worker(event))


async def run_worker(raw_event: Mapping[str, Any]) -> dict[str, Any]:
    """Attach, invoke children, run the layers; always report the outcome to the scheduler."""
    from fsdgraph.backends import get_backend  # late: backends import this module's peers

    launched_at = time.time()
    event = WorkerEvent.from_json(raw_event)
    names = event.names
    metrics = WorkerMetrics(event.worker)
    backend_cls = get_backend(event.backend)
    async with backend_cls.attach(event.backend_config, names) as raw_services:
        services = counted(raw_services, metrics)
        reporter = Reporter(services.control, event.worker, interval_s=event.progress_interval_s,
                            launched_at=launched_at)
        heartbeat: asyncio.Future[None] | None = None
        try:
            # Claim this worker first: an invocation event can be delivered twice, and a second
            # copy must neither start the subtree again nor compete for the worker's messages.
            if not await services.objects.put_if_absent(names.claim_key(event.worker),
                                                        str(launched_at).encode()):
                await reporter.report("duplicate", 0, "a second invocation of this worker "
                                      "found it running and exited")
                return {"worker": event.worker, "status": "duplicate"}
            heartbeat = asyncio.ensure_future(reporter.heartbeat())
            for child in event.children:
                payload = event.child(child).to_json()
                check_invoke_payload(payload, services.limits)
                await services.functions.invoke(payload)
            runtime = WorkerRuntime(services, event, metrics)
            async for layer in runtime.layers():
                reporter.layers_done = layer + 1
            heartbeat.cancel()
            # The output carries the metrics, so its own PUT and the final status are counted
            # before they happen and sent uncounted.
            metrics.request("put")
            precount_report(raw_services.control, metrics)
            await runtime.write_output(raw_services.objects)
            final = Reporter(raw_services.control, event.worker, launched_at=launched_at)
            await final.report("done", runtime.layer_count)
            return {"worker": event.worker, "status": "done"}
        except Exception as exc:
            if heartbeat is not None:
                heartbeat.cancel()
            where = getattr(exc, "layer", None)
            await reporter.report("error", reporter.layers_done if where is None else where,
                                  f"{type(exc).__name__}: {exc}",
                                  "" if isinstance(exc, FsdError) else traceback.format_exc(),
                                  type(exc).__name__)
            raise
        finally:  # whatever ends this worker (even a BaseException) ends its heartbeat
            if heartbeat is not None:
                heartbeat.cancel()


class WorkerRuntime:
    """The layer loop of one worker (see the module docstring)."""

    def __init__(self, services: Services, event: WorkerEvent, metrics: WorkerMetrics) -> None:
        self.services = services
        self.names = event.names
        self.worker = event.worker
        self.batch = event.batch
        self.metrics = metrics
        config = ChannelConfig(**event.channel_config)
        self.codec = config.codec()
        channel_cls = get_channel(event.channel)
        self.channel: Channel = channel_cls(WorkerContext(
            services, self.names, self.worker, event.workers, config, metrics, self.codec))
        self.output: Block | None = None
        self.shard: WorkerShard | None = None

    @property
    def layer_count(self) -> int:
        return len(self.shard.layers) if self.shard else 0

    async def _load(self) -> tuple[WorkerShard, Block]:
        objects = self.services.objects
        shard_bytes, input_bytes = await asyncio.gather(
            objects.get(self.names.shard_key(self.worker)),
            objects.get(self.names.input_key(self.worker)))
        shard = WorkerShard.from_bytes(shard_bytes)
        return shard, self.codec.decode(input_bytes).block

    async def layers(self) -> Any:
        """Run every layer; yields the index of each layer once it is done."""
        shard, prev = await self._load()
        self.shard = shard
        hook = self.services.layer_hook
        for l, (spec, ls) in enumerate(zip(shard.specs, shard.layers, strict=True)):
            if hook is not None:
                hook(self.worker, l)
            m = self.metrics.begin_layer(l)
            sending = asyncio.ensure_future(self.channel.send(
                l, [(s.dst, prev.select_columns(s.columns)) for s in ls.sends]))
            await asyncio.sleep(0)  # let the sends leave before computing
            start = time.perf_counter()
            inputs = LayerInputs(self.batch, WeightRows(ls.weight))
            if not spec.bias_on_nonzero:
                inputs.touch_all()
            positions = {r.src: r.positions for r in ls.sources}
            remote = [r.src for r in ls.sources if r.src not in (INPUT, self.worker)]
            if INPUT in positions:
                inputs.add(prev, positions[INPUT])
            elif self.worker in positions:
                mine = positions[self.worker]
                own_cols = np.searchsorted(shard.layers[l - 1].out_cols, ls.inputs[mine])
                inputs.add(prev.select_columns(own_cols), mine)
            m.compute_s += time.perf_counter() - start
            await sending  # a failed send must fail this worker now, not after a peer timeout
            async for src, chunk in self.channel.receive(l, remote):
                cols = positions[src][chunk.col0:chunk.col0 + chunk.block.ncols]
                inputs.add(chunk.block, cols)
            start = time.perf_counter()
            prev = inputs.finish(ls.bias, bias_on_nonzero=spec.bias_on_nonzero, relu=spec.relu,
                                 cap=spec.cap)
            m.compute_s += time.perf_counter() - start
            yield l
        self.metrics.end_layers()
        self.output = prev

    async def write_output(self, objects: ObjectStore) -> None:
        """Put the final columns and the metrics (through ``objects``)."""
        if self.output is None or self.shard is None:
            raise RunError(f"worker {self.worker}: no output to write", worker=self.worker)
        body = pack({"block": self.codec.encode(self.output),
                     "columns": self.shard.layers[-1].out_cols,
                     "metrics": self.metrics.to_dict()})
        await objects.put(self.names.output_key(self.worker), body)
        await self.channel.close()
