"""Relaunch and continuation: a worker that dies is relaunched from its last checkpoint and the
run returns the exact result; a worker near its function's time limit checkpoints and continues
in a new invocation, so a run outlasts any one function. On the embedded default (the local AWS
servers: tests/test_aws_relaunch.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends.local import LocalBackend
from fsdgraph.channels import Inbox
from fsdgraph.checkpoints import checkpoint_every
from fsdgraph.config import load_settings
from fsdgraph.errors import ConfigError
from fsdgraph.integrity import checksum
from fsdgraph.sources.graphchallenge import graphchallenge_bias
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet

LAYERS = 24
Network = tuple[fsdgraph.Graph, sp.csr_matrix, sp.csr_matrix]


@pytest.fixture(scope="module")
def network() -> Network:
    graph = fsdgraph.sequential(radixnet(1024, LAYERS, seed=5), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    images = synthetic_images(1024, 200, seed=6)
    return graph, images, fsdgraph.reference_inference(images, graph.layers())


def exact(result: fsdgraph.Result, reference: sp.csr_matrix) -> None:
    assert np.array_equal(result.activations.toarray(), reference.toarray())
    assert np.array_equal(result.categories, fsdgraph.categories(reference))


def config(**fields: object) -> fsdgraph.RunConfig:
    """Short deadlines, so a lost worker is found (and its held messages come back) quickly; a
    generous peer timeout, so peers wait for the relaunch."""
    settings: dict[str, object] = {
        "progress": False, "progress_interval_s": 0.2, "relaunch_after_s": 1.0,
        "stall_timeout_s": 60,
        "channel": fsdgraph.ChannelConfig(peer_timeout_s=60, visibility_timeout_s=2,
                                          poll_wait_s=0.2)}
    return fsdgraph.RunConfig(**{**settings, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("channel", ["queue", "object", "auto"])
@pytest.mark.parametrize(("kill", "every"), [((2, 9), 4), ((0, 3), 1), ((3, 17), None)],
                         ids=["every-4", "every-layer", "auto-interval"])
def test_a_killed_worker_is_relaunched_and_the_result_is_exact(
        network: Network, channel: str, kill: tuple[int, int], every: int | None) -> None:
    graph, images, reference = network
    backend = LocalBackend(kill=kill)
    try:
        result = fsdgraph.Scheduler(backend, channel, config(checkpoint_every=every)).run_sync(
            fsdgraph.compile(graph, 4, "contiguous"), images)
    finally:
        backend.close()
    exact(result, reference)
    report = result.report
    assert report["relaunches"] == 1
    assert report["continuations"] == 0
    expected = every if every is not None else checkpoint_every(
        LAYERS, layer_s=fsdgraph.channels.get_channel(channel).estimate_layer_s,
        hold_limit_s=1.0)
    # Every worker checkpoints every ``expected`` layers but the last; the relaunched one
    # reports only what its own attempt did.
    assert report["checkpoints"] >= 3 * ((LAYERS - 1) // expected)


def test_a_worker_killed_before_any_checkpoint_restarts_from_its_input(
        network: Network) -> None:
    graph, images, reference = network
    backend = LocalBackend(kill=(1, 2))
    try:
        result = fsdgraph.Scheduler(backend, "queue", config(checkpoint_every=10)).run_sync(
            fsdgraph.compile(graph, 3), images)
    finally:
        backend.close()
    exact(result, reference)
    assert result.report["relaunches"] == 1


def test_messages_held_past_half_the_visibility_timeout_bring_a_checkpoint_forward(
        network: Network) -> None:
    """Layers slower than planned: with an interval past the last layer, workers still
    checkpoint (and delete what they hold) once held messages near the visibility timeout, here
    10 ms, which a 24-layer exchange outlasts, instead of holding everything to the end."""
    graph, images, reference = network
    channel = fsdgraph.ChannelConfig(peer_timeout_s=60, visibility_timeout_s=0.01,
                                     poll_wait_s=0.2)
    backend = LocalBackend()
    try:
        result = fsdgraph.Scheduler(backend, "queue", config(
            checkpoint_every=1000, channel=channel)).run_sync(fsdgraph.compile(graph, 4), images)
    finally:
        backend.close()
    exact(result, reference)
    assert result.report["checkpoints"] >= 4  # every worker at least once


def test_the_relaunch_budget_spent_fails_naming_the_worker(network: Network) -> None:
    graph, images, _ = network
    backend = LocalBackend(kill=(1, 4))
    try:
        with pytest.raises(fsdgraph.RunTimeout, match=r"^worker 1 stopped reporting \(last "
                                                      r"heard at layer \d+ of 24\)"):
            fsdgraph.Scheduler(backend, "queue", config(relaunches=0, stall_timeout_s=3)
                               ).run_sync(fsdgraph.compile(graph, 3), images)
    finally:
        backend.close()


@pytest.mark.parametrize("channel", ["queue", "object"])
def test_a_run_longer_than_the_function_time_limit_continues(network: Network,
                                                             channel: str) -> None:
    """Each worker process may live 1.2 s (killed by SIGALRM past it, as Lambda would) and
    hands over 1 s before that, so an attempt has about 0.2 s of work: even on a quiet machine
    the run (8000 rows) outlasts it, and every worker continues at least once."""
    graph, images, reference = network
    backend = LocalBackend(function_timeout_s=1.2)
    try:
        result = fsdgraph.Scheduler(backend, channel, config(checkpoint_every=0)).run_sync(
            fsdgraph.compile(graph, 2), sp.vstack([images] * 40))
    finally:
        backend.close()
    reference_rows = sp.vstack([reference] * 40)
    exact(result, reference_rows)
    assert result.report["continuations"] >= 2
    assert result.report["relaunches"] == 0


@pytest.mark.parametrize(("field", "value"), [("relaunches", -1), ("checkpoint_every", -2),
                                              ("relaunch_after_s", 0.0),
                                              ("relaunch_after_s", float("nan"))])
def test_relaunch_settings_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        fsdgraph.RunConfig(**{field: value})  # type: ignore[arg-type]


def test_a_function_timeout_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="function_timeout_s must be a positive number"):
        LocalBackend(function_timeout_s=-1)


def test_relaunch_settings_come_from_the_environment_and_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[run]\nrelaunches = 5\nrelaunch_after_s = 30\n")
    settings = load_settings(config, environ={"FSDGRAPH_RELAUNCHES": "0"})
    assert (settings.relaunches, settings.relaunch_after_s) == (0, 30.0)
    with pytest.raises(ConfigError, match="FSDGRAPH_RELAUNCHES: relaunches must be an integer "
                                          ">= 0, got -1"):
        load_settings(config, environ={"FSDGRAPH_RELAUNCHES": "-1"})


def test_an_inbox_hands_over_what_it_received_early() -> None:
    """What a worker received for later layers goes to its continuation with the checkpoint:
    the same chunks, the same completeness, nothing of the layers the checkpoint covers."""
    old = Inbox(worker=1)
    for layer, src, index, count, payload in [(3, 0, 0, 1, b"done"), (4, 0, 0, 2, b"a"),
                                              (4, 2, 0, 0, b""), (5, 0, 1, 2, b"b")]:
        old.offer(layer, src, index, count, payload, checksum(payload))
    handed = old.export(after=3)
    assert [item[:4] for item in handed] == [[4, 0, 0, 2], [4, 2, 0, 0], [5, 0, 1, 2]]
    new = Inbox(worker=1)
    for layer, src, index, count, digest, payload in handed:
        assert new.offer(layer, src, index, count, payload, digest)
    assert new.missing(4, [0, 2]) == {0: "1 of 2 chunks"}
    assert new.take(4) == [(0, b"a")]
    assert new.missing(5, [0]) == {0: "1 of 2 chunks"}


@pytest.mark.parametrize("channel", ["queue", "object"])
def test_a_worker_waiting_at_its_time_limit_hands_over_mid_layer(network: Network,
                                                                 channel: str) -> None:
    """Worker 1 dies at layer 5; worker 0, waiting for it, reaches its 3 s limit before the
    relaunch catches up: it hands over from layer 4 with what layer 5 had received, and the
    run still returns the exact result."""
    graph, images, reference = network
    backend = LocalBackend(kill=(1, 5), function_timeout_s=3.0)
    try:
        result = fsdgraph.Scheduler(backend, channel, config(relaunch_after_s=2.5)).run_sync(
            fsdgraph.compile(graph, 2, "contiguous"), images)
    finally:
        backend.close()
    exact(result, reference)
    assert result.report["relaunches"] == 1
    assert result.report["continuations"] >= 1
