"""Benchmark: dense residual MLPs run tensor parallel (op-level models, ``strategy="model"``).

The model, built with the graph API (:class:`fsdgraph.Model`): input ``x`` of ``--width`` W
features, then ``--blocks`` residual blocks, each

    h = gelu(x @ W1 + b1)          W1: W x H (``--hidden``)
    x = layer_norm(x + h @ W2 + b2)  W2: H x W; LayerNorm scale and bias

float32 weights ~ N(0, 1) / sqrt(fan_in) (biases, LayerNorm scale and bias: small random
values), drawn straight in float32 from numpy's default_rng (seed ``--seed``), on a ``--batch``
x W input.

**Sweep** (``--workers``, default 1,2,4,8): for each worker count P the model is compiled with
``strategy="model"`` (features split over the workers; at P=1 the plan is the serial whole model
on one worker) and run once on the local backend over ``--channel``. Per run: ``wall_s`` (the
report's, from submission to the assembled outputs, staging included), the bytes sent per block
against the lower bound per block (``plan.lowering.lower_bound_bytes(batch) / blocks``: the
uncompressed float32 bytes the split must move, :mod:`fsdgraph.model_lowering`), their ratio, each
worker's weight bytes (``plan.weight_bytes()``) and peak RSS (the report's ``per_worker``), the
largest absolute and relative error against the serial evaluator (``Model.evaluate``, timed once
in this process: ``serial_s``; relative error = max |y - ref| / max |ref|) and ``speedup`` =
``serial_s / wall_s``. Every worker of a local run shares this machine's cores, so wall time
shows what the exchanges and staging cost, not a parallel speedup.

**Large** (``--large``): a model of at least ``--large-gb`` GiB of float32 weights
(``--large-width`` x ``--large-hidden`` blocks, as many as that takes: 4096 x 16384 and 2 GiB
give 4 blocks) written as an ONNX model (Gemm, Gelu, Gemm, Add, LayerNormalization per block;
opset 20) whose weights are external data, streamed to one file tensor by tensor so that the
whole model is never held while writing; run by onnxruntime on that file (the reference),
imported with :func:`fsdgraph.from_onnx` and run at ``--large-workers`` (8) workers,
``strategy="model"``. It reports the largest absolute and relative difference from onnxruntime
(PASSED within ``--tolerance``, 1e-4 relative), and every worker's peak RSS against
``--memory-limit-mb`` (1024; the local backend does not enforce it: it is checked here).

Each run also reports its ``relaunches``: a worker decoding a large program sends no heartbeat
meanwhile, and a plan without exchanges (P=1) is relaunched after ``relaunch_after_s``
(``--relaunch-after-s``; default: the library's).

Prints one JSON document to stdout; progress goes to stderr. Nothing is asserted on times.

    python bench/dense.py --width 256 --hidden 1024 --blocks 2 --batch 64       # smoke
    python bench/dense.py --blocks 4 --large                     # sweep, then 2 GiB at P=8
    python bench/dense.py --large-only                           # 2 GiB ONNX model at P=8
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import fsdgraph

MiB = 2**20
GiB = 2**30
#: LayerNorm's epsilon, fsdgraph's and ONNX's default.
EPSILON = 1e-5


def sizes(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


# -- weights ---------------------------------------------------------------------------------


def block_weights(rng: np.random.Generator, width: int, hidden: int
                  ) -> dict[str, np.ndarray]:
    """One block's weights, float32, drawn in place (no float64 copy)."""
    w1 = rng.standard_normal((width, hidden), dtype=np.float32)
    w1 *= np.float32(1 / math.sqrt(width))
    w2 = rng.standard_normal((hidden, width), dtype=np.float32)
    w2 *= np.float32(1 / math.sqrt(hidden))
    small = np.float32(0.02)
    return {"w1": w1, "b1": rng.standard_normal(hidden, dtype=np.float32) * small,
            "w2": w2, "b2": rng.standard_normal(width, dtype=np.float32) * small,
            "scale": 1 + rng.standard_normal(width, dtype=np.float32) * np.float32(0.1),
            "bias": rng.standard_normal(width, dtype=np.float32) * small}


def block_bytes(width: int, hidden: int) -> int:
    return 4 * (2 * width * hidden + hidden + 3 * width)


