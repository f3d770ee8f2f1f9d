"""The AWS backend against local AWS-API servers: settings, the IAM policies, deploy and
teardown, the queue channel over real SNS/SQS requests (routing, chunking, partial failures,
duplicates), and Lambda invocation.

Servers: ``moto_server`` (S3, SNS, SQS, STS, IAM, Lambda's control plane, CloudWatch Logs) from
``conftest.py``. Failures are injected with botocore's event hooks on the client side, since
moto itself never throttles or delivers twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("aiobotocore", reason="pip install 'fsdgraph[aws]'")
pytest.importorskip("boto3", reason="pip install 'fsdgraph[aws]'")

import boto3
from aiobotocore.session import AioSession

import fsdgraph
from fsdgraph.backend import Services
from fsdgraph.backends.aws import AwsBackend
from fsdgraph.backends.aws.config import AWS_LIMITS, AwsSettings, load_aws_settings
from fsdgraph.backends.aws.deploy import Deployment, deploy, teardown
from fsdgraph.backends.aws.functions import LambdaFunctions
from fsdgraph.backends.aws.transports import (
    AwsConfig,
    S3ObjectStore,
    SnsSqsMessageService,
)
from fsdgraph.channels import Channel, ChannelConfig, WorkerContext
from fsdgraph.channels.queue import QueueChannel
from fsdgraph.codec import BlockCodec
from fsdgraph.control import QueueControlPlane
from fsdgraph.errors import ConfigError, MessageTooLarge, RunError
from fsdgraph.kernels import Block
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.resources import RunNames
from fsdgraph.scheduler import Scheduler
from fsdgraph.testing.waiting import wait_until
from fsdgraph.transport import Entry, Limits, Message, delete_received

ACCOUNT = "123456789012"  # moto's default account
MOTO_SERVICES = ("s3", "sns", "sqs", "sts", "iam", "logs", "lambda")


def settings_for(server: Any, deployment: str, **kw: Any) -> AwsSettings:
    return AwsSettings(region=server.region, deployment=deployment,
                       endpoints={s: server.url for s in MOTO_SERVICES}, **kw)


def client(server: Any, service: str) -> Any:
    return boto3.client(service, region_name=server.region, endpoint_url=server.url)


# -- settings -------------------------------------------------------------------------------------
def test_settings_from_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[aws]\nregion = "eu-west-1"\ndeployment = "team-a"\nmemory_mb = 3008\n'
                    '[aws.endpoints]\ns3 = "http://s3.local"\n'
                    '[aws.limits]\nmax_message_bytes = 131072\n')
    s = load_aws_settings(path, environ={})
    assert (s.region, s.deployment, s.memory_mb) == ("eu-west-1", "team-a", 3008)
    assert dict(s.endpoints) == {"s3": "http://s3.local"}
    assert s.limits.max_message_bytes == 131072
    assert s.limits.max_invoke_payload_bytes == AWS_LIMITS.max_invoke_payload_bytes == 1 << 20

    env = {"AWS_REGION": "ap-south-1", "AWS_ENDPOINT_URL": "http://all.local",
           "AWS_ENDPOINT_URL_SQS": "http://sqs.local", "FSDGRAPH_AWS_MEMORY_MB": "512",
           "AWS_PROFILE": "inference"}
    s = load_aws_settings(path, environ=env)
    assert (s.region, s.memory_mb, s.profile) == ("ap-south-1", 512, "inference")
    assert s.endpoints["sqs"] == "http://sqs.local"
    assert s.endpoints["s3"] == "http://all.local"  # the general variable beats the file


@pytest.mark.parametrize(("text", "env", "message"), [
    ('[aws]\nregoin = "x"\n', {}, "unknown setting aws.regoin"),
    ('[aws]\nmemory_mb = "lots"\n', {}, "memory_mb must be int, got 'lots'"),
    ('[aws]\ndeployment = "Has_Capitals"\n', {}, "aws deployment 'Has_Capitals': expected"),
    ('[aws.limits]\nmax_batch_entries = 0\n', {}, "Limits.max_batch_entries must be a positive"),
    ('[aws.limits]\nmax_batches = 3\n', {}, "unknown setting aws.limits.max_batches"),
    ('[aws.endpoints]\nec2 = "http://x"\n', {}, "unknown service 'ec2'"),
    ("", {"FSDGRAPH_AWS_TIMEOUT_S": "901"}, "timeout_s must be in [1, 900], got 901"),
    ("", {"FSDGRAPH_AWS_ARCHITECTURE": "sparc"}, "architecture must be x86_64 or arm64"),
])
def test_bad_settings_name_the_field(tmp_path: Path, text: str, env: dict[str, str],
                                     message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_aws_settings(path, environ=env)
    assert message in str(info.value)


# -- IAM policies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["worker", "operator"])
def test_policies_have_no_wildcard_action_and_only_the_deployments_resources(which: str) -> None:
    d = Deployment(AwsSettings(deployment="demo", region="eu-west-1"), ACCOUNT)
    policy = d.worker_policy() if which == "worker" else d.operator_policy()
    own = (d.bucket_arn, f"{d.bucket_arn}/fsdgraph/", d.role_arn, d.function_arn,
           f"arn:aws:sqs:eu-west-1:{ACCOUNT}:demo-", f"arn:aws:sns:eu-west-1:{ACCOUNT}:demo-",
           f"arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:/aws/lambda/demo-worker:")
    statements = policy["Statement"]
    assert statements
    for st in statements:
        assert st["Effect"] == "Allow"
        for action in st["Action"]:
            assert "*" not in action, f"{which} policy: wildcard action {action}"
            assert action.split(":")[0] in ("s3", "sqs", "sns", "lambda", "logs", "iam")
        for resource in st["Resource"]:
            assert resource != "*"
            assert any(resource == o or resource.startswith(o) for o in own), resource
            # A wildcard may only end a name inside the deployment's own prefix.
            assert "*" not in resource.rstrip("*"), resource


def test_worker_policy_grants_what_a_worker_calls_and_nothing_that_creates() -> None:
    d = Deployment(AwsSettings(deployment="demo"), ACCOUNT)
    actions = {a for st in d.worker_policy()["Statement"] for a in st["Action"]}
    assert {"sns:Publish", "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage",
            "s3:GetObject", "s3:PutObject", "lambda:InvokeFunction"} <= actions
    assert not {a for a in actions if any(w in a for w in ("Create", "Delete", "Pass", "Tag"))
                and a not in ("sqs:DeleteMessage", "logs:CreateLogGroup",
                              "logs:CreateLogStream")}


# -- deploy and teardown --------------------------------------------------------------------------
def _remaining(server: Any, s: AwsSettings) -> dict[str, list[str]]:
    """Everything in the account that belongs to deployment ``s``."""
    ns = f"{s.deployment}-"
    return {
        "buckets": [b["Name"] for b in client(server, "s3").list_buckets()["Buckets"]
                    if b["Name"].startswith(ns)],
        "functions": [f["FunctionName"] for f in
                      client(server, "lambda").list_functions()["Functions"]
                      if f["FunctionName"].startswith(ns)],
        "roles": [r["RoleName"] for r in client(server, "iam").list_roles()["Roles"]
                  if r["RoleName"].startswith(ns)],
        "queues": client(server, "sqs").list_queues(QueueNamePrefix=ns).get("QueueUrls", []),
        "topics": [t["TopicArn"] for t in client(server, "sns").list_topics()["Topics"]
                   if t["TopicArn"].rsplit(":", 1)[-1].startswith(ns)],
        "subscriptions": [x["SubscriptionArn"] for x in
                          client(server, "sns").list_subscriptions()["Subscriptions"]
                          if x["TopicArn"].rsplit(":", 1)[-1].startswith(ns)],
    }


def test_dry_run_creates_nothing(moto_server: Any) -> None:
    s = settings_for(moto_server, "dry")
    said: list[str] = []
    deploy(s, dependencies=False, dry_run=True, say=said.append)
    assert any(line.startswith("would create function dry-worker") for line in said)
    assert all(not v for v in _remaining(moto_server, s).values())
    assert teardown(s, dry_run=True, say=said.append) == []


def test_deploy_then_teardown_leaves_nothing(moto_server: Any) -> None:
    s = settings_for(moto_server, "lifecycle", memory_mb=2048, timeout_s=300)
    said: list[str] = []
    d = deploy(s, dependencies=False, say=said.append)
    d = deploy(s, dependencies=False, say=said.append)  # again: an update, not an error

    lam = client(moto_server, "lambda")
    fn = lam.get_function(FunctionName="lifecycle-worker")["Configuration"]
    assert (fn["Handler"], fn["MemorySize"], fn["Timeout"]) == (
        "fsdgraph.worker.handler", 2048, 300)
    assert fn["Role"] == d.role_arn
    retries = lam.get_function_event_invoke_config(FunctionName="lifecycle-worker")
    assert retries["MaximumRetryAttempts"] == 0
    iam = client(moto_server, "iam")
    policy = iam.get_role_policy(RoleName="lifecycle-worker", PolicyName="lifecycle-worker")
    assert policy["PolicyDocument"] == d.worker_policy()
    tags = client(moto_server, "s3").get_bucket_tagging(Bucket=d.bucket)["TagSet"]
    assert {"Key": "fsdgraph:deployment", "Value": "lifecycle"} in tags

    # What a killed run leaves: a queue subscribed to a topic, and staged objects.
    sqs, sns = client(moto_server, "sqs"), client(moto_server, "sns")
    url = sqs.create_queue(QueueName="lifecycle-deadbeef-w0")["QueueUrl"]
    topic = sns.create_topic(Name="lifecycle-deadbeef-t0")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=f"arn:aws:sqs:{s.region}:{ACCOUNT}:"
                  f"lifecycle-deadbeef-w0")
    client(moto_server, "s3").put_object(Bucket=d.bucket, Key="fsdgraph/runs/x/plan/0", Body=b"")
    assert all(_remaining(moto_server, s)[k] for k in ("buckets", "functions", "roles",
                                                       "queues", "topics", "subscriptions"))
    assert url

    removed = teardown(s, say=said.append)
    assert {r.kind for r in removed} == {"bucket", "role", "function", "queue", "topic"}
    assert _remaining(moto_server, s) == {k: [] for k in _remaining(moto_server, s)}
    assert teardown(s, say=said.append) == []  # idempotent


def test_teardown_keeps_a_bucket_the_user_brought(moto_server: Any) -> None:
    s3 = client(moto_server, "s3")
    s3.create_bucket(Bucket="users-own-bucket")
    s3.put_object(Bucket="users-own-bucket", Key="theirs.txt", Body=b"keep me")
    s = settings_for(moto_server, "byob", bucket="users-own-bucket")
    deploy(s, dependencies=False, say=lambda _: None)
    removed = teardown(s, say=lambda _: None)
    assert "objects" in {r.kind for r in removed}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="users-own-bucket").get("Contents", [])]
    assert keys == ["theirs.txt"]
    with contextlib.suppress(Exception):
        s3.delete_object(Bucket="users-own-bucket", Key="theirs.txt")
        s3.delete_bucket(Bucket="users-own-bucket")


def test_a_runs_queues_and_topics_are_tagged_with_the_run_id(moto_server: Any) -> None:
    backend = AwsBackend(settings_for(moto_server, "tagged", bucket=moto_server.bucket))

    async def body() -> None:
        async with backend.session(RunNames("run123", backend.namespace)) as services:
            assert services.description["account"] == ACCOUNT
            assert services.description["bucket"] == moto_server.bucket
            await services.messages.create_queue("tagged-run123-w0", visibility_timeout_s=30,
                                                 max_message_bytes=262144)
            await services.messages.create_topic("tagged-run123-t0")
            sqs, sns = client(moto_server, "sqs"), client(moto_server, "sns")
            url = sqs.get_queue_url(QueueName="tagged-run123-w0")["QueueUrl"]
            want = {"fsdgraph:run": "run123", "fsdgraph:deployment": "tagged"}
            assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == want
            arn = f"arn:aws:sns:{moto_server.region}:{ACCOUNT}:tagged-run123-t0"
            tags = sns.list_tags_for_resource(ResourceArn=arn)["Tags"]
            assert {t["Key"]: t["Value"] for t in tags} == want
            await services.messages.delete_queue("tagged-run123-w0")
            await services.messages.delete_topic("tagged-run123-t0")

    asyncio.run(body())


# -- Lambda invocation ----------------------------------------------------------------------------
def test_invocation_event_over_the_payload_limit_is_refused_before_any_request(
        moto_server: Any) -> None:
    """The scheduler checks every event against Limits.max_invoke_payload_bytes before it
    invokes (fsdgraph.transport.check_invoke_payload, for every backend). The function is
    deployed on moto, which cannot run it: an invocation that reached Lambda would fail
    otherwise."""
    limits = dataclasses.replace(AWS_LIMITS, max_invoke_payload_bytes=300)
    settings = settings_for(moto_server, "payload", bucket=moto_server.bucket, account=ACCOUNT,
                            limits=limits)
    deploy(settings, dependencies=False, say=lambda _: None)  # the run's pre-flight needs it
    backend = AwsBackend(settings)
    rng = np.random.default_rng(0)
    weights = [sp.csr_matrix(rng.random((8, 8)).astype(np.float32)) for _ in range(2)]
    plan = fsdgraph.compile(fsdgraph.sequential(weights, bias=-0.5), workers=2,
                            partitioner="contiguous")
    try:
        with pytest.raises(MessageTooLarge, match=r"^invocation event of \d+ bytes exceeds the "
                                                  r"limit of 300 bytes \(Limits\.max_invoke_"):
            Scheduler(backend, channel="object").run_sync(plan, np.ones((3, 8), np.float32))
    finally:
        teardown(settings, say=lambda _: None)


# -- the queue channel over SNS/SQS ---------------------------------------------------------------
HookInstaller = Callable[[AioSession], None]


@asynccontextmanager
async def aws_channels(server: Any, workers: int, config: ChannelConfig,
                       limits: Limits = AWS_LIMITS, hooks: HookInstaller | None = None,
                       ) -> AsyncIterator[tuple[RunNames, list[Channel]]]:
    """A run's queues and topics on the moto server and one QueueChannel per worker, each with
    its own botocore session (as separate functions would have); ``hooks`` can instrument
    every session."""
    names = RunNames(uuid.uuid4().hex[:12], "chan")
    cfg = AwsConfig(region=server.region, endpoints={s: server.url for s in MOTO_SERVICES},
                    bucket=server.bucket, prefix="channels/", account=ACCOUNT)

    def services() -> Services:
        session = AioSession()
        if hooks is not None:
            hooks(session)
        messages = SnsSqsMessageService(cfg, limits, session=session)
        return Services(objects=S3ObjectStore(cfg, session=session), messages=messages,
                        control=QueueControlPlane(messages, names, limits),
                        functions=LambdaFunctions(cfg, "none"),
                        limits=limits, description={})

    async with AsyncExitStack() as stack:
        admin = services()
        stack.push_async_callback(admin.messages.close)  # type: ignore[attr-defined]
        await QueueChannel.create_resources(admin, names, workers, config)
        stack.push_async_callback(QueueChannel.delete_resources, admin, names, workers, config)
        chans: list[Channel] = []
        for w in range(workers):
            own = services()
            stack.push_async_callback(own.messages.close)  # type: ignore[attr-defined]
            chans.append(QueueChannel(WorkerContext(own, names, w, workers, config,
                                                    WorkerMetrics(w), BlockCodec())))
        yield names, chans


def random_block(seed: int, batch: int, cols: int, density: float) -> tuple[Block, np.ndarray]:
    """A block of ``cols`` columns over ``batch`` rows, and the same as a dense array."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((batch, cols)) < density,
                     rng.standard_normal((batch, cols)), 0).astype(np.float32)
    return Block.from_matrix(sp.csr_matrix(dense)), dense


