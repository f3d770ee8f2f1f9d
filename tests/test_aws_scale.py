"""The AWS backend at scale, against local AWS-API servers: quotas, the pre-flight check of a
run, the failures queue and the control plane that reads it, conditional writes and retryable
throttling on S3, and queues made ready for concurrent setup.

Servers: ``moto_server`` from ``conftest.py`` and, where Lambda itself must answer (the account's
concurrency, an invocation that fails), a :class:`~fsdgraph.testing.aws_servers.LocalAws` of this
module whose account has a concurrency of :data:`ACCOUNT_CONCURRENCY`. Where AWS answers
something the servers never do (S3's 503 SlowDown, a response lost after S3 stored the object),
it is injected with botocore's event hooks on the client side, as in ``test_aws_backend.py``;
every other answer is the server's.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import boto3
import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("aiobotocore", reason="pip install 'fsdgraph[aws]'")

from aiobotocore.awsrequest import AioAWSResponse
from aiobotocore.session import AioSession

import fsdgraph
from fsdgraph.backend import Services
from fsdgraph.backends.aws import AwsBackend, AwsControlPlane
from fsdgraph.backends.aws.config import AwsSettings
from fsdgraph.backends.aws.control import FUNCTION_FAILED
from fsdgraph.backends.aws.deploy import deploy, teardown
from fsdgraph.backends.aws.transports import AwsConfig, S3ObjectStore, SnsSqsMessageService
from fsdgraph.control import Status
from fsdgraph.errors import ConfigError, TransportError
from fsdgraph.event import EVENT_VERSION
from fsdgraph.quotas import Quotas
from fsdgraph.resources import RunNames
from fsdgraph.scheduler import RunConfig, Scheduler
from fsdgraph.testing.aws_servers import LocalAws

ACCOUNT = "123456789012"  # moto's default account
SERVICES = ("s3", "sns", "sqs", "sts", "iam", "logs", "lambda")
#: The function of this module's deployment stops after a minute.
FUNCTION_TIMEOUT_S = 60
#: Lambda's "Concurrent executions" in the account of :func:`local_aws`.
ACCOUNT_CONCURRENCY = 200


def settings_for(server: Any, deployment: str, **kw: Any) -> AwsSettings:
    return AwsSettings(region=server.region, deployment=deployment,
                       endpoints={s: server.url for s in SERVICES}, **kw)


def client(server: Any, service: str) -> Any:
    return boto3.client(service, region_name=server.region, endpoint_url=server.url)


@pytest.fixture(scope="module")
def deployed(moto_server: Any) -> Iterator[AwsSettings]:
    """Deployment ``scale`` (function timeout one minute), removed at the end."""
    settings = settings_for(moto_server, "scale", timeout_s=FUNCTION_TIMEOUT_S)
    deploy(settings, dependencies=False, say=lambda _: None)
    yield settings
    teardown(settings, say=lambda _: None)


@pytest.fixture(scope="module")
def local_aws() -> Iterator[LocalAws]:
    """moto and the Lambda invoke server, for an account of ACCOUNT_CONCURRENCY executions."""
    pytest.importorskip("moto.server", reason="pip install -e '.[test]'")
    with LocalAws(quotas=Quotas(lambda_concurrency=ACCOUNT_CONCURRENCY)) as aws, \
            pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_SESSION_TOKEN": "testing"}.items():
            mp.setenv(name, value)
        yield aws


@pytest.fixture(scope="module")
def deployed_locally(local_aws: LocalAws) -> Iterator[AwsSettings]:
    """Deployment ``edge`` on :func:`local_aws` (its function runs this environment's handler)."""
    settings = local_aws.settings(deployment="edge", timeout_s=FUNCTION_TIMEOUT_S)
    deploy(settings, dependencies=False, say=lambda _: None)
    yield settings
    teardown(settings, say=lambda _: None)


@asynccontextmanager
async def session(backend: AwsBackend, run_id: str | None = None
                  ) -> AsyncIterator[tuple[RunNames, Services]]:
    names = RunNames(run_id or uuid.uuid4().hex[:12], backend.namespace)
    async with backend.session(names) as services:
        yield names, services


# -- quotas ---------------------------------------------------------------------------------------
def test_quotas_come_from_the_config_file_and_reach_the_workers(moto_server: Any,
                                                                tmp_path: Any) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[aws]\nregion = "{moto_server.region}"\ndeployment = "quotas"\n'
                      "[quotas]\nlambda_concurrency = 3000\nfilter_policies_per_topic = 100\n")
    backend = AwsBackend.configure(config)
    assert (backend.quotas.lambda_concurrency, backend.quotas.filter_policies_per_topic) == (
        3000, 100)
    assert backend.quotas.filter_policies_per_account == Quotas().filter_policies_per_account

    async def body() -> None:
        backend.settings = settings_for(moto_server, "quotas", bucket=moto_server.bucket)
        async with session(backend) as (names, services):
            assert services.quotas == backend.quotas
            # A worker sizes its channel with the scheduler's quotas.
            async with AwsBackend.attach(services.description, names) as worker:
                assert worker.quotas == backend.quotas

    asyncio.run(body())


