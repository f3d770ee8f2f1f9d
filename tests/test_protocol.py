"""The channel protocol (DESIGN.md section 4): :class:`Inbox` rules, then the real local backend
under fault injection (duplicates, reordering, small limits, foreign runs, a killed worker,
publish failures); the layout of sealed objects, and what the scheduler stages (each worker's
input columns, plan shards as raw parts).

End-to-end runs compare with :func:`fsdgraph.reference_inference`. The test network has integer
weights, an integer bias and integer inputs, and its activations stay well below the cap, so
every float32 sum is exact whatever the order chunks arrive in: the comparison cannot be masked
by rounding, and a chunk added twice (or lost) changes values instead of saturating at the cap.

Asyncio tests run through :func:`asyncio.run` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backend import Services
from fsdgraph.backends.local import LocalBackend
from fsdgraph.channels import Channel, ChannelConfig, Inbox, WorkerContext
from fsdgraph.channels.object import ObjectChannel
from fsdgraph.channels.queue import QueueChannel
from fsdgraph.codec import BlockCodec, Chunk, TextCodec
from fsdgraph.errors import FsdError, ProtocolError, RunError, RunTimeout
from fsdgraph.integrity import RunKey, checksum
from fsdgraph.kernels import Block
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.plan import Plan, WorkerShard
from fsdgraph.resources import RunNames
from fsdgraph.scheduler import Result, RunConfig, input_blocks
from fsdgraph.sealed import ALIGN, seal, unseal, unseal_parts
from fsdgraph.serialize import pack, pack_parts, unpack
from fsdgraph.sources.images import synthetic_images
from fsdgraph.transport import BatchResult, Entry, Failure, Limits

CODEC = BlockCodec()
SMALL_LIMITS = Limits(max_message_bytes=4096, max_batch_bytes=8192)


# -- Inbox -----------------------------------------------------------------------------------------
def test_inbox_drops_duplicates() -> None:
    """A chunk offered twice is kept once and taken once."""
    inbox = Inbox()
    assert inbox.offer(0, 1, 0, 2, b"a")
    assert not inbox.offer(0, 1, 0, 2, b"a")
    assert inbox.offer(0, 1, 1, 2, b"b")
    assert not inbox.offer(0, 1, 1, 2, b"b")
    assert sorted(inbox.take(0)) == [(1, b"a"), (1, b"b")]
    assert inbox.take(0) == []
    assert not inbox.offer(0, 1, 0, 2, b"a"), "a duplicate after take is still a duplicate"
    assert inbox.take(0) == []
    assert inbox.missing(0, [1]) == {}


def test_inbox_same_index_from_another_source_is_not_a_duplicate() -> None:
    """Identity is (layer, src, index): equal indices of different sources or layers are kept."""
    inbox = Inbox()
    assert inbox.offer(0, 1, 0, 1, b"from 1")
    assert inbox.offer(0, 2, 0, 1, b"from 2")
    assert inbox.offer(1, 1, 0, 1, b"next layer")
    assert sorted(inbox.take(0)) == [(1, b"from 1"), (2, b"from 2")]
    assert inbox.missing(0, [1, 2]) == {}


def test_inbox_completes_in_any_order() -> None:
    """Chunks arriving in reverse order complete the edge; ``missing`` counts what is in."""
    inbox = Inbox()
    assert inbox.missing(3, [0, 2]) == {0: "no chunk yet", 2: "no chunk yet"}
    for index in (2, 1):
        assert inbox.offer(3, 0, index, 3, bytes([index]))
    assert inbox.missing(3, [0, 2]) == {0: "2 of 3 chunks", 2: "no chunk yet"}
    assert inbox.offer(3, 0, 0, 3, b"\0")
    assert inbox.offer(3, 2, 0, 1, b"x")
    assert inbox.missing(3, [0, 2]) == {}
    assert sorted(inbox.take(3)) == [(0, b"\0"), (0, b"\1"), (0, b"\2"), (2, b"x")]


def test_inbox_empty_marker_completes_an_edge_without_data() -> None:
    """``count == 0`` is the explicit "nothing for you": complete, and nothing to take."""
    inbox = Inbox()
    assert inbox.offer(0, 4, 0, 0, b"")
    assert inbox.missing(0, [4]) == {}
    assert inbox.take(0) == []
    assert not inbox.offer(0, 4, 0, 0, b""), "a duplicate empty marker is dropped too"


def test_inbox_keeps_later_layers_until_read() -> None:
    """Chunks of a later layer wait (not taken with the current one, not dropped by its close)."""
    inbox = Inbox()
    assert inbox.offer(2, 1, 0, 1, b"early")
    assert inbox.missing(1, [1]) == {1: "no chunk yet"}
    assert inbox.take(1) == []
    assert inbox.offer(1, 1, 0, 1, b"now")
    assert inbox.take(1) == [(1, b"now")]
    inbox.close(1)
    assert inbox.missing(2, [1]) == {}
    assert inbox.take(2) == [(1, b"early")]


def test_inbox_drops_chunks_of_closed_layers() -> None:
    """After ``close(l)``, late copies of layer ``l`` or earlier are dropped; ``l + 1`` is not."""
    inbox = Inbox()
    assert inbox.offer(0, 1, 0, 1, b"a")
    assert inbox.offer(1, 1, 0, 1, b"b")
    inbox.take(0)
    inbox.take(1)
    inbox.close(1)
    assert not inbox.offer(1, 1, 0, 1, b"b")
    assert not inbox.offer(0, 1, 0, 1, b"a")
    assert not inbox.offer(1, 3, 0, 1, b"unseen source, closed layer")
    assert inbox.take(0) == [] and inbox.take(1) == []
    assert inbox.offer(2, 1, 0, 1, b"c")
    assert inbox.take(2) == [(1, b"c")]


def test_inbox_missing_texts() -> None:
    """``missing`` names each incomplete source with what it lacks, and only those."""
    inbox = Inbox()
    inbox.offer(5, 0, 0, 0, b"")  # complete (empty)
    inbox.offer(5, 1, 3, 4, b"x")  # 1 of 4
    inbox.offer(5, 2, 0, 1, b"y")  # complete
    assert inbox.missing(5, [0, 1, 2, 3]) == {1: "1 of 4 chunks", 3: "no chunk yet"}
    assert inbox.missing(5, []) == {}


# -- helpers for channels and runs ---------------------------------------------------------------
def dense_block(rows: Sequence[int], values: Sequence[Sequence[float]]) -> Block:
    return Block(np.asarray(rows, np.int32),
                 dense_t=np.ascontiguousarray(np.asarray(values, np.float32).T))


def same_block(got: Block, want: Block) -> bool:
    return bool(np.array_equal(got.rows, want.rows)
                and np.array_equal(got.to_csr().toarray(), want.to_csr().toarray()))


async def collect(channel: Channel, layer: int, sources: Sequence[int]) -> list[tuple[int, Chunk]]:
    return [item async for item in channel.receive(layer, sources)]


@asynccontextmanager
async def channels(cls: type[Channel], workers: int, config: ChannelConfig,
                   limits: Limits = SMALL_LIMITS,
                   run_id: str = "protocol") -> AsyncIterator[tuple[Services, RunNames,
                                                                    list[Channel]]]:
    """A run's channel resources on a fresh local session, and one channel per worker, each on
    its own attached services (as separate worker processes would have)."""
    names = RunNames(run_id)
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(
            LocalBackend(limits=limits, warm=False).session(names))
        await cls.create_resources(services, names, workers, config)
        chans = []
        for w in range(workers):
            attached = await stack.enter_async_context(
                LocalBackend.attach(services.description, names))
            stack.callback(_close_messages, attached)
            chans.append(cls(WorkerContext(attached, names, w, workers, config, WorkerMetrics(w),
                                           BlockCodec())))
        stack.callback(_close_messages, services)
        try:
            yield services, names, chans
        finally:
            for chan in chans:
                await chan.close()
            await cls.delete_resources(services, names, workers, config)


def _close_messages(services: Services) -> None:
    closer = getattr(services.messages, "close", None)
    if callable(closer):
        closer()


@dataclass(frozen=True)
class Network:
    plan: Plan
    inputs: sp.csr_matrix
    reference: sp.csr_matrix


@pytest.fixture(scope="module")
def network() -> Network:
    """8 random sparse layers of 1024 neurons, 4 workers, 256 stroke images (see the module
    docstring for why the weights are integers)."""
    rng = np.random.default_rng(0)
    weights = []
    for _ in range(8):
        w = sp.random(1024, 1024, density=0.0025, format="csr", dtype=np.float32,
                      random_state=rng)
        w.data = rng.choice(np.array([-1, 1, 1, 2], np.float32), size=w.nnz)
        weights.append(w)
    graph = fsdgraph.sequential(weights, bias=-1.0, cap=32, bias_on_nonzero=True)
    inputs = synthetic_images(1024, 256, seed=1)
    reference = fsdgraph.reference_inference(inputs, graph.layers())
    # A meaningful comparison: many rows alive, few values at the cap, every value an integer.
    assert len(fsdgraph.categories(reference)) > 50
    assert np.mean(reference.data == 32) < 0.5
    assert np.array_equal(reference.data, np.round(reference.data))
    return Network(fsdgraph.compile(graph, workers=4, partitioner="contiguous"), inputs, reference)


def run_plan(backend: LocalBackend, net: Network, channel: str = "queue",
             config: RunConfig | None = None) -> Result:
    with fsdgraph.Scheduler(backend, channel, config or RunConfig(progress=False)) as scheduler:
        return scheduler.run_sync(net.plan, net.inputs)


def assert_matches_reference(result: Result, net: Network) -> None:
    np.testing.assert_array_equal(result.categories, fsdgraph.categories(net.reference))
    assert result.activations.shape == net.reference.shape
    np.testing.assert_allclose(result.activations.toarray(), net.reference.toarray(), rtol=1e-6)


def assert_exactly_once(report: dict[str, Any]) -> None:
    """Every chunk sent was kept exactly once by its receiver."""
    assert report["messages_received"] == report["messages_sent"]
    assert report["rows_received"] == report["rows_sent"]
    assert report["nnz_received"] == report["nnz_sent"]


# -- end to end: at-least-once, reordering, small limits -----------------------------------------
@pytest.mark.parametrize("channel", ["queue", "object"])
def test_plain_run_matches_reference(network: Network, channel: str) -> None:
    """Without faults, both channels reproduce the serial reference."""
    result = run_plan(LocalBackend(), network, channel)
    assert_matches_reference(result, network)
    assert_exactly_once(result.report)
    assert result.report["duplicates_dropped"] == 0


def test_every_message_delivered_twice(network: Network) -> None:
    """With every queue message duplicated, duplicates are dropped, never added twice."""
    result = run_plan(LocalBackend(duplicate_rate=1.0), network)
    assert_matches_reference(result, network)
    assert_exactly_once(result.report)
    assert 0 < result.report["duplicates_dropped"] <= result.report["messages_sent"]


@pytest.mark.parametrize("duplicate_rate", [0.0, 0.5])
def test_reordered_delivery(network: Network, duplicate_rate: float) -> None:
    """Receiving visible messages in random order (with or without duplicates) gives the same
    result: completeness is counted per edge, not inferred from order."""
    result = run_plan(LocalBackend(shuffle=True, duplicate_rate=duplicate_rate), network)
    assert_matches_reference(result, network)
    assert_exactly_once(result.report)


def test_small_limits_force_many_chunks_per_edge(network: Network) -> None:
    """4 KiB messages in 8 KiB batches: edges are split into many chunks, packed into batch
    calls, and still reassemble to the reference."""
    result = run_plan(LocalBackend(limits=SMALL_LIMITS, shuffle=True), network)
    assert_matches_reference(result, network)
    assert_exactly_once(result.report)
    edges = len(network.plan.edges)
    assert result.report["messages_sent"] > 2 * edges
    requests = result.report["requests"]
    assert requests["publish"] < result.report["messages_sent"], "chunks are packed into batches"


# -- run isolation -----------------------------------------------------------------------------
def test_queue_channel_ignores_another_runs_message() -> None:
    """A chunk of run "other" in worker 1's queue is neither yielded nor consumed (it is back in
    the queue after its visibility timeout)."""
    config = ChannelConfig(peer_timeout_s=5, poll_wait_s=0.05, visibility_timeout_s=0.3)
    real = dense_block([1, 2], [[1, 2, 3], [4, 5, 6]])
    foreign = dense_block([1, 2], [[9, 9, 9], [9, 9, 9]])

    async def main() -> None:
        async with channels(QueueChannel, 2, config) as (services, names, (ch0, ch1)):
            attributes = {"run": "other", "layer": "0", "src": "0", "target": "1", "index": "0",
                          "count": "1"}
            sent = await services.messages.send_batch(
                names.queue(1), [Entry(TextCodec().encode(CODEC.encode(foreign)), attributes)])
            assert sent.ok
            await ch0.send(0, [(1, real)])
            got = await collect(ch1, 0, [0])
            assert [src for src, _ in got] == [0]
            assert same_block(got[0][1].block, real)
            assert ch1.metrics.current.messages_received == 1
            assert ch1.metrics.current.duplicates_dropped == 0
            await asyncio.sleep(config.visibility_timeout_s + 0.1)
            left = await services.messages.receive(names.queue(1), max_messages=10, wait_s=1.0)
            assert [m.attributes["run"] for m in left] == ["other"]

    asyncio.run(main())


def test_object_channel_ignores_another_runs_objects() -> None:
    """An object under another run's key is never read, and a stale object at this run's key
    that names another run is ignored until the real one replaces it."""
    config = ChannelConfig(peer_timeout_s=5, poll_wait_s=0.05)
    real = dense_block([3], [[1, 2]])
    foreign = dense_block([3], [[7, 7]])
    foreign_body = bytes(msgpack.packb(["other", [CODEC.encode(foreign)]], use_bin_type=True))

    async def main() -> None:
        async with channels(ObjectChannel, 2, config) as (services, names, (ch0, ch1)):
            other_key = RunNames("other").exchange_key(0, 0, 1)
            await services.objects.put(other_key, foreign_body)
            await services.objects.put(names.exchange_key(0, 0, 1), foreign_body)
            receiving = asyncio.ensure_future(collect(ch1, 0, [0]))
            await asyncio.sleep(0.3)
            assert not receiving.done(), "took another run's object as this run's chunk"
            await ch0.send(0, [(1, real)])
            got = await asyncio.wait_for(receiving, 5)
            assert [src for src, _ in got] == [0]
            assert same_block(got[0][1].block, real)
            assert await services.objects.get(other_key) == foreign_body

    asyncio.run(main())


# -- a killed worker -------------------------------------------------------------------------------
@dataclass
class RecordingBackend(LocalBackend):
    """A LocalBackend that remembers its sessions' run directories."""

    run_dirs: list[str] = field(default_factory=list)

    @asynccontextmanager
    async def session(self, names: RunNames) -> AsyncIterator[Services]:
        async with super().session(names) as services:
            self.run_dirs.append(str(services.description["root"]))
            yield services


