"""The event loop: P workers running L layers (:class:`Engine`), and its mean-field twin
(:func:`expected`, every latency at its mean, for fitting).

A worker's life: the coordinator (or its parent in the invocation tree, :mod:`fsdgraph.tree`)
invokes it; it starts (cold or warm), invokes its own children one call after the other, downloads
its shard, then for every layer ``l``:

* **send**: the requests that ship its outputs to the peers that need them before layer ``l``
  (publish/send/put), their payload through the codec and the function's network;
* **compute**: the layer's product on its kernel path (overlapping the sends, or after them);
* **receive**: the receiver-side requests (receive, delete, get, list, query) and decoding,
  shared evenly among the peers it hears from and done for each peer's data once its local
  work is done and that data has arrived (and, when the channel polls, been found), in the order
  of arrival (a single server): the worker cannot finish layer ``l`` before every peer's data
  has arrived;
* **wait**: the time it is idle meanwhile;
* a per-layer protocol overhead.

Every request's latency is lognormal with the profile's median and p99 (seeded: the same seed
gives the same timeline); request kinds with a ``rate_per_s`` share a token bucket across all
workers (a quota), so requests beyond it queue.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from fsdgraph.errors import ConfigError
from fsdgraph.simulate.kernelcost import PATHS
from fsdgraph.simulate.profile import KINDS, Profile
from fsdgraph.simulate.workload import RECEIVE_KINDS, SEND_KINDS, Array, Workload
from fsdgraph.tree import children, roots

#: z of the 99th percentile of a standard normal.
Z99 = 2.3263478740408408
#: Event kinds (a worker writes its output, one PUT, after its last layer).
_START, _LAYER, _FINISH = 0, 1, 2


@dataclass
class Timeline:
    """When and how long: ``start[w]`` the handler's start (seconds after the first invoke),
    ``load[w]`` invoking children and downloading the shard, per (worker, layer) ``compute``,
    ``send``, ``wait``, ``receive``, ``overhead``, and ``finish[w]`` when it wrote its output."""

    start: Array
    load: Array
    compute: Array
    send: Array
    wait: Array
    receive: Array
    overhead: Array
    finish: Array

    @property
    def wall_s(self) -> float:
        """First invoke to the last worker's output."""
        return float(self.finish.max()) if self.finish.size else 0.0

    @property
    def runtime_s(self) -> Array:
        """Each worker's billed duration: its start to its output."""
        return self.finish - self.start


def cpu_share(profile: Profile, memory_mb: int) -> tuple[float, float]:
    """(vCPUs the memory buys, kernel speed relative to one vCPU): 1 vCPU per ``mb_per_vcpu``
    up to ``max_vcpus``; below one vCPU a share of it; kernel threads (one per whole vCPU
    unless ``function.threads`` says) each add ``thread_efficiency``.

    >>> from fsdgraph.simulate.profile import load_profile
    >>> p = load_profile("aws")
    >>> cpu_share(p, 1769), cpu_share(p, 884)[1] < 0.5
    ((1.0, 1.0), True)
    """
    vcpus = min(profile.num("function.max_vcpus"), memory_mb / profile.num("function.mb_per_vcpu"))
    if vcpus < 1:
        return vcpus, vcpus
    threads = profile.num("function.threads") or math.floor(vcpus)
    used = min(threads, vcpus)
    return vcpus, 1 + (used - 1) * profile.num("kernel.thread_efficiency")


def found(arrivals: np.ndarray, ready: np.ndarray | float, poll: float) -> np.ndarray:
    """When a worker polling every ``poll`` seconds from ``ready`` on finds data that arrived
    at ``arrivals``: the first poll at or after each arrival.

    >>> found(np.array([0.5, 1.05, 1.3]), 1.0, 0.1).round(6).tolist()
    [1.0, 1.1, 1.3]
    """
    late = np.maximum(arrivals - ready, 0.0)
    return ready + np.ceil(np.round(late / poll, 9)) * poll  # type: ignore[no-any-return]


def drain(ready: float, arrivals: np.ndarray, work: float) -> float:
    """When a single server that is free from ``ready`` has done ``work`` seconds shared evenly
    among ``arrivals`` (each share can start once its arrival time has passed), in arrival order.

    >>> drain(0.0, np.array([1.0, 5.0]), 2.0), drain(3.0, np.array([]), 2.0)
    (6.0, 5.0)
    """
    k = len(arrivals)
    if k == 0:
        return ready + work
    times = np.sort(arrivals)
    share = work / k
    return float(max(ready + work, float((times + share * np.arange(k, 0, -1)).max())))


