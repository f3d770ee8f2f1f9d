"""The communication-minimising partitioner: one hypergraph partition per layer, chained.

For layer ``l`` every input neuron ``j`` is a hyperedge whose pins are the output neurons it feeds;
its owner ``prev[j]`` is fixed by the previous layer's partition (the staged input of layer 0 has
no owner: every worker that needs it reads it). Assigning output ``o`` to worker ``w`` makes ``w``
need all of ``o``'s inputs, and the **connectivity cost** of a layer is

    cost = sum over inputs j of  weight[j] * |{workers that need j} - {prev[j]}|

the number of (row, worker) deliveries per activation row. ``weight[j]`` is 1, or, in the
activation-aware mode, how often ``j`` is nonzero on a sample of inputs (most rows die within a
few layers, so a neuron that is almost always zero costs almost nothing to share).

Method, per layer, all numpy:

1. **coarsen**: outputs with identical input sets form one group (a group costs the same wherever
   it goes as any one of its outputs, so it never pays to split it unless it is too big);
2. **greedy**: largest groups first, each to the worker where its inputs add the least new
   cost (inputs the worker owns or already needs are free), among workers with room;
3. **refine** (FM-style passes): a group moves to the worker with the best positive gain if it
   fits, or swaps with a group there when the swap gains; balance stays within ``tolerance``.

>>> import numpy as np, scipy.sparse as sp
>>> w = sp.csr_matrix(np.kron(np.eye(2), np.ones((2, 2))).astype(np.float32))  # two blocks
>>> owners = Hypergraph().partition([4, 4], 2, [w, w])
>>> [o.tolist() for o in owners]
[[0, 0, 1, 1], [0, 0, 1, 1]]
>>> connectivity(w, owners[0], owners[1]) == 0
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ConfigError
from fsdgraph.graph import Layer
from fsdgraph.kernels.reference import apply_layer
from fsdgraph.partitioners import Partitioner


def connectivity(weight: sp.spmatrix, prev: np.ndarray | None, owners: np.ndarray,
                 input_weight: np.ndarray | None = None) -> float:
    """The connectivity cost of one layer (see the module docstring).

    ``prev`` owns the inputs (None: nobody, as for the staged input of layer 0).
    """
    pattern = sp.csr_matrix(weight)  # rows: inputs
    rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    pairs = np.unique(rows.astype(np.int64) * (int(owners.max()) + 1) + owners[pattern.indices])
    j, w = np.divmod(pairs, int(owners.max()) + 1)
    remote = np.ones(len(j), dtype=bool) if prev is None else prev[j] != w
    wj = np.ones(pattern.shape[0]) if input_weight is None else input_weight
    return float(wj[j[remote]].sum())


class Hypergraph(Partitioner):
    """See the module docstring. ``tolerance``: allowed load above the mean (0.03 = 3%);
    ``input_weights``: per layer, a weight per input neuron (activation-aware mode)."""

    name = "hypergraph"

    def __init__(self, tolerance: float = 0.03, passes: int = 4,
                 input_weights: Sequence[np.ndarray] | None = None) -> None:
        if not 0 <= tolerance < 1:
            raise ConfigError(f"hypergraph tolerance must be in [0, 1), got {tolerance}")
        self.tolerance = tolerance
        self.passes = passes
        self.input_weights = input_weights

    @classmethod
    def activation_aware(cls, layers: Sequence[Layer], sample: sp.spmatrix,
                         tolerance: float = 0.03) -> Hypergraph:
        """Weigh every input neuron by how often it is nonzero on ``sample`` (rows of inputs),
        running the serial reference over the sample to see each layer's inputs."""
        y = sp.csr_matrix(sample, dtype=np.float32)
        if y.shape[0] == 0:
            raise ConfigError("activation-aware partitioning needs a non-empty sample")
        weights = []
        for layer in layers:
            weights.append(np.bincount(y.indices, minlength=y.shape[1]) / y.shape[0])
            y = apply_layer(y, layer)
        return cls(tolerance, input_weights=weights)

    def partition(
        self, widths: Sequence[int], workers: int, weights: Sequence[sp.csr_matrix] | None = None
    ) -> list[np.ndarray]:
        if weights is None:
            raise ConfigError("the hypergraph partitioner needs the layers' weights")
        owners: list[np.ndarray] = []
        prev: np.ndarray | None = None
        for l, w in enumerate(weights):
            wj = None if self.input_weights is None else np.asarray(self.input_weights[l], float)
            own = _LayerPartition(sp.csc_matrix(w), prev, workers, self.tolerance, wj).run(
                self.passes)
            owners.append(own)
            prev = own
        return owners


