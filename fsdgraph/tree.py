"""The hierarchical invocation tree: who starts whom.

Starting P functions one after the other from the coordinator costs P round trips; instead the
coordinator invokes ``branching`` workers and every worker invokes its own ``branching`` children
before it starts working, so all P are running after about log_b(P) invocation latencies (the
paper's launch scheme). Workers are numbered level by level: the coordinator is node 0 of a
``branching``-ary heap and worker ``w`` is node ``w + 1``.

>>> invocation_tree(5, branching=2)
[{'worker': 0, 'children': [{'worker': 2, 'children': []}, {'worker': 3, 'children': []}]}, \
{'worker': 1, 'children': [{'worker': 4, 'children': []}]}]
"""

from __future__ import annotations

from typing import Any

from fsdgraph.errors import ConfigError


def invocation_tree(workers: int, branching: int) -> list[dict[str, Any]]:
    """The subtrees the coordinator invokes; each node is ``{"worker": w, "children": [...]}``."""
    if branching < 1:
        raise ConfigError(f"branching factor must be >= 1, got {branching}")

    def subtree(node: int) -> dict[str, Any]:
        first = node * branching + 1
        kids = [subtree(c) for c in range(first, min(first + branching, workers + 1))]
        return {"worker": node - 1, "children": kids}

    return [subtree(c) for c in range(1, min(branching, workers) + 1)]


def depth(workers: int, branching: int) -> int:
    """Levels of invocations before the last worker starts."""
    level, covered, width = 0, 0, 1
    while covered < workers:
        width *= branching
        covered += width
        level += 1
    return level