def worker_processes(socket: str, launcher_pid: int) -> list[int]:
    """Pids of processes forked from the launcher listening on ``socket`` (they share its
    command line), excluding the launcher itself."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == launcher_pid:
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"fsdgraph.backends.local" in cmdline and socket.encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("channel", ["queue", "object"])
def test_killed_worker_fails_the_run_cleanly(network: Network, channel: str) -> None:
    """Worker 2 dies (SIGKILL) as it starts layer 5: the run fails within the peer timeout
    with an error naming worker 2 and layer 5, no worker process is left and the run directory
    is gone."""
    backend = RecordingBackend(kill=(2, 5))
    config = RunConfig(progress=False, stall_timeout_s=10, relaunches=0,
                       channel=ChannelConfig(peer_timeout_s=3, poll_wait_s=0.2))
    backend.prewarm()
    pool = backend._pool
    assert pool is not None
    seen: set[int] = set()
    watching = threading.Event()
    watching.set()

    def watch() -> None:  # proves the process check below can see workers at all
        while watching.is_set():
            seen.update(worker_processes(pool.socket, pool.process.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with fsdgraph.Scheduler(backend, channel, config) as scheduler:
        try:
            with pytest.raises(RunError) as caught:
                scheduler.run_sync(network.plan, network.inputs)
        finally:
            watching.clear()
            watcher.join()
        assert len(seen) >= 4, f"saw worker processes {seen}"
        deadline = time.monotonic() + 60  # killed already; wait for /proc to forget them
        while worker_processes(pool.socket, pool.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker_processes(pool.socket, pool.process.pid) == []
        assert pool.alive, "the warm launcher outlives a failed run"
    message = str(caught.value)
    # Found by a peer timeout or the stall watch, not by the whole run's timeout.
    assert not message.startswith("run timed out"), message
    assert re.search(r"\bworker 2\b", message), message
    assert re.search(r"\blayer 5\b", message), message
    assert caught.value.layer == 5
    assert len(backend.run_dirs) == 1
    run_dir = Path(backend.run_dirs[0])
    assert run_dir.name.startswith("fsdgraph-")
    assert not run_dir.exists()


# -- publish failures ----------------------------------------------------------------------------
def test_non_retryable_publish_failure_names_worker_layer_and_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk the target's queue rejects as too long fails the send at once (no retrying until
    the peer timeout) with the sender, layer, target and the service's reason."""
    config = ChannelConfig(peer_timeout_s=30, poll_wait_s=0.05)
    block = dense_block(range(20), np.arange(400, dtype=np.float32).reshape(20, 20) + 1)

    async def main() -> None:
        async with channels(QueueChannel, 2, config) as (services, names, (ch0, _ch1)):
            await services.messages.create_queue(
                names.queue(1), visibility_timeout_s=config.visibility_timeout_s,
                max_message_bytes=300)
            calls = throttle(monkeypatch, ch0.services, times=0)  # counts, lets all through
            with pytest.raises(RunError) as caught:
                await ch0.send(3, [(1, block)])
            assert len(calls) == 1, "a non-retryable failure is not tried again"
            assert (caught.value.worker, caught.value.layer) == (0, 3)
            assert re.fullmatch(
                r"worker 0 layer 3: publishing a chunk for worker 1 failed: MessageTooLong: "
                r"entry \d+ of \d+ bytes exceeds max_message_bytes of queue "
                r"'fsd-protocol-w1' \(300\)", str(caught.value)), str(caught.value)

    asyncio.run(main())


