"""``fsdgraph run MODEL.onnx``: a real model (scikit-learn's MLP on the digits, exported with
skl2onnx) run distributed at P = 4 with scikit-learn's predictions and onnxruntime's outputs;
inputs and outputs as numpy files; every bad input a clear error and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fsdgraph.cli import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, np.ndarray]:
    """The digits MLP as an ONNX file, the 1797 digits as X.npy, the classifier, the images."""
    datasets = pytest.importorskip("sklearn.datasets")
    neural = pytest.importorskip("sklearn.neural_network")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    features, labels = datasets.load_digits(return_X_y=True)
    clf = neural.MLPClassifier(hidden_layer_sizes=(64, 32), random_state=0, max_iter=300)
    clf.fit(features / 16.0, labels)
    exported = skl2onnx.convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))],
                                        options={id(clf): {"zipmap": False}})
    folder = tmp_path_factory.mktemp("digits")
    onnx.save(exported, folder / "digits.onnx")
    x = (features / 16.0).astype(np.float32)
    np.save(folder / "x.npy", x)
    return folder / "digits.onnx", folder / "x.npy", clf, features / 16.0


def test_the_digits_mlp_runs_distributed_with_scikit_learns_predictions(
        digits: tuple[Path, Path, Any, np.ndarray], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model, x, clf, features = digits
    out, report = tmp_path / "p.npy", tmp_path / "run.json"
    code = main(["run", str(model), "--input", str(x), "--outputs", "probabilities",
                 "--output", str(out), "--workers", "4", "--compare-reference",
                 "--report", str(report), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "on 4 workers (local backend, data parallel)" in printed
    assert printed.rstrip().endswith("PASSED")
    probabilities = np.load(out)
    assert probabilities.shape == (1797, 10)
    assert np.array_equal(clf.classes_[probabilities.argmax(axis=1)], clf.predict(features))
    np.testing.assert_allclose(probabilities, clf.predict_proba(features), atol=1e-4)
    data = json.loads(report.read_text())
    assert data["workers"] == 4 and data["batch"] == 1797
    assert data["reference"]["passed"] is True
    assert data["reference"]["outputs"]["probabilities"]["max_rel_diff"] <= 1e-4
    assert data["parallelism"]["strategy"] == "data"


def test_the_digits_mlp_split_by_features_passes_against_onnxruntime(
        digits: tuple[Path, Path, Any, np.ndarray], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model, x, clf, features = digits
    out, report = tmp_path / "p.npy", tmp_path / "run.json"
    code = main(["run", str(model), "--input", str(x), "--outputs", "probabilities",
                 "--output", str(out), "--workers", "4", "--strategy", "model",
                 "--channel", "object", "--compare-reference", "--report", str(report),
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "on 4 workers (local backend, model parallel)" in printed
    assert printed.rstrip().endswith("PASSED")
    probabilities = np.load(out)
    assert np.array_equal(clf.classes_[probabilities.argmax(axis=1)], clf.predict(features))
    data = json.loads(report.read_text())
    assert data["parallelism"]["strategy"] == "model" and data["bytes_sent"] > 0
    # 64 -> 64 by columns, 64 -> 32 and 32 -> 10 by rows (a reduction each), then the softmax's
    # row statistics
    assert [c["kind"] for c in data["model"]["collectives"]] == \
        ["reduce_scatter", "reduce_scatter", "row_stats"]


def two_heads(path: Path) -> None:
    """Inputs a (3 features) and b (2); outputs s = relu(a @ W) and t = tanh(b)."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "W"], ["m"]), helper.make_node("Relu", ["m"], ["s"]),
         helper.make_node("Tanh", ["b"], ["t"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_several_inputs_and_outputs_as_npz(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    two_heads(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(9, 3)).astype(np.float32), rng.normal(size=(9, 2)).astype(np.float32)
    np.savez(tmp_path / "x.npz", a=a, b=b)
    assert main(["run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npz"),
                 "--output", str(tmp_path / "y.npz"), "--workers", "2", "--compare-reference",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASSED")
    with np.load(tmp_path / "y.npz") as y:
        assert sorted(y.files) == ["s", "t"]
        w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
        np.testing.assert_allclose(y["s"], np.maximum(a @ w, 0), rtol=1e-6)
        np.testing.assert_allclose(y["t"], np.tanh(b), rtol=1e-6)


def test_bad_inputs_exit_2_with_the_reason(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    two_heads(tmp_path / "m.onnx")
    np.save(tmp_path / "one.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "wide.npz", a=np.ones((4, 5), np.float32), b=np.ones((4, 2), np.float32))
    (tmp_path / "text.npy").write_text("not numpy")
    cases = [
        (["--input", str(tmp_path / "missing.npy")], f"--input {tmp_path / 'missing.npy'}: file "
                                                     f"not found"),
        (["--input", str(tmp_path / "one.npy")], "the model has inputs a, b: give an .npz with "
                                                 "one array per name"),
        (["--input", str(tmp_path / "text.npy")], f"--input {tmp_path / 'text.npy'}: not a numpy "
                                                  f".npy or .npz file"),
        (["--input", str(tmp_path / "objects.npy")], f"--input {tmp_path / 'objects.npy'}: not a "
                                                     f"numpy .npy or .npz file"),
        (["--input", str(tmp_path / "wide.npz")], "input 'a': expected rows x 3, got shape "
                                                  "(4, 5)"),
    ]
    for options, message in cases:
        assert main(["run", str(tmp_path / "m.onnx"), *options, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err
    assert main(["run", str(tmp_path / "nope.onnx"), "--input", str(tmp_path / "one.npy")]) == 2
    assert f"{tmp_path / 'nope.onnx'}: file not found" in capsys.readouterr().err
