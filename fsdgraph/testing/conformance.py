"""Conformance suites for backend and channel plugins: a few lines of pytest run them.

Subclass a suite in a test module, give it a ``backend`` fixture and say which channels it
carries; pytest collects the inherited ``test_*`` methods::

    import pytest
    from fsdgraph.backends.inproc import InProcBackend
    from fsdgraph.testing.conformance import BackendSuite, ChannelExchangeSuite, ControlPlaneSuite

    class TestInProc(BackendSuite, ControlPlaneSuite, ChannelExchangeSuite):
        channels = ("object",)        # what the backend carries
        refused_channels = ("queue",)  # what it must refuse before a run starts

        @pytest.fixture
        def backend(self):
            return InProcBackend()

What is checked:

* :class:`ControlPlaneSuite` — a status reported by a worker (through ``Backend.attach``)
  reaches the scheduler whole; a poll with nothing to say returns an empty list; statuses of many
  workers all arrive; two runs never see each other's statuses.
* :class:`ChannelExchangeSuite`, for every channel in ``channels`` — blocks sent to peers arrive
  whole, once, empty markers included; a later layer's chunks wait for their layer; a source that
  never sends fails the receiver with :class:`~fsdgraph.errors.RunTimeout` naming it; two runs'
  chunks do not mix.
* :class:`BackendSuite` — a worker attached from ``Services.description`` sees the session's
  objects; a distributed run equals the serial reference bit for bit on every channel, and an
  op-level model split by features (its collectives over the channel) equals the serial
  evaluator to float32 rounding; a worker
  that fails fails the run with an error naming it; a channel the backend cannot carry is refused
  with an error naming both.

The transports' own contracts (an S3-like object store, an SNS+SQS-like message service) have
their suites in :mod:`fsdgraph.testing.transports`. This module needs pytest (the ``test``
extra); the runtime never imports it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar, TypeVar

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backend import Backend, Services
from fsdgraph.channels import Channel, ChannelConfig, WorkerContext, get_channel
from fsdgraph.codec import BlockCodec
from fsdgraph.control import Status
from fsdgraph.errors import ConfigError, RunError, RunTimeout
from fsdgraph.kernels import Block
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.plan import Plan
from fsdgraph.resources import RunNames
from fsdgraph.scheduler import RunConfig, Scheduler

T = TypeVar("T")

#: Short deadlines, so a failing check fails fast rather than hanging.
FAST = ChannelConfig(peer_timeout_s=20.0, poll_wait_s=0.05, visibility_timeout_s=5.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a fresh event loop (no pytest-asyncio needed)."""
    return asyncio.run(coro)


def new_names(backend: Backend) -> RunNames:
    return RunNames(uuid.uuid4().hex[:12], backend.namespace)


#: Rows of the activation matrices the exchange checks send (global row ids are below it).
BATCH = 16


def block(rows: list[int], cols: int, seed: int) -> Block:
    """A small block of nonzero integer values (exact in float32)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 9, size=(len(rows), cols)).astype(np.float32)
    return Block.from_csr(np.asarray(rows, np.int32), sp.csr_matrix(values))


@asynccontextmanager
async def open_channels(backend: Backend, channel: type[Channel], workers: int,
                        config: ChannelConfig = FAST,
                        names: RunNames | None = None) -> AsyncIterator[list[Channel]]:
    """A run's channel resources on a fresh session of ``backend``, and one channel per worker,
    each on its own attached services (as separate functions would have)."""
    names = names or new_names(backend)
    config = channel.prepare(config, backend.prices())
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(backend.session(names))
        missing = channel.missing_services(services)
        if missing:
            pytest.fail(f"channel {channel.name!r} needs {missing}, which the backend lacks")
        await channel.create_resources(services, names, workers, config)
        stack.push_async_callback(channel.delete_resources, services, names, workers, config)
        chans = []
        for w in range(workers):
            attached = await stack.enter_async_context(
                type(backend).attach(services.description, names))
            chan = channel(WorkerContext(attached, names, w, workers, config, WorkerMetrics(w),
                                         BlockCodec()))
            stack.push_async_callback(chan.close)
            chans.append(chan)
        yield chans


async def receive_all(chan: Channel, layer: int, sources: list[int]) -> dict[int, np.ndarray]:
    """Every chunk of ``layer`` from ``sources``, each source's chunks added into one dense
    (:data:`BATCH` x columns) array: a chunk kept twice doubles its values, one lost zeroes them."""
    got: dict[int, np.ndarray] = {}
    async for src, chunk in chan.receive(layer, sources):
        part = chunk.block.to_matrix(BATCH).toarray()
        width = chunk.col0 + part.shape[1]
        acc = got.setdefault(src, np.zeros((BATCH, width), np.float32))
        if acc.shape[1] < width:
            acc = got[src] = np.pad(acc, ((0, 0), (0, width - acc.shape[1])))
        acc[:, chunk.col0:width] += part
    return got


def rows_of(dense: np.ndarray | None) -> list[int]:
    return [] if dense is None else [int(r) for r in np.flatnonzero(dense.any(axis=1))]


class _Suite:
    """What every suite needs from the plugin's test class."""

    channels: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture
    def backend(self) -> Backend:  # pragma: no cover - the plugin's test class overrides it
        raise NotImplementedError("define a `backend` fixture returning the Backend to test")


