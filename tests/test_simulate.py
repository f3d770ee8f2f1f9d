"""The simulator (fsdgraph.simulate): its calibration on the paper's measured AWS runs, profiles,
determinism, what the model says about workers and strategies, a local run against its
prediction, and the ``fsdgraph simulate`` command.

Tests on the paper's runs use the ``paper_data`` fixture: where ``../shared`` is absent they skip
with the reason shown; with ``FSDGRAPH_REQUIRE_OFFICIAL=1`` that absence is a failure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import fsdgraph
from fsdgraph.cli import main
from fsdgraph.errors import ConfigError
from fsdgraph.simulate import (
    Engine,
    calibrate,
    expected,
    load_profile,
    measure_kernel_costs,
    predict,
    predict_plan,
)
from fsdgraph.simulate.calibrate import FREE, Calibration, expand, fit
from fsdgraph.simulate.profile import BUILTIN
from fsdgraph.simulate.protocols import fsdgraph_requests
from fsdgraph.simulate.workload import Workload, all_to_all
from fsdgraph.sources.graphchallenge import graphchallenge_bias
from fsdgraph.sources.radixnet import radixnet

SIZES = {1024, 4096, 16384, 65536}


@pytest.fixture(scope="module")
def calibration(paper_data: Path) -> Calibration:
    """The shipped paper profile (fitted on the training runs only) on all 35 runs."""
    return calibrate(paper_data, fit_params=False)


# -- calibration ---------------------------------------------------------------------------------

def test_calibration_meets_its_goals_on_the_left_out_runs(calibration: Calibration) -> None:
    """Left-out runs: median |relative error| <= 25% for the summed Lambda runtime and <= 10%
    for the paper's bill; the left-out runs cover every size and both channels."""
    left_out = [r for r in calibration.runs if not r["train"]]
    assert len(calibration.runs) == 36 and len(left_out) == 17  # 15 queue + 21 object rows
    assert {r["neurons"] for r in left_out} == SIZES
    assert {r["channel"] for r in left_out} == {"queue", "object"}
    for channel in ("queue", "object"):
        assert {r["neurons"] for r in left_out if r["channel"] == channel} == SIZES
    assert calibration.median_abs_err_time <= 0.25
    assert calibration.median_abs_err_cost <= 0.10
    # What is compared: the CSV's runtime, and the spreadsheet bill of the same row.
    c1 = next(r for r in calibration.runs if r["config"] == "c1_1024n_8w_10000bs_SQS")
    assert c1["time_measured_s"] == pytest.approx(568.61206)
    assert round(c1["cost_measured_usd"], 7) == 0.0215316
    report = calibration.to_dict()
    assert report["predicted_column"] == "METRIC_LAMBDA_RUNTIME"
    assert report["median_abs_err_time"] == calibration.median_abs_err_time
    assert "even positions train" in report["split"]


def test_the_fit_reproduces_the_shipped_paper_profile(paper_data: Path) -> None:
    """The paper profile's numbers are the fit's output, not typed in: refitting the compute
    and the queue channel on the training runs gives them again."""
    params = fit(paper_data, channels=("queue",))
    shipped = load_profile("paper")
    for key, value in expand(params).items():
        # The optimizer stops at its own tolerance: a refit agrees to ~1e-5, not bit for bit.
        assert shipped.num(key) == pytest.approx(value, rel=1e-4), key
        assert shipped.source(key).startswith("fit:"), key
    assert set(FREE["queue"]) <= set(params)


# -- profiles ------------------------------------------------------------------------------------

def test_every_number_of_every_profile_has_a_source() -> None:
    for name in BUILTIN:
        profile = load_profile(name)
        for key, value in profile.values.items():
            if not isinstance(value, str):
                assert profile.source(key).strip(), f"{name}: {key}"
    aws = load_profile("aws")
    assert aws.source("function.mb_per_vcpu").startswith("AWS Lambda docs")
    assert aws.source("kernel.dense_s_per_mac").startswith("measured:")
    assert load_profile("paper").num("object.poll_interval_s") == 0.1


