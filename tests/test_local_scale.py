"""The local backend at scale: hundreds of workers as tasks of a few host processes.

A run of more workers than ``max_processes`` runs them in ``pool_processes`` host processes
(``fsdgraph.backends.local.hosts``). These tests run such runs end to end and check what a
process per worker would guarantee: the same output as the serial reference, a killed worker
that vanishes alone, no process or directory left behind, hosts that leave with their run or
their launcher; then the launcher under many concurrent invocations, where workers run
(recorded in the session's description) and the SNS quotas the spool message service enforces.

Nothing here waits for a fixed time: conditions are waited for (with a generous safety net), and
what a session saw is recorded by the session itself, just before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backend import Services
from fsdgraph.backends.local import LocalBackend, LocalDescription
from fsdgraph.backends.local.functions import ProcessFunctions
from fsdgraph.backends.local.hosts import auto_max_processes, auto_pool_processes
from fsdgraph.backends.local.queues import SpoolMessageService
from fsdgraph.errors import ConfigError, FsdError, RunTimeout, TransportError
from fsdgraph.quotas import Quotas
from fsdgraph.resources import RunNames
from fsdgraph.sources.graphchallenge import graphchallenge_bias
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet
from fsdgraph.testing.waiting import wait_until
from fsdgraph.transport import Limits

#: Workers of the large run: more than any automatic ``max_processes`` of a small machine.
MANY = 320

#: The graph, the images and the serial reference's activations.
Network = tuple[fsdgraph.Graph, sp.csr_matrix, sp.csr_matrix]


@pytest.fixture(scope="module")
def network() -> Network:
    """A generated 1024-neuron RadiX-Net of four layers on 64 generated images."""
    graph = fsdgraph.sequential(radixnet(1024, 4, seed=3), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    images = synthetic_images(1024, 64, seed=4)
    return graph, images, fsdgraph.reference_inference(images, graph.layers())


@dataclass
class RunRecord:
    """What one session of a :class:`RecordingBackend` saw."""

    run_dir: Path
    description: dict[str, Any]
    quotas: Quotas
    #: ``pids/`` as the session ends (before it stops anything): name (``3``, ``host-0``; the
    #: file's ``.<pid>`` left out) -> pid.
    pids_at_end: dict[str, int] = field(default_factory=dict)
    #: Which of those processes were alive then.
    alive_at_end: dict[str, bool] = field(default_factory=dict)
    #: ``logs/`` as the session ends: file name -> text.
    logs: dict[str, str] = field(default_factory=dict)
    started: threading.Event = field(default_factory=threading.Event)


@dataclass
class RecordingBackend(LocalBackend):
    """A LocalBackend whose sessions record what they saw (see :class:`RunRecord`)."""

    runs: list[RunRecord] = field(default_factory=list)

    @asynccontextmanager
    async def session(self, names: RunNames) -> AsyncIterator[Services]:
        async with super().session(names) as services:
            record = RunRecord(Path(services.description["root"]), dict(services.description),
                               services.quotas)
            self.runs.append(record)
            record.started.set()
            try:
                yield services
            finally:
                for f in (record.run_dir / "pids").iterdir():
                    # A process that exits removes its record: listed, then gone.
                    with contextlib.suppress(FileNotFoundError):
                        record.pids_at_end[f.name.rsplit(".", 1)[0]] = int(f.read_text())
                record.alive_at_end = {name: alive(pid)
                                       for name, pid in record.pids_at_end.items()}
                record.logs = {f.name: f.read_text(errors="replace")
                               for f in (record.run_dir / "logs").iterdir()}


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def hosts_of(record: RunRecord) -> dict[str, int]:
    """The host processes recorded in the run's ``pids/`` now: name -> pid."""
    found = {}
    for f in (record.run_dir / "pids").glob("host-*"):
        with contextlib.suppress(OSError, ValueError):  # being written
            found[f.name.rsplit(".", 1)[0]] = int(f.read_text())
    return found


