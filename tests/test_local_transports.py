"""Conformance tests for the two transports, :class:`ObjectStore` and :class:`MessageService`.

The first two sections use only the abstract interfaces, through the fixtures ``objects_impl``
and ``messages_impl``: each is parametrised over the implementations (today the local ones, in a
``tmp_path``; an AWS one is meant to be added as another ``param``). An implementation supplies
a ``make()`` that opens a client on the shared resources and ``peer_setup``, Python source that
defines ``make()`` in another OS process, so the tests can drive producers and consumers in
separate processes. Names (keys, queues, topics) are unique per test, so a real cloud account
can be shared. The last section tests the local implementations' own knobs and layout.

Asyncio tests run through :func:`asyncio.run` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fsdgraph.backends.local.objectstore import DirectoryObjectStore
from fsdgraph.backends.local.queues import SpoolMessageService
from fsdgraph.errors import ConfigError, MessageTooLarge, NotFound, TransportError
from fsdgraph.transport import Entry, Limits, Message, MessageService, ObjectStore, entry_size

T = TypeVar("T")

#: Smaller than AWS's, so size tests stay small; tests read the numbers from ``impl.limits``.
LOCAL_LIMITS = Limits(max_message_bytes=4096, max_batch_entries=10, max_batch_bytes=8192)


#: Async closers of the services made during the current :func:`run` (the AWS ones, whose
#: clients belong to that run's event loop); awaited when it ends.
_ACLOSE: list[Callable[[], Awaitable[None]]] = []


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await coro
        finally:
            while _ACLOSE:
                await _ACLOSE.pop()()

    return asyncio.run(main())


def unique(kind: str) -> str:
    return f"t-{kind}-{uuid.uuid4().hex[:12]}"


# -- implementations ---------------------------------------------------------------------------
@dataclass
class ObjectsImpl:
    name: str
    make: Callable[[], ObjectStore]
    #: Python source defining ``make()`` (returning an ObjectStore on the same data) in a child.
    peer_setup: str


@dataclass
class MessagesImpl:
    name: str
    make: Callable[[], MessageService]
    #: Python source defining ``make()`` (returning a MessageService on the same resources).
    peer_setup: str
    limits: Limits
    #: Upper bound for the delay from a send to the return of a waiting receive.
    prompt_s: float
    #: Whether, without fault injection, each message is delivered exactly once after deletes
    #: (true for the local spool; real SQS only promises at-least-once).
    exactly_once: bool


def _local_objects(root: Path) -> ObjectsImpl:
    setup = f"""
        from fsdgraph.backends.local.objectstore import DirectoryObjectStore
        def make():
            return DirectoryObjectStore({str(root)!r})
    """
    return ObjectsImpl("directory", lambda: DirectoryObjectStore(root), textwrap.dedent(setup))


def _local_messages(root: Path) -> MessagesImpl:
    limits = dataclasses.asdict(LOCAL_LIMITS)
    setup = f"""
        from fsdgraph.backends.local.queues import SpoolMessageService
        from fsdgraph.transport import Limits
        def make():
            return SpoolMessageService({str(root)!r}, Limits(**{limits!r}))
    """
    return MessagesImpl(
        "spool",
        lambda: SpoolMessageService(root, LOCAL_LIMITS),
        textwrap.dedent(setup),
        LOCAL_LIMITS,
        prompt_s=0.1,
        exactly_once=True,
    )


def _aws_config(server: Any) -> dict[str, Any]:
    """``AwsConfig`` keyword arguments for the session's moto server (see ``conftest.py``)."""
    endpoints = {name: server.url for name in ("s3", "sns", "sqs", "sts")}
    return {"region": server.region, "endpoints": endpoints, "bucket": server.bucket,
            "prefix": "conformance/"}


def _aws_objects(server: Any) -> ObjectsImpl:
    from fsdgraph.backends.aws.transports import AwsConfig, S3ObjectStore

    config = _aws_config(server)

    def make() -> ObjectStore:
        store = S3ObjectStore(AwsConfig(**config))
        _ACLOSE.append(store.close)
        return store

    setup = f"""
        from fsdgraph.backends.aws.transports import AwsConfig, S3ObjectStore
        def make():
            return S3ObjectStore(AwsConfig(**{config!r}))
    """
    return ObjectsImpl("s3", make, textwrap.dedent(setup))