class _Latency:
    """Lognormal request latencies of one profile, sampled or at their means."""

    def __init__(self, profile: Profile, rng: np.random.Generator | None) -> None:
        self.rng = rng
        self.params: dict[str, tuple[float, float]] = {}
        for kind in KINDS:
            self.params[kind] = self._lognormal(profile.num(f"request.{kind}.median_s"),
                                                profile.num(f"request.{kind}.p99_s"))
        self.params["delivery"] = self._lognormal(profile.num("delivery.median_s"),
                                                  profile.num("delivery.p99_s"))
        self.params["cold"] = self._lognormal(profile.num("function.cold_start_s"),
                                              profile.num("function.cold_start_p99_s"))
        self.params["warm"] = self._lognormal(profile.num("function.warm_start_s"),
                                              profile.num("function.warm_start_p99_s"))

    @staticmethod
    def _lognormal(median: float, p99: float) -> tuple[float, float]:
        sigma = math.log(p99 / median) / Z99 if median > 0 and p99 > median else 0.0
        return median, sigma

    def mean(self, kind: str) -> float:
        median, sigma = self.params[kind]
        return median * math.exp(sigma * sigma / 2)

    def total(self, kind: str, count: float) -> float:
        """Seconds of ``count`` requests in a row (a fractional count: its integer part, plus
        one more with the fraction's probability)."""
        if count <= 0:
            return 0.0
        median, sigma = self.params[kind]
        if self.rng is None or sigma == 0 or median == 0:
            return count * self.mean(kind)
        n = math.floor(count) + int(self.rng.random() < count - math.floor(count))
        if n == 0:
            return 0.0
        return float(median * np.exp(sigma * self.rng.standard_normal(n)).sum())

    def many(self, kind: str, n: int) -> Array:
        """``n`` independent latencies (or their mean ``n`` times)."""
        median, sigma = self.params[kind]
        if self.rng is None or sigma == 0:
            return np.full(n, self.mean(kind))
        return median * np.exp(sigma * self.rng.standard_normal(n))


@dataclass
class _Costs:
    """Per (worker, layer) durations that depend on no sample: compute, codec + network."""

    compute: Array
    load: Array  #: per worker: reading, verifying and decoding its staged shard and input
    send_fixed: Array
    receive_fixed: Array
    #: Per (worker, layer): the worker loop's own, plus the channel's where the worker
    #: exchanges anything (a layer without exchange seals, counts and polls nothing).
    overhead: Array
    overlap: bool
    poll: float
    send_concurrency: float
    receive_concurrency: float


def _costs(work: Workload, profile: Profile, memory_mb: int) -> _Costs:
    vcpus, speed = cpu_share(profile, memory_mb)
    # Functions that share a host's cores (the local backend: every worker on this machine)
    # compute that much slower while all of them are busy; a cloud function has its own.
    cores = profile.num("function.host_cores")
    shared = max(1.0, work.workers / cores) if cores > 0 else 1.0
    per_mac = np.array([profile.num(f"kernel.{p}_s_per_mac") for p in PATHS])
    compute = (profile.num("kernel.layer_s") + work.macs * per_mac[work.path]) / speed * shared
    ch = work.channel
    codec = profile.num(f"{ch}.codec_s_per_byte") / min(1.0, vcpus)
    bandwidth = profile.num("function.bandwidth_mb_s") * 1e6
    net = 1.0 / bandwidth if bandwidth > 0 else 0.0
    load = work.load_bytes * (net + profile.num("protocol.load_s_per_byte") / speed * shared)
    exchanging = np.zeros((work.workers, work.layers), bool)
    for l, (src, dst) in enumerate(work.edges):
        exchanging[src, l] = exchanging[dst, l] = True
    overhead = (profile.num("protocol.layer_overhead_s")
                + profile.num(f"{ch}.layer_overhead_s") * exchanging)
    return _Costs(compute, load, work.send_bytes * (codec + net), work.recv_bytes * (codec + net),
                  overhead, profile.num("protocol.overlap") >= 0.5,
                  profile.num(f"{ch}.poll_interval_s"),
                  max(1.0, profile.num(f"{ch}.send_concurrency")),
                  max(1.0, profile.num(f"{ch}.receive_concurrency")))


class _Buckets:
    """Token buckets of the rate-limited request kinds, shared by every worker (S3's
    per prefix: times the workers when each has a prefix, ``protocol.s3_prefix_per_worker``)."""

    def __init__(self, profile: Profile, enabled: bool, workers: int) -> None:
        self.rate = {k: profile.num(f"request.{k}.rate_per_s") for k in KINDS} if enabled else {}
        if profile.num("protocol.s3_prefix_per_worker") >= 0.5:
            for kind in ("put", "get", "list"):
                if kind in self.rate:
                    self.rate[kind] *= workers
        self.free: dict[str, float] = {}

    def delay(self, kind: str, count: float, now: float) -> float:
        rate = self.rate.get(kind, 0.0)
        if rate <= 0 or count <= 0:
            return 0.0
        begin = max(now, self.free.get(kind, 0.0))
        self.free[kind] = begin + count / rate
        return begin - now