@pytest.fixture
def pooled() -> Iterator[RecordingBackend]:
    """Two host processes from the second worker on: small runs exercise the pool too."""
    backend = RecordingBackend(max_processes=1, pool_processes=2)
    yield backend
    backend.close()


# -- a large run --------------------------------------------------------------------------------
def test_hundreds_of_workers_in_a_pool_equal_the_serial_reference(network: Network) -> None:
    """320 workers with the automatic placement: tasks of the run's host processes (nothing
    else recorded a pid), the serial reference's output bit for bit, and nothing left behind:
    the run directory is gone and so is every process the run started; the launcher stays."""
    graph, images, reference = network
    backend = RecordingBackend()
    try:
        plan = fsdgraph.compile(graph, workers=MANY, partitioner="contiguous")
        result = fsdgraph.Scheduler(backend, "queue", fsdgraph.RunConfig(progress=False)) \
            .run_sync(plan, images)
        assert np.array_equal(result.categories, fsdgraph.categories(reference))
        assert (result.activations != reference).nnz == 0
        assert 0 < len(result.categories) < images.shape[0]
        assert result.report["workers"] == MANY

        (record,) = backend.runs
        description = LocalDescription(**record.description)
        assert description.max_processes < MANY
        hosts = description.hosts(MANY)
        assert hosts == min(auto_pool_processes(), MANY) > 0
        assert sorted(record.pids_at_end) == [f"host-{h}" for h in range(hosts)]
        assert all(record.alive_at_end.values())  # hosts live as long as their run
        assert f"host 0 of run {record.run_dir.name}" in record.logs["host-0.log"]

        assert not record.run_dir.exists()
        pids = record.pids_at_end.values()
        wait_until(lambda: not any(alive(pid) for pid in pids), "the hosts to be gone")
        assert backend._pool is not None and backend._pool.alive
    finally:
        backend.close()
    assert backend._pool is None


# -- a killed worker in a pool ------------------------------------------------------------------
def test_a_killed_worker_in_a_pool_vanishes_alone(pooled: RecordingBackend,
                                                  network: Network) -> None:
    """Worker 5 is killed as it starts layer 1. It shares host 1 with workers 1, 3 and 7: those
    keep reporting (the stall watch names worker 5, the lowest silent worker, not worker 1), the
    host is alive until the session ends, and worker 5 left no error behind."""
    graph, images, _ = network
    pooled.kill = (5, 1)
    config = fsdgraph.RunConfig(progress=False, stall_timeout_s=5.0, progress_interval_s=0.2,
                                relaunches=0,
                                channel=fsdgraph.ChannelConfig(peer_timeout_s=120.0))
    plan = fsdgraph.compile(graph, workers=8, partitioner="contiguous")
    with pytest.raises(RunTimeout) as caught:
        fsdgraph.Scheduler(pooled, "queue", config).run_sync(plan, images)
    message = str(caught.value)
    assert re.match(r"worker 5 stopped reporting \(last heard at layer \d of 4\)", message), \
        message
    assert caught.value.worker == 5

    (record,) = pooled.runs
    assert LocalDescription(**record.description).hosts(8) == 2
    assert record.alive_at_end == {"host-0": True, "host-1": True}
    assert "Traceback" not in record.logs.get("worker-5.log", "")
    assert not record.run_dir.exists()
    pids = record.pids_at_end.values()
    wait_until(lambda: not any(alive(pid) for pid in pids), "the hosts to be gone")


def test_a_killed_worker_process_still_dies_by_sigkill(network: Network) -> None:
    """With a process per worker, the kill is a SIGKILL of the worker's own process."""
    graph, images, _ = network
    backend = RecordingBackend(kill=(2, 1), max_processes=8)
    config = fsdgraph.RunConfig(progress=False, stall_timeout_s=5.0, progress_interval_s=0.2,
                                relaunches=0,
                                channel=fsdgraph.ChannelConfig(peer_timeout_s=120.0))
    try:
        with pytest.raises(RunTimeout, match=r"^worker 2 stopped reporting"):
            fsdgraph.Scheduler(backend, "queue", config).run_sync(
                fsdgraph.compile(graph, workers=4, partitioner="contiguous"), images)
    finally:
        backend.close()
    (record,) = backend.runs
    assert LocalDescription(**record.description).hosts(4) == 0
    assert record.alive_at_end["2"] is False  # its pid file outlived it: nothing ran its end
    assert {name for name in record.pids_at_end if name.startswith("host")} == set()


