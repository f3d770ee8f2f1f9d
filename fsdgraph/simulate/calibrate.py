"""Calibration against the FSD-Inference paper's 35 measured AWS runs (``queue_runs.csv``,
``object_runs.csv``): fit the paper protocol's few free parameters on a documented split, report
the error on the left-out runs (:func:`calibrate`), and write them as the ``paper`` profile
(:func:`paper_profile_text`).

What is predicted: ``METRIC_LAMBDA_RUNTIME``, the Lambda runtime summed over the workers (seconds),
from each run's request counts and bytes (its CSV row) and the simulated timeline; the cost is
the paper's own spreadsheet bill (:func:`fsdgraph.cost.paper_bill`) of the row with the predicted
runtime, compared with the bill of the measured runtime.

The split: within each channel, the runs sorted by (neurons, workers, CONFIG); even positions
train, odd positions are left out. The left-out runs cover every network size and both channels.

The fit (deterministic):

1. compute: ``kernel.layer_s`` and one cost per multiply-add (every path: the paper multiplies
   with scipy) by non-negative least squares of the relative error of
   ``METRIC_ELAPSED_TIME_COMPUTATION`` (summed compute seconds) on the training runs;
2. per channel, the protocol's effective costs (queue: ``queue.layer_overhead_s``,
   ``request.receive.median_s`` (a 1 s long poll's cost, its DynamoDB query apart),
   ``queue.codec_s_per_byte``; object: ``object.layer_overhead_s``, ``request.get.median_s`` =
   ``request.put.median_s``, ``request.list.median_s``, ``object.codec_s_per_byte``) by
   least squares of the relative runtime error, on the mean-field model
   (:func:`fsdgraph.simulate.engine.expected`) times each run's straggler factor (the seeded
   event simulation over the mean field at the current parameters), recomputed :data:`ROUNDS`
   times.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsdgraph.cost.paper import PAPER_MEMORY_MB, paper_bill, paper_runs
from fsdgraph.errors import ConfigError
from fsdgraph.simulate.engine import Engine, expected
from fsdgraph.simulate.profile import Profile, load_profile
from fsdgraph.simulate.protocols import paper_row_workload
from fsdgraph.simulate.workload import Workload, graphchallenge_curve

#: Straggler-excess rounds of the fit.
ROUNDS = 3
#: Model evaluations per least-squares round.
MAX_NFEV = 40
#: The free parameters per channel (dotted profile keys); ``request.get.median_s`` also sets
#: ``request.put.median_s`` (the runs make as many PUTs as GETs: one cost fits both).
FREE = {"queue": ("queue.layer_overhead_s", "request.receive.median_s",
                  "queue.codec_s_per_byte"),
        "object": ("object.layer_overhead_s", "request.get.median_s", "request.list.median_s",
                   "object.codec_s_per_byte")}
COMPUTE = ("kernel.layer_s", "kernel.s_per_mac")
TIME_COLUMN = "METRIC_LAMBDA_RUNTIME"
COMPUTE_COLUMN = "METRIC_ELAPSED_TIME_COMPUTATION"


@dataclass
class Run:
    """One measured run: its channel, row, and whether it trains the fit."""

    channel: str
    row: dict[str, str]
    train: bool

    @property
    def config(self) -> str:
        """The run's CONFIG name."""
        return self.row.get("CONFIG", "?")

    def col(self, key: str) -> float:
        """The number in column ``key`` (a ConfigError naming the run if missing)."""
        try:
            return float(self.row[key])
        except (KeyError, ValueError):
            raise ConfigError(f"paper run {self.config}: column {key} missing or not a "
                              "number") from None


@dataclass
class Calibration:
    """The fit and its errors: ``params`` (dotted key -> value), per-run ``runs`` (predicted vs
    measured time and cost), the median absolute relative errors on the left-out runs."""

    params: dict[str, float]
    runs: list[dict[str, Any]]
    split: str
    profile: Profile
    notes: list[str] = field(default_factory=list)
    runs_rows: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def errors(self, *, train: bool = False, key: str = "time") -> list[float]:
        """Absolute relative errors of ``key`` ("time" or "cost") on the left-out (or training)
        runs."""
        return [abs(r[f"{key}_rel_err"]) for r in self.runs if r["train"] == train]

    @property
    def median_abs_err_time(self) -> float:
        """Median absolute relative error of the summed runtime on the left-out runs."""
        return float(np.median(self.errors()))

    @property
    def median_abs_err_cost(self) -> float:
        """Median absolute relative error of the paper's bill on the left-out runs."""
        return float(np.median(self.errors(key="cost")))

    def to_dict(self) -> dict[str, Any]:
        """The JSON report of ``fsdgraph simulate --paper``."""
        return {
            "predicted_column": TIME_COLUMN,
            "split": self.split,
            "params": {k: {"value": v, "source": self.profile.source(k)}
                       for k, v in self.params.items() if k in self.profile.values},
            "median_abs_err_time": self.median_abs_err_time,
            "median_abs_err_cost": self.median_abs_err_cost,
            "median_abs_err_time_train": float(np.median(self.errors(train=True))),
            "median_abs_err_cost_train": float(np.median(self.errors(train=True, key="cost"))),
            "max_abs_err_time": max(self.errors()),
            "left_out": sum(1 for r in self.runs if not r["train"]),
            "trained_on": sum(1 for r in self.runs if r["train"]),
            "runs": self.runs,
            "notes": self.notes,
        }


