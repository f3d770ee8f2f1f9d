"""The transport rules written once in :mod:`fsdgraph.transport` (and :mod:`fsdgraph.retry`),
checked on a recording implementation: each rule with its exact message, and that a call it
refuses never reaches the implementation. Also: ``Limits`` and the transports' constructors
refuse bad configuration with ConfigError, the invocation payload is checked on the core path,
AWS errors say whether to retry, and the density threshold is one constant.

The same rules are checked end to end on every shipped transport by the conformance kit
(tests/test_local_transports.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
import fsdgraph.retry as retry_module
from fsdgraph.errors import (
    ConfigError,
    FsdError,
    InputError,
    MessageTooLarge,
    NotFound,
    TransportError,
)
from fsdgraph.retry import Backoff
from fsdgraph.transport import (
    BatchResult,
    Entry,
    Failure,
    Limits,
    Message,
    MessageService,
    ObjectStore,
    check_invoke_payload,
    delete_received,
    entry_failure,
    entry_size,
)

LIMITS = Limits(max_message_bytes=100, max_batch_entries=3, max_batch_bytes=150,
                max_object_bytes=10)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


class Recorder(MessageService):
    """Records what reaches the implementation; answers with ``answers`` (popped per call)."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.calls: list[tuple[Any, ...]] = []
        self.answers: list[BatchResult] = []

    def _answer(self) -> BatchResult:
        return self.answers.pop(0) if self.answers else BatchResult()

    async def create_queue(self, name: str, *, visibility_timeout_s: float,
                           max_message_bytes: int) -> str:
        return name

    async def create_topic(self, name: str) -> str:
        return name

    async def subscribe(self, topic: str, queue: str, *,
                        filter_policy: Mapping[str, Sequence[str]]) -> None:
        pass

    async def delete_queue(self, queue: str) -> None:
        pass

    async def delete_topic(self, topic: str) -> None:
        pass

    async def _publish_batch(self, topic: str, entries: Sequence[Entry],
                             sizes: Sequence[int | None]) -> BatchResult:
        self.calls.append(("publish", topic, list(entries), list(sizes)))
        return self._answer()

    async def _send_batch(self, queue: str, entries: Sequence[Entry],
                          sizes: Sequence[int | None]) -> BatchResult:
        self.calls.append(("send", queue, list(entries), list(sizes)))
        return self._answer()

    async def _receive(self, queue: str, max_messages: int, wait_s: float) -> list[Message]:
        self.calls.append(("receive", queue, max_messages, wait_s))
        return []

    async def _delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        self.calls.append(("delete", queue, list(receipts)))
        return self._answer()


class Store(ObjectStore):
    def __init__(self, limits: Limits | None) -> None:
        self.limits = limits
        self.objects: dict[str, bytes] = {}

    async def _put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        return self.objects.setdefault(key, data) is data

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise NotFound(f"no object at key {key!r}") from None

    async def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [k for k in self.objects if k.startswith(prefix)]
        for k in doomed:
            del self.objects[k]
        return len(doomed)


# -- Limits ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Limits)])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_limits_refuse_anything_but_a_positive_integer(field: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=exactly(
            f"Limits.{field} must be a positive integer, got {bad!r}")) as info:
        Limits(**{field: bad})  # type: ignore[arg-type]
    assert isinstance(info.value, InputError) and isinstance(info.value, FsdError)
    assert not isinstance(info.value, ValueError)


# -- receive ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -3, 4, 2.0, True, None])
def test_receive_needs_max_messages_from_one_to_the_batch_limit(bad: object) -> None:
    svc = Recorder()
    with pytest.raises(ConfigError, match=exactly(
            f"max_messages must be an integer from 1 to 3 (Limits.max_batch_entries), "
            f"got {bad!r}")):
        asyncio.run(svc.receive("q", max_messages=bad, wait_s=0))  # type: ignore[arg-type]
    assert svc.calls == []


@pytest.mark.parametrize("bad", [-0.001, -1, math.inf, math.nan, "1", None])
def test_receive_needs_a_finite_wait_of_at_least_zero(bad: object) -> None:
    svc = Recorder()
    with pytest.raises(ConfigError, match=exactly(
            f"wait_s must be a finite number >= 0, got {bad!r}")):
        asyncio.run(svc.receive("q", max_messages=1, wait_s=bad))  # type: ignore[arg-type]
    assert svc.calls == []


