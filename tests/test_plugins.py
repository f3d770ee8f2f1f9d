"""The plugin surface: registries and their precedence rule, what the scheduler refuses before a
run, the channels' hooks (counters, report details, cost model, prices), the versioned worker
event, the shared retry rule and the control plane's message fitting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends import BACKENDS, backend_names, get_backend
from fsdgraph.backends.inproc import InProcBackend
from fsdgraph.backends.local import LocalBackend
from fsdgraph.channels import CHANNELS, Channel, channel_names, get_channel
from fsdgraph.channels.auto import AutoChannel, object_threshold
from fsdgraph.channels.object import ObjectChannel
from fsdgraph.control import QueueControlPlane, Status
from fsdgraph.cost import Prices, estimate
from fsdgraph.errors import (
    ConfigError,
    MessageTooLarge,
    NotFound,
    ProtocolError,
    RunError,
    TransportError,
)
from fsdgraph.event import EVENT_VERSION, WorkerEvent
from fsdgraph.plugins import Registry
from fsdgraph.resources import RunNames
from fsdgraph.retry import retry
from fsdgraph.scheduler import RunConfig, Scheduler
from fsdgraph.testing.conformance import small_network
from fsdgraph.transport import Limits

# -- registries --------------------------------------------------------------------------------


class LoudObjectChannel(ObjectChannel):
    """A channel plugin: the object channel under another name, with a counter of its own."""

    name = "loud"
    counters: ClassVar[tuple[str, ...]] = ("puts_made",)

    async def _send_chunks(self, chunks: list[Any]) -> None:
        self.metrics.current.channel["puts_made"] += len({(c.layer, c.dst) for c in chunks})
        await super()._send_chunks(chunks)


class NotAChannel:
    pass


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution installed on sys.path whose metadata declares entry points: ``loud`` and
    ``object`` (shadowing the built-in) channels, and ``bogus`` (not a Channel)."""
    dist = tmp_path / "fsdgraph_loud-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fsdgraph-loud\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[fsdgraph.channels]\n"
        f"loud = {__name__}:LoudObjectChannel\n"
        f"object = {__name__}:LoudObjectChannel\n"
        f"bogus = {__name__}:NotAChannel\n"
        f"silent = {__name__}:SilentChannel\n"
        f"broken = {__name__}_does_not_exist:Nothing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path


def test_builtin_plugins_are_found_without_metadata() -> None:
    assert {"local", "inproc", "aws"} <= set(backend_names())
    assert {"queue", "object", "auto"} <= set(channel_names())
    assert get_backend("inproc") is InProcBackend
    assert get_channel("auto") is AutoChannel


def test_a_scheduler_without_a_channel_takes_the_backends_default() -> None:
    assert Scheduler("local").channel.name == "queue"
    assert Scheduler("inproc").channel.name == "object"  # it has no message service
    assert Scheduler("inproc", "auto").channel.name == "auto"  # a named one is kept


def test_an_installed_entry_point_is_found_and_wins_over_a_builtin(installed: Path) -> None:
    assert "loud" in channel_names()
    assert get_channel("loud") is LoudObjectChannel
    assert get_channel("object") is LoudObjectChannel  # the precedence rule: installed first