def throttle(monkeypatch: pytest.MonkeyPatch, services: Services, times: int | None) -> list[int]:
    """Make ``services.messages.publish_batch`` fail every entry as retryable for its first
    ``times`` calls (None: always); return the list of calls' batch sizes."""
    messages = services.messages
    real = messages.publish_batch
    calls: list[int] = []

    async def flaky(topic: str, entries: Sequence[Entry]) -> BatchResult:
        calls.append(len(entries))
        if times is None or len(calls) <= times:
            return BatchResult(tuple(Failure(i, "Throttled", "slow down", retryable=True)
                                     for i in range(len(entries))))
        return await real(topic, entries)

    monkeypatch.setattr(messages, "publish_batch", flaky)
    return calls


def test_retryable_publish_failures_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Throttled entries are sent again (with backoff) and arrive exactly once."""
    config = ChannelConfig(peer_timeout_s=5, poll_wait_s=0.05)
    blocks = [dense_block([0, 5], [[1, 2], [3, 4]]), dense_block([7], [[5, 6]])]

    async def main() -> None:
        async with channels(QueueChannel, 3, config) as (_services, _names, chans):
            calls = throttle(monkeypatch, chans[0].services, times=2)
            await chans[0].send(0, [(1, blocks[0]), (2, blocks[1])])
            assert len(calls) == 3
            for w in (1, 2):
                got = await collect(chans[w], 0, [0])
                assert len(got) == 1 and same_block(got[0][1].block, blocks[w - 1])

    asyncio.run(main())


def test_retryable_failure_until_the_peer_timeout_names_the_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A throttle that never ends fails the send within the peer timeout, after several tries,
    naming sender, layer, target and the reason."""
    config = ChannelConfig(peer_timeout_s=0.5, poll_wait_s=0.05)

    async def main() -> None:
        async with channels(QueueChannel, 2, config) as (_services, _names, (ch0, _ch1)):
            calls = throttle(monkeypatch, ch0.services, times=None)
            with pytest.raises(RunError, match=r"^worker 0 layer 2: publishing a chunk for "
                                               r"worker 1 failed: Throttled: slow down$"):
                await ch0.send(2, [(1, dense_block([1], [[1.0]]))])
            # It backs off, doubling from 10 ms, and stops once the next wait would pass the
            # peer timeout: a few tries, however slow the machine (slower means fewer).
            assert 3 <= len(calls) <= 2 + math.ceil(math.log2(config.peer_timeout_s / 0.01))

    asyncio.run(main())


