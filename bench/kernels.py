"""Benchmark: every serial kernel path against the useful-work floor, per band of layers.

Runs a whole network serially along each path and prints one JSON document:

* ``plain`` — the plain scipy Graph Challenge loop, ``reference_inference(canonical=False)``
  (one CSR x CSR product per layer; the classic yardstick);
* ``canonical`` — the same loop with sorted column ids, ``reference_inference()`` (the
  reference every result is checked against);
* ``scipy`` — the project's layer kernel on scipy, ``serial_inference(..., ScipyKernel())``;
* ``numba-1``, ``numba-2`` — the compiled layer kernel, ``serial_inference(...,
  FusedKernel(threads))``, one and two threads.

For each path and band of layers (1-10, where rows die, and 11-L, where the survivors are dense)
it reports CPU seconds (``time.process_time``: all threads of this process) and wall seconds, the
median of ``--repeat`` runs after one untimed warm-up run (which also compiles or loads the
compiled kernels). A band is timed as one call of the path's function on that band's layers, so
the hand-over between the bands (the activations as a CSR matrix) is counted once more than in one
call; it is small next to either band.

The floor: a layer's useful multiply-adds are, for every nonzero input ``x[r, k]``, the length of
row ``k`` of ``W`` (products with a zero input are not needed), summed over the band; at the
rate of this core's float32 matrix product (numpy ``float32`` 1024 x 1024 matmul, one BLAS
thread, in a fresh process), ``floor_s = 2 * MACs / rate``. ``gflops`` is ``2 * MACs`` over a
path's CPU seconds (over its wall seconds: ``gflops_wall``), ``vs_floor`` its CPU seconds over
the floor. ``identical`` says whether the path's output equals the canonical reference bit for
bit (``values_differing`` counts the entries that do not).

Networks: the official 1024 x 120 (``--network official``, default) on ``--images`` (10 000)
distinct images made from the 1200 shipped official ones (``distinct_images``; ``--thicken``
as there), or a generated RadiX-Net (``--network radixnet --neurons 4096 --images 2000``) with
the official bias of its size on generated stroke images (``synthetic_images``, seed + 1, as the
CLI's ``--synthetic``).

``--crossover`` adds the earlier table: one worker's share (a quarter of the outputs) of the
first layer, on the activations after each of the first layers, multiplied both ways (CSR x CSR
and feature-major dense x transposed CSR) and encoded both ways (best of 5); it is where
``fsdgraph.kernels.block.DENSE_ABOVE`` comes from.

    python bench/kernels.py [--data ../shared/data/graphchallenge] [--repeat 3] [--crossover]
    python bench/kernels.py --network radixnet --neurons 4096 --images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import fsdgraph
from fsdgraph.codec import BlockCodec
from fsdgraph.graph import Layer
from fsdgraph.kernels import Block, Kernel, WeightRows, reference_inference, serial_inference
from fsdgraph.kernels.fallback import ScipyKernel
from fsdgraph.kernels.reference import apply_layer
from fsdgraph.sources.graphchallenge import graphchallenge_bias, load_images, load_weights
from fsdgraph.sources.images import distinct_images, synthetic_images
from fsdgraph.sources.radixnet import radixnet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "graphchallenge"
#: The last layer of the first band: where the rows that will die have died.
FIRST_BAND = 10
#: Side of the float32 matrix product that measures this core's rate.
SGEMM_N = 1024
SGEMM_CODE = f"""
import time, numpy as np
a = np.random.default_rng(0).random(({SGEMM_N}, {SGEMM_N}), dtype=np.float32)
b = np.random.default_rng(1).random(({SGEMM_N}, {SGEMM_N}), dtype=np.float32)
a @ b
times = []
for _ in range(7):
    start = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - start)
print(2 * {SGEMM_N} ** 3 / min(times))
"""

#: A path: a name, what it calls, its threads, and the function that runs some layers.
KernelPath = tuple[str, str, int, Callable[[sp.csr_matrix, Sequence[Layer]], sp.csr_matrix]]


def sgemm_flops() -> float:
    """This core's float32 matrix-product rate (FLOP/s): one BLAS thread, a fresh process."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SGEMM_CODE], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def kernel_path(kernel: Kernel) -> Callable[[sp.csr_matrix, Sequence[Layer]], sp.csr_matrix]:
    """``serial_inference`` with ``kernel``."""
    return lambda y, layers: serial_inference(y, layers, kernel)