def _aws_messages(server: Any) -> MessagesImpl:
    from fsdgraph.backends.aws.transports import AwsConfig, SnsSqsMessageService

    config = _aws_config(server)
    limits = dataclasses.asdict(LOCAL_LIMITS)

    def make() -> MessageService:
        svc = SnsSqsMessageService(AwsConfig(**config), LOCAL_LIMITS)
        _ACLOSE.append(svc.close)
        return svc

    setup = f"""
        from fsdgraph.backends.aws.transports import AwsConfig, SnsSqsMessageService
        from fsdgraph.transport import Limits
        def make():
            return SnsSqsMessageService(AwsConfig(**{config!r}), Limits(**{limits!r}))
    """
    return MessagesImpl(
        "sns-sqs", make, textwrap.dedent(setup), LOCAL_LIMITS, prompt_s=0.5, exactly_once=False
    )


#: (implementation, test) pairs that cannot hold, with the reason.
SKIPS = {
    ("sns-sqs", "test_entry_over_the_queue_limit_fails_alone"): (
        "SNS PublishBatch does not report an entry too long for one subscribed queue (AWS drops "
        "that delivery later; moto too), and the transport enforces only Limits on publish "
        "without reading every subscription; the send_batch half is covered by "
        "test_aws_entry_over_the_queue_limit_fails_alone_on_send"
    ),
}


def _skip_if_listed(request: pytest.FixtureRequest, impl: str) -> None:
    reason = SKIPS.get((impl, request.function.__name__))
    if reason:
        pytest.skip(reason)


@pytest.fixture(params=["directory", "s3"])
def objects_impl(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectsImpl:
    _skip_if_listed(request, request.param)
    if request.param == "directory":
        return _local_objects(tmp_path / "objects")
    if request.param == "s3":
        return _aws_objects(request.getfixturevalue("moto_server"))
    raise AssertionError(request.param)


@pytest.fixture(params=["spool", "sns-sqs"])
def messages_impl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagesImpl]:
    _skip_if_listed(request, request.param)
    if request.param == "spool":
        impl = _local_messages(tmp_path / "spool")
    elif request.param == "sns-sqs":
        impl = _aws_messages(request.getfixturevalue("moto_server"))
    else:
        raise AssertionError(request.param)
    yield impl


def close(service: object) -> None:
    """Close a service with a synchronous ``close``; async ones are closed when ``run`` ends."""
    closer = getattr(service, "close", None)
    if callable(closer) and not inspect.iscoroutinefunction(closer):
        closer()


# -- child processes -----------------------------------------------------------------------------
def spawn(setup: str, body: str) -> subprocess.Popen[str]:
    """Run ``body`` (the inside of an ``async def main()``, which may use ``make``) in a new
    Python process, with pipes for stdin/stdout/stderr."""
    script = (
        "import asyncio, os, sys, time\n"
        "from fsdgraph.transport import Entry\n"
        + setup
        + "\nasync def main():\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\nasyncio.run(main())\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str], timeout: float = 60) -> str:
    """Wait for a child; return its stdout, or fail with its stderr."""
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"child process timed out; stderr:\n{err}")
    assert child.returncode == 0, f"child process failed ({child.returncode}):\n{err}"
    return out


def wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        finish(child)
        pytest.fail(f"child process did not start: {line!r}")


async def drain(
    service: MessageService, queue: str, *, wait_s: float = 0.2, delete: bool = True
) -> list[Message]:
    """Receive (and delete) until a receive comes back empty."""
    got: list[Message] = []
    while True:
        batch = await service.receive(queue, max_messages=10, wait_s=wait_s)
        if not batch:
            return got
        got.extend(batch)
        if delete:
            result = await service.delete_batch(queue, [m.receipt for m in batch])
            assert result.ok, result


