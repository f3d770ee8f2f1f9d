"""Tests of the ONNX importer (fsdgraph.sources.onnx).

Every graph here is built with ``onnx.helper`` and run twice: by onnxruntime (CPU) and by the
imported :class:`fsdgraph.model.Model`; the outputs must agree in float32. One graph per
supported op and form, DAGs with branches and merges, every refusal with its exact message, a
file path, and a real model: scikit-learn's MLPClassifier trained on the bundled digits,
exported by skl2onnx.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fsdgraph  # noqa: E402
from fsdgraph.errors import ConfigError, GraphError  # noqa: E402
from fsdgraph.sources.onnx import from_onnx  # noqa: E402

#: An IR version and opsets every supported onnxruntime runs (Gelu needs opset 20).
IR_VERSION = 9
OPSET = 17

SUPPORTED = ("Add, Cast, Concat, Constant, Flatten, Gelu, Gemm, Identity, LayerNormalization, "
             "MatMul, Relu, Reshape, Sigmoid, Softmax, Tanh, com.microsoft.Gelu")

RNG = np.random.default_rng(0)


def normal(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def make(nodes: Sequence[Any], inputs: Mapping[str, int], outputs: Sequence[str],
         inits: Mapping[str, np.ndarray] | None = None, *, opset: int = OPSET,
         domains: Sequence[tuple[str, int]] = (), input_type: int = TensorProto.FLOAT) -> Any:
    """An ONNX model: ``inputs`` are [N, features] float tensors, ``inits`` its initializers."""
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(name, input_type, ["N", width])
         for name, width in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in (inits or {}).items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def run_ort(model: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [out.name for out in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(feeds)), strict=True))


def assert_matches_onnxruntime(model: Any, feeds: Mapping[str, np.ndarray]) -> None:
    want = run_ort(model, feeds)
    got = from_onnx(model).evaluate(feeds)
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def x(width: int = 8, rows: int = 5) -> np.ndarray:
    return normal(rows, width, scale=1.5)


def node(op: str, inputs: Sequence[str], output: str, name: str | None = None,
         **attrs: Any) -> Any:
    return helper.make_node(op, list(inputs), [output], name=name or output, **attrs)


# -- one graph per supported op and form --------------------------------------------------------

W = normal(8, 6)
WT = normal(6, 8)
B6 = normal(6)
B8 = normal(8)
SCALE = normal(8) + 1

CASES: dict[str, Any] = {
    "matmul": make([node("MatMul", ["x", "W"], "y")], {"x": 8}, ["y"], {"W": W}),
    "gemm": make([node("Gemm", ["x", "W", "b"], "y")], {"x": 8}, ["y"], {"W": W, "b": B6}),
    "gemm alpha beta transB": make(
        [node("Gemm", ["x", "W", "b"], "y", alpha=0.5, beta=2.0, transB=1)], {"x": 8}, ["y"],
        {"W": WT, "b": B6.reshape(1, 6)}),
    "gemm without bias": make([node("Gemm", ["x", "W"], "y", alpha=1.5)], {"x": 8}, ["y"],
                              {"W": W}),
    "gemm scalar bias": make([node("Gemm", ["x", "W", "b"], "y")], {"x": 8}, ["y"],
                             {"W": W, "b": np.array([0.25], np.float32)}),
    "bias add": make([node("Add", ["x", "b"], "y")], {"x": 8}, ["y"], {"b": B8}),
    "bias add, bias first, one row": make([node("Add", ["b", "x"], "y")], {"x": 8}, ["y"],
                                          {"b": B8.reshape(1, 8)}),
    "bias add scalar": make([node("Add", ["x", "b"], "y")], {"x": 8}, ["y"],
                            {"b": np.array(-0.5, np.float32)}),
    "add": make([node("Add", ["x", "z"], "y")], {"x": 8, "z": 8}, ["y"]),
    "relu": make([node("Relu", ["x"], "y")], {"x": 8}, ["y"]),
    "sigmoid": make([node("Sigmoid", ["x"], "y")], {"x": 8}, ["y"]),
    "tanh": make([node("Tanh", ["x"], "y")], {"x": 8}, ["y"]),
    "gelu": make([node("Gelu", ["x"], "y")], {"x": 8}, ["y"], opset=20),
    "gelu tanh": make([node("Gelu", ["x"], "y", approximate="tanh")], {"x": 8}, ["y"],
                      opset=20),
    "gelu com.microsoft": make(
        [helper.make_node("Gelu", ["x"], ["y"], name="y", domain="com.microsoft")], {"x": 8},
        ["y"], domains=[("com.microsoft", 1)]),
    "layer norm": make(
        [node("LayerNormalization", ["x", "s", "b"], "y", epsilon=1e-3)], {"x": 8}, ["y"],
        {"s": SCALE, "b": B8}),
    "layer norm without bias, axis 1": make(
        [node("LayerNormalization", ["x", "s"], "y", axis=1)], {"x": 8}, ["y"], {"s": SCALE}),
    "softmax": make([node("Softmax", ["x"], "y")], {"x": 8}, ["y"]),
    "softmax opset 11 axis 1": make([node("Softmax", ["x"], "y", axis=1)], {"x": 8}, ["y"],
                                    opset=11),
    "concat": make([node("Concat", ["x", "z"], "y", axis=1)], {"x": 8, "z": 3}, ["y"]),
    "concat of one": make([node("Concat", ["x"], "y", axis=-1)], {"x": 8}, ["y"]),
    "identity": make([node("Identity", ["x"], "y")], {"x": 8}, ["y"]),
    "flatten": make([node("Flatten", ["x"], "y")], {"x": 8}, ["y"]),
    "reshape -1, width": make([node("Reshape", ["x", "shape"], "y")], {"x": 8}, ["y"],
                              {"shape": np.array([-1, 8], np.int64)}),
    "reshape 0, -1 from a Constant": make(
        [helper.make_node("Constant", [], ["shape"], name="shape",
                          value=numpy_helper.from_array(np.array([0, -1], np.int64))),
         node("Reshape", ["x", "shape"], "y")], {"x": 8}, ["y"]),
    "cast to float": make([node("Cast", ["x"], "y", to=TensorProto.FLOAT)], {"x": 8}, ["y"]),
    "identity of a weight": make(
        [node("Identity", ["W"], "W2"), node("MatMul", ["x", "W2"], "y")], {"x": 8}, ["y"],
        {"W": W}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_supported_op_matches_onnxruntime(case: str) -> None:
    model = CASES[case]
    inputs = [value.name for value in model.graph.input]
    feeds = {name: x(model.graph.input[i].type.tensor_type.shape.dim[1].dim_value)
             for i, name in enumerate(inputs)}
    assert_matches_onnxruntime(model, feeds)


def test_ops_map_to_the_registered_ops_named_after_onnx_values() -> None:
    model = from_onnx(make(
        [node("Cast", ["x"], "xf", to=TensorProto.FLOAT), node("MatMul", ["xf", "W"], "h"),
         node("Add", ["h", "b"], "hb"), node("Relu", ["hb"], "y")],
        {"x": 8}, ["y"], {"W": W, "b": B6}))
    assert model.inputs == {"x": 8}
    assert [(n.name, n.op.kind, n.inputs) for n in model.nodes.values()] == [
        ("xf", "identity", ("x",)), ("h", "matmul", ("xf",)), ("hb", "bias_add", ("h",)),
        ("y", "relu", ("hb",))]
    assert model.outputs == ["y"]
    weight = model.nodes["h"].op.params()["weight"]
    assert weight.dtype == np.float32 and np.array_equal(weight, W)


def test_a_cast_input_of_another_type() -> None:
    model = make([node("Cast", ["x"], "xf", to=TensorProto.FLOAT), node("Relu", ["xf"], "y")],
                 {"x": 8}, ["y"], input_type=TensorProto.INT64)
    ints = RNG.integers(-5, 5, size=(4, 8))
    want = run_ort(model, {"x": ints})["y"]
    assert np.array_equal(from_onnx(model).evaluate({"x": ints})["y"], want)


# -- DAGs ---------------------------------------------------------------------------------------


def test_residual_block() -> None:
    model = make(
        [node("Gemm", ["x", "W1", "b1"], "h"), node("Gelu", ["h"], "g"),
         node("MatMul", ["g", "W2"], "m"), node("Add", ["m", "x"], "r"),
         node("LayerNormalization", ["r", "s", "b"], "y")],
        {"x": 8}, ["y"], {"W1": normal(8, 16), "b1": normal(16), "W2": normal(16, 8),
                          "s": SCALE, "b": B8}, opset=20)
    assert_matches_onnxruntime(model, {"x": x()})


def test_concat_of_two_branches() -> None:
    model = make(
        [node("MatMul", ["x", "Wa"], "a"), node("Relu", ["a"], "ra"),
         node("Gemm", ["x", "Wb", "bb"], "b"), node("Tanh", ["b"], "tb"),
         node("Concat", ["ra", "tb"], "c", axis=1), node("Gemm", ["c", "Wc"], "l"),
         node("Softmax", ["l"], "y")],
        {"x": 8}, ["y"], {"Wa": normal(8, 5), "Wb": normal(8, 7), "bb": normal(7),
                          "Wc": normal(12, 4)})
    assert_matches_onnxruntime(model, {"x": x()})
    assert from_onnx(model).graph().in_degree("c") == 2


def test_two_inputs() -> None:
    model = make(
        [node("Gemm", ["x1", "W1", "b1"], "h1"), node("Gemm", ["x2", "W2"], "h2"),
         node("Add", ["h1", "h2"], "s"), node("Sigmoid", ["s"], "y")],
        {"x1": 8, "x2": 3}, ["y"], {"W1": normal(8, 6), "b1": B6, "W2": normal(3, 6)})
    assert_matches_onnxruntime(model, {"x1": x(8), "x2": x(3)})


def test_two_outputs() -> None:
    model = make(
        [node("Gemm", ["x", "W", "b"], "t"), node("Relu", ["t"], "trunk"),
         node("MatMul", ["trunk", "Wp"], "p"), node("Softmax", ["p"], "classes"),
         node("MatMul", ["trunk", "Wq"], "q"), node("Sigmoid", ["q"], "score")],
        {"x": 8}, ["classes", "score"], {"W": W, "b": B6, "Wp": normal(6, 4),
                                         "Wq": normal(6, 1)})
    assert_matches_onnxruntime(model, {"x": x()})
    picked = from_onnx(model, outputs=["score"])
    assert picked.outputs == ["score"] and "classes" not in picked.nodes


# -- refusals -----------------------------------------------------------------------------------


def refused(model: Any, message: str, **kwargs: Any) -> None:
    with pytest.raises(GraphError, match=f"^{re.escape(message)}$"):
        from_onnx(model, **kwargs)


def test_an_unsupported_op_is_named_with_the_supported_ones() -> None:
    conv = make([node("Conv", ["x", "K"], "y", name="conv0")], {"x": 8}, ["y"],
                {"K": normal(1, 1, 1)})
    refused(conv, f"ONNX node 'conv0' (Conv): unsupported op; supported: {SUPPORTED}")
    erf = make([helper.make_node("Erf", ["x"], ["y"])], {"x": 8}, ["y"])
    refused(erf, f"ONNX node #0 (Erf): unsupported op; supported: {SUPPORTED}")
    fast = make([helper.make_node("FastGelu", ["x"], ["y"], name="fg", domain="com.microsoft")],
                {"x": 8}, ["y"], domains=[("com.microsoft", 1)])
    refused(fast, f"ONNX node 'fg' (com.microsoft.FastGelu): unsupported op; supported: "
                  f"{SUPPORTED}")


def test_an_unsupported_op_on_one_output_suggests_selecting_outputs() -> None:
    model = make([node("Relu", ["x"], "y"), node("Erf", ["x"], "e")], {"x": 8}, ["y", "e"])
    refused(model, f"ONNX node 'e' (Erf): unsupported op; supported: {SUPPORTED}; to import "
                   f"only some of the graph's outputs (y, e), pass outputs=[...]")
    assert from_onnx(model, outputs=["y"]).outputs == ["y"]
    refused(model, "outputs: 'z' is not an output of the ONNX graph; its outputs: y, e",
            outputs=["z"])


@pytest.mark.parametrize(("model", "message"), [
    (make([node("MatMul", ["x", "z"], "y", name="mm")], {"x": 8, "z": 8}, ["y"]),
     "ONNX node 'mm' (MatMul): a product of two activations ('x' @ 'z') is not supported: the "
     "second input must be a weight initializer"),
    (make([node("MatMul", ["x", "W"], "y", name="mm")], {"x": 8}, ["y"]),
     "ONNX node 'mm' (MatMul): weight 'W': no initializer of that name"),
    (make([node("MatMul", ["W", "x"], "y", name="mm")], {"x": 8}, ["y"], {"W": W}),
     "ONNX node 'mm' (MatMul): input 'W' is an initializer (a constant); it must be computed "
     "from the graph inputs"),
    (make([node("MatMul", ["x", "W"], "y", name="mm")], {"x": 8}, ["y"], {"W": B8}),
     "ONNX node 'mm' (MatMul): weight 'W' must be 2-D (in x out), got shape [8]"),
    (make([node("MatMul", ["x", "W"], "y", name="mm")], {"x": 6}, ["y"], {"W": W}),
     "ONNX node 'mm' (MatMul): matmul: the weight takes 8 input features, the input gives 6"),
    (make([node("Gemm", ["x", "W"], "y", name="g", transA=1)], {"x": 8}, ["y"], {"W": W}),
     "ONNX node 'g' (Gemm): transA=1 is not supported: the first input must be the activation, "
     "[batch, features]"),
    (make([node("Gemm", ["x", "W", "c"], "y", name="g")], {"x": 8, "c": 6}, ["y"], {"W": W}),
     "ONNX node 'g' (Gemm): bias 'c' must be an initializer, but it is computed by the graph"),
    (make([node("Add", ["x", "b"], "y", name="a")], {"x": 8}, ["y"], {"b": normal(3, 8)}),
     "ONNX node 'a' (Add): initializer 'b' must broadcast to one row of 8 values, got shape "
     "[3, 8]"),
    (make([node("Add", ["x", "z"], "y", name="a")], {"x": 8, "z": 4}, ["y"]),
     "ONNX node 'a' (Add): add needs inputs of equal width, got 8, 4"),
    (make([node("Softmax", ["x"], "y", name="sm", axis=0)], {"x": 8}, ["y"]),
     "ONNX node 'sm' (Softmax): axis=0 is not supported: only the feature axis (1 or -1) of a "
     "2-D batch"),
    (make([node("Concat", ["x", "x"], "y", name="cat", axis=0)], {"x": 8}, ["y"]),
     "ONNX node 'cat' (Concat): axis=0 is not supported: only the feature axis (1 or -1) of a "
     "2-D batch"),
    (make([node("LayerNormalization", ["x", "s"], "y", name="ln", axis=0)], {"x": 8}, ["y"],
          {"s": SCALE}),
     "ONNX node 'ln' (LayerNormalization): axis=0 is not supported: only the feature axis "
     "(1 or -1) of a 2-D batch"),
    (make([node("LayerNormalization", ["x", "s"], "y", name="ln")], {"x": 8}, ["y"]),
     "ONNX node 'ln' (LayerNormalization): scale 's': no initializer of that name"),
    (make([helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], name="ln")],
          {"x": 8}, ["y", "mean"], {"s": SCALE}),
     "ONNX node 'ln' (LayerNormalization): only its first output is supported, and 'mean' is "
     "used"),
    (make([node("Flatten", ["x"], "y", name="f", axis=0)], {"x": 8}, ["y"]),
     "ONNX node 'f' (Flatten): axis=0 is not supported: on a 2-D batch only axis 1 (or -1) "
     "keeps [batch, features]"),
    (make([node("Reshape", ["x", "shape"], "y", name="r")], {"x": 8}, ["y"],
          {"shape": np.array([1, -1], np.int64)}),
     "ONNX node 'r' (Reshape): a reshape of [batch, 8] to [1, -1] is not supported: only to "
     "the same 2-D batch, [-1, 8] or [0, 8]"),
    (make([node("Reshape", ["x", "shape"], "y", name="r")], {"x": 8}, ["y"],
          {"shape": np.array([-1, 2, 4], np.int64)}),
     "ONNX node 'r' (Reshape): a reshape of [batch, 8] to [-1, 2, 4] is not supported: only to "
     "the same 2-D batch, [-1, 8] or [0, 8]"),
    (make([node("Cast", ["x"], "y", name="c", to=TensorProto.INT64)], {"x": 8}, ["y"]),
     "ONNX node 'c' (Cast): a cast to INT64 is not supported: only to FLOAT"),
    (make([node("Relu", ["x"], "y", name="r")], {"x": 8}, ["y"], input_type=TensorProto.DOUBLE),
     "ONNX node 'r' (Relu): input 'x' is DOUBLE; fsdgraph computes in float32: cast it to FLOAT "
     "first"),
    (make([node("Relu", ["h"], "y", name="r")], {"x": 8}, ["y"]),
     "ONNX node 'r' (Relu): input 'h' is not a graph input, an initializer or an earlier "
     "node's output"),
    (make([node("Gelu", ["x"], "y", name="g", approximate="fast")], {"x": 8}, ["y"], opset=20),
     "ONNX node 'g' (Gelu): gelu: approximate must be 'none' or 'tanh', got 'fast'"),
])
def test_unsupported_forms_name_the_node(model: Any, message: str) -> None:
    refused(model, message)


def graph_with_input(shape: Sequence[int | str] | None) -> Any:
    graph = helper.make_graph(
        [node("Relu", ["x"], "y")], "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION)


@pytest.mark.parametrize(("shape", "got"), [
    (["N", 4, 8], "[N, 4, 8]"), (["N", "F"], "[N, F]"), ([8], "[8]"), (None, "unknown")])
def test_a_graph_input_must_be_a_2d_batch_of_known_width(shape: Any, got: str) -> None:
    refused(graph_with_input(shape), f"graph input 'x': must be 2-D [batch, features] with a "
                                     f"known feature count, got shape {got}")


def test_a_graph_without_activations_or_with_a_constant_output() -> None:
    only_weights = make([node("Relu", ["W"], "y")], {}, ["y"], {"W": W})
    refused(only_weights, "the ONNX graph has no input other than initializers")
    constant_output = make([node("Relu", ["x"], "y")], {"x": 8}, ["y", "W"], {"W": W})
    refused(constant_output, "graph output 'W' is a constant (an initializer); fsdgraph computes "
                             "outputs from the inputs only")


# -- sources ------------------------------------------------------------------------------------


def test_a_file_path(tmp_path: Path) -> None:
    model = CASES["gemm alpha beta transB"]
    path = tmp_path / "gemm.onnx"
    onnx.save(model, str(path))
    feeds = {"x": x()}
    want = run_ort(model, feeds)["y"]
    for source in (path, str(path)):
        np.testing.assert_allclose(from_onnx(source).evaluate(feeds)["y"], want, rtol=1e-4,
                                   atol=1e-5)


def test_bad_sources(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    refused(missing, f"{missing}: file not found")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff\xff not an onnx model")
    with pytest.raises(GraphError, match=f"^{re.escape(str(garbage))}: not an ONNX model"):
        from_onnx(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    refused(empty, f"{empty}: not an ONNX model (no graph)")
    with pytest.raises(TypeError, match=re.escape(
            "from_onnx: expected a path to a .onnx file or an onnx.ModelProto, got int")):
        from_onnx(42)  # type: ignore[arg-type]


def test_external_data_is_read_from_a_path_only(tmp_path: Path) -> None:
    model = make([node("MatMul", ["x", "W"], "y", name="mm")], {"x": 8}, ["y"],
                 {"W": normal(8, 300)})
    feeds = {"x": x()}
    want = run_ort(model, feeds)["y"]
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="big.data",
              size_threshold=0)  # (moves the model's weights out to big.data, in place)
    np.testing.assert_allclose(from_onnx(path).evaluate(feeds)["y"], want, rtol=1e-4, atol=1e-5)
    unread = onnx.load(str(path), load_external_data=False)
    refused(unread, "initializer 'W': its data is in an external file; load the model with "
                    "onnx.load(path), which reads it, or pass the path")


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.data").write_bytes(np.ones(4, np.float32).tobytes())
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[2, 2],
                         data_location=TensorProto.EXTERNAL)
    weight.external_data.add(key="location", value="../outside.data")
    graph = helper.make_graph(
        [node("MatMul", ["x", "W"], "y")], "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "models" / "escape.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                ir_version=IR_VERSION), str(path))
    with pytest.raises(GraphError, match=f"^{re.escape(f'{path}: cannot load the ONNX model (')}"):
        from_onnx(path)


def test_without_onnx_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # what a missing package looks like
    with pytest.raises(ConfigError, match=re.escape("pip install 'fsdgraph[onnx]'")):
        from_onnx("model.onnx")


def test_exported_from_the_package() -> None:
    assert fsdgraph.from_onnx is from_onnx
    from fsdgraph.model import Model
    assert fsdgraph.Model is Model


# -- a real model: scikit-learn's MLP on the digits ---------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any, np.ndarray]:
    """scikit-learn's MLPClassifier trained on the bundled digits, its skl2onnx export, and the
    1797 images."""
    datasets = pytest.importorskip("sklearn.datasets")
    neural_network = pytest.importorskip("sklearn.neural_network")
    exceptions = pytest.importorskip("sklearn.exceptions")
    skl2onnx = pytest.importorskip("skl2onnx")
    data_types = pytest.importorskip("skl2onnx.common.data_types")

    features, labels = datasets.load_digits(return_X_y=True)
    clf = neural_network.MLPClassifier(hidden_layer_sizes=(64, 32), random_state=0,
                                       max_iter=300)
    with warnings.catch_warnings():
        # Whether 300 iterations converge depends on the scikit-learn version; the tests are the
        # export's agreement with the classifier, whatever its fit.
        warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
        clf.fit(features, labels)
    exported = skl2onnx.convert_sklearn(
        clf, initial_types=[("input", data_types.FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}})
    return clf, exported, features


def test_digits_mlp_from_skl2onnx(digits: tuple[Any, Any, np.ndarray]) -> None:
    clf, exported, features = digits
    # The label output goes through ArgMax and ai.onnx.ml's ArrayFeatureExtractor: refused,
    # with the way out; the probabilities are the model.
    with pytest.raises(GraphError, match=re.escape("pass outputs=[...]")):
        from_onnx(exported)
    model = from_onnx(exported, outputs=["probabilities"])
    assert {n.op.kind for n in model.nodes.values()} <= {
        "identity", "matmul", "bias_add", "relu", "softmax"}

    X = features.astype(np.float32)
    probabilities = model.evaluate({"input": X})["probabilities"]
    assert probabilities.shape == (1797, 10)
    assert np.array_equal(clf.classes_[probabilities.argmax(axis=1)], clf.predict(features))
    np.testing.assert_allclose(probabilities, clf.predict_proba(features), rtol=0, atol=1e-4)
    np.testing.assert_allclose(probabilities, run_ort(exported, {"input": X})["probabilities"],
                               rtol=1e-4, atol=1e-5)


def test_digits_mlp_runs_distributed(digits: tuple[Any, Any, np.ndarray]) -> None:
    clf, exported, features = digits
    model = from_onnx(exported, outputs=["probabilities"])
    inputs = {"input": features.astype(np.float32)}
    config = fsdgraph.RunConfig(progress=False)
    with fsdgraph.Scheduler("inproc", "object", config) as scheduler:
        result = scheduler.run_sync(fsdgraph.compile(model, 3), inputs)
    probabilities = result.outputs["probabilities"]
    np.testing.assert_allclose(probabilities, model.evaluate(inputs)["probabilities"],
                               rtol=1e-4, atol=1e-5)
    assert np.array_equal(clf.classes_[probabilities.argmax(axis=1)], clf.predict(features))
