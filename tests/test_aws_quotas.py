"""The local AWS servers enforce AWS's service quotas (:class:`fsdgraph.quotas.Quotas`), so a
test fails where AWS would.

One :class:`~fsdgraph.testing.aws_servers.LocalAws` for the module, with quotas lowered so that
reaching them takes a handful of requests: its moto (:mod:`fsdgraph.testing.moto_quotas`) refuses
topics, subscriptions and filter policies beyond them, its invoke server reports and enforces the
concurrency quota. Every test removes what it created, so the account-wide counts start from zero
in each. Lambda handlers are ``tests/invoke_handlers.py``'s.
"""

from __future__ import annotations

import io
import json
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("moto.server", reason="pip install -e '.[test]'")
boto3 = pytest.importorskip("boto3", reason="pip install -e '.[test]'")

from fsdgraph.quotas import Quotas  # noqa: E402
from fsdgraph.testing.aws_servers import CREDENTIALS, LocalAws  # noqa: E402
from fsdgraph.testing.lambda_endpoint import InvokeServer  # noqa: E402
from fsdgraph.testing.waiting import wait_until  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
QUOTAS = Quotas(filter_policies_per_topic=3, filter_policies_per_account=5, topics_per_account=4,
                subscriptions_per_topic=6, lambda_concurrency=150)
POLICY = json.dumps({"worker": [1]})


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    # The in-process invoke servers below read credentials from the environment.
    with pytest.MonkeyPatch.context() as mp:
        for name, value in CREDENTIALS.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        with LocalAws(log_dir=tmp_path_factory.mktemp("aws"), quotas=QUOTAS,
                      duplicate_events=True) as local:
            yield local


Client = Callable[[str], Any]


@pytest.fixture
def client(aws: LocalAws) -> Iterator[Client]:
    """``client(service)``: a boto3 client of the module's servers (closed at the end)."""
    made = []

    def make(service: str, endpoint_url: str | None = None) -> Any:
        config = boto3.session.Config(retries={"total_max_attempts": 1}, read_timeout=60)
        made.append(boto3.session.Session().client(
            service, region_name=aws.region, endpoint_url=endpoint_url or aws.endpoints[service],
            aws_access_key_id="testing", aws_secret_access_key="testing",
            aws_session_token="testing", config=config))
        return made[-1]

    yield make
    for c in made:
        c.close()


def eventually(condition: Callable[[], Any], what: str) -> Any:
    """Wait until ``condition`` returns something true, and return that."""
    return wait_until(condition, what)


# -- SNS: topics, subscriptions, filter policies ---------------------------------------------------
@pytest.fixture
def sns(client: Client) -> Iterator[Any]:
    """An SNS client; the topics it creates are deleted at the end."""
    sns = client("sns")
    yield sns
    for topic in sns.list_topics()["Topics"]:
        sns.delete_topic(TopicArn=topic["TopicArn"])


def subscribe(sns: Any, topic: str, queue: str, policy: str | None = POLICY) -> str:
    """Subscribe a (made-up) queue, with a filter policy unless ``policy`` is None."""
    attributes = {"FilterPolicy": policy} if policy is not None else {}
    return str(sns.subscribe(TopicArn=topic, Protocol="sqs",
                             Endpoint=f"arn:aws:sqs:us-east-1:123456789012:{queue}",
                             Attributes=attributes)["SubscriptionArn"])


def refused(caught: pytest.ExceptionInfo[Any], code: str, quota: str) -> None:
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == code
    assert f"quota {quota} = {getattr(QUOTAS, quota)}" in error["Error"]["Message"]


def endpoints(sns: Any, topic: str) -> set[str]:
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    return {s["Endpoint"].rpartition(":")[2] for s in subscriptions}