def split_runs(data_dir: str | os.PathLike[str] | None = None) -> list[Run]:
    """The paper's runs with the documented split (module docstring)."""
    runs: list[Run] = []
    for channel in ("queue", "object"):
        rows = [r for ch, r in paper_runs(data_dir) if ch == channel]
        rows.sort(key=lambda r: (int(r["NUM_NEURONS"]), int(r["TOTAL_NWORKERS"]), r["CONFIG"]))
        runs += [Run(channel, r, i % 2 == 0) for i, r in enumerate(rows)]
    return runs


SPLIT = ("within each channel, runs sorted by (NUM_NEURONS, TOTAL_NWORKERS, CONFIG); even "
         "positions train the fit, odd positions are left out")


def expand(params: Mapping[str, float]) -> dict[str, float]:
    """Fitted parameters as profile keys: ``kernel.s_per_mac`` sets every path's cost,
    ``request.get.median_s`` also sets ``request.put.median_s``, and a fitted median sets its
    p99 to keep the ``aws`` profile's p99/median ratio (:func:`tail`)."""
    values = dict(params)
    spm = values.pop("kernel.s_per_mac", None)
    if spm is not None:
        values.update({f"kernel.{p}_s_per_mac": spm for p in ("gustavson", "tiled", "dense")})
    if "request.get.median_s" in values:
        values["request.put.median_s"] = values["request.get.median_s"]
    for key in [k for k in values if k.startswith("request.") and k.endswith(".median_s")]:
        values[key[:-len("median_s")] + "p99_s"] = values[key] * tail(key)
    return values


def _with(profile: Profile, values: Mapping[str, float], source: str) -> Profile:
    return profile.replaced(expand(values), source)


def tail(key: str) -> float:
    """The p99/median ratio a fitted median keeps: the ``aws`` profile's for that kind."""
    aws = load_profile("aws")
    return aws.num(key[:-len("median_s")] + "p99_s") / aws.num(key)


def _workloads(runs: Sequence[Run], profile: Profile) -> list[Workload]:
    curve = graphchallenge_curve(120)
    return [paper_row_workload(r.row, r.channel, profile, curve) for r in runs]


def _fit_compute(runs: Sequence[Run], loads: Sequence[Workload], profile: Profile,
                 memory_mb: int) -> dict[str, float]:
    from scipy.optimize import nnls  # only when fitting: the CLI starts faster

    from fsdgraph.simulate.engine import cpu_share

    _, speed = cpu_share(profile, memory_mb)
    rows = []
    for run, work in zip(runs, loads, strict=True):
        measured = run.col(COMPUTE_COLUMN)
        rows.append([work.workers * work.layers / speed / measured,
                     float(work.macs.sum()) / speed / measured])
    coef, _ = nnls(np.array(rows), np.ones(len(rows)))
    return {"kernel.layer_s": float(coef[0]), "kernel.s_per_mac": float(coef[1])}


def _runtime(work: Workload, profile: Profile, seed: int, memory_mb: int) -> float:
    return float(Engine(work, profile, memory_mb=memory_mb, seed=seed).run().runtime_s.sum())


def _fit_channel(channel: str, runs: Sequence[Run], loads: Sequence[Workload], profile: Profile,
                 seed: int, memory_mb: int) -> dict[str, float]:
    from scipy.optimize import least_squares

    keys = FREE[channel]
    measured = np.array([r.col(TIME_COLUMN) for r in runs])
    start = load_profile("aws")  # a fixed start: the fit does not depend on paper.toml
    x0 = np.array([start.num(k) for k in keys])
    scale = np.where(x0 > 0, x0, 1e-3)
    straggle = np.ones(len(runs))

    def model(x: np.ndarray) -> tuple[Profile, np.ndarray]:
        p = _with(profile, dict(zip(keys, (x * scale).tolist(), strict=True)), "fit")
        mf = np.array([expected(w, p, memory_mb=memory_mb).runtime_s.sum() for w in loads])
        return p, mf

    def residuals(x: np.ndarray) -> np.ndarray:
        _, mf = model(x)
        return mf * straggle / measured - 1  # type: ignore[no-any-return]

    x = np.ones(len(keys))
    for _ in range(ROUNDS):
        x = least_squares(residuals, x, bounds=(0, np.inf), method="trf", x_scale="jac",
                          ftol=1e-5, xtol=1e-5, max_nfev=MAX_NFEV).x
        p, mf = model(x)
        straggle = np.array([_runtime(w, p, seed, memory_mb) for w in loads]) / mf
    return dict(zip(keys, (x * scale).tolist(), strict=True))


