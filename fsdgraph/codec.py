"""The wire format of activation chunks: msgpack framing, byte-shuffled arrays, lz4.

A chunk is a :class:`~fsdgraph.kernels.Block` slice — some rows, columns ``[col0, col0 + ncols)``
of an edge's neuron list — encoded as a msgpack map::

    {"c": codec id, "o": col0, "n": ncols, "m": nrows, "r": row ids (delta-coded int32),
     "f": "d" (dense float32, column-major: ncols x nrows) | "s" (CSR: per-row counts,
     column ids, values)}

Each array is lz4-compressed on its own. Integer arrays (row-id gaps, column-id gaps within a
row) are byte-shuffled first (byte 0 of every element, then byte 1, ..., the trick of blosc), so
small numbers become long runs of zero bytes; value arrays are sent shuffled or plain, whichever
is smaller (values saturated at the cap compress best plain). Queue bodies must be text, so
:class:`TextCodec` wraps the bytes in base64.

Changing the layout means a new ``codec_id``; a decoder rejects ids it does not know.

>>> import numpy as np
>>> from fsdgraph.kernels import Block
>>> codec = BlockCodec()
>>> b = Block.from_dense(np.array([3, 9]), np.full((2, 4), 32, np.float32))
>>> chunk = codec.decode(codec.encode(b))
>>> chunk.col0, chunk.block.rows.tolist(), chunk.block.to_csr().sum()
(0, [3, 9], np.float32(256.0))
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import lz4.block
import msgpack
import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ProtocolError
from fsdgraph.kernels import Block
from fsdgraph.kernels.block import DENSE_ABOVE


@dataclass(frozen=True)
class Chunk:
    """A decoded chunk: ``block`` holds columns ``[col0, col0 + block.ncols)`` of its edge."""

    col0: int
    block: Block


def _shuffle(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> np.ndarray:
    """Inverse of :func:`_shuffle` for 4-byte items, as uint32 (OR of shifted byte planes is
    several times faster than a strided byte transpose)."""
    planes = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)
    out: np.ndarray = planes[0].astype(np.uint32)
    for i in range(1, itemsize):
        out |= planes[i].astype(np.uint32) << np.uint32(8 * i)
    return out


#: Values sampled to choose between plain and shuffled compression.
_SAMPLE = 16384


class _Arrays:
    """Per-array lz4 with an optional byte shuffle, each array as ``[shuffled, size, data]``."""

    def __init__(self, acceleration: int) -> None:
        self.acceleration = acceleration

    def _lz4(self, raw: bytes) -> bytes:
        return bytes(lz4.block.compress(raw, mode="fast", acceleration=self.acceleration,
                                        store_size=False))

    def ints(self, a: np.ndarray) -> list[Any]:
        raw = _shuffle(a.astype(np.int32, copy=False))
        return [True, len(raw), self._lz4(raw)]

    def floats(self, a: np.ndarray) -> list[Any]:
        """Values: keep whichever of plain and shuffled compresses smaller (saturated values
        compress best plain, mixed ones shuffled)."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        sample = a[:_SAMPLE]  # decide on a sample, compress the whole array once
        shuffle = len(self._lz4(_shuffle(sample))) < len(self._lz4(sample.tobytes()))
        return [shuffle, a.nbytes, self._lz4(_shuffle(a) if shuffle else a.tobytes())]

    @staticmethod
    def decode(field: Any, dtype: type[np.generic], count: int) -> np.ndarray:
        shuffled, size, data = field
        if size != count * 4:
            raise ProtocolError(f"chunk array of {size} bytes, expected {count * 4}")
        try:
            raw = lz4.block.decompress(data, uncompressed_size=size)
        except lz4.block.LZ4BlockError as exc:
            raise ProtocolError(f"undecodable chunk array: {exc}") from exc
        if len(raw) != size:
            raise ProtocolError(f"chunk array has {len(raw)} bytes, expected {size}")
        if shuffled:
            return _unshuffle(raw, 4).view(dtype)
        return np.frombuffer(raw, dtype=dtype).copy()


