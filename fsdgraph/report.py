"""The run report: one JSON-able dict, built here and only here, documented field by field in
docs/reports.md.

The scheduler hands over what it knows of the run (:class:`RunFacts`), every worker's metrics,
the channel and the price table; :func:`build_report` sums the metrics and adds what the channel
says about its choices and the bill. Totals are sums over workers; per-layer times are the
slowest worker's (the layer ends when its slowest worker does) except ``cpu_s``, the CPU of all
workers; per-worker times are sums over layers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fsdgraph.metrics import COUNTERS, TIMERS, LayerMetrics
from fsdgraph.model_plan import ModelPlan
from fsdgraph.plan import Plan

if TYPE_CHECKING:
    from fsdgraph.channels import Channel, ChannelConfig
    from fsdgraph.prices import Prices


@dataclass(frozen=True)
class RunFacts:
    """What the scheduler knows of a finished run, beyond the workers' metrics."""

    run_id: str
    backend: str
    batch: int
    wall_s: float  #: from submission to the assembled outputs
    stage_s: float  #: staging shards and inputs
    launch_s: float  #: from the first invocation until the last worker started
    invoked_at: float  #: wall clock (epoch seconds) of the first invocation
    invocation_depth: int  #: levels of the invocation tree
    categories: int  #: rows with any nonzero output
    config: Mapping[str, Any]  #: the RunConfig, as a dict
    setup_s: float = 0.0  #: creating the control plane and the channel's resources
    setup_requests: Mapping[str, int] = field(default_factory=dict)
    teardown_s: float = 0.0  #: deleting everything the run created
    teardown_requests: Mapping[str, int] = field(default_factory=dict)
    status_lag_s: float = 0.0  #: the latest a ``done``/``error`` status reached the scheduler
    progress_lag_s: float = 0.0  #: the latest any status reached the scheduler
    duplicate_invocations: int = 0  #: invocation events delivered twice (and made harmless)
    channel_setup: Mapping[str, Any] = field(default_factory=dict)  #: ``Channel.fit``'s choice
    statuses_rejected: int = 0  #: control messages whose tag did not verify (dropped)
    relaunches: int = 0  #: lost workers relaunched from their last checkpoint
    continuations: int = 0  #: workers that handed over to a new invocation near a time limit


def build_report(worker_metrics: Sequence[Mapping[str, Any]], coordinator: Mapping[str, Any],
                 plan: Plan | ModelPlan, facts: RunFacts, channel: type[Channel],
                 channel_config: ChannelConfig, prices: Prices | None) -> dict[str, Any]:
    """The report of a run: the metrics summed, the channel's details (``Channel.describe``)
    and the bill at ``prices`` (None: the backend is not billed, the bill is None)."""
    from fsdgraph.cost.bill import bill

    report = _sum_metrics(worker_metrics, coordinator, plan, facts, channel.name,
                          channel.counters)
    details = channel.describe(channel_config, prices, report)
    if details is not None:
        report["channel_details"] = details
    # Functions of 1769 MB (one full vCPU); ``fsdgraph report`` bills other sizes.
    report["bill"] = bill(report, prices=prices).to_dict() if prices is not None else None
    return report


