"""Partitioners: balance and connectivity computed independently here, on generated and official
networks; the hypergraph partitioner must send far fewer rows than contiguous and random."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.errors import ConfigError
from fsdgraph.partitioners import get_partitioner, partitioner_names
from fsdgraph.partitioners.hypergraph import Hypergraph, connectivity
from fsdgraph.plan import INPUT
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
    graph = fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True)
    plan = fsdgraph.compile(graph, workers, "hypergraph")
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
    graph = fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True)
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
    layers = fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True).layers()
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


# -- plans, checked against the weights' structure (no processes) --------------------------------
def irregular_network() -> list[sp.csr_matrix]:
    """Layers of different widths, some output neurons without inputs, an input neuron feeding
    nothing, and a dense layer."""
    rng = np.random.default_rng(5)
    widths = [50, 40, 64, 33, 20]
    weights = [sp.random(a, b, density=0.08, random_state=rng, format="csr", dtype=np.float32)
               for a, b in itertools.pairwise(widths)]
    weights[1] = weights[1].tolil()
    weights[1][:, 7] = 0  # an output neuron nobody feeds
    weights[1][5, :] = 0  # an input neuron that feeds nothing
    weights[1] = sp.csr_matrix(weights[1])
    weights[2] = sp.csr_matrix(np.ones((64, 33), np.float32))
    return weights


NETWORKS = {"radixnet": lambda: radixnet(1024, 6, seed=2), "irregular": irregular_network}


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("workers", [2, 3, 7])
@pytest.mark.parametrize("partitioner", ["contiguous", "random", "hypergraph"])
def test_plan_matches_the_weight_structure(partitioner: str, workers: int,
                                           network: str) -> None:
    """Every output neuron is owned by exactly one worker; the exchange edges are exactly the
    (input neuron, worker) pairs the weights require between different workers; each edge's
    sender sends those neurons and its receiver reads them at the right positions."""
    weights = NETWORKS[network]()
    plan = fsdgraph.compile(fsdgraph.sequential(weights, -0.1), workers, partitioner)
    assert plan.partitioner == partitioner and len(plan.owners) == len(weights)
    check_balanced(plan, 0.03 if partitioner == "hypergraph" else 0.0)
    for l, w in enumerate(weights):
        own = plan.owners[l]
        assert own.shape == (w.shape[1],) and own.dtype == np.int32
        cols = [s.layers[l].out_cols for s in plan.shards]
        assert sorted(np.concatenate(cols).tolist()) == list(range(w.shape[1]))  # exactly once
        for k, c in enumerate(cols):
            assert c.tolist() == np.flatnonzero(own == k).tolist()

    required: list[tuple[int, int, int, int]] = []  # (layer, src, dst, input neuron)
    for l, w in enumerate(weights):
        coo = w.tocoo()  # input j feeds an output of worker d: d needs j
        j, d = np.divmod(np.unique(coo.row.astype(np.int64) * workers
                                   + plan.owners[l][coo.col]), workers)
        for k, shard in enumerate(plan.shards):  # what each worker multiplies, and from whom
            ls = shard.layers[l]
            mine = j[d == k]
            assert ls.inputs.tolist() == mine.tolist()
            assert ls.weight.shape == (len(mine), len(ls.out_cols))
            assert (ls.weight != w[mine][:, ls.out_cols]).nnz == 0
            positions = np.concatenate([r.positions for r in ls.sources] or [np.zeros(0, int)])
            assert sorted(positions.tolist()) == list(range(len(mine)))  # each input once
            if l == 0:
                assert shard.input_neurons.tolist() == mine.tolist()
                assert [r.src for r in ls.sources] in ([INPUT], [])
                continue
            srcs = [r.src for r in ls.sources]
            assert srcs == sorted(srcs, key=lambda s: (s != k, s))  # own rows first
            for r in ls.sources:
                assert set(plan.owners[l - 1][ls.inputs[r.positions]].tolist()) == {r.src}
        if l:
            src = plan.owners[l - 1][j]
            remote = src != d
            required += zip([l] * int(remote.sum()), src[remote].tolist(), d[remote].tolist(),
                            j[remote].tolist(), strict=True)
    travelled = [(e.layer, e.src, e.dst, n) for e in plan.edges for n in e.neurons.tolist()]
    assert sorted(travelled) == sorted(required)  # nothing missing, nothing extra or twice
    assert all(e.layer > 0 and len(e.neurons) for e in plan.edges)
    assert sum(plan.rows_to_send()) == len(required)

    for e in plan.edges:
        (send,) = [s for s in plan.shards[e.src].layers[e.layer].sends if s.dst == e.dst]
        sent = plan.shards[e.src].layers[e.layer - 1].out_cols[send.columns]
        assert sent.tolist() == e.neurons.tolist()
        receiver = plan.shards[e.dst].layers[e.layer]
        (rows,) = [r for r in receiver.sources if r.src == e.src]
        assert receiver.inputs[rows.positions].tolist() == e.neurons.tolist()
    sends = sum(len(ls.sends) for s in plan.shards for ls in s.layers)
    assert sends == len(plan.edges)