# ================================================================================================
# ObjectStore conformance
# ================================================================================================
def test_put_get_roundtrip(objects_impl: ObjectsImpl) -> None:
    async def body() -> None:
        store = objects_impl.make()
        prefix = unique("obj") + "/"
        data = bytes(range(256)) * 100
        await store.put(prefix + "a/b/c.bin", data)
        await store.put(prefix + "empty", b"")
        assert await store.get(prefix + "a/b/c.bin") == data
        assert await store.get(prefix + "empty") == b""
        await store.delete_prefix(prefix)

    run(body())


def test_get_missing_raises_not_found_naming_the_key(objects_impl: ObjectsImpl) -> None:
    async def body() -> None:
        store = objects_impl.make()
        key = unique("obj") + "/nothing/here"
        with pytest.raises(NotFound, match=f"no object at key '{key}'"):
            await store.get(key)
        await store.put(key + "/below", b"x")
        with pytest.raises(NotFound):  # a "directory" is not an object
            await store.get(key)
        await store.delete_prefix(key)

    run(body())


def test_overwrite_replaces_the_object(objects_impl: ObjectsImpl) -> None:
    async def body() -> None:
        store = objects_impl.make()
        key = unique("obj") + "/k"
        await store.put(key, b"first version, long")
        await store.put(key, b"second")
        assert await store.get(key) == b"second"
        assert await store.list(key) == [key]
        await store.delete_prefix(key)

    run(body())


def test_list_by_prefix_sorted(objects_impl: ObjectsImpl) -> None:
    async def body() -> None:
        store = objects_impl.make()
        p = unique("obj") + "/"
        keys = [p + k for k in ("b/2", "a", "b/10", "layer3/x", "layer30/y", "lay")]
        for k in reversed(keys):
            await store.put(k, k.encode())
        assert await store.list(p) == sorted(keys)
        assert await store.list(p + "b/") == [p + "b/10", p + "b/2"]
        assert await store.list(p + "layer3") == [p + "layer3/x", p + "layer30/y"]
        assert await store.list(p + "layer3/") == [p + "layer3/x"]
        assert await store.list(p + "lay") == [p + "lay", p + "layer3/x", p + "layer30/y"]
        assert await store.list(p + "zzz") == []
        assert await store.list(p + "nothing/deeper/") == []
        await store.delete_prefix(p)

    run(body())


def test_delete_prefix_counts_and_removes(objects_impl: ObjectsImpl) -> None:
    async def body() -> None:
        store = objects_impl.make()
        p = unique("obj") + "/"
        for k in ("run/a", "run/b/c", "run/b/d", "runner", "other/x"):
            await store.put(p + k, b"1")
        assert await store.delete_prefix(p + "run/") == 3
        assert await store.list(p) == [p + "other/x", p + "runner"]
        with pytest.raises(NotFound):
            await store.get(p + "run/b/c")
        assert await store.delete_prefix(p + "run/") == 0
        # What a prefix deletion emptied can be written again.
        await store.put(p + "run/b", b"again")
        assert await store.get(p + "run/b") == b"again"
        assert await store.delete_prefix(p) == 3
        assert await store.list(p) == []

    run(body())


@pytest.mark.parametrize("size", [1000, 2 * 1024 * 1024])
def test_concurrent_overwrite_from_another_process_is_atomic(
    objects_impl: ObjectsImpl, size: int
) -> None:
    """A reader never sees a partial object while another process keeps replacing it."""
    key = unique("obj") + "/atomic"
    rounds = 40 if size > 100_000 else 400
    child = spawn(
        objects_impl.peer_setup,
        f"""
        store = make()
        await store.put({key!r}, b"a" * {size})
        print("ready", flush=True)
        for i in range({rounds}):
            await store.put({key!r}, (b"b" if i % 2 else b"c") * {size})
        """,
    )
    wait_ready(child)

    async def body() -> set[bytes]:
        store = objects_impl.make()
        seen: set[bytes] = set()
        while child.poll() is None:
            data = await store.get(key)
            assert len(data) == size and data == data[:1] * size, "partial or mixed object"
            seen.add(data[:1])
        await store.delete_prefix(key)
        return seen

    seen = run(body())
    finish(child)
    assert seen <= {b"a", b"b", b"c"}


