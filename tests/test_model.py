"""The op-level model graph: every op against numpy, DAGs with branches and merges, the Graph
Challenge chain as a lowering (bit for bit), the graph as data, and every error naming what is
wrong."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import erf

import fsdgraph
from fsdgraph.errors import ConfigError, GraphError
from fsdgraph.model import Model, from_layers
from fsdgraph.ops import elementwise, get_op, op_names, register, rowwise
from fsdgraph.ops.pointwise import Relu
from fsdgraph.sources.graphchallenge import graphchallenge_bias
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet

RNG = np.random.default_rng(7)
X = RNG.normal(size=(6, 5)).astype(np.float32)
W = RNG.normal(size=(5, 4)).astype(np.float32)
B = RNG.normal(size=4).astype(np.float32)


def exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def one_op(kind: str, *, width: int = 5, **attrs: Any) -> Model:
    m = Model()
    x = m.input("x", width)
    m.output(m.add(kind, x, name="y", **attrs))
    return m


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


@pytest.mark.parametrize(("kind", "attrs", "expected"), [
    ("matmul", {"weight": W}, X @ W),
    ("matmul", {"weight": sp.csr_matrix(W)}, X @ W),
    ("gemm", {"weight": W, "bias": B}, X @ W + B),
    ("relu", {}, np.maximum(X, 0)),
    ("capped_relu", {"cap": 0.5}, np.clip(X, 0, 0.5)),
    ("gelu", {}, gelu(X.astype(np.float64))),
    ("gelu", {"approximate": "tanh"},
     0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X**3)))),
    ("sigmoid", {}, 1 / (1 + np.exp(-X.astype(np.float64)))),
    ("tanh", {}, np.tanh(X)),
    ("softmax", {}, np.exp(X) / np.exp(X).sum(axis=1, keepdims=True)),
    ("layer_norm", {"scale": np.arange(5), "bias": np.ones(5), "epsilon": 1e-3},
     (X - X.mean(1, keepdims=True)) / np.sqrt(X.var(1, keepdims=True) + 1e-3) * np.arange(5) + 1),
    ("bias_add", {"bias": np.arange(5)}, X + np.arange(5)),
    ("identity", {}, X),
], ids=lambda v: v if isinstance(v, str) else "")
def test_every_op_alone_equals_numpy(kind: str, attrs: dict[str, Any],
                                     expected: np.ndarray) -> None:
    out = one_op(kind, **attrs).evaluate(X)["y"]
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_bias_on_nonzero_keeps_zeros() -> None:
    x = np.array([[0.0, 2.0]], np.float32)
    assert one_op("bias_add", width=2, bias=[1, 1], on_nonzero=True).evaluate(x)["y"].tolist() \
        == [[0.0, 3.0]]
    assert one_op("bias_add", width=2, bias=[1, 1]).evaluate(x)["y"].tolist() == [[1.0, 3.0]]


def test_a_dag_with_branches_merges_two_inputs_and_two_outputs() -> None:
    """A residual block, two branches concatenated, a second input added in, two outputs."""
    w1, w2 = RNG.normal(size=(5, 5)), RNG.normal(size=(5, 3))
    m = Model()
    x, z = m.input("x", 5), m.input("z", 8)
    h = m.add("gemm", x, weight=w1, bias=np.ones(5), name="fc")
    res = m.add("add", m.add("gelu", h), x, name="residual")
    norm = m.add("layer_norm", res, scale=np.ones(5), name="norm")
    left = m.add("relu", norm, name="left")
    right = m.add("matmul", norm, weight=w2, name="right")
    both = m.add("concat", left, right, name="both")  # 5 + 3 = 8 features
    merged = m.add("add", both, z, name="merged")
    m.output("merged", m.add("softmax", merged, name="probs"))
    assert m.widths() == {"x": 5, "z": 8, "fc": 5, "gelu0": 5, "residual": 5, "norm": 5,
                          "left": 5, "right": 3, "both": 8, "merged": 8, "probs": 8}
    assert set(m.graph().successors("norm")) == {"left", "right"}
    zv = RNG.normal(size=(6, 8)).astype(np.float32)
    out = m.evaluate({"x": X, "z": zv})
    # numpy, in float64
    r = gelu(X @ w1 + 1) + X
    n = (r - r.mean(1, keepdims=True)) / np.sqrt(r.var(1, keepdims=True) + 1e-5)
    mg = np.hstack([np.maximum(n, 0), n @ w2]) + zv
    np.testing.assert_allclose(out["merged"], mg, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["probs"], np.exp(mg) / np.exp(mg).sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    assert list(out) == ["merged", "probs"]
    assert merged == "merged" and both == "both"


def test_the_graph_challenge_chain_is_a_lowering_bit_for_bit() -> None:
    graph = fsdgraph.sequential(radixnet(1024, 8, seed=3), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    images = synthetic_images(1024, 120, seed=4)
    reference = fsdgraph.reference_inference(images, graph.layers()).toarray()
    model = from_layers(graph.layers())
    assert len(model.nodes) == 8 * 3
    assert np.array_equal(model.evaluate(images)[model.outputs[0]], reference)


def test_the_graph_is_data_and_reads_back_in_any_order() -> None:
    m = Model()
    x = m.input("x", 5)
    h = m.add("matmul", x, weight=sp.csr_matrix(W), name="h")
    m.output(m.add("add", m.add("relu", h, name="r"), h, name="s"))
    data = m.to_dict()
    assert data["format"] == "fsdgraph-model-1"
    assert data["nodes"][0] == {"name": "h", "op": "matmul", "inputs": ["x"], "attrs": {},
                                "params": {"weight": m.nodes["h"].op.params()["weight"]}}
    again = Model.from_dict({**data, "nodes": data["nodes"][::-1]})
    assert list(again.nodes) == ["h", "r", "s"]
    assert np.array_equal(again.evaluate(X)["s"], m.evaluate(X)["s"])


@pytest.mark.parametrize(("nodes", "message"), [
    ([{"name": "a", "op": "relu", "inputs": ["b"]}, {"name": "b", "op": "relu", "inputs": ["a"]}],
     "model: the nodes form a cycle (a -> b)"),
    ([{"name": "a", "op": "relu", "inputs": ["x"]}, {"name": "a", "op": "tanh", "inputs": ["x"]}],
     "model: node 'a' is defined twice"),
    ([{"name": "a", "op": "conv", "inputs": ["x"]}],
     "node 'a': unknown op 'conv'; known: {known}"),
    ([{"name": "a", "op": "relu", "inputs": ["nope"]}],
     "node 'a': input 'nope' is not a model input or an earlier node"),
    ([{"op": "relu", "inputs": ["x"]}], "model: nodes[0] needs a string 'name' and 'op'"),
    ([{"name": "a", "op": "relu", "inputs": "x"}], "node 'a': 'inputs' must be a list of names"),
    ([{"name": "a", "op": "capped_relu", "inputs": ["x"], "attrs": {"cap": 3},
       "params": {"cap": 4}}],
     "node 'a': 'attrs' and 'params' must be mappings with distinct keys other than 'name'"),
    ([{"name": "a", "op": "relu", "inputs": ["x"], "attrs": {"name": "b"}}],
     "node 'a': 'attrs' and 'params' must be mappings with distinct keys other than 'name'"),
])
def test_bad_graph_data_names_the_node(nodes: list[dict[str, Any]], message: str) -> None:
    # The known ops as of now: other tests (and doctests) may have registered some.
    message = message.replace("{known}", ", ".join(op_names()))
    with pytest.raises(GraphError, match=exactly(message)):
        Model.from_dict({"format": "fsdgraph-model-1", "inputs": {"x": 4}, "nodes": nodes,
                         "outputs": []})


def test_building_errors_name_the_node() -> None:
    m = Model()
    x = m.input("x", 5)
    cases: list[tuple[Any, str]] = [
        (lambda: m.add("matmul", x, weight=np.ones((4, 2)), name="mm"),
         "node 'mm': matmul: the weight takes 4 input features, the input gives 5"),
        (lambda: m.add("add", x, m.add("matmul", x, weight=W, name="w4"), name="sum"),
         "node 'sum': add needs inputs of equal width, got 5, 4"),
        (lambda: m.add("add", x, name="lonely"), "node 'lonely': add takes two or more inputs, "
                                                 "got 1"),
        (lambda: m.add("relu", x, x, name="two"), "node 'two': relu takes 1 input(s), got 2"),
        (lambda: m.add("gelu", x, approximate="erf", name="g"),
         "node 'g': gelu: approximate must be 'none' or 'tanh', got 'erf'"),
        (lambda: m.add("capped_relu", x, cap=-1, name="c"),
         "node 'c': capped_relu: cap must be a positive finite number, got -1"),
        (lambda: m.add("capped_relu", x, cap=True, name="c"),
         "node 'c': capped_relu: cap must be a positive finite number, got True"),
        (lambda: m.add("layer_norm", x, scale=np.ones(5), epsilon=float("nan"), name="n"),
         "node 'n': layer_norm: epsilon must be a positive finite number, got nan"),
        (lambda: m.add("relu", x, bogus=1, name="b"),
         "node 'b': relu attributes: Relu.__init__() got an unexpected keyword argument 'bogus'"),
        (lambda: m.add("matmul", x, weight=np.full((5, 2), np.nan), name="nan"),
         "node 'nan': matmul: the weight has NaN or infinite values (after float32)"),
        (lambda: m.add("relu", x, name="x"), "node 'x': the name is taken"),
        (lambda: m.add(Relu(), x, name="r", cap=3), "node 'r': attributes go with an op name, "
                                                    "not an Op instance"),
        (lambda: m.input("y", 0), "input 'y': features must be a positive integer, got 0"),
        (lambda: m.output("nope"), "output 'nope': no input or node of that name"),
        (lambda: m.evaluate(X), "model has no output: declare them with output()"),
    ]
    for build, message in cases:
        with pytest.raises(GraphError, match=exactly(message)):
            build()


def test_bad_inputs_to_evaluate_are_refused() -> None:
    m = Model()
    m.output(m.add("relu", m.input("a", 5)), m.add("relu", m.input("b", 2)))
    cases: list[tuple[Any, str]] = [
        (X, "the model has inputs a, b: give a mapping from input name to array"),
        ({"a": X}, "inputs: missing ['b'], unknown []"),
        ({"a": X, "b": np.ones((6, 3))}, "input 'b': expected rows x 2, got shape (6, 3)"),
        ({"a": X, "b": np.ones((5, 2))}, "input 'b': 5 rows, the other inputs have 6"),
        ({"a": np.full((6, 5), np.inf), "b": np.ones((6, 2))}, "input 'a': NaN or infinite "
                                                               "values"),
    ]
    for inputs, message in cases:
        with pytest.raises(GraphError, match=exactly(message)):
            m.evaluate(inputs)


def test_numpy_scalars_are_numbers_and_gemm_does_not_split_by_input() -> None:
    assert get_op("capped_relu")(np.float32(32)).cap == 32.0
    assert get_op("layer_norm")(np.ones(3), epsilon=np.float64(1e-3)).epsilon == 1e-3
    assert "reduce" in get_op("matmul").splits and "reduce" not in get_op("gemm").splits


def test_users_register_element_wise_and_row_wise_ops() -> None:
    elementwise("double", lambda x: 2 * x)
    rowwise("center", lambda x: x - x.mean(axis=1, keepdims=True))
    m = Model()
    x = m.input("x", 5)
    m.output(m.add("center", m.add("double", x), name="y"))
    np.testing.assert_allclose(m.evaluate(X)["y"], 2 * X - 2 * X.mean(1, keepdims=True),
                               rtol=1e-6, atol=1e-6)
    assert get_op("double").splits == ("rows", "features")
    assert get_op("center").splits == ("rows",)
    with pytest.raises(ConfigError, match=exactly("register: 'relu' is a built-in op")):
        register(type("Shadow", (Relu,), {"kind": "relu"}))
    # Workers run in other processes: such ops serve the serial evaluator, not a run.
    with pytest.raises(ConfigError, match=exactly(
            "op 'center' is registered in this process only: workers run in other processes "
            "and find ops by entry point (group fsdgraph.ops); publish it there to run the "
            "model distributed")):
        fsdgraph.compile(m, 2)