def test_publish_failure_in_a_run_names_worker_and_layer(
        network: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: worker 1's queue accepts only 300-byte messages, so its peers' first chunks
    are rejected (not retryable); the run fails at once with the sender's worker and layer."""
    original = QueueChannel.create_resources.__func__  # type: ignore[attr-defined]

    async def small_queue_for_worker_1(cls: type[QueueChannel], services: Services,
                                       names: RunNames, workers: int,
                                       config: ChannelConfig) -> None:
        await original(cls, services, names, workers, config)
        await services.messages.create_queue(
            names.queue(1), visibility_timeout_s=config.visibility_timeout_s,
            max_message_bytes=300)

    monkeypatch.setattr(QueueChannel, "create_resources", classmethod(small_queue_for_worker_1))
    config = RunConfig(progress=False, stall_timeout_s=30,
                       channel=ChannelConfig(peer_timeout_s=30))
    with pytest.raises(RunError) as caught:
        run_plan(LocalBackend(), network, "queue", config)
    message = str(caught.value)
    assert not isinstance(caught.value, RunTimeout), "failed at once, not after a timeout"
    assert caught.value.worker in (0, 2, 3) and caught.value.layer == 1, message
    assert re.match(rf"worker {caught.value.worker} failed at layer 1: RunError: worker "
                    rf"{caught.value.worker} layer 1: publishing a chunk for worker 1 failed: "
                    r"MessageTooLong: .*\(300\)$", message), message


def test_message_limit_too_small_for_anything_is_reported(network: Network) -> None:
    """With max_message_bytes below the chunk attributes' own size nothing can be sent: the run
    must fail promptly with an error saying what does not fit, not as an unexplained stall."""
    config = RunConfig(progress=False, stall_timeout_s=3, channel=ChannelConfig(peer_timeout_s=3))
    with pytest.raises(FsdError) as caught:
        run_plan(LocalBackend(limits=Limits(max_message_bytes=120)), network, "queue", config)
    message = str(caught.value)
    assert not isinstance(caught.value, RunTimeout), message
    assert "never started" not in message and "stopped reporting" not in message, message
    assert re.search(r"fit|max_message_bytes", message), message



# -- sealed objects: the layout -------------------------------------------------------------------
def exactly(message: str) -> str:
    """A ``pytest.raises`` pattern matching ``message`` and nothing else."""
    return "^" + re.escape(message) + "$"


SEALED_NAMES = RunNames("sealed", key=RunKey.generate())


def test_sealed_parts_come_back_as_views_of_the_body() -> None:
    """The body is exactly msgpack's encoding of the sealed list, and the parts are read from it
    without copies, whatever the widths of their msgpack headers."""
    parts = [b"a", b"", b"x" * 255, b"y" * 256, b"z" * 65536, *[b"p"] * 16]
    key = "runs/sealed/k"
    body = seal(SEALED_NAMES, key, parts)
    tag = SEALED_NAMES.key.tag("sealed", key, str(len(parts)), *map(checksum, parts))
    assert body == msgpack.packb(["fsd-sealed-2", "sealed", parts, tag], use_bin_type=True)
    views = unseal_parts(SEALED_NAMES, key, body)
    assert [bytes(v) for v in views] == parts
    assert all(np.shares_memory(np.frombuffer(v, np.uint8), np.frombuffer(body, np.uint8))
               for v in views if v.nbytes)
    assert unseal(SEALED_NAMES, key, body) == [(p, checksum(p)) for p in parts]
    wide = (b"\x94\xdb" + (12).to_bytes(4, "big") + b"fsd-sealed-2\xd9\x06sealed\xdd"
            + len(parts).to_bytes(4, "big")
            + b"".join(b"\xc6" + len(p).to_bytes(4, "big") + p for p in parts) + msgpack.packb(tag))
    assert [bytes(v) for v in unseal_parts(SEALED_NAMES, key, wide)] == parts
    assert unseal_parts(SEALED_NAMES, key, seal(SEALED_NAMES, key, [])) == []


def test_aligned_parts_start_on_a_boundary_and_come_back_as_views() -> None:
    """Sealed aligned, every part starts on a multiple of ALIGN bytes into the body (a zero
    pad before each); the body is still msgpack's encoding of the list, and a pad that is too
    long or not zeros is refused."""
    parts = [b"a", b"", b"x" * 255, b"y" * 256, b"z" * 65536, *[b"p"] * 16]
    key = "runs/sealed/k"
    body = seal(SEALED_NAMES, key, parts, align=ALIGN)
    tag = SEALED_NAMES.key.tag("sealed", key, str(len(parts)), *map(checksum, parts))
    items = msgpack.unpackb(body)
    assert items[0] == "fsd-sealed-3" and items[2][1::2] == parts and items[3] == tag
    assert all(set(pad) <= {0} and len(pad) < ALIGN for pad in items[2][0::2])
    assert body == msgpack.packb(items, use_bin_type=True)
    views = unseal_parts(SEALED_NAMES, key, body)
    assert [bytes(v) for v in views] == parts
    base = np.frombuffer(body, np.uint8).ctypes.data
    assert all((np.frombuffer(v, np.uint8).ctypes.data - base) % ALIGN == 0
               for v in views if v.nbytes)
    for pads in ([b"\0" * ALIGN, *items[2][2::2]], [b"\1", *items[2][2::2]]):
        forged = [x for pair in zip(pads, parts, strict=True) for x in pair]
        assert unseal(SEALED_NAMES, key, msgpack.packb(["fsd-sealed-3", "sealed", forged, tag],
                                                        use_bin_type=True)) is None
    odd = msgpack.packb(["fsd-sealed-3", "sealed", items[2][:-1], tag], use_bin_type=True)
    assert unseal(SEALED_NAMES, key, odd) is None


def test_malformed_sealed_objects_are_refused() -> None:
    key = "runs/sealed/x/1/0/2"
    parts = [b"chunk one", b"two"]
    body = seal(SEALED_NAMES, key, parts)
    tag = msgpack.unpackb(body)[3]
    flipped = bytearray(body)
    flipped[body.index(b"two")] ^= 4
    bad = {
        "truncated": body[:-1],
        "extended": body + b"\0",
        "a map": msgpack.packb({"fsd-sealed-2": "sealed", "parts": parts, "tag": tag}),
        "a list of five": msgpack.packb(["fsd-sealed-2", "sealed", parts, tag, 0]),
        "another layout": msgpack.packb(["fsd-sealed-0", "sealed", parts, tag]),
        "another run": msgpack.packb(["fsd-sealed-2", "other", parts, tag]),
        "a text part": msgpack.packb(["fsd-sealed-2", "sealed", ["chunk one", b"two"], tag]),
        "a part length past the end": body.replace(b"\xc4\x03two", b"\xc4\x09two"),
        "a number for a tag": msgpack.packb(["fsd-sealed-2", "sealed", parts, 7]),
        "a forged tag": msgpack.packb(["fsd-sealed-2", "sealed", parts, "0" * 32]),
        "a damaged part": bytes(flipped),
        "not utf-8": body.replace(b"sealed", b"seal\xff\xfe"),
        "nothing": b"",
    }
    for what, damaged in bad.items():
        assert unseal(SEALED_NAMES, key, damaged) is None, what
        with pytest.raises(ProtocolError, match=exactly(
                f"object {key} failed its integrity check (damaged, or not written by this "
                "run)")):
            unseal_parts(SEALED_NAMES, key, damaged)
    assert unseal(SEALED_NAMES, "runs/sealed/x/1/0/3", body) is None  # copied to another key
    assert unseal(RunNames("sealed", key=RunKey.generate()), key, body) is None  # another key


# -- staging: every worker's input columns in one pass ---------------------------------------------
def test_input_blocks_are_each_workers_columns_without_touching_the_inputs() -> None:
    """Duplicates kept (the reference sums them one by one), stored zeros and dead rows dropped,
    column ids sorted, dense above the density threshold; the caller's matrix unchanged."""
    rng = np.random.default_rng(11)
    rows, cols = rng.integers(0, 40, 500), rng.integers(0, 30, 500)
    values = rng.integers(-3, 4, 500).astype(np.float32)  # some explicit zeros
    y0 = sp.csr_matrix((values, cols, np.searchsorted(np.sort(rows), np.arange(41))),
                       shape=(40, 30))
    y0.indices = cols[np.argsort(rows, kind="stable")].astype(np.int32)  # unsorted, duplicates
    y0.data = values[np.argsort(rows, kind="stable")]
    before = (y0.indptr.copy(), y0.indices.copy(), y0.data.copy())
    dense_part = sp.csr_matrix(np.ones((40, 30), np.float32))
    columns = [np.arange(30), np.array([0, 4, 5, 29]), np.array([], np.int64), np.array([7])]
    for matrix in (y0, dense_part):
        blocks = input_blocks(matrix, columns)
        for cols_w, block in zip(columns, blocks, strict=True):
            want = matrix.toarray()[:, cols_w]
            live = np.flatnonzero(np.any(want != 0, axis=1))
            assert block.rows.tolist() == live.tolist() and block.ncols == len(cols_w)
            np.testing.assert_array_equal(block.to_csr().toarray(), want[live])
            if block.csr is not None:
                assert block.csr.has_sorted_indices and np.all(block.csr.data != 0)
            assert block.is_dense == (block.nnz > 0.4 * len(block.rows) * block.ncols)
    assert all(np.array_equal(a, b) for a, b in zip(before, (y0.indptr, y0.indices, y0.data),
                                                    strict=True))
    assert input_blocks(dense_part, [np.arange(30)])[0].is_dense


# -- plan shards as raw parts -------------------------------------------------------------------
def test_shard_parts_round_trip_and_refuse_what_does_not_add_up(network: Network) -> None:
    shard = network.plan.shards[1]
    body = seal(SEALED_NAMES, "runs/sealed/plan/1", shard.to_parts())
    back = WorkerShard.from_parts(unseal_parts(SEALED_NAMES, "runs/sealed/plan/1", body))
    assert back.to_bytes() == shard.to_bytes()
    for ls in back.layers:  # every weight ready for the kernels, not copied on the way
        assert ls.weight.indices.dtype == np.int32 and ls.weight.has_sorted_indices

    fields = unpack(shard.to_bytes())
    broken: dict[str, Any] = {
        "a layer's outputs missing": {**fields, "out": fields["out"][:-1]},
        "outputs not arrays": {**fields, "out": [0] * len(fields["out"])},
        "a weight shape missing": {**fields, "weight_shape": fields["weight_shape"][:-1]},
        "ids": {**fields, "sends": [[0.5]] * len(fields["specs"])},
        "a column out of range": {**fields, "weight_shape": [[s[0], 1]
                                                            for s in fields["weight_shape"]]},
        "a field missing": {k: v for k, v in fields.items() if k != "positions"},
    }
    for d in broken.values():
        with pytest.raises(ProtocolError, match=r"^object runs/sealed/plan/1: "):
            WorkerShard.from_parts(pack_parts(d), "runs/sealed/plan/1")
        with pytest.raises(ProtocolError):
            WorkerShard.from_bytes(pack(d))


def test_staging_waits_for_every_put_before_failing(network: Network) -> None:
    """A PUT that fails fails staging, but only once the others have ended: none may land after
    the teardown has removed the run's objects."""

    class Store:
        def __init__(self) -> None:
            self.done: list[str] = []

        async def put(self, key: str, body: bytes) -> None:
            if key.endswith("input/0"):
                raise OSError("disk full")
            await asyncio.sleep(0.05)
            self.done.append(key)

    store = Store()
    names = RunNames("staging", key=RunKey.generate())
    services: Any = type("Services", (), {"objects": store})()
    scheduler = fsdgraph.Scheduler(LocalBackend(warm=False), "object")
    with pytest.raises(OSError, match="disk full"):
        asyncio.run(scheduler._stage(services, names, network.plan,
                                     sp.csr_matrix(network.inputs, dtype=np.float32)))
    assert len(store.done) == 2 * network.plan.workers - 1
