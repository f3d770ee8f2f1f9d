"""The planner: how ``P`` workers should share a network, chosen from predictions.

:func:`choose` weighs every way to share the work that fits the workers' memory:

* ``data``: every worker holds the whole model and computes ``1/P`` of the images;
* ``hybrid``: ``R`` replicas of a ``G``-worker model-parallel group, for every ``R x G = P``;
* ``model``: one group of ``P`` workers;
* each with a group (``G > 1``) also collapsed: once the images still alive in a group fall
  under :data:`COLLAPSE_ROWS`, the rest of the layers run on one worker of the group.

A candidate whose worker would not hold its share of the model and activations
(:func:`worker_bytes` against ``memory_mb``) is refused, so a model that does not fit a function
is never planned data parallel. The others are compiled and simulated
(:func:`fsdgraph.simulate.predict_plan`, with the cloud profile and channel given), and the one
with the least predicted wall time (``objective="time"``) or cost (``"cost"``) wins; ties go to
the simpler plan (fewer exchanges). Candidates are compiled with the ``contiguous`` partitioner,
which is fast; the winner is compiled again with the partitioner asked for and predicted again:
that prediction is the one reported.

>>> import numpy as np, scipy.sparse as sp, fsdgraph
>>> w = sp.random(64, 64, density=0.2, format="csr", dtype=np.float32, random_state=0)
>>> choice = choose(fsdgraph.sequential([w] * 4, bias=-0.1).layers(), 2, memory_mb=1769)
>>> choice.plan.strategy
'data'
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ConfigError
from fsdgraph.graph import Layer
from fsdgraph.partitioners import Partitioner
from fsdgraph.plan import Plan
from fsdgraph.prices import DEFAULT_MEMORY_MB

if TYPE_CHECKING:
    from fsdgraph.simulate.profile import Profile

#: A worker's own footprint before any model or data (Python, numpy, scipy, the compiled
#: kernels, the transports): measured as the peak RSS of a local worker running one 1024-neuron
#: layer on 10 images (87 MiB), rounded up.
RUNTIME_BYTES = 96 * 2**20
#: Bytes per weight nonzero held by a worker: the staged shard's arrays (value + index) and the
#: kernels' layouts. Measured: 120 official 1024-neuron layers (3.93 M nonzeros) added 39.6 MiB
#: of peak RSS (10.6 bytes each); 12 leaves room for the transposed layout of dense layers.
BYTES_PER_WEIGHT = 12
#: Bytes per (image, neuron) of a layer's width while the images are alive: the dense input and
#: output activations of a layer (float32 each). Measured: 10 000 images through the official
#: network added 37 MiB (3.7 bytes per image and neuron) over 10 images.
BYTES_PER_ACTIVATION = 8
#: The share of a function's memory the planner lets a worker use (the rest: the runtime's
#: buffers, fragmentation, the object bodies while they are read).
USABLE_MEMORY = 0.8
#: A group collapses onto one worker once fewer images than this are alive in it: below it a
#: layer's product takes about as long as one exchange round (the official 1024-neuron layers
#: multiply 300-1000 live images in 1-2 ms, an exchange round costs milliseconds to tens of
#: milliseconds; docs/benchmarks.md).
COLLAPSE_ROWS = 1000
OBJECTIVES = ("time", "cost")


@dataclass
class Candidate:
    """One way to share the work, and what the planner found about it."""

    strategy: str
    replicas: int
    collapse_at: int | None = None
    #: Peak bytes a worker is predicted to hold, against ``memory_bytes``.
    worker_bytes: int = 0
    memory_bytes: int = 0
    predicted_wall_s: float | None = None
    predicted_cost_usd: float | None = None
    #: Why it was not planned (empty for the candidates that were simulated).
    refused: str = ""
    #: The worker count, functions' memory and channel it was weighed with.
    workers: int = 0
    memory_mb: int = 0
    channel: str = ""

    @property
    def fits(self) -> bool:
        return self.worker_bytes <= self.memory_bytes


@dataclass
class Choice:
    """The planner's answer: the compiled plan and why."""

    plan: Plan
    objective: str
    channel: str
    memory_mb: int
    images: int
    predicted: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what was chosen, its prediction and every candidate weighed."""
        return {"objective": self.objective, **self.plan.parallelism(), "channel": self.channel,
                "memory_mb": self.memory_mb, "images": self.images,
                "predicted": self.predicted,
                "candidates": [asdict(c) for c in self.candidates]}


def worker_bytes(layers: Sequence[Layer], group: int, images: int,
                 collapse_at: int | None = None) -> int:
    """Peak bytes one worker of a ``group``-worker model-parallel group holds when its replica
    computes ``images`` images: the runtime, its share of the weights (all of them on the worker
    a group collapses onto, from ``collapse_at`` on) and the widest layer's activations."""
    nnz = [layer.weight.nnz for layer in layers]
    at = len(layers) if collapse_at is None else collapse_at
    share = sum(nnz[:at]) / group + sum(nnz[at:])
    widest = max(max(layer.weight.shape) for layer in layers)
    activations = images * math.ceil(widest / group) * BYTES_PER_ACTIVATION
    return int(RUNTIME_BYTES + share * BYTES_PER_WEIGHT + activations)


