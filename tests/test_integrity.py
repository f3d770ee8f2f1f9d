"""Integrity and authenticity: checksums on every chunk and object, tags under the run's key on
chunks, edge objects and statuses. A damaged body fails naming the edge or is read again; a
forgery (made, as an attacker would, by editing real traffic without the key) is dropped and
counted; two different contents under one identity are an error, never first-wins."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fsdgraph.backend import Services
from fsdgraph.backends.local import LocalBackend
from fsdgraph.backends.local.queues import SpoolMessageService
from fsdgraph.channels import Channel, ChannelConfig, Inbox, WorkerContext
from fsdgraph.channels.auto import AutoChannel
from fsdgraph.channels.object import ObjectChannel
from fsdgraph.channels.queue import QueueChannel
from fsdgraph.codec import BlockCodec, Chunk
from fsdgraph.control import QueueControlPlane, Status, decode_status, encode_status
from fsdgraph.errors import ProtocolError, RunTimeout
from fsdgraph.event import WorkerEvent
from fsdgraph.integrity import RunKey, checksum
from fsdgraph.kernels import Block
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.resources import RunNames
from fsdgraph.sealed import seal, unseal
from fsdgraph.transport import Entry, Limits, Message

CONFIG = ChannelConfig(peer_timeout_s=3, poll_wait_s=0.05)


def block(rows: Sequence[int], values: Sequence[Sequence[float]]) -> Block:
    return Block(np.asarray(rows, np.int32),
                 dense_t=np.ascontiguousarray(np.asarray(values, np.float32).T))


@asynccontextmanager
async def channels(cls: type[Channel], workers: int = 2, config: ChannelConfig = CONFIG,
                   ) -> AsyncIterator[tuple[Services, RunNames, list[Channel]]]:
    names = RunNames("integrity", key=RunKey.generate())
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(LocalBackend(warm=False).session(names))
        await cls.create_resources(services, names, workers, config)
        chans = []
        for w in range(workers):
            attached = await stack.enter_async_context(
                LocalBackend.attach(services.description, names))
            chans.append(cls(WorkerContext(attached, names, w, workers, config,
                                           WorkerMetrics(w), BlockCodec())))
        try:
            yield services, names, chans
        finally:
            for chan in chans:
                await chan.close()
            await cls.delete_resources(services, names, workers, config)
            for s in [services, *(c.services for c in chans)]:
                if isinstance(s.messages, SpoolMessageService):
                    s.messages.close()


async def collect(channel: Channel, layer: int, sources: Sequence[int]) -> list[tuple[int, Chunk]]:
    return [item async for item in channel.receive(layer, sources)]


async def sent_messages(services: Services, names: RunNames, worker: int) -> list[Message]:
    """Take what is on ``worker``'s queue (to replay it edited, as an attacker would)."""
    assert services.messages is not None
    got = await services.messages.receive(names.queue(worker), max_messages=10, wait_s=1.0)
    await services.messages.delete_batch(names.queue(worker), [m.receipt for m in got])
    return got


async def put_back(services: Services, names: RunNames, worker: int,
                   messages: Sequence[tuple[str, dict[str, str]]]) -> None:
    assert services.messages is not None
    result = await services.messages.send_batch(
        names.queue(worker), [Entry(body, attributes) for body, attributes in messages])
    assert result.ok


# -- Inbox --------------------------------------------------------------------------------------
def test_inbox_two_contents_under_one_identity_is_an_error() -> None:
    inbox = Inbox(worker=3)
    assert inbox.offer(14, 2, 0, 2, b"a", checksum(b"a"))
    assert not inbox.offer(14, 2, 0, 2, b"a", checksum(b"a")), "the same content: a duplicate"
    with pytest.raises(ProtocolError, match="layer 14 edge worker 2 -> worker 3: two "
                                            "deliveries of chunk 0 of 2 with different content"):
        inbox.offer(14, 2, 0, 2, b"b", checksum(b"b"))
    with pytest.raises(ProtocolError, match="layer 14 edge worker 2 -> worker 3: two "
                                            "deliveries disagree on the number of chunks"):
        inbox.offer(14, 2, 1, 3, b"c", checksum(b"c"))
    with pytest.raises(ProtocolError, match="chunk index 5 of 2"):
        inbox.offer(14, 2, 5, 2, b"c", checksum(b"c"))