# ================================================================================================
# MessageService conformance
# ================================================================================================
async def new_queue(
    svc: MessageService,
    impl: MessagesImpl,
    *,
    visibility_timeout_s: float = 30,
    max_message_bytes: int | None = None,
) -> str:
    return await svc.create_queue(
        unique("q"),
        visibility_timeout_s=visibility_timeout_s,
        max_message_bytes=max_message_bytes or impl.limits.max_message_bytes,
    )


def test_send_receive_delete(messages_impl: MessagesImpl) -> None:
    async def body() -> None:
        svc = messages_impl.make()
        q = await new_queue(svc, messages_impl)
        entries = [Entry(f"body {i} ✓", {"target": str(i), "layer": "7"}) for i in range(3)]
        result = await svc.send_batch(q, entries)
        assert result.ok and result.failures == ()
        got = await drain(svc, q, delete=False)
        assert sorted(m.body for m in got) == sorted(e.body for e in entries)
        for m in got:
            i = m.body.split()[1]
            assert dict(m.attributes) == {"target": i, "layer": "7"}
            assert m.receive_count == 1
        assert (await svc.delete_batch(q, [m.receipt for m in got])).ok
        assert await svc.receive(q, max_messages=10, wait_s=0.2) == []
        await svc.delete_queue(q)
        close(svc)

    run(body())


def test_topic_fan_out_with_filter_policies(messages_impl: MessagesImpl) -> None:
    async def body() -> None:
        svc = messages_impl.make()
        topic = await svc.create_topic(unique("topic"))
        queues = [await new_queue(svc, messages_impl) for _ in range(3)]
        for i, q in enumerate(queues):
            await svc.subscribe(topic, q, filter_policy={"target": [str(i)]})
        everything = await new_queue(svc, messages_impl)
        await svc.subscribe(topic, everything, filter_policy={})
        several = await new_queue(svc, messages_impl)
        await svc.subscribe(topic, several, filter_policy={"target": ["0", "2"], "kind": ["x"]})

        entries = [
            Entry(f"m{n}", {"target": str(n % 3), "kind": "x" if n % 2 else "y"}) for n in range(8)
        ]
        entries.append(Entry("nobody's", {"target": "9"}))
        entries.append(Entry("no attributes"))
        assert (await svc.publish_batch(topic, entries)).ok

        for i, q in enumerate(queues):
            got = await drain(svc, q)
            assert sorted(m.body for m in got) == [f"m{n}" for n in range(8) if n % 3 == i]
            assert all(m.attributes["target"] == str(i) for m in got)
        got_all = await drain(svc, everything)
        assert sorted(m.body for m in got_all) == sorted(e.body for e in entries)
        got_several = await drain(svc, several)
        assert sorted(m.body for m in got_several) == ["m3", "m5"]  # target 0/2 and kind x
        for q in [*queues, everything, several]:
            await svc.delete_queue(q)
        await svc.delete_topic(topic)
        close(svc)

    run(body())


def test_subscription_made_by_another_client_takes_effect(messages_impl: MessagesImpl) -> None:
    async def body() -> None:
        publisher, admin = messages_impl.make(), messages_impl.make()
        topic = await admin.create_topic(unique("topic"))
        first = await new_queue(admin, messages_impl)
        second = await new_queue(admin, messages_impl)
        await admin.subscribe(topic, first, filter_policy={})
        assert (await publisher.publish_batch(topic, [Entry("one")])).ok
        await asyncio.sleep(0.2)  # the publisher's view of the subscriptions is not brand new
        await admin.subscribe(topic, second, filter_policy={})
        assert (await publisher.publish_batch(topic, [Entry("two")])).ok
        assert sorted(m.body for m in await drain(admin, first)) == ["one", "two"]
        assert [m.body for m in await drain(admin, second)] == ["two"]
        await admin.delete_topic(topic)
        await admin.delete_queue(first)
        await admin.delete_queue(second)
        close(publisher)
        close(admin)

    run(body())