def choose(
    layers: Sequence[Layer], workers: int | Sequence[int], *,
    partitioner: str | Partitioner = "hypergraph", objective: str = "time",
    memory_mb: int | Sequence[int] = DEFAULT_MEMORY_MB, channel: str | Sequence[str] = "queue",
    images: int = 10_000, live_rows: Sequence[float] | None = None,
    sample: sp.spmatrix | None = None, profile: Profile | str | None = None,
) -> Choice:
    """The plan with the least predicted time or cost; see the module docstring.

    ``workers``, ``memory_mb`` and ``channel`` may each be a list: the planner then also picks
    the worker count, the functions' memory and the channel, weighing every combination (the
    choice's ``plan.workers``, ``memory_mb`` and ``channel`` say which won).
    ``live_rows[l]`` is the fraction of the images alive entering layer ``l``; or give a
    ``sample`` of the inputs and it is measured on them (a few hundred rows suffice). With
    neither, the simulator assumes the official images' curve and no collapse is weighed.
    ``profile`` is the simulator's cloud profile (default: AWS).

    >>> import numpy as np, scipy.sparse as sp, fsdgraph
    >>> w = sp.random(64, 64, density=0.2, format="csr", dtype=np.float32, random_state=0)
    >>> c = choose(fsdgraph.sequential([w] * 4, bias=-0.1).layers(), [1, 2],
    ...            memory_mb=[1769, 3008], channel=["queue", "object"], images=100)
    >>> len(c.candidates) >= 8, c.plan.workers in (1, 2), c.channel in ("queue", "object")
    (True, True, True)
    """
    from fsdgraph.compiler import compile
    from fsdgraph.simulate import predict_plan

    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError(f"images must be a positive integer, got {images!r}")
    counts = _options("workers", workers, int)
    sizes = _options("memory_mb", memory_mb, int)
    channels = _options("channel", channel, str)
    if live_rows is None and sample is not None:
        live_rows = entering_live_rows(sample, layers)
    curve = _live_curve(live_rows, len(layers))
    narrowest = min(layer.weight.shape[1] for layer in layers)

    def predicted(plan: Plan, c: Candidate) -> tuple[float, float, dict[str, Any]]:
        p = predict_plan(plan, images=images, channel=c.channel, memory_mb=c.memory_mb,
                         profile=profile, live_rows=curve)
        return p.wall_s, p.cost_usd, p.to_dict()

    candidates: list[Candidate] = []
    scored: list[tuple[float, int, Candidate]] = []
    for P, mb, ch in itertools.product(counts, sizes, channels):
        memory = int(mb * 2**20 * USABLE_MEMORY)
        for replicas in sorted(d for d in range(1, P + 1) if P % d == 0)[::-1]:
            group = P // replicas
            strategy = "data" if group == 1 else "model" if replicas == 1 else "hybrid"
            collapses: list[int | None] = [None]
            if group > 1:
                at = _collapse_layer(curve, images / replicas)
                if at is not None:
                    collapses.append(at)
            for collapse_at in collapses:
                c = Candidate(strategy, replicas, collapse_at, memory_bytes=memory,
                              worker_bytes=worker_bytes(layers, group,
                                                        math.ceil(images / replicas),
                                                        collapse_at),
                              workers=P, memory_mb=mb, channel=ch)
                candidates.append(c)
                if group > narrowest:
                    c.refused = f"a group of {group} exceeds the narrowest layer ({narrowest})"
                    continue
                if not c.fits:
                    c.refused = (f"a worker needs {c.worker_bytes / 2**20:.0f} MiB, "
                                 f"{memory / 2**20:.0f} MiB usable of {mb} MB")
                    continue
                plan = compile(list(layers), P, "contiguous", strategy=strategy,
                               replicas=replicas, collapse_at=collapse_at)
                c.predicted_wall_s, c.predicted_cost_usd, _ = predicted(plan, c)
                score = c.predicted_wall_s if objective == "time" else c.predicted_cost_usd
                scored.append((score, len(plan.edges), c))
    if not scored:
        raise ConfigError(f"no way to share the model over {_said(counts)} workers fits "
                          f"{_said(sizes)} MB functions: {candidates[-1].refused}; use more "
                          f"workers or memory")
    best = min(scored, key=lambda s: (s[0], s[1]))[2]
    plan = compile(list(layers), best.workers, partitioner, strategy=best.strategy,
                   replicas=best.replicas, collapse_at=best.collapse_at)
    wall, cost, details = predicted(plan, best)
    return Choice(plan, objective, best.channel, best.memory_mb, images,
                  {"wall_s": wall, "cost_usd": cost, "breakdown": details.get("breakdown", {})},
                  candidates)


