"""The core without processes: graph validation, the compiler, plan shards, the scheduler's run
state on a fake clock, and the layer kernel against plain numpy."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.compiler import _check_owners
from fsdgraph.control import Status
from fsdgraph.errors import ConfigError, GraphError, InputError, ProtocolError, RunError, RunTimeout
from fsdgraph.graph import Graph, Layer, Node, sequential
from fsdgraph.kernels import Block, LayerInputs, WeightRows, reference_inference
from fsdgraph.kernels.choice import KERNEL_ENV, THREADS_ENV, fast_available
from fsdgraph.partitioners import Partitioner
from fsdgraph.plan import INPUT, SHARD_VERSION, Plan, WorkerShard
from fsdgraph.scheduler import TIMEOUT_GRACE_S, RunConfig, RunState
from fsdgraph.serialize import pack, unpack


def exactly(message: str) -> str:
    """A ``match`` pattern for the whole message."""
    return "^" + re.escape(message) + "$"


def eye(n: int) -> sp.csr_matrix:
    return sp.identity(n, dtype=np.float32, format="csr")


# -- graph: every GraphError names the node or field --------------------------------------------
def test_graph_error_is_an_input_error() -> None:
    assert issubclass(GraphError, InputError)


def test_second_input() -> None:
    g = Graph()
    g.input(4)
    with pytest.raises(GraphError, match=exactly(
            "graph already has an input; only one is supported")):
        g.input(4, name="again")


@pytest.mark.parametrize("width", [0, -3, 2.5, "4", None, True])
def test_input_width_must_be_a_positive_integer(width: object) -> None:
    with pytest.raises(GraphError, match=exactly(
            f"input 'pixels': width must be a positive integer, got {width!r}")):
        Graph().input(width, name="pixels")  # type: ignore[arg-type]


def test_input_width_accepts_numpy_integers() -> None:
    assert Graph().input(np.int64(5)).width == 5  # type: ignore[arg-type]


def test_weight_rows_must_match_the_input() -> None:
    g = Graph()
    x = g.input(4)
    with pytest.raises(GraphError, match=exactly(
            "linear0: weight has 3 rows but its input 'input' has 4 features "
            "(expected weight of shape (4, out))")):
        g.linear(x, np.ones((3, 2), np.float32))


@pytest.mark.parametrize(("weight", "message"), [
    (np.ones((4, 2), np.int64), "dense: weight must have a float dtype, got int64"),
    (sp.csr_matrix(np.ones((4, 2), np.int32)), "dense: weight must have a float dtype, got int32"),
    (np.ones(4, np.float32), "dense: weight must be 2-D (in x out), got shape (4,)"),
    (np.ones((4, 2, 1), np.float32), "dense: weight must be 2-D (in x out), got shape (4, 2, 1)"),
    ([[1.0, 2.0]] * 4, "dense: weight must be a scipy sparse matrix or a numpy array, got list"),
    (np.ones((4, 0), np.float32), "dense: weight has an empty shape (4, 0)"),
    (np.ones((0, 4), np.float32), "dense: weight has an empty shape (0, 4)"),
    (np.array([[np.nan, 1], [np.inf, 1], [-np.inf, 0], [1, 1]], np.float32),
     "dense: weight has 3 NaN or infinite values"),
])
def test_bad_weights(weight: object, message: str) -> None:
    g = Graph()
    x = g.input(4)
    with pytest.raises(GraphError, match=exactly(message)):
        g.linear(x, weight, name="dense")


@pytest.mark.parametrize(("bias", "message"), [
    (np.zeros(3, np.float32), "linear0: bias must be a scalar or have shape (2,), got (3,)"),
    (np.zeros((2, 1), np.float32), "linear0: bias must be a scalar or have shape (2,), got (2, 1)"),
    (np.array([0.0, np.nan]), "linear0: bias has NaN or infinite values"),
    (np.inf, "linear0: bias has NaN or infinite values"),
])
def test_bad_biases(bias: object, message: str) -> None:
    g = Graph()
    x = g.input(4)
    with pytest.raises(GraphError, match=exactly(message)):
        g.linear(x, np.ones((4, 2), np.float32), bias=bias)  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [0, -1.0, np.inf, np.nan])
def test_bad_cap(cap: float) -> None:
    g = Graph()
    h = g.linear(g.input(4), eye(4))
    with pytest.raises(GraphError, match=exactly(
            f"relu0: cap must be a positive finite number or None, got {cap!r}")):
        g.relu(h, cap=cap)


def test_branching_is_refused_naming_both_nodes() -> None:
    g = Graph()
    x = g.input(4)
    g.linear(x, eye(4))
    with pytest.raises(GraphError, match=exactly(
            "linear1: 'input' already feeds another node; only chains are supported")):
        g.linear(x, eye(4))
    with pytest.raises(GraphError, match=exactly(
            "output: 'input' already feeds another node; only chains are supported")):
        g.output(x)


def test_node_of_another_graph_is_refused() -> None:
    other = Graph()
    foreign = other.input(4)
    g = Graph()
    g.input(4)
    with pytest.raises(GraphError, match=exactly(
            "linear0: source must be a node of this graph, got Input(name='input', width=4)")):
        g.linear(foreign, eye(4))
    with pytest.raises(GraphError, match=exactly(
            "relu0: source must be a node of this graph, got 'x'")):
        g.relu("x")  # type: ignore[arg-type]
    with pytest.raises(GraphError, match=r"^output: source must be a node of this graph"):
        g.output(Node("loose", 4))


def test_input_width_without_an_input() -> None:
    with pytest.raises(GraphError, match=exactly(
            "graph has no input; call graph.input(width) first")):
        _ = Graph().input_width


def test_layers_of_incomplete_graphs() -> None:
    with pytest.raises(GraphError, match=exactly(
            "graph is empty: add an input and at least one linear layer")):
        Graph().layers()
    g = Graph()
    g.linear(g.input(4), eye(4))
    with pytest.raises(GraphError, match=exactly("graph has no output; call graph.output(node)")):
        g.layers()
    g = Graph()
    g.output(g.input(4))
    with pytest.raises(GraphError, match=exactly(
            "graph has no linear layer between its input and output")):
        g.layers()


def test_relu_must_follow_a_linear() -> None:
    g = Graph()
    g.output(g.relu(g.input(4), name="first"))
    with pytest.raises(GraphError, match=exactly("first: a ReLU must follow a linear layer")):
        g.layers()
    g = Graph()
    g.output(g.relu(g.relu(g.linear(g.input(4), eye(4))), cap=2))
    with pytest.raises(GraphError, match=exactly("relu1: a ReLU must follow a linear layer")):
        g.layers()


def test_sequential_errors() -> None:
    with pytest.raises(GraphError, match=exactly(
            "sequential: no weights given (the graph would be empty)")):
        sequential([])
    with pytest.raises(GraphError, match=exactly("sequential: 1 biases for 2 layers")):
        sequential([eye(3), eye(3)], bias=[0.5])
    with pytest.raises(GraphError, match=exactly(
            "layer2: weight has 4 rows but its input 'relu1' has 3 features "
            "(expected weight of shape (3, out))")):
        sequential([eye(3), eye(4)])


def test_weights_are_stored_as_canonical_float32_csr() -> None:
    """Duplicates summed, explicit zeros dropped, float64 and dense input converted."""
    w = sp.coo_matrix((np.array([1.0, 2.0, 0.0, 5.0]), ([0, 0, 1, 2], [1, 1, 0, 2])),
                      shape=(3, 3))
    g = Graph()
    h = g.linear(g.input(3), w, bias=np.array([1, 2, 3]))
    dense = g.linear(h, np.array([[0, 1], [0, 0], [2, 0]], np.float64), bias=0.5,
                     bias_on_nonzero=False)
    g.output(g.relu(dense, cap=np.float64(4)))
    first, second = g.layers()
    assert first.weight.dtype == np.float32 and first.weight.nnz == 2
    assert first.weight.toarray().tolist() == [[0, 3, 0], [0, 0, 0], [0, 0, 5]]
    assert first.bias.dtype == np.float32 and first.bias.tolist() == [1, 2, 3]
    assert (first.relu, first.cap, first.bias_on_nonzero) == (False, None, False)  # default
    assert isinstance(second.weight, sp.csr_matrix) and second.weight.nnz == 2
    assert second.bias.tolist() == [0.5, 0.5]
    assert (second.relu, second.cap, second.bias_on_nonzero) == (True, 4.0, False)
    assert type(second.cap) is float
    assert [n.name for n in g.nodes] == ["input", "linear0", "linear1", "relu0"]


def test_sequential_takes_one_bias_or_one_per_layer() -> None:
    layers = sequential([eye(3), eye(3)], bias=[-0.5, 0.25], cap=8).layers()
    assert [float(l.bias[0]) for l in layers] == [-0.5, 0.25]
    assert all(l.relu and l.cap == 8.0 for l in layers)
    shared = sequential([eye(3)] * 3, bias=np.array([1, 2, 3], np.float32)).layers()
    assert all(l.bias.tolist() == [1, 2, 3] and l.cap is None for l in shared)


# -- compile -------------------------------------------------------------------------------------
class Fixed(Partitioner):
    """Returns whatever it was given, as a plugin might."""

    name = "fixed"

    def __init__(self, owners: list[np.ndarray]) -> None:
        self.owners = owners

    def partition(self, widths: Sequence[int], workers: int,
                  weights: Sequence[sp.csr_matrix] | None = None) -> list[np.ndarray]:
        return self.owners


def two_layers() -> fsdgraph.Graph:
    """Layer 0: identity; layer 1: identity plus input neuron 0 feeding output 3."""
    w1 = eye(4).tolil()
    w1[0, 3] = 2.0
    return sequential([eye(4), sp.csr_matrix(w1)], bias=-0.5)


def test_compile_derives_exactly_the_needed_exchange() -> None:
    """Contiguous over 2 workers: only neuron 0 travels, from worker 0 to worker 1 in layer 1;
    worker 1 takes its own rows first."""
    plan = fsdgraph.compile(two_layers(), 2, "contiguous")
    assert (plan.workers, plan.layers, plan.input_width, plan.output_width) == (2, 2, 4, 4)
    assert plan.partitioner == "contiguous"
    assert [o.tolist() for o in plan.owners] == [[0, 0, 1, 1], [0, 0, 1, 1]]
    assert [(e.layer, e.src, e.dst, e.neurons.tolist()) for e in plan.edges] == [(1, 0, 1, [0])]
    w0, w1 = plan.shards
    assert w0.input_neurons.tolist() == [0, 1] and w1.input_neurons.tolist() == [2, 3]
    assert [(r.src, r.positions.tolist()) for r in w1.layers[0].sources] == [(INPUT, [0, 1])]
    second = w1.layers[1]
    assert second.out_cols.tolist() == [2, 3] and second.inputs.tolist() == [0, 2, 3]
    assert [(r.src, r.positions.tolist()) for r in second.sources] == [(1, [1, 2]), (0, [0])]
    assert second.weight.toarray().tolist() == [[0, 2], [1, 0], [0, 1]]
    assert [(s.dst, s.columns.tolist()) for s in w0.layers[1].sends] == [(1, [0])]
    assert w1.layers[1].sends == [] and w0.layers[0].sends == []
    assert plan.rows_to_send() == [0, 1]
    assert (plan.dag.number_of_nodes(), plan.dag.number_of_edges()) == (4, 3)
    assert plan.dag.edges[(0, 0), (1, 1)] == {"neurons": 1, "exchange": True}


def test_compile_accepts_layers_and_partitioner_instances() -> None:
    layers = two_layers().layers()
    own = [np.array([1, 0, 1, 0]), np.array([0, 1, 1, 0], np.int64)]
    plan = fsdgraph.compile(layers, 2, Fixed(own))
    assert plan.partitioner == "fixed"
    assert all(o.dtype == np.int32 for o in plan.owners)
    assert [o.tolist() for o in plan.owners] == [o.tolist() for o in own]
    assert plan.shards[1].input_neurons.tolist() == [0, 2]


@pytest.mark.parametrize("workers", [0, -1, 2.0, "2", True, None])
def test_compile_refuses_bad_worker_counts(workers: object) -> None:
    with pytest.raises(ConfigError, match=exactly(
            f"workers must be a positive integer, got {workers!r}")):
        fsdgraph.compile(two_layers(), workers)  # type: ignore[arg-type]


def test_compile_accepts_numpy_worker_counts() -> None:
    plan = fsdgraph.compile(two_layers(), np.int64(2))  # type: ignore[arg-type]
    assert type(plan.workers) is int and plan.workers == 2 and len(plan.shards) == 2


def test_compile_refuses_more_workers_than_the_narrowest_layer() -> None:
    g = sequential([np.ones((6, 3), np.float32), np.ones((3, 5), np.float32)])
    assert fsdgraph.compile(g, 3).workers == 3
    with pytest.raises(ConfigError, match=exactly(
            "workers=4 exceeds the narrowest layer (3 neurons): every worker must own at least "
            "one neuron")):
        fsdgraph.compile(g, 4)


@pytest.mark.parametrize(("owners", "message"), [
    ([np.array([0, 0, 1, 1])], "partitioner 'fixed' returned 1 layers, expected 2"),
    ([np.array([0, 1, 1]), np.array([0, 0, 1, 1])],
     "partitioner 'fixed': layer 0 owners must be 4 worker ids in [0, 2)"),
    ([np.array([0, 0, 1, 1]), np.array([0, -1, 1, 1])],
     "partitioner 'fixed': layer 1 owners must be 4 worker ids in [0, 2)"),
    ([np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])],
     "partitioner 'fixed': layer 1 owners must be 4 worker ids in [0, 2)"),
    ([np.array([[0, 0, 1, 1]]), np.array([0, 0, 1, 1])],
     "partitioner 'fixed': layer 0 owners must be 4 worker ids in [0, 2)"),
    ([np.array([0.0, 0, 1, 1]), np.array([0, 0, 1, 1])],
     "partitioner 'fixed': layer 0 owners must be 4 worker ids in [0, 2)"),
    ([[0, 0, 1, 1], np.array([0, 0, 1, 1])],
     "partitioner 'fixed': layer 0 owners must be 4 worker ids in [0, 2)"),
    ([np.array([0, 0, 1, 1]), np.array([1, 1, 1, 1])],
     "partitioner 'fixed': layer 1 leaves a worker without neurons"),
])
def test_partitioner_output_is_checked(owners: list[np.ndarray], message: str) -> None:
    with pytest.raises(ConfigError, match=exactly(message)):
        fsdgraph.compile(two_layers(), 2, Fixed(owners))


def test_check_owners_directly() -> None:
    weights = [eye(3), np.ones((3, 5))]
    _check_owners([np.array([0, 1, 2]), np.array([2, 1, 0, 1, 0])], weights, 3, "p")
    with pytest.raises(ConfigError, match=exactly("partitioner 'p': layer 1 leaves a worker "
                                                  "without neurons")):
        _check_owners([np.array([0, 1, 2]), np.array([2, 1, 1, 1, 2])], weights, 3, "p")
    with pytest.raises(ConfigError, match=exactly("partitioner 'p' returned 3 layers, "
                                                  "expected 2")):
        _check_owners([np.array([0, 1, 2])] * 3, weights, 3, "p")


def simulate(plan: Plan, y0: sp.csr_matrix) -> sp.csr_matrix:
    """Run a plan in this process, as the workers do but with every piece handed over directly:
    own columns from the previous layer, peers' columns through their ``Send``."""
    batch = y0.shape[0]
    y0 = sp.csr_matrix(y0, dtype=np.float32)
    prev = [Block.from_matrix(y0[:, s.input_neurons]) for s in plan.shards]
    for l in range(plan.layers):
        outputs = []
        for w, shard in enumerate(plan.shards):
            ls, spec = shard.layers[l], shard.specs[l]
            inputs = LayerInputs(batch, WeightRows(ls.weight))
            if not spec.bias_on_nonzero:
                inputs.touch_all()
            for source in ls.sources:
                if source.src == INPUT:
                    piece = prev[w]
                elif source.src == w:
                    own = np.searchsorted(shard.layers[l - 1].out_cols, ls.inputs[source.positions])
                    piece = prev[w].select_columns(own)
                else:
                    (send,) = [s for s in plan.shards[source.src].layers[l].sends if s.dst == w]
                    piece = prev[source.src].select_columns(send.columns)
                inputs.add(piece, source.positions)
            outputs.append(inputs.finish(ls.bias, bias_on_nonzero=spec.bias_on_nonzero,
                                         relu=spec.relu, cap=spec.cap))
        prev = outputs
    out = sp.lil_matrix((batch, plan.output_width), dtype=np.float32)
    for w, shard in enumerate(plan.shards):
        out[:, shard.layers[-1].out_cols] = prev[w].to_matrix(batch)
    return sp.csr_matrix(out)