# -- pre-flight -----------------------------------------------------------------------------------
def preflight(backend: AwsBackend, workers: int, timeout_s: float) -> None:
    async def body() -> None:
        async with session(backend) as (_, services):
            await backend.preflight(services, workers, timeout_s)

    asyncio.run(body())


def test_preflight_passes_a_run_that_fits(deployed: AwsSettings) -> None:
    preflight(AwsBackend(deployed, Quotas()), workers=8, timeout_s=FUNCTION_TIMEOUT_S)


def test_preflight_refuses_a_function_that_is_not_deployed(moto_server: Any) -> None:
    backend = AwsBackend(settings_for(moto_server, "nowhere", bucket=moto_server.bucket))
    with pytest.raises(ConfigError) as info:
        preflight(backend, workers=2, timeout_s=60)
    assert str(info.value) == ("function 'nowhere-worker' does not exist in us-east-1: deploy "
                               "it first with `fsdgraph deploy`")


def test_preflight_accepts_a_run_longer_than_the_function_timeout(
        deployed: AwsSettings) -> None:
    """Workers near the function's timeout continue in new invocations: a run may outlast it."""
    preflight(AwsBackend(deployed, Quotas()), workers=2, timeout_s=1800)


def test_preflight_refuses_a_function_too_short_to_hand_over(moto_server: Any) -> None:
    settings = settings_for(moto_server, "short", timeout_s=5)
    deploy(settings, dependencies=False, say=lambda _: None)
    try:
        with pytest.raises(ConfigError) as info:
            preflight(AwsBackend(settings, Quotas()), workers=2, timeout_s=60)
    finally:
        teardown(settings, say=lambda _: None)
    assert str(info.value) == (
        "function 'short-worker' has a timeout of 5 s: a worker needs at least 10 s to run and "
        "hand over to its continuation. Raise the function's timeout (timeout_s in the [aws] "
        "table of the config file, or FSDGRAPH_AWS_TIMEOUT_S, then `fsdgraph deploy` again)")


def test_preflight_refuses_more_workers_than_the_configured_concurrency(
        deployed: AwsSettings) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(AwsBackend(deployed, Quotas(lambda_concurrency=10)), workers=16, timeout_s=60)
    assert str(info.value) == (
        "16 workers need 16 concurrent functions, but the quota lambda_concurrency is 10: raise "
        "Lambda 'Concurrent executions' (Service Quotas L-B99A9384) to at least 16 (and set "
        "quotas.lambda_concurrency in the config file), or use fewer workers")