class ControlPlaneSuite(_Suite):
    """The control plane: statuses from workers to the scheduler."""

    def test_a_status_reaches_the_scheduler_whole(self, backend: Backend) -> None:
        sent = Status("error", worker=2, layer=7, message="RunError: boom",
                      details="Traceback ...\nline 3", launched_at=12.5, error_type="RunError")

        async def main() -> list[Status]:
            names = new_names(backend)
            async with backend.session(names) as services:
                await services.control.create()
                try:
                    async with type(backend).attach(services.description, names) as worker:
                        await worker.control.report(sent)
                    return await _poll_until(services, 1)
                finally:
                    await services.control.delete()

        assert run(main()) == [sent]

    def test_an_idle_poll_returns_nothing(self, backend: Backend) -> None:
        async def main() -> list[Status]:
            names = new_names(backend)
            async with backend.session(names) as services:
                await services.control.create()
                try:
                    return await services.control.poll(wait_s=0.05)
                finally:
                    await services.control.delete()

        assert run(main()) == []

    def test_statuses_of_many_workers_all_arrive(self, backend: Backend) -> None:
        async def main() -> set[tuple[int, int]]:
            names = new_names(backend)
            async with backend.session(names) as services:
                await services.control.create()
                try:
                    async with type(backend).attach(services.description, names) as worker:
                        await asyncio.gather(*(
                            worker.control.report(Status("progress", worker=w, layer=layer))
                            for w in range(8) for layer in range(3)))
                    got = await _poll_until(services, 24)
                    return {(s.worker, s.layer) for s in got}
                finally:
                    await services.control.delete()

        assert run(main()) == {(w, layer) for w in range(8) for layer in range(3)}

    def test_two_runs_never_see_each_others_statuses(self, backend: Backend) -> None:
        async def main() -> tuple[list[Status], list[Status]]:
            a, b = new_names(backend), new_names(backend)
            async with backend.session(a) as sa, backend.session(b) as sb:
                await sa.control.create()
                await sb.control.create()
                try:
                    async with type(backend).attach(sa.description, a) as wa, \
                            type(backend).attach(sb.description, b) as wb:
                        await wa.control.report(Status("done", worker=0, layer=1))
                        await wb.control.report(Status("done", worker=1, layer=2))
                    return await _poll_until(sa, 1), await _poll_until(sb, 1)
                finally:
                    await sa.control.delete()
                    await sb.control.delete()

        got_a, got_b = run(main())
        assert [(s.worker, s.layer) for s in got_a] == [(0, 1)]
        assert [(s.worker, s.layer) for s in got_b] == [(1, 2)]


async def _poll_until(services: Services, count: int, polls: int = 200) -> list[Status]:
    """Poll until ``count`` distinct statuses arrived (at-least-once: duplicates are folded), and
    then once more, so that a status delivered to the wrong run would be seen."""
    seen: list[Status] = []
    for _ in range(polls):
        for status in await services.control.poll(wait_s=0.1):
            if status not in seen:
                seen.append(status)
        if len(seen) >= count:
            for status in await services.control.poll(wait_s=0.05):
                if status not in seen:
                    seen.append(status)
            return seen
    pytest.fail(f"only {len(seen)} of {count} statuses arrived after {polls} polls")


