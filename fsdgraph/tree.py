"""The hierarchical invocation tree: who starts whom.

Starting P functions one after the other from the coordinator costs P round trips; instead the
coordinator invokes ``branching`` workers and every worker invokes its own ``branching`` children
before it starts working, so all P are running after about log_b(P) invocation latencies (the
paper's launch scheme). Workers are numbered level by level: the coordinator is node 0 of a
``branching``-ary heap and worker ``w`` is node ``w + 1``.

The tree is arithmetic, never a data structure: an event carries ``(worker, workers,
branching)`` and each worker computes its own children, so events stay the same small size and
no recursion is involved, whatever P and the branching factor (a chain, ``branching=1``, is a
tree of depth P).

>>> roots(5, branching=2), children(0, 5, branching=2), children(1, 5, branching=2)
([0, 1], [2, 3], [4])
>>> children(4, 5, branching=2), depth(5, branching=2), depth(1000, branching=1)
([], 2, 1000)
"""

from __future__ import annotations

from fsdgraph.errors import ConfigError


def _check(branching: int) -> None:
    if branching < 1:
        raise ConfigError(f"branching factor must be >= 1, got {branching}")


def roots(workers: int, branching: int) -> list[int]:
    """The workers the coordinator invokes itself."""
    _check(branching)
    return list(range(min(branching, workers)))


def children(worker: int, workers: int, branching: int) -> list[int]:
    """The workers that worker ``worker`` invokes before it starts working."""
    _check(branching)
    first = (worker + 1) * branching + 1  # heap node of the first child
    return [node - 1 for node in range(first, min(first + branching, workers + 1))]


def depth(workers: int, branching: int) -> int:
    """Levels of invocations before the last worker starts."""
    _check(branching)
    if branching == 1:
        return workers
    level, covered, width = 0, 0, 1
    while covered < workers:
        width *= branching
        covered += width
        level += 1
    return level