async def receive_all(chan: Channel, layer: int, sources: list[int], batch: int,
                      widths: dict[int, int]) -> dict[int, np.ndarray]:
    """Every source's block of ``layer``, reassembled from its chunks (summed, so that a chunk
    delivered to the caller twice shows as doubled values)."""
    got = {src: np.zeros((batch, widths[src]), np.float32) for src in sources}
    async for src, chunk in chan.receive(layer, sources):
        cols = slice(chunk.col0, chunk.col0 + chunk.block.ncols)
        got[src][:, cols] += chunk.block.to_matrix(batch).toarray()
    return got


async def exchange(chans: list[Channel], batch: int, widths: int, density: float) -> None:
    """Every worker sends every other a different block at layer 0; each block must arrive
    exactly as sent."""
    workers = len(chans)
    sent: dict[tuple[int, int], np.ndarray] = {}
    outgoing: dict[int, list[tuple[int, Block]]] = {}
    for src in range(workers):
        for dst in range(workers):
            if src != dst:
                blk, dense = random_block(10 * src + dst, batch, widths + src, density)
                sent[(src, dst)] = dense
                outgoing.setdefault(src, []).append((dst, blk))
    await asyncio.gather(*(chans[w].send(0, outgoing[w]) for w in range(workers)))
    received = await asyncio.gather(*(
        receive_all(chans[dst], 0, [s for s in range(workers) if s != dst], batch,
                    {s: widths + s for s in range(workers)}) for dst in range(workers)))
    got = {(src, dst): arr for dst, by_src in enumerate(received) for src, arr in by_src.items()}
    assert got.keys() == sent.keys()
    for key, dense in sent.items():
        np.testing.assert_array_equal(got[key], dense, err_msg=f"edge {key}")


