"""Predictions: a compiled plan (:func:`predict_plan`) or a Graph Challenge RadiX-Net described by
its size alone (:func:`predict`), simulated on a profile, with the bill (:class:`Prediction`).

The bill is :func:`fsdgraph.cost.bill` of the predicted run: every worker billed its simulated
duration, the predicted requests at the profile's channel rules, SNS publishes in 64 KiB units.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsdgraph.cost import Bill, bill
from fsdgraph.defaults import BRANCHING
from fsdgraph.errors import ConfigError
from fsdgraph.plan import Plan
from fsdgraph.prices import CHUNK_BYTES
from fsdgraph.simulate.engine import Engine, Timeline
from fsdgraph.simulate.profile import Profile, as_profile
from fsdgraph.simulate.protocols import (
    CHANNELS,
    compute_arrays,
    fsdgraph_requests,
    paper_requests,
)
from fsdgraph.simulate.workload import Array, Curve, Workload, all_to_all, graphchallenge_curve

STRATEGIES = ("model", "data", "hybrid")
#: Bytes of one input nonzero staged for a worker (int32 column id + float32 value).
INPUT_BYTES_PER_NONZERO = 8


@dataclass
class Prediction:
    """A predicted run. ``wall_s``: submission to result (the coordinator's staging and
    collecting, ``protocol.coordinator_s``, plus first invoke to the last output);
    ``runtime_s``: the billed Lambda seconds summed over the workers; ``breakdown``: seconds
    summed over the workers
    (launch: first invoke to the handler's start, not billed; load: invoking children and
    downloading the shard; compute, send, receive, wait, overhead per layer); ``requests`` per
    kind; ``bytes`` on the wire; ``cost_usd`` the bill's total."""

    wall_s: float
    runtime_s: float
    cost_usd: float
    breakdown: dict[str, float]
    requests: dict[str, float]
    bytes: float
    bill: Bill
    timeline: Timeline
    workers: int
    layers: int
    channel: str
    images: int
    memory_mb: int
    profile: str
    notes: list[str] = field(default_factory=list)

    def per_layer(self) -> list[dict[str, float]]:
        """Per layer, the slowest worker's compute, send, receive and wait seconds."""
        t = self.timeline
        return [{"layer": l, "compute_s": float(t.compute[:, l].max()),
                 "send_s": float(t.send[:, l].max()), "receive_s": float(t.receive[:, l].max()),
                 "wait_s": float(t.wait[:, l].max())} for l in range(self.layers)]

    def to_dict(self, timeline: bool = True) -> dict[str, Any]:
        """JSON-able: every figure, the bill, and (``timeline``) per worker and layer seconds."""
        out: dict[str, Any] = {
            "wall_s": self.wall_s, "runtime_s": self.runtime_s, "cost_usd": self.cost_usd,
            "cost_per_image_usd": self.cost_usd / self.images if self.images else None,
            "breakdown": self.breakdown, "requests": self.requests, "bytes": self.bytes,
            "workers": self.workers, "layers": self.layers, "channel": self.channel,
            "images": self.images, "memory_mb": self.memory_mb, "profile": self.profile,
            "bill": self.bill.to_dict(), "notes": self.notes,
        }
        if timeline:
            t = self.timeline
            out["timeline"] = {
                "start_s": t.start.round(6).tolist(), "load_s": t.load.round(6).tolist(),
                "finish_s": t.finish.round(6).tolist(),
                **{k: getattr(t, k).round(6).tolist()
                   for k in ("compute", "send", "receive", "wait", "overhead")},
            }
            out["per_layer"] = self.per_layer()
        return out


def _check(channel: str, images: int, memory_mb: int) -> None:
    if channel not in CHANNELS:
        raise ConfigError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError(f"images must be a positive integer, got {images!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or not (
            128 <= memory_mb <= 10240):
        raise ConfigError(f"memory must be 128..10240 MB, got {memory_mb!r}")


def _rules(profile: Profile) -> str:
    name = profile.text("protocol.name")
    if name not in ("fsdgraph", "paper"):
        raise ConfigError(f"profile {profile.name}: protocol.name must be fsdgraph or paper, "
                          f"got {name!r}")
    return name


def _bytes_per_nonzero(profile: Profile, channel: str) -> float:
    if _rules(profile) == "paper":
        return profile.num("radixnet.paper_bytes_per_nonzero")
    return profile.num(f"{channel}.bytes_per_nonzero")


def _requests(profile: Profile, channel: str, P: int, L: int,
              edges: Sequence[tuple[int, int, int, float]]) -> tuple[dict[str, Array], Array,
                                                                       Array]:
    if _rules(profile) == "paper":
        extra = profile.num("radixnet.paper_message_bytes")
        edges = [(l, s, d, b + extra) for l, s, d, b in edges]
        return paper_requests(channel, P, L, edges, profile)
    return fsdgraph_requests(channel, P, L, edges, profile)


