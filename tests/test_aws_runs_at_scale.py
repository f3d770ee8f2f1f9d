"""Whole runs on the AWS backend against local AWS servers that enforce AWS's quotas
(:mod:`fsdgraph.testing.aws_servers`): moto refuses filter policies beyond the per-topic and
per-account quotas as SNS does, the Lambda endpoint bounds concurrency, may deliver an event
twice and sends a failed invocation's record to the function's on-failure destination.

- 24 workers through the sharded queue channel, with the per-topic quota lowered to 10 filter
  policies (three topic shards; what 256 workers need at AWS's 200; moto serving 256 workers
  from one process on two cores is too slow to hold a run);
- an account quota too small for one filter policy per worker: the channel sends directly;
- every invocation event delivered twice: counted, and the answer is still the reference;
- a worker killed mid-run: relaunched from its checkpoint (the exact result), or, with no
  relaunch allowed, reported by name through the failures queue, not by a timeout;
- a function timeout shorter than the run: workers hand over to continuations.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends.aws import AwsBackend
from fsdgraph.cli import EXIT_PASSED, main
from fsdgraph.errors import RunError
from fsdgraph.quotas import Quotas
from fsdgraph.sources.graphchallenge import graphchallenge_bias
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet
from fsdgraph.testing.aws_servers import CREDENTIALS, PATIENT, LocalAws


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def deployed(servers: LocalAws, directory: Path, deployment: str,
             quotas: str = "", timeout_s: int = 900) -> AwsBackend:
    """``fsdgraph deploy`` on ``servers``; the backend configured from the same file (with
    ``quotas``, a ``[quotas]`` table: the account's quotas as the user knows them)."""
    config = directory / f"{deployment}.toml"
    config.write_text(servers.config_toml(deployment).replace(
        "[aws]\n", f"[aws]\ntimeout_s = {timeout_s}\n") + quotas)
    assert main(["deploy", "--config", str(config), "--no-dependencies"]) == EXIT_PASSED
    return AwsBackend.configure(config)


@pytest.fixture(scope="module")
def network() -> tuple[fsdgraph.Graph, sp.csr_matrix, sp.csr_matrix]:
    graph = fsdgraph.sequential(radixnet(1024, 4, seed=0), graphchallenge_bias(1024),
                                cap=32.0, bias_on_nonzero=True)
    inputs = synthetic_images(1024, 32, seed=1)
    return graph, inputs, fsdgraph.reference_inference(inputs, graph.layers())


def run(backend: AwsBackend, network: Any, workers: int,
        config: fsdgraph.RunConfig | None = None) -> fsdgraph.Result:
    graph, inputs, reference = network
    scheduler = fsdgraph.Scheduler(backend, "queue", config or PATIENT)
    result = scheduler.run_sync(fsdgraph.compile(graph, workers, "contiguous"), inputs)
    np.testing.assert_array_equal(result.activations.toarray(), reference.toarray())
    return result


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalAws, AwsBackend]]:
    """AWS's own quotas, enforced."""
    directory = tmp_path_factory.mktemp("aws-scale")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        with LocalAws(log_dir=directory / "logs", quotas=Quotas()) as servers:
            yield servers, deployed(servers, directory, "scale")


def test_a_topic_delivers_to_every_one_of_its_150_filtered_subscriptions(
        aws: tuple[LocalAws, AwsBackend]) -> None:
    """SNS delivers to all subscriptions of a topic (moto alone stops at the first 100)."""
    import boto3

    servers, _ = aws
    sns = boto3.client("sns", region_name=servers.region, endpoint_url=servers.endpoints["sns"])
    sqs = boto3.client("sqs", region_name=servers.region, endpoint_url=servers.endpoints["sqs"])
    topic = sns.create_topic(Name="fan-150")["TopicArn"]
    urls = [sqs.create_queue(QueueName=f"fan-150-{w}")["QueueUrl"] for w in range(150)]
    try:
        for w, url in enumerate(urls):
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"]["QueueArn"]
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={
                "RawMessageDelivery": "true", "FilterPolicy": json.dumps({"target": [str(w)]})})
        for first in range(0, 150, 10):
            sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[
                {"Id": str(w), "Message": f"for {w}", "MessageAttributes": {
                    "target": {"DataType": "String", "StringValue": str(w)}}}
                for w in range(first, first + 10)])
        got = [[m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10
                                                       ).get("Messages", [])] for url in urls]
        assert got == [[f"for {w}"] for w in range(150)]
    finally:
        sns.delete_topic(TopicArn=topic)
        for url in urls:
            sqs.delete_queue(QueueUrl=url)