@pytest.mark.parametrize("direct", [False, True], ids=["sns-fan-out", "direct-sqs"])
def test_queue_channel_routes_each_chunk_only_to_its_target(moto_server: Any,
                                                            direct: bool) -> None:
    """Through topics with filter policies (or straight to queues): every worker gets exactly
    its own blocks from every peer; a chunk for another target would raise ProtocolError."""
    async def body() -> None:
        async with aws_channels(moto_server, 3, ChannelConfig(topics=2, direct=direct)) as (
                _, chans):
            await exchange(chans, batch=40, widths=12, density=0.3)
            for w, chan in enumerate(chans):
                m = chan.metrics.current
                assert m.messages_received == sum(
                    c.metrics.current.messages_sent for c in chans if c is not chan) // 2, w
                assert m.duplicates_dropped == 0

    asyncio.run(body())


def test_a_block_over_the_message_limit_is_chunked_not_rejected(moto_server: Any) -> None:
    """About 1.5 MB of float32 between two workers: many messages of at most 256 KiB each."""
    async def body() -> None:
        async with aws_channels(moto_server, 2, ChannelConfig(topics=1)) as (_, chans):
            await exchange(chans, batch=1200, widths=300, density=0.5)
            m = chans[0].metrics.current
            assert m.messages_sent >= 6
            assert m.bytes_sent / m.messages_sent <= AWS_LIMITS.max_message_bytes

    asyncio.run(body())