def test_preflight_refuses_more_workers_than_the_functions_reserved_concurrency(
        moto_server: Any, deployed: AwsSettings) -> None:
    lam = client(moto_server, "lambda")
    lam.put_function_concurrency(FunctionName="scale-worker", ReservedConcurrentExecutions=3)
    try:
        preflight(AwsBackend(deployed, Quotas()), workers=3, timeout_s=60)  # fits exactly
        with pytest.raises(ConfigError) as info:
            preflight(AwsBackend(deployed, Quotas()), workers=4, timeout_s=60)
    finally:
        lam.delete_function_concurrency(FunctionName="scale-worker")
    assert str(info.value) == (
        "4 workers need 4 concurrent functions, but function 'scale-worker' has a reserved "
        "concurrency of 3: raise it to at least 4 (aws lambda put-function-concurrency "
        "--function-name scale-worker --reserved-concurrent-executions 4) or remove it (aws "
        "lambda delete-function-concurrency --function-name scale-worker), or use fewer workers")


def test_preflight_refuses_more_workers_than_the_account_runs_at_once(
        deployed_locally: AwsSettings) -> None:
    """Lambda's GetAccountSettings (answered by the invoke server): no function of the account
    reserves any concurrency, so all of it is the function's to use."""
    backend = AwsBackend(deployed_locally, Quotas())
    preflight(backend, workers=ACCOUNT_CONCURRENCY, timeout_s=60)  # fits exactly
    with pytest.raises(ConfigError) as info:
        preflight(backend, workers=ACCOUNT_CONCURRENCY + 1, timeout_s=60)
    assert str(info.value) == (
        "201 workers need 201 concurrent functions, but the account's concurrency in us-east-1 "
        "is 200 (Lambda GetAccountSettings): raise Lambda 'Concurrent executions' (Service "
        "Quotas L-B99A9384) to at least 201, or use fewer workers")


def test_preflight_counts_only_the_concurrency_other_functions_left_unreserved(
        local_aws: LocalAws, deployed_locally: AwsSettings) -> None:
    """Another deployment's function reserves 100 of the account's 200 executions: the 100 left
    are all this function may use."""
    other = local_aws.settings(deployment="other", timeout_s=FUNCTION_TIMEOUT_S)
    deploy(other, dependencies=False, say=lambda _: None)
    lam = boto3.client("lambda", region_name=other.region, endpoint_url=other.endpoints["lambda"])
    try:
        lam.put_function_concurrency(FunctionName="other-worker",
                                     ReservedConcurrentExecutions=100)
        with pytest.raises(ConfigError) as info:
            preflight(AwsBackend(deployed_locally, Quotas()), workers=120, timeout_s=60)
    finally:
        teardown(other, say=lambda _: None)
    assert str(info.value) == (
        "120 workers need 120 concurrent functions, but only 100 of the account's 200 "
        "concurrent executions in us-east-1 are unreserved, and function 'edge-worker' runs on "
        "those (Lambda GetAccountSettings): raise Lambda 'Concurrent executions' (Service Quotas "
        "L-B99A9384) to at least 220, or use fewer workers")


def test_a_run_that_fails_preflight_creates_nothing(moto_server: Any,
                                                    deployed: AwsSettings) -> None:
    """The scheduler asks before it stages an object or makes a queue."""
    import dataclasses

    settings = dataclasses.replace(deployed, prefix="preflight/")
    backend = AwsBackend(settings, Quotas(lambda_concurrency=2))
    rng = np.random.default_rng(0)
    weights = [sp.csr_matrix(rng.random((8, 8)).astype(np.float32)) for _ in range(2)]
    plan = fsdgraph.compile(fsdgraph.sequential(weights, bias=-0.5), workers=4,
                            partitioner="contiguous")
    with pytest.raises(ConfigError) as info:
        Scheduler(backend, channel="queue", config=RunConfig(timeout_s=60)).run_sync(
            plan, np.ones((3, 8), np.float32))
    assert str(info.value).startswith("4 workers need 4 concurrent functions, but the quota "
                                      "lambda_concurrency is 2")
    bucket = settings.bucket_name(ACCOUNT)
    assert client(moto_server, "s3").list_objects_v2(
        Bucket=bucket, Prefix="preflight/").get("KeyCount", 0) == 0
    queues = client(moto_server, "sqs").list_queues(QueueNamePrefix="scale-").get("QueueUrls", [])
    assert [q.rsplit("/", 1)[-1] for q in queues] == ["scale-failures"]


