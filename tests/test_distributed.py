"""Distributed results equal the serial reference, for every worker count, channel and partitioner.

One local backend (and its warm launcher) is shared by the module so the many small runs do not
each pay for a launcher start.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends.local import LocalBackend
from fsdgraph.sources.graphchallenge import graphchallenge_bias
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet

LAYERS = 36

#: The graph, the images and the serial reference's activations.
Network = tuple[fsdgraph.Graph, sp.csr_matrix, sp.csr_matrix]


@pytest.fixture(scope="module")
def network() -> Network:
    """A generated 1024-neuron RadiX-Net (36 layers: six blocks) on generated images."""
    graph = fsdgraph.sequential(radixnet(1024, LAYERS, seed=3), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    images = synthetic_images(1024, 300, seed=4)
    return graph, images, fsdgraph.reference_inference(images, graph.layers())


def assert_same(result: fsdgraph.Result, reference: sp.csr_matrix) -> None:
    """Categories identical, values within 1e-6 relative; in fact identical bit for bit, since
    workers sum in the reference's canonical order (a differing bit fails the last line)."""
    assert np.array_equal(result.categories, fsdgraph.categories(reference))
    got, want = result.activations.toarray(), reference.toarray()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert np.array_equal(got, want)


#: One worker owns everything: every partitioner gives the same plan and nothing travels, so the
#: channel is idle too; one such run. Above one worker, every (workers, channel, partitioner)
#: is a different run: the partitioners give different owners (tests/test_partitioners.py), so
#: different edges travel, and the channels carry them differently.
RUNS = [pytest.param(1, "queue", "contiguous", id="1-single")] + [
    pytest.param(workers, channel, partitioner, id=f"{workers}-{channel}-{partitioner}")
    for workers in (2, 3, 4, 7)
    for channel in ("queue", "object")
    for partitioner in ("contiguous", "random", "hypergraph")
]


@pytest.mark.parametrize(("workers", "channel", "partitioner"), RUNS)
def test_distributed_equals_serial(backend: LocalBackend, network: Network, workers: int,
                                   channel: str, partitioner: str) -> None:
    """Categories identical and values within 1e-6 for P in {1,2,3,4,7}, both channels and the
    three partitioners; the run reports real traffic whenever there is more than one worker."""
    graph, images, reference = network
    plan = fsdgraph.compile(graph, workers=workers, partitioner=partitioner)
    result = fsdgraph.Scheduler(backend, channel).run_sync(plan, images)
    assert_same(result, reference)
    assert 0 < len(result.categories) < images.shape[0]  # a meaningful batch: some live, some die
    report = result.report
    assert report["workers"] == workers and report["channel"] == channel
    assert len(report["per_layer"]) == LAYERS
    if workers > 1:
        assert report["bytes_sent"] > 0 and report["messages_sent"] > 0
        kind = "publish" if channel == "queue" else "put"
        assert report["requests"][kind] > 0
    else:
        assert report["bytes_sent"] == 0


def test_where_bits_differ(backend: LocalBackend, network: Network) -> None:
    """Bits differ only from scipy's non-canonical summation order: the plain loop (column ids
    left unsorted) differs from the canonical reference in the last bits, the distributed result
    never does."""
    graph, images, reference = network
    images = images[:60]
    reference = fsdgraph.reference_inference(images, graph.layers()[:12])
    plain = fsdgraph.reference_inference(images, graph.layers()[:12], canonical=False)
    plan = fsdgraph.compile(graph.layers()[:12], 4)
    result = fsdgraph.Scheduler(backend, "queue").run_sync(plan, images)
    assert (result.activations != reference).nnz == 0
    differing = (plain != reference).nnz
    assert differing > 0  # summation order matters in float32...
    assert abs(plain - reference).max() <= 4e-6 * 32  # ...by a few units in the last place


def test_random_weights_and_dense_bias(backend: LocalBackend) -> None:
    """A general MLP: random signed weights, per-neuron bias added everywhere (not only on
    nonzeros), no cap; dense and sparse layers mixed."""
    rng = np.random.default_rng(0)
    widths = [64, 48, 80, 32]
    weights = [sp.random(a, b, density=0.3, random_state=rng, dtype=np.float32, format="csr")
               for a, b in itertools.pairwise(widths)]
    weights[1] = rng.standard_normal((48, 80)).astype(np.float32)  # a dense numpy weight
    g = fsdgraph.Graph()
    h: fsdgraph.graph.Node = g.input(64)
    for i, w in enumerate(weights):
        h = g.linear(h, w, bias=rng.standard_normal(w.shape[1]).astype(np.float32) * 0.1,
                     bias_on_nonzero=False)
        if i < len(weights) - 1:
            h = g.relu(h)
    g.output(h)
    y = sp.random(40, 64, density=0.2, random_state=rng, dtype=np.float32, format="csr")
    reference = fsdgraph.reference_inference(y, g.layers())
    for channel in ("queue", "object"):
        result = fsdgraph.Scheduler(backend, channel).run_sync(fsdgraph.compile(g, 3), y)
        np.testing.assert_allclose(result.activations.toarray(), reference.toarray(),
                                   rtol=1e-5, atol=1e-6)