def test_receive_within_the_rules_reaches_the_implementation() -> None:
    svc = Recorder()
    asyncio.run(svc.receive("q", max_messages=3, wait_s=0))
    asyncio.run(svc.receive("q", max_messages=1, wait_s=2.5))
    with pytest.raises(ConfigError):  # the default of 10 is over this service's limit of 3
        asyncio.run(svc.receive("q"))
    assert svc.calls == [("receive", "q", 3, 0), ("receive", "q", 1, 2.5)]


def test_the_default_max_messages_fits_aws_limits() -> None:
    svc = Recorder(Limits())
    asyncio.run(svc.receive("q"))
    assert svc.calls == [("receive", "q", 10, 1.0)]


# -- batches ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["publish_batch", "send_batch"])
def test_a_batch_over_the_entry_limit_is_rejected_whole(call: str) -> None:
    svc = Recorder()
    with pytest.raises(MessageTooLarge, match=exactly(
            "batch of 4 entries exceeds the limit of 3 entries per batch")):
        asyncio.run(getattr(svc, call)("t", [Entry("x")] * 4))
    assert svc.calls == []
    assert asyncio.run(getattr(svc, call)("t", [Entry("x")] * 3)).ok


def test_a_delete_over_the_entry_limit_is_rejected_whole() -> None:
    svc = Recorder()
    with pytest.raises(MessageTooLarge, match=exactly(
            "batch of 4 entries exceeds the limit of 3 entries per batch")):
        asyncio.run(svc.delete_batch("q", ["r"] * 4))
    assert svc.calls == []
    assert asyncio.run(svc.delete_batch("q", ["r"] * 3)).ok
    assert svc.calls == [("delete", "q", ["r"] * 3)]


@pytest.mark.parametrize("call", ["publish_batch", "send_batch"])
def test_a_batch_over_the_byte_limit_is_rejected_whole(call: str) -> None:
    svc = Recorder()
    over = [Entry("x" * 75), Entry("y" * 70, {"k": "v"})]  # 75 + 70 + 1 + 6 + 1 = 153
    with pytest.raises(MessageTooLarge, match=exactly(
            "batch of 2 entries totalling 153 bytes exceeds the limit of 150 bytes per batch")):
        asyncio.run(getattr(svc, call)("t", over))
    assert svc.calls == []
    at = [Entry("x" * 75), Entry("y" * 67, {"k": "v"})]  # exactly 150: fits
    assert asyncio.run(getattr(svc, call)("t", at)).ok
    assert svc.calls[0][3] == [75, 75]  # the sizes the implementation is given


def test_entries_that_cannot_be_encoded_are_measured_as_none_and_count_nothing() -> None:
    svc = Recorder()
    entries = [Entry("x" * 100), Entry("\udcff"), Entry("y" * 50)]
    asyncio.run(svc.send_batch("q", entries))
    assert svc.calls == [("send", "q", entries, [100, None, 50])]


def test_per_entry_failures_are_the_implementations_and_come_back_unchanged() -> None:
    svc = Recorder()
    failure = Failure(1, "MessageTooLong", "entry 1 of 101 bytes exceeds the limit of 100 bytes",
                      retryable=False)
    svc.answers = [BatchResult((failure,))]
    result = asyncio.run(svc.send_batch("q", [Entry("a"), Entry("b" * 101)]))
    assert result.failures == (failure,)


def test_entry_failure_words_each_kind() -> None:
    assert entry_failure(0, 100, 100) is None
    assert entry_failure(4, 101, 100) == Failure(
        4, "MessageTooLong", "entry 4 of 101 bytes exceeds the limit of 100 bytes",
        retryable=False)
    assert entry_failure(2, None, 100) == Failure(
        2, "InvalidMessageContents",
        "entry 2 is not text with string attributes encodable as UTF-8", retryable=False)


@pytest.mark.parametrize("call", ["publish_batch", "send_batch", "delete_batch"])
def test_an_empty_batch_reaches_the_implementation_and_is_ok(call: str) -> None:
    """The implementation sees it (so that a missing queue or topic raises NotFound), and
    whatever it answers, an empty batch has no failures."""
    svc = Recorder()
    svc.answers = [BatchResult((Failure(0, "Bogus", "?", retryable=False),))]
    result = asyncio.run(getattr(svc, call)("q", []))
    assert result == BatchResult() and result.ok
    assert len(svc.calls) == 1 and svc.calls[0][2] == []


