"""The planner: data parallel where the model fits, model or hybrid where it does not; what it
reports; its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph.cli import main
from fsdgraph.errors import ConfigError
from fsdgraph.planner import choose, worker_bytes
from fsdgraph.sources.graphchallenge import graphchallenge_bias, load_weights
from fsdgraph.sources.images import synthetic_images
from fsdgraph.sources.radixnet import radixnet


def exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


@pytest.fixture(scope="module")
def official_layers(official_data: Path) -> list[fsdgraph.Layer]:
    weights = load_weights(official_data / "neuron1024", 1024, 120)
    return fsdgraph.sequential(weights, -0.3, cap=32, bias_on_nonzero=True).layers()


@pytest.mark.official
@pytest.mark.parametrize("workers", [2, 4, 8])
def test_the_official_network_on_3_gb_workers_is_planned_data_parallel(
        official_layers: list[fsdgraph.Layer], workers: int) -> None:
    """32 MB of weights fit a 3 GB function many times over: no exchange at all wins."""
    choice = choose(official_layers, workers, memory_mb=3008, channel="queue", images=10_000)
    assert choice.plan.strategy == "data" and choice.plan.replicas == workers
    assert not choice.plan.edges
    assert choice.predicted["wall_s"] > 0 and choice.predicted["cost_usd"] > 0
    weighed = {(c.strategy, c.replicas) for c in choice.candidates}
    assert ("model", 1) in weighed and ("data", workers) in weighed
    data = next(c for c in choice.candidates if c.strategy == "data")
    others = [c for c in choice.candidates if c.predicted_wall_s is not None and c is not data]
    assert data.predicted_wall_s is not None
    assert all(data.predicted_wall_s <= c.predicted_wall_s for c in others)


@pytest.fixture(scope="module")
def big_layers() -> list[fsdgraph.Layer]:
    """A 4096-neuron, 40-layer RadiX-Net: 5.2 M weights, 63 MB as a worker holds them."""
    return fsdgraph.sequential(radixnet(4096, 40, seed=1), graphchallenge_bias(4096),
                               cap=32, bias_on_nonzero=True).layers()


def test_a_model_that_does_not_fit_a_function_is_never_planned_data_parallel(
        big_layers: list[fsdgraph.Layer]) -> None:
    whole = worker_bytes(big_layers, 1, 25)  # data parallel: every worker 25 of the 100 images
    quarter = worker_bytes(big_layers, 4, 100)
    # A function whose usable memory holds a quarter of the model but not all of it.
    memory_mb = int((whole + quarter) / 2 / 0.8 / 2**20)
    choice = choose(big_layers, 4, memory_mb=memory_mb, images=100)
    assert choice.plan.strategy in ("model", "hybrid")
    data = next(c for c in choice.candidates if c.strategy == "data")
    assert not data.fits and data.predicted_wall_s is None
    assert data.refused == (f"a worker needs {whole / 2**20:.0f} MiB, "
                            f"{int(memory_mb * 2**20 * 0.8) / 2**20:.0f} MiB usable of "
                            f"{memory_mb} MB")
    chosen = next(c for c in choice.candidates
                  if (c.strategy, c.replicas) == (choice.plan.strategy, choice.plan.replicas))
    assert chosen.fits and chosen.predicted_wall_s is not None


def test_when_nothing_fits_the_planner_says_so(big_layers: list[fsdgraph.Layer]) -> None:
    needs = worker_bytes(big_layers, 2, 100) / 2**20  # the widest share: model parallel
    with pytest.raises(ConfigError, match=exactly(
            f"no way to share the model over 2 workers fits 128 MB functions: a worker needs "
            f"{needs:.0f} MiB, 102 MiB usable of 128 MB; use more workers or memory")):
        choose(big_layers, 2, memory_mb=128, images=100)


@pytest.mark.parametrize("kwargs,message", [
    ({"objective": "speed"}, "objective 'speed': expected one of time, cost"),
    ({"images": 0}, "images must be a positive integer, got 0"),
    ({"live_rows": [1.0, 0.5]}, "live_rows must give 3 fractions in [0, 1] (one per layer), "
                                "got 2"),
    ({"sample": sp.csr_matrix((0, 32), dtype=np.float32)},
     "sample: no rows to measure the live rows on"),
    ({"memory_mb": []}, "memory_mb: expected an integer or a non-empty list of them, got []"),
    ({"memory_mb": [1769, 0]}, "memory_mb: expected positive integers, got [1769, 0]"),
    ({"channel": ["queue", 3]},
     "channel: expected a string or a non-empty list of them, got ['queue', 3]"),
])
def test_planner_errors_say_what_is_expected(kwargs: dict[str, object], message: str) -> None:
    w = sp.random(32, 32, density=0.2, format="csr", dtype=np.float32, random_state=0)
    with pytest.raises(ConfigError, match=exactly(message)):
        choose(fsdgraph.sequential([w] * 3, bias=-0.1).layers(), 2, **kwargs)  # type: ignore[arg-type]


def test_on_request_the_planner_also_picks_the_worker_count_memory_and_channel() -> None:
    """Lists of P, memory sizes and channels: every combination is weighed, and the winner is
    the fitting candidate with the least predicted time (or cost)."""
    layers = fsdgraph.sequential(radixnet(1024, 12, seed=2), graphchallenge_bias(1024),
                                 cap=32, bias_on_nonzero=True).layers()
    for objective, score in (("time", "predicted_wall_s"), ("cost", "predicted_cost_usd")):
        choice = choose(layers, [1, 2, 4], memory_mb=[1769, 3008],
                        channel=["queue", "object"], images=2000, objective=objective)
        setups = {(c.workers, c.memory_mb, c.channel) for c in choice.candidates}
        assert setups == {(p, m, c) for p in (1, 2, 4) for m in (1769, 3008)
                          for c in ("queue", "object")}
        weighed = [c for c in choice.candidates if getattr(c, score) is not None]
        chosen = next(c for c in weighed if (c.workers, c.memory_mb, c.channel, c.strategy,
                                             c.replicas, c.collapse_at) == (
            choice.plan.workers, choice.memory_mb, choice.channel, choice.plan.strategy,
            choice.plan.replicas, choice.plan.collapse_at))
        assert getattr(chosen, score) == min(getattr(c, score) for c in weighed)
        assert choice.to_dict()["channel"] == chosen.channel


def test_a_sample_whose_images_die_offers_a_collapsed_candidate() -> None:
    layers = fsdgraph.sequential(radixnet(1024, 24, seed=2), graphchallenge_bias(1024),
                                 cap=32, bias_on_nonzero=True).layers()
    images = synthetic_images(1024, 400, seed=3)
    choice = choose(layers, 2, images=400, sample=images)
    collapsed = [c for c in choice.candidates if c.collapse_at is not None]
    # Fewer than 1000 images are alive from the start: the first candidate layer is layer 1.
    assert collapsed and all(c.collapse_at == 1 for c in collapsed)
    assert all(c.strategy in ("model", "hybrid") for c in collapsed)


def test_an_auto_run_reports_the_choice_its_prediction_and_the_measured_time() -> None:
    graph = fsdgraph.sequential(radixnet(1024, 12, seed=4), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    images = synthetic_images(1024, 300, seed=6)
    plan = fsdgraph.compile(graph, 2, strategy="auto", images=300, sample=images,
                            channel="object", profile="local")
    assert plan.planned is not None and plan.planned["objective"] == "time"
    with fsdgraph.Scheduler("local", "object", fsdgraph.RunConfig(progress=False)) as scheduler:
        result = scheduler.run_sync(plan, images)
    reference = fsdgraph.reference_inference(images, graph.layers())
    assert (result.activations != reference).nnz == 0
    planned = result.report["planned"]
    assert planned["strategy"] == plan.strategy == result.report["parallelism"]["strategy"]
    assert planned["measured_wall_s"] == result.report["wall_s"]
    assert planned["predicted"]["wall_s"] > 0
    assert {c["strategy"] for c in planned["candidates"]} >= {"data", "model"}


def test_plan_auto_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--synthetic", "--layers", "6", "--workers", "2", "--strategy",
                 "auto", "--memory", "3008"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["strategy"] == summary["planned"]["strategy"] == "data"
    assert summary["planned"]["memory_mb"] == 3008


def test_auto_with_replicas_on_the_command_line_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--synthetic", "--layers", "2", "--workers", "2", "--strategy",
                 "auto", "--replicas", "2"]) == 2
    assert capsys.readouterr().err == (
        "fsdgraph: error: --replicas and --collapse-at are the planner's to choose with "
        "--strategy auto; give them with model or hybrid\n")


def test_a_bad_strategy_setting_names_its_source(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSDGRAPH_STRATEGY", "pipeline")
    assert main(["plan", "--synthetic", "--layers", "2", "--workers", "2"]) == 2
    assert capsys.readouterr().err == (
        "fsdgraph: error: environment variable FSDGRAPH_STRATEGY: strategy must be auto or one "
        "of model, data, hybrid, got 'pipeline'\n")
