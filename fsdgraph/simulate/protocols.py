"""Request rules: how many requests of each kind a worker makes per layer, and how many bytes it
ships, under fsdgraph's protocol (:func:`fsdgraph_requests`) or the paper's
(:func:`paper_requests`, or from one of its measured runs, :func:`paper_row_workload`).

fsdgraph (what ``fsdgraph.cost.estimate`` also charges): every exchange edge is one message per
started ``max_message_bytes`` of its base64 wire bytes (queue), published packed per
(layer, sender) ``batch_entries`` to a call, received 10 per call plus ``empty_polls`` empty
receives per edge, one batch delete per non-empty receive; or one PUT and ``1 + empty_polls``
GETs per edge (object).

The paper (``../shared/PAPER.md``): PublishBatch of <= 10 entries and <= 0.99 x 256 KiB, zlib'd
float32 triplets as text; receives are 1 s long polls, each followed by a DynamoDB query; S3
objects per (layer, source, target) found by LIST polls every 0.1 s, float64 (2.3x the bytes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fsdgraph.errors import ConfigError
from fsdgraph.simulate.kernelcost import PATHS, kernel_path, macs
from fsdgraph.simulate.profile import Profile
from fsdgraph.simulate.workload import Array, Curve, Workload, all_to_all

CHANNELS = ("queue", "object")
#: The paper's PublishBatch payload cap (PAPER.md).
PAPER_BATCH_BYTES = 0.99 * 256 * 1024
#: The paper's S3 objects are float64: 2.3x the bytes of its float32 messages (PAPER.md).
PAPER_OBJECT_BYTES_FACTOR = 2.3


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ConfigError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")


def _paths(density: Array, profile: Profile) -> list[str]:
    return [kernel_path(float(d), profile.num("kernel.tiled_above"),
                        profile.num("kernel.dense_above")) for d in density]


def compute_arrays(weight_nnz: Array, inputs: Array, rows: Array, curve: Curve,
                   profile: Profile) -> tuple[Array, npt.NDArray[np.int64]]:
    """Multiply-adds and kernel path per (worker, layer): ``weight_nnz[w, l]`` nonzeros over
    ``inputs[w, l]`` input neurons, ``rows[w, l]`` live rows of the layer's density."""
    paths = _paths(curve.density, profile)
    work = np.zeros_like(weight_nnz)
    code = np.zeros(weight_nnz.shape, np.int64)
    for l, p in enumerate(paths):
        work[:, l] = [macs(p, float(n), float(i), float(r), float(curve.density[l]))
                      for n, i, r in zip(weight_nnz[:, l], inputs[:, l], rows[:, l], strict=True)]
        code[:, l] = PATHS.index(p)
    return work, code


def fsdgraph_requests(channel: str, workers: int, layers: int,
                      edges: Sequence[tuple[int, int, int, float]],
                      profile: Profile) -> tuple[dict[str, Array], Array, Array]:
    """fsdgraph's requests per (worker, layer) and wire bytes sent/received, for ``edges``
    ``(layer, src, dst, payload bytes)``."""
    _check_channel(channel)
    shape = (workers, layers)
    req = {k: np.zeros(shape) for k in ("publish", "receive", "delete", "put", "get")}
    sent, got = np.zeros(shape), np.zeros(shape)
    msgs_out, msgs_in, edges_in = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    empty = profile.num(f"{channel}.empty_polls")
    if channel == "queue":
        wire_factor = profile.num("queue.wire_factor")
        limit = profile.num("queue.max_message_bytes")
        for l, s, d, payload in edges:
            wire = payload * wire_factor
            m = max(1, math.ceil(wire / limit))
            sent[s, l] += wire
            got[d, l] += wire
            msgs_out[s, l] += m
            msgs_in[d, l] += m
            edges_in[d, l] += 1
        per_call = profile.num("protocol.batch_entries")
        req["publish"] = np.ceil(msgs_out / per_call)
        nonempty = np.ceil(msgs_in / per_call)
        req["receive"] = nonempty + empty * edges_in
        req["delete"] = nonempty
    else:
        for l, s, d, payload in edges:
            sent[s, l] += payload
            got[d, l] += payload
            req["put"][s, l] += 1
            req["get"][d, l] += 1 + empty
    return req, sent, got