def test_a_hosted_worker_writes_its_traceback_to_its_own_log(pooled: RecordingBackend) -> None:
    """A worker that fails before it can report (an event of another version) leaves its
    traceback in ``logs/worker-<w>.log``; the host's own line is in ``logs/host-<h>.log``."""
    async def main() -> None:
        async with pooled.session(RunNames("logs")) as services:
            record = pooled.runs[0]
            event = {"worker": 3, "workers": 8, "backend_config": services.description,
                     "version": 999}
            await services.functions.invoke(event)
            log = record.run_dir / "logs" / "worker-3.log"
            await asyncio.to_thread(
                wait_until, lambda: "ProtocolError" in (log.read_text() if log.exists() else ""),
                "the traceback in worker 3's log")

    asyncio.run(main())
    (record,) = pooled.runs
    assert "Traceback" in record.logs["worker-3.log"]
    assert "worker event version 999 is not supported" in record.logs["worker-3.log"]
    assert record.logs["host-1.log"].startswith(f"host 1 of run {record.run_dir.name}")
    assert "host-0.log" not in record.logs  # worker 3 of 8 goes to host 3 % 2


# -- hosts leave by themselves -------------------------------------------------------------------
@pytest.mark.parametrize("ending", ["launcher stops", "run is closed"])
def test_hosts_leave_with_their_launcher_or_their_run(network: Network, ending: str) -> None:
    """Mid-run (held open by a killed worker), the launcher is stopped, or the run is marked
    closed as the session marks it when it ends: the hosts exit by themselves, before the
    session ends and stops what is left."""
    graph, images, _ = network
    backend = RecordingBackend(max_processes=1, pool_processes=2, kill=(5, 1))
    config = fsdgraph.RunConfig(progress=False, stall_timeout_s=5.0, progress_interval_s=0.2,
                                relaunches=0,
                                channel=fsdgraph.ChannelConfig(peer_timeout_s=120.0))
    seen: dict[str, int] = {}

    def end_it() -> None:
        wait_until(lambda: bool(backend.runs), "the session to start")
        record = backend.runs[0]
        # Every worker claims its identity once invoked: with all eight claimed, every
        # invocation of the run is done, so none is refused below and fails the run early.
        claims = record.run_dir / "objects" / "runs"
        wait_until(lambda: len(list(claims.glob("*/claim/*/*"))) == 8, "all workers to start")
        seen.update(hosts_of(record))
        if ending == "launcher stops":
            backend.close()
        else:
            (record.run_dir / "closed").touch()

    helper = threading.Thread(target=end_it)
    helper.start()
    try:
        with pytest.raises(FsdError):
            fsdgraph.Scheduler(backend, "queue", config).run_sync(
                fsdgraph.compile(graph, workers=8, partitioner="contiguous"), images)
    finally:
        helper.join()
        backend.close()
    (record,) = backend.runs
    assert set(seen) == {"host-0", "host-1"}
    assert record.alive_at_end == {"host-0": False, "host-1": False}
    assert not any(alive(pid) for pid in seen.values())
    assert not record.run_dir.exists()