# -- objects ---------------------------------------------------------------------------------------
def test_an_object_over_the_limit_is_refused_before_the_implementation() -> None:
    store = Store(LIMITS)
    with pytest.raises(MessageTooLarge, match=exactly(
            "object 'run/big' of 11 bytes exceeds the limit of 10 bytes")):
        asyncio.run(store.put("run/big", b"x" * 11))
    assert store.objects == {}
    asyncio.run(store.put("run/fits", b"x" * 10))
    assert store.objects == {"run/fits": b"x" * 10}


def test_a_store_without_limits_takes_any_size() -> None:
    store = Store(None)
    asyncio.run(store.put("k", b"x" * 1000))

    class Unbounded(Store):
        def __init__(self) -> None:  # never sets limits at all
            self.objects = {}

    unbounded = Unbounded()
    asyncio.run(unbounded.put("k", b"x" * 1000))
    assert unbounded.objects == {"k": b"x" * 1000}


# -- what an implementation must write -------------------------------------------------------------
def test_a_message_service_must_write_the_protected_methods() -> None:
    class Partial(Recorder):
        pass

    unwritten = ("_send_batch", "_delete_batch")

    class Missing(MessageService):
        limits = LIMITS
        create_queue = Recorder.create_queue
        create_topic = Recorder.create_topic
        subscribe = Recorder.subscribe
        delete_queue = Recorder.delete_queue
        delete_topic = Recorder.delete_topic
        _publish_batch = Recorder._publish_batch
        _receive = Recorder._receive

    Partial()  # inherits every one
    with pytest.raises(TypeError, match="abstract") as info:
        Missing()  # type: ignore[abstract]
    assert all(name in str(info.value) for name in unwritten)

    class Completed(Missing):  # a subclass that writes them is fine
        _send_batch = Recorder._send_batch
        _delete_batch = Recorder._delete_batch

    Completed()


# -- delete_received and Backoff -------------------------------------------------------------------
THROTTLED = ("RequestThrottled", "Rate exceeded")


def _failure(index: int, retryable: bool) -> Failure:
    code, message = THROTTLED if retryable else ("ReceiptHandleIsInvalid", "bad receipt")
    return Failure(index, code, message, retryable)


def test_delete_received_retries_only_the_retryable_entries() -> None:
    svc = Recorder(Limits())
    # r0 ok; r1 throttled, then ok; r2 invalid (reported, never retried); r3 throttled twice.
    svc.answers = [BatchResult((_failure(1, True), _failure(2, False), _failure(3, True))),
                   BatchResult((_failure(1, True),)),
                   BatchResult()]
    left = asyncio.run(delete_received(svc, "q", ["r0", "r1", "r2", "r3"]))
    assert [c[2] for c in svc.calls] == [["r0", "r1", "r2", "r3"], ["r1", "r3"], ["r3"]]
    assert left == (_failure(2, False),)  # a non-retryable failure of an earlier round is kept


def test_delete_received_gives_up_at_its_deadline_with_what_is_left() -> None:
    class AlwaysThrottled(Recorder):
        async def _delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
            self.calls.append(("delete", queue, list(receipts)))
            return BatchResult(tuple(_failure(i, True) for i in range(len(receipts))))

    svc = AlwaysThrottled()
    left = asyncio.run(delete_received(svc, "q", ["a", "b"], deadline_s=0.2))
    assert [f.index for f in left] == [0, 1] and all(f.retryable for f in left)
    assert 3 <= len(svc.calls) <= 12, svc.calls  # backed off, not a busy loop


def test_delete_received_of_nothing_sends_one_empty_batch() -> None:
    svc = Recorder()
    assert asyncio.run(delete_received(svc, "q", [])) == ()
    assert svc.calls == [("delete", "q", [])]


def test_a_backoff_wait_never_ends_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []

    async def sleep(seconds: float) -> None:  # what the wait asks for, not how long it took
        asked.append(seconds)

    monkeypatch.setattr(retry_module.asyncio, "sleep", sleep)
    backoff = Backoff(0.05, first_delay_s=5.0)
    asyncio.run(backoff.wait())
    assert len(asked) == 1 and 0 <= asked[0] <= 0.05, asked
    assert backoff.expired


# -- invocation payloads ---------------------------------------------------------------------------
def test_the_invoke_payload_is_measured_as_compact_json() -> None:
    event = {"worker": 1, "children": [2, 3]}  # '{"worker":1,"children":[2,3]}'
    assert check_invoke_payload(event, Limits(max_invoke_payload_bytes=29)) == 29
    with pytest.raises(MessageTooLarge, match=exactly(
            "invocation event of 29 bytes exceeds the limit of 28 bytes "
            "(Limits.max_invoke_payload_bytes)")):
        check_invoke_payload(event, Limits(max_invoke_payload_bytes=28))


