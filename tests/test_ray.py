"""The Ray backend and its ``ray`` channel (fsdgraph.backends.ray), on a small local Ray instance.

One instance serves the module (2 CPUs, no dashboard, its files in a temporary folder); the
command-line runs join it through ``FSDGRAPH_RAY_ADDRESS``. The fixture's teardown checks that
shutting it down leaves no Ray process behind, and one test lets the command line start and stop
an instance of its own and checks the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import ray

import fsdgraph
from fsdgraph.backends.ray import NAMESPACE, RayBackend
from fsdgraph.errors import ConfigError
from fsdgraph.scheduler import RunConfig, Scheduler
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet
from fsdgraph.testing.conformance import BackendSuite, ChannelExchangeSuite, ControlPlaneSuite

CHANNELS = ("object", "ray")
#: How long Ray may take to stop its processes after a shutdown (a bound, not a measurement).
STOP_S = 60.0


def ray_processes(marker: str, *, children: bool = False) -> list[str]:
    """Processes whose command line mentions ``marker`` (a Ray temporary folder) and, with
    ``children``, Ray processes below this one (Ray's workers rename themselves ``ray::...``)."""
    table = subprocess.run(["ps", "-eww", "-o", "pid=,ppid=,args="], capture_output=True,
                           text=True, check=True).stdout
    rows = [line.split(None, 2) for line in table.splitlines() if len(line.split(None, 2)) == 3]
    mine, found = {os.getpid()}, True
    while found:  # this process's descendants
        found = False
        for pid, ppid, _ in rows:
            if int(ppid) in mine and int(pid) not in mine:
                mine.add(int(pid))
                found = True
    mine.discard(os.getpid())
    return [f"{pid} {args[:160]}" for pid, _, args in rows if int(pid) != os.getpid() and (
        marker in args or (children and int(pid) in mine and _is_ray(args)))]


def _is_ray(args: str) -> bool:
    """A Ray worker (``ray::IDLE``...) or a program of the ray package (raylet, gcs_server...)."""
    return args.startswith("ray::") or f"{os.sep}ray{os.sep}" in args


def wait_gone(marker: str, *, children: bool = False) -> list[str]:
    """The processes of :func:`ray_processes` still there after up to :data:`STOP_S`."""
    deadline = time.monotonic() + STOP_S
    while (left := ray_processes(marker, children=children)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def clean_environ(**extra: str) -> dict[str, str]:
    """The environment without Ray or fsdgraph settings of the user's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "FSDGRAPH_RAY_", "FSDGRAPH_CONFIG_FILE"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance for the module; its GCS address."""
    assert not ray.is_initialized(), "Ray was left running by an earlier test"
    temp = tempfile.mkdtemp(prefix="fsdray")  # short: Ray's socket paths must stay < 108 bytes
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp,
                 log_to_driver=False)
        yield str(ray.get_runtime_context().gcs_address)
        ray.shutdown()
        assert not ray.is_initialized()
        left = wait_gone(temp, children=True)
        assert not left, f"Ray processes left after shutdown: {left}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def fsdgraph_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fsdgraph.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600, check=False)


def run_actors() -> list[str]:
    """Named actors of fsdgraph runs still alive."""
    actors = cast("list[dict[str, str]]", ray.util.list_named_actors(all_namespaces=True))
    return [a["name"] for a in actors if a["namespace"] == NAMESPACE]


# -- whole runs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", [None, *CHANNELS])
def test_cli_run_reproduces_the_serial_reference(cluster: str, channel: str | None) -> None:
    """Without ``--channel`` the run takes the backend's own, the ``ray`` channel."""
    chosen = ["--channel", channel] if channel else []
    done = fsdgraph_cli("graphchallenge", "--synthetic", "--backend", "ray", "--layers", "12",
                        "--images", "200", "--workers", "4", *chosen,
                        "--no-progress", env=clean_environ(FSDGRAPH_RAY_ADDRESS=cluster))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout
    assert f"ray backend, {channel or 'ray'} channel" in done.stdout


@pytest.mark.parametrize("channel", CHANNELS)
def test_api_run_equals_the_reference_bit_for_bit(cluster: str, channel: str) -> None:
    graph = fsdgraph.sequential(radixnet(1024, 12), bias=-0.3, cap=32, bias_on_nonzero=True)
    inputs = synthetic_images(1024, 200)
    reference = fsdgraph.reference_inference(inputs, graph.layers())
    plan = fsdgraph.compile(graph, workers=4)
    with Scheduler("ray", channel, RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, inputs)
    assert (result.activations != reference).nnz == 0
    assert result.report["backend"] == "ray" and result.report["channel"] == channel
    assert result.report["bill"] is None
    assert result.report["messages_received"] == result.report["messages_sent"] > 0
    assert ray.is_initialized()  # the module's connection: not the backend's to close


def test_a_run_leaves_no_actors(cluster: str) -> None:
    graph = fsdgraph.sequential(radixnet(1024, 3), bias=-0.3, cap=32, bias_on_nonzero=True)
    backend = RayBackend(mailbox_actors=2)
    Scheduler(backend, "ray", RunConfig(progress=False)).run_sync(
        fsdgraph.compile(graph, workers=3), synthetic_images(1024, 20))
    deadline = time.monotonic() + STOP_S
    while run_actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_actors() == []


@pytest.mark.parametrize("channel", ["queue", "auto"])
def test_channels_needing_a_message_service_are_refused(cluster: str, channel: str) -> None:
    graph = fsdgraph.sequential(radixnet(1024, 2), bias=-0.3, cap=32, bias_on_nonzero=True)
    with pytest.raises(ConfigError, match=rf"channel '{channel}' needs messages, which backend "
                                          r"'ray' does not provide"):
        Scheduler(RayBackend(), channel, RunConfig(progress=False)).run_sync(
            fsdgraph.compile(graph, workers=2), synthetic_images(1024, 4))


def test_the_ray_channel_needs_the_ray_backend() -> None:
    graph = fsdgraph.sequential(radixnet(1024, 2), bias=-0.3, cap=32, bias_on_nonzero=True)
    with pytest.raises(ConfigError, match=r"channel 'ray' needs ray, which backend 'inproc'"):
        Scheduler("inproc", "ray", RunConfig(progress=False)).run_sync(
            fsdgraph.compile(graph, workers=2), synthetic_images(1024, 4))


def test_a_backend_that_starts_ray_stops_it(tmp_path: Path) -> None:
    """Without an address the command line starts a local instance (CPUs from the config file)
    and stops it when it is done: none of its processes is left."""
    root = Path(tempfile.mkdtemp(prefix="fsdray"))  # Ray's folder is $RAY_TMPDIR/ray
    config = tmp_path / "config.toml"
    config.write_text("[ray]\nnum_cpus = 1\n")
    try:
        done = fsdgraph_cli("graphchallenge", "--synthetic", "--backend", "ray", "--layers", "3",
                            "--images", "20", "--workers", "2", "--channel", "ray",
                            "--no-progress", "--config", str(config),
                            env=clean_environ(RAY_TMPDIR=str(root)))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PASSED" in done.stdout
        assert (root / "ray").is_dir()  # it did start an instance of its own
        assert wait_gone(str(root)) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- configuration -------------------------------------------------------------------------------
@pytest.fixture
def no_ray_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``FSDGRAPH_RAY_*`` variable of the user's."""
    for var in [v for v in os.environ if v.startswith("FSDGRAPH_RAY_")]:
        monkeypatch.delenv(var)
    return monkeypatch


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "ray://head.example:10001"])
def test_addresses_from_the_config_file(tmp_path: Path, no_ray_env: pytest.MonkeyPatch,
                                        address: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[ray]\naddress = "{address}"\nmailbox_actors = 4\n')
    backend = RayBackend.configure(config)
    assert (backend.address, backend.mailbox_actors, backend.num_cpus) == (address, 4, None)


def test_the_environment_overrides_the_file(tmp_path: Path,
                                            no_ray_env: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[ray]\naddress = "auto"\n')
    no_ray_env.setenv("FSDGRAPH_RAY_ADDRESS", "127.0.0.1:6379")
    no_ray_env.setenv("FSDGRAPH_RAY_NUM_CPUS", "3")
    backend = RayBackend.configure(config)
    assert (backend.address, backend.num_cpus) == ("127.0.0.1:6379", 3)


@pytest.mark.parametrize(("table", "match"), [
    ('address = "somewhere"', r"config.toml \[ray\]: address must be 'auto'"),
    ('address = "http://head:8265"', r"config.toml \[ray\]: address must be"),
    ("address = 6379", r"config.toml \[ray\]: address must be str"),
    ('num_cpus = "many"', r"config.toml \[ray\]: num_cpus must be int, got 'many'"),
    ("num_cpus = 0", r"config.toml \[ray\]: num_cpus must be >= 1, got 0"),
    ("mailbox_actors = -1", r"config.toml \[ray\]: mailbox_actors must be >= 1"),
    ('region = "eu"', r"config.toml: unknown setting ray.region; known: address, "),
])
def test_bad_config_values_name_the_file_and_field(
        tmp_path: Path, no_ray_env: pytest.MonkeyPatch, table: str, match: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[ray]\n{table}\n")
    with pytest.raises(ConfigError, match=match):
        RayBackend.configure(config)


@pytest.mark.parametrize(("var", "value", "match"), [
    ("FSDGRAPH_RAY_ADDRESS", "nowhere", r"environment variable FSDGRAPH_RAY_ADDRESS: address"),
    ("FSDGRAPH_RAY_NUM_CPUS", "two", r"environment variable FSDGRAPH_RAY_NUM_CPUS: num_cpus"),
    ("FSDGRAPH_RAY_MAILBOX_ACTORS", "0",
     r"environment variable FSDGRAPH_RAY_MAILBOX_ACTORS: mailbox_actors must be >= 1"),
])
def test_bad_environment_values_name_the_variable_and_field(
        tmp_path: Path, no_ray_env: pytest.MonkeyPatch, var: str, value: str,
        match: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    no_ray_env.setenv(var, value)
    with pytest.raises(ConfigError, match=match):
        RayBackend.configure(config)


def test_bad_values_in_python_name_the_field() -> None:
    with pytest.raises(ConfigError, match="RayBackend: address must be"):
        RayBackend(address="localhost")
    with pytest.raises(ConfigError, match="RayBackend: mailbox_actors must be >= 1, got 0"):
        RayBackend(mailbox_actors=0)


def test_chunks_large_and_small_take_their_own_way_and_arrive_whole(cluster: str) -> None:
    """A payload above INLINE_BYTES goes through the object store, a small one inside its
    descriptor; both arrive whole, once."""
    import asyncio

    import numpy as np
    import scipy.sparse as sp

    from fsdgraph.backends.ray.channel import INLINE_BYTES, RayChannel
    from fsdgraph.kernels import Block
    from fsdgraph.testing.conformance import open_channels, receive_all

    rng = np.random.default_rng(0)
    big = Block.from_matrix(sp.csr_matrix(rng.integers(1, 9, size=(16, 4096)).astype(np.float32)))
    small = Block.from_matrix(sp.csr_matrix(np.ones((16, 2), np.float32)))

    async def main() -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], int]:
        async with open_channels(RayBackend(), RayChannel, 3) as chans:
            await chans[0].send(0, [(1, big), (2, small)])
            sent = chans[0].metrics.current.bytes_sent
            got1, got2 = await asyncio.gather(receive_all(chans[1], 0, [0]),
                                              receive_all(chans[2], 0, [0]))
            return got1, got2, sent

    got1, got2, sent = asyncio.run(main())
    assert sent > INLINE_BYTES  # the big block's chunk did not fit a descriptor
    np.testing.assert_array_equal(got1[0], big.to_matrix(16).toarray())
    np.testing.assert_array_equal(got2[0], small.to_matrix(16).toarray())


# -- the conformance kit -------------------------------------------------------------------------
class TestRayConformance(BackendSuite, ControlPlaneSuite, ChannelExchangeSuite):
    """fsdgraph.testing.conformance against the Ray backend, on the module's instance."""

    channels = CHANNELS
    refused_channels = ("queue", "auto")

    @pytest.fixture
    def backend(self, cluster: str) -> RayBackend:
        return RayBackend()