def test_a_user_profile_is_merged_over_aws(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[request.put]\nmedian_s = 0.05\n[function]\n'
                    'bandwidth_mb_s = { value = 150, source = "my measurement" }\n')
    profile = load_profile(path)
    assert profile.num("request.put.median_s") == 0.05
    assert profile.source("request.put.median_s") == f"file {path}"
    assert profile.source("function.bandwidth_mb_s") == "my measurement"
    assert profile.num("request.get.median_s") == load_profile("aws").num("request.get.median_s")


def test_an_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[request.put]\nmedain_s = 0.05\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'request.put.medain_s'"):
        load_profile(path)


def test_a_wrong_type_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[function]\nbandwidth_mb_s = "fast"\n')
    with pytest.raises(ConfigError,
                       match=rf"{path}: function.bandwidth_mb_s must be a number, got 'fast'"):
        load_profile(path)
    path.write_text('[protocol]\nname = 3\n')
    with pytest.raises(ConfigError, match=rf"{path}: protocol.name must be text, got 3"):
        load_profile(path)
    path.write_text("[function\n")
    with pytest.raises(ConfigError, match=rf"{path}: not valid TOML"):
        load_profile(path)
    with pytest.raises(ConfigError, match=r"overrides: unknown key 'nope'"):
        load_profile("aws", {"nope": 1})


# -- the model -----------------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_prediction() -> None:
    kwargs = {"neurons": 1024, "layers": 30, "workers": 6, "images": 2000, "channel": "queue"}
    a, b = predict(**kwargs, seed=7), predict(**kwargs, seed=7)  # type: ignore[arg-type]
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    c = predict(**kwargs, seed=8)  # type: ignore[arg-type]
    assert c.wall_s != a.wall_s
    assert c.requests == a.requests  # only latencies are sampled


def test_the_mean_field_is_the_event_loop_without_noise() -> None:
    """expected() (used to fit) is the event loop with every latency at its mean."""
    profile = load_profile("aws")
    for channel in ("queue", "object"):
        work = _exchange_workload(5, 40_000.0, channel, profile)
        loop = Engine(work, profile, memory_mb=1769, noise=False, rate_limits=False).run()
        mean = expected(work, profile, memory_mb=1769)
        np.testing.assert_allclose(loop.finish, mean.finish, rtol=1e-9)
        np.testing.assert_allclose(loop.wait, mean.wait, rtol=1e-9, atol=1e-12)


def _exchange_workload(workers: int, volume: float, channel: str,
                       profile: fsdgraph.simulate.Profile, layers: int = 20) -> Workload:
    """``workers`` exchanging ``volume`` bytes per layer all to all, a little compute each."""
    src, dst = all_to_all(workers, 1)
    per_edge = volume / len(src)
    edges = [(l, int(s), int(d), per_edge) for l in range(1, layers)
             for s, d in zip(src, dst, strict=True)]
    req, sent, got = fsdgraph_requests(channel, workers, layers, edges, profile)
    shape = (workers, layers)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    pairs = [empty] + [(src, dst)] * (layers - 1)
    return Workload(workers, layers, channel, 1000, 4, np.full(shape, 1e5 / workers),
                    np.zeros(shape, np.int64), sent, got, req, pairs, np.zeros(workers))


def test_more_workers_for_the_same_volume_add_latency_bound_time() -> None:
    """The same bytes per layer spread over more workers: more requests, each paying a
    latency, so the per-layer communication time grows (the paper's ~0.45 s floor)."""
    profile = load_profile("aws")
    for channel in ("queue", "object"):
        walls = []
        for workers in (4, 16, 48):
            work = _exchange_workload(workers, 2e6, channel, profile)
            timeline = Engine(work, profile, memory_mb=1769, seed=1).run()
            per_layer = (timeline.send + timeline.receive + timeline.wait)[:, 1:].mean()
            walls.append((timeline.wall_s - timeline.start.max(), per_layer))
        assert walls[0][1] < walls[1][1] < walls[2][1], (channel, walls)
        assert walls[0][0] < walls[2][0], (channel, walls)