def _prediction(work: Workload, profile: Profile, memory_mb: int, seed: int) -> Prediction:
    timeline = Engine(work, profile, memory_mb=memory_mb, seed=seed).run()
    runtimes = timeline.runtime_s
    requests = work.totals()
    requests["put"] = requests.get("put", 0.0) + work.workers  # each worker's output
    requests["get"] = requests.get("get", 0.0) + work.workers  # each worker's shard
    calls = work.requests.get("publish")
    if calls is not None and calls.sum() > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            per_call = np.where(calls > 0, work.send_bytes / np.maximum(calls, 1e-12), 0.0)
        requests["publish_units"] = float((calls * np.maximum(
            1, np.ceil(per_call / CHUNK_BYTES))).sum())
    sent = float(work.send_bytes.sum())
    report = {"workers": work.workers, "wall_s": timeline.wall_s, "channel": work.channel,
              "requests": requests, "bytes_sent": sent,
              "per_worker": [{"worker": w, "duration_s": float(runtimes[w])}
                             for w in range(work.workers)]}
    the_bill = bill(report, memory_mb=memory_mb)
    breakdown = {"launch": float(timeline.start.sum()), "load": float(timeline.load.sum()),
                 **{k: float(getattr(timeline, k).sum())
                    for k in ("compute", "send", "receive", "wait", "overhead")}}
    wall = timeline.wall_s + profile.num("protocol.coordinator_s")
    return Prediction(wall, float(runtimes.sum()), the_bill.total, breakdown,
                      requests, sent, the_bill, timeline, work.workers, work.layers,
                      work.channel, work.images, memory_mb, profile.name, list(work.notes))