def random_layers(seed: int, bias_on_nonzero: bool) -> list[Layer]:
    rng = np.random.default_rng(seed)
    widths = [30, 24, 40, 17, 9]
    g = Graph()
    h: Node = g.input(widths[0])
    for i in range(len(widths) - 1):
        w = sp.random(widths[i], widths[i + 1], density=0.25, random_state=rng, format="csr",
                      dtype=np.float32)
        w.data -= 0.3
        h = g.linear(h, w, bias=rng.normal(0, 0.1, widths[i + 1]).astype(np.float32),
                     bias_on_nonzero=bias_on_nonzero)
        if i < len(widths) - 2:  # the last layer has no ReLU
            h = g.relu(h, cap=[None, 1.5][i % 2])
    g.output(h)
    return g.layers()


@pytest.mark.parametrize("partitioner", ["contiguous", "random", "hypergraph"])
@pytest.mark.parametrize("workers", [1, 2, 5])
def test_a_plan_computes_the_serial_result_bit_for_bit(partitioner: str, workers: int) -> None:
    """Executed in-process, every plan gives the reference's exact bits (bias on nonzeros) and
    the reference's values (bias everywhere: a dense sum, order differs)."""
    y = sp.random(25, 30, density=0.3, random_state=7, format="csr", dtype=np.float32)
    layers = random_layers(1, bias_on_nonzero=True)
    got, want = simulate(fsdgraph.compile(layers, workers, partitioner), y), \
        reference_inference(y, layers)
    assert want.nnz > 0 and (got != want).nnz == 0
    layers = random_layers(2, bias_on_nonzero=False)
    got, want = simulate(fsdgraph.compile(layers, workers, partitioner), y), \
        reference_inference(y, layers)
    np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(want.toarray() < 0) > 0  # no ReLU at the end: negatives survive


