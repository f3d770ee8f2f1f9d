"""The transport conformance kit (:mod:`fsdgraph.testing.transports`) against the transports
fsdgraph ships: the local directory store and spool queues (in a ``tmp_path``), and S3 and
SNS+SQS on the session's moto server (``moto_server`` in ``conftest.py``). Each implementation
also gives the kit a ``*_peer_setup``: Python source that defines ``make()`` in another OS
process, for the cross-process tests.

The last sections test the local implementations' own knobs, validation and layout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsdgraph.backends.local.objectstore import DirectoryObjectStore
from fsdgraph.backends.local.queues import SpoolMessageService
from fsdgraph.errors import ConfigError, MessageTooLarge, NotFound, TransportError
from fsdgraph.testing.transports import (
    LONG_POLL_S,
    MessageServiceSuite,
    ObjectStoreSuite,
    drain,
    woken,
)
from fsdgraph.transport import Entry, Limits, MessageService, ObjectStore

#: Smaller than AWS's, so size tests stay small; the kit reads the numbers from ``svc.limits``.
LOCAL_LIMITS = Limits(max_message_bytes=4096, max_batch_entries=10, max_batch_bytes=8192,
                      max_object_bytes=4 * 1024 * 1024)


def _limits_source() -> str:
    return f"Limits(**{dataclasses.asdict(LOCAL_LIMITS)!r})"


def _aws_config(server: Any) -> dict[str, Any]:
    """``AwsConfig`` keyword arguments for the session's moto server (see ``conftest.py``)."""
    endpoints = {name: server.url for name in ("s3", "sns", "sqs", "sts")}
    return {"region": server.region, "endpoints": endpoints, "bucket": server.bucket,
            "prefix": "conformance/"}


# ================================================================================================
# The conformance kit, for each implementation
# ================================================================================================
class TestDirectoryStore(ObjectStoreSuite):
    @pytest.fixture
    def make_objects(self, tmp_path: Path) -> Callable[[], ObjectStore]:
        return lambda: DirectoryObjectStore(tmp_path / "objects", limits=LOCAL_LIMITS)

    @pytest.fixture
    def objects_peer_setup(self, tmp_path: Path) -> str:
        return textwrap.dedent(f"""
            from fsdgraph.backends.local.objectstore import DirectoryObjectStore
            from fsdgraph.transport import Limits
            def make():
                return DirectoryObjectStore({str(tmp_path / "objects")!r},
                                            limits={_limits_source()})
            """)


class TestS3Store(ObjectStoreSuite):
    @pytest.fixture
    def make_objects(self, moto_server: Any) -> Callable[[], ObjectStore]:
        from fsdgraph.backends.aws.transports import AwsConfig, S3ObjectStore

        config = _aws_config(moto_server)
        return lambda: S3ObjectStore(AwsConfig(**config), limits=LOCAL_LIMITS)

    @pytest.fixture
    def objects_peer_setup(self, moto_server: Any) -> str:
        return textwrap.dedent(f"""
            from fsdgraph.backends.aws.transports import AwsConfig, S3ObjectStore
            from fsdgraph.transport import Limits
            def make():
                return S3ObjectStore(AwsConfig(**{_aws_config(moto_server)!r}),
                                     limits={_limits_source()})
            """)


class TestSpoolQueues(MessageServiceSuite):
    exactly_once = True

    @pytest.fixture
    def make_messages(self, tmp_path: Path) -> Callable[[], MessageService]:
        return lambda: SpoolMessageService(tmp_path / "spool", LOCAL_LIMITS)

    @pytest.fixture
    def messages_peer_setup(self, tmp_path: Path) -> str:
        return textwrap.dedent(f"""
            from fsdgraph.backends.local.queues import SpoolMessageService
            from fsdgraph.transport import Limits
            def make():
                return SpoolMessageService({str(tmp_path / "spool")!r}, {_limits_source()})
            """)


class TestSnsSqs(MessageServiceSuite):
    # SNS PublishBatch does not report an entry too long for one subscribed queue (AWS drops
    # that delivery later; moto too), and the transport enforces only Limits on publish without
    # reading every subscription; send_batch reports it (the queue's own limit is known).
    publish_reports_queue_limits = False

    @pytest.fixture
    def make_messages(self, moto_server: Any) -> Callable[[], MessageService]:
        from fsdgraph.backends.aws.transports import AwsConfig, SnsSqsMessageService

        config = _aws_config(moto_server)
        return lambda: SnsSqsMessageService(AwsConfig(**config), LOCAL_LIMITS)

    @pytest.fixture
    def messages_peer_setup(self, moto_server: Any) -> str:
        return textwrap.dedent(f"""
            from fsdgraph.backends.aws.transports import AwsConfig, SnsSqsMessageService
            from fsdgraph.transport import Limits
            def make():
                return SnsSqsMessageService(AwsConfig(**{_aws_config(moto_server)!r}),
                                            {_limits_source()})
            """)