class ChannelExchangeSuite(_Suite):
    """Every channel in ``channels``, driven directly between workers of one session."""

    def test_blocks_arrive_whole_and_once(self, backend: Backend) -> None:
        sent = {(src, dst): block([src, dst + 3, 9], cols=4, seed=10 * src + dst)
                for src in range(3) for dst in range(3) if src != dst}
        sent[(2, 0)] = Block.empty(4)  # an empty edge: only the marker travels
        for name in self.channels:
            async def main(name: str = name) -> list[dict[int, np.ndarray]]:
                async with open_channels(backend, get_channel(name), 3) as chans:
                    for src, chan in enumerate(chans):
                        await chan.send(0, [(dst, b) for (s, dst), b in sent.items() if s == src])
                    return list(await asyncio.gather(*(
                        receive_all(chan, 0, [s for s in range(3) if s != dst])
                        for dst, chan in enumerate(chans))))

            received = run(main())
            for dst, by_src in enumerate(received):
                for src in range(3):
                    if src == dst:
                        continue
                    expect = sent[(src, dst)]
                    if not len(expect.rows):
                        assert src not in by_src, f"{name}: an empty edge yielded a chunk"
                        continue
                    np.testing.assert_array_equal(
                        by_src.get(src), expect.to_matrix(BATCH).toarray(),
                        err_msg=f"{name}: edge {src} -> {dst} arrived altered, lost or twice")

    def test_a_later_layer_waits_for_its_layer(self, backend: Backend) -> None:
        for name in self.channels:
            async def main(name: str = name) -> tuple[list[int], list[int]]:
                async with open_channels(backend, get_channel(name), 2) as (c0, c1):
                    await c0.send(1, [(1, block([5], 2, seed=1))])
                    await c0.send(0, [(1, block([4], 2, seed=2))])
                    first = await receive_all(c1, 0, [0])
                    second = await receive_all(c1, 1, [0])
                    return rows_of(first.get(0)), rows_of(second.get(0))

            assert run(main()) == ([4], [5]), name

    def test_a_silent_source_times_out_by_name(self, backend: Backend) -> None:
        config = ChannelConfig(peer_timeout_s=0.5, poll_wait_s=0.05)
        for name in self.channels:
            async def main(name: str = name) -> None:
                async with open_channels(backend, get_channel(name), 3, config) as chans:
                    await chans[0].send(0, [(1, block([1], 2, seed=3))])
                    await receive_all(chans[1], 0, [0, 2])

            with pytest.raises(RunTimeout, match=r"worker 1 layer 0: nothing new from \[2\]"):
                run(main())

    def test_two_runs_chunks_do_not_mix(self, backend: Backend) -> None:
        for name in self.channels:
            async def main(name: str = name) -> tuple[list[int], list[int]]:
                cls = get_channel(name)
                async with open_channels(backend, cls, 2) as (a0, a1), \
                        open_channels(backend, cls, 2) as (b0, b1):
                    await a0.send(0, [(1, block([1], 2, seed=4))])
                    await b0.send(0, [(1, block([2], 2, seed=5))])
                    got_a, got_b = await asyncio.gather(receive_all(a1, 0, [0]),
                                                        receive_all(b1, 0, [0]))
                    return rows_of(got_a.get(0)), rows_of(got_b.get(0))

            assert run(main()) == ([1], [2]), name


def small_network(seed: int = 0) -> tuple[fsdgraph.Graph, sp.csr_matrix, sp.csr_matrix]:
    """4 layers of 96 neurons with integer weights and inputs (exact in float32), and the
    serial reference of 32 inputs."""
    rng = np.random.default_rng(seed)
    weights = []
    for _ in range(4):
        w = sp.random(96, 96, density=0.06, format="csr", dtype=np.float32, random_state=rng)
        w.data = rng.choice(np.array([-1, 1, 1, 2], np.float32), size=w.nnz)
        weights.append(w)
    graph = fsdgraph.sequential(weights, bias=-1.0, cap=32, bias_on_nonzero=True)
    inputs = sp.csr_matrix(rng.integers(0, 2, size=(32, 96)).astype(np.float32))
    return graph, inputs, fsdgraph.reference_inference(inputs, graph.layers())