def paper_requests(channel: str, workers: int, layers: int,
                   edges: Sequence[tuple[int, int, int, float]],
                   profile: Profile) -> tuple[dict[str, Array], Array, Array]:
    """The paper's requests for ``edges`` (payload bytes of its float32 encoding): batches of
    <= 10 entries / 0.99 x 256 KiB per (layer, sender); 1 s long polls (10 messages each, plus
    ``empty_polls`` per edge), each with a DynamoDB query; or a PUT per edge, float64, GETs,
    and LIST polls every 0.1 s (one per layer plus ``empty_polls`` per edge)."""
    _check_channel(channel)
    shape = (workers, layers)
    req = {k: np.zeros(shape) for k in ("publish", "receive", "query", "put", "get", "list")}
    sent, got = np.zeros(shape), np.zeros(shape)
    msgs_out, msgs_in, edges_in = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    empty = profile.num(f"{channel}.empty_polls")
    limit = profile.num("queue.max_message_bytes")
    for l, s, d, payload in edges:
        b = payload if channel == "queue" else payload * PAPER_OBJECT_BYTES_FACTOR
        sent[s, l] += b
        got[d, l] += b
        msgs_out[s, l] += max(1, math.ceil(b / limit))
        msgs_in[d, l] += max(1, math.ceil(b / limit))
        edges_in[d, l] += 1
    if channel == "queue":
        req["publish"] = np.maximum(np.ceil(msgs_out / 10), np.ceil(sent / PAPER_BATCH_BYTES))
        req["receive"] = np.ceil(msgs_in / 10) + empty * edges_in
        req["query"] = req["receive"].copy()
    else:
        req["put"] = msgs_out.copy()
        req["get"] = msgs_in.copy()
        req["list"] = np.where(edges_in > 0, 1 + empty * edges_in, 0.0)
    return req, sent, got


def paper_row_workload(row: Mapping[str, str], channel: str, profile: Profile,
                       curve: Curve) -> Workload:
    """The workload of one of the paper's measured runs, its request counts and bytes taken from
    its CSV row and spread over workers evenly and over layers as the exchanged nonzeros are
    (bytes) or evenly (requests); every worker waits for every other (the paper's all-to-all
    exchange); work from the Graph Challenge curve (32 nonzeros per neuron per layer, the
    1024-neuron live-row curve for every size: the only one measured)."""
    _check_channel(channel)
    name = row.get("CONFIG", "?")

    def col(key: str) -> float:
        try:
            return float(row[key])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"paper run {name}: column {key} missing or not a number") from None

    P, N, L = int(col("TOTAL_NWORKERS")), int(col("NUM_NEURONS")), int(col("NUM_LAYERS"))
    images = int(col("NUM_DATA"))
    if len(curve.live) != L:
        raise ConfigError(f"paper run {name}: {L} layers, curve has {len(curve.live)}")
    share = np.zeros(L)
    share[1:] = curve.live[1:] * curve.density[1:]  # no exchange before layer 0
    share /= share.sum()
    shape = (P, L)
    even = np.zeros(shape)
    even[:, 1:] = 1.0 / (P * (L - 1))

    def spread(total: float) -> Array:
        return total * np.broadcast_to(share, shape) / P

    if channel == "queue":
        req = {"publish": col("METRIC_PUBLISH_CALLS") * even,
               "receive": col("METRIC_RECEIVE_POLL_CALLS") * even,
               "query": col("METRIC_RECEIVE_POLL_CALLS") * even}
        sent, got = spread(col("METRIC_SIZE_MESSAGES_SENT")), spread(
            col("METRIC_SIZE_MESSAGES_RECEIVED"))
    else:
        req = {"put": col("METRIC_S3_NUM_WRITES") * even, "get": col("METRIC_S3_NUM_READS") * even,
               "list": col("METRIC_S3_FOLDER_SCANS") * even}
        sent, got = spread(col("METRIC_S3_WRITE_SIZE")), spread(col("METRIC_S3_READ_SIZE"))
    nnz = profile.num("radixnet.nnz_per_neuron") * N / P
    rows = images * curve.live
    weight = np.full(shape, nnz)
    work, path = compute_arrays(weight, np.full(shape, N / P), np.broadcast_to(rows, shape).copy(),
                                curve, profile)
    pairs = all_to_all(P, 1) if P > 1 else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    edges = [(np.zeros(0, np.int64), np.zeros(0, np.int64))] + [pairs] * (L - 1)
    load = np.full(P, nnz * L * profile.num("protocol.load_bytes_per_nonzero"))
    return Workload(P, L, channel, images, int(col("BFR")), work, path, sent, got, req, edges,
                    load, notes=[f"paper run {name}: requests and bytes from its CSV row"])