def test_unknown_queue_and_topic_raise_not_found(messages_impl: MessagesImpl) -> None:
    async def body() -> None:
        svc = messages_impl.make()
        queue = await new_queue(svc, messages_impl)
        topic = await svc.create_topic(unique("topic"))
        missing_q, missing_t = unique("nq"), unique("nt")
        with pytest.raises(NotFound, match=missing_q):
            await svc.send_batch(missing_q, [Entry("x")])
        with pytest.raises(NotFound, match=missing_q):
            await svc.receive(missing_q, wait_s=0)
        with pytest.raises(NotFound, match=missing_q):
            await svc.delete_batch(missing_q, [])
        with pytest.raises(NotFound, match=missing_t):
            await svc.publish_batch(missing_t, [Entry("x")])
        with pytest.raises(NotFound, match=missing_t):
            await svc.subscribe(missing_t, queue, filter_policy={})
        with pytest.raises(NotFound, match=missing_q):
            await svc.subscribe(topic, missing_q, filter_policy={})
        # Deleting what does not exist is not an error.
        await svc.delete_queue(missing_q)
        await svc.delete_topic(missing_t)
        await svc.delete_queue(queue)
        await svc.delete_topic(topic)
        with pytest.raises(NotFound, match=queue):
            await svc.send_batch(queue, [Entry("x")])
        with pytest.raises(NotFound, match=topic):
            await svc.publish_batch(topic, [Entry("x")])
        close(svc)

    run(body())


def test_entry_over_the_queue_limit_fails_alone(messages_impl: MessagesImpl) -> None:
    async def body() -> None:
        svc = messages_impl.make()
        limit = 1024
        q = await new_queue(svc, messages_impl, max_message_bytes=limit)
        attrs = {"target": "1"}
        fits = Entry("x" * (limit - entry_size(Entry("", attrs))), attrs)
        assert entry_size(fits) == limit
        too_long = Entry(fits.body + "y", attrs)
        result = await svc.send_batch(q, [fits, too_long, Entry("small")])
        assert not result.ok
        (failure,) = result.failures
        assert failure.index == 1
        assert failure.code == "MessageTooLong"
        assert failure.retryable is False
        assert sorted(m.body for m in await drain(svc, q)) == sorted([fits.body, "small"])

        # Through a topic: the entry fails when it is too long for a queue it would reach.
        topic = await svc.create_topic(unique("topic"))
        await svc.subscribe(topic, q, filter_policy={"target": ["1"]})
        result = await svc.publish_batch(topic, [too_long, fits, Entry(too_long.body)])
        assert [(f.index, f.code, f.retryable) for f in result.failures] == [
            (0, "MessageTooLong", False)
        ]
        assert [m.body for m in await drain(svc, q)] == [fits.body]
        await svc.delete_topic(topic)
        await svc.delete_queue(q)
        close(svc)

    run(body())


def test_batch_over_the_limits_is_rejected_whole(messages_impl: MessagesImpl) -> None:
    limits = messages_impl.limits

    async def body() -> None:
        svc = messages_impl.make()
        q = await new_queue(svc, messages_impl)
        topic = await svc.create_topic(unique("topic"))
        await svc.subscribe(topic, q, filter_policy={})
        n = limits.max_batch_entries + 1
        too_many = [Entry(str(i)) for i in range(n)]
        for call in (svc.send_batch, svc.publish_batch):
            with pytest.raises(MessageTooLarge, match=f"{n} entries") as info:
                await call(q if call == svc.send_batch else topic, too_many)
            assert f"limit of {limits.max_batch_entries} entries" in str(info.value)

        # Each entry under the per-message limit, but together over the per-batch limit.
        per_entry = limits.max_message_bytes
        count = limits.max_batch_bytes // per_entry + 1
        assert count <= limits.max_batch_entries
        big = [Entry("z" * per_entry) for _ in range(count)]
        total = sum(entry_size(e) for e in big)
        for call in (svc.send_batch, svc.publish_batch):
            with pytest.raises(MessageTooLarge, match=f"{total} bytes") as info:
                await call(q if call == svc.send_batch else topic, big)
            assert f"limit of {limits.max_batch_bytes} bytes" in str(info.value)
        # Nothing of the rejected batches went in.
        assert await svc.receive(q, wait_s=0.2) == []
        await svc.delete_topic(topic)
        await svc.delete_queue(q)
        close(svc)

    run(body())


