"""Parallelism strategies: model, data, hybrid and collapse give the serial reference's results,
bit for bit, on the official network and on generated ones; their plans and their errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.errors import ConfigError, ProtocolError
from fsdgraph.event import WorkerEvent
from fsdgraph.sources.graphchallenge import (
    graphchallenge_bias,
    load_images,
    load_truth,
    load_weights,
)
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet


def exactly(text: str) -> str:
    import re

    return "^" + re.escape(text) + "$"


@pytest.fixture(scope="module")
def official(official_data: Path) -> tuple[fsdgraph.Graph, sp.csr_matrix, np.ndarray,
                                           sp.csr_matrix]:
    weights = load_weights(official_data / "neuron1024", 1024, 120)
    images = load_images(official_data / "sparse-images-1024-first1200.tsv.gz", 1024)
    truth = load_truth(official_data / "neuron1024-l120-categories-first1200.tsv")
    graph = fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True)
    return graph, images, truth, fsdgraph.reference_inference(images, graph.layers())


OFFICIAL_STRATEGIES: list[dict[str, Any]] = [
    {"workers": 3, "strategy": "data"},
    {"workers": 4, "strategy": "hybrid", "replicas": 2},
    {"workers": 2, "strategy": "model", "collapse_at": 10},
    {"workers": 6, "strategy": "hybrid", "replicas": 2, "collapse_at": 20, "collapse_to": 2},
]


@pytest.mark.official
@pytest.mark.parametrize("channel", ["queue", "object"])
@pytest.mark.parametrize("options", OFFICIAL_STRATEGIES,
                         ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_every_strategy_reproduces_the_official_network(
        official: tuple[fsdgraph.Graph, sp.csr_matrix, np.ndarray, sp.csr_matrix],
        channel: str, options: dict[str, Any]) -> None:
    """The official categories, and the serial reference's values bit for bit: every output
    value is summed in the serial order whatever the strategy (rows are independent; a
    model-parallel worker adds its inputs in input order)."""
    graph, images, truth, reference = official
    plan = fsdgraph.compile(graph, **options)
    with fsdgraph.Scheduler("local", channel, fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, images)
    assert np.array_equal(result.categories, truth)
    assert (result.activations != reference).nnz == 0
    assert result.report["parallelism"]["strategy"] == options["strategy"]
    if options["strategy"] == "data":
        assert result.report["messages_sent"] == 0 and not plan.edges


#: (workers, compile options) for P = 1..7: every strategy, with and without collapse.
GENERATED = [
    (1, {}),
    (2, {"strategy": "data"}),
    (3, {"collapse_at": 3}),
    (4, {"strategy": "hybrid", "replicas": 2}),
    (5, {"strategy": "data"}),
    (6, {"strategy": "hybrid", "replicas": 3, "collapse_at": 2}),
    (7, {"collapse_at": 4, "collapse_to": 3}),
]


@pytest.fixture(scope="module")
def generated() -> tuple[fsdgraph.Graph, sp.csr_matrix, sp.csr_matrix]:
    graph = fsdgraph.sequential(radixnet(4096, 6, seed=3), graphchallenge_bias(4096),
                                cap=32, bias_on_nonzero=True)
    images = synthetic_images(4096, 240, seed=5)
    return graph, images, fsdgraph.reference_inference(images, graph.layers())


@pytest.mark.parametrize("channel", ["queue", "object"])
@pytest.mark.parametrize("workers,options", GENERATED,
                         ids=[f"P{p}-{o.get('strategy', 'model')}" for p, o in GENERATED])
def test_every_strategy_reproduces_generated_4096_networks(
        generated: tuple[fsdgraph.Graph, sp.csr_matrix, sp.csr_matrix], channel: str,
        workers: int, options: dict[str, Any]) -> None:
    graph, images, reference = generated
    plan = fsdgraph.compile(graph, workers, **options)
    with fsdgraph.Scheduler("local", channel, fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, images)
    assert (result.activations != reference).nnz == 0
    assert np.array_equal(result.categories, fsdgraph.categories(reference))


def test_a_hybrid_plan_exchanges_only_within_its_groups_and_shares_their_shards() -> None:
    w = sp.random(48, 48, density=0.2, format="csr", dtype=np.float32, random_state=1)
    plan = fsdgraph.compile(fsdgraph.sequential([w] * 3, bias=-0.1), 6, strategy="hybrid",
                            replicas=3)
    assert (plan.replicas, plan.group) == (3, 2)
    assert plan.edges and all(e.src // 2 == e.dst // 2 for e in plan.edges)
    # Replicas share their group position's arrays; only the peer ids move.
    assert plan.shards[4].layers[1].weight is plan.shards[0].layers[1].weight
    assert {s.dst for s in plan.shards[4].layers[1].sends} == {5}
    assert [plan.shards[w].worker for w in range(6)] == list(range(6))
    assert plan.image_slices(10) == [(0, 3), (3, 6), (6, 10)]
    summary = plan.summary()
    assert summary["shard_bytes"][:2] == summary["shard_bytes"][2:4]
    assert (summary["strategy"], summary["replicas"], summary["group"]) == ("hybrid", 3, 2)


def test_a_collapsed_plan_gathers_the_later_layers_onto_one_worker() -> None:
    w = sp.random(40, 40, density=0.3, format="csr", dtype=np.float32, random_state=2)
    plan = fsdgraph.compile(fsdgraph.sequential([w] * 5, bias=-0.1), 4, collapse_at=2)
    assert all(len(o) == 40 and set(o) == {0} for o in plan.owners[2:])
    assert set(plan.owners[1]) == {0, 1, 2, 3}
    # Layer 2 gathers onto worker 0; after it nothing travels.
    assert {(e.layer, e.dst) for e in plan.edges if e.layer >= 2} == {(2, 0)}
    assert plan.parallelism()["collapse_to"] == 1


@pytest.mark.parametrize("options,message", [
    ({"strategy": "pipeline"}, "strategy 'pipeline': expected auto or one of model, data, "
                               "hybrid"),
    ({"strategy": "hybrid"}, "strategy 'hybrid' needs replicas (the number of model-parallel "
                             "groups)"),
    ({"strategy": "hybrid", "replicas": 3}, "hybrid: replicas=3 must divide workers=4"),
    ({"strategy": "model", "replicas": 2}, "strategy 'model' has one replica, got replicas=2"),
    ({"strategy": "data", "replicas": 2}, "strategy 'data' has one replica per worker (4), got "
                                          "replicas=2"),
    ({"strategy": "hybrid", "replicas": 0}, "replicas must be a positive integer, got 0"),
    ({"collapse_at": 0}, "collapse_at must be a layer in [1, 2], got 0"),
    ({"collapse_at": 3}, "collapse_at must be a layer in [1, 2], got 3"),
    ({"collapse_at": 1, "collapse_to": 5}, "collapse_to must be in [1, 4] (the workers of a "
                                           "group), got 5"),
    ({"objective": "cost"}, "compile: objective only apply with strategy='auto'"),
])
def test_strategy_errors_say_what_is_expected(options: dict[str, Any], message: str) -> None:
    w = sp.random(16, 16, density=0.3, format="csr", dtype=np.float32, random_state=0)
    with pytest.raises(ConfigError, match=exactly(message)):
        fsdgraph.compile(fsdgraph.sequential([w] * 3, bias=-0.1), 4, **options)


def test_a_hybrid_group_wider_than_a_layer_is_refused() -> None:
    w = sp.csr_matrix(np.ones((3, 3), np.float32))
    with pytest.raises(ConfigError, match=exactly(
            "a group of 3 workers exceeds the narrowest layer (2 neurons): every worker must "
            "own at least one neuron")):
        fsdgraph.compile(fsdgraph.sequential([w, sp.csr_matrix(np.ones((3, 2), np.float32))]),
                         6, strategy="hybrid", replicas=2)


def test_a_worker_event_whose_group_does_not_divide_the_workers_is_refused() -> None:
    event = WorkerEvent(run_id="r", namespace="n", worker=0, workers=4, batch=1,
                        channel="object", backend="local").to_json()
    with pytest.raises(ProtocolError, match=exactly(
            "worker event: group 3 does not divide the 4 workers")):
        WorkerEvent.from_json({**event, "group": 3})