# -- the failures queue ---------------------------------------------------------------------------
def test_deploy_makes_the_failures_queue_the_functions_on_failure_destination(
        moto_server: Any) -> None:
    s = settings_for(moto_server, "destined")
    deploy(s, dependencies=False, say=lambda _: None)
    sqs, lam = client(moto_server, "sqs"), client(moto_server, "lambda")
    arn = f"arn:aws:sqs:{s.region}:{ACCOUNT}:destined-failures"
    url = sqs.get_queue_url(QueueName="destined-failures")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attrs["QueueArn"], attrs["MessageRetentionPeriod"], attrs["MaximumMessageSize"]) == (
        arn, "3600", "1048576")
    config = lam.get_function_event_invoke_config(FunctionName="destined-worker")
    assert config["MaximumRetryAttempts"] == 0
    assert config["DestinationConfig"]["OnFailure"] == {"Destination": arn}
    policy = client(moto_server, "iam").get_role_policy(
        RoleName="destined-worker", PolicyName="destined-worker")["PolicyDocument"]
    assert {"Sid": "FailureRecords", "Effect": "Allow", "Action": ["sqs:SendMessage"],
            "Resource": [arn]} in policy["Statement"]

    removed = teardown(s, say=lambda _: None)
    assert ("queue", "destined-failures") in {(r.kind, r.name) for r in removed}
    assert sqs.list_queues(QueueNamePrefix="destined-").get("QueueUrls", []) == []


def record(run_id: str, worker: int, error: dict[str, str] | None,
           condition: str = "RetriesExhausted") -> str:
    """Lambda's record of a failed asynchronous invocation of a worker's event."""
    body: dict[str, Any] = {
        "version": "1.0", "timestamp": "2026-01-01T00:00:00.000Z",
        "requestContext": {"requestId": str(uuid.uuid4()), "condition": condition,
                           "functionArn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:"
                                          f"scale-worker:$LATEST",
                           "approximateInvokeCount": 1},
        "requestPayload": {"run_id": run_id, "namespace": "scale", "worker": worker,
                           "workers": 8, "version": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
    }
    if error is not None:
        body["responseContext"]["functionError"] = "Unhandled"
        body["responsePayload"] = {**error, "stackTrace": ["  File \"x.py\", line 1\n"]}
    return json.dumps(body)


def test_records_of_failed_invocations_become_error_statuses_of_their_own_run_only(
        moto_server: Any, deployed: AwsSettings) -> None:
    """Two runs poll the deployment's failures queue at once: each gets an error status for
    each record of its own workers (and deletes it), never one of the other's; malformed records
    are deleted; the record of a third run, which nobody polls, stays."""
    sqs = client(moto_server, "sqs")
    url = sqs.get_queue_url(QueueName="scale-failures")["QueueUrl"]
    # What one run leaves of another's record comes back to the other in a second, not ten.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1"})
    a, b, gone = (uuid.uuid4().hex[:12] for _ in range(3))
    bodies = [
        record(a, 1, {"errorType": "Runtime.ExitError",
                      "errorMessage": "RequestId: 1 Error: Runtime exited with error: signal: "
                                      "killed"}),
        record(b, 2, {"errorType": "Sandbox.Timedout",
                      "errorMessage": "Task timed out after 60.00 seconds"}),
        record(a, 5, None, condition="EventAgeExceeded"),
        record(gone, 0, {"errorType": "MemoryError", "errorMessage": ""}),
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"requestPayload": {"worker": 3}}),  # no run id
        json.dumps({"requestPayload": {"run_id": a, "worker": "three"}}),
    ]
    for i, body in enumerate(bodies):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes={
            "seq": {"DataType": "String", "StringValue": str(i)}})

    async def errors_of(backend: AwsBackend, run_id: str, count: int) -> list[Status]:
        async with session(backend, run_id) as (_, services):
            control = services.control
            assert isinstance(control, AwsControlPlane)
            assert control.failures_queue == "scale-failures"
            await control.create()
            got: list[Status] = []
            try:
                for _ in range(400):  # until both records came (each poll waits 0.25 s)
                    got += await control.poll(wait_s=0.25)
                    if len(got) >= count:
                        break
            finally:
                await control.delete()
            return got

    async def body() -> tuple[list[Status], list[Status]]:
        backend = AwsBackend(deployed, Quotas())
        return await asyncio.gather(errors_of(backend, a, 2), errors_of(backend, b, 1))

    try:
        of_a, of_b = asyncio.run(body())
        left = []
        for _ in range(40):  # until the record nobody claimed is visible again
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            left += got.get("Messages", [])
            if left:
                break
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    finally:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "10"})
    assert sorted((s.worker, s.message) for s in of_a) == [
        (1, "the function invocation of worker 1 failed: Runtime.ExitError: RequestId: 1 "
            "Error: Runtime exited with error: signal: killed"),
        (5, "the function invocation of worker 5 failed: EventAgeExceeded: the event was never "
            "run: it waited longer than the function's maximum event age")]
    assert [(s.worker, s.message) for s in of_b] == [
        (2, "the function invocation of worker 2 failed: Sandbox.Timedout: Task timed out "
            "after 60.00 seconds")]
    for status in (*of_a, *of_b):
        assert (status.kind, status.layer, status.error_type) == ("error", 0, FUNCTION_FAILED)
    assert of_a[0].details or of_a[1].details  # Lambda's stack trace travels along
    assert [json.loads(m["Body"])["requestPayload"]["run_id"] for m in left] == [gone]
    assert int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]) == 1
    sqs.purge_queue(QueueUrl=url)