def test_undeleted_message_is_delivered_again_after_the_visibility_timeout(
    messages_impl: MessagesImpl,
) -> None:
    async def body() -> None:
        svc = messages_impl.make()
        q = await new_queue(svc, messages_impl, visibility_timeout_s=1)
        assert (await svc.send_batch(q, [Entry("again", {"k": "v"})])).ok
        (first,) = await svc.receive(q, max_messages=10, wait_s=1)
        assert first.receive_count == 1
        # Invisible while in flight ...
        assert await svc.receive(q, max_messages=10, wait_s=0.3) == []
        # ... and visible again after the timeout; the long poll wakes up for it.
        start = time.monotonic()
        (second,) = await svc.receive(q, max_messages=10, wait_s=5)
        assert time.monotonic() - start < 2.5
        assert (second.body, dict(second.attributes)) == ("again", {"k": "v"})
        assert second.receive_count == 2
        assert second.receipt != first.receipt
        # The stale receipt is not an error (and does not delete the new delivery's message).
        assert (await svc.delete_batch(q, [first.receipt])).ok
        assert (await svc.delete_batch(q, [second.receipt])).ok
        await asyncio.sleep(1.2)
        assert await svc.receive(q, wait_s=0.2) == []
        await svc.delete_queue(q)
        close(svc)

    run(body())


def test_deleted_message_is_not_delivered_again(messages_impl: MessagesImpl) -> None:
    async def body() -> None:
        svc = messages_impl.make()
        q = await new_queue(svc, messages_impl, visibility_timeout_s=1)
        await svc.send_batch(q, [Entry("once"), Entry("kept")])
        got = await drain(svc, q, delete=False)
        assert sorted(m.body for m in got) == ["kept", "once"]
        (once,) = [m for m in got if m.body == "once"]
        assert (await svc.delete_batch(q, [once.receipt])).ok
        await asyncio.sleep(1.2)
        again = await drain(svc, q, wait_s=0.5)
        assert [(m.body, m.receive_count) for m in again] == [("kept", 2)]
        await svc.delete_queue(q)
        close(svc)

    run(body())


def test_long_poll_wakes_when_another_process_sends(messages_impl: MessagesImpl) -> None:
    async def setup() -> str:
        svc = messages_impl.make()
        q = await new_queue(svc, messages_impl)
        close(svc)
        return q

    q = run(setup())
    child = spawn(
        messages_impl.peer_setup,
        f"""
        svc = make()
        print("ready", flush=True)
        sys.stdin.readline()
        await asyncio.sleep(0.3)
        await svc.send_batch({q!r}, [Entry(str(time.time_ns()))])
        """,
    )
    wait_ready(child)

    async def body() -> tuple[float, float]:
        svc = messages_impl.make()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        start = time.monotonic()
        got = await svc.receive(q, max_messages=10, wait_s=5)
        received_ns = time.time_ns()
        elapsed = time.monotonic() - start
        assert len(got) == 1
        await svc.delete_batch(q, [got[0].receipt])
        await svc.delete_queue(q)
        close(svc)
        return elapsed, (received_ns - int(got[0].body)) / 1e9

    elapsed, latency = run(body())
    finish(child)
    assert 0.2 < elapsed < 1.0, f"receive returned after {elapsed:.3f} s"
    assert latency < messages_impl.prompt_s, f"send to receive took {latency * 1e3:.1f} ms"


def test_long_poll_returns_empty_after_wait_s(messages_impl: MessagesImpl) -> None:
    async def body() -> float:
        svc = messages_impl.make()
        q = await new_queue(svc, messages_impl)
        start = time.monotonic()
        assert await svc.receive(q, max_messages=10, wait_s=1.0) == []
        elapsed = time.monotonic() - start
        await svc.delete_queue(q)
        close(svc)
        return elapsed

    elapsed = run(body())
    assert 0.95 <= elapsed < 2.0


