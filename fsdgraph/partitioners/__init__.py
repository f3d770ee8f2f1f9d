"""Partitioners: which worker owns which output neuron of every layer.

A partitioner sees the whole network at once (a communication-minimising one needs the previous
layer's owners to place the next layer), and returns, per layer, an int array ``owners`` with
``owners[j]`` the worker computing output neuron ``j``. Every worker must get a balanced share.

Partitioners are plugins of the entry-point group ``fsdgraph.partitioners``, found with the same
rule as backends and channels (:mod:`fsdgraph.plugins`: an installed entry point wins, the
built-ins are the fallback), so a third party can add one without touching this package:

>>> get_partitioner("contiguous").partition([4], workers=2)[0]
array([0, 0, 1, 1], dtype=int32)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from fsdgraph.plugins import Registry


class Partitioner(ABC):
    """Assigns the output neurons of each layer to workers."""

    name: ClassVar[str]

    @abstractmethod
    def partition(
        self, widths: Sequence[int], workers: int, weights: Sequence[sp.csr_matrix] | None = None
    ) -> list[np.ndarray]:
        """``owners`` per layer (int32, one entry per output neuron, values in [0, workers)).

        ``widths`` are the layers' output widths; ``weights`` (in x out per layer) are given to
        partitioners that minimise communication and may be ignored by the others.
        """


def balanced_split(n: int, workers: int) -> np.ndarray:
    """Owner of position ``i`` when ``n`` items are cut into ``workers`` near-equal runs."""
    return (np.arange(n, dtype=np.int64) * workers // n).astype(np.int32)


class Contiguous(Partitioner):
    """Worker ``w`` owns the ``w``-th contiguous run of neurons in every layer."""

    name = "contiguous"

    def partition(
        self, widths: Sequence[int], workers: int, weights: Sequence[sp.csr_matrix] | None = None
    ) -> list[np.ndarray]:
        return [balanced_split(n, workers) for n in widths]


class Random(Partitioner):
    """A fresh balanced random assignment per layer (the paper's baseline)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def partition(
        self, widths: Sequence[int], workers: int, weights: Sequence[sp.csr_matrix] | None = None
    ) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        owners = []
        for n in widths:
            o = np.empty(n, dtype=np.int32)
            o[rng.permutation(n)] = balanced_split(n, workers)
            owners.append(o)
        return owners


PARTITIONERS: Registry[Partitioner] = Registry("fsdgraph.partitioners", Partitioner, {
    "contiguous": "fsdgraph.partitioners:Contiguous",
    "random": "fsdgraph.partitioners:Random",
    "hypergraph": "fsdgraph.partitioners.hypergraph:Hypergraph",
})


def partitioner_names() -> list[str]:
    """Every known partitioner: built-ins and those registered through entry points."""
    return PARTITIONERS.names()


def get_partitioner(name: str | Partitioner) -> Partitioner:
    """A partitioner instance by name (or the instance itself)."""
    if isinstance(name, Partitioner):
        return name
    return PARTITIONERS.load(name)()
