"""The ``fsdgraph`` command line.

Commands:

* ``fsdgraph graphchallenge`` — distributed Graph Challenge inference on the official files (or,
  with ``--synthetic``, on a generated RadiX-Net and generated images), checked against the
  official truth and/or the serial reference;
* ``fsdgraph plan`` — compile a network and print the plan's summary as JSON;
* ``fsdgraph run MODEL.onnx`` — an ONNX model run distributed on numpy inputs, checked against
  onnxruntime with ``--compare-reference`` (:mod:`fsdgraph.model_cli`);
* ``fsdgraph simulate`` — predicted time, cost and where the time goes, or the calibration
  against the paper's runs (:mod:`fsdgraph.simulate.cli`);
* ``fsdgraph report RUN.json`` — the itemised AWS bill and the per-layer table of a run report,
  and PNG plots with ``--plots DIR``;
* ``fsdgraph deploy`` / ``fsdgraph teardown`` — create (or update) and remove the AWS backend's
  function, role and bucket (docs/aws.md); ``--dry-run`` says what would be done;
* ``fsdgraph cleanup`` — remove what killed runs left: local run and launcher directories of
  dead coordinators and their processes, and with ``--backend aws`` the queues, topics and
  objects of runs older than ``--older-than`` (:mod:`fsdgraph.cleanup`); JSON on stdout.

Exit codes: 0 passed (or nothing to check), 1 the check failed, 2 bad usage or bad input (the
message names the file, line or option), 3 the distributed run failed (the message names the
worker, the layer and what was missing; for deploy and teardown: the AWS request that failed),
and after the run's resources were removed: 129 hung up (SIGHUP), 130 interrupted (Ctrl-C,
SIGINT), 143 terminated (SIGTERM). No traceback is printed for any of these.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsdgraph.backends import get_backend
from fsdgraph.channels import ChannelConfig, channel_names
from fsdgraph.cleanup import Terminated, terminate_on_signals
from fsdgraph.compiler import compile
from fsdgraph.config import RunSettings, load_settings
from fsdgraph.errors import FsdError, InputError
from fsdgraph.graph import Graph, sequential
from fsdgraph.kernels import categories, kernel_from_env, reference_inference, serial_inference
from fsdgraph.model_cli import add_parser as add_run_parser
from fsdgraph.model_cli import run as run_model
from fsdgraph.partitioners import Partitioner
from fsdgraph.partitioners.hypergraph import Hypergraph
from fsdgraph.plan import Plan
from fsdgraph.scheduler import RunConfig, Scheduler
from fsdgraph.simulate.cli import add_parser as add_simulate_parser
from fsdgraph.simulate.cli import run as run_simulate

EXIT_PASSED, EXIT_FAILED, EXIT_INPUT, EXIT_RUN = 0, 1, 2, 3

EPILOG = """\
settings: options override environment variables FSDGRAPH_<OPTION> (e.g. FSDGRAPH_WORKERS=8),
which override the [run] table of $FSDGRAPH_CONFIG_FILE (default ~/.fsdgraph/config.toml).

exit codes: 0 passed (or nothing to check), 1 check failed, 2 bad usage or input,
3 the distributed run (or an AWS request of deploy/teardown) failed; 129 SIGHUP,
130 Ctrl-C (SIGINT), 143 SIGTERM, each after the run's resources were removed."""