# ================================================================================================
# The local implementations only: fault injection, validation, layout
# ================================================================================================
def test_duplicate_rate_one_delivers_every_message_twice(tmp_path: Path) -> None:
    async def body() -> None:
        svc = SpoolMessageService(tmp_path, LOCAL_LIMITS, duplicate_rate=1.0)
        q = await svc.create_queue("dup", visibility_timeout_s=30, max_message_bytes=1024)
        topic = await svc.create_topic("t")
        await svc.subscribe(topic, q, filter_policy={})
        await svc.send_batch(q, [Entry(f"s{i}") for i in range(5)])
        await svc.publish_batch(topic, [Entry(f"p{i}") for i in range(3)])
        got = await drain(svc, q)
        counts = Counter(m.body for m in got)
        assert counts == {f"{k}{i}": 2 for k, n in (("s", 5), ("p", 3)) for i in range(n)}
        assert {m.receive_count for m in got} == {1}
        assert len({m.receipt for m in got}) == len(got)
        svc.close()

    asyncio.run(body())


def test_duplicate_rate_zero_and_half(tmp_path: Path) -> None:
    async def body(rate: float) -> int:
        svc = SpoolMessageService(tmp_path / str(rate), LOCAL_LIMITS, duplicate_rate=rate, seed=7)
        q = await svc.create_queue("dup", visibility_timeout_s=30, max_message_bytes=1024)
        for start in range(0, 200, 10):
            await svc.send_batch(q, [Entry(str(i)) for i in range(start, start + 10)])
        got = await drain(svc, q, wait_s=0)
        assert {m.body for m in got} == {str(i) for i in range(200)}
        svc.close()
        return len(got)

    assert asyncio.run(body(0.0)) == 200
    assert 250 < asyncio.run(body(0.5)) < 350
    with pytest.raises(ConfigError, match="duplicate_rate"):
        SpoolMessageService(tmp_path, LOCAL_LIMITS, duplicate_rate=1.5)


def test_shuffle_changes_the_receive_order(tmp_path: Path) -> None:
    async def order(shuffle: bool, seed: int | None) -> list[str]:
        root = tmp_path / f"{shuffle}-{seed}"
        svc = SpoolMessageService(root, LOCAL_LIMITS, shuffle=shuffle, seed=seed)
        q = await svc.create_queue("order", visibility_timeout_s=30, max_message_bytes=1024)
        for start in range(0, 30, 10):
            await svc.send_batch(q, [Entry(f"{i:02d}") for i in range(start, start + 10)])
        seen: list[str] = []
        while got := await svc.receive(q, max_messages=1, wait_s=0):
            seen.append(got[0].body)
            await svc.delete_batch(q, [got[0].receipt])
        svc.close()
        return seen

    sent = [f"{i:02d}" for i in range(30)]
    assert asyncio.run(order(False, None)) == sent  # oldest first without shuffle
    shuffled = asyncio.run(order(True, 1))
    assert shuffled != sent and sorted(shuffled) == sent
    assert asyncio.run(order(True, 1)) == shuffled  # repeatable with a seed


def test_delete_queue_wakes_a_waiting_receiver_with_not_found(tmp_path: Path) -> None:
    async def body() -> None:
        svc, admin = (
            SpoolMessageService(tmp_path, LOCAL_LIMITS),
            SpoolMessageService(tmp_path, LOCAL_LIMITS),
        )
        q = await svc.create_queue("gone", visibility_timeout_s=30, max_message_bytes=1024)
        await svc.send_batch(q, [Entry("lost")])

        async def delete_soon() -> None:
            await asyncio.sleep(0.2)
            await admin.delete_queue(q)

        assert len(await svc.receive(q, wait_s=0)) == 1
        task = asyncio.create_task(delete_soon())
        with pytest.raises(NotFound, match="gone"):
            await woken(svc.receive(q, wait_s=LONG_POLL_S), "a receive of a deleted queue")
        await task
        # A queue created again under the same name starts empty, with the new settings.
        await admin.create_queue(q, visibility_timeout_s=1, max_message_bytes=100)
        assert await svc.receive(q, wait_s=0) == []
        result = await svc.send_batch(q, [Entry("x" * 101)])
        assert [f.code for f in result.failures] == ["MessageTooLong"]
        svc.close()
        admin.close()

    asyncio.run(body())