def test_a_launcher_whose_owner_is_gone_leaves_with_its_directory() -> None:
    """A process that started a launcher dies without closing it (SIGKILL): the launcher exits
    by itself and removes its directory, as its hosts then do on their side."""
    owner = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import os, signal, time
            from fsdgraph.backends.local.functions import WarmPool
            pool = WarmPool()
            while not os.path.exists(pool.socket):  # started: it knows its owner
                time.sleep(0.01)
            print(pool.process.pid, pool.directory, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            """)], capture_output=True, text=True, check=False)
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    pid, directory = owner.stdout.split()
    wait_until(lambda: not alive(int(pid)), "the launcher to exit")
    wait_until(lambda: not Path(directory).exists(), "the launcher's directory to go")


def test_a_worker_cannot_attach_to_a_run_that_is_over() -> None:
    """A straggler (say, the second copy of a duplicated invocation, slow to start) that
    attaches after its session ended is refused, and does not create the run directory again."""
    async def main() -> None:
        names = RunNames("over")
        async with LocalBackend(warm=False).session(names) as services:
            description = services.description
        with pytest.raises(TransportError, match="is gone or closed: the run is over"):
            async with LocalBackend.attach(description, names):
                pass
        assert not Path(description["root"]).exists()

    asyncio.run(main())


# -- the launcher under load ---------------------------------------------------------------------
def test_the_launcher_answers_every_one_of_many_concurrent_invocations(
        pooled: RecordingBackend, tmp_path: Path) -> None:
    """Two thousand clients at once, far more than a default listen backlog (128) holds: each
    gets the launcher's own answer (here: its run is over), none a refused connection."""
    pooled.prewarm()
    assert pooled._pool is not None
    over = tmp_path / "a-run-that-is-over"  # no pids/: the launcher starts nothing for it
    event = {"worker": 0, "workers": 2,
             "backend_config": {"root": str(over), "max_processes": 1, "pool_processes": 1}}
    functions = ProcessFunctions(launcher=pooled._pool.socket)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(functions.invoke(event) for _ in range(2000)),
                                    return_exceptions=True)

    outcomes = asyncio.run(main())
    messages = {str(o) for o in outcomes}
    assert messages == {"local launcher rejected the invocation: run a-run-that-is-over is over"}
    assert all(isinstance(o, TransportError) for o in outcomes)
    assert not over.exists()


# -- where workers run -----------------------------------------------------------------------------
def test_the_placement_is_in_the_description() -> None:
    """Automatic numbers, or the options, resolved once per session and recorded, so that the
    launcher and every worker place a run of P workers the same way."""
    async def description(backend: LocalBackend) -> LocalDescription:
        async with backend.session(RunNames("placement")) as services:
            return LocalDescription(**services.description)

    auto = LocalBackend(warm=False)
    found = asyncio.run(description(auto))
    assert found.max_processes == 2**62  # cold workers are always processes of their own
    warm = LocalBackend()
    try:
        found = asyncio.run(description(warm))
    finally:
        warm.close()
    assert (found.max_processes, found.pool_processes) == (auto_max_processes(),
                                                           auto_pool_processes())
    assert found.hosts(found.max_processes) == 0
    assert found.hosts(found.max_processes + 1) == auto_pool_processes()

    chosen = LocalBackend(max_processes=5, pool_processes=3)
    try:
        found = asyncio.run(description(chosen))
    finally:
        chosen.close()
    assert (found.max_processes, found.pool_processes) == (5, 3)
    assert [found.hosts(p) for p in (1, 5, 6, 1000)] == [0, 0, 3, 3]