def paths() -> list[KernelPath]:
    """Every serial path, the plain loop first."""
    out: list[KernelPath] = [
        ("plain", "reference_inference(canonical=False)", 1,
         lambda y, layers: reference_inference(y, layers, canonical=False)),
        ("canonical", "reference_inference()", 1, reference_inference),
        ("scipy", "serial_inference(ScipyKernel())", 1, kernel_path(ScipyKernel())),
    ]
    try:
        from fsdgraph.kernels.fused import FusedKernel
    except ImportError:  # numba missing: the compiled paths are left out, and the JSON says so
        return out
    for threads in (1, 2):
        out.append((f"numba-{threads}", f"serial_inference(FusedKernel({threads}))", threads,
                    kernel_path(FusedKernel(threads))))
    return out


def useful_work(y0: sp.csr_matrix, layers: Sequence[Layer]
                ) -> tuple[list[int], list[int], sp.csr_matrix]:
    """Per layer, the useful multiply-adds and the rows alive after it; and the canonical output.

    A nonzero input ``x[r, k]`` needs one multiply-add per entry of row ``k`` of ``W``.
    """
    y = sp.csr_matrix(y0, dtype=np.float32)
    y.sort_indices()
    macs, alive = [], []
    for layer in layers:
        row_lengths = np.diff(sp.csr_matrix(layer.weight).indptr).astype(np.int64)
        per_input = np.bincount(y.indices, minlength=layer.weight.shape[0]).astype(np.int64)
        macs.append(int(per_input @ row_lengths))
        y = apply_layer(y, layer)
        alive.append(int(np.count_nonzero(np.diff(y.indptr))))
    return macs, alive, y


def time_bands(run: Callable[[sp.csr_matrix, Sequence[Layer]], sp.csr_matrix],
               y0: sp.csr_matrix, bands: list[Sequence[Layer]]
               ) -> tuple[list[tuple[float, float]], sp.csr_matrix]:
    """CPU and wall seconds of each band, the output of one band the input of the next."""
    y = y0
    times = []
    for band in bands:
        cpu, wall = time.process_time(), time.perf_counter()
        y = run(y, band)
        times.append((time.process_time() - cpu, time.perf_counter() - wall))
    return times, y


def network(args: argparse.Namespace) -> tuple[list[Layer], sp.csr_matrix, dict[str, Any]]:
    """The layers, the images, and what they are (for the JSON)."""
    if args.network == "official":
        weights = load_weights(args.data / "neuron1024", 1024, args.layers)
        bias = graphchallenge_bias(1024)
        shipped = load_images(args.data / "sparse-images-1024-first1200.tsv.gz", 1024)
        count = args.images or 10_000
        y0 = distinct_images(shipped, count, seed=args.seed, thicken=args.thicken)
        what = {"network": f"official 1024 x {args.layers}", "neurons": 1024,
                "images": f"{count} distinct images made from the first 1200 official ones "
                          f"(distinct_images, seed {args.seed}, thicken {args.thicken})"}
    else:
        weights = radixnet(args.neurons, args.layers, seed=args.seed)
        bias = graphchallenge_bias(args.neurons)
        count = args.images or 2000
        y0 = synthetic_images(args.neurons, count, seed=args.seed + 1)
        what = {"network": f"RadiX-Net {args.neurons} x {args.layers} (seed {args.seed})",
                "neurons": args.neurons,
                "images": f"{count} synthetic_images (seed {args.seed + 1})"}
    layers = fsdgraph.sequential(weights, bias, cap=32, bias_on_nonzero=True).layers()
    return layers, y0, {**what, "layers": args.layers, "bias": bias, "rows": count}