def test_a_run_goes_through_topic_shards_within_the_filter_policy_quota(
        tmp_path: Path, network: Any) -> None:
    """The servers enforce a per-topic quota of 10; told of it, the channel makes three
    shards (without the ``[quotas]`` table, Subscribe is refused as SNS would refuse it)."""
    with LocalAws(log_dir=tmp_path / "logs",
                  quotas=Quotas(filter_policies_per_topic=10)) as servers:
        backend = deployed(servers, tmp_path, "shards",
                           "[quotas]\nfilter_policies_per_topic = 10\n")
        report = run(backend, network, 24).report
    assert report["channel_setup"]["mode"] == "topics"
    assert report["channel_setup"]["topics"] == 3
    assert report["setup_requests"]["subscribe"] == 24  # one filter policy per queue
    assert report["setup_requests"]["create_topic"] == 3
    assert report["relaunches"] == 0 and report["continuations"] == 0
    assert report["requests"]["invoke"] == 24  # one invocation per worker
    assert report["duplicate_invocations"] == 0 and report["stray_dropped"] == 0


def test_above_the_account_filter_policy_quota_a_run_sends_directly(
        tmp_path: Path, network: Any) -> None:
    with LocalAws(log_dir=tmp_path / "logs",
                  quotas=Quotas(filter_policies_per_account=6)) as servers:
        backend = deployed(servers, tmp_path, "direct",
                           "[quotas]\nfilter_policies_per_account = 6\n")
        report = run(backend, network, 8).report
    assert report["channel_setup"]["mode"] == "direct"
    assert "filter_policies_per_account=6" in report["channel_setup"]["why"]
    assert "subscribe" not in report["setup_requests"]
    assert report["requests"].get("publish", 0) == 0 and report["requests"]["send"] > 0


def test_a_duplicated_invocation_event_is_counted_and_harmless(tmp_path: Path,
                                                               network: Any) -> None:
    with LocalAws(log_dir=tmp_path / "logs", duplicate_events=True) as servers:
        backend = deployed(servers, tmp_path, "twice")
        report = run(backend, network, 8).report
    assert report["duplicate_invocations"] == 8  # every worker's event came twice
    assert report["relaunches"] == 0 and report["continuations"] == 0
    assert report["requests"]["invoke"] == 8
    assert report["messages_received"] == report["messages_sent"]


def test_a_worker_killed_mid_run_is_reported_by_name_through_the_failure_destination(
        aws: tuple[LocalAws, AwsBackend], network: Any) -> None:
    servers, backend = aws
    graph, inputs, _ = network
    lam = servers.endpoints["lambda"]
    config = fsdgraph.RunConfig(progress=False, stall_timeout_s=600, relaunches=0,
                                channel=fsdgraph.ChannelConfig(peer_timeout_s=600))
    killed = killing(lam, 2)

    async def main_() -> None:
        scheduler = fsdgraph.Scheduler(backend, "queue", config)
        with killed, pytest.raises(RunError) as caught:
            await scheduler.run(fsdgraph.compile(graph, 4, "contiguous"), inputs)
        assert len(killed.result) == 1
        message = str(caught.value)
        assert message.startswith("worker 2 failed at layer 0: the function invocation of "
                                  "worker 2 failed: Runtime.ExitError"), message
        assert caught.value.worker == 2

    asyncio.run(main_())