# -- plan shards ---------------------------------------------------------------------------------
def assert_same_shard(got: WorkerShard, want: WorkerShard) -> None:
    def same(a: np.ndarray, b: np.ndarray) -> None:
        assert a.dtype == b.dtype and np.array_equal(a, b)

    assert (got.worker, got.workers, got.specs) == (want.worker, want.workers, want.specs)
    same(got.input_neurons, want.input_neurons)
    assert len(got.layers) == len(want.layers)
    for g, w in zip(got.layers, want.layers, strict=True):
        for name in ("out_cols", "bias", "inputs"):
            same(getattr(g, name), getattr(w, name))
        assert g.weight.shape == w.weight.shape
        for name in ("indptr", "indices", "data"):
            same(getattr(g.weight, name), getattr(w.weight, name))
        assert [r.src for r in g.sources] == [r.src for r in w.sources]
        for a, b in zip(g.sources, w.sources, strict=True):
            same(a.positions, b.positions)
        assert [s.dst for s in g.sends] == [s.dst for s in w.sends]
        for c, d in zip(g.sends, w.sends, strict=True):
            same(c.columns, d.columns)


def test_shard_round_trip() -> None:
    plan = fsdgraph.compile(random_layers(3, bias_on_nonzero=True), 3, "random")
    assert {s.cap for s in plan.specs} == {None, 1.5} and not plan.specs[-1].relu
    assert any(ls.sends for s in plan.shards for ls in s.layers)
    for w, shard in enumerate(plan.shards):
        data = plan.shard_bytes(w)
        assert data == shard.to_bytes()
        back = WorkerShard.from_bytes(data)
        assert_same_shard(back, shard)
        assert back.to_bytes() == data