def test_placement_options_are_checked_and_configurable(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ConfigError, match="max_processes must be a positive integer"):
            LocalBackend(max_processes=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pool_processes needs the warm launcher"):
        LocalBackend(warm=False, pool_processes=2)

    config = tmp_path / "config.toml"
    config.write_text("[local]\nmax_processes = 12\n\n[quotas]\nfilter_policies_per_topic = 7\n")
    monkeypatch.setenv("FSDGRAPH_LOCAL_POOL_PROCESSES", "3")
    backend = LocalBackend.configure(config)
    assert (backend.max_processes, backend.pool_processes) == (12, 3)
    assert backend.quotas.filter_policies_per_topic == 7
    monkeypatch.setenv("FSDGRAPH_LOCAL_POOL_PROCESSES", "0")
    with pytest.raises(ConfigError, match="FSDGRAPH_LOCAL_POOL_PROCESSES"):
        LocalBackend.configure(config)


def test_quotas_reach_the_services_and_the_workers() -> None:
    """AWS's quotas by default, or the backend's: in ``Services.quotas`` and, through the
    description, in what a worker attaches to."""
    async def quotas(backend: LocalBackend) -> tuple[Quotas, Quotas]:
        names = RunNames("quotas")
        async with backend.session(names) as services, \
                LocalBackend.attach(services.description, names) as attached:
            assert isinstance(attached.messages, SpoolMessageService)
            assert attached.messages.quotas == attached.quotas
            return services.quotas, attached.quotas

    assert asyncio.run(quotas(LocalBackend(warm=False))) == (Quotas(), Quotas())
    tight = Quotas(lambda_concurrency=3, filter_policies_per_topic=2)
    assert asyncio.run(quotas(LocalBackend(warm=False, quotas=tight))) == (tight, tight)


# -- SNS quotas in the spool message service --------------------------------------------------
def test_filter_policies_beyond_the_quotas_are_refused(tmp_path: Path) -> None:
    """As SNS refuses them (FilterPolicyLimitExceeded), naming the quota; re-subscribing or an
    empty policy adds none; another instance on the same root counts the same policies; a
    deleted topic's policies stop counting."""
    quotas = Quotas(filter_policies_per_topic=3, filter_policies_per_account=5)

    async def body() -> None:
        svc = SpoolMessageService(tmp_path, Limits(), quotas=quotas)
        queues = [await svc.create_queue(f"q{i}", visibility_timeout_s=30,
                                         max_message_bytes=1024) for i in range(8)]
        a, b = await svc.create_topic("a"), await svc.create_topic("b")
        for i in range(3):
            await svc.subscribe(a, queues[i], filter_policy={"target": [str(i)]})
        await svc.subscribe(a, queues[0], filter_policy={"target": ["again"]})
        await svc.subscribe(a, queues[3], filter_policy={})
        with pytest.raises(TransportError) as caught:
            await svc.subscribe(a, queues[4], filter_policy={"target": ["4"]})
        assert not caught.value.retryable
        assert str(caught.value).startswith("FilterPolicyLimitExceeded: ")
        assert "4 filter policies on the topic" in str(caught.value)
        assert "over the quota filter_policies_per_topic of 3" in str(caught.value)

        other = SpoolMessageService(tmp_path, Limits(), quotas=quotas)
        for i in (4, 5):
            await other.subscribe(b, queues[i], filter_policy={"target": [str(i)]})
        with pytest.raises(TransportError,
                           match=r"6 filter policies in the account, over the quota "
                                 r"filter_policies_per_account of 5"):
            await svc.subscribe(b, queues[6], filter_policy={"target": ["6"]})

        await svc.delete_topic(a)
        await other.subscribe(b, queues[6], filter_policy={"target": ["6"]})
        svc.close()
        other.close()

    asyncio.run(body())


def test_topics_beyond_the_quota_are_refused(tmp_path: Path) -> None:
    async def body() -> None:
        svc = SpoolMessageService(tmp_path, Limits(), quotas=Quotas(topics_per_account=2))
        await svc.create_topic("one")
        await svc.create_topic("two")
        assert await svc.create_topic("two") == "two"  # it exists: nothing new
        with pytest.raises(TransportError, match=r"^TopicLimitExceeded: .*over the quota "
                                                 r"topics_per_account of 2"):
            await svc.create_topic("three")
        await svc.delete_topic("one")
        await svc.create_topic("three")
        svc.close()

    asyncio.run(body())


def test_without_quotas_nothing_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        svc = SpoolMessageService(tmp_path, Limits())
        queue = await svc.create_queue("q", visibility_timeout_s=30, max_message_bytes=1024)
        for t in range(5):
            topic = await svc.create_topic(f"t{t}")
            await svc.subscribe(topic, queue, filter_policy={"target": ["1"]})
        assert os.path.isfile(tmp_path / "topics" / "t4" / "subscriptions.json")
        svc.close()

    asyncio.run(body())