def _sum_metrics(worker_metrics: Sequence[Mapping[str, Any]], coordinator: Mapping[str, Any],
                 plan: Plan | ModelPlan, facts: RunFacts, channel: str,
                 channel_counters: Sequence[str]) -> dict[str, Any]:
    """Sum worker metrics into per-layer, per-worker and run totals. ``channel_counters`` (the
    channel's own, ``Channel.counters``) are summed like the core's counters."""
    per_layer: list[dict[str, Any]] = []
    per_worker: list[dict[str, Any]] = []
    requests: Counter[str] = Counter()
    workers_layers = [[LayerMetrics.from_dict(d) for d in wm["layers"]] for wm in worker_metrics]
    setups = [LayerMetrics.from_dict(wm["setup"]) for wm in worker_metrics]
    for layer in range(plan.layers):
        rows = [wl[layer] for wl in workers_layers if layer < len(wl)]
        entry: dict[str, Any] = {"layer": layer}
        for name in COUNTERS:
            entry[name] = sum(getattr(m, name) for m in rows)
        for name in channel_counters:
            entry[name] = sum(m.channel[name] for m in rows)
        for name in TIMERS:
            values = [getattr(m, name) for m in rows]
            # CPU adds up over workers; waiting and computing overlap, the slowest one counts.
            entry[name] = sum(values) if name == "cpu_s" else max(values, default=0.0)
        layer_requests: Counter[str] = Counter()
        for m in rows:
            layer_requests.update(m.requests)
        entry["requests"] = dict(layer_requests)
        per_layer.append(entry)
    for wm, layers, setup in zip(worker_metrics, workers_layers, setups, strict=True):
        w_requests: Counter[str] = Counter(setup.requests)
        for m in layers:
            w_requests.update(m.requests)
        requests.update(w_requests)
        w: dict[str, Any] = {"worker": wm["worker"]}
        for name in COUNTERS:
            w[name] = sum(getattr(m, name) for m in layers)
        for name in channel_counters:
            w[name] = sum(m.channel[name] for m in layers)
        for name in TIMERS:
            w[name] = sum(getattr(m, name) for m in layers)
        w["requests"] = dict(w_requests)
        w["launched_at"] = wm.get("started", 0.0)
        w["finished_at"] = wm.get("finished", 0.0)
        w["duration_s"] = w["finished_at"] - w["launched_at"]
        w["peak_rss_bytes"] = wm.get("peak_rss_bytes", 0)
        w["process_cpu_s"] = wm.get("cpu_s", 0.0)
        w["kernel"] = wm.get("kernel", "")
        w["kernel_threads"] = wm.get("kernel_threads", 1)
        per_worker.append(w)
    requests.update(LayerMetrics.from_dict(coordinator["setup"]).requests)
    totals = {name: sum(w[name] for w in per_worker) for name in (*COUNTERS, *channel_counters)}
    return {
        "run_id": facts.run_id,
        "backend": facts.backend,
        "channel": channel,
        "workers": plan.workers,
        "layers": plan.layers,
        "batch": facts.batch,
        "partitioner": plan.partitioner,
        # How the work was shared, and (strategy="auto") what the planner chose and predicted,
        # beside what was measured.
        "parallelism": plan.parallelism(),
        "planned": (None if plan.planned is None
                    else {**plan.planned, "measured_wall_s": facts.wall_s}),
        "wall_s": facts.wall_s,
        "stage_s": facts.stage_s,
        "setup_s": facts.setup_s,
        "setup_requests": dict(facts.setup_requests),
        "launch_s": facts.launch_s,
        "teardown_s": facts.teardown_s,
        "teardown_requests": dict(facts.teardown_requests),
        "status_lag_s": facts.status_lag_s,
        "progress_lag_s": facts.progress_lag_s,
        "duplicate_invocations": facts.duplicate_invocations,
        "statuses_rejected": facts.statuses_rejected,
        "relaunches": facts.relaunches,
        "continuations": facts.continuations,
        "channel_setup": dict(facts.channel_setup),
        **totals,
        "peak_rss_bytes_max": max((w["peak_rss_bytes"] for w in per_worker), default=0),
        "cpu_s": sum(w["process_cpu_s"] for w in per_worker),
        # The layer kernels the workers ran (one name unless their environments differ).
        "kernel": ", ".join(sorted({w["kernel"] for w in per_worker if w["kernel"]})),
        "requests": dict(sorted(requests.items())),
        "per_layer": per_layer,
        "per_worker": per_worker,
        "per_worker_layer": {  # [worker][layer], for plots
            name: [[getattr(m, name) for m in layers] for layers in workers_layers]
            for name in ("started_at", "bytes_sent", "compute_s", "wait_s", "codec_s", "cpu_s")
        },
        "config": dict(facts.config),
        "categories": facts.categories,
        "invocation_depth": facts.invocation_depth,
        "invoked_at": facts.invoked_at,
    }
