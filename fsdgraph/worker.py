"""The worker runtime: what one function invocation does.

:func:`handler` is the function entry point (Lambda-shaped: ``handler(event, context)``). A
worker

1. attaches to its backend's services from the event and claims its attempt (an atomic create
   of ``runs/<run>/claim/<worker>/<attempt>``: a duplicated invocation event finds the claim,
   reports ``duplicate`` and exits, as does an attempt a relaunch has replaced); then invokes its
   children in the invocation tree (:mod:`fsdgraph.tree`) before anything else, so the tree fans
   out fast (a relaunch or a continuation does not: they run already);
2. downloads only its own plan shard and input columns (or, resuming, its latest checkpoint);
3. per layer: sends each peer the activation rows it needs (started first, so peers are not kept
   waiting), places its own columns and then each peer chunk, as it arrives, into
   :class:`~fsdgraph.kernels.LayerInputs`, and runs the fused product + bias/ReLU/cap; every
   ``checkpoint_every`` layers it checkpoints its output, and near its function's time limit it
   checkpoints and invokes its continuation (docs/protocol.md, "Checkpoints, relaunch and
   continuation");
4. writes its final columns and metrics to the object store and reports ``done`` — or, on any
   failure, reports ``error`` with the traceback so the scheduler can raise it.

Everything it reads and writes in the object store is sealed (:mod:`fsdgraph.sealed`).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np

from fsdgraph.backend import Services
from fsdgraph.channels import Channel, ChannelConfig, WorkerContext, get_channel
from fsdgraph.checkpoints import read_attempt
from fsdgraph.codec import output_parts, read_input
from fsdgraph.control import Reporter
from fsdgraph.errors import FsdError, NotFound, ProtocolError, RunError
from fsdgraph.event import WorkerEvent
from fsdgraph.integrity import checksum
from fsdgraph.kernels import Block, LayerInputs, WeightRows
from fsdgraph.kernels.choice import kernel_from_env, preload
from fsdgraph.metrics import WorkerMetrics, counted, precount_report
from fsdgraph.model_worker import ModelRuntime
from fsdgraph.plan import INPUT, WorkerShard
from fsdgraph.plugins import installed
from fsdgraph.sealed import seal, unseal, unseal_parts
from fsdgraph.transport import ObjectStore, check_invoke_payload

#: Seconds kept in hand, near a function's time limit, to checkpoint and invoke the
#: continuation.
HAND_OVER_MARGIN_S = 1.0


def handler(event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
    """Function entry point: run one worker to completion (or to its continuation)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    limit_s = remaining() / 1000 if callable(remaining) else None
    return asyncio.run(run_worker(event, limit_s))