class Engine:
    """The discrete-event simulation of one workload on one profile (``seed``: the latency
    samples; ``noise=False``: every latency at its mean, the mean-field run)."""

    def __init__(self, workload: Workload, profile: Profile, *, memory_mb: int, seed: int = 0,
                 noise: bool = True, rate_limits: bool = True) -> None:
        workload.check()
        quota = profile.num("function.concurrency")
        if quota and workload.workers > quota:
            raise ConfigError(f"{workload.workers} workers need {workload.workers} concurrent "
                              f"functions, but profile {profile.name} allows {quota:g} "
                              "(function.concurrency); the layers synchronise, so the run "
                              "could not finish")
        self.work = workload
        self.profile = profile
        self.memory_mb = memory_mb
        self.lat = _Latency(profile, np.random.default_rng(seed) if noise else None)
        self.rng = np.random.default_rng(seed + 1) if noise else None
        self.costs = _costs(workload, profile, memory_mb)
        self.buckets = _Buckets(profile, rate_limits, workload.workers)
        self.counts = {k: v for k, v in workload.requests.items() if v.sum() > 0}

    def _requests(self, kinds: tuple[str, ...], w: int, l: int, now: float,
                  concurrency: float) -> float:
        total = 0.0
        for kind in kinds:
            counts = self.counts.get(kind)
            n = float(counts[w, l]) if counts is not None else 0.0
            if n > 0:
                total += self.buckets.delay(kind, n, now + total)
                total += self.lat.total(kind, n) / (concurrency if kind != "query" else 1.0)
        return total

    def _start_delay(self, environments: int) -> float:
        p = self.profile
        cold = p.num("function.cold_fraction")
        if self.rng is None:
            delay = cold * self.lat.mean("cold") + (1 - cold) * self.lat.mean("warm")
        else:
            delay = self.lat.total("cold" if self.rng.random() < cold else "warm", 1)
        # Lambda's scaling rate: a burst of 10 s worth, then new_per_s.
        rate = p.num("function.new_per_s")
        if rate > 0:
            delay += max(0.0, environments - 10 * rate) / rate
        return delay

    def run(self) -> Timeline:
        """Simulate; the timeline of every worker."""
        P, L = self.work.workers, self.work.layers
        b = max(1, self.work.branching)
        c = self.costs
        shape = (P, L)
        out = Timeline(np.zeros(P), np.zeros(P), np.zeros(shape), np.zeros(shape),
                       np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(P))
        targets: list[dict[int, np.ndarray]] = []
        pending = np.zeros(shape, np.int64)
        for l, (src, dst) in enumerate(self.work.edges):
            order = np.argsort(src, kind="stable")
            s_sorted, d_sorted = src[order], dst[order]
            cuts = np.flatnonzero(np.diff(s_sorted)) + 1
            targets.append({int(g[0]): d for g, d in zip(np.split(s_sorted, cuts),
                                                           np.split(d_sorted, cuts), strict=True)
                            if len(g)})
            np.add.at(pending[:, l], dst, 1)
        arrivals: list[list[list[float]]] = [[[] for _ in range(L)] for _ in range(P)]
        local_done = np.full(shape, np.nan)
        heap: list[tuple[float, int, int, int, int]] = []
        seq = 0
        environments = 0

        def push(t: float, kind: int, w: int, l: int) -> None:
            nonlocal seq
            heapq.heappush(heap, (t, seq, kind, w, l))
            seq += 1

        def invoke_all(t: float, kids: list[int]) -> float:
            nonlocal environments
            for child in kids:
                t += self.buckets.delay("invoke", 1, t) + self.lat.total("invoke", 1)
                environments += 1
                push(t + self._start_delay(environments), _START, child, 0)
            return t

        def try_finish(w: int, l: int) -> None:
            if pending[w, l] or math.isnan(local_done[w, l]):
                return
            done = float(local_done[w, l])
            times = np.asarray(arrivals[w][l])
            if c.poll > 0 and len(times):
                times = found(times, done, c.poll)
            r = c.receive_fixed[w, l] + self._requests(RECEIVE_KINDS, w, l, done,
                                                       c.receive_concurrency)
            end = drain(done, times, r)
            out.receive[w, l] = r
            out.wait[w, l] = end - done - r
            out.overhead[w, l] = c.overhead[w, l]
            push(end + c.overhead[w, l], _FINISH, w, l)

        invoke_all(0.0, roots(P, b))
        while heap:
            t, _, kind, w, l = heapq.heappop(heap)
            if kind == _START:
                out.start[w] = t
                t1 = invoke_all(t, children(w, P, b))
                t1 += self.buckets.delay("get", 1, t1) + self.lat.total("get", 1)  # the shard
                t1 += float(c.load[w])
                out.load[w] = t1 - t
                push(t1, _LAYER, w, 0)
            elif kind == _LAYER:
                s = c.send_fixed[w, l] + self._requests(SEND_KINDS, w, l, t, c.send_concurrency)
                comp = float(c.compute[w, l])
                out.send[w, l], out.compute[w, l] = s, comp
                local_done[w, l] = t + (max(s, comp) if c.overlap else s + comp)
                dsts = targets[l].get(w)
                if dsts is not None and len(dsts):
                    delivery = (self.lat.many("delivery", len(dsts)) if self.work.channel ==
                                "queue" else np.zeros(len(dsts)))
                    np.subtract.at(pending[:, l], dsts, 1)
                    for d, at in zip(dsts.tolist(), (t + s + delivery).tolist(), strict=True):
                        arrivals[d][l].append(at)
                    for d in dsts[pending[dsts, l] == 0].tolist():
                        if d != w:
                            try_finish(d, l)
                try_finish(w, l)
            elif l + 1 < L:
                push(t, _LAYER, w, l + 1)
            else:
                out.finish[w] = t + self.buckets.delay("put", 1, t) + self.lat.total("put", 1)
        return out