@pytest.mark.parametrize("channel", ["queue", "object"])
def test_a_worker_killed_mid_run_is_relaunched_and_the_result_is_exact(
        aws: tuple[LocalAws, AwsBackend], network: Any, channel: str) -> None:
    """Lambda's failure record of the killed invocation makes the scheduler relaunch it from
    its checkpoint; the run returns the reference's bits."""
    import boto3

    servers, backend = aws
    graph = fsdgraph.sequential(radixnet(1024, 60, seed=0), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    inputs = synthetic_images(1024, 64, seed=1)
    reference = fsdgraph.reference_inference(inputs, graph.layers())
    config = fsdgraph.RunConfig(progress=False, stall_timeout_s=600, checkpoint_every=1,
                                channel=fsdgraph.ChannelConfig(peer_timeout_s=600,
                                                               visibility_timeout_s=2))
    s3 = boto3.client("s3", region_name=servers.region, endpoint_url=servers.endpoints["s3"])

    def checkpointed() -> bool:  # worker 1 is past layer 2, and far from done
        for bucket in s3.list_buckets()["Buckets"]:
            listed = s3.list_objects_v2(Bucket=bucket["Name"])
            if any("/ckpt/1/000002" in o["Key"] for o in listed.get("Contents", [])):
                return True
        return False

    killed = killing(servers.endpoints["lambda"], 1, after=checkpointed)
    with killed:
        result = fsdgraph.Scheduler(backend, channel, config).run_sync(
            fsdgraph.compile(graph, 3, "contiguous"), inputs)
    assert len(killed.result) == 1
    np.testing.assert_array_equal(result.activations.toarray(), reference.toarray())
    assert result.report["relaunches"] == 1


def test_a_run_longer_than_the_function_timeout_continues(tmp_path: Path) -> None:
    """A function Lambda stops after 10 s, and worker 1's invocation is held until worker 0 has
    handed over: worker 0, waiting for worker 1's columns, hands over near its limit and
    continues in a new invocation, and the result is the reference's."""
    graph = fsdgraph.sequential(radixnet(1024, 24, seed=0), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    inputs = synthetic_images(1024, 1000, seed=1)
    reference = fsdgraph.reference_inference(inputs, graph.layers())
    config = fsdgraph.RunConfig(progress=False, checkpoint_every=0, relaunch_after_s=600,
                                channel=fsdgraph.ChannelConfig(visibility_timeout_s=2))
    with LocalAws(log_dir=tmp_path / "logs", quotas=Quotas()) as servers:
        backend = deployed(servers, tmp_path, "brief", timeout_s=10)
        lam = servers.endpoints["lambda"]
        worker_1 = {"match": {"worker": 1, "attempt": 0}}
        control(lam, "/_fsdgraph/hold", worker_1)

        def release_once_worker_0_continued() -> None:
            # Workers 0 and 1, then worker 0's continuation: three invocations.
            while control(lam, "/_fsdgraph/status")["invocations"].get("brief-worker", 0) < 3:
                time.sleep(0.05)
            control(lam, "/_fsdgraph/release", worker_1)

        releaser = threading.Thread(target=release_once_worker_0_continued, daemon=True)
        releaser.start()
        result = fsdgraph.Scheduler(backend, "queue", config).run_sync(
            fsdgraph.compile(graph, 2, "contiguous"), inputs)
        releaser.join()
    np.testing.assert_array_equal(result.activations.toarray(), reference.toarray())
    # Worker 0 must hand over (it waits past its limit for the held worker 1); how many more
    # attempts the rest of the run takes depends on this machine's speed, not on the protocol.
    assert result.report["continuations"] >= 1
    assert result.report["relaunches"] == 0


def control(lam: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A test control of the local Lambda endpoint ``lam`` (GET without a body, else POST)."""
    request = urllib.request.Request(
        f"{lam}{path}", method="GET" if body is None else "POST",
        data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


class killing:
    """Kill the first execution of ``worker``'s invocation on the Lambda endpoint ``lam`` as
    soon as it runs (from a thread, while the ``with`` block runs); ``result``: what was
    killed."""

    def __init__(self, lam: str, worker: int,
                 after: Callable[[], bool] = lambda: True) -> None:
        self.after = after
        self.request = urllib.request.Request(
            f"{lam}/_fsdgraph/kill", method="POST",
            data=json.dumps({"match": {"worker": worker, "attempt": 0}}).encode())
        self.over = threading.Event()
        self.result: list[Any] = []
        self.thread = threading.Thread(target=self._kill, daemon=True)

    def _kill(self) -> None:
        while not self.over.is_set():  # a run that ended first: nothing was killed
            if not self.after():
                time.sleep(0.005)
                continue
            with urllib.request.urlopen(self.request, timeout=60) as answer:
                killed: list[Any] = json.loads(answer.read())["killed"]
            if killed:
                self.result = killed
                return
            time.sleep(0.005)

    def __enter__(self) -> killing:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.over.set()
        self.thread.join()