def test_a_worker_that_fails_before_it_can_report_is_known_from_lambdas_record(
        deployed_locally: AwsSettings) -> None:
    """A worker whose event it cannot read fails before it has a control plane to report on;
    Lambda's record of the failed invocation reaches the scheduler's control plane through the
    failures queue, as the worker's error."""
    async def body() -> list[Status]:
        async with session(AwsBackend(deployed_locally, Quotas())) as (names, services):
            await services.control.create()
            try:
                await services.functions.invoke({"run_id": names.run_id, "namespace": "edge",
                                                 "worker": 2, "version": 99})  # unknown
                got: list[Status] = []
                for _ in range(400):  # until Lambda's record came (each poll waits 0.25 s)
                    got += await services.control.poll(wait_s=0.25)
                    if got:
                        break
                return got
            finally:
                await services.control.delete()

    (status,) = asyncio.run(body())
    assert (status.kind, status.worker, status.error_type) == ("error", 2, FUNCTION_FAILED)
    assert status.message == (f"the function invocation of worker 2 failed: ProtocolError: "
                              f"worker event version 99 is not supported (this runtime reads "
                              f"version {EVENT_VERSION})")


def test_a_workers_services_know_nothing_of_the_failures_queue(deployed: AwsSettings) -> None:
    async def body() -> None:
        backend = AwsBackend(deployed, Quotas())
        async with session(backend) as (names, services):
            assert "failures" not in json.dumps(services.description)
            async with AwsBackend.attach(services.description, names) as worker:
                assert isinstance(worker.control, AwsControlPlane)
                assert worker.control.failures_queue is None

    asyncio.run(body())