async def run_worker(raw_event: Mapping[str, Any],
                     time_left_s: float | None = None) -> dict[str, Any]:
    """Attach, invoke children, run the layers; always report the outcome to the scheduler.

    ``time_left_s`` is how long this function may still run (Lambda's context says); by default
    the event's ``time_limit_s`` from now, if it has one.
    """
    from fsdgraph.backends import get_backend  # late: backends import this module's peers

    launched_at = time.time()
    event = WorkerEvent.from_json(raw_event)
    if time_left_s is None and event.time_limit_s > 0:
        time_left_s = event.time_limit_s
    deadline = time.monotonic() + time_left_s if time_left_s else None
    names = event.names
    metrics = WorkerMetrics(event.worker)
    backend_cls = get_backend(event.backend)
    async with backend_cls.attach(event.backend_config, names) as raw_services:
        services = counted(raw_services, metrics)
        reporter = Reporter(services.control, event.worker, interval_s=event.progress_interval_s,
                            launched_at=launched_at, attempt=event.attempt)
        heartbeat: asyncio.Future[None] | None = None
        try:
            # Claim this attempt first: an invocation event can be delivered twice, and a second
            # copy must neither start the subtree again nor compete for the worker's messages.
            # An attempt the scheduler has replaced (a relaunch) stops too.
            claimed = await services.objects.put_if_absent(
                names.claim_key(event.worker, event.attempt), str(launched_at).encode())
            if not claimed or await superseded(services, event):
                await reporter.report("duplicate", 0, "a second invocation of this worker, or "
                                      "one the scheduler replaced, found it running and exited")
                return {"worker": event.worker, "status": "duplicate"}
            heartbeat = asyncio.ensure_future(reporter.heartbeat())
            if event.invoke_children:
                for child in event.children:
                    payload = event.child(child).to_json()
                    check_invoke_payload(payload, services.limits)
                    await services.functions.invoke(payload)
            runtime: WorkerRuntime | ModelRuntime = (
                ModelRuntime(services, event, metrics) if event.kind == "model"
                else WorkerRuntime(services, event, metrics, deadline))
            async for layer in runtime.layers():
                reporter.layers_done = layer + 1
            heartbeat.cancel()
            if isinstance(runtime, WorkerRuntime) and runtime.continued_after is not None:
                await runtime.channel.close()
                await reporter.report("continued", runtime.continued_after + 1,
                                      f"near the function's time limit: attempt "
                                      f"{event.attempt + 1} carries on")
                return {"worker": event.worker, "status": "continued"}
            # The output carries the metrics, so its own PUT and the final status are counted
            # before they happen and sent uncounted.
            metrics.request("put")
            precount_report(raw_services.control, metrics)
            await runtime.write_output(raw_services.objects)
            final = Reporter(raw_services.control, event.worker, launched_at=launched_at,
                             attempt=event.attempt)
            await final.report("done", runtime.layer_count)
            return {"worker": event.worker, "status": "done"}
        except Superseded as exc:
            await reporter.report("duplicate", 0, str(exc))
            return {"worker": event.worker, "status": "duplicate"}
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


class Superseded(FsdError):
    """This attempt of a worker was replaced by a relaunch: it reports ``duplicate`` and stops."""


async def superseded(services: Services, event: WorkerEvent) -> bool:
    """Whether the scheduler has relaunched this worker as a later attempt than ``event``'s."""
    try:
        body = await services.objects.get(event.names.attempt_key(event.worker))
    except NotFound:
        return False
    latest = read_attempt(event.names, event.worker, body)
    return latest is not None and latest > event.attempt