#: By default a block travels as CSR up to this density, whatever its layout in memory: the one
#: density threshold of fsdgraph, :data:`fsdgraph.kernels.block.DENSE_ABOVE` (documented there).
#: Kept under this name for ``ChannelConfig.wire_dense_above``'s default.
WIRE_DENSE_ABOVE = DENSE_ABOVE


class BlockCodec:
    """Blocks to compact bytes and back.

    ``acceleration`` is lz4's speed/size knob (1 = smallest). ``dense_above`` sends a block dense
    above that density: runs of zeros cost lz4 almost nothing and column ids 4 bytes each, so at
    density 0.2-0.3 a dense Graph Challenge block is half the bytes of its CSR form, for about
    1.5x the encode/decode CPU (docs/benchmarks.md). Lower it where bytes cost more than CPU.
    """

    codec_id = "fsd-block-1"

    def __init__(self, acceleration: int = 1, dense_above: float = DENSE_ABOVE) -> None:
        if acceleration < 1:
            raise ValueError(f"acceleration must be >= 1, got {acceleration}")
        if not 0.0 <= dense_above <= 1.0:
            raise ValueError(f"dense_above must be in [0, 1], got {dense_above}")
        self.acceleration = acceleration
        self.dense_above = dense_above

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "acceleration": self.acceleration,
                "dense_above": self.dense_above}

    def wire_form(self, block: Block) -> Block:
        """The layout a block travels in: dense above ``dense_above``, else CSR."""
        dense = block.density > self.dense_above
        if dense and block.dense_t is None:
            return block.as_dense()
        if not dense and block.dense_t is not None:
            return block.as_csr()
        return block

    def encode(self, block: Block, col0: int = 0) -> bytes:
        arrays = _Arrays(self.acceleration)
        block = self.wire_form(block)
        rows = block.rows.astype(np.int32)
        msg: dict[str, Any] = {"c": self.codec_id, "o": col0, "n": block.ncols, "m": len(rows),
                               "r": arrays.ints(np.diff(rows, prepend=np.int32(0)))}
        if block.dense_t is not None:
            msg["f"] = "d"
            msg["x"] = arrays.floats(block.dense_t.ravel())
        else:
            csr = block.to_csr()
            counts = np.diff(csr.indptr)
            # Column ids rise within a row: send the gaps, small numbers that compress well.
            gaps = np.diff(csr.indices, prepend=np.int32(0)).astype(np.int32)
            starts = csr.indptr[:-1][counts > 0]
            gaps[starts] = csr.indices[starts]
            msg["f"] = "s"
            msg["k"] = arrays.ints(counts)
            msg["i"] = arrays.ints(gaps)
            msg["x"] = arrays.floats(csr.data)
        return bytes(msgpack.packb(msg, use_bin_type=True))

    def decode(self, data: bytes) -> Chunk:
        try:
            msg = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"undecodable chunk ({len(data)} bytes): {exc}") from exc
        if not isinstance(msg, dict) or msg.get("c") != self.codec_id:
            got = msg.get("c") if isinstance(msg, dict) else type(msg).__name__
            raise ProtocolError(f"chunk codec {got!r} is not {self.codec_id!r}")
        try:
            nrows, ncols = int(msg["m"]), int(msg["n"])
            rows = np.cumsum(_Arrays.decode(msg["r"], np.int32, nrows), dtype=np.int64)
            if nrows and (rows[0] < 0 or np.any(np.diff(rows) <= 0)):
                raise ProtocolError("chunk row ids are not increasing")
            col0 = int(msg["o"])
            if col0 < 0:
                raise ProtocolError(f"chunk column offset {col0} is negative")
            if msg["f"] == "d":
                dense_t = _Arrays.decode(msg["x"], np.float32, nrows * ncols).reshape(ncols, nrows)
                return Chunk(col0, Block(rows.astype(np.int32), dense_t=dense_t))
            counts = _Arrays.decode(msg["k"], np.int32, nrows)
            indptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
            nnz = int(indptr[-1])
            indices = _Arrays.decode(msg["i"], np.int32, nnz)
            row_of = np.repeat(np.arange(nrows), counts)
            # Undo the per-row gaps: cumulative sum restarted at every row start.
            total = np.cumsum(indices, dtype=np.int64)
            before_row = np.concatenate(([0], total))[indptr[:-1]]
            indices = (total - before_row[row_of]).astype(np.int32)
            if nnz and (indices.min() < 0 or indices.max() >= ncols):
                raise ProtocolError("chunk column index out of range")
            values = sp.csr_matrix((_Arrays.decode(msg["x"], np.float32, nnz), indices, indptr),
                                   shape=(nrows, ncols))
            return Chunk(col0, Block(rows.astype(np.int32), csr=values))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProtocolError(f"malformed chunk: {exc!r}") from exc

    def encode_chunks(self, block: Block, max_bytes: int) -> list[bytes]:
        """Encode ``block`` as few chunks as possible, each at most ``max_bytes`` long.

        Splits by rows first; a single row that is still too big is split by columns.
        """
        out: list[bytes] = []
        self._split(self.wire_form(block), 0, max_bytes, out)
        return out or [self.encode(block)]

    def _split(self, block: Block, col0: int, max_bytes: int, out: list[bytes]) -> None:
        if block.nnz == 0:
            return  # e.g. a column range of a split row that holds nothing: nothing to send
        nrows = len(block.rows)
        raw = _raw_size(block)
        if nrows > 1 and raw > 4 * max_bytes:
            # Far too big: estimate the compressed size from a sample of rows rather than
            # encoding everything once only to throw it away.
            k = max(1, min(nrows - 1, nrows * 2 * max_bytes // raw))
            sample = block.take_rows(slice(0, k))
            ratio = len(self.encode(sample, col0)) / _raw_size(sample)
            parts = min(nrows, math.ceil(raw * ratio / max_bytes * 1.15))
            if parts > 1:
                for idx in np.array_split(np.arange(nrows), parts):
                    self._split(block.take_rows(idx), col0, max_bytes, out)
                return
        data = self.encode(block, col0)
        if len(data) > max_bytes and block.dense_t is None:
            data = min(data, self.encode(block.as_dense(), col0), key=len)
        if len(data) <= max_bytes:
            out.append(data)
            return
        if nrows > 1:
            # Aim below the limit: a part that still overflows is split again (more encoding).
            parts = min(nrows, math.ceil(len(data) / max_bytes * 1.25))
            for idx in np.array_split(np.arange(nrows), parts):
                self._split(block.take_rows(idx), col0, max_bytes, out)
        elif block.ncols > 1:
            half = block.ncols // 2
            for lo, hi in ((0, half), (half, block.ncols)):
                self._split(block.take_columns(lo, hi), col0 + lo, max_bytes, out)
        else:
            raise ProtocolError(f"one value does not fit in {max_bytes} bytes")


def _raw_size(block: Block) -> int:
    """Bytes of a block's arrays before compression."""
    if block.dense_t is not None:
        return int(4 * len(block.rows) * (block.ncols + 1))
    return int(4 * len(block.rows) + 8 * block.nnz)


class TextCodec:
    """base64, for services whose message bodies must be text (SQS, SNS)."""

    codec_id = "base64"

    @staticmethod
    def encoded_size(raw_bytes: int) -> int:
        return 4 * math.ceil(raw_bytes / 3)

    @staticmethod
    def raw_budget(text_bytes: int) -> int:
        """The largest raw size whose text form fits in ``text_bytes``."""
        return (text_bytes // 4) * 3

    def encode(self, data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    def decode(self, text: str) -> bytes:
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ProtocolError(f"message body is not base64: {exc}") from exc