def test_shard_of_another_version_is_refused() -> None:
    data = unpack(fsdgraph.compile(two_layers(), 2).shard_bytes(0))
    assert data["version"] == SHARD_VERSION
    for version in (SHARD_VERSION + 1, 0, "1"):
        with pytest.raises(ProtocolError, match=exactly(
                f"worker shard version {version!r} is not {SHARD_VERSION}, the version this "
                "fsdgraph reads: the scheduler and the workers must run the same fsdgraph")):
            WorkerShard.from_bytes(pack({**data, "version": version}))


def test_what_is_not_a_shard_is_refused() -> None:
    with pytest.raises(ProtocolError, match=exactly(
            "not an fsdgraph worker shard (a list without a version)")):
        WorkerShard.from_bytes(pack([1, 2]))
    with pytest.raises(ProtocolError, match=exactly(
            "not an fsdgraph worker shard (a dict without a version)")):
        WorkerShard.from_bytes(pack({"worker": 0}))
    with pytest.raises(ProtocolError, match=r"^cannot decode msgpack payload"):
        WorkerShard.from_bytes(b"\xc1")


# -- RunState on a fake clock --------------------------------------------------------------------
T0 = 1000.0
CONFIG = RunConfig(timeout_s=100, stall_timeout_s=10)


def status(kind: str, worker: int, layer: int, **fields: object) -> Status:
    return Status(kind, worker, layer, **fields)  # type: ignore[arg-type]