def small_model(seed: int = 0) -> tuple[fsdgraph.Model, dict[str, np.ndarray]]:
    """A dense residual block (LayerNorm, Gemm, GELU, Gemm, add) and softmax head, and 20 rows:
    split by features, it needs every collective."""
    rng = np.random.default_rng(seed)
    m = fsdgraph.Model()
    x = m.input("x", 12)
    n = m.add("layer_norm", x, scale=rng.normal(size=12))
    h = m.add("gelu", m.add("gemm", n, weight=rng.normal(size=(12, 30)) / 4))
    r = m.add("add", x, m.add("gemm", h, weight=rng.normal(size=(30, 12)) / 4,
                              bias=rng.normal(size=12)))
    m.add("layer_norm", r, scale=rng.normal(size=12), name="norm")
    m.output(m.add("softmax", m.add("matmul", "norm", weight=rng.normal(size=(12, 24))),
                   name="y"))
    return m, {"x": rng.normal(size=(20, 12)).astype(np.float32)}


class _CorruptShard(Scheduler):
    """Stages garbage as worker 1's plan shard: that worker must fail, and the run with it."""

    async def _stage(self, services: Services, names: RunNames, plan: Plan,
                     y0: sp.csr_matrix) -> None:
        await super()._stage(services, names, plan, y0)
        await services.objects.put(names.shard_key(1), b"not a plan shard")


class BackendSuite(_Suite):
    """Whole runs on the backend, and what it must refuse."""

    #: Channels the backend cannot carry: a run on them must be refused before it starts.
    refused_channels: ClassVar[tuple[str, ...]] = ()

    def test_a_worker_sees_the_session_objects(self, backend: Backend) -> None:
        async def main() -> tuple[bytes, list[str], int]:
            names = new_names(backend)
            async with backend.session(names) as services:
                await services.objects.put(names.prefix + "a/1", b"one")
                await services.objects.put(names.prefix + "a/2", b"two")
                async with type(backend).attach(services.description, names) as worker:
                    got = await worker.objects.get(names.prefix + "a/1")
                    keys = await worker.objects.list(names.prefix + "a/")
                    deleted = await services.objects.delete_prefix(names.prefix)
                return got, keys, deleted

        got, keys, deleted = run(main())
        assert got == b"one"
        assert [k.rsplit("/", 2)[-2:] for k in keys] == [["a", "1"], ["a", "2"]]
        assert deleted == 2

    def test_a_run_equals_the_serial_reference(self, backend: Backend) -> None:
        graph, inputs, reference = small_network()
        plan = fsdgraph.compile(graph, workers=3, partitioner="contiguous")
        for name in self.channels:
            result = Scheduler(backend, name, RunConfig(progress=False,
                                                        channel=FAST)).run_sync(plan, inputs)
            assert (result.activations != reference).nnz == 0, f"{name}: values differ"
            assert result.report["messages_received"] == result.report["messages_sent"], name

    def test_a_model_split_by_features_equals_the_serial_evaluator(self,
                                                                   backend: Backend) -> None:
        model, inputs = small_model()
        plan = fsdgraph.compile(model, workers=3, strategy="model")
        expected = model.evaluate(inputs)["y"]
        for name in self.channels:
            result = Scheduler(backend, name, RunConfig(progress=False,
                                                        channel=FAST)).run_sync(plan, inputs)
            np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-4, atol=1e-5,
                                       err_msg=name)
            assert result.report["bytes_sent"] > 0, name

    def test_a_failing_worker_fails_the_run_by_name(self, backend: Backend) -> None:
        graph, inputs, _ = small_network()
        plan = fsdgraph.compile(graph, workers=3, partitioner="contiguous")
        config = RunConfig(progress=False, stall_timeout_s=60.0, channel=FAST)
        for name in self.channels:
            with pytest.raises(RunError, match=r"worker 1 failed at layer 0") as failed:
                _CorruptShard(backend, name, config).run_sync(plan, inputs)
            assert failed.value.worker == 1

    def test_a_channel_it_cannot_carry_is_refused(self, backend: Backend) -> None:
        graph, inputs, _ = small_network()
        plan = fsdgraph.compile(graph, workers=2)
        for name in self.refused_channels:
            with pytest.raises(ConfigError, match=rf"channel {name!r} needs .*which backend "
                                                  rf"{backend.name!r} does not provide"):
                Scheduler(backend, name, RunConfig(progress=False)).run_sync(plan, inputs)