def test_spool_validation(tmp_path: Path) -> None:
    async def body() -> None:
        svc = SpoolMessageService(tmp_path, LOCAL_LIMITS)
        for bad in ("", "a/b", "..", "x" * 81, "sp ace"):
            with pytest.raises(ConfigError, match="queue name"):
                await svc.create_queue(bad, visibility_timeout_s=1, max_message_bytes=10)
            with pytest.raises(NotFound):
                await svc.send_batch(bad, [Entry("x")])
        with pytest.raises(ConfigError, match="topic name"):
            await svc.create_topic("../etc")
        with pytest.raises(ConfigError, match="max_message_bytes"):
            await svc.create_queue(
                "q", visibility_timeout_s=1, max_message_bytes=LOCAL_LIMITS.max_message_bytes + 1
            )
        with pytest.raises(ConfigError, match="visibility_timeout_s"):
            await svc.create_queue("q", visibility_timeout_s=-1, max_message_bytes=10)
        q = await svc.create_queue("q", visibility_timeout_s=1, max_message_bytes=10)
        t = await svc.create_topic("t")
        with pytest.raises(ConfigError, match=r"write \['3'\]"):
            await svc.subscribe(t, q, filter_policy={"target": "3"})
        with pytest.raises(ConfigError, match="max_messages"):
            await svc.receive(q, max_messages=LOCAL_LIMITS.max_batch_entries + 1)
        result = await svc.delete_batch(q, ["not-a-receipt"])
        assert [f.code for f in result.failures] == ["ReceiptHandleIsInvalid"]
        result = await svc.send_batch(q, [Entry("\udcff")])
        assert [f.code for f in result.failures] == ["InvalidMessageContents"]
        svc.close()

    asyncio.run(body())


def test_spool_layout(tmp_path: Path) -> None:
    async def body() -> None:
        svc = SpoolMessageService(tmp_path, LOCAL_LIMITS)
        q = await svc.create_queue("lay", visibility_timeout_s=30, max_message_bytes=100)
        t = await svc.create_topic("top")
        await svc.subscribe(t, q, filter_policy={"target": ["1"]})
        qdir = tmp_path / "queues" / "lay"
        assert (tmp_path / "topics" / "top" / "subs" / "lay.json").is_file()
        assert (qdir / "doorbell").is_fifo()
        await svc.send_batch(q, [Entry("hello")])
        (ready,) = os.listdir(qdir / "ready")
        (msg,) = await svc.receive(q, wait_s=0)
        assert os.listdir(qdir / "ready") == []
        assert os.listdir(qdir / "inflight") == [msg.receipt]
        assert msg.receipt.split(".")[2] == ready.split(".")[0]  # the send time is kept
        await svc.delete_batch(q, [msg.receipt])
        assert os.listdir(qdir / "inflight") == []
        await svc.delete_queue(q)
        assert not qdir.exists()
        assert os.listdir(tmp_path / "tmp") == []
        svc.close()

    asyncio.run(body())


def test_directory_store_keys_and_layout(tmp_path: Path) -> None:
    async def body() -> None:
        store = DirectoryObjectStore(tmp_path)
        await store.put("run/layer1/chunk-0", b"data")
        assert (tmp_path / "run" / "layer1" / "chunk-0").read_bytes() == b"data"
        for bad in ("", "/abs", "a//b", "a/", "../up", "a/../b", "a/./b", ".tmp/x", "nul\0"):
            with pytest.raises(TransportError, match="object key") as put:
                await store.put(bad, b"x")
            assert not put.value.retryable
            with pytest.raises(TransportError, match="object key"):
                await store.get(bad)
        assert await store.list("../") == []
        # An object cannot also be a "directory" of other objects here.
        with pytest.raises(TransportError, match="run/layer1"):
            await store.put("run/layer1", b"x")
        with pytest.raises(TransportError, match="run/layer1/chunk-0"):
            await store.put("run/layer1/chunk-0/deeper", b"x")
        assert await store.list("") == ["run/layer1/chunk-0"]
        assert await store.delete_prefix("") == 1
        assert os.listdir(tmp_path) == [".tmp"]
        assert os.listdir(tmp_path / ".tmp") == []

    asyncio.run(body())


def test_directory_store_size_limit(tmp_path: Path) -> None:
    async def body() -> None:
        store = DirectoryObjectStore(tmp_path, limits=Limits(max_object_bytes=10))
        await store.put("ok", b"x" * 10)
        with pytest.raises(MessageTooLarge, match="11 bytes"):
            await store.put("big", b"x" * 11)

    asyncio.run(body())