def build_model(width: int, hidden: int, blocks: int, seed: int) -> fsdgraph.Model:
    """The residual MLP with the graph API (see the module docstring)."""
    rng = np.random.default_rng(seed)
    m = fsdgraph.Model()
    x = m.input("x", width)
    for b in range(blocks):
        p = block_weights(rng, width, hidden)
        h = m.add("gemm", x, weight=p["w1"], bias=p["b1"], name=f"b{b}.fc1")
        h = m.add("gelu", h, name=f"b{b}.gelu")
        h = m.add("gemm", h, weight=p["w2"], bias=p["b2"], name=f"b{b}.fc2")
        r = m.add("add", x, h, name=f"b{b}.residual")
        x = m.add("layer_norm", r, scale=p["scale"], bias=p["bias"], epsilon=EPSILON,
                  name=f"b{b}.norm")
        del p
    m.output(x)
    return m


def inputs(batch: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).standard_normal((batch, width), dtype=np.float32)


def errors(y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """The largest absolute difference, and that over the largest magnitude of ``ref``."""
    diff = float(np.max(np.abs(y.astype(np.float64) - ref)))
    return diff, diff / max(float(np.max(np.abs(ref))), np.finfo(np.float32).tiny)


def run(scheduler: fsdgraph.Scheduler, plan: Any, x: np.ndarray
        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    result = scheduler.run_sync(plan, {"x": x})
    return result.outputs, result.report


def worker_rows(report: dict[str, Any], weight_bytes: list[int], limit: int | None = None
                ) -> list[dict[str, Any]]:
    rows = []
    for w in report["per_worker"]:
        row = {"worker": w["worker"], "peak_rss_bytes": w["peak_rss_bytes"],
               "weight_bytes": weight_bytes[w["worker"] % len(weight_bytes)],
               "bytes_sent": w["bytes_sent"], "compute_s": round(w["compute_s"], 3),
               "wait_s": round(w["wait_s"], 3)}
        if limit is not None:
            row["within_limit"] = w["peak_rss_bytes"] <= limit
        rows.append(row)
    return rows


# -- the sweep -------------------------------------------------------------------------------


def sweep(args: argparse.Namespace, scheduler: fsdgraph.Scheduler,
          say: Callable[[str], None]) -> dict[str, Any]:
    t = time.perf_counter()
    model = build_model(args.width, args.hidden, args.blocks, args.seed)
    x = inputs(args.batch, args.width, args.seed)
    weights = args.blocks * block_bytes(args.width, args.hidden)
    say(f"built {args.blocks} blocks {args.width} x {args.hidden} "
        f"({weights / GiB:.2f} GiB) in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    out = model.outputs[0]
    ref = model.evaluate({"x": x})[out]
    serial_s = time.perf_counter() - t
    say(f"serial evaluate: {serial_s:.2f} s")
    runs = []
    for p in args.workers:
        plan = fsdgraph.compile(model, p, strategy="model")
        lower = plan.lowering.lower_bound_bytes(args.batch)
        weight_bytes = plan.weight_bytes()
        kinds = Counter(c.kind for c in plan.lowering.collectives)
        say(f"P={p}: running ({dict(kinds)})")
        outputs, report = run(scheduler, plan, x)
        del plan
        abs_err, rel_err = errors(outputs[out], ref)
        del outputs
        gc.collect()
        sent = report["bytes_sent"]
        row = {
            "workers": p, "wall_s": round(report["wall_s"], 3),
            "stage_s": round(report["stage_s"], 3), "launch_s": round(report["launch_s"], 3),
            "speedup": round(serial_s / report["wall_s"], 3),
            "bytes_sent": sent, "bytes_sent_per_block": sent / args.blocks,
            "lower_bound_bytes": lower, "lower_bound_bytes_per_block": lower / args.blocks,
            "bytes_vs_lower_bound": round(sent / lower, 4) if lower else None,
            "messages_sent": report["messages_sent"], "relaunches": report["relaunches"],
            "collectives": dict(kinds),
            "weight_bytes_max": max(weight_bytes),
            "peak_rss_bytes_max": max(w["peak_rss_bytes"] for w in report["per_worker"]),
            "max_abs_error": abs_err, "max_rel_error": rel_err,
            "per_worker": worker_rows(report, weight_bytes),
        }
        say(f"P={p}: wall {row['wall_s']} s, {sent / MiB:.1f} MiB sent "
            f"(x{row['bytes_vs_lower_bound']} the bound), peak RSS "
            f"{row['peak_rss_bytes_max'] / MiB:.0f} MiB, rel error {rel_err:.2e}")
        runs.append(row)
    return {"width": args.width, "hidden": args.hidden, "blocks": args.blocks,
            "batch": args.batch, "dtype": "float32", "weight_bytes": weights,
            "serial_s": round(serial_s, 3), "runs": runs}


# -- the large model through ONNX -------------------------------------------------------------


def write_onnx(folder: Path, width: int, hidden: int, blocks: int, seed: int) -> Path:
    """The residual MLP as ``folder/mlp.onnx`` with its weights in ``folder/weights.bin``,
    written tensor by tensor (each freed once written)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    data = folder / "weights.bin"
    initializers, nodes = [], []
    with open(data, "wb") as f:
        def external(name: str, array: np.ndarray) -> str:
            offset = f.tell()
            array.tofile(f)
            f.write(b"\0" * (-f.tell() % 4096))  # the next tensor starts page-aligned
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT,
                                 dims=list(array.shape))
            for k, v in (("location", data.name), ("offset", offset),
                         ("length", array.nbytes)):
                tensor.external_data.add(key=k, value=str(v))
            tensor.data_location = TensorProto.EXTERNAL
            initializers.append(tensor)
            return name

        x = "x"
        for b in range(blocks):
            p = block_weights(rng, width, hidden)
            names = {k: external(f"b{b}.{k}", v) for k, v in p.items()}
            del p
            nodes += [
                helper.make_node("Gemm", [x, names["w1"], names["b1"]], [f"b{b}.fc1"],
                                 name=f"b{b}.fc1"),
                helper.make_node("Gelu", [f"b{b}.fc1"], [f"b{b}.gelu"], name=f"b{b}.gelu"),
                helper.make_node("Gemm", [f"b{b}.gelu", names["w2"], names["b2"]],
                                 [f"b{b}.fc2"], name=f"b{b}.fc2"),
                helper.make_node("Add", [x, f"b{b}.fc2"], [f"b{b}.residual"],
                                 name=f"b{b}.residual"),
                helper.make_node("LayerNormalization",
                                 [f"b{b}.residual", names["scale"], names["bias"]],
                                 [f"b{b}.norm"], name=f"b{b}.norm", axis=-1, epsilon=EPSILON),
            ]
            x = f"b{b}.norm"
    graph = helper.make_graph(
        nodes, "residual_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)],
                              producer_name="fsdgraph-bench")
    path = folder / "mlp.onnx"
    onnx.save_model(model, path)
    onnx.checker.check_model(str(path))
    return path


def onnxruntime_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    del session
    return np.asarray(y)


def large(args: argparse.Namespace, scheduler: fsdgraph.Scheduler,
          say: Callable[[str], None]) -> dict[str, Any]:
    width, hidden, p = args.large_width, args.large_hidden, args.large_workers
    blocks = max(1, math.ceil(args.large_gb * GiB / (2 * 4 * width * hidden)))
    weights = blocks * block_bytes(width, hidden)
    limit = int(args.memory_limit_mb * MiB)
    x = inputs(args.batch, width, args.seed)
    with tempfile.TemporaryDirectory(prefix="fsdgraph-dense-") as tmp:
        t = time.perf_counter()
        path = write_onnx(Path(tmp), width, hidden, blocks, args.seed)
        write_s = time.perf_counter() - t
        onnx_bytes = path.stat().st_size + (Path(tmp) / "weights.bin").stat().st_size
        say(f"wrote {path.name} + weights.bin: {blocks} blocks {width} x {hidden}, "
            f"{onnx_bytes / GiB:.2f} GiB, {write_s:.1f} s")
        t = time.perf_counter()
        ref = onnxruntime_outputs(path, x)
        ort_s = time.perf_counter() - t
        gc.collect()
        say(f"onnxruntime: {ort_s:.1f} s (session load included)")
        t = time.perf_counter()
        model = fsdgraph.from_onnx(path)
        import_s = time.perf_counter() - t
        gc.collect()
        say(f"from_onnx: {import_s:.1f} s, {len(model.nodes)} nodes")
    out = model.outputs[0]
    plan = fsdgraph.compile(model, p, strategy="model")
    lower = plan.lowering.lower_bound_bytes(args.batch)
    weight_bytes = plan.weight_bytes()
    say(f"P={p}: running ({max(weight_bytes) / MiB:.0f} MiB of weights per worker)")
    outputs, report = run(scheduler, plan, x)
    del plan
    abs_diff, rel_diff = errors(outputs[out], ref)
    del outputs
    t = time.perf_counter()
    serial_abs, serial_rel = errors(model.evaluate({"x": x})[out], ref)
    serial_s = time.perf_counter() - t
    del model
    gc.collect()
    rows = worker_rows(report, weight_bytes, limit)
    passed = rel_diff <= args.tolerance
    memory_passed = all(r["within_limit"] for r in rows)
    say(f"P={p}: wall {report['wall_s']:.1f} s, rel diff from onnxruntime {rel_diff:.2e} "
        f"({'PASSED' if passed else 'FAILED'}), peak RSS max "
        f"{max(r['peak_rss_bytes'] for r in rows) / MiB:.0f} MiB "
        f"({'within' if memory_passed else 'OVER'} {args.memory_limit_mb} MiB)")
    return {
        "width": width, "hidden": hidden, "blocks": blocks, "batch": args.batch,
        "weight_bytes": weights, "onnx_file_bytes": onnx_bytes, "workers": p,
        "onnx_write_s": round(write_s, 3), "onnxruntime_s": round(ort_s, 3),
        "import_s": round(import_s, 3), "serial_s": round(serial_s, 3),
        "wall_s": round(report["wall_s"], 3), "stage_s": round(report["stage_s"], 3),
        "relaunches": report["relaunches"],
        "bytes_sent": report["bytes_sent"], "lower_bound_bytes": lower,
        "bytes_vs_lower_bound": round(report["bytes_sent"] / lower, 4) if lower else None,
        "max_abs_diff": abs_diff, "max_rel_diff": rel_diff, "tolerance": args.tolerance,
        "result": "PASSED" if passed else "FAILED",
        "serial_vs_onnxruntime": {"max_abs_diff": serial_abs, "max_rel_diff": serial_rel},
        "memory_limit_bytes": limit,
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in rows),
        "memory": "PASSED" if memory_passed else "FAILED",
        "per_worker": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096, help="features of x (W)")
    parser.add_argument("--hidden", type=int, default=16384, help="hidden features (H)")
    parser.add_argument("--blocks", type=int, default=8, help="residual blocks")
    parser.add_argument("--batch", type=int, default=512, help="rows of x")
    parser.add_argument("--workers", type=sizes, default=[1, 2, 4, 8],
                        help="worker counts of the sweep (comma-separated)")
    parser.add_argument("--channel", default="queue", help="the run's channel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relaunch-after-s", type=float, default=None,
                        help="RunConfig.relaunch_after_s (default: the library's); a worker "
                             "decoding a large program is silent meanwhile")
    parser.add_argument("--large", action="store_true",
                        help="also run the large model through ONNX (see the docstring)")
    parser.add_argument("--large-only", action="store_true",
                        help="run only the large model (implies --large)")
    parser.add_argument("--large-gb", type=float, default=2.0,
                        help="GiB of float32 weights the large model has at least")
    parser.add_argument("--large-width", type=int, default=4096)
    parser.add_argument("--large-hidden", type=int, default=16384)
    parser.add_argument("--large-workers", type=int, default=8)
    parser.add_argument("--memory-limit-mb", type=float, default=1024,
                        help="per-worker peak RSS the large run is checked against (MiB)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative difference from onnxruntime that passes")
    args = parser.parse_args()

    started = time.perf_counter()

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {what}", file=sys.stderr, flush=True)

    doc: dict[str, Any] = {"channel": args.channel, "backend": "local",
                           "cores": os.cpu_count()}
    config = fsdgraph.RunConfig(progress=False)
    if args.relaunch_after_s is not None:
        config = fsdgraph.RunConfig(progress=False, relaunch_after_s=args.relaunch_after_s)
    doc["relaunch_after_s"] = config.relaunch_after_s
    with fsdgraph.Scheduler("local", args.channel, config) as scheduler:
        if not args.large_only:
            doc["sweep"] = sweep(args, scheduler, say)
            gc.collect()
        if args.large or args.large_only:
            doc["large"] = large(args, scheduler, say)
    doc["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(doc, indent=2), flush=True)


if __name__ == "__main__":
    main()
