"""S3 and SNS/SQS implementations of :class:`~fsdgraph.transport.ObjectStore` and
:class:`~fsdgraph.transport.MessageService` on aiobotocore.

Each service owns one :class:`aiobotocore.session.AioSession` and its clients, entered once into an
:class:`contextlib.AsyncExitStack`: ``await svc.open()`` / ``await svc.close()`` or
``async with svc:``. A service that is used without ``open()`` opens itself on first use (in the
running event loop) and must still be closed. Region and per-service endpoint URLs come from
:class:`AwsConfig`; credentials come from botocore's standard chain and are never logged.

Errors are translated at the boundary: a botocore ``ClientError`` becomes
:class:`~fsdgraph.errors.NotFound` for a missing key, queue or topic and
:class:`~fsdgraph.errors.TransportError` otherwise (``raise ... from exc``); a botocore
connection or timeout error becomes :class:`~fsdgraph.errors.TransportError`; anything else
propagates. Batch calls report per-entry failures as :class:`~fsdgraph.transport.Failure` with
``retryable`` set as AWS says.

What retries where
------------------

Two layers retry, and only the second knows a deadline:

1. **botocore**, inside one call, in its ``standard`` mode with ``AwsConfig.max_attempts``
   attempts (3: at most two retries). It retries throttling (S3 ``503 SlowDown``, ``Throttling``,
   ``TooManyRequestsException``, ...), HTTP 500/502/503/504 and connections refused, dropped or
   timed out, never another client error. Its waits are jittered, of at most 1 s then 2 s for
   throttling (less for other errors), and it stops retrying altogether once its retry
   quota (a token bucket per client) is spent. So one call adds at most about 3 s of waiting to
   its own request time (``connect_timeout_s`` and ``read_timeout_s`` per attempt): it cannot
   silently eat a long deadline.
2. **the callers**, with :mod:`fsdgraph.retry` and their own deadline (a channel's peer timeout, a
   worker's status deadline): a failure still there after botocore's attempts is raised with
   ``retryable=True`` (the codes of :data:`RETRYABLE_CODES`, HTTP 429 and 5xx, a connection
   error), and the caller decides whether there is time for another try.

:class:`~fsdgraph.transport.Limits` are enforced before any request (moto does not): the batch,
``receive`` and object-size rules by :mod:`fsdgraph.transport` for every backend; here, an entry
above ``max_message_bytes`` (or the queue's ``MaximumMessageSize``) fails alone with code
``MessageTooLong``. On ``publish_batch`` only ``Limits`` apply: SNS does not report a message too
long for one subscribed queue (its delivery fails later), so neither can we. SQS takes at most
10 entries per batch call, so a ``Limits.max_batch_entries`` above that is refused when the
service is made.

Queue names resolve to URLs (``GetQueueUrl``) and topic names to ARNs (built from the account
id, which ``sts:GetCallerIdentity`` gives once) and stay cached per service.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from fsdgraph.backends.aws.config import partition
from fsdgraph.errors import ConfigError, NotFound, TransportError
from fsdgraph.retry import Backoff
from fsdgraph.transport import (
    BatchResult,
    Entry,
    Failure,
    Limits,
    Message,
    MessageService,
    ObjectStore,
    entry_failure,
)

__all__ = ["AwsConfig", "S3ObjectStore", "SnsSqsMessageService", "caller_account"]

#: Error codes that mean "the key, bucket, queue or topic does not exist".
NOT_FOUND_CODES = frozenset({
    "NoSuchKey", "NoSuchBucket", "404", "NotFound", "NotFoundException",
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
})
#: Error codes worth retrying even when AWS marks them as the sender's fault: throttling (S3's
#: ``503 SlowDown``, which S3 answers while it re-partitions a prefix under load, among them) and
#: passing faults. botocore's standard mode retries the same ones first (see the module docstring).
RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "SlowDown", "RequestLimitExceeded",
    "KMSThrottlingException", "ServiceUnavailable", "InternalError", "InternalFailure",
    "BandwidthLimitExceeded", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "PriorRequestNotComplete", "RequestTimeout",
    "RequestTimeoutException", "EC2ThrottledException", "ConditionalRequestConflict",
})
#: A conditional PUT that S3 answers 409 ConditionalRequestConflict (another write to the key was
#: in progress) is tried again, as S3 asks, for at most this long.
CONFLICT_DEADLINE_S = 5.0
#: SQS caps one long poll at 20 s, and one receive or batch call at 10 entries.
MAX_WAIT_S = 20
MAX_BATCH_ENTRIES = 10
#: S3 DeleteObjects takes at most 1000 keys.
DELETE_BATCH = 1000


class _Client(Protocol):
    """What we use of an aiobotocore client: operations are attributes returning coroutines."""

    def __getattr__(self, name: str) -> Any: ...


@dataclass(frozen=True)
class AwsConfig:
    """Where the AWS transports talk to.

    ``endpoints`` maps a service name (``s3``, ``sns``, ``sqs``, ``sts``) to an endpoint URL; a
    service not in it uses AWS's default endpoint for ``region``. ``bucket`` holds the objects,
    each under ``prefix`` (e.g. ``"fsdgraph/"``; keys are given and listed without it).
    """

    region: str
    endpoints: Mapping[str, str] = field(default_factory=dict)
    bucket: str = ""
    prefix: str = ""
    #: The account id, when known (saves the ``sts:GetCallerIdentity`` call that finds it).
    account: str = ""
    #: A named profile of the shared AWS config; None: the standard credential chain.
    profile: str | None = None
    #: HTTP connections per client: size it to the fan-out of concurrent requests.
    max_pool_connections: int = 50
    connect_timeout_s: float = 10.0
    #: Above the 20 s long poll, so a waiting receive is not cut short.
    read_timeout_s: float = MAX_WAIT_S + 20.0
    #: botocore's attempts per call, the first included (see the module docstring).
    max_attempts: int = 3


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _translate(exc: Exception, what: str) -> TransportError:
    """The fsdgraph error for a botocore error raised while doing ``what``; ``retryable`` for
    throttling (HTTP 429, S3's 503 SlowDown), a service fault (HTTP 5xx) or a connection that
    failed, was lost or timed out."""
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code in NOT_FOUND_CODES:
            return NotFound(f"{what}: does not exist ({code})")
        message = exc.response.get("Error", {}).get("Message", "")
        status = _status(exc)
        return TransportError(f"{what}: {code}: {message}",
                              retryable=code in RETRYABLE_CODES or status == 429
                              or status >= 500)
    return TransportError(f"{what}: {type(exc).__name__}: {exc}",
                          retryable=isinstance(exc, (HTTPClientError, BotocoreConnectionError)))


class _AwsService:
    """Owns one session and the clients for ``services``; opens lazily, closes once."""

    _services: tuple[str, ...] = ()

    def __init__(self, config: AwsConfig, *, session: AioSession | None = None) -> None:
        self.config = config
        self._session = session
        self._stack: contextlib.AsyncExitStack | None = None
        self._clients: dict[str, _Client] = {}
        self._opening: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(region={self.config.region!r})"

    async def open(self) -> None:
        """Create the clients (once). Called on first use if not called before."""
        if self._stack is not None:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._stack is not None:
                return
            cfg = self.config
            session = self._session or AioSession(profile=cfg.profile)
            botocore_config = AioConfig(
                region_name=cfg.region,
                max_pool_connections=cfg.max_pool_connections,
                connect_timeout=cfg.connect_timeout_s,
                read_timeout=cfg.read_timeout_s,
                # total_max_attempts counts the first attempt (``max_attempts`` would not).
                retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
            )
            stack = contextlib.AsyncExitStack()
            try:
                for name in self._services:
                    client = session.create_client(
                        name,
                        region_name=cfg.region,
                        endpoint_url=cfg.endpoints.get(name),
                        config=botocore_config,
                    )
                    self._clients[name] = await stack.enter_async_context(client)
            except BaseException:
                await stack.aclose()
                self._clients.clear()
                raise
            self._stack = stack

    async def close(self) -> None:
        """Close the clients (idempotent); the service can be opened again afterwards."""
        stack, self._stack = self._stack, None
        self._clients.clear()
        self._opening = None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> _AwsService:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _client(self, name: str) -> _Client:
        if self._stack is None:
            await self.open()
        return self._clients[name]

    async def _call(self, service: str, operation: str, what: str, **kwargs: Any) -> Any:
        """One request, with botocore errors translated (``what`` names the resource)."""
        client = await self._client(service)
        try:
            return await getattr(client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, what) from exc


class _Sts(_AwsService):
    _services = ("sts",)


async def caller_account(config: AwsConfig) -> str:
    """The account id of the credentials in use (``sts:GetCallerIdentity``, which needs no
    permission)."""
    async with _Sts(config) as sts:
        ident = await sts._call("sts", "get_caller_identity", "caller identity")
    return str(ident["Account"])


# ================================================================================================
# S3
# ================================================================================================
class S3ObjectStore(_AwsService, ObjectStore):
    """Objects in ``config.bucket`` under ``config.prefix``. An empty key is refused with a
    TransportError before any request, as S3 has no object without a key."""

    _services = ("s3",)

    def __init__(
        self, config: AwsConfig, *, limits: Limits | None = None, session: AioSession | None = None
    ) -> None:
        if not config.bucket:
            raise ConfigError("S3ObjectStore needs AwsConfig.bucket (the bucket holding the "
                              "objects)")
        super().__init__(config, session=session)
        self.limits = limits

    def _key(self, key: str) -> str:
        if not key:
            raise TransportError("object key must not be empty")
        return self.config.prefix + key

    async def _put(self, key: str, data: bytes) -> None:
        await self._call("s3", "put_object", f"put of key {key!r}",
                         Bucket=self.config.bucket, Key=self._key(key), Body=data)

    async def _put_if_absent(self, key: str, data: bytes) -> bool:
        """A conditional PutObject (``If-None-Match: *``): S3 itself decides which of concurrent
        writers creates the key, and answers the others 412 PreconditionFailed (False here).

        Two answers need more than that. 409 ConditionalRequestConflict (another write to the key
        was in flight) is tried again, as S3 asks, for up to :data:`CONFLICT_DEADLINE_S`. And a
        412 answered to an attempt that botocore *retried* may be this call's own first attempt,
        which S3 stored before the answer was lost: the stored object is then read back, and if it
        holds ``data`` the call created it. Callers write data of their own (a worker its launch
        time) so that the two cases differ."""
        what = f"conditional put of key {key!r}"
        conflicts = Backoff(CONFLICT_DEADLINE_S, first_delay_s=0.05)
        client = await self._client("s3")
        while True:
            try:
                await client.put_object(Bucket=self.config.bucket, Key=self._key(key), Body=data,
                                        IfNoneMatch="*")
                return True
            except ClientError as exc:
                code, status = _code(exc), _status(exc)
                if code == "PreconditionFailed" or status == 412:
                    retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                    return bool(retried) and await self._holds(key, data)
                if (code == "ConditionalRequestConflict" or status == 409) \
                        and not conflicts.expired:
                    await conflicts.wait()
                    continue
                raise _translate(exc, what) from exc
            except BotoCoreError as exc:
                raise _translate(exc, what) from exc

    async def _holds(self, key: str, data: bytes) -> bool:
        """Whether the object at ``key`` is ``data`` (False if it is gone)."""
        try:
            return await self.get(key) == data
        except NotFound:
            return False

    async def get(self, key: str) -> bytes:
        client = await self._client("s3")
        try:
            response = await client.get_object(Bucket=self.config.bucket, Key=self._key(key))
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise NotFound(f"no object at key {key!r}") from exc
            raise _translate(exc, f"get of key {key!r}") from exc
        except BotoCoreError as exc:
            raise _translate(exc, f"get of key {key!r}") from exc
        return data

    async def list(self, prefix: str) -> list[str]:
        return sorted(await self._list_full(prefix))

    async def _list_full(self, prefix: str) -> builtins.list[str]:
        """Keys under ``prefix`` without the configured prefix, in S3's (byte) order."""
        client = await self._client("s3")
        strip = len(self.config.prefix)
        keys: builtins.list[str] = []
        try:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(
                Bucket=self.config.bucket, Prefix=self.config.prefix + prefix
            ):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", ()))
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, f"list of prefix {prefix!r}") from exc
        return keys

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self._list_full(prefix)
        deleted = 0
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            response = await self._call(
                "s3", "delete_objects", f"delete of prefix {prefix!r}",
                Bucket=self.config.bucket,
                Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors", ())
            if errors:
                first = errors[0]
                raise TransportError(
                    f"delete of prefix {prefix!r}: {len(errors)} objects not deleted, e.g. "
                    f"{first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )
            deleted += len(batch)
        return deleted


# ================================================================================================
# SNS + SQS
# ================================================================================================
@dataclass(frozen=True)
class _Queue:
    url: str
    max_message_bytes: int


def _attributes(entry: Entry) -> dict[str, dict[str, str]]:
    return {k: {"DataType": "String", "StringValue": v} for k, v in entry.attributes.items()}


def _failures(failed: Sequence[Mapping[str, Any]]) -> list[Failure]:
    out = []
    for f in failed:
        code = str(f.get("Code", ""))
        retryable = not f.get("SenderFault", False) or code in RETRYABLE_CODES
        out.append(Failure(int(f["Id"]), code, str(f.get("Message", "")), retryable))
    return out


class SnsSqsMessageService(_AwsService, MessageService):
    """Topics are SNS topics, queues SQS standard queues; subscriptions use raw delivery.

    Each queue is created with its access policy: SNS may send to it from the topics whose names
    match ``topics`` (a glob, e.g. ``"fsd-<run id>-t*"``: the run's own topics; default every
    topic of the account). A real account needs it for SNS to deliver at all (moto ignores it).
    Setting it once, in CreateQueue, leaves ``subscribe`` with one request (Subscribe) and none
    that changes the queue: a run subscribing thousands of queues at once then sends no
    SetQueueAttributes, whose effect SQS applies only after a delay anyway.

    Calls may be concurrent: the clients' connection pools hold ``AwsConfig.max_pool_connections``
    (50) connections each, and requests beyond that wait for one.
    """

    _services = ("sns", "sqs", "sts")

    def __init__(
        self, config: AwsConfig, limits: Limits | None = None, *,
        session: AioSession | None = None, tags: Mapping[str, str] | None = None,
        topics: str = "*",
    ) -> None:
        super().__init__(config, session=session)
        self.topics = topics
        self.limits = limits or Limits()
        if self.limits.max_batch_entries > MAX_BATCH_ENTRIES:
            raise ConfigError(
                f"Limits.max_batch_entries is {self.limits.max_batch_entries}, but SNS and SQS "
                f"take at most {MAX_BATCH_ENTRIES} entries per batch call")
        #: Put on every queue and topic this service creates (e.g. the run id).
        self.tags = dict(tags or {})
        self._queues: dict[str, _Queue] = {}
        self._arn_base: str | None = None  # "arn:<partition>:<service>:<region>:<account>:"

    # -- name resolution ------------------------------------------------------------------------
    async def _account_arn(self, service: str) -> str:
        if self._arn_base is None:
            region = self.config.region
            if self.config.account:
                self._arn_base = f"arn:{partition(region)}:{{}}:{region}:{self.config.account}:"
            else:
                ident = await self._call("sts", "get_caller_identity", "caller identity")
                part = str(ident["Arn"]).split(":")[1]
                self._arn_base = f"arn:{part}:{{}}:{region}:{ident['Account']}:"
        return self._arn_base.format(service)

    async def _topic_arn(self, topic: str) -> str:
        return await self._account_arn("sns") + topic

    async def _queue_policy(self, queue: str) -> dict[str, Any]:
        """Who may send to ``queue``: SNS, on behalf of the topics matching ``self.topics``."""
        return {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": await self._account_arn("sqs") + queue,
                "Condition": {"ArnLike": {"aws:SourceArn": await self._topic_arn(self.topics)}},
            }],
        }

    async def _queue(self, queue: str) -> _Queue:
        known = self._queues.get(queue)
        if known is not None:
            return known
        what = f"queue {queue!r}"
        url = (await self._call("sqs", "get_queue_url", what, QueueName=queue))["QueueUrl"]
        attrs = (await self._call("sqs", "get_queue_attributes", what, QueueUrl=url,
                                  AttributeNames=["MaximumMessageSize"]))["Attributes"]
        resolved = _Queue(url, int(attrs["MaximumMessageSize"]))
        self._queues[queue] = resolved
        return resolved

    async def _queue_call(self, queue: str, operation: str, **kwargs: Any) -> Any:
        """A request on a queue; a queue found missing is forgotten (and NotFound raised)."""
        q = await self._queue(queue)
        try:
            return await self._call("sqs", operation, f"queue {queue!r}", QueueUrl=q.url,
                                    **kwargs)
        except NotFound:
            self._queues.pop(queue, None)
            raise

    # -- provisioning ---------------------------------------------------------------------------
    async def create_queue(
        self, name: str, *, visibility_timeout_s: float, max_message_bytes: int
    ) -> str:
        attrs = {
            "MaximumMessageSize": str(max_message_bytes),
            "VisibilityTimeout": str(math.ceil(visibility_timeout_s)),
            "Policy": json.dumps(await self._queue_policy(name)),
        }
        tags = {"tags": self.tags} if self.tags else {}
        response = await self._call("sqs", "create_queue", f"queue {name!r}",
                                    QueueName=name, Attributes=attrs, **tags)
        self._queues[name] = _Queue(response["QueueUrl"], max_message_bytes)
        return name

    async def create_topic(self, name: str) -> str:
        tags = {"Tags": [{"Key": k, "Value": v} for k, v in self.tags.items()]} if self.tags else {}
        await self._call("sns", "create_topic", f"topic {name!r}", Name=name, **tags)
        return name

    async def subscribe(
        self, topic: str, queue: str, *, filter_policy: Mapping[str, Sequence[str]]
    ) -> None:
        # SNS would subscribe a queue that does not exist (and lose what it delivers); the queue
        # is known from create_queue, so this costs a request only for a queue made elsewhere.
        await self._queue(queue)
        queue_arn = await self._account_arn("sqs") + queue
        # The queue's policy, set when it was created, already lets the topic send to it.
        attributes = {"RawMessageDelivery": "true"}
        if filter_policy:
            attributes["FilterPolicy"] = json.dumps(
                {k: [str(v) for v in values] for k, values in filter_policy.items()})
        try:
            await self._call("sns", "subscribe",
                             f"subscription of queue {queue!r} to topic {topic!r}",
                             TopicArn=await self._topic_arn(topic), Protocol="sqs",
                             Endpoint=queue_arn, Attributes=attributes,
                             ReturnSubscriptionArn=True)
        except NotFound as exc:  # Subscribe answers NotFound only for a missing topic
            raise NotFound(f"topic {topic!r}: does not exist") from exc

    async def delete_queue(self, queue: str) -> None:
        with contextlib.suppress(NotFound):
            await self._queue_call(queue, "delete_queue")
        self._queues.pop(queue, None)

    async def delete_topic(self, topic: str) -> None:
        with contextlib.suppress(NotFound):
            await self._call("sns", "delete_topic", f"topic {topic!r}",
                             TopicArn=await self._topic_arn(topic))

    # -- data plane (the batch and receive rules are checked by MessageService) ----------------
    @staticmethod
    def _entries(sizes: Sequence[int | None], limit: int) -> tuple[list[Failure], list[int]]:
        """The failures of the entries that do not fit alone, and the indices of the others."""
        failures: list[Failure] = []
        send: list[int] = []
        for index, size in enumerate(sizes):
            failure = entry_failure(index, size, limit)
            if failure is None:
                send.append(index)
            else:
                failures.append(failure)
        return failures, send

    async def _publish_batch(self, topic: str, entries: Sequence[Entry],
                             sizes: Sequence[int | None]) -> BatchResult:
        topic_arn = await self._topic_arn(topic)
        failures, send = self._entries(sizes, self.limits.max_message_bytes)
        if send:
            response = await self._call(
                "sns", "publish_batch", f"topic {topic!r}", TopicArn=topic_arn,
                PublishBatchRequestEntries=[
                    {"Id": str(i), "Message": entries[i].body,
                     "MessageAttributes": _attributes(entries[i])}
                    for i in send
                ],
            )
            failures.extend(_failures(response.get("Failed", ())))
        elif not entries:
            await self._call("sns", "get_topic_attributes", f"topic {topic!r}",
                             TopicArn=topic_arn)
        return BatchResult(tuple(sorted(failures, key=lambda f: f.index)))

    async def _send_batch(self, queue: str, entries: Sequence[Entry],
                          sizes: Sequence[int | None]) -> BatchResult:
        q = await self._queue(queue)
        failures, send = self._entries(sizes, min(self.limits.max_message_bytes,
                                                  q.max_message_bytes))
        if send:
            response = await self._queue_call(
                queue, "send_message_batch",
                Entries=[
                    {"Id": str(i), "MessageBody": entries[i].body,
                     "MessageAttributes": _attributes(entries[i])}
                    for i in send
                ],
            )
            failures.extend(_failures(response.get("Failed", ())))
        return BatchResult(tuple(sorted(failures, key=lambda f: f.index)))

    async def _receive(self, queue: str, max_messages: int, wait_s: float) -> list[Message]:
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            wait = min(MAX_WAIT_S, max(0, math.ceil(remaining)))
            response = await self._queue_call(
                queue, "receive_message",
                MaxNumberOfMessages=max_messages,
                WaitTimeSeconds=wait,
                MessageAttributeNames=["All"],
                AttributeNames=["ApproximateReceiveCount"],
            )
            raw = response.get("Messages", ())
            if raw or wait_s <= MAX_WAIT_S or deadline - time.monotonic() <= 0:
                return [
                    Message(
                        body=m["Body"],
                        attributes={k: v["StringValue"]
                                    for k, v in m.get("MessageAttributes", {}).items()
                                    if "StringValue" in v},
                        receipt=m["ReceiptHandle"],
                        receive_count=int(m.get("Attributes", {})
                                          .get("ApproximateReceiveCount", 1)),
                    )
                    for m in raw
                ]

    async def _delete_batch(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        if not receipts:
            await self._queue(queue)
            return BatchResult()
        # A message delivered twice in one answer has one receipt twice; SQS refuses a batch
        # that repeats one, so each distinct receipt is deleted once.
        first = {r: i for i, r in reversed(list(enumerate(receipts)))}
        response = await self._queue_call(
            queue, "delete_message_batch",
            Entries=[{"Id": str(i), "ReceiptHandle": r} for r, i in first.items()],
        )
        return BatchResult(tuple(sorted(_failures(response.get("Failed", ())),
                                        key=lambda f: f.index)))