def expected(workload: Workload, profile: Profile, *, memory_mb: int) -> Timeline:
    """The mean-field run: :class:`Engine` with every latency at its mean and no rate limits,
    computed a layer at a time over all workers at once (fast enough to fit parameters with)."""
    engine = Engine(workload, profile, memory_mb=memory_mb, noise=False, rate_limits=False)
    work, c, lat = workload, engine.costs, engine.lat
    P, L = work.workers, work.layers
    shape = (P, L)
    out = Timeline(np.zeros(P), np.zeros(P), c.compute.copy(), np.zeros(shape), np.zeros(shape),
                   np.zeros(shape), c.overhead.copy(), np.zeros(P))
    # Launch: the tree, in the event loop (P events).
    b = max(1, work.branching)
    start = np.zeros(P)
    heap: list[tuple[float, int]] = []
    t, env = 0.0, 0
    for child in roots(P, b):
        t += lat.mean("invoke")
        env += 1
        heapq.heappush(heap, (t + engine._start_delay(env), child))
    ready = np.zeros(P)
    while heap:
        t, w = heapq.heappop(heap)
        start[w] = t
        for child in children(w, P, b):
            t += lat.mean("invoke")
            env += 1
            heapq.heappush(heap, (t + engine._start_delay(env), child))
        t += lat.mean("get") + float(c.load[w])
        ready[w] = t
    out.start, out.load = start, ready - start

    def per_layer(kinds: tuple[str, ...], concurrency: float) -> Array:
        total = np.zeros(shape)
        for kind in kinds:
            got = work.requests.get(kind)
            if got is not None:
                total += got * lat.mean(kind) / (concurrency if kind != "query" else 1.0)
        return total

    send = c.send_fixed + per_layer(SEND_KINDS, c.send_concurrency)
    receive = c.receive_fixed + per_layer(RECEIVE_KINDS, c.receive_concurrency)
    out.send, out.receive = send, receive
    delivery = lat.mean("delivery") if work.channel == "queue" else 0.0
    for l in range(L):
        local = ready + (np.maximum(send[:, l], c.compute[:, l]) if c.overlap
                         else send[:, l] + c.compute[:, l])
        src, dst = work.edges[l]
        end = local + receive[:, l]
        if len(src):
            at = ready[src] + send[src, l] + delivery
            if c.poll > 0:
                at = found(at, local[dst], c.poll)
            k = np.bincount(dst, minlength=P)
            share = receive[:, l] / np.maximum(k, 1)
            top = float(at.max())
            if top - float(at.min()) <= 1e-9 * max(1.0, abs(top)):
                # Every peer's data at once (the layers after the first).
                latest = np.full(P, -np.inf)
                latest[k > 0] = top + receive[k > 0, l]
            else:  # the single-server drain of engine.drain, for every worker at once
                order = np.lexsort((at, dst))
                d_sorted, at_sorted = dst[order], at[order]
                first = np.searchsorted(d_sorted, d_sorted, side="left")
                remaining = k[d_sorted] - (np.arange(len(d_sorted)) - first)
                latest = np.full(P, -np.inf)
                np.maximum.at(latest, d_sorted, at_sorted + remaining * share[d_sorted])
            end = np.maximum(end, latest)
        out.wait[:, l] = end - local - receive[:, l]
        ready = end + c.overhead[:, l]
    out.finish = ready + lat.mean("put")
    return out
