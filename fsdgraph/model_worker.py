"""What one worker of an op-level model run does (:mod:`fsdgraph.model_plan`): read its program
and its replica's rows of the inputs, execute the program one instruction at a time (one
progress step each), write what it holds of the outputs.

A data-parallel program only computes; a tensor-parallel one also exchanges through the run's
channel (:mod:`fsdgraph.collectives`), one channel step per collective. A value no later
instruction or output reads is dropped as soon as it is used, so a worker's memory holds its
share of the weights and the live activations only.

It offers the :class:`fsdgraph.worker.WorkerRuntime` interface :func:`fsdgraph.worker.run_worker`
drives: ``layers()``, ``layer_count``, ``continued_after`` and ``write_output``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np

from fsdgraph.backend import Services
from fsdgraph.channels import get_channel
from fsdgraph.channels.base import Channel, ChannelConfig, WorkerContext
from fsdgraph.collectives import all_gather, all_reduce_rows, reduce_scatter
from fsdgraph.errors import RunError
from fsdgraph.event import WorkerEvent
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.model_lowering import Instruction
from fsdgraph.model_plan import Program, output_parts, read_inputs, read_program
from fsdgraph.plan import row_slices
from fsdgraph.resources import RunNames
from fsdgraph.sealed import ALIGN, seal, unseal_parts
from fsdgraph.transport import ObjectStore

_EXCHANGES = ("all_gather", "reduce_scatter", "layer_norm", "softmax")


class ModelRuntime:
    """One worker's program of an op-level model."""

    #: A model worker never hands over to a continuation.
    continued_after: int | None = None

    def __init__(self, services: Services, event: WorkerEvent, metrics: WorkerMetrics) -> None:
        self.services = services
        self.event = event
        self.names = event.names
        self.metrics = metrics
        self.program: Program | None = None
        self.rows = (0, 0)
        self.outputs: dict[str, np.ndarray] = {}
        self.cols: dict[str, tuple[int, int]] = {}
        self.channel: Channel | None = None

    @property
    def layer_count(self) -> int:
        return len(self.program.instructions) if self.program else 0

    def _channel(self) -> Channel:
        if self.channel is None:
            event = self.event
            config = ChannelConfig(**event.channel_config)
            self.channel = get_channel(event.channel)(WorkerContext(
                self.services, self.names, event.worker, event.workers, config, self.metrics,
                config.codec()))
        return self.channel

    async def layers(self) -> AsyncIterator[int]:
        """Execute every instruction; yields the index of each once it is done."""
        objects, names, event = self.services.objects, self.names, self.event
        group = event.group or event.workers
        program_key = names.shard_key(event.worker % group)
        input_key = names.input_key(event.worker // group)
        program_body, input_body = await asyncio.gather(objects.get(program_key),
                                                        objects.get(input_key))
        # Verifying and decoding a program of several GB takes seconds: off the event loop, so
        # that the heartbeat keeps telling the scheduler this worker is alive.
        program, self.rows, inputs = await asyncio.to_thread(
            _decode, self.names, program_key, program_body, input_key, input_body)
        del program_body, input_body  # the arrays are views of them: they live on in those
        self.program = program
        values: dict[str, np.ndarray] = {f"{name}@full": x for name, x in inputs.items()}
        del inputs
        last_use = _last_uses(program)
        try:
            for i, instruction in enumerate(program.instructions):
                m = self.metrics.begin_layer(i)
                start = time.perf_counter()
                values[instruction["out"]] = await self._execute(instruction, values)
                for src in _sources(instruction):
                    if last_use.get(src) == i:
                        values.pop(src, None)
                m.compute_s += time.perf_counter() - start - m.wait_s - m.codec_s
                yield i
        finally:
            if self.channel is not None:
                await self.channel.close()
        self.metrics.end_layers()
        batch = self.rows[1] - self.rows[0]
        for name, key in program.outputs.items():
            width = program.widths[name]
            if key.endswith("@full"):  # whole on every worker: worker 0 writes it
                self.cols[name] = (0, width) if event.worker % group == 0 else (0, 0)
                y = values[key] if event.worker % group == 0 else np.zeros((batch, 0))
            else:
                self.cols[name] = row_slices(width, group)[event.worker % group]
                y = values[key]
            self.outputs[name] = np.ascontiguousarray(y, dtype=np.float32)

    async def _execute(self, instruction: Instruction,
                       values: Mapping[str, np.ndarray]) -> np.ndarray:
        do = instruction["do"]
        if do == "op":
            # In a thread: an op on large blocks runs for seconds (BLAS and numpy let go of the
            # GIL), and the event loop must go on sending this worker's heartbeats meanwhile.
            op, xs = instruction["op"], [values[k] for k in instruction["inputs"]]
            return np.asarray(await asyncio.to_thread(op.apply, *xs))
        x = values[instruction["src"]]
        if do == "slice":
            lo, hi = instruction["cols"]
            return np.ascontiguousarray(x[:, lo:hi])
        channel = self._channel()
        if do == "all_gather":
            return await all_gather(channel, instruction["step"], x, instruction["bounds"])
        if do == "reduce_scatter":
            return await reduce_scatter(channel, instruction["step"], x, instruction["bounds"],
                                        instruction["bias"])
        first, second = instruction["steps"]
        width = instruction["width"]
        x64 = x.astype(np.float64)
        if do == "layer_norm":
            mean = (await all_reduce_rows(channel, first, x64.sum(axis=1)) / width)[:, None]
            centred = x64 - mean
            var = await all_reduce_rows(channel, second, (centred * centred).sum(axis=1))
            y = centred / np.sqrt(var / width + instruction["epsilon"])[:, None]
            return np.ascontiguousarray(y * instruction["scale"] + instruction["bias"],
                                        dtype=np.float32)
        # softmax
        top = await all_reduce_rows(channel, first, x64.max(axis=1, initial=-np.inf),
                                    np.maximum)
        e = np.exp(x64 - top[:, None])
        total = await all_reduce_rows(channel, second, e.sum(axis=1))
        return np.ascontiguousarray(e / total[:, None], dtype=np.float32)

    async def write_output(self, objects: ObjectStore) -> None:
        """Put this worker's share of every output and the metrics (through ``objects``)."""
        if self.program is None:
            raise RunError(f"worker {self.event.worker}: no output to write",
                           worker=self.event.worker)
        key = self.names.output_key(self.event.worker)
        parts = output_parts(self.rows, self.outputs, self.cols, self.metrics.to_dict())
        await objects.put(key, seal(self.names, key, parts, align=ALIGN))


def _decode(names: RunNames, program_key: str, program_body: bytes, input_key: str,
            input_body: bytes) -> tuple[Program, tuple[int, int], dict[str, np.ndarray]]:
    program = read_program(program_key, unseal_parts(names, program_key, program_body))
    rows, inputs = read_inputs(input_key, unseal_parts(names, input_key, input_body),
                               program.inputs)
    return program, rows, inputs


def _sources(instruction: Instruction) -> list[str]:
    return list(instruction["inputs"]) if instruction["do"] == "op" else [instruction["src"]]


def _last_uses(program: Program) -> dict[str, Any]:
    """Each value's last reader (an instruction index); the outputs are never dropped."""
    last: dict[str, Any] = {}
    for i, instruction in enumerate(program.instructions):
        for src in _sources(instruction):
            last[src] = i
    for key in program.outputs.values():
        last[key] = None
    return last