# -- the queue channel --------------------------------------------------------------------------
def test_a_forged_empty_marker_before_the_real_chunk_is_dropped_and_counted() -> None:
    real = block([3, 5], [[1, 2], [3, 4]])

    async def main() -> None:
        async with channels(QueueChannel) as (services, names, (ch0, ch1)):
            await ch0.send(0, [(1, real)])
            (msg,) = await sent_messages(services, names, 1)
            forged = {**msg.attributes, "count": "0"}  # "nothing for you", same identity
            await put_back(services, names, 1, [("", forged), (msg.body, dict(msg.attributes))])
            got = await collect(ch1, 0, [0])
            assert [src for src, _ in got] == [0]
            assert got[0][1].block.to_csr().toarray().tolist() == [[1, 2], [3, 4]]
            assert ch1.metrics.current.unauthenticated_dropped == 1

    asyncio.run(main())


@pytest.mark.parametrize("what", ["another key", "no tag", "a tag of another layer"])
def test_messages_without_a_valid_tag_are_never_used(what: str) -> None:
    real = block([1], [[9]])

    async def main() -> None:
        async with channels(QueueChannel) as (services, names, (ch0, ch1)):
            await ch0.send(0, [(1, real)])
            (msg,) = await sent_messages(services, names, 1)
            a = dict(msg.attributes)
            if what == "another key":
                other = RunNames(names.run_id, names.namespace, RunKey.generate())
                a["tag"] = other.key.tag(*(a[k] for k in ("run", "kind", "layer", "src",
                                                          "target", "index", "count", "sum")))
            elif what == "no tag":
                del a["tag"]
            else:
                a["layer"] = "1"
            await put_back(services, names, 1, [(msg.body, a)])
            receiving = asyncio.ensure_future(collect(ch1, 0, [0]))
            with pytest.raises(RunTimeout, match="layer 0 edge worker 0 -> worker 1: no chunk "
                                                 "yet"):
                await receiving
            assert ch1.metrics.current.unauthenticated_dropped == 1

    asyncio.run(main())


