"""Conformance suites for the two transports: an S3-like :class:`~fsdgraph.transport.ObjectStore`
and an SNS+SQS-like :class:`~fsdgraph.transport.MessageService`. A few lines of pytest run them.

Subclass a suite in a test module and give it a fixture that makes clients; pytest collects the
inherited ``test_*`` methods::

    import pytest
    from fsdgraph.backends.local.objectstore import DirectoryObjectStore
    from fsdgraph.backends.local.queues import SpoolMessageService
    from fsdgraph.testing.transports import MessageServiceSuite, ObjectStoreSuite
    from fsdgraph.transport import Limits

    LIMITS = Limits(max_message_bytes=4096, max_batch_bytes=8192, max_object_bytes=4 << 20)

    class TestDirectoryStore(ObjectStoreSuite):
        @pytest.fixture
        def make_objects(self, tmp_path):
            return lambda: DirectoryObjectStore(tmp_path / "objects", limits=LIMITS)

    class TestSpoolQueues(MessageServiceSuite):
        exactly_once = True  # no duplicates without fault injection

        @pytest.fixture
        def make_messages(self, tmp_path):
            return lambda: SpoolMessageService(tmp_path / "spool", LIMITS)

The fixtures a plugin provides:

* ``make_objects`` / ``make_messages`` — a callable without arguments that returns a new client
  on the same data (bucket, queues, topics) at every call. A test calls it inside one event loop,
  once or several times (two clients of one service must see each other's writes); a client
  with a ``close()`` (plain or a coroutine) is closed when that event loop ends.
* ``objects_peer_setup`` / ``messages_peer_setup`` (optional) — Python source that defines
  ``make()``, returning a client on the same data, in another OS process. The cross-process
  tests (an object replaced under a reader; a long poll woken by another process; producers and
  consumers in separate processes) run with it and are skipped without it.

Class attributes of :class:`MessageServiceSuite` describe what the implementation promises:
``exactly_once`` (each message delivered once when deletes succeed and nothing is injected; SQS
promises only at-least-once) and ``publish_reports_queue_limits`` (a published entry too long for
a subscribed queue fails in the BatchResult; SNS drops that delivery later instead).

What is checked:

* :class:`ObjectStoreSuite` — put/get round trips (empty objects included); a missing key raises
  NotFound naming it, and a "directory" is not an object; an overwrite replaces; listing by plain
  prefix, sorted; ``delete_prefix`` counts and removes; a reader never sees a partial object while
  another process replaces it; an object over ``limits.max_object_bytes`` is refused whole.
* :class:`MessageServiceSuite` — send/receive/delete with attributes; topic fan-out through filter
  policies; a subscription made by another client; NotFound for unknown queues and topics;
  entries too long for the queue (or not UTF-8 text) fail alone; the rules of
  :mod:`fsdgraph.transport` with their exact messages (batches over the entry or byte limit are
  rejected whole, ``receive`` arguments, empty batches); redelivery after the visibility timeout
  and none after a delete; long polls that wake at once and time out on time; concurrent
  receivers; many producers and consumers in separate processes, nothing lost.

Names (keys, queues, topics) are unique per test, so a real cloud account can be shared; tests
remove what they create. Tests run their coroutines with :func:`asyncio.run` (no pytest-asyncio).

This module imports pytest, which is in the ``test`` extra (``pip install 'fsdgraph[test]'``), as
the rest of :mod:`fsdgraph.testing`; the runtime never imports it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from fsdgraph.errors import ConfigError, MessageTooLarge, NotFound
from fsdgraph.transport import Entry, Message, MessageService, ObjectStore, entry_size

__all__ = ["MessageServiceSuite", "ObjectStoreSuite", "drain", "run", "unique"]

T = TypeVar("T")
C = TypeVar("C")

#: The largest object limit the size test exercises (it builds an object one byte larger).
MAX_TESTED_OBJECT_BYTES = 64 * 1024 * 1024
#: A long poll that must be woken by an event: far longer than :data:`WAKE_S`, so a receive that
#: is not woken cannot pass by returning when its wait ends.
LONG_POLL_S = 300.0
#: How long a test waits for an event before it fails (a safety net against a hang, not a
#: performance bound: the events come within a second on an idle machine).
WAKE_S = 60.0


async def woken(awaitable: Awaitable[T], what: str) -> T:
    """``await awaitable``, failing the test if it has not completed within :data:`WAKE_S`."""
    try:
        return await asyncio.wait_for(awaitable, WAKE_S)
    except TimeoutError:
        pytest.fail(f"{what} was not woken within {WAKE_S:g} s")


def unique(kind: str) -> str:
    """A fresh name for a key prefix, queue or topic."""
    return f"t-{kind}-{uuid.uuid4().hex[:12]}"


def run(make: Callable[[], C], body: Callable[[Callable[[], C]], Coroutine[Any, Any, T]]) -> T:
    """Run ``body(new)`` in a fresh event loop: ``new()`` makes a client with ``make``, closed
    (``close()``, awaited if it is a coroutine) when the loop ends."""

    async def main() -> T:
        made: list[C] = []

        def new() -> C:
            client = make()
            made.append(client)
            return client

        try:
            return await body(new)
        finally:
            for client in reversed(made):
                closer = getattr(client, "close", None)
                if callable(closer):
                    result = closer()
                    if inspect.isawaitable(result):
                        await result

    return asyncio.run(main())


async def drain(service: MessageService, queue: str, *, wait_s: float = 0.2,
                delete: bool = True) -> list[Message]:
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


# -- child processes -----------------------------------------------------------------------------
def spawn(setup: str, body: str) -> subprocess.Popen[str]:
    """Run ``body`` (the inside of an ``async def main()``, which may use ``make`` from
    ``setup``) in a new Python process, with pipes for stdin/stdout/stderr."""
    script = (
        "import asyncio, os, sys, time\n"
        "from fsdgraph.transport import Entry\n"
        + textwrap.dedent(setup)
        + "\nasync def main():\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\nasyncio.run(main())\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def _exactly(message: str) -> str:
    """A ``match`` pattern for exactly ``message``."""
    return f"^{re.escape(message)}$"


def _need_peer(setup: str | None, fixture: str) -> str:
    if setup is None:
        pytest.skip(f"cross-process test: define a {fixture} fixture (Python source that defines "
                    f"make() in a child process) to run it")
    return setup


# ================================================================================================
# ObjectStore
# ================================================================================================
class ObjectStoreSuite:
    """The :class:`~fsdgraph.transport.ObjectStore` contract (see the module docstring)."""

    @pytest.fixture
    def make_objects(self) -> Callable[[], ObjectStore]:
        pytest.fail("define a make_objects fixture returning a callable that makes a client")

    @pytest.fixture
    def objects_peer_setup(self) -> str | None:
        return None

    def test_put_get_roundtrip(self, make_objects: Callable[[], ObjectStore]) -> None:
        async def body(new: Callable[[], ObjectStore]) -> None:
            store = new()
            prefix = unique("obj") + "/"
            data = bytes(range(256)) * 100
            await store.put(prefix + "a/b/c.bin", data)
            await store.put(prefix + "empty", b"")
            assert await store.get(prefix + "a/b/c.bin") == data
            assert await store.get(prefix + "empty") == b""
            await store.delete_prefix(prefix)

        run(make_objects, body)

    def test_get_missing_raises_not_found_naming_the_key(
            self, make_objects: Callable[[], ObjectStore]) -> None:
        async def body(new: Callable[[], ObjectStore]) -> None:
            store = new()
            key = unique("obj") + "/nothing/here"
            with pytest.raises(NotFound, match=f"no object at key '{key}'"):
                await store.get(key)
            await store.put(key + "/below", b"x")
            with pytest.raises(NotFound):  # a "directory" is not an object
                await store.get(key)
            await store.delete_prefix(key)

        run(make_objects, body)

    def test_overwrite_replaces_the_object(self, make_objects: Callable[[], ObjectStore]) -> None:
        async def body(new: Callable[[], ObjectStore]) -> None:
            store = new()
            key = unique("obj") + "/k"
            await store.put(key, b"first version, long")
            await store.put(key, b"second")
            assert await store.get(key) == b"second"
            assert await store.list(key) == [key]
            await store.delete_prefix(key)

        run(make_objects, body)

    def test_put_if_absent_creates_once_among_concurrent_callers(
            self, make_objects: Callable[[], ObjectStore]) -> None:
        async def body(new: Callable[[], ObjectStore]) -> None:
            stores = [new() for _ in range(3)]
            key = unique("obj") + "/claim/7"
            wins = await asyncio.gather(*(stores[i % 3].put_if_absent(key, f"caller {i}".encode())
                                          for i in range(12)))
            assert sum(wins) == 1
            assert await stores[0].get(key) == f"caller {wins.index(True)}".encode()
            assert await stores[1].put_if_absent(key, b"late") is False
            assert await stores[2].get(key) == f"caller {wins.index(True)}".encode()
            await stores[0].delete_prefix(key)
            assert await stores[0].put_if_absent(key, b"again") is True  # gone: free again
            await stores[0].delete_prefix(key)

        run(make_objects, body)

    def test_list_by_prefix_sorted(self, make_objects: Callable[[], ObjectStore]) -> None:
        async def body(new: Callable[[], ObjectStore]) -> None:
            store = new()
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

        run(make_objects, body)

    def test_delete_prefix_counts_and_removes(
            self, make_objects: Callable[[], ObjectStore]) -> None:
        async def body(new: Callable[[], ObjectStore]) -> None:
            store = new()
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

        run(make_objects, body)

    def test_put_over_the_object_limit_is_refused(
            self, make_objects: Callable[[], ObjectStore]) -> None:
        async def body(new: Callable[[], ObjectStore]) -> str:
            store = new()
            limits = getattr(store, "limits", None)
            if limits is None:
                return "the store has no limits (ObjectStore.limits): it takes any size"
            limit = limits.max_object_bytes
            if limit > MAX_TESTED_OBJECT_BYTES:
                return f"max_object_bytes of {limit} is too large to test here"
            key = unique("obj") + "/big"
            with pytest.raises(MessageTooLarge, match=_exactly(
                    f"object {key!r} of {limit + 1} bytes exceeds the limit of {limit} bytes")):
                await store.put(key, bytes(limit + 1))
            with pytest.raises(NotFound):  # nothing of it was stored
                await store.get(key)
            return ""

        skipped = run(make_objects, body)
        if skipped:
            pytest.skip(skipped)

    @pytest.mark.parametrize("size", [1000, 2 * 1024 * 1024])
    def test_concurrent_overwrite_from_another_process_is_atomic(
            self, make_objects: Callable[[], ObjectStore], objects_peer_setup: str | None,
            size: int) -> None:
        """A reader never sees a partial object while another process keeps replacing it."""
        setup = _need_peer(objects_peer_setup, "objects_peer_setup")
        key = unique("obj") + "/atomic"
        rounds = 40 if size > 100_000 else 400
        child = spawn(setup, f"""
            store = make()
            await store.put({key!r}, b"a" * {size})
            print("ready", flush=True)
            for i in range({rounds}):
                await store.put({key!r}, (b"b" if i % 2 else b"c") * {size})
            """)
        wait_ready(child)

        async def body(new: Callable[[], ObjectStore]) -> set[bytes]:
            store = new()
            seen: set[bytes] = set()
            while child.poll() is None:
                data = await store.get(key)
                assert len(data) == size and data == data[:1] * size, "partial or mixed object"
                seen.add(data[:1])
            await store.delete_prefix(key)
            return seen

        seen = run(make_objects, body)
        finish(child)
        assert seen <= {b"a", b"b", b"c"}


# ================================================================================================
# MessageService
# ================================================================================================
async def new_queue(svc: MessageService, *, visibility_timeout_s: float = 30,
                    max_message_bytes: int | None = None) -> str:
    """A queue with a unique name (its message limit: the service's, unless given)."""
    return await svc.create_queue(
        unique("q"), visibility_timeout_s=visibility_timeout_s,
        max_message_bytes=max_message_bytes or svc.limits.max_message_bytes)


class MessageServiceSuite:
    """The :class:`~fsdgraph.transport.MessageService` contract (see the module docstring)."""

    #: Each message is delivered once when deletes succeed and no fault is injected.
    exactly_once: ClassVar[bool] = False
    #: A published entry too long for a queue it would reach fails in the BatchResult.
    publish_reports_queue_limits: ClassVar[bool] = True

    @pytest.fixture
    def make_messages(self) -> Callable[[], MessageService]:
        pytest.fail("define a make_messages fixture returning a callable that makes a client")

    @pytest.fixture
    def messages_peer_setup(self) -> str | None:
        return None

    def test_send_receive_delete(self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            q = await new_queue(svc)
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

        run(make_messages, body)

    def test_topic_fan_out_with_filter_policies(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            topic = await svc.create_topic(unique("topic"))
            queues = [await new_queue(svc) for _ in range(3)]
            for i, q in enumerate(queues):
                await svc.subscribe(topic, q, filter_policy={"target": [str(i)]})
            everything = await new_queue(svc)
            await svc.subscribe(topic, everything, filter_policy={})
            several = await new_queue(svc)
            await svc.subscribe(topic, several,
                                filter_policy={"target": ["0", "2"], "kind": ["x"]})

            entries = [Entry(f"m{n}", {"target": str(n % 3), "kind": "x" if n % 2 else "y"})
                       for n in range(8)]
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

        run(make_messages, body)

    def test_subscription_made_by_another_client_takes_effect(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            publisher, admin = new(), new()
            topic = await admin.create_topic(unique("topic"))
            first = await new_queue(admin)
            second = await new_queue(admin)
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

        run(make_messages, body)

    def test_unknown_queue_and_topic_raise_not_found(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            queue = await new_queue(svc)
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

        run(make_messages, body)

    def test_entry_over_the_queue_limit_fails_alone(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            limit = min(1024, svc.limits.max_message_bytes)
            q = await new_queue(svc, max_message_bytes=limit)
            attrs = {"target": "1"}
            fits = Entry("x" * (limit - entry_size(Entry("", attrs))), attrs)
            assert entry_size(fits) == limit
            too_long = Entry(fits.body + "y", attrs)
            result = await svc.send_batch(q, [fits, too_long, Entry("small")])
            assert [(f.index, f.code, f.retryable) for f in result.failures] == [
                (1, "MessageTooLong", False)]
            assert result.failures[0].message == (
                f"entry 1 of {limit + 1} bytes exceeds the limit of {limit} bytes")
            # Another client learns the queue's limit (from the service, not from us).
            result = await new().send_batch(q, [too_long])
            assert [(f.index, f.code) for f in result.failures] == [(0, "MessageTooLong")]
            assert sorted(m.body for m in await drain(svc, q)) == sorted([fits.body, "small"])
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_published_entry_over_a_subscribed_queue_limit_fails_alone(
            self, make_messages: Callable[[], MessageService]) -> None:
        """The entry too long for a subscribed queue fails alone in the BatchResult or, where
        ``publish_reports_queue_limits`` is False (SNS), is accepted and never delivered; the
        entries that fit arrive either way."""

        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            limit = min(1024, svc.limits.max_message_bytes)
            q = await new_queue(svc, max_message_bytes=limit)
            attrs = {"target": "1"}
            fits = Entry("x" * (limit - entry_size(Entry("", attrs))), attrs)
            too_long = Entry(fits.body + "y", attrs)
            # The entry fails when it is too long for a queue it would reach.
            topic = await svc.create_topic(unique("topic"))
            await svc.subscribe(topic, q, filter_policy={"target": ["1"]})
            result = await svc.publish_batch(topic, [too_long, fits, Entry(too_long.body)])
            delivered = [m.body for m in await drain(svc, q)]
            if self.publish_reports_queue_limits:
                assert [(f.index, f.code, f.retryable) for f in result.failures] == [
                    (0, "MessageTooLong", False)]
                assert delivered == [fits.body]
            else:  # SNS drops such a delivery later (moto even delivers it): only the fit counts
                assert result.ok, result.failures
                assert fits.body in delivered
                assert set(delivered) <= {fits.body, too_long.body}
            await svc.delete_topic(topic)
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_entry_that_is_not_utf8_text_fails_alone(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            q = await new_queue(svc)
            topic = await svc.create_topic(unique("topic"))
            await svc.subscribe(topic, q, filter_policy={})
            bad = Entry("\udcff")  # a lone surrogate: no UTF-8 form
            for call, to in ((svc.send_batch, q), (svc.publish_batch, topic)):
                result = await call(to, [Entry("fine"), bad])
                assert [(f.index, f.code, f.retryable) for f in result.failures] == [
                    (1, "InvalidMessageContents", False)]
            assert [m.body for m in await drain(svc, q)] == ["fine", "fine"]
            await svc.delete_topic(topic)
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_batch_over_the_limits_is_rejected_whole(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            limits = svc.limits
            q = await new_queue(svc)
            topic = await svc.create_topic(unique("topic"))
            await svc.subscribe(topic, q, filter_policy={})
            n = limits.max_batch_entries + 1
            too_many = [Entry(str(i)) for i in range(n)]
            for call, to in ((svc.send_batch, q), (svc.publish_batch, topic)):
                with pytest.raises(MessageTooLarge, match=_exactly(
                        f"batch of {n} entries exceeds the limit of "
                        f"{limits.max_batch_entries} entries per batch")):
                    await call(to, too_many)

            # Each entry under the per-message limit, but together over the per-batch limit.
            per_entry = limits.max_message_bytes
            count = limits.max_batch_bytes // per_entry + 1
            assert count <= limits.max_batch_entries
            big = [Entry("z" * per_entry) for _ in range(count)]
            total = sum(entry_size(e) for e in big)
            for call, to in ((svc.send_batch, q), (svc.publish_batch, topic)):
                with pytest.raises(MessageTooLarge, match=_exactly(
                        f"batch of {count} entries totalling {total} bytes exceeds the limit of "
                        f"{limits.max_batch_bytes} bytes per batch")):
                    await call(to, big)
            # Nothing of the rejected batches went in.
            assert await svc.receive(q, wait_s=0.2) == []
            await svc.delete_topic(topic)
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_delete_batch_over_the_entry_limit_is_rejected_whole(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            q = await new_queue(svc)
            assert (await svc.send_batch(q, [Entry("kept")])).ok
            (msg,) = await svc.receive(q, wait_s=1)
            n = svc.limits.max_batch_entries + 1
            with pytest.raises(MessageTooLarge, match=_exactly(
                    f"batch of {n} entries exceeds the limit of {svc.limits.max_batch_entries} "
                    f"entries per batch")):
                await svc.delete_batch(q, [msg.receipt] * n)
            assert (await svc.delete_batch(q, [msg.receipt])).ok
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_empty_batches_send_nothing(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            q = await new_queue(svc)
            topic = await svc.create_topic(unique("topic"))
            await svc.subscribe(topic, q, filter_policy={})
            assert (await svc.send_batch(q, [])).ok
            assert (await svc.publish_batch(topic, [])).ok
            assert (await svc.delete_batch(q, [])).ok
            assert await svc.receive(q, wait_s=0.2) == []
            # The queue or topic must still exist.
            missing_q, missing_t = unique("nq"), unique("nt")
            with pytest.raises(NotFound, match=missing_q):
                await svc.send_batch(missing_q, [])
            with pytest.raises(NotFound, match=missing_t):
                await svc.publish_batch(missing_t, [])
            await svc.delete_topic(topic)
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_receive_arguments_are_checked_before_any_request(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            most = svc.limits.max_batch_entries
            missing = unique("nq")  # a ConfigError, not NotFound: nothing was asked
            for bad in (0, -1, most + 1, 2.0, True):
                with pytest.raises(ConfigError, match=_exactly(
                        f"max_messages must be an integer from 1 to {most} "
                        f"(Limits.max_batch_entries), got {bad!r}")):
                    await svc.receive(missing, max_messages=bad, wait_s=0)  # type: ignore[arg-type]
            for wait in (-0.5, math.inf, math.nan):
                with pytest.raises(ConfigError, match=_exactly(
                        f"wait_s must be a finite number >= 0, got {wait!r}")):
                    await svc.receive(missing, max_messages=1, wait_s=wait)
            q = await new_queue(svc)
            assert (await svc.send_batch(q, [Entry(str(i)) for i in range(most)])).ok
            got: list[Message] = []
            while len(got) < most:  # up to max_messages per call, as many calls as it takes
                batch = await svc.receive(q, max_messages=most, wait_s=1)
                assert batch and len(batch) <= most
                got += batch
            assert sorted(m.body for m in got) == sorted(str(i) for i in range(most))
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_undeleted_message_is_delivered_again_after_the_visibility_timeout(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            q = await new_queue(svc, visibility_timeout_s=1)
            assert (await svc.send_batch(q, [Entry("again", {"k": "v"})])).ok
            (first,) = await svc.receive(q, max_messages=10, wait_s=1)
            assert first.receive_count == 1
            # Invisible while in flight ...
            assert await svc.receive(q, max_messages=10, wait_s=0.3) == []
            # ... and visible again after the timeout; the long poll wakes up for it.
            (second,) = await woken(svc.receive(q, max_messages=10, wait_s=LONG_POLL_S),
                                    "a receive waiting for the redelivery")
            assert (second.body, dict(second.attributes)) == ("again", {"k": "v"})
            assert second.receive_count == 2
            assert second.receipt != first.receipt
            # The stale receipt is not an error (and does not delete the new delivery's message).
            assert (await svc.delete_batch(q, [first.receipt])).ok
            assert (await svc.delete_batch(q, [second.receipt])).ok
            await asyncio.sleep(1.2)
            assert await svc.receive(q, wait_s=0.2) == []
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_deleted_message_is_not_delivered_again(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc = new()
            q = await new_queue(svc, visibility_timeout_s=1)
            await svc.send_batch(q, [Entry("once"), Entry("kept")])
            got = await drain(svc, q, delete=False)
            assert sorted(m.body for m in got) == ["kept", "once"]
            (once,) = [m for m in got if m.body == "once"]
            assert (await svc.delete_batch(q, [once.receipt])).ok
            await asyncio.sleep(1.2)
            again = await drain(svc, q, wait_s=0.5)
            assert [(m.body, m.receive_count) for m in again] == [("kept", 2)]
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_long_poll_wakes_when_another_process_sends(
            self, make_messages: Callable[[], MessageService],
            messages_peer_setup: str | None) -> None:
        setup = _need_peer(messages_peer_setup, "messages_peer_setup")

        async def create(new: Callable[[], MessageService]) -> str:
            return await new_queue(new())

        q = run(make_messages, create)
        child = spawn(setup, f"""
            svc = make()
            print("ready", flush=True)
            sys.stdin.readline()
            await asyncio.sleep(0.3)
            await svc.send_batch({q!r}, [Entry(str(time.time_ns()))])
            """)
        wait_ready(child)

        async def body(new: Callable[[], MessageService]) -> float:
            svc = new()
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            start = time.monotonic()
            got = await woken(svc.receive(q, max_messages=10, wait_s=LONG_POLL_S),
                              "a receive waiting for another process's send")
            elapsed = time.monotonic() - start
            assert len(got) == 1
            await svc.delete_batch(q, [got[0].receipt])
            await svc.delete_queue(q)
            return elapsed

        elapsed = run(make_messages, body)
        finish(child)
        assert elapsed > 0.2, f"receive returned after {elapsed:.3f} s, before the send"

    def test_long_poll_returns_empty_after_wait_s(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> float:
            svc = new()
            q = await new_queue(svc)
            start = time.monotonic()
            assert await woken(svc.receive(q, max_messages=10, wait_s=1.0),
                               "an empty long poll of 1 s") == []
            elapsed = time.monotonic() - start
            await svc.delete_queue(q)
            return elapsed

        elapsed = run(make_messages, body)
        assert elapsed >= 0.95, f"an empty long poll of 1 s returned after {elapsed:.3f} s"

    def test_concurrent_receivers_in_one_process_all_wake(
            self, make_messages: Callable[[], MessageService]) -> None:
        async def body(new: Callable[[], MessageService]) -> None:
            svc, sender = new(), new()
            q = await new_queue(svc)

            async def one() -> list[Message]:
                return await svc.receive(q, max_messages=1, wait_s=LONG_POLL_S)

            tasks = [asyncio.create_task(one()) for _ in range(3)]
            await asyncio.sleep(0.2)
            await sender.send_batch(q, [Entry(str(i)) for i in range(3)])
            results = await woken(asyncio.gather(*tasks), "three waiting receivers")
            assert sorted(m.body for r in results for m in r) == ["0", "1", "2"]
            await svc.delete_queue(q)

        run(make_messages, body)

    def test_many_producers_and_consumers_in_separate_processes(
            self, make_messages: Callable[[], MessageService],
            messages_peer_setup: str | None, tmp_path: Path) -> None:
        setup = _need_peer(messages_peer_setup, "messages_peer_setup")
        per_producer = 150

        async def create(new: Callable[[], MessageService]) -> tuple[str, str]:
            svc = new()
            q = await new_queue(svc)
            topic = await svc.create_topic(unique("topic"))
            await svc.subscribe(topic, q, filter_policy={"to": ["q"]})
            return q, topic

        q, topic = run(make_messages, create)
        done = tmp_path / "producers-done"
        producers = [spawn(setup, f"""
            svc = make()
            for start in range(0, {per_producer}, 7):
                batch = [Entry(f"p{p}-{{i}}", {{"to": "q"}})
                         for i in range(start, min(start + 7, {per_producer}))]
                if {p} == 2:
                    result = await svc.publish_batch({topic!r}, batch)
                else:
                    result = await svc.send_batch({q!r}, batch)
                assert result.ok, result
            """) for p in range(3)]
        consumers = [spawn(setup, f"""
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
            """) for _ in range(3)]
        for child in producers:
            finish(child)
        done.touch()
        lines = [line.split() for child in consumers for line in finish(child).splitlines()]

        async def leftovers(new: Callable[[], MessageService]) -> list[Message]:
            svc = new()
            rest = await drain(svc, q, wait_s=0.5)
            await svc.delete_topic(topic)
            await svc.delete_queue(q)
            return rest

        assert run(make_messages, leftovers) == []
        counts = Counter(body for body, _count in lines)
        expected = {f"p{p}-{i}" for p in range(3) for i in range(per_producer)}
        assert set(counts) == expected, "messages were lost"
        if self.exactly_once:
            assert set(counts.values()) == {1}
            assert {count for _body, count in lines} == {"1"}