def test_filter_policies_per_topic(sns: Any) -> None:
    """The fourth filter policy on a topic is refused, by Subscribe (which then creates nothing)
    or by SetSubscriptionAttributes; a subscription without one does not count; replacing a
    policy takes no new one; Unsubscribe and an empty policy free one."""
    topic = sns.create_topic(Name=unique("topic"))["TopicArn"]
    with_policy = [subscribe(sns, topic, f"q{n}") for n in range(3)]
    plain = subscribe(sns, topic, "plain", policy=None)

    with pytest.raises(sns.exceptions.FilterPolicyLimitExceededException) as caught:
        subscribe(sns, topic, "q3")
    refused(caught, "FilterPolicyLimitExceeded", "filter_policies_per_topic")
    assert endpoints(sns, topic) == {"q0", "q1", "q2", "plain"}
    with pytest.raises(sns.exceptions.FilterPolicyLimitExceededException):
        sns.set_subscription_attributes(SubscriptionArn=plain, AttributeName="FilterPolicy",
                                        AttributeValue=POLICY)
    sns.set_subscription_attributes(SubscriptionArn=with_policy[0],
                                    AttributeName="FilterPolicy",
                                    AttributeValue=json.dumps({"worker": [2]}))

    sns.unsubscribe(SubscriptionArn=with_policy[0])
    subscribe(sns, topic, "q3")
    sns.set_subscription_attributes(SubscriptionArn=with_policy[1],
                                    AttributeName="FilterPolicy", AttributeValue="")
    sns.set_subscription_attributes(SubscriptionArn=plain, AttributeName="FilterPolicy",
                                    AttributeValue=POLICY)
    assert endpoints(sns, topic) == {"q1", "q2", "q3", "plain"}


def test_filter_policies_per_account(sns: Any) -> None:
    """Policies count across the account's topics; DeleteTopic frees its subscriptions'."""
    first = sns.create_topic(Name=unique("topic"))["TopicArn"]
    second = sns.create_topic(Name=unique("topic"))["TopicArn"]
    for n in range(3):
        subscribe(sns, first, f"q{n}")
    for n in range(2):
        subscribe(sns, second, f"q{n}")
    with pytest.raises(sns.exceptions.FilterPolicyLimitExceededException) as caught:
        subscribe(sns, second, "q2")  # two on this topic, five in the account
    refused(caught, "FilterPolicyLimitExceeded", "filter_policies_per_account")

    sns.delete_topic(TopicArn=first)
    subscribe(sns, second, "q2")
    assert endpoints(sns, second) == {"q0", "q1", "q2"}


def test_subscriptions_per_topic(sns: Any) -> None:
    topic = sns.create_topic(Name=unique("topic"))["TopicArn"]
    arns = [subscribe(sns, topic, f"q{n}", policy=None) for n in range(6)]
    with pytest.raises(sns.exceptions.SubscriptionLimitExceededException) as caught:
        subscribe(sns, topic, "q6", policy=None)
    refused(caught, "SubscriptionLimitExceeded", "subscriptions_per_topic")
    # Subscribing again what is subscribed returns the subscription, as SNS does.
    assert subscribe(sns, topic, "q0", policy=None) == arns[0]


def test_topics_per_account(sns: Any) -> None:
    names = [unique("topic") for _ in range(4)]
    arns = [sns.create_topic(Name=name)["TopicArn"] for name in names]
    with pytest.raises(sns.exceptions.TopicLimitExceededException) as caught:
        sns.create_topic(Name=unique("topic"))
    refused(caught, "TopicLimitExceeded", "topics_per_account")
    # CreateTopic of an existing name answers that topic: nothing new.
    assert sns.create_topic(Name=names[0])["TopicArn"] == arns[0]
    sns.delete_topic(TopicArn=arns[0])
    sns.create_topic(Name=unique("topic"))


# -- Lambda: account settings and concurrency ------------------------------------------------------
def code_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("unused.py", "")
    return buffer.getvalue()