def test_data_parallelism_makes_no_exchange_requests() -> None:
    data = predict(neurons=1024, layers=60, workers=8, images=8000, strategy="data")
    model = predict(neurons=1024, layers=60, workers=8, images=8000, strategy="model")
    assert data.bytes == 0 and data.breakdown["wait"] == 0 and data.breakdown["send"] == 0
    assert {k for k, v in data.requests.items() if v} == {"invoke", "put", "get"}
    assert data.requests["put"] == data.requests["get"] == 8  # outputs and shards only
    assert model.requests["publish"] > 0 and model.bytes > 0
    hybrid = predict(neurons=1024, layers=60, workers=8, images=8000, strategy="hybrid",
                     replicas=2)
    assert 0 < hybrid.requests["receive"] < model.requests["receive"]  # 3 peers, not 7
    assert 0 < hybrid.bytes < model.bytes
    with pytest.raises(ConfigError, match="replicas=3 must divide workers=8"):
        predict(neurons=1024, layers=60, workers=8, images=8000, strategy="hybrid", replicas=3)


def test_a_data_parallel_plan_makes_no_exchange_requests() -> None:
    graph = fsdgraph.sequential(radixnet(1024, 6, seed=3), graphchallenge_bias(1024),
                                cap=32, bias_on_nonzero=True)
    plan = fsdgraph.compile(graph, 4, strategy="data")
    assert plan.edges == []
    p = predict_plan(plan, images=400, channel="object")
    assert p.bytes == 0 and p.requests["put"] == 4 and "receive" not in p.requests
    model = predict_plan(fsdgraph.compile(graph, 4), images=400, channel="object")
    assert model.requests["put"] > 4


def test_the_concurrency_quota_is_enforced() -> None:
    with pytest.raises(ConfigError, match=r"1200 workers need 1200 concurrent functions, but "
                                          r"profile aws allows 1000 \(function.concurrency\)"):
        predict(neurons=4096, layers=4, workers=1200, images=1200, strategy="data")
    raised = load_profile("aws", {"function.concurrency": 2000})
    assert predict(neurons=4096, layers=4, workers=1200, images=1200, strategy="data",
                   profile=raised).workers == 1200


def test_memory_buys_cpu() -> None:
    """1 vCPU per 1769 MB: a compute-bound run (data parallel) gets faster with memory."""
    small = predict(neurons=4096, layers=40, workers=2, images=10000, strategy="data",
                    memory_mb=884)
    big = predict(neurons=4096, layers=40, workers=2, images=10000, strategy="data",
                  memory_mb=3538)
    assert big.breakdown["compute"] < small.breakdown["compute"] / 3


def test_kernel_costs_are_measured_here() -> None:
    costs = measure_kernel_costs(rows=300, repeat=1)
    assert str(costs["source"]).startswith("measured: measure_kernel_costs")
    assert all(0 < costs[p] < 1e-5 for p in ("gustavson", "tiled", "dense"))
    assert costs["dense"] < costs["gustavson"]  # per useful multiply-add


# -- the command ---------------------------------------------------------------------------------