def _add_plan_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("partition")
    g.add_argument("--workers", type=int, help="number of workers P (default 4)")
    g.add_argument("--partitioner",
                   help="neuron partitioner: hypergraph (default: fewest rows sent), contiguous, "
                        "random, or a plugin's name")
    g.add_argument("--activation-aware", type=int, metavar="ROWS", default=0,
                   help="hypergraph: weigh neurons by how often they are nonzero on the first "
                        "ROWS input rows (graphchallenge) or generated images (plan)")
    g.add_argument("--strategy", choices=["auto", "model", "data", "hybrid"],
                   help="how the workers share the work: model (default: each owns a slice of "
                        "every layer), data (each holds the whole model, a slice of the "
                        "images), hybrid (--replicas groups of model-parallel workers), auto "
                        "(the planner picks from simulated predictions)")
    g.add_argument("--replicas", type=int, help="hybrid: model replicas (divides --workers)")
    g.add_argument("--collapse-at", type=int, dest="collapse_at", metavar="LAYER",
                   help="model/hybrid: from LAYER on, one worker per group computes the rows "
                        "still alive (gathered there once)")
    g.add_argument("--objective", choices=["time", "cost"],
                   help="auto: minimise predicted time (default) or cost")
    g.add_argument("--memory", type=int, dest="memory_mb", metavar="MB",
                   help="auto: the functions' memory in MB (default 1769); a strategy whose "
                        "worker would not fit is never chosen")
    g.add_argument("--config", type=Path, help="config file (default ~/.fsdgraph/config.toml)")
    return g


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = _add_plan_options(p)
    g.title = "distributed run"
    g.add_argument("--channel", choices=channel_names(),
                   help="exchange channel (default: the backend's own; queue on local and aws)")
    g.add_argument("--backend",
                   help="compute backend: local (default: processes on this machine), aws "
                        "(Lambda + SNS/SQS + S3, after fsdgraph deploy) or a plugin's name")
    g.add_argument("--direct", action="store_true", default=None,
                   help="queue channels: send straight to each worker's queue (SQS), no topics")
    g.add_argument("--branching", type=int, help="invocation tree branching factor (default 4)")
    g.add_argument("--timeout", type=float, dest="timeout_s", help="run timeout in seconds")
    g.add_argument("--prices", help="a TOML/JSON price table for the bill and the auto channel "
                                    "(default: the backend's; see docs/guide.md)")
    g.add_argument("--kernel", choices=["auto", "numba", "scipy"],
                   help="the workers' layer kernel (default auto: numba if installed, else "
                        "scipy; same results)")
    g.add_argument("--kernel-threads", type=int, dest="kernel_threads", metavar="N",
                   help="threads per layer product in a worker (default: one per vCPU on "
                        "Lambda, else 1)")
    g.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsdgraph", description="Fully serverless distributed inference.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gc = sub.add_parser(
        "graphchallenge", help="run the Graph Challenge sparse DNN distributed",
        description="Distributed Graph Challenge sparse-DNN inference, checked against the "
                    "official categories (--truth) and/or the serial reference "
                    "(--compare-serial; always with --synthetic).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    gc.add_argument("--weights", type=Path, help="folder with n{N}-l{k}.tsv[.gz]")
    gc.add_argument("--images", help="sparse-images-{N}.tsv[.gz] (with --synthetic: a count)")
    gc.add_argument("--truth", type=Path, help="neuron{N}-l{L}-categories.tsv to check against")
    gc.add_argument("--neurons", type=int, default=1024, help="neurons per layer (default 1024)")
    gc.add_argument("--layers", type=int, default=120, help="layers (default 120)")
    gc.add_argument("--bias", type=float, help="bias (default: the official one for --neurons)")
    gc.add_argument("--report", type=Path, help="write the run report JSON here")
    gc.add_argument("--compare-serial", action="store_true",
                    help="also run the serial reference; compare and time it")
    gc.add_argument("--synthetic", action="store_true",
                    help="generated RadiX-Net and generated images (no files needed)")
    gc.add_argument("--seed", type=int, default=0, help="seed for --synthetic (default 0)")
    _add_run_options(gc)

    plan = sub.add_parser("plan", help="compile a network and print the plan summary (JSON)",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan.add_argument("--weights", type=Path, help="folder with n{N}-l{k}.tsv[.gz]")
    plan.add_argument("--synthetic", action="store_true", help="a generated RadiX-Net")
    plan.add_argument("--neurons", type=int, default=1024)
    plan.add_argument("--layers", type=int, default=120)
    plan.add_argument("--bias", type=float, help="bias (default: the official one for --neurons)")
    plan.add_argument("--seed", type=int, default=0)
    _add_plan_options(plan)

    rep = sub.add_parser("report", help="print a run report's bill and per-layer table; plots",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("run", type=Path, help="a report written by graphchallenge --report")
    rep.add_argument("--plots", type=Path, metavar="DIR",
                     help="write bytes_per_layer.png, time_per_layer.png, timeline.png here "
                          "(needs matplotlib: pip install 'fsdgraph[plot]')")
    rep.add_argument("--memory-mb", type=int, default=1769,
                     help="Lambda memory the bill assumes (default 1769: one full vCPU)")
    rep.add_argument("--region", help="AWS region of the price table (default us-east-1)")
    rep.add_argument("--prices", type=Path, help="a TOML/JSON price table (see docs/guide.md)")
    for command, what in (("deploy", "create or update the AWS deployment (function, role, "
                                      "bucket)"),
                          ("teardown", "remove the AWS deployment and anything its runs left")):
        aws = sub.add_parser(command, help=what, description=what + "; see docs/aws.md.",
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        aws.add_argument("--config", type=Path,
                         help="config file with an [aws] table (default ~/.fsdgraph/config.toml)")
        aws.add_argument("--dry-run", action="store_true", help="only say what would be done")
    clean = sub.add_parser(
        "cleanup", help="remove what killed runs left (local directories and processes; AWS "
                        "queues, topics, objects)",
        description="Remove what runs whose coordinator was killed left: the local run and "
                    "launcher directories of dead coordinators and their processes, and with "
                    "--backend aws the queues, topics and objects of runs older than "
                    "--older-than. Prints JSON of what was removed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    clean.add_argument("--backend", choices=["local", "aws"], default="local",
                       help="local (default): this machine only; aws: also the AWS deployment's "
                            "run leftovers")
    clean.add_argument("--older-than", default="1h", metavar="AGE",
                       help="aws: only runs started longer ago than AGE (default 1h; s, m, h, d)")
    clean.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    clean.add_argument("--config", type=Path, help="config file (default ~/.fsdgraph/config.toml)")
    deploy = sub.choices["deploy"]
    deploy.add_argument("--package", type=Path, help="a function zip (default: build one); a zip "
                                                     "runs the scipy kernel (numba does not fit)")
    deploy.add_argument("--no-dependencies", action="store_true",
                        help="package fsdgraph's code only (for a runtime or layer that already "
                             "has numpy, scipy, msgpack, lz4, aiobotocore)")
    deploy.add_argument("--image", action="store_true",
                        help="deploy a container image with the compiled (numba) kernel: write "
                             "its build context, then build, push to ECR and deploy it with "
                             "docker, or without a running docker print the commands that do")
    deploy.add_argument("--image-context", type=Path, metavar="DIR",
                        default=Path("fsdgraph-image"),
                        help="where --image writes the build context (default: %(default)s)")
    deploy.add_argument("--image-uri", metavar="URI",
                        help="deploy this container image (ECR, the function's region), e.g. "
                             "one built from --image's context elsewhere")
    deploy.add_argument("--print-policy", choices=["worker", "operator"],
                        help="print the function's (worker) or the deployer's (operator) IAM "
                             "policy as JSON and exit")
    add_simulate_parser(sub, EPILOG)
    add_run_parser(sub, EPILOG)
    return parser


def settings_of(args: argparse.Namespace) -> RunSettings:
    """The run settings: the command's options over the environment over the config file."""
    return load_settings(args.config, workers=args.workers,
                         partitioner=getattr(args, "partitioner", None),
                         channel=getattr(args, "channel", None),
                         backend=getattr(args, "backend", None),
                         branching=getattr(args, "branching", None),
                         timeout_s=getattr(args, "timeout_s", None),
                         direct=getattr(args, "direct", None),
                         prices=getattr(args, "prices", None),
                         kernel=getattr(args, "kernel", None),
                         kernel_threads=getattr(args, "kernel_threads", None),
                         strategy=getattr(args, "strategy", None),
                         replicas=getattr(args, "replicas", None),
                         collapse_at=getattr(args, "collapse_at", None),
                         objective=getattr(args, "objective", None),
                         memory_mb=getattr(args, "memory_mb", None))


#: A run holds about this many copies of the network and of the images at once: the loaded
#: ones, the graph's float32 copies, the plan's shards and the workers' (and the outputs and
#: the serial reference for the images).
RUN_COPIES = 4
#: Generated images cover about 10% of their pixels (fsdgraph.sources.images); with margin.
SYNTHETIC_IMAGE_DENSITY = 0.125


def _check_args(args: argparse.Namespace, settings: RunSettings) -> None:
    """The options of ``graphchallenge`` and ``plan``, checked before anything is loaded or
    started: sizes, the bias, the sample, the workers, the memory a synthetic run needs."""
    from fsdgraph.sources.graphchallenge import MAX_NEURONS

    for option, value, low, high in (("--neurons", args.neurons, 1, MAX_NEURONS),
                                     ("--layers", args.layers, 1, None),
                                     ("--seed", args.seed, 0, None)):
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise InputError(f"{option} must be an integer {allowed}, got {value}")
    if args.activation_aware < 0:
        raise InputError(f"--activation-aware must be a number of rows >= 1 (0: off), "
                         f"got {args.activation_aware}")
    if args.bias is not None and not abs(args.bias) <= float(np.finfo(np.float32).max):
        raise InputError(f"--bias must be a finite number within the float32 range "
                         f"(|bias| <= {float(np.finfo(np.float32).max):.4g}), got {args.bias}")
    if settings.workers > args.neurons:
        raise InputError(f"workers={settings.workers} exceeds --neurons {args.neurons}: every "
                         f"worker must own at least one neuron of every layer")
    if args.synthetic:
        _check_synthetic_memory(args)
    else:
        from fsdgraph.sources.graphchallenge import find_file

        if args.weights is None:
            raise InputError("--weights DIR is required (or --synthetic)")
        if not args.weights.is_dir():
            raise InputError(f"--weights {args.weights}: not a directory")
        if args.command == "graphchallenge":
            if args.images is None:
                raise InputError("--images FILE is required (or --synthetic)")
            find_file(args.images)
        elif args.activation_aware:
            from fsdgraph.sources.memory import check_memory

            check_memory(_sample_bytes(args), f"--activation-aware {args.activation_aware} "
                                              f"generated images of {args.neurons} pixels")
    if getattr(args, "truth", None) is not None:
        from fsdgraph.sources.graphchallenge import find_file

        find_file(args.truth)
    if args.bias is None:
        from fsdgraph.sources.graphchallenge import graphchallenge_bias

        try:
            graphchallenge_bias(args.neurons)
        except InputError as exc:
            raise InputError(f"{exc}; give --bias") from exc


def _check_synthetic_memory(args: argparse.Namespace) -> None:
    """InputError unless a run of the generated network (and images) fits in memory."""
    from fsdgraph.sources.memory import check_memory, csr_bytes
    from fsdgraph.sources.radixnet import FANOUT_COPIES, layers_per_block

    layers_per_block(args.neurons)  # a RadiX-Net size, or InputError saying which are
    network = args.layers * csr_bytes(args.neurons, FANOUT_COPIES * 2 * args.neurons)
    need, what = RUN_COPIES * network, f"--neurons {args.neurons} --layers {args.layers}"
    if args.command == "graphchallenge":
        count = _synthetic_count(args)
        need += RUN_COPIES * csr_bytes(count, int(count * args.neurons * SYNTHETIC_IMAGE_DENSITY))
        what += f" --images {count}"
    else:
        need += _sample_bytes(args)
        what += f" --activation-aware {args.activation_aware}" if args.activation_aware else ""
    check_memory(need, f"--synthetic {what}")


def _sample_bytes(args: argparse.Namespace) -> int:
    """The memory of the images ``plan --activation-aware ROWS`` generates."""
    from fsdgraph.sources.memory import csr_bytes

    rows = args.activation_aware
    return RUN_COPIES * csr_bytes(rows, int(rows * args.neurons * SYNTHETIC_IMAGE_DENSITY))


def _synthetic_count(args: argparse.Namespace) -> int:
    try:
        count = int(args.images or 1000)
    except ValueError:
        raise InputError(
            f"--images must be a count with --synthetic, got {args.images!r}") from None
    if count < 1:
        raise InputError(f"--images must be at least 1, got {count}")
    return count


def _check_run_memory(weights: list[sp.csr_matrix], images: sp.csr_matrix | None) -> None:
    """InputError unless the copies a run makes of what was loaded fit in the memory left."""
    from fsdgraph.sources.memory import check_memory, format_bytes

    def size(m: sp.csr_matrix) -> int:
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)

    loaded = sum(size(w) for w in weights) + (size(images) if images is not None else 0)
    check_memory((RUN_COPIES - 1) * loaded,
                 f"a run of this network and these images ({format_bytes(loaded)} loaded)")


def check_writable(path: Path, option: str) -> None:
    """InputError unless ``path`` can be written, found out before the run rather than after:
    its folders are created, the file opened for appending, and what did not exist before is
    removed again."""
    if path.is_dir():
        raise InputError(f"{option} {path}: is a directory")
    missing = []  # the folders to create, deepest first
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: {folder} is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write: {exc.strerror or exc}") from exc
    finally:
        for created in missing:
            try:
                created.rmdir()
            except OSError:
                break


def _network(args: argparse.Namespace) -> tuple[list[sp.csr_matrix], float]:
    from fsdgraph.sources.graphchallenge import graphchallenge_bias, load_weights
    from fsdgraph.sources.radixnet import radixnet

    if args.synthetic:
        weights = radixnet(args.neurons, args.layers, seed=args.seed)
    elif args.weights is None:
        raise InputError("--weights DIR is required (or --synthetic)")
    else:
        weights = load_weights(args.weights, args.neurons, args.layers)
    bias = getattr(args, "bias", None)
    return weights, graphchallenge_bias(args.neurons) if bias is None else bias


def _inputs(args: argparse.Namespace) -> sp.csr_matrix:
    from fsdgraph.sources.graphchallenge import load_images
    from fsdgraph.sources.images import synthetic_images

    if args.synthetic:
        return synthetic_images(args.neurons, _synthetic_count(args), seed=args.seed + 1)
    if args.images is None:
        raise InputError("--images FILE is required (or --synthetic)")
    return load_images(args.images, args.neurons)


def make_scheduler(args: argparse.Namespace, settings: RunSettings) -> Scheduler:
    """The scheduler the settings ask for: backend, channel, run config and prices."""
    config = RunConfig(branching=settings.branching, timeout_s=settings.timeout_s,
                       stall_timeout_s=settings.stall_timeout_s,
                       relaunches=settings.relaunches,
                       relaunch_after_s=settings.relaunch_after_s,
                       # auto: each function's own FSDGRAPH_KERNEL, else the fastest there.
                       kernel=None if settings.kernel == "auto" else settings.kernel,
                       kernel_threads=settings.kernel_threads,
                       progress=False if args.no_progress else None,
                       channel=ChannelConfig(topics=settings.topics, direct=settings.direct,
                                             peer_timeout_s=settings.peer_timeout_s))
    backend = get_backend(settings.backend).configure(args.config)
    prices = None
    if settings.prices:
        from fsdgraph.prices import Prices

        prices = Prices.from_file(settings.prices)
    return Scheduler(backend, settings.channel, config, prices=prices)


def run_graphchallenge(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    _check_args(args, settings)
    if args.report is not None:
        check_writable(args.report, "--report")
    with make_scheduler(args, settings) as scheduler:
        scheduler.prewarm()  # warm workers start while the files are parsed
        loading = time.perf_counter()
        weights, bias = _network(args)
        y0 = _inputs(args)
        truth = None
        if args.truth is not None:
            from fsdgraph.sources.graphchallenge import load_truth

            truth = load_truth(args.truth)
        load_s = time.perf_counter() - loading
        _check_run_memory(weights, y0)
        graph = sequential(weights, bias, cap=32.0, bias_on_nonzero=True)
        plan = _compile(graph, settings, _partitioner(args, settings, graph, y0), y0)
        result = scheduler.run_sync(plan, y0)

    report: dict[str, Any] = {"load_s": load_s, **result.report}
    checks: list[tuple[str, bool]] = []
    if truth is not None:
        ok = np.array_equal(result.categories, truth)
        checks.append((f"categories equal the official truth ({len(truth)})", ok))
        report["truth_categories"] = len(truth)
    if args.compare_serial or args.synthetic:
        # Timed: the plain scipy loop, and the project's best serial code (the layer kernel in
        # this process, no transport). Compared: the loop in canonical summation order, which
        # the workers reproduce bit for bit.
        start = time.perf_counter()
        reference_inference(y0, graph.layers(), canonical=False)
        report["serial_s"] = time.perf_counter() - start
        report["speedup"] = report["serial_s"] / report["wall_s"]
        kernel = kernel_from_env(settings.kernel)  # the setting has read FSDGRAPH_KERNEL
        start = time.perf_counter()
        serial_inference(y0, graph.layers(), kernel)
        report["serial_best_s"] = time.perf_counter() - start
        report["serial_best_kernel"] = kernel.name
        report["speedup_best"] = report["serial_best_s"] / report["wall_s"]
        ref = reference_inference(y0, graph.layers())
        differ = (result.activations != ref).nnz
        diff = abs(result.activations - ref)
        report["max_abs_diff"] = float(diff.max()) if diff.nnz else 0.0
        report["values_differing"] = int(differ)
        checks.append(("categories equal the serial reference",
                       np.array_equal(result.categories, categories(ref))))
        checks.append(("values equal the serial reference bit for bit", differ == 0))
    passed = all(ok for _, ok in checks)
    report["passed"] = passed
    report["checks"] = {name: ok for name, ok in checks}
    _print_summary(report, checks)
    if args.report is not None:
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise InputError(f"--report {args.report}: cannot write: {exc}") from exc
        print(f"report: {args.report}")
    if checks:
        print("PASSED" if passed else "FAILED")
    return EXIT_PASSED if passed else EXIT_FAILED


def _print_summary(report: dict[str, Any], checks: list[tuple[str, bool]]) -> None:
    mb = report["bytes_sent"] / 1e6
    print(f"{report['layers']} layers x {report['batch']} rows on {report['workers']} workers "
          f"({report['backend']} backend, {report['channel']} channel, "
          f"{report['partitioner']} partition, {_parallelism(report)})")
    planned = report.get("planned")
    if planned:
        predicted = planned["predicted"]
        print(f"planned ({planned['objective']}): predicted {predicted['wall_s']:.3f} s, "
              f"${predicted['cost_usd']:.6f} on {planned['channel']} "
              f"{planned['memory_mb']} MB functions; measured {report['wall_s']:.3f} s here")
    print(f"categories: {report['categories']}   wall: {report['wall_s']:.3f} s "
          f"(setup {report.get('setup_s', 0.0):.3f} s, launch {report['launch_s']:.3f} s, "
          f"status lag {report.get('status_lag_s', 0.0):.3f} s)")
    setup = report.get("channel_setup") or {}
    if setup.get("why"):
        print(f"channel: {setup['why']}")
    print(f"sent: {mb:.2f} MB in {report['messages_sent']} messages   requests: "
          + ", ".join(f"{k} {v}" for k, v in report["requests"].items()
                      if k in ("publish", "send", "receive", "delete", "put", "get", "invoke")))
    if "serial_s" in report:
        print(f"serial reference: {report['serial_s']:.3f} s   "
              f"(distributed/serial = {report['wall_s'] / report['serial_s']:.2f})")
        print(f"serial, {report['serial_best_kernel']} kernel: {report['serial_best_s']:.3f} s   "
              f"(distributed/serial = {report['wall_s'] / report['serial_best_s']:.2f})")
    for name, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")


def _parallelism(report: dict[str, Any]) -> str:
    """E.g. ``hybrid 2 x 3, collapse to 1 at layer 10``."""
    p = report.get("parallelism") or {"strategy": "model"}
    text = str(p["strategy"])
    if p["strategy"] == "hybrid":
        text += f" {p['replicas']} x {p['group']}"
    if p.get("collapse_at") is not None:
        text += f", collapse to {p['collapse_to']} at layer {p['collapse_at']}"
    return text


def _partitioner(args: argparse.Namespace, settings: RunSettings, graph: Graph,
                 inputs: sp.csr_matrix | None) -> str | Partitioner:
    if not args.activation_aware:
        return settings.partitioner
    if settings.partitioner != "hypergraph":
        raise InputError("--activation-aware needs --partitioner hypergraph")
    if inputs is None:
        from fsdgraph.sources.images import synthetic_images

        inputs = synthetic_images(args.neurons, args.activation_aware, seed=args.seed + 1)
    return Hypergraph.activation_aware(graph.layers(), inputs[:args.activation_aware])


#: Input rows the planner measures the live-row curve on (a tenth of a second or less).
PLANNING_SAMPLE = 1000


def _compile(graph: Graph, settings: RunSettings, partitioner: str | Partitioner,
             inputs: sp.csr_matrix | None) -> Plan:
    """The plan for the settings' strategy (auto: the planner's choice for ``inputs``)."""
    if settings.strategy != "auto":
        return compile(graph, settings.workers, partitioner, strategy=settings.strategy,
                       replicas=settings.replicas or None,
                       collapse_at=settings.collapse_at or None)
    if settings.replicas or settings.collapse_at:
        raise InputError("--replicas and --collapse-at are the planner's to choose with "
                         "--strategy auto; give them with model or hybrid")
    images = inputs.shape[0] if inputs is not None else 10_000
    # This machine's profile for its own backend; AWS's (the default) for any other.
    profile = "local" if settings.backend == "local" else None
    return compile(graph, settings.workers, partitioner, strategy="auto",
                   objective=settings.objective, memory_mb=settings.memory_mb,
                   channel=settings.channel or get_backend(settings.backend).default_channel,
                   images=max(1, images), profile=profile,
                   sample=None if inputs is None else inputs[:PLANNING_SAMPLE])


def run_plan(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    _check_args(args, settings)
    weights, bias = _network(args)
    _check_run_memory(weights, None)
    graph: Graph = sequential(weights, bias, cap=32.0, bias_on_nonzero=True)
    plan = _compile(graph, settings, _partitioner(args, settings, graph, None), None)
    summary = plan.summary()
    if plan.planned is not None:
        summary["planned"] = plan.planned
    print(json.dumps(summary, indent=2))
    return EXIT_PASSED


def _check_plots_dir(path: Path) -> None:
    """``--plots DIR`` must be a folder, or a folder that can be made: a usage error if not."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--plots {path}: exists and is not a directory (give a folder for the "
                         f"three PNGs)")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"--plots {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--plots {path}: cannot write in {ancestor}")


def _check_plottable(report: dict[str, Any]) -> None:
    """What the plots read beyond what the bill checks: the names in their titles, and one
    row of ``per_worker_layer`` per worker."""
    missing = [k for k in ("channel", "partitioner", "per_worker_layer") if k not in report]
    if missing:
        raise InputError(f"cannot plot: missing {', '.join(missing)}")
    grid = report["per_worker_layer"]
    for name in ("bytes_sent", "started_at", "compute_s", "wait_s", "codec_s"):
        if name not in grid:
            raise InputError(f"cannot plot: missing per_worker_layer.{name}")
    if len(grid["started_at"]) != len(report["per_worker"]):
        raise InputError(f"cannot plot: per_worker_layer.started_at has "
                         f"{len(grid['started_at'])} rows for {len(report['per_worker'])} "
                         f"workers")
    if not report.get("invoked_at") and not any(grid["started_at"]):
        raise InputError("cannot plot: no start time (invoked_at, per_worker_layer.started_at)")


def run_report(args: argparse.Namespace) -> int:
    from fsdgraph.cost import Prices, bill
    from fsdgraph.cost.bill import check_report
    from fsdgraph.prices import MEMORY_RANGE

    if not MEMORY_RANGE[0] <= args.memory_mb <= MEMORY_RANGE[1]:
        raise InputError(f"--memory-mb must be in [{MEMORY_RANGE[0]}, {MEMORY_RANGE[1]}] "
                         f"(Lambda's memory sizes), got {args.memory_mb}")
    if args.plots is not None:
        _check_plots_dir(args.plots)
    try:
        report = json.loads(args.run.read_text())
    except OSError as exc:
        raise InputError(f"{args.run}: cannot read: {exc.strerror}") from exc
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{args.run}: not a JSON run report: "
                         f"{exc if isinstance(exc, ValueError) else 'nested too deeply'}") from exc
    try:
        check_report(report, ("workers", "layers", "per_layer", "per_worker", "requests"))
        if args.plots is not None:
            _check_plottable(report)
    except InputError as exc:
        raise InputError(f"{args.run}: {exc}") from exc
    if args.prices is not None:
        prices = Prices.from_file(args.prices)
    else:
        prices = Prices.for_region(args.region) if args.region else Prices()
    the_bill = bill(report, memory_mb=args.memory_mb, prices=prices)
    print(f"run {str(report.get('run_id', '?'))[:40]}: {report['layers']} layers x "
          f"{report.get('batch', '?')} rows on {report['workers']} workers, "
          f"{report.get('channel', '?')} channel, {report.get('partitioner', '?')} partition, "
          f"wall {report.get('wall_s', 0):.3f} s\n")
    print(the_bill.table())
    print()
    print(f"{'layer':>5} {'rows sent':>10} {'bytes sent':>12} {'msgs':>6} {'compute ms':>10} "
          f"{'wait ms':>8} {'codec ms':>8} {'cost $':>11}")
    for e in report["per_layer"]:
        cost = the_bill.per_layer.get(int(e["layer"]), 0.0)
        print(f"{e['layer']:>5} {e['rows_sent']:>10} {e['bytes_sent']:>12} "
              f"{e['messages_sent']:>6} {1e3 * e['compute_s']:>10.2f} {1e3 * e['wait_s']:>8.2f} "
              f"{1e3 * e['codec_s']:>8.2f} {cost:>11.3e}")
    if args.plots is not None:
        from fsdgraph.plots import write_plots

        for path in write_plots(report, args.plots):
            print(f"plot: {path}")
    return EXIT_PASSED


def run_deploy(args: argparse.Namespace) -> int:
    try:
        from fsdgraph.backends.aws import load_aws_settings
        from fsdgraph.backends.aws.deploy import deploy, resolve, teardown
    except ImportError as exc:
        raise InputError(f"{args.command} needs the aws extra: pip install 'fsdgraph[aws]' "
                         f"({exc})") from exc

    settings = load_aws_settings(args.config)

    def say(line: str) -> None:  # progress on stderr; stdout is the JSON result
        print(line, file=sys.stderr)

    if args.command == "teardown":
        removed = teardown(settings, dry_run=args.dry_run, say=say)
        print(json.dumps({"removed" if not args.dry_run else "would_remove":
                          [r.__dict__ for r in removed]}, indent=2))
        return EXIT_PASSED
    if args.print_policy:
        d = resolve(settings)
        policy = (d.worker_policy() if args.print_policy == "worker"
                  else d.operator_policy(image=bool(args.image or args.image_uri)))
        print(json.dumps(policy, indent=2))
        return EXIT_PASSED
    zip_options = [o for o, given in (("--package", args.package is not None),
                                      ("--no-dependencies", args.no_dependencies)) if given]
    images = [o for o, given in (("--image", args.image), ("--image-uri", args.image_uri))
              if given]
    if (images and zip_options) or len(images) > 1:
        raise InputError(f"{images[0]} and {(images[1:] + zip_options)[0]} exclude each other: "
                         "a function runs a container image or a zip, not both")
    if args.package is not None and not args.package.is_file():
        raise InputError(f"--package {args.package}: no such file")
    if args.image:
        return _deploy_image(args, settings, say)
    d = deploy(settings, package=args.package, dependencies=not args.no_dependencies,
               image_uri=args.image_uri, dry_run=args.dry_run, say=say)
    print(json.dumps({"deployment": settings.deployment, "region": settings.region,
                      "dry_run": args.dry_run,
                      "package_type": "Image" if args.image_uri else "Zip",
                      **({"image_uri": args.image_uri} if args.image_uri else {}),
                      "resources": [r.__dict__ for r in d.resources()]}, indent=2))
    return EXIT_PASSED


def _deploy_image(args: argparse.Namespace, settings: Any, say: Any) -> int:
    """``deploy --image``: build, push and deploy, or (no docker) print the commands; exit 0."""
    from fsdgraph.backends.aws.image import deploy_image

    command = ["fsdgraph", "deploy", *(["--config", str(args.config)] if args.config else [])]
    done = deploy_image(settings, args.image_context, dry_run=args.dry_run, say=say,
                        deploy_command=command)
    if done.steps:
        say(f"not building the image here: {done.reason}. The context is in "
            f"{done.push.context.path}; on a machine with docker and the AWS CLI, run:")
        for number, step in enumerate(done.steps, 1):
            say(f"  {number}. {step}")
    print(json.dumps({"deployment": settings.deployment, "region": settings.region,
                      "dry_run": args.dry_run, "package_type": "Image",
                      "image_context": str(done.push.context.path),
                      "image_uri": done.push.uri, "deployed": done.deployed,
                      **({"reason": done.reason, "steps": done.steps} if done.steps else {})},
                     indent=2))
    return EXIT_PASSED


def run_cleanup(args: argparse.Namespace) -> int:
    from fsdgraph.cleanup import cleanup, parse_duration

    older_than_s = parse_duration(args.older_than)
    removed = cleanup(args.backend, config_file=args.config, older_than_s=older_than_s,
                      dry_run=args.dry_run, say=lambda line: print(line, file=sys.stderr))
    print(json.dumps({"would_remove" if args.dry_run else "removed": removed}, indent=2))
    return EXIT_PASSED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "graphchallenge":
        return run_graphchallenge(args)
    if args.command == "report":
        return run_report(args)
    if args.command in ("deploy", "teardown"):
        return run_deploy(args)
    if args.command == "cleanup":
        return run_cleanup(args)
    if args.command == "simulate":
        return run_simulate(args)
    if args.command == "run":
        return run_model(args)
    return run_plan(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # SIGTERM and SIGHUP unwind like Ctrl-C: the run's finally blocks remove its resources.
        with terminate_on_signals():
            return _dispatch(args)
    except InputError as exc:
        print(f"fsdgraph: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # e.g. `fsdgraph report run.json | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PASSED
    except OSError as exc:  # the machine, not the input: e.g. a full disk during a run
        print(f"fsdgraph: run failed: {exc}", file=sys.stderr)
        return EXIT_RUN
    except FsdError as exc:
        print(f"fsdgraph: run failed: {exc}", file=sys.stderr)
        details = getattr(exc, "details", "")
        if details:
            print(details.rstrip(), file=sys.stderr)
        return EXIT_RUN
    except Terminated as exc:  # (a KeyboardInterrupt: first)
        print(f"fsdgraph: terminated by {exc.name}; the run's resources were removed",
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fsdgraph: interrupted; the run's resources were removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