def test_a_control_plane_without_the_failures_queue_polls_its_own_queue(
        moto_server: Any) -> None:
    """A deployment made before the failures queue existed: polls go on, without it."""
    cfg = AwsConfig(region=moto_server.region, endpoints={s: moto_server.url for s in SERVICES},
                    account=ACCOUNT)

    async def body() -> None:
        async with SnsSqsMessageService(cfg) as messages:
            names = RunNames(uuid.uuid4().hex[:12], "old")
            control = AwsControlPlane(messages, names, messages.limits, "old-failures")
            await control.create()
            await control.report(Status("done", worker=0, layer=3))
            got: list[Status] = []
            for _ in range(40):
                got += await control.poll(wait_s=0.25)
                if got and control.failures_queue is None:
                    break
            await control.delete()
            assert [(s.kind, s.worker) for s in got] == [("done", 0)]
            assert control.failures_queue is None

    asyncio.run(body())


# -- S3: conditional writes, throttling -----------------------------------------------------------
class _Body:
    """The raw body of an injected HTTP response."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, *_: Any) -> bytes:
        return self.data


def s3_error(status: int, code: str) -> AioAWSResponse:
    """An S3 error answer, as S3 sends it."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected {code}</Message></Error>").encode()
    return AioAWSResponse("http://injected", status, {"content-type": "application/xml"},
                          _Body(body))


def store(server: Any, session: AioSession) -> S3ObjectStore:
    cfg = AwsConfig(region=server.region, endpoints={"s3": server.url}, bucket=server.bucket,
                    prefix="scale/")
    return S3ObjectStore(cfg, session=session)


def test_s3_slow_down_is_retryable_after_botocores_bounded_attempts(moto_server: Any) -> None:
    """S3 answers 503 SlowDown while it scales a prefix: botocore tries three times in all,
    then the caller gets a retryable error to retry within its own deadline."""
    attempts: list[str] = []

    def slow_down(request: Any, **_: Any) -> AioAWSResponse:
        attempts.append(request.method)
        return s3_error(503, "SlowDown")

    session = AioSession()
    session.register("before-send.s3.PutObject", slow_down)

    async def body() -> None:
        async with store(moto_server, session) as objects:
            with pytest.raises(TransportError) as info:
                await objects.put("throttled", b"x")
            assert info.value.retryable
            assert "SlowDown" in str(info.value)

    asyncio.run(body())
    assert attempts == ["PUT"] * 3


@pytest.mark.parametrize("landed", ["ours", "another's"])
def test_put_if_absent_tells_its_own_lost_write_from_another_callers(
        moto_server: Any, landed: str) -> None:
    """The first attempt reaches S3 but its answer is lost (a 500 in its place): botocore tries
    again and S3 answers 412. Whether the call created the key depends on what S3 stored."""
    key = f"claim/{uuid.uuid4().hex}"
    ours, theirs = b"launched at 1.5", b"launched at 2.5"
    s3 = client(moto_server, "s3")
    calls: list[int] = []

    def first_lands_then_is_lost(**_: Any) -> AioAWSResponse | None:
        calls.append(1)
        if len(calls) > 1:
            return None  # the retry goes to S3
        s3.put_object(Bucket=moto_server.bucket, Key=f"scale/{key}",
                      Body=ours if landed == "ours" else theirs)
        return s3_error(500, "InternalError")

    session = AioSession()
    session.register("before-send.s3.PutObject", first_lands_then_is_lost)

    async def body() -> bool:
        async with store(moto_server, session) as objects:
            return await objects.put_if_absent(key, ours)

    assert asyncio.run(body()) is (landed == "ours")
    assert len(calls) == 2


def test_put_if_absent_retries_a_conflicting_write_as_s3_asks(moto_server: Any) -> None:
    """409 ConditionalRequestConflict: another write to the key was in flight; try again."""
    calls: list[int] = []

    def conflict_once(**_: Any) -> AioAWSResponse | None:
        calls.append(1)
        return s3_error(409, "ConditionalRequestConflict") if len(calls) == 1 else None

    session = AioSession()
    session.register("before-send.s3.PutObject", conflict_once)

    async def body() -> tuple[bool, bytes]:
        async with store(moto_server, session) as objects:
            key = f"claim/{uuid.uuid4().hex}"
            return await objects.put_if_absent(key, b"mine"), await objects.get(key)

    assert asyncio.run(body()) == (True, b"mine")
    assert len(calls) == 2