class WorkerRuntime:
    """The layer loop of one worker (see the module docstring)."""

    def __init__(self, services: Services, event: WorkerEvent, metrics: WorkerMetrics,
                 deadline: float | None = None) -> None:
        self.services = services
        self.event = event
        self.names = event.names
        self.worker = event.worker
        self.batch = event.batch
        self.metrics = metrics
        self.deadline = deadline  #: time.monotonic() by which this function must be gone
        #: The layer after which this attempt handed over to its continuation, if it did.
        self.continued_after: int | None = None
        config = ChannelConfig(**event.channel_config)
        self.codec = config.codec()
        channel_cls = get_channel(event.channel)
        self.channel: Channel = channel_cls(WorkerContext(
            services, self.names, self.worker, event.workers, config, metrics, self.codec))
        # With relaunches possible, received data is deleted only once a checkpoint has made it
        # unnecessary, so that a relaunch from that checkpoint finds it again. (A continuation
        # needs no held messages: the chunks it needs travel in its hand-over checkpoint.)
        self.channel.hold_until_durable = bool(event.checkpoint_every)
        #: Longest a received message stays undeleted: past the visibility timeout the queue
        #: would deliver it again, and a queue full of held messages slows every receive.
        self.hold_limit_s = config.visibility_timeout_s / 2
        self.output: Block | None = None
        self.shard: WorkerShard | None = None
        self.kernel = kernel_from_env(event.kernel or None, event.kernel_threads or None)
        metrics.kernel, metrics.kernel_threads = self.kernel.name, self.kernel.threads

    @property
    def layer_count(self) -> int:
        return len(self.shard.layers) if self.shard else 0

    async def _load(self) -> tuple[WorkerShard, Block, int]:
        """The shard, the activations to start from and the first layer to run: the input
        columns and layer 0, or, resuming, the latest checkpoint and the layer after it."""
        objects, names = self.services.objects, self.names
        # The replicas of a group share its shards: this worker's is its group position's.
        group = self.event.group or self.event.workers
        position = self.worker % group
        shard_key, input_key = names.shard_key(position), names.input_key(self.worker)
        # A first attempt needs both objects: read them at once (a large one is read from a
        # thread). A resumed one reads its input only if it has no checkpoint.
        shard_body, input_body = await asyncio.gather(
            objects.get(shard_key),
            objects.get(input_key) if not self.event.resume else asyncio.sleep(0, b""))
        shard = WorkerShard.from_parts(unseal_parts(names, shard_key, shard_body), shard_key)
        if shard.worker != position or shard.workers != group:
            raise ProtocolError(f"object {shard_key}: the shard of worker {shard.worker} of "
                                f"{shard.workers}, expected {position} of {group}")
        shard = shard.rebased(self.worker - position)
        if self.event.resume:
            latest = await self._latest_checkpoint()
            if latest is not None:
                layer, block = latest
                return shard, block, layer + 1
            input_body = await objects.get(input_key)
        parts = unseal_parts(names, input_key, input_body)
        return shard, read_input(input_key, parts, self.batch), 0

    async def _latest_checkpoint(self) -> tuple[int, Block] | None:
        """The latest checkpoint that verifies: its layer and output; the chunks a predecessor
        handed over with it go back into the channel's inbox."""
        keys = sorted(await self.services.objects.list(self.names.checkpoint_prefix(self.worker)))
        for key in reversed(keys):
            parts = unseal(self.names, key, await self.services.objects.get(key))
            if parts is not None and len(parts) in (1, 2):
                if len(parts) == 2:
                    self._restore(key, parts[1][0])
                return int(key.rsplit("/", 1)[1]), self.codec.decode(parts[0][0]).block
            self.metrics.current.unauthenticated_dropped += 1  # try the one before
        return None

    def _restore(self, key: str, data: bytes) -> None:
        """Offer the chunks a predecessor had received early (``Inbox.export``) again."""
        try:
            items = msgpack.unpackb(data, raw=False)
            for layer, src, index, count, digest, payload in items:
                if digest != checksum(payload if count else b""):
                    raise ValueError(f"chunk {index} of layer {layer} from worker {src}")
                self.channel.inbox.offer(layer, src, index, count, payload, digest)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"checkpoint {key}: malformed chunks handed over: {exc}") from exc

    async def _checkpoint(self, layer: int, output: Block, handing_over: bool = False) -> None:
        """Make ``output`` (after ``layer``) durable, then let go of the data it consumed.
        Handing over, the chunks of later layers already received go with it (their messages
        stay invisible to the continuation until the visibility timeout)."""
        if await superseded(self.services, self.event):
            raise Superseded(f"worker {self.worker} attempt {self.event.attempt} was replaced "
                             f"by a relaunch; it stops at layer {layer}")
        key = self.names.checkpoint_key(self.worker, layer)
        parts = [self.codec.encode(output)]
        if handing_over:
            parts.append(bytes(msgpack.packb(self.channel.inbox.export(layer),
                                             use_bin_type=True)))
        await self.services.objects.put(key, seal(self.names, key, parts))
        self.metrics.current.checkpoints += 1
        await self.channel.durable(layer)

    def _near_limit(self, layer_s: float) -> bool:
        """Whether to stop after this layer and continue in a new invocation: the time left is
        less than four of the slowest layers so far plus a margin for the checkpoint."""
        if self.deadline is None:
            return False
        return self.deadline - time.monotonic() < 4 * layer_s + HAND_OVER_MARGIN_S

    async def layers(self) -> Any:
        """Run every layer; yields the index of each layer once it is done."""
        shard, prev, first = await self._load()
        self.shard = shard
        # Each weight shard in the layouts the kernels read, prepared once at load (only for the
        # layers this attempt runs).
        weights = {l: WeightRows(ls.weight) for l, ls in enumerate(shard.layers) if l >= first}
        hook = self.services.layer_hook
        every = self.event.checkpoint_every
        slowest = 0.0
        durable_at = time.monotonic()  # nothing received is held before this
        for l, (spec, ls) in enumerate(zip(shard.specs, shard.layers, strict=True)):
            if l < first:
                continue
            began = time.monotonic()
            if hook is not None and self.event.attempt == 0:  # faults strike the first attempt
                hook(self.worker, l)
            m = self.metrics.begin_layer(l)
            sending = asyncio.ensure_future(self.channel.send(
                l, [(s.dst, prev.select_columns(s.columns)) for s in ls.sends]))
            await asyncio.sleep(0)  # let the sends leave before computing
            start = time.perf_counter()
            inputs = LayerInputs(self.batch, weights[l], self.kernel)
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
            receiving = self._receive(l, remote, positions, inputs)
            if self.deadline is None or l == first:  # each attempt completes a layer at least
                await receiving
            else:
                # Waiting for peers must not outlast the function: near its limit, hand over
                # from the previous layer's output, with what this layer has received so far.
                try:
                    await asyncio.wait_for(
                        receiving, self.deadline - HAND_OVER_MARGIN_S - time.monotonic())
                except TimeoutError:
                    await self._hand_over(l - 1, prev)
                    return
            start = time.perf_counter()
            prev = inputs.finish(ls.bias, bias_on_nonzero=spec.bias_on_nonzero, relu=spec.relu,
                                 cap=spec.cap)
            m.compute_s += time.perf_counter() - start
            yield l
            slowest = max(slowest, time.monotonic() - began)
            last = l == len(shard.layers) - 1
            if not last and self._near_limit(slowest):
                await self._hand_over(l, prev)
                return
            # Every ``every`` layers, and sooner once what was received since the last
            # checkpoint has been held for ``hold_limit_s`` (layers slower than planned).
            held_too_long = time.monotonic() - durable_at > self.hold_limit_s
            if every and not last and ((l + 1) % every == 0 or held_too_long):
                await self._checkpoint(l, prev)
                durable_at = time.monotonic()
        self.metrics.end_layers()
        self.output = prev

    async def _receive(self, layer: int, remote: list[int], positions: dict[int, np.ndarray],
                       inputs: LayerInputs) -> None:
        """Place every peer chunk of ``layer`` into ``inputs`` as it arrives."""
        async for src, chunk in self.channel.receive(layer, remote):
            cols = positions[src][chunk.col0:chunk.col0 + chunk.block.ncols]
            inputs.add(chunk.block, cols)

    async def _hand_over(self, layer: int, output: Block) -> None:
        """Checkpoint ``output`` (after ``layer``) with what has been received since, and invoke
        the next attempt of this worker to resume there; this attempt's layers end."""
        await self._checkpoint(layer, output, handing_over=True)
        event = replace(self.event, attempt=self.event.attempt + 1, resume=True,
                        invoke_children=False)
        payload = event.to_json()
        check_invoke_payload(payload, self.services.limits)
        await self.services.functions.invoke(payload)
        self.continued_after = layer
        self.metrics.end_layers()

    async def write_output(self, objects: ObjectStore) -> None:
        """Put the final columns and the metrics (through ``objects``)."""
        if self.output is None or self.shard is None:
            raise RunError(f"worker {self.worker}: no output to write", worker=self.worker)
        parts = output_parts(self.output, self.shard.layers[-1].out_cols,
                             self.metrics.to_dict())
        key = self.names.output_key(self.worker)
        await objects.put(key, seal(self.names, key, parts))
        await self.channel.close()


# The compiled kernel is loaded, and the installed plugins read, at import: in Lambda's init
# phase, and once in a local launcher or Lambda zygote before it forks the workers, not in every
# worker's first layer.
preload()
for _group in ("fsdgraph.backends", "fsdgraph.channels"):
    installed(_group)
