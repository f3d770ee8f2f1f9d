"""Benchmark: where the sparse and dense layer products cross over, and what the wire costs.

For the official 1024-neuron layers and activations of increasing density (the first layers of
the network on the shipped images, then saturated rows), times one worker-sized product (a
quarter of the outputs) both ways — CSR x CSR, and feature-major dense x transposed CSR — and
encodes the block both ways (CSR and dense wire forms). Prints JSON, one row per density. This is
where the one density threshold, ``fsdgraph.kernels.block.DENSE_ABOVE`` (the layer kernel's
product choice, the blocks' storage and the codec's wire form), comes from.

    python bench/kernels.py [--data ../shared/data/graphchallenge]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import scipy.sparse as sp

import fsdgraph
from fsdgraph.codec import BlockCodec
from fsdgraph.kernels import Block, WeightRows
from fsdgraph.kernels.reference import apply_layer
from fsdgraph.sources.graphchallenge import load_images, load_weights

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "graphchallenge"


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    weights = load_weights(args.data / "neuron1024", 1024, 8)
    y = load_images(args.data / "sparse-images-1024-first1200.tsv.gz", 1024)
    y = sp.csr_matrix(sp.vstack([y] * -(-args.rows // y.shape[0]))[: args.rows])
    layers = fsdgraph.sequential(weights, -0.3, cap=32).layers()
    quarter = WeightRows(layers[0].weight[:, :256])
    dense_codec, csr_codec = BlockCodec(dense_above=0.0), BlockCodec(dense_above=1.0)
    rows = []
    for depth in range(len(layers)):
        block = Block.from_matrix(y)
        csr = block.as_csr()
        dense = block.as_dense()
        assert csr.csr is not None and dense.dense_t is not None
        sparse_s = best_of(lambda c=csr.csr: c @ quarter.csr)
        dense_s = best_of(lambda d=dense.dense_t: quarter.transposed @ d)
        rows.append({
            "after_layer": depth, "live_rows": len(block.rows),
            "density": round(block.density, 3),
            "sparse_product_ms": round(sparse_s * 1e3, 2),
            "dense_product_ms": round(dense_s * 1e3, 2),
            "wire_csr_bytes": len(csr_codec.encode(block)),
            "wire_dense_bytes": len(dense_codec.encode(block)),
            "encode_csr_ms": round(best_of(lambda b=block: csr_codec.encode(b), 3) * 1e3, 2),
            "encode_dense_ms": round(best_of(lambda b=block: dense_codec.encode(b), 3) * 1e3, 2),
        })
        y = apply_layer(y, layers[depth])
    print(json.dumps({"benchmark": "kernel-crossover", "rows": args.rows, "runs": rows},
                     indent=2))


if __name__ == "__main__":
    main()