def crossover(layers: Sequence[Layer], y0: sp.csr_matrix) -> list[dict[str, Any]]:
    """The earlier density table (see the module docstring)."""

    def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    width = layers[0].weight.shape[1]
    quarter = WeightRows(layers[0].weight[:, : width // 4])
    dense_codec, csr_codec = BlockCodec(dense_above=0.0), BlockCodec(dense_above=1.0)
    y = sp.csr_matrix(y0)
    rows = []
    for depth in range(min(8, len(layers))):
        block = Block.from_matrix(y)
        csr, dense = block.as_csr(), block.as_dense()
        assert csr.csr is not None and dense.dense_t is not None
        rows.append({
            "after_layer": depth, "live_rows": len(block.rows),
            "density": round(block.density, 3),
            "sparse_product_ms": round(best_of(lambda c=csr.csr: c @ quarter.csr) * 1e3, 2),
            "dense_product_ms": round(
                best_of(lambda d=dense.dense_t: quarter.transposed @ d) * 1e3, 2),
            "wire_csr_bytes": len(csr_codec.encode(block)),
            "wire_dense_bytes": len(dense_codec.encode(block)),
            "encode_csr_ms": round(best_of(lambda b=block: csr_codec.encode(b), 3) * 1e3, 2),
            "encode_dense_ms": round(best_of(lambda b=block: dense_codec.encode(b), 3) * 1e3,
                                     2),
        })
        y = apply_layer(y, layers[depth])
    return rows


def source_state() -> dict[str, Any]:
    """The commit measured, and whether the kernels had uncommitted changes then."""
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "kernels_modified": bool(git("status", "--porcelain", "--", "kernels"))}


def threading_layer() -> str | None:
    """The threading layer numba's parallel kernels ran on (None if none ran)."""
    try:
        import numba

        return str(numba.threading_layer())
    except (ImportError, ValueError):  # ValueError: no parallel function has run
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--network", choices=("official", "radixnet"), default="official")
    parser.add_argument("--neurons", type=int, default=4096, help="radixnet: neurons per layer")
    parser.add_argument("--layers", type=int, default=120)
    parser.add_argument("--images", type=int,
                        help="images (default 10 000 official, 2000 radixnet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thicken", type=int, default=0, help="official: see distinct_images")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="comma-separated path names (default: all)")
    parser.add_argument("--crossover", action="store_true",
                        help="also the CSR / dense crossover table of the first layers")
    args = parser.parse_args()

    load_before = os.getloadavg()  # a shared machine: how busy it was is part of the result
    layers, y0, what = network(args)
    cut = min(FIRST_BAND, len(layers))
    bands = [layers[:cut]] + ([layers[cut:]] if cut < len(layers) else [])
    names = [f"1-{cut}"] + ([f"{cut + 1}-{len(layers)}"] if cut < len(layers) else [])
    macs, alive, reference = useful_work(y0, layers)
    rate = sgemm_flops()
    band_macs = [sum(macs[:cut]), sum(macs[cut:])][: len(bands)]
    floors = [2 * m / rate for m in band_macs]

    chosen = paths()
    if args.only:
        keep = set(args.only.split(","))
        chosen = [p for p in chosen if p[0] in keep]
    results = []
    for name, call, threads, run in chosen:
        _, out = time_bands(run, y0, bands)  # warm-up: compiles or loads the compiled kernels
        differing = int((out != reference).nnz)
        runs = [time_bands(run, y0, bands)[0] for _ in range(args.repeat)]
        per_band = []
        for b, band_name in enumerate(names):
            cpu = statistics.median(r[b][0] for r in runs)
            wall = statistics.median(r[b][1] for r in runs)
            per_band.append({
                "layers": band_name, "cpu_s": round(cpu, 4), "wall_s": round(wall, 4),
                "gflops": round(2 * band_macs[b] / cpu / 1e9, 3),
                "gflops_wall": round(2 * band_macs[b] / wall / 1e9, 3),
                "vs_floor": round(cpu / floors[b], 1),
            })
        cpu_total = statistics.median(sum(t[0] for t in r) for r in runs)
        wall_total = statistics.median(sum(t[1] for t in r) for r in runs)
        row = {"path": name, "calls": call, "threads": threads,
               "identical": differing == 0, "values_differing": differing,
               "cpu_s": round(cpu_total, 4), "wall_s": round(wall_total, 4),
               "gflops": round(2 * sum(band_macs) / cpu_total / 1e9, 3),
               "bands": per_band}
        results.append(row)
        print(json.dumps({k: row[k] for k in ("path", "cpu_s", "wall_s", "identical")}),
              file=sys.stderr)

    doc: dict[str, Any] = {
        "benchmark": "kernel-paths",
        **what,
        **source_state(),
        "repeat": args.repeat,
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "numba_threading_layer": threading_layer(),
        "live_rows_after": {str(l): alive[l - 1] for l in (1, 2, 3, 4, 6, 10, len(layers))
                            if l <= len(layers)},
        "sgemm_gflops_one_core": round(rate / 1e9, 2),
        "sgemm_n": SGEMM_N,
        "floor": [{"layers": n, "macs": m, "floor_s": round(f, 4)}
                  for n, m, f in zip(names, band_macs, floors, strict=True)],
        "paths": results,
    }
    if args.crossover:
        doc["crossover"] = crossover(layers, y0)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
