"""The wire format of activation chunks: msgpack framing, byte-shuffled arrays, lz4.

A chunk is a :class:`~fsdgraph.kernels.Block` slice — some rows, columns ``[col0, col0 + ncols)``
of an edge's neuron list — encoded as a msgpack map::

    {"c": codec id, "o": col0, "n": ncols, "r": row ids (delta-coded int32),
     "f": "d" (dense float32 rows x ncols) | "s" (CSR: per-row counts, column ids, values)}

Arrays are byte-shuffled (byte 0 of every element, then byte 1, ...) before lz4, the trick of
blosc: activations saturated at the cap and delta-coded row ids become long runs that lz4 squeezes
to almost nothing. Queue bodies must be text, so :class:`TextCodec` wraps the bytes in base64.

Changing the layout means a new ``codec_id``; a decoder rejects ids it does not know.

>>> import numpy as np
>>> from fsdgraph.kernels import Block
>>> codec = BlockCodec()
>>> b = Block.from_dense(np.array([3, 9]), np.full((2, 4), 32, np.float32))
>>> chunk = codec.decode(codec.encode(b))
>>> chunk.col0, chunk.block.rows.tolist(), chunk.block.values.sum()
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


@dataclass(frozen=True)
class Chunk:
    """A decoded chunk: ``block`` holds columns ``[col0, col0 + block.ncols)`` of its edge."""

    col0: int
    block: Block


def _shuffle(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes()


def _unshuffle(data: bytes, dtype: type[np.generic], count: int) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    if len(data) != count * itemsize:
        raise ProtocolError(f"chunk array has {len(data)} bytes, expected {count * itemsize}")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, count).T
    return np.ascontiguousarray(raw).view(dtype).reshape(count)


class BlockCodec:
    """Blocks to compact bytes and back. ``acceleration`` is lz4's speed/size knob (1 = best)."""

    codec_id = "fsd-block-1"

    def __init__(self, acceleration: int = 1) -> None:
        if acceleration < 1:
            raise ValueError(f"acceleration must be >= 1, got {acceleration}")
        self.acceleration = acceleration

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "acceleration": self.acceleration}

    def encode(self, block: Block, col0: int = 0) -> bytes:
        rows = block.rows.astype(np.int32)
        deltas = np.diff(rows, prepend=np.int32(0)).astype(np.int32)
        msg: dict[str, Any] = {"c": self.codec_id, "o": col0, "n": block.ncols,
                               "m": len(rows), "r": _shuffle(deltas)}
        values = block.values
        if isinstance(values, np.ndarray):
            msg["f"] = "d"
            msg["x"] = _shuffle(values.astype(np.float32).ravel())
        else:
            msg["f"] = "s"
            msg["k"] = _shuffle(np.diff(values.indptr).astype(np.int32))
            msg["i"] = _shuffle(values.indices.astype(np.int32))
            msg["x"] = _shuffle(values.data.astype(np.float32))
        raw = msgpack.packb(msg, use_bin_type=True)
        return bytes(lz4.block.compress(raw, mode="fast", acceleration=self.acceleration))

    def decode(self, data: bytes) -> Chunk:
        try:
            msg = msgpack.unpackb(lz4.block.decompress(data), raw=False)
        except (lz4.block.LZ4BlockError, ValueError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"undecodable chunk ({len(data)} bytes): {exc}") from exc
        if not isinstance(msg, dict) or msg.get("c") != self.codec_id:
            got = msg.get("c") if isinstance(msg, dict) else type(msg).__name__
            raise ProtocolError(f"chunk codec {got!r} is not {self.codec_id!r}")
        try:
            nrows, ncols = int(msg["m"]), int(msg["n"])
            rows = np.cumsum(_unshuffle(msg["r"], np.int32, nrows), dtype=np.int64)
            if msg["f"] == "d":
                values: Any = _unshuffle(msg["x"], np.float32, nrows * ncols).reshape(nrows, ncols)
            else:
                counts = _unshuffle(msg["k"], np.int32, nrows)
                nnz = int(counts.sum())
                indices = _unshuffle(msg["i"], np.int32, nnz)
                if nnz and (indices.min() < 0 or indices.max() >= ncols):
                    raise ProtocolError("chunk column index out of range")
                indptr = np.concatenate([[0], np.cumsum(counts)])
                values = sp.csr_matrix((_unshuffle(msg["x"], np.float32, nnz), indices, indptr),
                                       shape=(nrows, ncols))
            return Chunk(int(msg["o"]), Block(rows.astype(np.int32), values))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed chunk: {exc!r}") from exc

    def encode_chunks(self, block: Block, max_bytes: int) -> list[bytes]:
        """Encode ``block`` as few chunks as possible, each at most ``max_bytes`` long.

        Splits by rows first; a single row that is still too big is split by columns.
        """
        out: list[bytes] = []
        self._split(block, 0, max_bytes, out)
        return out

    def _split(self, block: Block, col0: int, max_bytes: int, out: list[bytes]) -> None:
        data = self.encode(block, col0)
        if len(data) <= max_bytes:
            out.append(data)
            return
        nrows = len(block.rows)
        if nrows > 1:
            parts = min(nrows, math.ceil(len(data) / max_bytes * 1.1))
            for idx in np.array_split(np.arange(nrows), parts):
                sub = Block(block.rows[idx], block.values[idx])
                self._split(sub, col0, max_bytes, out)
        elif block.ncols > 1:
            half = block.ncols // 2
            for lo, hi in ((0, half), (half, block.ncols)):
                sub = Block(block.rows, block.values[:, lo:hi])
                self._split(sub, col0 + lo, max_bytes, out)
        else:
            raise ProtocolError(f"one value does not fit in {max_bytes} bytes")


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