def test_registry_errors_name_the_plugin(installed: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown channel 'pigeon'; known: .*loud.*queue"):
        get_channel("pigeon")
    with pytest.raises(ConfigError,
                       match="channel 'bogus' does not name a fsdgraph Channel subclass"):
        get_channel("bogus")
    with pytest.raises(ConfigError, match="channel 'broken' cannot be loaded: No module"):
        get_channel("broken")


def test_a_missing_dependency_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry("fsdgraph.nothing", object, {"aws": "fsdgraph_not_here.mod:X"},
                        hints={"aws": "pip install 'fsdgraph[aws]'"})
    with pytest.raises(ConfigError, match=r"cannot be loaded: .*\(pip install 'fsdgraph\[aws\]'\)"):
        registry.load("aws")
    assert BACKENDS.kind == "backend" and CHANNELS.kind == "channel"


def test_a_plugin_channel_runs_and_reports_its_own_counters(installed: Path) -> None:
    graph, inputs, reference = small_network()
    plan = fsdgraph.compile(graph, workers=3, partitioner="contiguous")
    result = Scheduler(InProcBackend(), "loud", RunConfig(progress=False)).run_sync(plan, inputs)
    assert (result.activations != reference).nnz == 0
    report = result.report
    assert report["channel"] == "loud"
    assert report["puts_made"] == len(plan.edges) > 0
    assert sum(layer["puts_made"] for layer in report["per_layer"]) == len(plan.edges)
    assert "channel_details" not in report  # the plugin describes nothing
    with pytest.raises(ConfigError, match="channel 'bogus' does not name"):
        Scheduler(InProcBackend(), "bogus")


# -- what the scheduler refuses, and what the backend decides --------------------------------------


def test_a_channel_needing_messages_is_refused_on_a_backend_without_them() -> None:
    graph, inputs, _ = small_network()
    plan = fsdgraph.compile(graph, workers=2)
    with pytest.raises(ConfigError, match="channel 'queue' needs messages, which backend "
                                          "'inproc' does not provide"):
        Scheduler("inproc", "queue").run_sync(plan, inputs)


def test_an_unbilled_backend_has_no_bill_and_a_billed_one_uses_its_prices() -> None:
    graph, inputs, _ = small_network()
    plan = fsdgraph.compile(graph, workers=2)
    assert Scheduler("inproc", "object").run_sync(plan, inputs).report["bill"] is None
    dear = Prices(s3_get_per_k=4.0)  # GETs 10 000 times the list price
    cheap = Scheduler(LocalBackend(), "object").run_sync(plan, inputs).report["bill"]
    costly = Scheduler(LocalBackend(price_table=dear), "object").run_sync(plan, inputs)
    assert costly.report["bill"]["total"] > 100 * cheap["total"]


def test_the_auto_channel_draws_its_line_from_the_configured_prices() -> None:
    graph, inputs, reference = small_network()
    plan = fsdgraph.compile(graph, workers=2)
    dear_objects = Prices(s3_put_per_k=0.5, s3_get_per_k=0.5)  # 100x and 1250x list
    assert object_threshold(dear_objects) > 50 * object_threshold()
    for prices in (None, dear_objects):
        result = Scheduler(LocalBackend(), "auto", RunConfig(progress=False),
                           prices=prices).run_sync(plan, inputs)
        assert (result.activations != reference).nnz == 0
        details = result.report["channel_details"]
        assert details["object_above_bytes"] == object_threshold(prices)
        assert "break-even of the backend's prices" in details["why"]
    assert AutoChannel.prepare(fsdgraph.ChannelConfig(auto_object_above_bytes=7),
                               dear_objects).auto_object_above_bytes == 7


def test_estimate_prices_any_channel_with_a_cost_model(installed: Path) -> None:
    graph, _, _ = small_network()
    plan = fsdgraph.compile(graph, workers=3)
    by_object = estimate(plan, channel="object", batch=50, runtime_s=1.0)
    by_plugin = estimate(plan, channel="loud", batch=50, runtime_s=1.0)  # inherits the model
    assert by_plugin.total == pytest.approx(by_object.total)
    dear_objects = Prices(s3_put_per_k=0.5, s3_get_per_k=0.5)
    auto = estimate(plan, channel="auto", batch=50, runtime_s=1.0, prices=dear_objects)
    assert f"(above {object_threshold(dear_objects)} bytes)" in " ".join(auto.notes)


class SilentChannel(ObjectChannel):
    """A channel plugin that has no cost model (the default of Channel)."""

    name = "silent"

    @classmethod
    def estimate_exchange(cls, exchange: Any) -> None:
        Channel.estimate_exchange.__func__(cls, exchange)  # type: ignore[attr-defined]


def test_estimate_refuses_a_channel_without_a_cost_model(installed: Path) -> None:
    graph, _, _ = small_network()
    plan = fsdgraph.compile(graph, workers=2)
    with pytest.raises(ConfigError, match="channel 'silent' has no cost model"):
        estimate(plan, channel="silent", batch=10)


# -- the worker event ----------------------------------------------------------------------------


def event() -> WorkerEvent:
    return WorkerEvent(run_id="r1", namespace="ns", worker=0, workers=4, batch=10,
                       channel="queue", backend="local", branching=2)


def test_the_worker_event_round_trips_and_makes_child_events() -> None:
    e = event()
    assert WorkerEvent.from_json(e.to_json()) == e
    assert e.children == [2, 3]  # worker 0 is heap node 1; nodes 3 and 4 are workers 2, 3
    child = e.child(3)
    assert (child.worker, child.children, child.run_id) == (3, [], "r1")
    assert e.names == RunNames("r1", "ns")
    assert e.to_json()["version"] == EVENT_VERSION


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 1}, "worker event version 1 is not supported"),
    ({"worker": "0"}, "worker event: field 'worker' must be int, got str"),
    ({"batch": True}, "worker event: field 'batch' must be int, got bool"),
    ({"branching": [2]}, "worker event: field 'branching' must be int, got list"),
    ({"progress_interval_s": "1"}, "field 'progress_interval_s' must be float, got str"),
    ({"surprise": 1}, r"unknown fields \['surprise'\]"),
    ({"run_id": None}, "worker event: field 'run_id' must be str, got NoneType"),
])
def test_a_malformed_worker_event_is_refused_by_field(change: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        WorkerEvent.from_json({**event().to_json(), **change})
    missing = event().to_json()
    del missing["channel"]
    with pytest.raises(ProtocolError, match="worker event has no field 'channel'"):
        WorkerEvent.from_json(missing)
    with pytest.raises(ProtocolError, match="must be a JSON object, got list"):
        WorkerEvent.from_json([])  # type: ignore[arg-type]


# -- the shared retry rule ------------------------------------------------------------------------


def test_retry_gives_up_at_the_deadline_with_the_last_error() -> None:
    calls = []

    async def throttled() -> None:
        calls.append(1)
        raise TransportError(f"throttled #{len(calls)}", retryable=True)

    with pytest.raises(TransportError, match=r"throttled #\d+") as failed:
        asyncio.run(retry(throttled, deadline_s=0.05, first_delay_s=0.001, max_delay_s=0.002))
    assert len(calls) > 1
    assert failed.value.args[0] == f"throttled #{len(calls)}"


def test_retry_does_not_retry_what_is_not_retryable() -> None:
    calls = []

    async def refused() -> None:
        calls.append(1)
        raise TransportError("access denied")

    with pytest.raises(TransportError, match="access denied"):
        asyncio.run(retry(refused, deadline_s=5.0))
    assert calls == [1]


# -- the queue control plane ---------------------------------------------------------------


def test_a_long_error_status_is_cut_to_fit_one_message(tmp_path: Path) -> None:
    from fsdgraph.backends.local.queues import SpoolMessageService

    limits = Limits(max_message_bytes=1024, max_batch_bytes=1024)

    async def main() -> Status:
        control = QueueControlPlane(SpoolMessageService(tmp_path, limits), RunNames("r"), limits)
        await control.create()
        await control.report(Status("error", 1, 3, "RunError: " + "m" * 500,
                                    "Traceback\n" + "x" * 5000 + "\nthe last line"))
        (got,) = await control.poll(wait_s=1.0)
        return got

    got = asyncio.run(main())
    assert got.details.endswith("the last line") and len(got.details) < 1024
    tiny = Limits(max_message_bytes=100, max_batch_bytes=100)

    async def too_small() -> None:
        control = QueueControlPlane(SpoolMessageService(tmp_path / "t", tiny), RunNames("r"), tiny)
        await control.report(Status("done", 1, 3))

    with pytest.raises(MessageTooLarge, match="a 'done' status does not fit a message of 100"):
        asyncio.run(too_small())


def test_an_unknown_status_kind_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="status kind must be one of progress, done, error"):
        Status("finished", 0, 0)