@pytest.fixture
def make_function(client: Client) -> Iterator[Callable[..., str]]:
    """``make(handler, endpoint_url=None, timeout=60)``: a function running
    ``invoke_handlers.<handler>`` that is not retried; deleted at the end."""
    iam = client("iam")
    role = iam.create_role(RoleName=unique("role"), AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam = client("lambda")
    names = []

    def make(handler: str, *, endpoint_url: str | None = None, timeout: int = 60) -> str:
        name = unique("fn")
        creator = client("lambda", endpoint_url)
        creator.create_function(
            FunctionName=name, Runtime="python3.11", Role=role, Code={"ZipFile": code_zip()},
            Handler=f"invoke_handlers.{handler}", Timeout=timeout,
            Environment={"Variables": {"PYTHONPATH": str(TESTS_DIR)}})
        creator.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
        names.append(name)
        return name

    yield make
    for name in names:
        lam.delete_function(FunctionName=name)


def test_account_settings_report_the_quota_and_reservations(client: Client,
                                                            make_function: Any) -> None:
    """GetAccountSettings: ConcurrentExecutions is the quota, UnreservedConcurrentExecutions the
    quota less the reservations; a reservation leaving fewer than 100 unreserved is refused."""
    lam = client("lambda")
    names = [make_function("echo"), make_function("echo")]
    settings = lam.get_account_settings()
    assert settings["AccountLimit"]["ConcurrentExecutions"] == 150
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == 150
    assert settings["AccountUsage"]["FunctionCount"] == 2

    lam.put_function_concurrency(FunctionName=names[0], ReservedConcurrentExecutions=30)
    assert lam.get_function_concurrency(FunctionName=names[0])[
        "ReservedConcurrentExecutions"] == 30
    assert lam.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 120
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.put_function_concurrency(FunctionName=names[1], ReservedConcurrentExecutions=21)
    lam.delete_function_concurrency(FunctionName=names[0])
    assert lam.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 150


def test_concurrency_limit_queues_events_and_throttles_request_response(
        aws: LocalAws, client: Client, make_function: Any, tmp_path: Path) -> None:
    """With a quota of 2: while two executions run, a RequestResponse invocation gets 429
    TooManyRequestsException and Event invocations wait in the queue; once the two are killed
    the five queued ones all run, never more than two at a time."""
    moto_url = aws.endpoints["s3"]  # every service but lambda is moto
    with InvokeServer(moto_url, quotas=Quotas(lambda_concurrency=2)) as server:
        name = make_function("sleep_then_write", endpoint_url=server.url)
        echo = make_function("echo", endpoint_url=server.url)
        lam = client("lambda", server.url)

        def send(event: dict[str, Any]) -> None:
            response = lam.invoke(FunctionName=name, InvocationType="Event",
                                  Payload=json.dumps(event).encode())
            assert response["Payload"].read() == b"" and response["StatusCode"] == 202

        for n in range(2):
            send({"phase": "block", "started": str(tmp_path / f"block-{n}"),
                  "path": str(tmp_path / f"never-{n}"), "sleep_s": 100})
        for n in range(2):
            eventually((tmp_path / f"block-{n}").exists, "the blocking executions")
        with pytest.raises(lam.exceptions.TooManyRequestsException) as caught:
            lam.invoke(FunctionName=echo, Payload=b"{}")
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert caught.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"

        runs = 5
        for n in range(runs):
            send({"started": str(tmp_path / f"started-{n}"), "path": str(tmp_path / f"end-{n}"),
                  "sleep_s": 0.5})
        status = server.status()
        assert (len(status["running"]), status["queued"]) == (2, runs)
        assert len(server.kill({"phase": "block"})) == 2
        eventually(lambda: all((tmp_path / f"end-{n}").exists() for n in range(runs)),
                   "every queued event to run")
        assert server.executions[name] == 2 + runs
        assert not any((tmp_path / f"never-{n}").exists() for n in range(2))
    # The handlers stamp their start and end; an execution starts only after another ended.
    spans = [(json.loads((tmp_path / f"started-{n}").read_text()),
              json.loads((tmp_path / f"end-{n}").read_text())) for n in range(runs)]
    overlapping = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlapping <= 2


def test_duplicate_events_reach_the_invoke_server(aws: LocalAws, client: Client,
                                                  make_function: Any, tmp_path: Path) -> None:
    """LocalAws(duplicate_events=True): each Event invocation runs twice."""
    name = make_function("report")
    lam = client("lambda")
    response = lam.invoke(FunctionName=name, InvocationType="Event",
                          Payload=json.dumps({"path": str(tmp_path / "seen.json")}).encode())
    assert response["Payload"].read() == b""

    def status() -> dict[str, Any]:
        with urllib.request.urlopen(aws.endpoints["lambda"] + "/_fsdgraph/status",
                                    timeout=30) as answer:
            return dict(json.loads(answer.read()))

    eventually(lambda: status()["executions"].get(name) == 2 and not status()["running"],
               "two executions of the event, both ended")
    assert status()["invocations"][name] == 1