@pytest.fixture
def state() -> RunState:
    """Three workers, five layers, started at T0."""
    return RunState(workers=3, layers=5, started=T0)


def test_progress_done_and_stray_statuses(state: RunState) -> None:
    state.apply(status("progress", 0, 3, launched_at=T0 + 1), now=T0 + 2)
    state.apply(status("progress", 0, 2), now=T0 + 3)  # late or repeated: never goes back
    state.apply(status("done", 1, 5, launched_at=T0 + 0.5), now=T0 + 4)
    state.apply(status("done", 1, 5, launched_at=T0 + 0.5), now=T0 + 4)
    state.apply(status("progress", 3, 1), now=T0 + 5)  # not a worker of this run
    state.apply(status("progress", -1, 1), now=T0 + 5)
    assert state.done_layers == [3, 5, 0]
    assert state.finished == {1}
    assert state.heard_from == [True, True, False]
    assert state.last_heard == [T0 + 3, T0 + 4, T0]
    assert state.launched_at == {0: 0.0, 1: T0 + 0.5}  # the latest status's


def test_nothing_is_late_at_the_deadlines(state: RunState) -> None:
    state.check(T0 + 10, CONFIG)  # silent for exactly stall_timeout_s: not yet
    for w in range(3):
        state.apply(status("progress", w, 1), now=T0 + 95)
    state.check(T0 + 100, CONFIG)  # exactly timeout_s: not yet


def test_a_run_whose_last_done_arrives_past_the_deadline_finished(state: RunState) -> None:
    for w in range(3):
        state.apply(status("done", w, 5), now=T0 + 100 + w)
    state.check(T0 + 103, CONFIG)  # every worker is done: no timeout, whatever the clock says
    assert state.finished == {0, 1, 2}


def test_whole_run_timeout(state: RunState) -> None:
    for w in range(3):
        state.apply(status("progress", w, w + 1), now=T0 + 95)
    state.apply(status("done", 1, 5), now=T0 + 96)
    with pytest.raises(RunTimeout, match=exactly(
            "run timed out after 100 s; unfinished: worker 0 at layer 1/5, "
            "worker 2 at layer 3/5")) as caught:
        state.check(T0 + 100.5, CONFIG)
    assert caught.value.worker == 0


def test_a_worker_that_never_started(state: RunState) -> None:
    state.apply(status("progress", 0, 1), now=T0 + 5)
    state.apply(status("done", 1, 5), now=T0 + 2)
    with pytest.raises(RunTimeout, match=exactly(
            "worker 2 never started (no status since launch) for 10 s; unfinished: "
            "worker 0 at layer 1/5, worker 2 at layer 0/5")) as caught:
        state.check(T0 + 10.5, CONFIG)
    assert (caught.value.worker, caught.value.layer) == (2, 0)


def test_a_worker_that_stopped_reporting(state: RunState) -> None:
    state.apply(status("progress", 1, 3), now=T0 + 3)
    for now in (T0 + 8, T0 + 12):
        state.apply(status("progress", 0, 4), now=now)
        state.apply(status("progress", 2, 2), now=now)
    state.check(T0 + 13, CONFIG)  # worker 1 silent for exactly 10 s
    with pytest.raises(RunTimeout, match=exactly(
            "worker 1 stopped reporting (last heard at layer 3 of 5) for 10 s; unfinished: "
            "worker 0 at layer 4/5, worker 1 at layer 3/5, worker 2 at layer 2/5")) as caught:
        state.check(T0 + 13.5, CONFIG)
    assert (caught.value.worker, caught.value.layer) == (1, 3)


