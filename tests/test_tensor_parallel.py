"""Op-level models split by features (``strategy="model"``): the lowering's choice of split and
collective per op, and distributed runs equal to the serial evaluator on both channels."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends.local import LocalBackend
from fsdgraph.errors import ConfigError, ProtocolError
from fsdgraph.kernels import reference_inference
from fsdgraph.model import Model, from_layers
from fsdgraph.model_lowering import Collective, lower
from fsdgraph.model_plan import ModelPlan, compile_model, read_outputs, read_program
from fsdgraph.ops import rowwise
from fsdgraph.serialize import pack_parts
from fsdgraph.sources.radixnet import radixnet

RNG = np.random.default_rng(11)


def mlp(width: int = 8, hidden: int = 32) -> Model:
    m = Model()
    x = m.input("x", width)
    h = m.add("gelu", m.add("gemm", x, weight=RNG.normal(size=(width, hidden)),
                            bias=RNG.normal(size=hidden), name="up"))
    m.output(m.add("gemm", h, weight=RNG.normal(size=(hidden, width)),
                   bias=RNG.normal(size=width), name="down"))
    return m


def branchy() -> Model:
    """Two inputs, branches, merges (add of partial sums, concat), two outputs: every built-in
    op."""
    m = Model()
    a, b = m.input("a", 12), m.input("b", 6)
    left = m.add("matmul", a, weight=RNG.normal(size=(12, 5)))      # narrow: split 5 ways
    right = m.add("matmul", a, weight=RNG.normal(size=(12, 5)))
    summed = m.add("add", left, right, name="summed")                # full + full
    wide = m.add("gemm", b, weight=RNG.normal(size=(6, 20)), bias=RNG.normal(size=20))
    p1 = m.add("matmul", wide, weight=RNG.normal(size=(20, 9)))      # row-split: partial
    p2 = m.add("matmul", wide, weight=RNG.normal(size=(20, 9)))
    partial = m.add("add", p1, p2, name="partial_sum")               # stays a partial sum
    biased = m.add("capped_relu", m.add("bias_add", m.add("identity", partial),
                                        bias=RNG.normal(size=9)), cap=0.5)
    joined = m.add("concat", summed, m.add("sigmoid", biased), name="joined")
    normed = m.add("layer_norm", m.add("gelu", m.add("tanh", joined)), scale=RNG.normal(size=14),
                   bias=RNG.normal(size=14), epsilon=1e-3)
    hidden = m.add("layer_norm", m.add("relu", wide), scale=RNG.normal(size=20), name="hidden")
    m.output(m.add("softmax", normed, name="probs"), hidden)
    return m


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- the lowering -------------------------------------------------------------------------------

def test_two_dense_layers_pair_column_then_row_and_send_one_reduction() -> None:
    model = mlp()
    lowering = lower(model, 4)
    assert lowering.collectives == [Collective("reduce_scatter", "down", 8, 0)]
    assert lowering.outputs == {"down": "down@split"}
    for w, program in enumerate(lowering.programs):
        shapes = {i["out"]: i["params"]["weight"].shape for i in program if i["do"] == "op"
                  and "weight" in i["params"]}
        assert shapes == {"up@split": (8, 8), "down@partial": (8, 8)}, w
        # the second layer's bias is added once, after the sum, to this worker's features
        reduce = next(i for i in program if i["do"] == "reduce_scatter")
        assert reduce["bias"].shape == (2,)
    plan = compile_model(model, 4, "model")
    whole = compile_model(model, 1).weight_bytes()[0]
    assert sum(plan.weight_bytes()) == whole  # every weight held once
    assert max(plan.weight_bytes()) < whole / 3
    assert lowering.lower_bound_bytes(10) == 10 * 8 * 4 * 3


def test_a_chain_of_equal_widths_gathers_each_layer_and_equals_the_sparse_reference(
        backend: LocalBackend) -> None:
    graph = fsdgraph.sequential(radixnet(1024, 4, seed=3), -0.3, cap=32, bias_on_nonzero=True)
    model = from_layers(graph.layers())
    plan = compile_model(model, 4, "model")
    # the first layer reads the whole input; each later one gathers its input once
    assert [c.kind for c in plan.edges] == ["all_gather"] * 3
    images = sp.random(40, 1024, density=0.2, format="csr", dtype=np.float32, random_state=2)
    with fsdgraph.Scheduler(backend, "queue", fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, {"x": images})
    close(result.outputs[model.outputs[0]], reference_inference(images, graph.layers()).toarray())


def test_values_narrower_than_the_workers_are_held_whole() -> None:
    m = Model()
    m.output(m.add("softmax", m.add("matmul", m.input("x", 16), weight=np.ones((16, 3)))))
    lowering = lower(m, 4)
    assert lowering.collectives == [] and lowering.outputs == {"softmax0": "softmax0@full"}


def test_ops_that_need_whole_rows_gather_them() -> None:
    rowwise("row_sort", lambda x: np.sort(x, axis=1))
    m = Model()
    h = m.add("matmul", m.input("x", 4), weight=np.ones((4, 8)))
    m.output(m.add("row_sort", h), m.add("concat", h, h, name="twice"))
    kinds = [c.kind for c in lower(m, 2).collectives]
    assert kinds == ["all_gather"]  # gathered once, read by both


def test_auto_splits_features_only_when_the_weights_do_not_fit() -> None:
    model = mlp(64, 256)  # 2 x 64 x 256 float32: 128 KiB of weights
    assert compile_model(model, 4, "auto", memory_mb=1).strategy == "data"
    small = compile_model(model, 4, "auto", memory_mb=0.1)
    assert small.strategy == "model" and small.planned is not None
    assert small.planned["why"] == "the weights do not fit one worker: features split"
    assert fsdgraph.compile(model, 4, strategy="auto", memory_mb=0.1).strategy == "model"
    assert not small.relaunchable and compile_model(model, 4).relaunchable


# -- runs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["queue", "object"])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7])
def test_a_residual_model_split_by_features_equals_the_serial_outputs(
        backend: LocalBackend, channel: str, workers: int) -> None:
    m = Model()
    x = m.input("x", 28)
    for b in range(2):
        n = m.add("layer_norm", x, scale=RNG.normal(size=28), bias=RNG.normal(size=28),
                  name=f"b{b}.norm")
        h = m.add("gelu", m.add("gemm", n, weight=RNG.normal(size=(28, 56)) / 5,
                                bias=RNG.normal(size=56)))
        x = m.add("add", x, m.add("gemm", h, weight=RNG.normal(size=(56, 28)) / 5,
                                  bias=RNG.normal(size=28)), name=f"b{b}.residual")
    m.output(m.add("softmax", x, name="probs"), m.add("tanh", x, name="features"))
    inputs = {"x": RNG.normal(size=(33, 28)).astype(np.float32)}
    plan = fsdgraph.compile(m, workers, strategy="model")
    assert isinstance(plan, ModelPlan)
    with fsdgraph.Scheduler(backend, channel, fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, inputs)
    expected = m.evaluate(inputs)
    for name in ("probs", "features"):
        close(result.outputs[name], expected[name])
    report = result.report
    assert report["parallelism"]["strategy"] == "model"
    assert report["parallelism"]["group"] == workers
    assert report["layers"] == plan.layers == len(report["model"]["steps"])
    assert (report["bytes_sent"] > 0) == (workers > 1)
    bound = report["model"]["lower_bound_bytes"]
    assert bound == plan.lowering.lower_bound_bytes(33) and (bound > 0) == (workers > 1)
    assert len(report["per_layer"]) == plan.layers


@pytest.mark.parametrize(("workers", "channel"), [
    (1, "queue"), (2, "queue"), (3, "queue"), (4, "queue"), (7, "queue"),
    (1, "object"), (2, "object"), (3, "object"), (4, "object"), (7, "object"), (3, "auto")])
def test_a_dag_with_branches_merges_and_two_inputs(backend: LocalBackend, workers: int,
                                                   channel: str) -> None:
    model = branchy()
    inputs = {"a": RNG.normal(size=(17, 12)), "b": RNG.normal(size=(17, 6))}
    plan = fsdgraph.compile(model, workers, strategy="model")
    kinds = {c.kind for c in plan.edges}
    assert kinds == ({"all_gather", "reduce_scatter", "row_stats"} if workers > 1 else set())
    with fsdgraph.Scheduler(backend, channel, fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, inputs)
    expected = model.evaluate(inputs)
    for name in ("probs", "hidden"):
        close(result.outputs[name], expected[name])


# -- what a worker reads ------------------------------------------------------------------------

def as_bytes(parts: list[bytes | memoryview]) -> list[bytes]:
    return [bytes(memoryview(p).cast("B")) for p in parts]


def test_a_malformed_program_is_refused_naming_the_instruction() -> None:
    plan = compile_model(mlp(), 2, "model")
    program = read_program("k", as_bytes(plan.program_parts(0)))
    assert [i["do"] for i in program.instructions] == ["op", "op", "op", "reduce_scatter"]

    def staged(instructions: list[dict[str, object]]) -> list[bytes]:
        return as_bytes(pack_parts({"version": 2, "program": instructions,
                                    "outputs": {"y": "x@full"}, "widths": {"y": 3},
                                    "inputs": {"x": 3}}))

    with pytest.raises(ProtocolError, match=re.escape(
            "object k: instruction 0: expected one of ['all_gather', 'layer_norm', 'op', "
            "'reduce_scatter', 'slice', 'softmax']")):
        read_program("k", staged([{"do": "exec", "code": "print(1)"}]))
    with pytest.raises(ProtocolError, match=re.escape(
            "object k: instruction 0: reads 'h@split' before any instruction makes it")):
        read_program("k", staged([{"do": "slice", "src": "h@split", "out": "y", "cols": [0, 1]}]))
    with pytest.raises(ProtocolError, match=re.escape(
            "object k: instruction 0: not a valid relu op: Relu.__init__() got an unexpected "
            "keyword argument 'weight'")):
        read_program("k", staged([{"do": "op", "kind": "relu", "attrs": {},
                                   "params": {"weight": np.ones(2)}, "inputs": ["x@full"],
                                   "out": "y"}]))
    with pytest.raises(ProtocolError, match=re.escape(
            "object k: instruction 0: field 'bounds' must be contiguous [lo, hi] shares from 0")):
        read_program("k", staged([{"do": "all_gather", "src": "x@full", "out": "y", "step": 0,
                                   "bounds": [[0, 2], [1, 3]]}]))
    with pytest.raises(ProtocolError, match=re.escape(
            "object k: instruction 0: field 'inputs' must be a list of value keys")):
        read_program("k", staged([{"do": "op", "kind": "relu", "attrs": {}, "params": {},
                                   "inputs": [["x@full"]], "out": "y"}]))
    with pytest.raises(ProtocolError, match=re.escape(
            "object k: instruction 0: field 'step' is not a <class 'int'>")):
        read_program("k", staged([{"do": "all_gather", "src": "x@full", "out": "y",
                                   "step": "0", "bounds": []}]))


def test_output_pieces_outside_their_output_are_refused() -> None:
    from fsdgraph.model_plan import output_parts

    parts = as_bytes(output_parts((0, 2), {"y": np.ones((2, 3), np.float32)}, {"y": (2, 5)},
                                  {}))
    with pytest.raises(ProtocolError, match=re.escape(
            "object k: output 'y' columns [2, 5] are not within [0, 4]")):
        read_outputs("k", parts, (0, 2), {"y": 4})
    pieces, _ = read_outputs("k", parts, (0, 2), {"y": 5})
    assert pieces["y"][0] == (2, 5)


def test_model_strategies_are_named_in_errors() -> None:
    with pytest.raises(ConfigError, match="an op-level model runs 'data' parallel"):
        compile_model(mlp(), 2, "hybrid")