def test_the_command_prints_time_cost_and_breakdown(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    code = main(["simulate", "--neurons", "4096", "--layers", "120", "--workers", "20",
                 "--channel", "object", "--memory", "3538", "--images", "10000",
                 "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert "predicted with profile aws: 20 workers, 120 layers, 10000 images, object" in out
    for word in ("wall time", "billed time", "cost", "compute", "wait", "requests: "):
        assert word in out
    data = json.loads(report.read_text())
    for key in ("wall_s", "cost_usd", "breakdown", "requests", "bytes", "timeline", "bill"):
        assert key in data
    assert data["workers"] == 20 and data["memory_mb"] == 3538 and data["channel"] == "object"
    assert set(data["breakdown"]) >= {"launch", "load", "compute", "send", "receive", "wait"}
    assert len(data["timeline"]["compute"]) == 20 and len(data["timeline"]["compute"][0]) == 120
    assert math.isclose(data["cost_usd"], data["bill"]["total"])


def test_the_command_simulates_the_compiled_plan_of_a_network(
        official_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--weights: the plan compiled from the official network, here chosen by the planner
    (the 32 MB network fits 3 GB functions, so data parallel) and then a model-parallel one,
    whose exchange edges the prediction sends."""
    report = tmp_path / "r.json"
    base = ["simulate", "--weights", str(official_data), "--neurons", "1024", "--layers", "120",
            "--workers", "4", "--memory", "3008", "--report", str(report)]
    assert main([*base, "--strategy", "auto"]) == 0
    out = capsys.readouterr().out
    assert "plan: 4 workers, data, 4 replica(s) of 1, collapse at None, 0 exchange edges" in out
    data = json.loads(report.read_text())
    assert data["strategy"] == "data" and data["planned"]["objective"] == "time"
    assert data["requests"].get("publish", 0) == 0
    assert main([*base, "--strategy", "model", "--partitioner", "contiguous"]) == 0
    assert "plan: 4 workers, model, 1 replica(s) of 4" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["strategy"] == "model" and data["planned"] is None
    assert data["requests"]["publish"] > 0 and data["bytes"] > 0
    # The planner may also pick P, the memory and the channel from lists.
    assert main([*base[:-6], "--workers", "2,4", "--memory", "1769,3008", "--channel",
                 "queue,object", "--strategy", "auto", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    setups = {(c["workers"], c["memory_mb"], c["channel"]) for c in data["planned"]["candidates"]}
    assert setups == {(p, m, c) for p in (2, 4) for m in (1769, 3008) for c in ("queue", "object")}
    assert (data["memory_mb"], data["channel"]) == (data["planned"]["memory_mb"],
                                                    data["planned"]["channel"])
    fastest = min(c["predicted_wall_s"] for c in data["planned"]["candidates"]
                  if c["predicted_wall_s"] is not None)
    assert data["planned"]["predicted"]["wall_s"] == pytest.approx(fastest, rel=0.5)
    capsys.readouterr()
    assert main(["simulate", "--neurons", "1024", "--workers", "2,4"]) == 2
    assert ("lists of --workers are for the planner to choose from: give --strategy auto (and "
            "the network with --weights DIR)") in capsys.readouterr().err
    assert main(["simulate", "--neurons", "1024", "--workers", "4", "--strategy", "auto"]) == 2
    assert ("--strategy auto and --collapse-at need a compiled plan: give the network with "
            "--weights DIR") in capsys.readouterr().err


def test_a_bad_profile_file_exits_2_naming_it(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[request.put]\nmedian_s = -1\n")
    assert main(["simulate", "--neurons", "1024", "--workers", "8",
                 "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: request.put.median_s must be >= 0" in err
    assert main(["simulate", "--neurons", "1024", "--workers", "8",
                 "--profile", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: cannot read the profile" in capsys.readouterr().err
    assert main(["simulate", "--layers", "3"]) == 2
    assert "needs --neurons and --workers" in capsys.readouterr().err


def test_the_paper_calibration_command(paper_data: Path, tmp_path: Path,
                                       calibration: Calibration,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    report, plot = tmp_path / "cal.json", tmp_path / "cal.png"
    assert main(["simulate", "--paper", str(paper_data), "--no-fit", "--report", str(report),
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "left out: median |error| time" in out and "c20_65536n_62w_10000bs_SQS" in out
    data = json.loads(report.read_text())
    assert data["median_abs_err_time"] == pytest.approx(calibration.median_abs_err_time)
    assert data["median_abs_err_cost"] == pytest.approx(calibration.median_abs_err_cost)
    assert {"split", "params", "runs"} <= set(data) and len(data["runs"]) == 36
    assert data["params"]["queue.layer_overhead_s"]["source"].startswith("fit:")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["simulate", "--paper", str(tmp_path)]) == 2
    assert "queue_runs.csv not found" in capsys.readouterr().err