def test_a_finished_worker_is_never_late(state: RunState) -> None:
    state.apply(status("done", 0, 5), now=T0 + 1)
    for w in (1, 2):
        state.apply(status("progress", w, 2), now=T0 + 30)
    state.check(T0 + 35, CONFIG)  # worker 0 silent for 34 s, but done


def test_an_error_status_with_a_worker_timeout_is_a_run_timeout(state: RunState) -> None:
    state.apply(status("error", 2, 4, message="RunTimeout: nothing new from [1]",
                       details="waiting for layer 4", error_type="RunTimeout"), now=T0 + 1)
    state.check(T0 + 1 + TIMEOUT_GRACE_S / 2, CONFIG)  # held: others may name an earlier edge
    with pytest.raises(RunTimeout, match=exactly(
            "worker 2 failed at layer 4: RunTimeout: nothing new from [1]")) as caught:
        state.check(T0 + 1 + TIMEOUT_GRACE_S, CONFIG)
    assert (caught.value.worker, caught.value.layer) == (2, 4)
    assert caught.value.details == "waiting for layer 4"


def test_the_earliest_peer_timeout_names_the_lost_edge(state: RunState) -> None:
    """A message lost on edge 2 -> 0 at layer 3: worker 0 times out at layer 3, and worker 1,
    waiting for worker 0 at layer 4, times out first; the report names layer 3's edge."""
    state.apply(status("error", 1, 4, message="RunTimeout: nothing new from [0]",
                       error_type="RunTimeout"), now=T0 + 1)
    state.apply(status("error", 0, 3, message="RunTimeout: layer 3 edge worker 2 -> worker 0",
                       error_type="RunTimeout"), now=T0 + 1.5)
    state.apply(status("error", 2, 4, message="RunTimeout: nothing new from [0]",
                       error_type="RunTimeout"), now=T0 + 1.6)
    with pytest.raises(RunTimeout, match=exactly(  # every unfinished worker spoke: no wait
            "worker 0 failed at layer 3: RunTimeout: layer 3 edge worker 2 -> worker 0 "
            "(workers [1, 2] timed out after it)")) as caught:
        state.check(T0 + 1.6, CONFIG)
    assert (caught.value.worker, caught.value.layer) == (0, 3)


def test_a_rejected_status_is_counted_and_changes_nothing(state: RunState) -> None:
    state.apply(status("rejected", -1, 0, message="its tag does not verify"), now=T0 + 1)
    assert state.rejected == 1
    state.check(T0 + 2, CONFIG)


@pytest.mark.parametrize("error_type", ["RunError", "ValueError", ""])
def test_any_other_error_status_is_a_run_error(state: RunState, error_type: str) -> None:
    with pytest.raises(RunError, match=exactly(
            "worker 0 failed at layer 2: ValueError: bad")) as caught:
        state.apply(status("error", 0, 2, message="ValueError: bad", details="Traceback ...",
                           error_type=error_type), now=T0 + 1)
    assert type(caught.value) is RunError
    assert (caught.value.worker, caught.value.layer, caught.value.details) \
        == (0, 2, "Traceback ...")


# -- LayerInputs against numpy -------------------------------------------------------------------
# Values are small multiples of 1/4, so every sum is exact in float32 whatever the order: the
# kernel's result must equal the numpy one exactly.
BATCH, N_IN, WIDTH = 10, 12, 7


