"""What holds at a thousand workers, proven small: quotas, topic shards, readiness, duplicated
invocations, stray messages, the invocation tree and the control plane's pace.

Runs use the embedded backend, whose spool queues enforce the same filter-policy quotas as SNS,
with quotas lowered so that eight workers need what a thousand need on AWS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backend import Functions
from fsdgraph.backends.local import LocalBackend
from fsdgraph.channels import ChannelConfig, WorkerContext
from fsdgraph.channels.queue import QueueChannel
from fsdgraph.channels.queue_resources import fit
from fsdgraph.codec import BlockCodec, TextCodec
from fsdgraph.control import heartbeat_interval, pollers
from fsdgraph.cost import estimate
from fsdgraph.errors import ConfigError
from fsdgraph.kernels import Block
from fsdgraph.metrics import WorkerMetrics
from fsdgraph.quotas import Quotas, load_quotas
from fsdgraph.resources import RunNames
from fsdgraph.scheduler import RunConfig, Scheduler
from fsdgraph.sources.images import synthetic_images
from fsdgraph.transport import Entry
from fsdgraph.tree import children, depth, roots


def exactly(text: str) -> str:
    import re

    return "^" + re.escape(text) + "$"


@pytest.fixture(scope="module")
def network() -> tuple[fsdgraph.Plan, sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(3)
    weights = []
    for _ in range(4):
        w = sp.random(256, 256, density=0.02, format="csr", dtype=np.float32, random_state=rng)
        w.data = rng.choice(np.array([-1, 1, 1, 2], np.float32), size=w.nnz)
        weights.append(w)
    graph = fsdgraph.sequential(weights, bias=-1.0, cap=32, bias_on_nonzero=True)
    inputs = synthetic_images(256, 64, seed=4)
    reference = fsdgraph.reference_inference(inputs, graph.layers())
    assert len(fsdgraph.categories(reference)) > 10
    return fsdgraph.compile(graph, workers=8, partitioner="contiguous"), inputs, reference


def run(backend: LocalBackend, net: Any, channel: str = "queue",
        config: RunConfig | None = None) -> fsdgraph.Result:
    plan, inputs, reference = net
    with Scheduler(backend, channel, config or RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, inputs)
    np.testing.assert_array_equal(result.categories, fsdgraph.categories(reference))
    np.testing.assert_array_equal(result.activations.toarray(), reference.toarray())
    return result


# -- quotas ----------------------------------------------------------------------------------------
def test_quotas_come_from_the_config_file_and_the_environment(tmp_path: Any) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[quotas]\nfilter_policies_per_topic = 50\nlambda_concurrency = 3000\n")
    q = load_quotas(config, environ={"FSDGRAPH_QUOTA_LAMBDA_CONCURRENCY": "5000"})
    assert (q.filter_policies_per_topic, q.lambda_concurrency) == (50, 5000)
    assert q.filter_policies_per_account == 10_000  # AWS's default
    config.write_text("[quotas]\nfilter_policies_per_topic = 0\n")
    with pytest.raises(ConfigError, match=exactly(
            f"{config} [quotas]: quota filter_policies_per_topic must be a positive number, "
            f"got 0")):
        load_quotas(config, environ={})
    config.write_text("[quotas]\nfilter_policies = 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting quotas\.filter_policies"):
        load_quotas(config, environ={})


def test_more_workers_than_the_concurrency_quota_is_refused_before_anything_runs(
        network: Any) -> None:
    backend = LocalBackend(quotas=Quotas(lambda_concurrency=6))
    with pytest.raises(ConfigError, match=exactly(
            "8 workers need 8 concurrent functions, but the quota lambda_concurrency is 6: raise "
            "Lambda 'Concurrent executions' (Service Quotas L-B99A9384) to at least 8 (and set "
            "quotas.lambda_concurrency in the config file), or use fewer workers")):
        run(backend, network)


# -- topic shards ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("workers", "topics"), [(1, 1), (8, 1), (200, 1), (201, 2), (1000, 5),
                                                 (10_000, 50)])
def test_topic_shards_are_the_fewest_the_filter_policy_quota_allows(workers: int,
                                                                    topics: int) -> None:
    config, setup = fit(ChannelConfig(), workers, Quotas())
    assert config.topics == topics and not config.direct
    assert setup["mode"] == "topics" and setup["topics"] == topics
    assert setup["filter_policies_per_topic"] <= 200
    assert fit(ChannelConfig(topics=3), 8, Quotas())[0].topics == 3  # more if the user asks
    assert fit(ChannelConfig(topics=30), 8, Quotas())[0].topics == 8  # never more than queues


def test_above_the_account_filter_policy_quota_the_channel_sends_directly() -> None:
    config, setup = fit(ChannelConfig(), 10_001, Quotas())
    assert config.direct and setup["mode"] == "direct"
    assert setup["why"] == (
        "10001 queues need 10001 filter policies, more than the account's quota "
        "filter_policies_per_account=10000: chunks go straight to each queue (SQS "
        "SendMessageBatch)")
    with pytest.raises(ConfigError, match="the quota topics_per_account is 3: raise SNS 'Topics "
                                          "per account'"):
        fit(ChannelConfig(), 1000, Quotas(topics_per_account=3))


def test_a_sharded_run_subscribes_each_queue_once_and_matches_the_reference(
        network: Any) -> None:
    quotas = Quotas(filter_policies_per_topic=3)
    result = run(LocalBackend(quotas=quotas), network)
    report = result.report
    assert report["channel_setup"] == {
        "mode": "topics", "topics": 3, "filter_policies_per_topic": 3,
        "why": "3 topics of at most 3 filter policies each (quota filter_policies_per_topic=3)"}
    setup = report["setup_requests"]
    assert setup["create_topic"] == 3 and setup["subscribe"] == 8 and setup["create_queue"] == 9
    assert setup["publish"] == 3  # one probe batch per shard
    assert report["teardown_requests"]["delete_topic"] == 3
    assert report["setup_s"] > 0 and report["teardown_s"] > 0
    assert report["stray_dropped"] == 0 and report["duplicate_invocations"] == 0
    assert 0 <= report["status_lag_s"] < report["wall_s"]


def test_the_spool_service_refuses_what_sns_would(network: Any) -> None:
    """One topic for eight workers is over a quota of 3 filter policies per topic: the local
    backend fails the run where AWS would (the user forced one topic by a too small quota)."""
    backend = LocalBackend(quotas=Quotas(filter_policies_per_topic=3))

    class OneTopic(QueueChannel):  # a channel that ignores the quota
        @classmethod
        def fit(cls, config: ChannelConfig, workers: int, quotas: Quotas) -> Any:
            return dataclasses.replace(config, topics=1), {}

    async def main() -> None:
        names = RunNames("quota")
        async with backend.session(names) as services:
            with pytest.raises(fsdgraph.errors.TransportError, match="filter_policies_per_topic"):
                await OneTopic.create_resources(services, names, 8, ChannelConfig(topics=1))
            await OneTopic.delete_resources(services, names, 8, ChannelConfig(topics=1))

    asyncio.run(main())


def test_a_run_above_the_account_quota_goes_direct(network: Any) -> None:
    result = run(LocalBackend(quotas=Quotas(filter_policies_per_account=4)), network)
    report = result.report
    assert report["channel_setup"]["mode"] == "direct"
    assert "filter_policies_per_account=4" in report["channel_setup"]["why"]
    assert "publish" not in report["requests"] and report["requests"]["send"] > 0


def test_the_estimate_follows_the_shards() -> None:
    w = sp.random(400, 400, density=0.02, format="csr", dtype=np.float32, random_state=0)
    plan = fsdgraph.compile(fsdgraph.sequential([w] * 2, bias=-0.1), workers=400)
    bill = estimate(plan, channel="queue", batch=10, runtime_s=1.0)
    probes = bill.item("SNS", "publish (readiness probes)").quantity
    assert probes == 2 * 20  # two shards of 200 queues, ten probes per publish
    direct = estimate(plan, channel="queue", batch=10, runtime_s=1.0,
                      quotas=Quotas(filter_policies_per_account=100))
    assert direct.item("SQS", "send (direct)").quantity > 0


# -- readiness and strays --------------------------------------------------------------------------
def test_a_probe_or_a_misaddressed_message_reaching_a_worker_is_dropped_and_counted() -> None:
    config = ChannelConfig(peer_timeout_s=5, poll_wait_s=0.05)
    codec = BlockCodec()
    real = Block.from_matrix(sp.csr_matrix(np.array([[0, 0, 0], [1, 2, 3], [4, 5, 6]],
                                                    np.float32)))

    async def main() -> None:
        names = RunNames("strays")
        async with LocalBackend(warm=False).session(names) as services:
            assert services.messages is not None
            await QueueChannel.create_resources(services, names, 2, config)
            ch0, ch1 = (QueueChannel(WorkerContext(services, names, w, 2, config,
                                                   WorkerMetrics(w), codec)) for w in (0, 1))
            stray = [Entry("probe", {"run": names.run_id, "kind": "probe", "target": "1"}),
                     Entry(TextCodec().encode(codec.encode(real)),
                           {"run": names.run_id, "layer": "0", "src": "0", "target": "0",
                            "index": "0", "count": "1"})]
            assert (await services.messages.send_batch(names.queue(1), stray)).ok
            await ch0.send(0, [(1, real)])
            got = [chunk async for chunk in ch1.receive(0, [0])]
            assert len(got) == 1
            assert got[0][1].block.to_matrix(3).toarray().tolist() == real.to_matrix(
                3).toarray().tolist()
            assert ch1.metrics.current.channel["stray_dropped"] == 2
            assert ch1.metrics.current.messages_received == 1
            left = await services.messages.receive(names.queue(1), max_messages=10, wait_s=0.2)
            assert left == []  # the strays were deleted, not left to come back
            await QueueChannel.delete_resources(services, names, 2, config)

    asyncio.run(main())


# -- duplicated invocations ------------------------------------------------------------------------
class TwiceFunctions(Functions):
    """Delivers every invocation event twice, as Lambda's asynchronous invocation may."""

    def __init__(self, inner: Functions) -> None:
        self.inner = inner

    async def invoke(self, event: Mapping[str, Any]) -> None:
        await self.inner.invoke(event)
        await self.inner.invoke(json.loads(json.dumps(event)))


