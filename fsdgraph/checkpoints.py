"""How often a worker checkpoints its layer output, from what a checkpoint costs and what a lost
worker costs.

A checkpoint is one PUT of the worker's output columns (``runs/<run>/ckpt/<worker>/<layer>``,
tagged like an edge object). It lets the scheduler relaunch a dead worker from there, and a worker
near its function's time limit continue in a new invocation; and only once it is durable may the
worker delete the messages it consumed (a relaunch must find what the checkpoint does not
cover). More checkpoints cost PUTs and time; fewer cost more recomputation after a loss and keep
more messages undeleted. Young's first-order rule balances the two: with a checkpoint taking
``C`` seconds and a worker lost ``lambda`` times a second, the interval that wastes least is
``sqrt(2 C / lambda)`` seconds (Young, "A first order approximation to the optimum checkpoint
interval", CACM 17(9), 1974). Messages held longer than the queue's visibility timeout are
delivered again (more receives), so the interval is also kept within half of it.

>>> checkpoint_every(120, layer_s=0.1, checkpoint_s=0.05, losses_per_s=1 / 3600,
...                  hold_limit_s=15.0)
120
>>> checkpoint_every(120, layer_s=2.0, checkpoint_s=0.05, losses_per_s=1 / 3600,
...                  hold_limit_s=15.0)
7
"""

from __future__ import annotations

import math

from fsdgraph.errors import ConfigError
from fsdgraph.resources import RunNames
from fsdgraph.sealed import seal, unseal

#: Seconds one checkpoint PUT takes (an S3 PUT of a few hundred KB from Lambda: tens of ms).
CHECKPOINT_S = 0.05
#: Workers lost per worker-second assumed when choosing the interval: one per worker-hour, far
#: above what Lambda's availability gives, so that the rule errs towards checkpointing.
LOSSES_PER_S = 1 / 3600


def checkpoint_every(layers: int, *, layer_s: float, checkpoint_s: float = CHECKPOINT_S,
                     losses_per_s: float = LOSSES_PER_S, hold_limit_s: float) -> int:
    """Layers between two checkpoints (``layers`` or more: only the continuation near the time
    limit checkpoints). ``layer_s`` is the time of one layer, ``hold_limit_s`` the longest
    received messages should stay undeleted."""
    for name, value in (("layer_s", layer_s), ("checkpoint_s", checkpoint_s),
                        ("losses_per_s", losses_per_s), ("hold_limit_s", hold_limit_s)):
        if not 0 < value < math.inf:
            raise ConfigError(f"checkpoint_every: {name} must be a positive finite number, "
                              f"got {value}")
    young = math.sqrt(2 * checkpoint_s / losses_per_s) / layer_s
    held = hold_limit_s / layer_s
    return max(1, min(layers, math.floor(min(young, held))))


def attempt_object(names: RunNames, worker: int, attempt: int) -> bytes:
    """The body of ``names.attempt_key(worker)``, written by the scheduler as it relaunches a
    worker: ``attempt`` is the current one, and an older attempt that reads it stops."""
    return seal(names, names.attempt_key(worker), [str(attempt).encode()])


def read_attempt(names: RunNames, worker: int, body: bytes) -> int | None:
    """The attempt an :func:`attempt_object` says is current; None for an object the scheduler
    did not write (damaged or forged: never obeyed)."""
    parts = unseal(names, names.attempt_key(worker), body)
    if parts is None or len(parts) != 1 or not parts[0][0].isdigit():
        return None
    return int(parts[0][0])