def dyadic(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    values = rng.choice(np.array([-1.0, -0.5, 0.25, 0.5, 1.0, 2.0, 3.0]), size=shape)
    return np.where(rng.random(shape) < density, values, 0).astype(np.float32)


def expected(x: np.ndarray, w: np.ndarray, bias: np.ndarray, bias_on_nonzero: bool,
             relu: bool, cap: float | None) -> np.ndarray:
    z = x.astype(np.float64) @ w.astype(np.float64)
    z = np.where(z != 0, z + bias, 0) if bias_on_nonzero else z + bias
    if relu:
        z = np.maximum(z, 0)
    if cap is not None:
        z = np.minimum(z, cap)
    return z.astype(np.float32)


def piece(x: np.ndarray, positions: np.ndarray, rows: np.ndarray, layout: str) -> Block:
    """Columns ``positions`` of rows ``rows`` of ``x``, live rows only, in ``layout``."""
    values = x[np.ix_(rows, positions)]
    alive = values.any(axis=1)
    rows, values = rows[alive].astype(np.int32), values[alive]
    if layout == "dense":
        return Block(rows, dense_t=np.ascontiguousarray(values.T))
    return Block(rows, csr=sp.csr_matrix(values))


#: How the inputs arrive: own contiguous columns, a peer's interleaved columns, and a third
#: source's columns in two row chunks (each: positions, rows, layout).
SPLIT = [
    (np.arange(0, 5), np.arange(BATCH), "own"),
    (np.array([5, 7, 9, 11]), np.arange(BATCH), "peer"),
    (np.array([6, 8, 10]), np.arange(0, 4), "chunk"),
    (np.array([6, 8, 10]), np.arange(4, BATCH), "chunk"),
]


@pytest.fixture(params=["scipy", "numba", "numba-threads"])
def kernel_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every layer kernel, chosen as a function's environment chooses it (the numba ones are
    skipped where numba is not installed; in CI it always is)."""
    name = str(request.param)
    if name.startswith("numba") and not fast_available():
        pytest.skip("numba is not installed: only the scipy kernel can run")
    monkeypatch.setenv(KERNEL_ENV, name.split("-")[0])
    monkeypatch.setenv(THREADS_ENV, "3" if name.endswith("threads") else "1")
    return name


@pytest.fixture
def path(monkeypatch: pytest.MonkeyPatch, kernel_env: str) -> Iterator[list[str]]:
    """Records which product ``finish`` used: "sparse" or "dense"."""
    taken: list[str] = []
    sparse, dense = LayerInputs._sparse_inputs, LayerInputs._dense_inputs

    def spy_sparse(self: LayerInputs, *args: Any) -> sp.csr_matrix:
        taken.append("sparse")
        x: sp.csr_matrix = sparse(self, *args)
        return x

    def spy_dense(self: LayerInputs, *args: Any) -> np.ndarray:
        taken.append("dense")
        x_t: np.ndarray = dense(self, *args)
        return x_t

    monkeypatch.setattr(LayerInputs, "_sparse_inputs", spy_sparse)
    monkeypatch.setattr(LayerInputs, "_dense_inputs", spy_dense)
    yield taken


def finish_and_compare(inputs: LayerInputs, x: np.ndarray, w: np.ndarray, bias: np.ndarray,
                       bias_on_nonzero: bool, relu: bool, cap: float | None) -> Block:
    out = inputs.finish(bias, bias_on_nonzero=bias_on_nonzero, relu=relu, cap=cap)
    want = expected(x, w, bias, bias_on_nonzero, relu, cap)
    assert out.ncols == WIDTH
    np.testing.assert_array_equal(out.to_matrix(BATCH).toarray(), want)
    assert out.rows.tolist() == np.flatnonzero(want.any(axis=1)).tolist()  # live rows only
    return out


@pytest.mark.parametrize(("relu", "cap"), [(True, None), (True, 2.0), (False, None),
                                           (False, 1.0)])
@pytest.mark.parametrize("bias_on_nonzero", [True, False])
@pytest.mark.parametrize("layout", ["dense", "csr", "mixed"])
@pytest.mark.parametrize("density", [0.08, 0.8])
def test_layer_inputs_equal_numpy(path: list[str], density: float, layout: str,
                                  bias_on_nonzero: bool, relu: bool, cap: float | None) -> None:
    """Pieces from several sources and row chunks, either product, every epilogue; the kernel
    gives numpy's values. Bias everywhere goes with ``touch_all``, as the worker does."""
    rng = np.random.default_rng(int(density * 100) + len(layout))
    x = dyadic(rng, (BATCH, N_IN), density)
    x[3] = 0  # a dead input row: with the bias everywhere it still gets an output
    w = dyadic(rng, (N_IN, WIDTH), 0.5)
    bias = rng.choice(np.array([-1.0, -0.25, 0.5]), size=WIDTH).astype(np.float32)
    inputs = LayerInputs(BATCH, WeightRows(sp.csr_matrix(w)))
    if not bias_on_nonzero:
        inputs.touch_all()
    for i, (positions, rows, _) in enumerate(SPLIT):
        kind = layout if layout != "mixed" else ["dense", "csr"][i % 2]
        inputs.add(piece(x, positions, rows, kind), positions)
    out = finish_and_compare(inputs, x, w, bias, bias_on_nonzero, relu, cap)
    assert path == ["sparse" if bias_on_nonzero and density < 0.4 else "dense"]
    if not bias_on_nonzero and not relu:
        assert 3 in out.rows.tolist()


@pytest.mark.parametrize(("density", "taken"), [(0.1, "sparse"), (0.9, "dense")])
def test_one_piece_with_every_input(path: list[str], density: float, taken: str) -> None:
    rng = np.random.default_rng(5)
    x, w = dyadic(rng, (BATCH, N_IN), density), dyadic(rng, (N_IN, WIDTH), 0.4)
    bias = np.full(WIDTH, -0.25, np.float32)
    inputs = LayerInputs(BATCH, WeightRows(sp.csr_matrix(w)))
    inputs.add(Block.from_matrix(x), np.arange(N_IN))
    finish_and_compare(inputs, x, w, bias, True, True, 1.0)
    assert path == [taken]


@pytest.mark.parametrize("density", [0.1, 0.9])
def test_touch_all_changes_nothing_with_bias_on_nonzeros(density: float, kernel_env: str) -> None:
    rng = np.random.default_rng(6)
    x, w = dyadic(rng, (BATCH, N_IN), density), dyadic(rng, (N_IN, WIDTH), 0.4)
    x[[0, 4]] = 0
    bias = np.full(WIDTH, 0.5, np.float32)
    results = []
    for touch in (False, True):
        inputs = LayerInputs(BATCH, WeightRows(sp.csr_matrix(w)))
        if touch:
            inputs.touch_all()
        for positions, rows, _ in SPLIT:
            inputs.add(piece(x, positions, rows, "csr"), positions)
        results.append(finish_and_compare(inputs, x, w, bias, True, True, None))
    assert results[0].rows.tolist() == results[1].rows.tolist()
    assert not {0, 4} & set(results[1].rows.tolist())


