"""Partitioners: balance and connectivity computed independently here, on generated and official
networks; the hypergraph partitioner must send far fewer rows than contiguous and random."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.errors import ConfigError
from fsdgraph.partitioners import get_partitioner, partitioner_names
from fsdgraph.partitioners.hypergraph import Hypergraph, connectivity
from fsdgraph.sources.graphchallenge import load_images, load_weights
from fsdgraph.sources.radixnet import radixnet


def cost_by_hand(weight: sp.spmatrix, prev: np.ndarray | None, owners: np.ndarray) -> int:
    """For each input neuron, the workers other than its owner that need it, counted."""
    w = sp.csr_matrix(weight)
    total = 0
    for j in range(w.shape[0]):
        needing = set(owners[w.indices[w.indptr[j]:w.indptr[j + 1]]].tolist())
        if prev is not None:
            needing.discard(int(prev[j]))
        total += len(needing)
    return total


def check_balanced(plan: fsdgraph.Plan, tolerance: float) -> None:
    for own in plan.owners:
        counts = np.bincount(own, minlength=plan.workers)
        n = len(own)
        assert counts.min() >= 1
        assert counts.max() <= max(math.ceil(n / plan.workers),
                                   math.floor(n / plan.workers * (1 + tolerance)))


def test_registry_lists_every_builtin() -> None:
    assert partitioner_names() == ["contiguous", "hypergraph", "random"]
    assert isinstance(get_partitioner("hypergraph"), Hypergraph)


@pytest.mark.parametrize("workers", [2, 3, 5, 8])
def test_hypergraph_balanced_and_cost_matches_plan(workers: int) -> None:
    """Balance within 3%; the plan's exchange edges carry exactly the connectivity cost, and
    the module's cost function agrees with the one computed here from scratch."""
    weights = radixnet(1024, 8, seed=1)
    plan = fsdgraph.compile(fsdgraph.sequential(weights, -0.3, cap=32), workers, "hypergraph")
    check_balanced(plan, 0.03)
    per_layer = plan.rows_to_send()
    for l in range(1, len(weights)):
        by_hand = cost_by_hand(weights[l], plan.owners[l - 1], plan.owners[l])
        assert per_layer[l] == by_hand
        assert connectivity(weights[l], plan.owners[l - 1], plan.owners[l]) == by_hand


def test_random_sparse_network_balanced() -> None:
    rng = np.random.default_rng(2)
    weights = [sp.random(300, 300, density=0.02, random_state=rng, format="csr",
                         dtype=np.float32) + sp.identity(300, format="csr", dtype=np.float32)
               for _ in range(4)]
    plan = fsdgraph.compile(fsdgraph.sequential(weights, -0.1), 7,
                            Hypergraph(tolerance=0.05))
    check_balanced(plan, 0.05)


@pytest.mark.official
def test_official_network_hypergraph_beats_contiguous_and_random(
        official_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the official 1024-neuron network with 8 workers: fewer rows to send than both."""
    weights = load_weights(official_data / "neuron1024", 1024, 120)
    graph = fsdgraph.sequential(weights, -0.3, cap=32)
    rows = {name: sum(fsdgraph.compile(graph, 8, name).rows_to_send())
            for name in ("contiguous", "random", "hypergraph")}
    with capsys.disabled():
        print(f"\nrows to send, 1024x120, 8 workers: {rows}; hypergraph/contiguous = "
              f"{rows['hypergraph'] / rows['contiguous']:.3f}, hypergraph/random = "
              f"{rows['hypergraph'] / rows['random']:.3f}")
    assert rows["hypergraph"] < 0.2 * rows["contiguous"]  # measured 0.134
    assert rows["hypergraph"] < 0.2 * rows["random"]  # measured 0.136


@pytest.mark.official
def test_activation_aware_lowers_the_weighted_cost(official_data: Path) -> None:
    """Weighing inputs by how often they are nonzero lowers the cost in those weights."""
    weights = load_weights(official_data / "neuron1024", 1024, 30)
    images = load_images(official_data / "sparse-images-1024-first1200.tsv.gz", 1024)
    layers = fsdgraph.sequential(weights, -0.3, cap=32).layers()
    aware = Hypergraph.activation_aware(layers, images[:300])
    assert aware.input_weights is not None
    plain_plan = fsdgraph.compile(layers, 8, "hypergraph")
    aware_plan = fsdgraph.compile(layers, 8, aware)
    check_balanced(aware_plan, 0.03)

    def weighted(plan: fsdgraph.Plan) -> float:
        assert aware.input_weights is not None
        return sum(connectivity(layers[l].weight, plan.owners[l - 1], plan.owners[l],
                                aware.input_weights[l]) for l in range(1, len(layers)))

    assert weighted(aware_plan) < weighted(plain_plan)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"hypergraph tolerance must be in \[0, 1\), got 1.5"):
        Hypergraph(tolerance=1.5)
    with pytest.raises(ConfigError, match="needs a non-empty sample"):
        Hypergraph.activation_aware([], sp.csr_matrix((0, 4)))