# -- queues ready for concurrent setup ------------------------------------------------------------
def test_queues_get_their_access_policy_at_creation_and_subscribing_changes_no_queue(
        moto_server: Any) -> None:
    """Sixty queues and two topics set up concurrently on one service (its connection pool
    bounds the requests in flight): every queue lets the run's topics send to it, from
    CreateQueue on, and no SetQueueAttributes is ever sent."""
    set_attributes: list[str] = []
    session = AioSession()
    session.register("before-call.sqs.SetQueueAttributes",
                     lambda **_: set_attributes.append("x"))
    run = uuid.uuid4().hex[:12]
    cfg = AwsConfig(region=moto_server.region, endpoints={s: moto_server.url for s in SERVICES},
                    account=ACCOUNT)

    async def body() -> list[str]:
        async with SnsSqsMessageService(cfg, session=session,
                                        topics=f"conc-{run}-t*") as messages:
            topics = await asyncio.gather(*(messages.create_topic(f"conc-{run}-t{t}")
                                            for t in range(2)))
            queues = await asyncio.gather(*(messages.create_queue(
                f"conc-{run}-w{w}", visibility_timeout_s=30, max_message_bytes=262144)
                for w in range(60)))
            await asyncio.gather(*(messages.subscribe(t, q, filter_policy={"target": [q]})
                                   for t in topics for q in queues))
            sqs = client(moto_server, "sqs")
            policies = [sqs.get_queue_attributes(
                QueueUrl=sqs.get_queue_url(QueueName=q)["QueueUrl"],
                AttributeNames=["Policy"])["Attributes"]["Policy"] for q in queues]
            pages = client(moto_server, "sns").get_paginator("list_subscriptions").paginate()
            subs = [s for page in pages for s in page["Subscriptions"]]
            assert len([s for s in subs if f"conc-{run}-" in s["TopicArn"]]) == 120
            await asyncio.gather(*(messages.delete_queue(q) for q in queues),
                                 *(messages.delete_topic(t) for t in topics))
            return policies

    policies = asyncio.run(body())
    assert set_attributes == []
    for w, text in enumerate(policies):
        (statement,) = json.loads(text)["Statement"]
        assert statement["Resource"] == f"arn:aws:sqs:us-east-1:{ACCOUNT}:conc-{run}-w{w}"
        assert statement["Action"] == "sqs:SendMessage"
        assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
        assert statement["Condition"] == {"ArnLike": {
            "aws:SourceArn": f"arn:aws:sns:us-east-1:{ACCOUNT}:conc-{run}-t*"}}


def test_a_runs_queues_accept_only_the_runs_own_topics(deployed: AwsSettings,
                                                       moto_server: Any) -> None:
    async def body() -> str:
        async with session(AwsBackend(deployed, Quotas())) as (names, services):
            assert services.messages is not None
            queue = await services.messages.create_queue(
                names.queue(0), visibility_timeout_s=30, max_message_bytes=262144)
            sqs = client(moto_server, "sqs")
            policy = sqs.get_queue_attributes(
                QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"],
                AttributeNames=["Policy"])["Attributes"]["Policy"]
            await services.messages.delete_queue(queue)
            return f"{names.run_id}|{policy}"

    run_id, policy = asyncio.run(body()).split("|", 1)
    (statement,) = json.loads(policy)["Statement"]
    source = statement["Condition"]["ArnLike"]["aws:SourceArn"]
    assert source == f"arn:aws:sns:us-east-1:{ACCOUNT}:scale-{run_id}-t*"
    names = RunNames(run_id, "scale")
    assert fnmatch.fnmatchcase(f"arn:aws:sns:us-east-1:{ACCOUNT}:{names.topic(12)}", source)
    assert not fnmatch.fnmatchcase(f"arn:aws:sns:us-east-1:{ACCOUNT}:scale-other-t0", source)