def test_a_damaged_body_fails_naming_the_edge() -> None:
    async def main() -> None:
        async with channels(QueueChannel) as (services, names, (ch0, ch1)):
            await ch0.send(7, [(1, block([1, 2], [[5, 6], [7, 8]]))])
            (msg,) = await sent_messages(services, names, 1)
            raw = bytearray(base64.b64decode(msg.body))
            raw[len(raw) // 2] ^= 0x10  # one bit
            body = base64.b64encode(bytes(raw)).decode()
            await put_back(services, names, 1, [(body, dict(msg.attributes))])
            with pytest.raises(ProtocolError, match="layer 7 edge worker 0 -> worker 1: chunk 0 "
                                                    "of 1 does not match its checksum"):
                await collect(ch1, 7, [0])

    asyncio.run(main())


# -- edge objects (object and auto channels) ------------------------------------------------------
def test_edge_objects_verify_their_key_chunks_and_run() -> None:
    names = RunNames("r1", key=RunKey.generate())
    key = names.exchange_key(3, 0, 1)
    body = seal(names, key, [b"one", b"two"])
    assert unseal(names, key, body) == [(b"one", checksum(b"one")),
                                             (b"two", checksum(b"two"))]
    assert unseal(names, names.exchange_key(4, 0, 1), body) is None, "replayed elsewhere"
    assert unseal(RunNames("r1", key=RunKey.generate()), key, body) is None
    flipped = bytearray(body)
    flipped[body.index(b"two")] ^= 1
    assert unseal(names, key, bytes(flipped)) is None
    for junk in (b"", b"\xc1", msgpack.packb({"a": 1, "b": 2}), msgpack.packb(["r1", []]),
                 msgpack.packb(7), msgpack.packb(["fsd-sealed-2", "r1", [1], "tag"])):
        assert unseal(names, key, junk) is None, junk


def test_a_damaged_object_is_read_again_until_the_real_one_is_there() -> None:
    real = block([2], [[4, 5]])

    async def main() -> None:
        async with channels(ObjectChannel) as (services, names, (ch0, ch1)):
            key = names.exchange_key(0, 0, 1)
            forged = msgpack.packb(["fsd-sealed-2", names.run_id, [], "0" * 32])  # a marker
            await services.objects.put(key, forged)
            receiving = asyncio.ensure_future(collect(ch1, 0, [0]))
            await asyncio.sleep(0.2)
            assert not receiving.done(), "a forged empty marker completed the edge"
            await ch0.send(0, [(1, real)])
            got = await receiving
            assert got[0][1].block.to_csr().toarray().tolist() == [[4, 5]]
            assert ch1.metrics.current.unauthenticated_dropped >= 1

    asyncio.run(main())


def test_an_object_that_never_verifies_times_out_naming_the_edge() -> None:
    async def main() -> None:
        async with channels(ObjectChannel, config=ChannelConfig(
                peer_timeout_s=0.5, poll_wait_s=0.05)) as (services, names, (_, ch1)):
            await services.objects.put(names.exchange_key(2, 0, 1), b"\x93garbage")
            with pytest.raises(RunTimeout, match="layer 2 edge worker 0 -> worker 1: no chunk "
                                                 "yet, object runs/integrity/x/1/2/0 failed its "
                                                 "integrity check"):
                await collect(ch1, 2, [0])

    asyncio.run(main())


def test_auto_channel_rereads_a_damaged_object_then_names_the_edge() -> None:
    big = block(list(range(64)), np.arange(64 * 8).reshape(64, 8))
    config = ChannelConfig(peer_timeout_s=0.5, poll_wait_s=0.05, auto_object_above_bytes=1)

    async def main() -> None:
        async with channels(AutoChannel, config=config) as (services, names, (ch0, ch1)):
            await ch0.send(1, [(1, big)])
            key = names.exchange_key(1, 0, 1)
            body = bytearray(await services.objects.get(key))
            body[-40] ^= 0x01
            await services.objects.put(key, bytes(body))
            with pytest.raises(ProtocolError, match="layer 1 edge worker 0 -> worker 1: object "
                                                    "runs/integrity/x/1/1/0 failed its integrity "
                                                    "check on every read"):
                await collect(ch1, 1, [0])
            assert ch1.metrics.current.unauthenticated_dropped >= 1

    asyncio.run(main())


# -- statuses ------------------------------------------------------------------------------------
def test_statuses_round_trip_and_forgeries_are_rejected() -> None:
    names = RunNames("r1", key=RunKey.generate())
    status = Status("progress", 2, 7, sent_at=12.5)
    entry = encode_status(names, status)
    assert decode_status(names, Message(entry.body, dict(entry.attributes), "")) == status
    forged = json.loads(entry.body)
    forged.update(kind="error", message="ValueError: forged")
    got = decode_status(names, Message(json.dumps(forged), {}, ""))
    assert (got.kind, got.message.split(":")[0]) == ("rejected", "its tag does not verify")
    for junk, why in (("{", "not JSON"), ("[1]", "not a status"),
                      (json.dumps({"kind": "error"}), "not a status")):
        assert decode_status(names, Message(junk, {}, "")).message.startswith(why)
    other = RunNames("r1", key=RunKey.generate())
    assert decode_status(other, Message(entry.body, {}, "")).kind == "rejected"


def test_a_forged_error_status_on_the_control_queue_is_rejected(tmp_path: Path) -> None:
    async def main() -> list[Status]:
        names = RunNames("r1", key=RunKey.generate())
        messages = SpoolMessageService(tmp_path, Limits())
        control = QueueControlPlane(messages, names, Limits())
        await control.create()
        await control.report(Status("progress", 0, 3))
        forged = encode_status(RunNames("r1"), Status("error", 0, 3, "RunError: forged"))
        await messages.send_batch(names.control_queue, [forged])
        got: list[Status] = []
        while len(got) < 2:
            got += await control.poll(wait_s=1.0)
        messages.close()
        return got

    kinds = sorted(s.kind for s in asyncio.run(main()))
    assert kinds == ["progress", "rejected"]


def test_the_run_key_is_never_printed() -> None:
    key = RunKey.generate()
    names = RunNames("r1", key=key)
    event = WorkerEvent(run_id="r1", namespace="fsd", worker=0, workers=1, batch=1,
                        channel="queue", backend="local", run_key=key.hex())
    for text in (repr(names), repr(event), repr(key), str(names)):
        assert key.hex() not in text
    assert event.names.key == key
    with pytest.raises(ProtocolError, match="field 'run_key' is not a run key"):
        _ = WorkerEvent.from_json({**event.to_json(), "run_key": "zz"}).names