def test_all_rows_die(backend: LocalBackend) -> None:
    """A batch that dies in the first layer still completes, with no categories."""
    w = sp.identity(16, dtype=np.float32, format="csr")
    g = fsdgraph.sequential([w, w, w], bias=-10.0, cap=32, bias_on_nonzero=True)
    result = fsdgraph.Scheduler(backend, "queue").run_sync(fsdgraph.compile(g, 2),
                                                            sp.identity(16, format="csr"))
    assert result.categories.size == 0 and result.activations.nnz == 0


def test_input_width_mismatch_is_an_input_error(backend: LocalBackend, network: Network) -> None:
    graph, _, _ = network
    plan = fsdgraph.compile(graph, 2)
    with pytest.raises(fsdgraph.InputError, match="inputs have 10 features, the plan expects 1024"):
        fsdgraph.Scheduler(backend).run_sync(plan, sp.csr_matrix((3, 10), dtype=np.float32))


def test_nothing_left_behind(backend: LocalBackend, network: Network, tmp_path: Path) -> None:
    """The run directory (objects, queues, logs) is removed when the run ends."""
    graph, images, _ = network
    local = LocalBackend(root=str(tmp_path))
    try:
        fsdgraph.Scheduler(local, "object").run_sync(fsdgraph.compile(graph, 2), images[:20])
    finally:
        local.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("stall_s", "peer_s", "says"), [
    (2.0, 30.0, "worker 2 stopped reporting (last heard at layer"),  # no heartbeat: dead
    (30.0, 2.0, "nothing new from [2]"),  # a peer waited for it in vain
])
def test_a_killed_worker_is_named(network: Network, stall_s: float, peer_s: float,
                                  says: str) -> None:
    """Whichever deadline fires first, the error is a RunTimeout that names the dead worker."""
    graph, images, _ = network
    config = fsdgraph.RunConfig(stall_timeout_s=stall_s, progress_interval_s=0.2, relaunches=0,
                                channel=fsdgraph.ChannelConfig(peer_timeout_s=peer_s))
    backend = LocalBackend(kill=(2, 5))
    try:
        with pytest.raises(fsdgraph.RunTimeout) as caught:
            fsdgraph.Scheduler(backend, "queue", config).run_sync(
                fsdgraph.compile(graph, 4), images)
    finally:
        backend.close()
    assert says in str(caught.value)


@pytest.mark.parametrize("threshold", [0, 1, 2_000])
def test_auto_channel_mixes_queue_and_objects(backend: LocalBackend, network: Network,
                                              threshold: int) -> None:
    """The auto channel: same bits whichever way each edge goes; the report counts both ways
    (threshold 0: the price-derived line, 1: everything as objects, 2 kB: a mix)."""
    graph, images, reference = network
    config = fsdgraph.RunConfig(channel=fsdgraph.ChannelConfig(auto_object_above_bytes=threshold))
    plan = fsdgraph.compile(graph, 4, "contiguous")
    result = fsdgraph.Scheduler(backend, "auto", config).run_sync(plan, images)
    assert_same(result, reference)
    report = result.report
    edges = report["edges_via_queue"] + report["edges_via_object"]
    assert edges == len(plan.edges)
    choice = report["channel_details"]
    assert choice["object_above_bytes"] == (threshold or 458_752)
    assert choice["edges_via_object"] == report["edges_via_object"]
    assert ("auto_object_above_bytes" in choice["why"]) == bool(threshold)
    if threshold == 1:  # every nonempty edge is an object; empty markers stay on the queue
        assert report["edges_via_object"] > 0 and report["requests"]["put"] > plan.workers * 2
    if threshold == 2_000:
        assert report["edges_via_object"] > 0 and report["edges_via_queue"] > 0


def test_a_launcher_that_cannot_start_fails_at_once(monkeypatch: pytest.MonkeyPatch,
                                                    network: Network) -> None:
    """A broken local launcher is reported with its own error ("exited while starting"), not
    as the start-up timeout ("did not start within")."""
    import fsdgraph.backends.local.functions as functions

    monkeypatch.setattr(functions, "_MODULE", "fsdgraph_no_such_module")
    graph, images, _ = network
    backend = LocalBackend()
    try:
        expected = r"local launcher exited while starting: .*fsdgraph_no_such_module"
        with pytest.raises(fsdgraph.FsdError, match=expected):
            fsdgraph.Scheduler(backend).run_sync(fsdgraph.compile(graph, 2), images[:10])
    finally:
        backend.close()