def test_bias_everywhere_without_touch_all_only_reaches_carried_rows(kernel_env: str) -> None:
    """Rows no piece carries are not computed at all (the worker calls ``touch_all`` for this)."""
    rng = np.random.default_rng(8)
    x, w = dyadic(rng, (BATCH, N_IN), 0.5), dyadic(rng, (N_IN, WIDTH), 0.4)
    x[[2, 7]] = 0
    bias = np.full(WIDTH, 0.5, np.float32)
    inputs = LayerInputs(BATCH, WeightRows(sp.csr_matrix(w)))
    for positions, rows, _ in SPLIT:
        inputs.add(piece(x, positions, rows, "dense"), positions)
    out = inputs.finish(bias, bias_on_nonzero=False, relu=False, cap=None)
    want = expected(x, w, bias, False, False, None)
    carried = [r for r in range(BATCH) if r not in (2, 7)]
    assert out.rows.tolist() == carried
    np.testing.assert_array_equal(out.to_matrix(BATCH).toarray()[carried], want[carried])
    assert want[[2, 7]].tolist() == [[0.5] * WIDTH] * 2  # what touch_all would have added


@pytest.mark.parametrize("touch", [False, True])
def test_no_inputs_with_bias_on_nonzeros_is_empty(touch: bool, kernel_env: str) -> None:
    inputs = LayerInputs(BATCH, WeightRows(sp.csr_matrix(np.ones((N_IN, WIDTH), np.float32))))
    if touch:
        inputs.touch_all()
    inputs.add(Block.empty(3), np.array([0, 1, 2]))  # a piece without rows is no input
    out = inputs.finish(np.ones(WIDTH, np.float32), bias_on_nonzero=True, relu=True, cap=None)
    assert out.rows.tolist() == [] and out.ncols == WIDTH and out.nnz == 0


@pytest.mark.parametrize(("bias", "cap", "value"), [(0.75, None, 0.75), (5.0, 2.0, 2.0),
                                                    (-1.0, None, None)])
def test_no_inputs_with_bias_everywhere(bias: float, cap: float | None, value: float | None,
                                        kernel_env: str) -> None:
    """Every row is ``relu(bias)`` capped; a negative bias leaves nothing alive."""
    inputs = LayerInputs(BATCH, WeightRows(sp.csr_matrix(np.ones((N_IN, WIDTH), np.float32))))
    inputs.touch_all()
    out = inputs.finish(np.full(WIDTH, bias, np.float32), bias_on_nonzero=False, relu=True,
                        cap=cap)
    if value is None:
        assert out.rows.tolist() == []
    else:
        assert out.rows.tolist() == list(range(BATCH))
        assert np.all(out.to_csr().toarray() == np.float32(value))


def test_cancelling_products_get_no_bias(kernel_env: str) -> None:
    """A sum that is exactly zero is not a nonzero: no bias there, on either product."""
    w = sp.csr_matrix(np.array([[1.0], [-1.0]], np.float32))
    for x in (np.array([[2.0, 2.0], [1.0, 0.0]], np.float32),
              np.array([[2.0, 2.0], [1.0, 3.0]], np.float32)):
        inputs = LayerInputs(2, WeightRows(w))
        inputs.add(Block.from_matrix(x), np.array([0, 1]))
        out = inputs.finish(np.array([5.0], np.float32), bias_on_nonzero=True, relu=False,
                            cap=None)
        want = x @ w.toarray()
        want = np.where(want != 0, want + 5, 0)
        np.testing.assert_array_equal(out.to_matrix(2).toarray(), want)
        assert out.rows.tolist() == [1]


def test_add_refuses_mismatched_positions() -> None:
    inputs = LayerInputs(4, WeightRows(eye(3)))
    block = Block.from_dense(np.array([0, 1]), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=exactly("2 columns but 3 positions")):
        inputs.add(block, np.array([0, 1, 2]))


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_overlapping_row_chunks_are_refused(layout: str) -> None:
    x = np.ones((4, 2), np.float32)
    inputs = LayerInputs(4, WeightRows(eye(2)))
    inputs.add(piece(x, np.array([0, 1]), np.array([0, 1, 2]), layout), np.array([0, 1]))
    inputs.add(piece(x, np.array([0, 1]), np.array([2, 3]), layout), np.array([0, 1]))
    with pytest.raises(ValueError, match=exactly("row chunks of one edge overlap")):
        inputs.finish(np.zeros(2, np.float32), bias_on_nonzero=True, relu=True, cap=None)


def test_row_chunks_arriving_out_of_order() -> None:
    """Chunks of one edge are stacked in row order whatever order they came in."""
    rng = np.random.default_rng(11)
    x, w = dyadic(rng, (BATCH, N_IN), 0.9), dyadic(rng, (N_IN, WIDTH), 0.5)
    positions = np.arange(N_IN)
    inputs = LayerInputs(BATCH, WeightRows(sp.csr_matrix(w)))
    for rows in (np.arange(6, 10), np.arange(0, 3), np.arange(3, 6)):
        inputs.add(piece(x, positions, rows, "dense"), positions)
    finish_and_compare(inputs, x, w, np.full(WIDTH, -0.5, np.float32), True, True, None)