class TwiceBackend(LocalBackend):
    @asynccontextmanager
    async def session(self, names: RunNames) -> Any:
        async with super().session(names) as services:
            yield dataclasses.replace(services, functions=TwiceFunctions(services.functions))


@pytest.mark.parametrize("channel", ["queue", "object"])
def test_a_duplicated_invocation_is_counted_and_harmless(network: Any, channel: str) -> None:
    # Branching 8: the scheduler invokes all eight workers itself, each twice.
    result = run(TwiceBackend(), network, channel,
                 RunConfig(progress=False, branching=8))
    report = result.report
    assert report["duplicate_invocations"] == 8
    assert report["messages_received"] == report["messages_sent"]
    # The second deliveries are not requests.
    assert report["requests"]["invoke"] == 8 + report["relaunches"] + report["continuations"]


# -- the invocation tree and the control plane's pace ---------------------------------------------
def test_the_invocation_tree_covers_every_worker_once_for_any_branching() -> None:
    for workers, branching in [(1000, 1), (1000, 4), (1000, 1000), (7, 3), (1, 1)]:
        started = list(roots(workers, branching))
        frontier = list(started)
        while frontier:
            kids = [c for w in frontier for c in children(w, workers, branching)]
            started += kids
            frontier = kids
        assert sorted(started) == list(range(workers))
    assert depth(1000, 1) == 1000 and depth(1000, 4) == 5


def test_a_chain_of_workers_runs(network: Any) -> None:
    result = run(LocalBackend(), network, "object", RunConfig(progress=False, branching=1))
    assert result.report["invocation_depth"] == 8


def test_heartbeats_slow_down_and_pollers_add_up_with_the_worker_count() -> None:
    assert [heartbeat_interval(p, 0.5, 120.0) for p in (1, 50, 100, 1000, 10_000)] == [
        0.5, 0.5, 1.0, 10.0, 30.0]  # at most a quarter of the stall timeout
    assert [pollers(p) for p in (1, 100, 101, 1000, 5000)] == [1, 1, 2, 8, 8]
    assert sum(p / heartbeat_interval(p, 0.5, 120.0) for p in [1000]) <= 100