def fit(data_dir: str | os.PathLike[str] | None = None, *,
        channels: Sequence[str] = ("queue", "object"), seed: int = 0,
        profile: Profile | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The fitted parameters (dotted keys, before :func:`expand`) of the compute and of
    ``channels``, on the training runs of the documented split (module docstring)."""
    say = progress or (lambda _: None)
    base = profile or load_profile("paper")
    runs = split_runs(data_dir)
    train = [r for r in runs if r.train]
    say(f"fitting compute on {len(train)} runs")
    params = _fit_compute(train, _workloads(train, base), base, PAPER_MEMORY_MB)
    for channel in channels:
        fitted = _with(base, params, "fit")
        chosen = [r for r in train if r.channel == channel]
        say(f"fitting the {channel} channel on {len(chosen)} runs")
        params |= _fit_channel(channel, chosen, _workloads(chosen, fitted), fitted, seed,
                               PAPER_MEMORY_MB)
    return params


def calibrate(data_dir: str | os.PathLike[str] | None = None, *, fit_params: bool = True,
              seed: int = 0, profile: Profile | None = None,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Fit the paper profile on the training runs (``fit_params=False``: use ``profile``,
    default the ``paper`` profile as shipped) and predict every run with the seeded event
    simulation."""
    say = progress or (lambda _: None)
    base = profile or load_profile("paper")
    memory = PAPER_MEMORY_MB
    runs = split_runs(data_dir)
    if fit_params:
        params = fit(data_dir, seed=seed, profile=base, progress=progress)
        fitted = _with(base, params, "fit")
    else:
        fitted = base
        params = {k: fitted.num(k) for ch in FREE for k in FREE[ch]}
        params |= {"kernel.layer_s": fitted.num("kernel.layer_s"),
                   "kernel.s_per_mac": fitted.num("kernel.dense_s_per_mac")}
    loads = _workloads(runs, fitted)
    say("predicting every run")
    out = []
    for run, work in zip(runs, loads, strict=True):
        timeline = Engine(work, fitted, memory_mb=memory, seed=seed).run()
        predicted = float(timeline.runtime_s.sum())
        measured = run.col(TIME_COLUMN)
        row = dict(run.row)
        row[TIME_COLUMN] = repr(predicted)
        cost_pred = paper_bill(row, run.channel).total
        cost_meas = paper_bill(run.row, run.channel).total
        out.append({
            "config": run.config, "channel": run.channel, "train": run.train,
            "workers": work.workers, "neurons": int(run.col("NUM_NEURONS")),
            "time_measured_s": measured, "time_predicted_s": predicted,
            "time_rel_err": predicted / measured - 1,
            "cost_measured_usd": cost_meas, "cost_predicted_usd": cost_pred,
            "cost_rel_err": cost_pred / cost_meas - 1,
            "wall_predicted_s": timeline.wall_s,
            "breakdown_s": {"compute": float(timeline.compute.sum()),
                            "send": float(timeline.send.sum()),
                            "receive": float(timeline.receive.sum()),
                            "wait": float(timeline.wait.sum()),
                            "overhead": float(timeline.overhead.sum())},
        })
    notes = [f"memory {memory} MB (the paper's), seed {seed}",
             "work from the 1024-neuron live-row curve at every size (the only one measured)"]
    return Calibration(params, out, SPLIT, fitted, notes, [(r.channel, r.row) for r in runs])


def paper_empty_polls(rows: Sequence[tuple[str, Mapping[str, str]]]) -> dict[str, float]:
    """Per channel, the median over the paper's runs of the polls that found nothing per
    exchange edge: queue (polls - one receive per 10 messages of a worker and layer), object
    (LISTs - one per worker and layer); ``rows`` as :func:`fsdgraph.cost.paper_runs` gives."""
    found: dict[str, list[float]] = {"queue": [], "object": []}
    for channel, row in rows:
        P, L = int(row["TOTAL_NWORKERS"]), int(row["NUM_LAYERS"])
        edges = P * (P - 1) * (L - 1)
        if edges == 0:
            continue
        if channel == "queue":
            per = float(row["METRIC_NUM_MESSAGES_SENT"]) / (P * (L - 1))
            nonempty = P * (L - 1) * math.ceil(per / 10)
            found["queue"].append((float(row["METRIC_RECEIVE_POLL_CALLS"]) - nonempty) / edges)
        else:
            found["object"].append((float(row["METRIC_S3_FOLDER_SCANS"]) - P * (L - 1)) / edges)
    return {k: float(np.median(v)) if v else 0.0 for k, v in found.items()}


def paper_profile_text(cal: Calibration) -> str:
    """``profiles/paper.toml`` with the fitted values of ``cal`` (its sources say how)."""
    train = sum(1 for r in cal.runs if r["train"])
    how = {
        "kernel.layer_s": f"fit: NNLS on {COMPUTE_COLUMN} (relative) of the {train} training "
                          "runs, per worker and layer",
        "kernel.s_per_mac": f"fit: NNLS on {COMPUTE_COLUMN} (relative) of the training runs, per "
                            "multiply-add (scipy in the paper: one cost for every path)",
    }
    lines = ["# The FSD-Inference paper's protocol on AWS (ICDE 2024; ../shared/PAPER.md), with",
             "# the parameters fitted on its measured runs by fsdgraph.simulate.calibrate",
             "# (written by `fsdgraph simulate --paper DIR --write-profile`; do not edit by hand).",
             f"# Split: {SPLIT}.",
             f"# Left-out median absolute relative error: time {cal.median_abs_err_time:.3f}, "
             f"cost {cal.median_abs_err_cost:.3f}.",
             'base = "aws"', 'description = "the paper\'s protocol, fitted on its 35 AWS runs"', ""]
    empty = paper_empty_polls(cal.runs_rows)
    static = [
        ("protocol", "name", '"paper"', None),
        ("protocol", "overlap", 1, "PAPER.md: only the local product overlaps communication "
                                   "(publisher threads)"),
        ("protocol", "layer_overhead_s", 0, "the paper's per-layer costs are all in the fitted "
                                            "channel overheads (every worker exchanges every "
                                            "layer)"),
        ("function", "threads", 1, "the paper's workers multiply in one thread (scipy)"),
        ("queue", "wire_factor", 1, "the paper's bytes are counted as sent (its CSV)"),
        ("queue", "send_concurrency", 1, "effective per-request costs are fitted (no concurrency "
                                         "assumed)"),
        ("queue", "receive_concurrency", 1, "PAPER.md: one long poll at a time"),
        ("queue", "poll_interval_s", 0, "PAPER.md: 1 s long polls return on arrival"),
        ("object", "send_concurrency", 1, "effective per-request costs are fitted"),
        ("object", "receive_concurrency", 1, "effective per-request costs are fitted"),
        ("object", "poll_interval_s", 0.1, "PAPER.md: S3 LIST polling every 0.1 s"),
        ("queue", "empty_polls", round(empty["queue"], 4),
         "measured: median over the paper's queue runs of (METRIC_RECEIVE_POLL_CALLS - "
         "non-empty receives) / exchange edges (0.06 to 0.75, falling with P)"),
        ("object", "empty_polls", round(empty["object"], 4),
         "measured: median over the paper's object runs of (METRIC_S3_FOLDER_SCANS - one per "
         "worker and layer) / exchange edges (0.03 to 0.43, falling with P)"),
        ("request.put", "rate_per_s", 0, "PAPER.md: one S3 prefix per (layer, target), and S3's "
                                         "limits are per prefix (AWS_FIGURES.md §3): none binds"),
        ("request.get", "rate_per_s", 0, "as request.put.rate_per_s"),
        ("request.list", "rate_per_s", 0, "as request.put.rate_per_s"),
    ]
    sections: dict[str, list[str]] = {}
    for sec, key, value, source in static:
        sections.setdefault(sec, []).append(
            f"{key} = {value}" if source is None
            else f'{key} = {{ value = {value}, source = "{source}" }}')
    values = expand(cal.params)
    for p in ("gustavson", "tiled", "dense"):
        how[f"kernel.{p}_s_per_mac"] = how["kernel.s_per_mac"]
    for key, value in values.items():
        sec, name = key.rsplit(".", 1)
        if key.endswith(".p99_s"):
            median = key[:-len("p99_s")] + "median_s"
            source = (f"fit: {median} x {tail(median):.4g}, the aws profile's p99/median "
                      "ratio of this request")
        else:
            channel = "queue" if key in FREE["queue"] else "object"
            source = how.get(key) or (
                f"fit: least squares of the relative {TIME_COLUMN} error of the {channel} "
                f"training runs (mean field x seeded straggler factor, {ROUNDS} rounds)"
                + ("; = request.get.median_s" if key == "request.put.median_s" else ""))
        sections.setdefault(sec, []).append(
            f'{name} = {{ value = {value!r}, source = "{source}" }}')
    for sec, body in sections.items():
        lines += [f"[{sec}]", *body, ""]
    return "\n".join(lines)