def _slices(images: int, replicas: int) -> list[int]:
    cuts = [r * images // replicas for r in range(replicas + 1)]
    return [b - a for a, b in itertools.pairwise(cuts)]


def predict_plan(plan: Plan, *, images: int, channel: str = "queue", memory_mb: int = 1769,
                 profile: Profile | str | os.PathLike[str] | None = None,
                 live_rows: Sequence[float] | None = None, seed: int = 0) -> Prediction:
    """Simulate ``plan`` on ``images`` inputs over ``channel``.

    The work of worker ``w`` at layer ``l`` is its weight shard's nonzeros times the live rows
    of its image slice (``live_rows[l]``, the fraction alive entering layer ``l``; default the
    official Graph Challenge curve), on the kernel path the live rows' density selects; an
    exchange edge carries ``images / R x live x len(neurons) x density x bytes per nonzero``.
    Replicas (``plan.replicas``), data parallelism and collapsed layers (idle shards) follow
    from the shards and edges.

    >>> import numpy as np, scipy.sparse as sp, fsdgraph
    >>> w = sp.random(64, 64, density=0.1, format="csr", dtype=np.float32, random_state=0)
    >>> plan = fsdgraph.compile(fsdgraph.sequential([w] * 3, bias=-0.01), workers=2)
    >>> p = predict_plan(plan, images=100, channel="object")
    >>> p.requests["put"] >= len(plan.edges), p.wall_s > 0
    (True, True)
    """
    _check(channel, images, memory_mb)
    prof = as_profile(profile)
    P, L = plan.workers, plan.layers
    replicas = max(1, int(getattr(plan, "replicas", 1) or 1))
    group = max(1, P // replicas)
    curve: Curve = graphchallenge_curve(L, live_rows)
    slice_rows = _slices(images, replicas)
    rows_of = np.array([slice_rows[min(w // group, replicas - 1)] for w in range(P)], float)
    shards = plan.shards
    nnz = np.zeros((P, L))
    inputs = np.zeros((P, L))
    for w in range(P):
        shard = shards[w] if len(shards) == P else shards[w % len(shards)]
        for l, ls in enumerate(shard.layers):
            nnz[w, l] = ls.weight.nnz
            inputs[w, l] = ls.weight.shape[0]
    rows = rows_of[:, None] * curve.live[None, :]
    macs, path = compute_arrays(nnz, inputs, rows, curve, prof)
    bpn = _bytes_per_nonzero(prof, channel)
    edges = [(e.layer, e.src, e.dst,
              float(rows_of[e.src] * curve.live[e.layer] * len(e.neurons)
                    * curve.density[e.layer] * bpn)) for e in plan.edges]
    req, sent, got = _requests(prof, channel, P, L, edges)
    by_layer = np.array([e.layer for e in plan.edges], np.int64)
    srcs = np.array([e.src for e in plan.edges], np.int64)
    dsts = np.array([e.dst for e in plan.edges], np.int64)
    pairs: list[tuple[Any, Any]] = [(srcs[by_layer == l], dsts[by_layer == l]) for l in range(L)]
    needed = np.array([len((shards[w] if len(shards) == P else shards[w % len(shards)])
                           .input_neurons) for w in range(P)], float)
    load = (nnz.sum(axis=1) * prof.num("protocol.load_bytes_per_nonzero")
            + rows_of * curve.density[0] * needed * INPUT_BYTES_PER_NONZERO)
    branching = BRANCHING
    work = Workload(P, L, channel, images, branching, macs, path, sent, got, req, pairs, load,
                    notes=[f"plan: {P} workers, {L} layers, {len(plan.edges)} edges, "
                           f"{replicas} replica(s); live rows: {curve.source}"])
    return _prediction(work, prof, memory_mb, seed)


def exchange_fraction(profile: Profile, group: int, neurons: int) -> float:
    """The share of a layer's live nonzeros a RadiX-Net's model-parallel group of ``group``
    workers ships between them (fitted on the paper's bytes; 0 for one worker).

    >>> from fsdgraph.simulate.profile import load_profile
    >>> p = load_profile()
    >>> exchange_fraction(p, 1, 1024), 0.3 < exchange_fraction(p, 8, 1024) < 0.5
    (0.0, True)
    """
    if group <= 1:
        return 0.0
    f = (profile.num("radixnet.exchange_coef") * (group - 1) ** profile.num(
        "radixnet.exchange_exp_p") * (neurons / 1024) ** profile.num("radixnet.exchange_exp_n"))
    return float(min(1.0, f, (group - 1) / group))


def predict(*, neurons: int, layers: int, workers: int, images: int, channel: str = "queue",
            memory_mb: int = 1769, strategy: str = "model", replicas: int = 1,
            profile: Profile | str | os.PathLike[str] | None = None,
            seed: int = 0) -> Prediction:
    """Simulate a Graph Challenge RadiX-Net of ``neurons`` x ``layers`` (32 nonzeros per neuron
    per layer, the official live-row curve) on ``workers`` functions, without a network at hand.

    ``strategy`` "model": one group of ``workers`` exchanging, per layer and worker pair, an
    equal part of :func:`exchange_fraction` of the live nonzeros; "data": every worker the whole
    model and ``images / workers``, no exchange; "hybrid": ``replicas`` groups of
    ``workers / replicas``.

    >>> p = predict(neurons=1024, layers=4, workers=4, images=1000, strategy="data")
    >>> p.requests.get("publish", 0), p.workers
    (0, 4)
    """
    _check(channel, images, memory_mb)
    for name, value in (("neurons", neurons), ("layers", layers), ("workers", workers),
                        ("replicas", replicas)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    R = {"model": 1, "data": workers, "hybrid": replicas}[strategy]
    if strategy == "model" and replicas != 1:
        raise ConfigError(f"strategy 'model' has one replica, got replicas={replicas}")
    if workers % R:
        raise ConfigError(f"hybrid: replicas={R} must divide workers={workers}")
    group = workers // R
    if group > neurons:
        raise ConfigError(f"a group of {group} workers exceeds {neurons} neurons")
    prof = as_profile(profile)
    P, L = workers, layers
    curve = graphchallenge_curve(L)
    slice_rows = _slices(images, R)
    rows_of = np.array([slice_rows[w // group] for w in range(P)], float)
    per_neuron = prof.num("radixnet.nnz_per_neuron")
    nnz = np.full((P, L), per_neuron * neurons / group)
    inputs = np.full((P, L), float(neurons))
    macs, path = compute_arrays(nnz, inputs, rows_of[:, None] * curve.live[None, :], curve, prof)
    f = exchange_fraction(prof, group, neurons)
    bpn = _bytes_per_nonzero(prof, channel)
    edges: list[tuple[int, int, int, float]] = []
    src, dst = all_to_all(group, R) if group > 1 else (np.zeros(0, np.int64),
                                                        np.zeros(0, np.int64))
    pairs_per_group = group * (group - 1)
    for l in range(1, L):
        if not len(src):
            break
        per_edge = curve.live[l] * curve.density[l] * neurons * f / pairs_per_group * bpn
        edges += [(l, int(s), int(d), float(rows_of[s] * per_edge))
                  for s, d in zip(src.tolist(), dst.tolist(), strict=True)]
    req, sent, got = _requests(prof, channel, P, L, edges)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    pairs = [empty] + [(src, dst)] * (L - 1)
    # The inputs a worker needs: those with a weight into one of its outputs.
    needed = neurons * (1 - (1 - 1 / group) ** per_neuron)
    load = (nnz.sum(axis=1) * prof.num("protocol.load_bytes_per_nonzero")
            + rows_of * curve.density[0] * needed * INPUT_BYTES_PER_NONZERO)
    work = Workload(P, L, channel, images, BRANCHING, macs, path, sent, got, req, pairs, load,
                    notes=[f"RadiX-Net {neurons} x {layers}, {strategy}: {R} replica(s) of "
                           f"{group}; exchanged share {f:.3f}; live rows: {curve.source}"])
    return _prediction(work, prof, memory_mb, seed)