# -- inproc debugging mode -------------------------------------------------------------------


def test_inproc_debug_mode_chains_the_workers_own_exception() -> None:
    graph, _, _ = small_network()
    plan = fsdgraph.compile(graph, workers=2)
    bad = np.zeros((1, 96), np.float32)
    with pytest.raises(RunError) as plain:
        _ShardlessScheduler(InProcBackend(), "object").run_sync(plan, sp.csr_matrix(bad))
    assert plain.value.__cause__ is None
    with pytest.raises(RunError, match="worker 0 failed") as debug:
        _ShardlessScheduler(InProcBackend(debug=True), "object").run_sync(plan,
                                                                         sp.csr_matrix(bad))
    assert isinstance(debug.value.__cause__, NotFound)
    assert "plan/0" in str(debug.value.__cause__)


class _ShardlessScheduler(Scheduler):
    """Stages no plan shard for worker 0: it fails on its first GET."""

    async def _stage(self, services: Any, names: RunNames, plan: Any, y0: Any) -> None:
        await super()._stage(services, names, plan, y0)
        await services.objects.delete_prefix(names.shard_key(0))



# -- backend descriptions ------------------------------------------------------------------------


def test_a_malformed_backend_description_is_refused_by_field() -> None:
    from fsdgraph.backends.aws import AwsBackend

    async def attach(cls: Any, description: dict[str, Any]) -> None:
        async with cls.attach(description, RunNames("r")):
            pass

    with pytest.raises(ProtocolError,
                       match="local backend description: field 'root' must be str, got int"):
        asyncio.run(attach(LocalBackend, {"root": 1, "limits": {}}))
    with pytest.raises(ProtocolError, match="local backend description has no field 'limits'"):
        asyncio.run(attach(LocalBackend, {"root": "/tmp/x"}))
    with pytest.raises(ProtocolError, match=r"aws backend description has unknown fields \['x'\]"):
        asyncio.run(attach(AwsBackend, {"x": 1}))
