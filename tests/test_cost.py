"""The AWS cost model (fsdgraph.cost): the paper's spreadsheet, run-report bills, prices, estimates.

Tests on the paper's measured runs use the ``paper_data`` fixture: where ``../shared`` is absent
they skip with the reason shown; with ``FSDGRAPH_REQUIRE_OFFICIAL=1`` that absence is a failure
(the rule of ``official_data`` in conftest.py).
"""

from __future__ import annotations

import csv
import dataclasses
import doctest
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import fsdgraph
from fsdgraph import cost
from fsdgraph.cost import (
    PAPER_TOTALS,
    Bill,
    Prices,
    bill,
    estimate,
    paper_bill,
    paper_comparison,
    paper_runs,
)
from fsdgraph.errors import ConfigError, InputError


def _row(folder: Path, channel: str, config: str) -> dict[str, str]:
    with (folder / f"{channel}_runs.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["CONFIG"] == config]
    assert len(rows) == 1, config
    return rows[0]


def _sums_match(b: Bill) -> None:
    assert sum(b.per_worker.values()) == pytest.approx(b.total, rel=1e-12, abs=1e-15)
    assert sum(b.per_layer.values()) == pytest.approx(b.total, rel=1e-12, abs=1e-15)
    assert sum(i.cost for i in b.items) == pytest.approx(b.total, rel=1e-12)


# --- the paper's spreadsheet ------------------------------------------------------------------


def test_module_doctests() -> None:
    result = doctest.testmod(cost, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10
    assert result.failed == 0


@pytest.mark.parametrize(("channel", "config", "unrounded"), [
    # queue: 9 x 0.2e-6 + 1102 x ceil(94493.0 / 64000) = 2204 x 0.5e-6 + 0.10413126 x 0.09
    #        + 4318 x 0.4e-6 + 568.61206 x 1000/128 x 2.1e-6 = 0.021531605009375
    ("queue", "c1_1024n_8w_10000bs_SQS", 0.021531605009375),
    # object: 9 x 0.2e-6 + (6452 + 1615) x 5.3e-6 + 6450 x 0.42e-6
    #         + 514.65564 x 1000/128 x 2.1e-6 = 0.05390946909375
    ("object", "c1_1024n_8w_10000bs_S3", 0.05390946909375),
])
def test_paper_totals_1024n_8w(paper_data: Path, channel: str, config: str,
                               unrounded: float) -> None:
    """The paper's printed totals, to 1e-9 at the 7 decimals they are printed with."""
    b = paper_bill(_row(paper_data, channel, config), channel)
    printed = PAPER_TOTALS[channel, config]
    assert printed == {"queue": 0.0215316, "object": 0.0539095}[channel]
    assert abs(round(b.total, 7) - printed) < 1e-9
    assert abs(b.total - unrounded) < 1e-12
    assert abs(b.total - printed) < 5e-8  # within the rounding of the printed figure
    _sums_match(b)


def test_paper_other_rows_by_hand(paper_data: Path) -> None:
    # c3 queue, 20 workers: average publish 294023520 / 4866 = 60424 bytes -> 1 unit per call.
    # 21 x 0.2e-6 + 4866 x 0.5e-6 + 0.29402352 x 0.09 + 16676 x 0.4e-6 + 2003.688 x 1000/128
    # x 2.1e-6 = 4.2e-6 + 0.002433 + 0.0264621168 + 0.0066704 + 0.03287300625 = 0.06844272305
    q = paper_bill(_row(paper_data, "queue", "c3_1024n_20w_10000bs_SQS"), "queue")
    assert abs(q.total - 0.06844272305) < 1e-9
    # c2 object, 12 workers: 13 x 0.2e-6 + (15250 + 2434) x 5.3e-6 + 15246 x 0.42e-6
    # + 790.38434 x 1000/128 x 2.1e-6 = 2.6e-6 + 0.0937252 + 0.00640332 + 0.012967243078125
    # = 0.113098363078125
    o = paper_bill(_row(paper_data, "object", "c2_1024n_12w_10000bs_S3"), "object")
    assert abs(o.total - 0.113098363078125) < 1e-9


def test_paper_full_rules_1024n_8w(paper_data: Path) -> None:
    q = paper_bill(_row(paper_data, "queue", "c1_1024n_8w_10000bs_SQS"), "queue",
                   simplified=False)
    # 568.61206 s / 8 = 71.0765075 s -> 71.077 s billed per worker; receives average
    # 104131260 / 4318 = 24116 bytes -> 1 unit; deletes = min(4318 polls, 6774 messages);
    # SNS -> SQS in one region: no data-out charge.
    # 9 x 0.2e-6 + 8 x 71.077 x 1000/1024 x 1.68e-5 + 2204 x 0.5e-6 + 2 x 4318 x 0.4e-6
    assert abs(q.total - 0.01388705625) < 1e-12
    assert q.item("SQS", "delete").quantity == 4318
    assert q.item("SQS", "receive: extra 64 KB units").quantity == 0
    assert q.item("data transfer", "in region").cost == 0
    o = paper_bill(_row(paper_data, "object", "c1_1024n_8w_10000bs_S3"), "object",
                   simplified=False)
    # only the per-ms rounding differs: 514.65564 / 8 = 64.331955 -> 64.332 s per worker
    assert abs(o.total - 0.053909475) < 1e-12


def test_paper_rows_consistent(paper_data: Path) -> None:
    """METRIC_LAMBDA_RUNTIME is seconds summed over the workers: per worker it is below Lambda's
    900 s limit and above the worker's measured elapsed time, for every row."""
    runs = paper_runs(paper_data)
    assert len(runs) == 36
    for channel, row in runs:
        P = int(row["TOTAL_NWORKERS"])
        runtime = float(row["METRIC_LAMBDA_RUNTIME"])
        elapsed = float(row["METRIC_ELAPSED_TIME_BATCH" if channel == "queue"
                            else "METRIC_ELAPSED_TIME_TOTAL"])
        assert elapsed < runtime < 900 * P, row["CONFIG"]
    table = paper_comparison(paper_data)
    assert len(table) == len(runs)
    for r in table:
        assert r["simplified"] > 0 and r["full"] > 0
        assert r["omitted"] >= 0, r["config"]
        assert r["difference"] == pytest.approx(r["omitted"] - r["data_out_charged"], abs=1e-12)
        json.dumps(r)


# --- a bill from a run report -------------------------------------------------------------------


def _hand_report() -> dict[str, Any]:
    def w(worker: int, pu: int, pub: int, recv: int, got: int, **extra: Any) -> dict[str, Any]:
        return {"worker": worker, "bytes_sent": 10_000_000, "bytes_received": got,
                "requests": {"publish": pub, "publish_units": pu, "send": 2, "send_units": 2,
                             "receive": recv, "delete": 100, "put": 1, "get": 2}, **extra}

    return {
        "channel": "queue", "workers": 3, "wall_s": 2.5, "bytes_sent": 30_000_000,
        "requests": {"invoke": 3, "publish": 400, "publish_units": 1000, "send": 6,
                     "send_units": 6, "receive": 520, "delete": 310, "put": 9, "get": 12,
                     "create_queue": 4, "delete_queue": 4, "create_topic": 3, "subscribe": 9,
                     "delete_topic": 3, "delete_objects": 1},
        "per_worker": [
            w(0, 300, 120, 150, 9_000_000, duration_s=1.5),
            w(1, 300, 120, 150, 9_000_000, launched_at=100.0, finished_at=101.2505),
            w(2, 400, 160, 200, 12_000_000),  # no duration: billed the run's wall_s
        ],
        "per_layer": [
            {"layer": 0, "compute_s": 0.1, "wait_s": 0.0, "codec_s": 0.0, "bytes_sent": 0,
             "bytes_received": 0, "requests": {}},
            {"layer": 1, "compute_s": 0.2, "wait_s": 0.4, "codec_s": 0.1,
             "bytes_sent": 30_000_000, "bytes_received": 30_000_000,
             "requests": {"publish": 400, "publish_units": 1000, "receive": 500, "delete": 300,
                          "send": 3, "send_units": 3}},
        ],
    }


def test_bill_hand_made_report() -> None:
    b = bill(_hand_report(), memory_mb=1024)
    quantities = {(i.service, i.what): i.quantity for i in b.items}
    assert quantities == {
        ("Lambda", "invocations"): 3,
        # 1.5 s + 1.2505 s -> 1.251 s (per-ms rounding) + 2.5 s (wall_s), x 1 GB
        ("Lambda", "duration (1024 MB)"): pytest.approx(5.251),
        ("SNS", "publish"): 1000,
        ("SQS", "send"): 6,
        ("SQS", "receive"): 520,
        # 30 MB over the workers' 300 non-empty receives = 100 000 bytes -> 2 units: 1 extra
        ("SQS", "receive: extra 64 KB units"): 300,
        ("SQS", "delete"): 310,
        ("SQS", "create queue"): 4,
        ("SQS", "delete queue"): 4,
        ("S3", "PUT"): 9,
        ("S3", "GET"): 12,
        ("S3", "cleanup (LIST + DeleteObjects)"): 2,
        ("data transfer", "in region"): pytest.approx(30_000_000 / 2**30),
    }
    # 3 x 0.2e-6 + 5.251 x 0.0000166667 + 1000 x 0.5e-6 + (6 + 520 + 300 + 310 + 8) x 0.4e-6
    # + (9 + 2) x 5e-6 + 12 x 0.4e-6 = 0.0000006 + 0.0000875168417 + 0.0005 + 0.0004576
    # + 0.000055 + 0.0000048
    assert abs(b.total - 0.0011055168417) < 1e-15
    # worker 0: 1 invocation + 1.5 GB-s + 300 units + 2 sends + 150 receives + 90 extra units
    # (9 of 30 MB) + 100 deletes + 1 PUT + 2 GETs
    # = 2e-7 + 2.500005e-5 + 1.5e-4 + 8e-7 + 6e-5 + 3.6e-5 + 4e-5 + 5e-6 + 8e-7
    assert abs(b.per_worker[0] - 0.00031780005) < 1e-15
    # the scheduler: 20 receives + 10 deletes + 8 queue calls, 6 PUTs, 6 GETs, cleanup
    assert abs(b.per_worker[-1] - 0.0000576) < 1e-15
    # layer 1: 1000 units + (500 + 300 + 3 + 300) SQS requests, and 0.7 s of each worker's
    # duration (layer times 0.1 + 0.7 s over a mean worker duration of 5.251 / 3 s): 2.1 GB-s
    assert abs(b.per_layer[1] - 0.00097620007) < 1e-15
    assert abs(b.per_layer[0] - 0.3 * 0.0000166667) < 1e-15
    _sums_match(b)
    assert any("wall_s" in n for n in b.notes)
    json.dumps(b.to_dict())
    assert "total" in b.table() and "$0.0011055168" in b.table()


def test_bill_rejects_inconsistent_reports() -> None:
    report = _hand_report()
    report["requests"]["publish_units"] = 10  # fewer than the workers' 1000
    with pytest.raises(InputError, match="per-worker counts add up to 1000"):
        bill(report)
    with pytest.raises(InputError, match="wall_s"):
        bill({"workers": 1, "wall_s": "slow"})
    with pytest.raises(ConfigError, match="memory_mb"):
        bill(_hand_report(), memory_mb=64)


@pytest.mark.parametrize("channel", ["queue", "object"])
def test_bill_of_a_real_run(channel: str) -> None:
    w = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    plan = fsdgraph.compile(fsdgraph.sequential([w] * 3, bias=-0.01,
                                                cap=32, bias_on_nonzero=True), workers=3)
    y = sp.random(20, 64, density=0.5, format="csr", dtype=np.float32, random_state=1)
    with fsdgraph.Scheduler("local", channel) as scheduler:
        report = scheduler.run_sync(plan, y).report
    b = bill(report)
    requests = report["requests"]
    assert b.item("Lambda", "invocations").quantity == requests["invoke"] == 3
    assert b.item("SQS", "receive").quantity == requests["receive"]
    assert b.item("S3", "GET").quantity == requests["get"]
    if channel == "queue":
        assert b.item("SNS", "publish").quantity == requests["publish_units"]
    assert b.total > 0
    _sums_match(b)
    assert set(b.per_worker) == {0, 1, 2, -1}
    assert set(b.per_layer) == {0, 1, 2, -1}


# --- prices ---------------------------------------------------------------------------------


def test_prices_defaults_and_regions() -> None:
    p = Prices()
    assert (p.region, p.lambda_requests_per_m, p.lambda_gb_s, p.sns_publish_per_m,
            p.sqs_requests_per_m, p.s3_put_per_k, p.s3_get_per_k, p.data_out_gb) == (
        "us-east-1", 0.20, 0.0000166667, 0.50, 0.40, 0.005, 0.0004, 0.09)
    london = Prices.for_region("eu-west-2")
    assert (london.s3_put_per_k, london.s3_get_per_k) == (0.0053, 0.00042)
    report = {"workers": 1, "wall_s": 0.0, "requests": {"invoke": 1, "put": 1000}}
    assert bill(report, prices=london).item("S3", "PUT").cost == pytest.approx(0.0053)
    cheaper = dataclasses.replace(p, s3_put_per_k=0.001)
    assert bill(report, prices=cheaper).item("S3", "PUT").cost == pytest.approx(0.001)
    with pytest.raises(ConfigError) as err:
        Prices.for_region("mars-north-1")
    assert str(err.value) == (
        "no prices for region 'mars-north-1'; known regions: eu-central-1, eu-west-1, "
        "eu-west-2, us-east-1, us-east-2, us-west-2 (or give Prices(...) or "
        "Prices.from_file(path))")
    with pytest.raises(ConfigError, match="'sqs_requests_per_m' must be a non-negative"):
        Prices(sqs_requests_per_m=-1)


def test_price_files(tmp_path: Path) -> None:
    good = tmp_path / "p.toml"
    good.write_text('[prices]\nregion = "eu-central-1"\nlambda_gb_s = 0.00002\n')
    p = Prices.from_file(good)
    assert (p.region, p.lambda_gb_s, p.s3_put_per_k) == ("eu-central-1", 0.00002, 0.0054)
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"sns_publish_per_m": 1}))
    assert Prices.from_file(js).sns_publish_per_m == 1.0

    cases = {
        "unknown.toml": ("sqs_per_m = 1\n", "unknown field 'sqs_per_m'"),
        "negative.toml": ("s3_get_per_k = -0.1\n", "field 's3_get_per_k' must be a non-negative"),
        "text.json": ('{"lambda_gb_s": "cheap"}', "field 'lambda_gb_s' must be a non-negative"),
        "region.toml": ('region = "mars-north-1"\n', "field 'region': no built-in prices"),
        "broken.toml": ("lambda_gb_s = = 1\n", "not valid TOML"),
        "broken.json": ("{", "not valid JSON"),
        "prices.yaml": ("a: 1\n", "must end in .toml or .json"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            Prices.from_file(path)
        assert str(err.value).startswith(f"{path}: "), err.value
        assert message in str(err.value), err.value
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read"):
        Prices.from_file(missing)


# --- an estimate before a run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_plan() -> fsdgraph.Plan:
    w = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    return fsdgraph.compile(fsdgraph.sequential([w] * 3, bias=-0.01,
                                                cap=32, bias_on_nonzero=True), workers=3)


def test_estimate_counts_checkpoints_and_attempt_checks(small_plan: fsdgraph.Plan) -> None:
    plain = estimate(small_plan, channel="object", batch=100, runtime_s=2.0)
    every = estimate(small_plan, channel="object", batch=100, runtime_s=2.0, checkpoint_every=1)
    P, L = small_plan.workers, small_plan.layers
    assert every.item("S3", "PUT checkpoints").quantity == P * (L - 1)
    assert every.item("S3", "GET attempt checks (before a checkpoint)").quantity == P * (L - 1)
    assert plain.item("S3", "GET staging, attempt checks + outputs").quantity == 4 * P
    assert every.total > plain.total
    with pytest.raises(KeyError):
        plain.item("S3", "PUT checkpoints")


def test_estimate_object_follows_the_edges(small_plan: fsdgraph.Plan) -> None:
    edges = small_plan.edges
    assert edges
    b = estimate(small_plan, channel="object", batch=100, runtime_s=2.0, empty_polls=0.5)
    assert b.total > 0
    assert b.item("S3", "PUT exchange").quantity == len(edges)
    assert b.item("S3", "GET exchange").quantity == 1.5 * len(edges)
    # bytes: 100 images x neurons x 0.13 x 0.72 bytes (rounded up) + 64 per object (format,
    # run id, tag)
    expected = sum(math.ceil(100 * len(e.neurons) * 0.13 * 0.72) + 64 for e in edges)
    assert b.item("data transfer", "in region").quantity * 2**30 == pytest.approx(expected)
    assert b.item("Lambda", "invocations").quantity == small_plan.workers
    assert b.item("Lambda", "duration (1769 MB)").quantity == pytest.approx(3 * 2.0 * 1769 / 1024)
    _sums_match(b)
    # every exchange request belongs to the layer of its edge; layer 0 exchanges nothing
    per_layer_edges = {l: sum(e.layer == l for e in edges) for l in range(small_plan.layers)}
    assert per_layer_edges[0] == 0
    lambda_share = b.item("Lambda", "duration (1769 MB)").cost / small_plan.layers
    assert b.per_layer[0] == pytest.approx(lambda_share)


def test_estimate_queue_follows_the_edges(small_plan: fsdgraph.Plan) -> None:
    edges = small_plan.edges
    b = estimate(small_plan, channel="queue", batch=100, runtime_s=2.0, empty_polls=0.0)
    senders = {(e.layer, e.src) for e in edges}
    receivers = {(e.layer, e.dst) for e in edges}
    # small edges: one message each, one publish call per (layer, sender), one receive and one
    # delete per (layer, receiver)
    assert b.item("SNS", "publish").quantity == len(senders)
    assert b.item("SQS", "receive").quantity == len(receivers)
    assert b.item("SQS", "delete").quantity == len(receivers)
    _sums_match(b)
    # a bigger batch needs several chunks per edge: more units, never fewer
    big = estimate(small_plan, channel="queue", batch=200_000, runtime_s=2.0)
    assert big.item("SNS", "publish").quantity > len(senders)
    assert big.item("SQS", "receive: extra 64 KB units").quantity > 0
    assert big.total > b.total
    _sums_match(big)
    # without a runtime: the default model, start-up in layer -1
    default = estimate(small_plan, channel="queue", batch=100)
    assert default.total > 0 and any("default model" in n for n in default.notes)
    _sums_match(default)


def test_estimate_direct_sqs_sends_per_target(small_plan: fsdgraph.Plan) -> None:
    """Direct mode: one SQS send call per (layer, sender, target) instead of one publish per
    (layer, sender); no SNS line; receives unchanged."""
    edges = small_plan.edges
    fan_out = estimate(small_plan, channel="queue", batch=100, runtime_s=2.0, empty_polls=0.0)
    direct = estimate(small_plan, channel="queue", batch=100, runtime_s=2.0, empty_polls=0.0,
                      direct=True)
    assert "SNS" not in direct.by_service()
    assert direct.item("SQS", "send (direct)").quantity == len(edges)
    assert fan_out.item("SNS", "publish").quantity < len(edges)  # several targets per call
    assert direct.item("SQS", "receive").quantity == fan_out.item("SQS", "receive").quantity
    assert any(f"{len(edges)} SQS send calls" in n for n in direct.notes)
    _sums_match(direct)


def test_estimate_auto_splits_edges(small_plan: fsdgraph.Plan) -> None:
    edges = small_plan.edges
    sizes = [math.ceil(100 * len(e.neurons) * 0.13 * 0.72) for e in edges]
    line = sorted(sizes)[len(sizes) // 2]  # about half the edges above the line
    big = sum(n > line for n in sizes)
    assert 0 < big < len(edges)
    b = estimate(small_plan, channel="auto", batch=100, runtime_s=2.0, empty_polls=0.0,
                 object_above_bytes=line)
    assert b.item("S3", "PUT exchange").quantity == big
    assert b.item("S3", "GET exchange").quantity == big  # the pointer says when: no polling
    # every edge still sends one message (chunks or a pointer): one publish per (layer, sender)
    assert b.item("SNS", "publish").quantity == len({(e.layer, e.src) for e in edges})
    _sums_match(b)
    # with no line given, the auto channel's own threshold (hundreds of KB): all on the queue
    small = estimate(small_plan, channel="auto", batch=100, runtime_s=2.0)
    assert not any(i.what == "PUT exchange" for i in small.items)


def test_estimate_rejects_bad_input(small_plan: fsdgraph.Plan) -> None:
    with pytest.raises(ConfigError, match="unknown channel 'pigeon'; known: auto, object, queue"):
        estimate(small_plan, channel="pigeon", batch=1)
    with pytest.raises(ConfigError, match="density"):
        estimate(small_plan, channel="queue", batch=1, density=0)
    with pytest.raises(ConfigError, match="memory_mb"):
        estimate(small_plan, channel="queue", batch=1, memory_mb=20000)