def test_concurrent_receivers_in_one_process_all_wake(messages_impl: MessagesImpl) -> None:
    async def body() -> None:
        svc, sender = messages_impl.make(), messages_impl.make()
        q = await new_queue(svc, messages_impl)

        async def one() -> list[Message]:
            return await svc.receive(q, max_messages=1, wait_s=5)

        start = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.2)
        await sender.send_batch(q, [Entry(str(i)) for i in range(3)])
        results = await asyncio.gather(*tasks)
        assert time.monotonic() - start < 1.5
        assert sorted(m.body for r in results for m in r) == ["0", "1", "2"]
        await svc.delete_queue(q)
        close(svc)
        close(sender)

    run(body())


def test_many_producers_and_consumers_in_separate_processes(
    messages_impl: MessagesImpl, tmp_path: Path
) -> None:
    per_producer = 150

    async def setup() -> tuple[str, str]:
        svc = messages_impl.make()
        q = await new_queue(svc, messages_impl)
        topic = await svc.create_topic(unique("topic"))
        await svc.subscribe(topic, q, filter_policy={"to": ["q"]})
        close(svc)
        return q, topic

    q, topic = run(setup())
    done = tmp_path / "producers-done"
    producers = [
        spawn(
            messages_impl.peer_setup,
            f"""
            svc = make()
            for start in range(0, {per_producer}, 7):
                batch = [Entry(f"p{p}-{{i}}", {{"to": "q"}})
                         for i in range(start, min(start + 7, {per_producer}))]
                if {p} == 2:
                    result = await svc.publish_batch({topic!r}, batch)
                else:
                    result = await svc.send_batch({q!r}, batch)
                assert result.ok, result
            """,
        )
        for p in range(3)
    ]
    consumers = [
        spawn(
            messages_impl.peer_setup,
            f"""
            svc = make()
            while True:
                got = await svc.receive({q!r}, max_messages=10, wait_s=0.5)
                if got:
                    for m in got:
                        print(m.body, m.receive_count)
                    result = await svc.delete_batch({q!r}, [m.receipt for m in got])
                    assert result.ok, result
                elif os.path.exists({str(done)!r}):
                    break
            """,
        )
        for _ in range(3)
    ]
    for child in producers:
        finish(child)
    done.touch()
    lines = [line.split() for child in consumers for line in finish(child).splitlines()]

    async def leftovers() -> list[Message]:
        svc = messages_impl.make()
        rest = await drain(svc, q, wait_s=0.5)
        await svc.delete_topic(topic)
        await svc.delete_queue(q)
        close(svc)
        return rest

    rest = run(leftovers())
    assert rest == []
    counts = Counter(body for body, _count in lines)
    expected = {f"p{p}-{i}" for p in range(3) for i in range(per_producer)}
    assert set(counts) == expected, "messages were lost"
    if messages_impl.exactly_once:
        assert set(counts.values()) == {1}
        assert {count for _body, count in lines} == {"1"}


# ================================================================================================
# Local implementations only: fault injection, validation, layout
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

    run(body())


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

    assert run(body(0.0)) == 200
    assert 250 < run(body(0.5)) < 350
    with pytest.raises(ValueError, match="duplicate_rate"):
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
    assert run(order(False, None)) == sent  # oldest first without shuffle
    shuffled = run(order(True, 1))
    assert shuffled != sent and sorted(shuffled) == sent
    assert run(order(True, 1)) == shuffled  # repeatable with a seed


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
        start = time.monotonic()
        with pytest.raises(NotFound, match="gone"):
            await svc.receive(q, wait_s=5)
        assert time.monotonic() - start < 1.0
        await task
        # A queue created again under the same name starts empty, with the new settings.
        await admin.create_queue(q, visibility_timeout_s=1, max_message_bytes=100)
        assert await svc.receive(q, wait_s=0) == []
        result = await svc.send_batch(q, [Entry("x" * 101)])
        assert [f.code for f in result.failures] == ["MessageTooLong"]
        svc.close()
        admin.close()

    run(body())


