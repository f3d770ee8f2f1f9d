"""``fsdgraph simulate``: predict a run's time, cost and where the time goes, or calibrate the
simulator against the paper's measured runs (``--paper DIR``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fsdgraph.errors import ConfigError, InputError
from fsdgraph.simulate.profile import load_profile

EXIT_PASSED = 0
BREAKDOWN = ("launch", "load", "compute", "send", "receive", "wait", "overhead")


def add_parser(subparsers: Any, epilog: str) -> None:
    """Add the ``simulate`` subcommand to ``fsdgraph``'s subparsers."""
    sim = subparsers.add_parser(
        "simulate", help="predict a run's time and cost with the calibrated simulator",
        description="Predict the wall time, cost and time breakdown of a Graph Challenge "
                    "RadiX-Net run with the discrete-event simulator (docs/simulator.md), or "
                    "with --paper DIR calibrate it on the FSD-Inference paper's measured runs.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("--neurons", type=int, help="neurons per layer (e.g. 1024)")
    sim.add_argument("--layers", type=int, default=120, help="layers (default 120)")
    sim.add_argument("--workers", type=_ints, metavar="P",
                     help="functions (P); with --strategy auto a list to choose from (2,4,8)")
    sim.add_argument("--images", type=int, default=10_000, help="images (default 10000)")
    sim.add_argument("--channel", type=_channels, default=["queue"], metavar="C",
                     help="queue (default) or object; with --strategy auto a list to choose "
                          "from (queue,object)")
    sim.add_argument("--memory", type=_ints, default=[1769], metavar="MB",
                     help="Lambda memory (default 1769 MB = 1 vCPU); with --strategy auto a "
                          "list to choose from (1769,3008)")
    sim.add_argument("--strategy", choices=["model", "data", "hybrid", "auto"], default="model",
                     help="how the workers share the work (auto: the planner's choice, needs "
                          "--weights)")
    sim.add_argument("--replicas", type=int, default=1, help="hybrid: model replicas")
    sim.add_argument("--weights", type=Path, metavar="DIR",
                     help="simulate the compiled plan of this network (n{N}-l{k}.tsv[.gz] in "
                          "DIR; --neurons and --layers say which) instead of a RadiX-Net "
                          "described by its size")
    sim.add_argument("--partitioner", default="hypergraph",
                     help="--weights: the neuron partitioner (default hypergraph)")
    sim.add_argument("--collapse-at", type=int, dest="collapse_at", metavar="LAYER",
                     help="--weights, model/hybrid: one worker per group from LAYER on")
    sim.add_argument("--objective", choices=["time", "cost"], default="time",
                     help="--strategy auto: minimise predicted time (default) or cost")
    sim.add_argument("--profile", metavar="F",
                     help="aws (default), paper, local, or a TOML file merged over aws")
    sim.add_argument("--seed", type=int, default=0, help="latency samples (default 0)")
    sim.add_argument("--report", type=Path, metavar="R.json", help="write the JSON report")
    sim.add_argument("--paper", type=Path, metavar="DIR",
                     help="calibrate on the paper's queue_runs.csv and object_runs.csv in DIR")
    sim.add_argument("--plot", type=Path, metavar="P.png",
                     help="--paper: plot predicted against measured (needs matplotlib)")
    sim.add_argument("--no-fit", action="store_true",
                     help="--paper: evaluate the shipped paper profile without fitting")
    sim.add_argument("--write-profile", type=Path, metavar="F.toml",
                     help="--paper: write the fitted paper profile to F.toml")


def _ints(text: str) -> list[int]:
    """``4`` or ``2,4,8``: positive integers."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma-separated list of "
                                         f"them, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _channels(text: str) -> list[str]:
    """``queue``, ``object`` or ``queue,object``."""
    values = text.split(",")
    unknown = [v for v in values if v not in ("queue", "object")]
    if unknown:
        raise argparse.ArgumentTypeError(f"channel {unknown[0]!r}: expected queue or object")
    return values


def _write_report(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot write the report: {exc}") from exc


def plot_calibration(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Predicted against measured time and cost, one point per run (training runs hollow)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'fsdgraph[plot]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, key, unit in ((axes[0], "time", "s"), (axes[1], "cost", "USD")):
        suffix = "_s" if key == "time" else "_usd"
        lo, hi = float("inf"), 0.0
        for channel, color in (("queue", "tab:blue"), ("object", "tab:orange")):
            for train, marker in ((True, "o"), (False, "s")):
                pts = [r for r in runs if r["channel"] == channel and r["train"] == train]
                xs = [r[f"{key}_measured{suffix}"] for r in pts]
                ys = [r[f"{key}_predicted{suffix}"] for r in pts]
                if xs:
                    lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
                ax.scatter(xs, ys, marker=marker, edgecolors=color,
                           facecolors="none" if train else color,
                           label=f"{channel}, {'train' if train else 'left out'}")
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.plot([lo, hi], [lo * 1.25, hi * 1.25], color="grey", lw=0.5, ls=":")
        ax.plot([lo, hi], [lo / 1.25, hi / 1.25], color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {key} ({unit})")
        ax.set_ylabel(f"predicted {key} ({unit})")
        ax.set_title("summed Lambda runtime" if key == "time" else "the paper's bill")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the plot: {exc}") from exc
    finally:
        plt.close(fig)


def _run_paper(args: argparse.Namespace) -> int:
    from fsdgraph.simulate.calibrate import calibrate, paper_profile_text

    folder: Path = args.paper
    for name in ("queue_runs.csv", "object_runs.csv"):
        if not (folder / name).is_file():
            raise InputError(f"--paper {folder}: {name} not found")
    profile = load_profile(args.profile or "paper")
    cal = calibrate(folder, fit_params=not args.no_fit, seed=args.seed, profile=profile,
                    progress=lambda m: print(f"fsdgraph simulate: {m}", file=sys.stderr))
    data = cal.to_dict()
    _write_report(args.report, data)
    print(f"{'run':34} {'split':8} {'time meas':>10} {'time pred':>10} {'err':>7} "
          f"{'cost meas':>10} {'cost pred':>10} {'err':>7}")
    for r in cal.runs:
        print(f"{r['config']:34} {'train' if r['train'] else 'left out':8} "
              f"{r['time_measured_s']:10.1f} {r['time_predicted_s']:10.1f} "
              f"{r['time_rel_err']:+7.1%} {r['cost_measured_usd']:10.5f} "
              f"{r['cost_predicted_usd']:10.5f} {r['cost_rel_err']:+7.1%}")
    print(f"left out: median |error| time {cal.median_abs_err_time:.1%} "
          f"(METRIC_LAMBDA_RUNTIME), cost {cal.median_abs_err_cost:.1%} (the paper's bill)")
    if args.plot:
        plot_calibration(cal.runs, args.plot,
                         f"simulator vs the paper's {len(cal.runs)} measured AWS runs (left "
                         f"out: time {cal.median_abs_err_time:.1%}, cost "
                         f"{cal.median_abs_err_cost:.1%})")
    if args.write_profile:
        try:
            args.write_profile.write_text(paper_profile_text(cal), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{args.write_profile}: cannot write the profile: {exc}") from exc
    return EXIT_PASSED


def format_prediction(p: Any) -> str:
    """The short table ``fsdgraph simulate`` prints."""
    lines = [f"predicted with profile {p.profile}: {p.workers} workers, {p.layers} layers, "
             f"{p.images} images, {p.channel} channel, {p.memory_mb} MB",
             f"  wall time    {p.wall_s:12.3f} s   ({p.wall_s / p.images * 1e3:.4f} ms per image)",
             f"  billed time  {p.runtime_s:12.3f} s   (Lambda, summed over workers)",
             f"  cost         {p.cost_usd:12.6f} USD ({p.cost_usd / p.images:.3e} per image)",
             "where the time goes (seconds summed over workers):"]
    total = sum(p.breakdown.get(k, 0.0) for k in BREAKDOWN) or 1.0
    lines += [f"  {k:9} {p.breakdown.get(k, 0.0):12.3f}  {p.breakdown.get(k, 0.0) / total:6.1%}"
              for k in BREAKDOWN]
    lines.append("requests: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(p.requests.items())
                                          if v))
    lines.append(f"bytes on the wire: {p.bytes:,.0f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``fsdgraph simulate``; exit code 0, or an InputError (exit 2)."""
    if args.paper is not None:
        return _run_paper(args)
    if args.plot or args.no_fit or args.write_profile:
        raise InputError("--plot, --no-fit and --write-profile go with --paper DIR")
    missing = [f"--{n}" for n in ("neurons", "workers") if getattr(args, n) is None]
    if missing:
        raise InputError(f"fsdgraph simulate needs {' and '.join(missing)} (or --paper DIR)")
    from fsdgraph.simulate.predict import predict

    profile = load_profile(args.profile)
    lists = [f"--{n}" for n in ("workers", "memory", "channel") if len(getattr(args, n)) > 1]
    if lists and args.strategy != "auto":
        raise InputError(f"lists of {', '.join(lists)} are for the planner to choose from: give "
                         f"--strategy auto (and the network with --weights DIR)")
    if args.weights is not None:
        p, parallelism = _predict_compiled(args, profile)
    elif args.strategy == "auto" or args.collapse_at is not None:
        raise InputError("--strategy auto and --collapse-at need a compiled plan: give the "
                         "network with --weights DIR")
    else:
        p = predict(neurons=args.neurons, layers=args.layers, workers=args.workers[0],
                    images=args.images, channel=args.channel[0], memory_mb=args.memory[0],
                    strategy=args.strategy, replicas=args.replicas, profile=profile,
                    seed=args.seed)
        parallelism = {"strategy": args.strategy, "replicas": args.replicas}
    print(format_prediction(p))
    _write_report(args.report, {"command": "simulate", "neurons": args.neurons, **parallelism,
                                **p.to_dict()})
    return EXIT_PASSED


def _predict_compiled(args: argparse.Namespace, profile: Any) -> tuple[Any, dict[str, Any]]:
    """The prediction for the plan compiled from the network in ``--weights``, and how that
    plan shares the work."""
    import fsdgraph
    from fsdgraph.planner import choose
    from fsdgraph.simulate.predict import predict_plan
    from fsdgraph.sources.graphchallenge import graphchallenge_bias, load_weights

    weights = load_weights(args.weights, args.neurons, args.layers)
    graph = fsdgraph.sequential(weights, graphchallenge_bias(args.neurons),
                                cap=32.0, bias_on_nonzero=True)
    channel, memory_mb = args.channel[0], args.memory[0]
    if args.strategy == "auto":
        if args.collapse_at is not None:
            raise InputError("--collapse-at is the planner's to choose with --strategy auto")
        choice = choose(graph.layers(), args.workers, partitioner=args.partitioner,
                        objective=args.objective, memory_mb=args.memory, channel=args.channel,
                        images=args.images, profile=profile)
        plan, channel, memory_mb = choice.plan, choice.channel, choice.memory_mb
        plan.planned = choice.to_dict()
    else:
        plan = fsdgraph.compile(graph, args.workers[0], args.partitioner, strategy=args.strategy,
                                replicas=args.replicas if args.strategy == "hybrid" else None,
                                collapse_at=args.collapse_at)
    p = predict_plan(plan, images=args.images, channel=channel, memory_mb=memory_mb,
                     profile=profile, seed=args.seed)
    shared = plan.parallelism()
    print(f"plan: {plan.workers} workers, {shared['strategy']}, {shared['replicas']} replica(s) "
          f"of {shared['group']}, collapse at {shared['collapse_at']}, {len(plan.edges)} "
          f"exchange edges ({args.partitioner})")
    return p, {**plan.parallelism(), "partitioner": args.partitioner,
               "planned": plan.planned}