class _LayerPartition:
    """The state of one layer's partition: groups, their workers, and who needs which input."""

    def __init__(self, by_col: sp.csc_matrix, prev: np.ndarray | None, workers: int,
                 tolerance: float, input_weight: np.ndarray | None) -> None:
        n_in, n_out = by_col.shape
        self.workers = workers
        self.prev = np.full(n_in, -1, np.int64) if prev is None else prev.astype(np.int64)
        self.weight = np.ones(n_in) if input_weight is None else input_weight
        self.capacity = max(math.ceil(n_out / workers),
                            math.floor(n_out / workers * (1 + tolerance)))
        self.groups, self.inputs = _groups(by_col, self.capacity)
        self.sizes = np.array([len(g) for g in self.groups], dtype=np.int64)
        self.where = np.full(len(self.groups), -1, dtype=np.int64)
        self.load = np.zeros(workers, dtype=np.int64)
        self.need = np.zeros((workers, n_in), dtype=np.int32)
        self.n_out = n_out

    def _add_cost(self, inputs: np.ndarray) -> np.ndarray:
        """Per worker: the cost of making it need ``inputs`` (what it lacks, weighted)."""
        lacks = self.need[:, inputs] == 0
        owner = self.prev[inputs]
        has_owner = owner >= 0
        lacks[owner[has_owner], np.flatnonzero(has_owner)] = False
        cost: np.ndarray = lacks.astype(float) @ self.weight[inputs]
        return cost

    def _remove_gain(self, g: int) -> float:
        """What leaving its worker saves: inputs only this group needs there, not owned there."""
        a, inputs = self.where[g], self.inputs[g]
        alone = (self.need[a, inputs] == 1) & (self.prev[inputs] != a)
        return float(self.weight[inputs][alone].sum())

    def _place(self, g: int, w: int) -> None:
        old = self.where[g]
        if old >= 0:
            self.need[old, self.inputs[g]] -= 1
            self.load[old] -= self.sizes[g]
        self.need[w, self.inputs[g]] += 1
        self.load[w] += self.sizes[g]
        self.where[g] = w

    def _split(self, g: int) -> int:
        """Cut group ``g`` in two (it fits nowhere whole); return the new group's index."""
        outs = self.groups[g]
        half = len(outs) // 2
        self.groups[g] = outs[:half]
        self.groups.append(outs[half:])
        self.inputs.append(self.inputs[g])
        self.sizes[g] = half
        self.sizes = np.append(self.sizes, len(outs) - half)
        self.where = np.append(self.where, -1)
        return len(self.groups) - 1

    def run(self, passes: int) -> np.ndarray:
        pending = [int(g) for g in np.argsort(-self.sizes, kind="stable")][::-1]
        while pending:
            g = pending.pop()
            room = self.load + self.sizes[g] <= self.capacity
            if not room.any():  # coarse groups left no worker enough room: place halves
                pending.append(self._split(g))
                pending.append(g)
                continue
            cost = self._add_cost(self.inputs[g])
            cost[~room] = np.inf
            # Least added cost; ties to the least loaded worker (keeps the greedy balanced).
            self._place(g, int(np.lexsort((self.load, cost))[0]))
        for _ in range(passes):
            if not self._refine():
                break
        owners = np.empty(self.n_out, dtype=np.int32)
        for g, outs in enumerate(self.groups):
            owners[outs] = self.where[g]
        self._ensure_nonempty(owners)
        return owners

    def _refine(self) -> bool:
        """One pass of gainful moves and swaps; True if anything improved."""
        improved = False
        for g in range(len(self.groups)):
            a = int(self.where[g])
            gain = self._remove_gain(g) - self._add_cost(self.inputs[g])
            gain[a] = -np.inf
            b = int(np.argmax(gain))
            if gain[b] <= 1e-12:
                continue
            if self.load[b] + self.sizes[g] <= self.capacity:
                self._place(g, b)
                improved = True
                continue
            improved |= self._try_swap(g, a, b)
        return improved

    def _try_swap(self, g: int, a: int, b: int) -> bool:
        """Swap ``g`` (on a) with the group on ``b`` that makes the best exchange, if any gains."""
        candidates = np.flatnonzero((self.where == b) & (self.sizes == self.sizes[g]))
        best, best_gain = -1, 1e-12
        for h in candidates[:64]:
            gain = self._swap_gain(g, int(h), a, b)
            if gain > best_gain:
                best, best_gain = int(h), gain
        if best < 0:
            return False
        self._place(g, b)
        self._place(best, a)
        return True

    def _swap_gain(self, g: int, h: int, a: int, b: int) -> float:
        """Exact cost saved by swapping g (on a) and h (on b), looking only at their inputs."""
        inputs = np.union1d(self.inputs[g], self.inputs[h])
        in_g = np.isin(inputs, self.inputs[g]).astype(np.int32)
        in_h = np.isin(inputs, self.inputs[h]).astype(np.int32)
        na, nb = self.need[a, inputs], self.need[b, inputs]
        owner, wj = self.prev[inputs], self.weight[inputs]

        def cost(need_a: np.ndarray, need_b: np.ndarray) -> float:
            return float(wj[(need_a > 0) & (owner != a)].sum()
                         + wj[(need_b > 0) & (owner != b)].sum())

        return cost(na, nb) - cost(na - in_g + in_h, nb - in_h + in_g)

    def _ensure_nonempty(self, owners: np.ndarray) -> None:
        """Every worker must own at least one neuron: hand idle workers one from the busiest."""
        counts = np.bincount(owners, minlength=self.workers)
        for w in np.flatnonzero(counts == 0):
            donor = int(np.argmax(counts))
            victim = np.flatnonzero(owners == donor)[-1]
            owners[victim] = w
            counts[donor] -= 1
            counts[w] += 1


def _groups(by_col: sp.csc_matrix, capacity: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outputs grouped by identical input sets (split to at most half a worker's capacity)."""
    by_col = sp.csc_matrix(by_col)
    by_col.sort_indices()
    index: dict[bytes, list[int]] = {}
    for o in range(by_col.shape[1]):
        key = by_col.indices[by_col.indptr[o]:by_col.indptr[o + 1]].tobytes()
        index.setdefault(key, []).append(o)
    largest = max(1, capacity // 2)
    groups, inputs = [], []
    for outs in index.values():
        first = outs[0]
        ins = by_col.indices[by_col.indptr[first]:by_col.indptr[first + 1]].astype(np.int64)
        for start in range(0, len(outs), largest):
            groups.append(np.asarray(outs[start:start + largest], dtype=np.int64))
            inputs.append(ins)
    return groups, inputs