def test_the_scheduler_checks_the_invoke_payload_before_any_worker_starts(
        tmp_path: Path) -> None:
    """The local backend's functions do not check (the core does, for every backend): an event
    over the limit fails the run before a process is started."""
    from fsdgraph.backends.local import LocalBackend
    from fsdgraph.scheduler import Scheduler

    rng = np.random.default_rng(0)
    weights = [sp.csr_matrix(rng.random((8, 8)).astype(np.float32)) for _ in range(2)]
    plan = fsdgraph.compile(fsdgraph.sequential(weights, bias=-0.5), workers=2,
                            partitioner="contiguous")
    backend = LocalBackend(root=str(tmp_path), limits=Limits(max_invoke_payload_bytes=200),
                           warm=False)
    with pytest.raises(MessageTooLarge, match=r"^invocation event of \d+ bytes exceeds the "
                                              r"limit of 200 bytes \(Limits\.max_invoke_"):
        Scheduler(backend, channel="object").run_sync(plan, np.ones((3, 8), np.float32))
    assert list(tmp_path.iterdir()) == []  # the run's directory is gone, no worker ran in it


# -- constructors ----------------------------------------------------------------------------------
def test_the_spool_refuses_a_bad_duplicate_rate_with_config_error(tmp_path: Path) -> None:
    from fsdgraph.backends.local.queues import SpoolMessageService

    with pytest.raises(ConfigError, match=exactly(
            "duplicate_rate must be between 0 and 1, got 1.5")):
        SpoolMessageService(tmp_path, LIMITS, duplicate_rate=1.5)


def test_the_aws_transports_refuse_bad_configuration_with_config_error() -> None:
    pytest.importorskip("aiobotocore", reason="pip install 'fsdgraph[aws]'")
    from fsdgraph.backends.aws.transports import AwsConfig, S3ObjectStore, SnsSqsMessageService

    with pytest.raises(ConfigError, match=r"^S3ObjectStore needs AwsConfig\.bucket"):
        S3ObjectStore(AwsConfig("us-east-1"))
    with pytest.raises(ConfigError, match=exactly(
            "Limits.max_batch_entries is 11, but SNS and SQS take at most 10 entries per "
            "batch call")):
        SnsSqsMessageService(AwsConfig("us-east-1"), Limits(max_batch_entries=11))
    with pytest.raises(TransportError, match=exactly("object key must not be empty")):
        asyncio.run(S3ObjectStore(AwsConfig("us-east-1", bucket="b")).get(""))


def test_aws_errors_say_whether_to_retry() -> None:
    pytest.importorskip("aiobotocore", reason="pip install 'fsdgraph[aws]'")
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    from fsdgraph.backends.aws.transports import _translate

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")

    assert _translate(client_error("ThrottlingException", 400), "x").retryable
    assert _translate(client_error("InternalError", 500), "x").retryable
    assert _translate(client_error("ServiceUnavailable", 503), "x").retryable
    assert not _translate(client_error("InvalidParameterValue", 400), "x").retryable
    missing = _translate(client_error("AWS.SimpleQueueService.NonExistentQueue", 400), "queue 'q'")
    assert isinstance(missing, NotFound) and not missing.retryable
    assert _translate(ReadTimeoutError(endpoint_url="http://x"), "x").retryable
    # An endpoint that refuses connections may be one swamped by a thousand workers: retried
    # (each caller within its own deadline; pre-flight makes no retries and fails at once).
    assert _translate(EndpointConnectionError(endpoint_url="http://x"), "x").retryable


# -- one density threshold -------------------------------------------------------------------------
def test_the_density_threshold_is_one_constant() -> None:
    import fsdgraph.codec as codec
    import fsdgraph.kernels.block as block
    import fsdgraph.kernels.layer as layer

    assert block.DENSE_ABOVE == 0.4
    assert codec.WIRE_DENSE_ABOVE is block.DENSE_ABOVE
    assert codec.BlockCodec().dense_above is block.DENSE_ABOVE
    assert layer.DENSE_ABOVE is block.DENSE_ABOVE
    assert not hasattr(layer, "SPARSE_PRODUCT_BELOW")


def test_entry_size_counts_body_and_attributes() -> None:
    assert entry_size(Entry("abc", {"k": "vv"})) == 3 + 1 + len("String") + 2
