"""The layer kernels: every path bit-identical to the canonical serial reference, and how a run
chooses one.

Paths: the scipy fallback, the compiled (numba) kernel on one thread and on several. Where numba
is not installed the compiled paths skip with the reason; CI installs it (setup.cfg), so there
they always run, and the fallback runs too (it is asked for by name).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.backends.local import LocalBackend
from fsdgraph.cli import main
from fsdgraph.errors import ConfigError
from fsdgraph.kernels import choice, kernel_from_env, reference_inference, serial_inference
from fsdgraph.kernels.choice import KERNEL_ENV, THREADS_ENV, Kernel, default_threads
from fsdgraph.sources.graphchallenge import BIASES, load_images, load_truth, load_weights
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet

#: (kernel, threads) of every path.
PATHS = [("scipy", 1), ("numba", 1), ("numba", 2)]


@pytest.fixture(params=PATHS, ids=[f"{k}-{t}" for k, t in PATHS])
def kernel(request: pytest.FixtureRequest) -> Kernel:
    name, threads = request.param
    if name == "numba" and not choice.fast_available():
        pytest.skip("numba is not installed: only the scipy kernel can run")
    k = kernel_from_env(name, threads)
    assert k.name == name
    return k


def assert_bit_identical(got: sp.csr_matrix, want: sp.csr_matrix) -> None:
    """Same sparsity, same column order, same float32 bits."""
    got, want = sp.csr_matrix(got), sp.csr_matrix(want)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data.view(np.uint32), want.data.view(np.uint32))


@pytest.mark.official
def test_official_network_every_path_bit_identical(official_data: Path, kernel: Kernel) -> None:
    """The official 1024 x 120 network on the 1200 shipped images: sparse layers first, dense
    ones once the surviving rows saturate; the 19 official categories."""
    layers = fsdgraph.sequential(load_weights(official_data / "neuron1024", 1024, 120),
                                 BIASES[1024], cap=32, bias_on_nonzero=True).layers()
    images = load_images(official_data / "sparse-images-1024-first1200.tsv.gz", 1024)
    got = serial_inference(images, layers, kernel)
    assert_bit_identical(got, reference_inference(images, layers))
    truth = load_truth(official_data / "neuron1024-l120-categories-first1200.tsv")
    np.testing.assert_array_equal(fsdgraph.categories(got), truth)


@pytest.mark.parametrize(("neurons", "layers", "images"), [(4096, 24, 200), (16384, 20, 100)])
def test_generated_networks_every_path_bit_identical(kernel: Kernel, neurons: int, layers: int,
                                                     images: int) -> None:
    """RadiX-Net 4096 and 16384 (two blocks of layers each, so a random row permutation
    too) on generated images, with the official bias for the size."""
    graph = fsdgraph.sequential(radixnet(neurons, layers, seed=3), BIASES[neurons],
                                cap=32, bias_on_nonzero=True)
    y0 = synthetic_images(neurons, images, seed=4)
    want = reference_inference(y0, graph.layers())
    assert want.nnz > 0  # something survives: the comparison is not of two empty matrices
    assert_bit_identical(serial_inference(y0, graph.layers(), kernel), want)


def test_a_plain_mlp_every_path_bit_identical(kernel: Kernel) -> None:
    """Bias everywhere (not only on nonzeros), no cap, negative weights: the dense path with a
    bias that reaches every row, and ReLU cutting rows to zero."""
    rng = np.random.default_rng(11)
    weights = [sp.random(64, 64, density=0.2, format="csr", dtype=np.float32, random_state=rng)
               - sp.random(64, 64, density=0.2, format="csr", dtype=np.float32,
                           random_state=rng) for _ in range(5)]
    graph = fsdgraph.Graph()
    node = graph.input(64)
    for w in weights:
        node = graph.relu(graph.linear(node, w, rng.normal(size=64).astype(np.float32) * 0.1,
                                       bias_on_nonzero=False), cap=None)
    graph.output(node)
    y0 = sp.random(50, 64, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    assert_bit_identical(serial_inference(y0, graph.layers(), kernel),
                         reference_inference(y0, graph.layers()))


# -- choosing a kernel ------------------------------------------------------------------------
def test_auto_is_the_fastest_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert kernel_from_env().name == ("numba" if choice.fast_available() else "scipy")
    monkeypatch.setattr(choice, "fast_available", lambda: False)
    assert kernel_from_env("auto").name == "scipy"


def test_numba_asked_for_but_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice, "fast_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^kernel 'numba' but numba is not installed here"):
        kernel_from_env("numba")


def test_unknown_kernel_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^kernel 'fortran': expected one of auto, numba, "):
        kernel_from_env("fortran")
    monkeypatch.setenv(KERNEL_ENV, "cuda")
    with pytest.raises(ConfigError, match=r"^kernel 'cuda': expected one of auto, numba, "):
        kernel_from_env()
    with pytest.raises(ConfigError, match=r"^kernel 'cuda': expected one of auto, numba, scipy"):
        fsdgraph.RunConfig(kernel="cuda")


@pytest.mark.parametrize(("memory", "threads"), [("128", 1), ("1769", 1), ("3538", 2),
                                                 ("10240", 5), ("99999", 6)])
def test_threads_follow_lambda_memory(monkeypatch: pytest.MonkeyPatch, memory: str,
                                      threads: int) -> None:
    """One thread per vCPU Lambda gives the function: 1 per 1769 MB, at most 6."""
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory)
    assert default_threads() == threads
    monkeypatch.setenv(THREADS_ENV, "3")  # the variable wins
    assert default_threads() == 3


@pytest.mark.parametrize("raw", ["0", "two", "-1"])
def test_bad_thread_counts_are_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(THREADS_ENV, raw)
    with pytest.raises(ConfigError, match=rf"^{THREADS_ENV}='{raw}': expected a whole number"):
        default_threads()


# -- a run reports the kernel its workers ran -------------------------------------------------
@pytest.mark.parametrize("name", ["scipy", "numba"])
def test_a_run_uses_and_reports_the_kernel_asked_for(name: str) -> None:
    if name == "numba" and not choice.fast_available():
        pytest.skip("numba is not installed")
    graph = fsdgraph.sequential(radixnet(1024, 6, seed=5), BIASES[1024],
                                cap=32, bias_on_nonzero=True)
    y0 = synthetic_images(1024, 64, seed=6)
    config = fsdgraph.RunConfig(progress=False, kernel=name, kernel_threads=1)
    backend = LocalBackend()
    try:
        result = fsdgraph.Scheduler(backend, "queue", config).run_sync(
            fsdgraph.compile(graph, workers=3), y0)
    finally:
        backend.close()
    assert result.report["kernel"] == name
    assert {w["kernel"] for w in result.report["per_worker"]} == {name}
    assert_bit_identical(result.activations, reference_inference(y0, graph.layers()))


def test_cli_kernel_option_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``--kernel scipy`` runs the fallback and --compare-serial times both yardsticks; a bad
    FSDGRAPH_KERNEL is a usage error (exit 2) naming the variable."""
    report = tmp_path / "run.json"
    args = ["graphchallenge", "--synthetic", "--neurons", "1024", "--layers", "6", "--images",
            "60", "--workers", "2", "--no-progress"]
    assert main([*args, "--kernel", "scipy", "--report", str(report)]) == 0, \
        capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["kernel"] == "scipy" and data["serial_best_kernel"] == "scipy"
    assert data["serial_s"] > 0 and data["serial_best_s"] > 0
    assert "serial, scipy kernel:" in capsys.readouterr().out
    monkeypatch.setenv(KERNEL_ENV, "fortran")
    assert main(args) == 2
    assert ("environment variable FSDGRAPH_KERNEL: kernel must be one of auto, numba, scipy, "
            "got 'fortran'") in capsys.readouterr().err
