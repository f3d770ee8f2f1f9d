"""Collectives of tensor-parallel model runs (:mod:`fsdgraph.model_lowering`), over any channel.

Each is one exchange step: every worker sends its blocks with :meth:`Channel.send` under the
step's index and reads its peers' with :meth:`Channel.receive`, so the chunking, compression,
deduplication, byte counting and peer timeouts are the channel's, as for a layer's column
exchange. Sums are taken in worker order, so that every worker holding a reduced value holds the
same bits.

* :func:`all_gather`: each worker's share of the features to every other; all get the whole;
* :func:`reduce_scatter`: each worker's partial sum of worker ``d``'s features to ``d``, who adds
  them;
* :func:`all_reduce_rows`: a few float64 numbers per row (LayerNorm's and softmax's row
  statistics) to every worker, each sent as two float32 (high and low part), combined by a sum
  or a maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fsdgraph.channels.base import Channel
from fsdgraph.codec import Chunk
from fsdgraph.errors import ProtocolError
from fsdgraph.kernels import Block

Bounds = Sequence[Sequence[int]]


def _block(values: np.ndarray) -> Block:
    return Block.from_dense(np.arange(values.shape[0], dtype=np.int32), values)


def _place(out: np.ndarray, chunk: Chunk, col0: int, what: str) -> None:
    """Write ``chunk`` into ``out`` at column ``col0`` (plus the chunk's own offset)."""
    block = chunk.block
    lo = col0 + chunk.col0
    hi = lo + block.ncols
    rows = block.rows
    if hi > out.shape[1] or (len(rows) and (rows.min() < 0 or rows.max() >= out.shape[0])):
        raise ProtocolError(f"{what}: a chunk of rows up to {rows.max() if len(rows) else 0}, "
                            f"columns [{lo}, {hi}) falls outside {out.shape[0]} x "
                            f"{out.shape[1]}")
    if block.dense_t is not None:
        out[rows, lo:hi] = block.dense_t.T
    elif block.csr is not None:
        out[rows, lo:hi] = block.csr.toarray()


def _peers(channel: Channel) -> list[int]:
    return [p for p in range(channel.workers) if p != channel.worker]


async def all_gather(channel: Channel, step: int, mine: np.ndarray, bounds: Bounds) -> np.ndarray:
    """The whole value from every worker's share (``mine``: this worker's ``bounds``)."""
    me = channel.worker
    batch, width = mine.shape[0], bounds[-1][1]
    block = _block(mine)
    await channel.send(step, [(p, block) for p in _peers(channel)])
    out = np.zeros((batch, width), np.float32)
    out[:, bounds[me][0]:bounds[me][1]] = mine
    async for src, chunk in channel.receive(step, _peers(channel)):
        _place(out, chunk, bounds[src][0], f"all-gather step {step} from worker {src}")
    return out


async def reduce_scatter(channel: Channel, step: int, partial: np.ndarray, bounds: Bounds,
                         bias: np.ndarray | None = None) -> np.ndarray:
    """This worker's features of the sum of every worker's ``partial`` (full width), plus
    ``bias`` (its features' share) once summed."""
    me = channel.worker
    await channel.send(step, [(p, _block(partial[:, bounds[p][0]:bounds[p][1]]))
                              for p in _peers(channel)])
    lo, hi = bounds[me]
    parts = {me: partial[:, lo:hi]}
    for p in _peers(channel):
        parts[p] = np.zeros((partial.shape[0], hi - lo), np.float32)
    async for src, chunk in channel.receive(step, _peers(channel)):
        _place(parts[src], chunk, 0, f"reduce-scatter step {step} from worker {src}")
    total = parts[0].copy()
    for p in range(1, channel.workers):
        total += parts[p]
    if bias is not None:
        total += bias
    return np.ascontiguousarray(total)


async def all_reduce_rows(channel: Channel, step: int, values: np.ndarray,
                          combine: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.add
                          ) -> np.ndarray:
    """``values`` (rows, float64) combined over every worker, in worker order."""
    values = np.asarray(values, np.float64).reshape(-1, 1)
    high = values.astype(np.float32)
    low = (values - high).astype(np.float32)
    pair = np.hstack([high, low])
    await channel.send(step, [(p, _block(pair)) for p in _peers(channel)])
    # This worker's own numbers as its peers receive them: every worker combines the same bits.
    got = {channel.worker: pair}
    for p in _peers(channel):
        got[p] = np.zeros((values.shape[0], 2), np.float32)
    async for src, chunk in channel.receive(step, _peers(channel)):
        _place(got[src], chunk, 0, f"row statistics step {step} from worker {src}")
    total = _widen(got[0])
    for p in range(1, channel.workers):
        total = combine(total, _widen(got[p]))
    return total.reshape(-1)


def _widen(pair: np.ndarray) -> np.ndarray:
    """The float64 values sent as float32 (high, low) columns."""
    return pair[:, :1].astype(np.float64) + pair[:, 1:].astype(np.float64)
