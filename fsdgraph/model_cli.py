"""``fsdgraph run MODEL.onnx``: an ONNX model run distributed on numpy inputs, its outputs
written, and with ``--compare-reference`` checked against onnxruntime in the same process.

Inputs and outputs are numpy files, read without pickles (``allow_pickle=False``): ``X.npy``
for a model with one input, ``X.npz`` (one array per input name) otherwise; the output is
``Y.npy`` when the model has one output or the path ends in ``.npy`` (the first output),
``Y.npz`` with every output by name otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fsdgraph.errors import InputError

EXIT_PASSED, EXIT_FAILED = 0, 1
#: ``--compare-reference`` passes when every output is within this of onnxruntime's, relative
#: to the output's largest magnitude (float32 dense models).
TOLERANCE = 1e-4


def add_parser(subparsers: Any, epilog: str) -> None:
    """Add the ``run`` subcommand to ``fsdgraph``'s subparsers."""
    run = subparsers.add_parser(
        "run", help="run an ONNX model distributed on numpy inputs",
        description="Import MODEL.onnx (supported ops: docs/models.md), run it on P workers, "
                    "each computing a slice of the input rows (--strategy data) or a share of "
                    "every op's features (--strategy model), and write the outputs.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("model", type=Path, metavar="MODEL.onnx")
    run.add_argument("--input", type=Path, required=True, metavar="X.npy",
                     help="the input rows: .npy (one model input) or .npz (by input name)")
    run.add_argument("--output", type=Path, metavar="Y.npy",
                     help="where to write the outputs: .npy (the first output) or .npz (all)")
    run.add_argument("--outputs", metavar="NAMES",
                     help="comma-separated graph outputs to compute (default: all)")
    run.add_argument("--compare-reference", action="store_true",
                     help="also run the model in onnxruntime here and compare (PASSED within "
                          f"{TOLERANCE:g} relative)")
    run.add_argument("--report", type=Path, metavar="R.json", help="write the run report")
    g = run.add_argument_group("distributed run")
    g.add_argument("--workers", type=int, help="number of workers P (default 4)")
    g.add_argument("--strategy", choices=["data", "model", "auto"],
                   help="data (default): each worker holds the whole model and computes a slice "
                        "of the rows; model: each holds a share of every op's features and "
                        "weights, exchanging over the channel (a model too big for one "
                        "function); auto: data unless twice the weights exceed --memory")
    g.add_argument("--memory", type=int, dest="memory_mb", metavar="MB",
                   help="auto: the functions' memory in MB (default 1769)")
    g.add_argument("--channel", help="exchange channel (default queue; a data-parallel run "
                                     "exchanges nothing)")
    g.add_argument("--backend", help="compute backend: local (default), aws, or a plugin's name")
    g.add_argument("--config", type=Path, help="config file (default ~/.fsdgraph/config.toml)")
    g.add_argument("--timeout", type=float, dest="timeout_s", help="run timeout in seconds")
    g.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def read_inputs(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays of ``path`` (.npy for one input, .npz by name), without unpickling."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"--input {path}: file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"--input {path}: not a numpy .npy or .npz file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise InputError(f"--input {path}: the model has inputs {', '.join(names)}: give "
                             f"an .npz with one array per name")
        arrays = {names[0]: loaded}
    else:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    for name, a in arrays.items():
        if a.dtype.kind not in "iuf":
            raise InputError(f"--input {path}: array {name!r} is {a.dtype}, expected numbers")
    return arrays


def write_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npz":
            savez: Any = np.savez  # numpy's stubs take every keyword for allow_pickle
            savez(path, **outputs)
        else:
            np.save(path, next(iter(outputs.values())))
    except OSError as exc:
        raise InputError(f"--output {path}: cannot write: {exc}") from exc


def reference(model_path: Path, inputs: dict[str, np.ndarray],
              names: list[str]) -> dict[str, np.ndarray]:
    """The outputs ``names`` of the model run by onnxruntime on ``inputs``."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError("--compare-reference needs onnxruntime: pip install "
                         "'fsdgraph[onnx]'") from None
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds = {name: np.asarray(a, dtype=np.float32) for name, a in inputs.items()}
    return dict(zip(names, session.run(names, feeds), strict=True))


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per output: the largest absolute difference, and that over the output's largest
    magnitude (relative); whether all are within :data:`TOLERANCE`."""
    per: dict[str, dict[str, float]] = {}
    for name, a in ours.items():
        b = np.asarray(theirs[name], dtype=np.float64).reshape(a.shape)
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        per[name] = {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale else diff}
    worst = max((d["max_rel_diff"] for d in per.values()), default=0.0)
    return {"outputs": per, "max_rel_diff": worst,
            "passed": bool(worst <= TOLERANCE and not math.isnan(worst))}


def run(args: argparse.Namespace) -> int:
    """Run ``fsdgraph run``; exit 0 (1 if --compare-reference fails), or an error."""
    from fsdgraph.cli import make_scheduler, settings_of
    from fsdgraph.compiler import compile
    from fsdgraph.sources.onnx import from_onnx

    if args.report is not None:
        from fsdgraph.cli import check_writable

        check_writable(args.report, "--report")
    settings = settings_of(args)
    chosen = args.outputs.split(",") if args.outputs else None
    model = from_onnx(args.model, outputs=chosen)
    inputs = read_inputs(args.input, list(model.inputs))
    plan = compile(model, settings.workers, strategy=args.strategy or "data",
                   memory_mb=args.memory_mb or settings.memory_mb)
    with make_scheduler(args, settings) as scheduler:
        result = scheduler.run_sync(plan, inputs)
    report: dict[str, Any] = dict(result.report)
    outputs = result.outputs
    rows = next(iter(outputs.values())).shape[0]
    how = "data parallel" if plan.strategy == "data" else "model parallel"
    print(f"{len(model.nodes)} ops x {rows} rows on {report['workers']} workers "
          f"({report['backend']} backend, {how}): {report['wall_s']:.3f} s; outputs "
          + ", ".join(f"{name} {a.shape[0]}x{a.shape[1]}" for name, a in outputs.items()))
    if args.output is not None:
        write_outputs(args.output, outputs)
        print(f"outputs: {args.output}")
    passed = True
    if args.compare_reference:
        check = compare(outputs, reference(args.model, inputs, list(outputs)))
        report["reference"] = {"runtime": "onnxruntime", "tolerance": TOLERANCE, **check}
        for name, d in check["outputs"].items():
            print(f"{name}: max |difference| {d['max_abs_diff']:.3g}, relative "
                  f"{d['max_rel_diff']:.3g} (onnxruntime)")
        passed = check["passed"]
    if args.report is not None:
        try:
            args.report.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise InputError(f"--report {args.report}: cannot write: {exc}") from exc
        print(f"report: {args.report}")
    if args.compare_reference:
        print("PASSED" if passed else "FAILED")
    return EXIT_PASSED if passed else EXIT_FAILED