def test_partially_failed_publish_batch_is_retried_entry_by_entry(moto_server: Any) -> None:
    """The first PublishBatch of worker 0 has every other entry refused as throttled (the entries
    are removed from the request before it is sent, and reported as failed in the response, as
    SNS does): only those are published again, and every chunk arrives once."""
    calls: list[list[tuple[str, str]]] = []
    dropped: list[tuple[str, str]] = []

    def ident(entry: dict[str, Any]) -> tuple[str, str]:
        a = entry["MessageAttributes"]
        return a["target"]["StringValue"], a["index"]["StringValue"]

    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        entries = params["PublishBatchRequestEntries"]
        if any("index" not in e["MessageAttributes"] for e in entries):
            return  # not chunks: what the channel's setup sends to prove delivery
        calls.append([ident(e) for e in entries])
        if not dropped and len(entries) >= 2:  # the first batch of several entries
            refused = entries[1::2]
            dropped.extend(ident(e) for e in refused)
            params["PublishBatchRequestEntries"] = entries[0::2]
            context["refused"] = [e["Id"] for e in refused]

    def after(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        for entry_id in context.get("refused", ()):
            parsed.setdefault("Failed", []).append({
                "Id": entry_id, "Code": "Throttling", "SenderFault": True,
                "Message": "Rate exceeded"})

    def hooks(session: AioSession) -> None:
        session.register("before-parameter-build.sns.PublishBatch", before)
        session.register("after-call.sns.PublishBatch", after)

    async def body() -> None:
        async with aws_channels(moto_server, 4, ChannelConfig(topics=1),
                                hooks=hooks) as (_, chans):
            await exchange(chans, batch=100, widths=20, density=0.5)
            assert all(c.metrics.current.duplicates_dropped == 0 for c in chans)

    asyncio.run(body())
    assert dropped
    retried = [c for c in calls if set(c) <= set(dropped)]
    assert retried and sorted(retried[0]) == sorted(dropped), (calls, dropped)


def test_duplicated_sqs_delivery_does_not_change_the_result(moto_server: Any) -> None:
    """Every ReceiveMessage answer carries each message twice (as SQS may deliver it again):
    the inbox drops the copies and the reassembled blocks are exact."""
    def duplicate(parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("Messages"):
            parsed["Messages"] = [m for m in parsed["Messages"] for _ in range(2)]

    def hooks(session: AioSession) -> None:
        session.register("after-call.sqs.ReceiveMessage", duplicate)

    async def body() -> None:
        async with aws_channels(moto_server, 3, ChannelConfig(topics=3),
                                hooks=hooks) as (_, chans):
            await exchange(chans, batch=200, widths=50, density=0.4)
            assert all(c.metrics.current.duplicates_dropped > 0 for c in chans)

    asyncio.run(body())


def test_non_retryable_publish_failure_fails_naming_the_target(moto_server: Any) -> None:
    def after(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Failed"] = [{"Id": "0", "Code": "InvalidParameter", "SenderFault": True,
                             "Message": "Invalid parameter: Message"}]

    def hooks(session: AioSession) -> None:
        session.register("after-call.sns.PublishBatch", after)

    async def body() -> None:
        async with aws_channels(moto_server, 2, ChannelConfig(topics=1),
                                hooks=hooks) as (_, chans):
            blk, _ = random_block(0, 10, 4, 0.5)
            with pytest.raises(RunError, match=r"worker 0 layer 0: publishing a chunk for worker "
                                               r"1 failed: InvalidParameter: Invalid parameter"):
                await chans[0].send(0, [(1, blk)])

    asyncio.run(body())


def test_failed_deletes_are_retried_entry_by_entry_and_the_rest_reported(
        moto_server: Any) -> None:
    """The first DeleteMessageBatch has two entries refused as throttled (removed from the
    request, reported failed): only those are deleted again; a non-retryable failure is returned,
    not retried."""
    calls: list[int] = []

    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        entries = params["Entries"]
        calls.append(len(entries))
        if len(calls) == 1:
            context["refused"] = [e["Id"] for e in entries[1::2]]
            params["Entries"] = entries[0::2]

    def after(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        for entry_id in context.get("refused", ()):
            parsed.setdefault("Failed", []).append({
                "Id": entry_id, "Code": "RequestThrottled", "SenderFault": True,
                "Message": "Rate exceeded"})
        if len(calls) == 3:  # the third call: a receipt SQS does not accept
            parsed["Failed"] = [{"Id": "0", "Code": "ReceiptHandleIsInvalid",
                                 "SenderFault": True, "Message": "bad receipt"}]

    session = AioSession()
    session.register("before-parameter-build.sqs.DeleteMessageBatch", before)
    session.register("after-call.sqs.DeleteMessageBatch", after)
    cfg = AwsConfig(region=moto_server.region, endpoints={s: moto_server.url for s in
                                                          MOTO_SERVICES}, account=ACCOUNT)

    async def body() -> None:
        async with SnsSqsMessageService(cfg, AWS_LIMITS, session=session) as svc:
            queue = await svc.create_queue(f"deletes-{uuid.uuid4().hex[:8]}",
                                           visibility_timeout_s=1, max_message_bytes=262144)
            assert (await svc.send_batch(queue, [Entry(f"m{i}") for i in range(4)])).ok
            got: list[Message] = []
            while len(got) < 4:
                got += await svc.receive(queue, max_messages=10, wait_s=1)
            assert await delete_received(svc, queue, [m.receipt for m in got]) == ()
            assert calls == [4, 2]
            await asyncio.sleep(1.5)  # past the visibility timeout: nothing comes back
            assert await svc.receive(queue, wait_s=0) == []

            assert (await svc.send_batch(queue, [Entry("x")])).ok
            (msg,) = await svc.receive(queue, wait_s=1)
            left = await delete_received(svc, queue, [msg.receipt])
            assert [(f.code, f.retryable) for f in left] == [("ReceiptHandleIsInvalid", False)]
            assert calls == [4, 2, 1]
            await svc.delete_queue(queue)

    asyncio.run(body())


# -- the local servers' command -------------------------------------------------------------------
def test_local_servers_command_writes_a_working_config_and_stops_both_on_sigterm(
        tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import tomllib
    import urllib.error
    import urllib.request

    config = tmp_path / "local.toml"
    proc = subprocess.Popen([sys.executable, "-m", "fsdgraph.testing.aws_servers", "--config",
                             str(config), "--deployment", "mine"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: config.exists() and config.read_text().endswith("\n"),
                   "the servers' config file", alive=lambda: proc.poll() is None)
        settings = tomllib.loads(config.read_text())["aws"]
        assert settings["deployment"] == "mine"
        urls = set(settings["endpoints"].values())
        assert len(urls) == 2 and set(settings["endpoints"]) >= {"s3", "sqs", "lambda"}
        for url in urls:  # both answer
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(url + "/", timeout=5).close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "export AWS_ACCESS_KEY_ID=testing" in out
    for url in urls:  # and both are gone: the connection is refused, no HTTP answer
        with pytest.raises(urllib.error.URLError) as refused:
            urllib.request.urlopen(url + "/", timeout=2).close()
        assert not isinstance(refused.value, urllib.error.HTTPError), url