def _options(name: str, value: Any, kind: type) -> list[Any]:
    """One setting, or the list of settings the planner chooses among, checked."""
    single = isinstance(value, (kind, np.integer)) or not isinstance(value, (list, tuple))
    options: list[Any] = [value] if single else list(value)
    if not options or not all(isinstance(o, (kind, np.integer)) and not isinstance(o, bool)
                              for o in options):
        what = "an integer" if kind is int else "a string"
        raise ConfigError(f"{name}: expected {what} or a non-empty list of them, got {value!r}")
    if kind is int and min(int(o) for o in options) < 1:
        raise ConfigError(f"{name}: expected positive integers, got {value!r}")
    return options


def _said(options: list[Any]) -> str:
    return ", ".join(str(o) for o in options)


def _live_curve(live_rows: Sequence[float] | None, layers: int) -> list[float] | None:
    """``live_rows`` checked: one fraction in [0, 1] per layer (None: the simulator's)."""
    if live_rows is None:
        return None
    curve = [float(x) for x in live_rows]
    if len(curve) != layers or not all(0.0 <= x <= 1.0 for x in curve):
        raise ConfigError(f"live_rows must give {layers} fractions in [0, 1] (one per layer), "
                          f"got {len(curve)}")
    return curve


def entering_live_rows(sample: sp.spmatrix, layers: Sequence[Layer]) -> list[float]:
    """The fraction of ``sample``'s rows alive entering each layer (run serially)."""
    from fsdgraph.sources.images import live_row_curve

    sample = sp.csr_matrix(sample)
    if sample.shape[0] == 0:
        raise ConfigError("sample: no rows to measure the live rows on")
    first = float(np.count_nonzero(np.diff(sample.indptr))) / sample.shape[0]
    after = live_row_curve(sample, list(layers))
    return [first, *(float(x) for x in after[:-1])]


def _collapse_layer(curve: Sequence[float] | None, images: float) -> int | None:
    """The first layer (after the first) entered by fewer than :data:`COLLAPSE_ROWS` live
    images of a replica's ``images``; None if there is none (or no curve to tell)."""
    if curve is None:
        return None
    alive = np.asarray(curve, dtype=float) * images
    below = np.flatnonzero(alive[1:] < COLLAPSE_ROWS)
    return int(below[0]) + 1 if len(below) else None