def test_spool_validation(tmp_path: Path) -> None:
    async def body() -> None:
        svc = SpoolMessageService(tmp_path, LOCAL_LIMITS)
        for bad in ("", "a/b", "..", "x" * 81, "sp ace"):
            with pytest.raises(ValueError, match="queue name"):
                await svc.create_queue(bad, visibility_timeout_s=1, max_message_bytes=10)
            with pytest.raises(NotFound):
                await svc.send_batch(bad, [Entry("x")])
        with pytest.raises(ValueError, match="topic name"):
            await svc.create_topic("../etc")
        with pytest.raises(ConfigError, match="max_message_bytes"):
            await svc.create_queue(
                "q", visibility_timeout_s=1, max_message_bytes=LOCAL_LIMITS.max_message_bytes + 1
            )
        with pytest.raises(ConfigError, match="visibility_timeout_s"):
            await svc.create_queue("q", visibility_timeout_s=-1, max_message_bytes=10)
        q = await svc.create_queue("q", visibility_timeout_s=1, max_message_bytes=10)
        t = await svc.create_topic("t")
        with pytest.raises(ValueError, match=r"write \['3'\]"):
            await svc.subscribe(t, q, filter_policy={"target": "3"})
        with pytest.raises(ValueError, match="max_messages"):
            await svc.receive(q, max_messages=LOCAL_LIMITS.max_batch_entries + 1)
        result = await svc.delete_batch(q, ["not-a-receipt"])
        assert [f.code for f in result.failures] == ["ReceiptHandleIsInvalid"]
        result = await svc.send_batch(q, [Entry("\udcff")])
        assert [f.code for f in result.failures] == ["InvalidMessageContents"]
        svc.close()

    run(body())


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

    run(body())


def test_directory_store_keys_and_layout(tmp_path: Path) -> None:
    async def body() -> None:
        store = DirectoryObjectStore(tmp_path)
        await store.put("run/layer1/chunk-0", b"data")
        assert (tmp_path / "run" / "layer1" / "chunk-0").read_bytes() == b"data"
        for bad in ("", "/abs", "a//b", "a/", "../up", "a/../b", "a/./b", ".tmp/x", "nul\0"):
            with pytest.raises(ValueError, match="object key"):
                await store.put(bad, b"x")
            with pytest.raises(ValueError, match="object key"):
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

    run(body())


def test_directory_store_size_limit(tmp_path: Path) -> None:
    async def body() -> None:
        store = DirectoryObjectStore(tmp_path, limits=Limits(max_object_bytes=10))
        await store.put("ok", b"x" * 10)
        with pytest.raises(MessageTooLarge, match="11 bytes"):
            await store.put("big", b"x" * 11)

    run(body())


# ================================================================================================
# AWS implementation only
# ================================================================================================
def test_aws_entry_over_the_queue_limit_fails_alone_on_send(moto_server: Any) -> None:
    """The send_batch half of test_entry_over_the_queue_limit_fails_alone (see SKIPS)."""
    impl = _aws_messages(moto_server)

    async def body() -> None:
        svc = impl.make()
        limit = 1024
        q = await new_queue(svc, impl, max_message_bytes=limit)
        attrs = {"target": "1"}
        fits = Entry("x" * (limit - entry_size(Entry("", attrs))), attrs)
        too_long = Entry(fits.body + "y", attrs)
        result = await svc.send_batch(q, [fits, too_long, Entry("small")])
        assert [(f.index, f.code, f.retryable) for f in result.failures] == [
            (1, "MessageTooLong", False)
        ]
        # A second client learns the queue's limit from its attributes.
        other = impl.make()
        result = await other.send_batch(q, [too_long])
        assert [(f.index, f.code) for f in result.failures] == [(0, "MessageTooLong")]
        assert sorted(m.body for m in await drain(svc, q)) == sorted([fits.body, "small"])
        await svc.delete_queue(q)

    run(body())
