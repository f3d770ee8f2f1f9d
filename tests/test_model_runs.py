"""Op-level models run distributed (data parallel) on the embedded default: every output equals
the serial evaluator's, at P in 1-7, on both channels; bad inputs and plans are refused."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fsdgraph
from fsdgraph.backends.local import LocalBackend
from fsdgraph.errors import ConfigError, InputError
from fsdgraph.model import Model
from fsdgraph.model_plan import ModelPlan

RNG = np.random.default_rng(11)


def residual_mlp(width: int = 24, hidden: int = 48, blocks: int = 2) -> Model:
    """LayerNorm -> Gemm -> GELU -> Gemm, added back, per block; two heads (softmax, tanh)."""
    m = Model()
    x = m.input("x", width)
    for b in range(blocks):
        n = m.add("layer_norm", x, scale=RNG.normal(size=width), bias=RNG.normal(size=width),
                  name=f"b{b}.norm")
        h = m.add("gelu", m.add("gemm", n, weight=RNG.normal(size=(width, hidden)) / 5,
                                bias=RNG.normal(size=hidden), name=f"b{b}.up"))
        d = m.add("gemm", h, weight=RNG.normal(size=(hidden, width)) / 5, name=f"b{b}.down")
        x = m.add("add", x, d, name=f"b{b}.residual")
    m.output(m.add("softmax", m.add("matmul", x, weight=RNG.normal(size=(width, 10))),
                   name="probs"),
             m.add("tanh", x, name="features"))
    return m


@pytest.mark.parametrize("channel", ["queue", "object"])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7])
def test_a_residual_model_runs_distributed_with_the_serial_outputs(
        backend: LocalBackend, channel: str, workers: int) -> None:
    model = residual_mlp()
    x = RNG.normal(size=(45, 24)).astype(np.float32)
    expected = model.evaluate(x)
    plan = fsdgraph.compile(model, workers)
    assert isinstance(plan, ModelPlan) and plan.parallelism()["strategy"] == "data"
    with fsdgraph.Scheduler(backend, channel, fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, {"x": x})
    assert list(result.outputs) == ["probs", "features"]
    for name, value in expected.items():
        # Every op is exact row by row; BLAS may round a row differently in a smaller slice.
        np.testing.assert_allclose(result.outputs[name], value, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    report = result.report
    assert report["workers"] == workers and report["batch"] == 45
    assert report["layers"] == len(model.nodes) and report["bytes_sent"] == 0
    assert report["model"]["ops"] == model.order()
    assert report["model"]["outputs"] == ["probs", "features"]
    assert report["model"]["steps"] == [f"op {model.nodes[n].op.kind} -> {n}@full"
                                        for n in model.order()]
    assert report["model"]["collectives"] == [] and report["model"]["lower_bound_bytes"] == 0
    assert report["parallelism"]["replicas"] == workers
    assert len(report["per_layer"]) == len(model.nodes)


def test_more_workers_than_rows_and_a_single_array_input(backend: LocalBackend) -> None:
    model = residual_mlp(blocks=1)
    x = RNG.normal(size=(3, 24)).astype(np.float32)
    with fsdgraph.Scheduler(backend, "queue", fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(fsdgraph.compile(model, 5), x)  # two workers get no rows
    np.testing.assert_allclose(result.outputs["probs"], model.evaluate(x)["probs"], rtol=1e-4,
                               atol=1e-5)


def test_bad_model_runs_are_refused(backend: LocalBackend) -> None:
    model = residual_mlp(blocks=1)
    with pytest.raises(ConfigError, match=re.escape(
            "strategy 'hybrid': an op-level model runs 'data' parallel (rows split), 'model' "
            "parallel (features split) or 'auto'; hybrid splits layer chains "
            "(fsdgraph.sequential)")):
        fsdgraph.compile(model, 2, strategy="hybrid")
    with pytest.raises(ConfigError, match=re.escape(
            "compile: an op-level model takes only workers, strategy and memory_mb")):
        fsdgraph.compile(model, 2, replicas=2)
    scheduler = fsdgraph.Scheduler(backend, "queue", fsdgraph.RunConfig(progress=False))
    with scheduler, pytest.raises(InputError, match=re.escape(
            "input 'x': expected rows x 24, got shape (4, 5)")):
        scheduler.run_sync(fsdgraph.compile(model, 2), np.ones((4, 5), np.float32))
