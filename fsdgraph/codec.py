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

Objects that the object store carries whole (a worker's staged input, its output) do not need
the compression: :func:`block_fields` gives a block's arrays as they are, for
:func:`fsdgraph.serialize.pack_parts` to send raw, and :func:`block_from_fields` checks them in
full and builds the block without copying them.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lz4.block
import msgpack
import numpy as np
import scipy.sparse as sp

from fsdgraph.errors import ProtocolError
from fsdgraph.kernels import Block
from fsdgraph.kernels.block import DENSE_ABOVE
from fsdgraph.serialize import pack_parts, unpack_parts


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


#: The layout of :func:`block_fields`; :func:`block_from_fields` refuses any other.
RAW_BLOCK = "fsd-raw-block-1"


def block_fields(block: Block) -> dict[str, Any]:
    """A block as plain fields of arrays, uncompressed: ``{"f": RAW_BLOCK, "rows": ...}`` and
    either ``"dense_t"`` (columns x rows) or ``"ncols"``, ``"indptr"``, ``"indices"``,
    ``"data"`` (CSR, rows x ncols)."""
    fields: dict[str, Any] = {"f": RAW_BLOCK, "rows": block.rows}
    if block.dense_t is not None:
        fields["dense_t"] = block.dense_t
    else:
        csr = block.to_csr()
        fields.update(ncols=int(csr.shape[1]), indptr=csr.indptr, indices=csr.indices,
                      data=csr.data)
    return fields


def _vector(fields: dict[str, Any], name: str, kind: str, ndim: int = 1) -> np.ndarray:
    a = fields.get(name)
    if not isinstance(a, np.ndarray) or a.ndim != ndim or a.dtype.kind not in kind:
        raise ProtocolError(f"raw block: field {name!r} is not a {ndim}-D array of kind "
                            f"{kind!r}")
    return a


def block_from_fields(fields: Any, batch: int | None = None) -> Block:
    """The block :func:`block_fields` described; ProtocolError unless it is a well-formed one:
    row ids increasing (and below ``batch``, if given), float32 values, and for CSR consistent
    pointers, column ids in range and sorted within each row (what the kernels assume, so
    nothing sorts them later)."""
    if not isinstance(fields, dict) or fields.get("f") != RAW_BLOCK:
        got = fields.get("f") if isinstance(fields, dict) else type(fields).__name__
        raise ProtocolError(f"block layout {got!r} is not {RAW_BLOCK!r}")
    rows = _vector(fields, "rows", "iu")
    nrows = len(rows)
    if nrows and (int(rows[0]) < 0 or np.any(rows[1:] <= rows[:-1])
                  or (batch is not None and int(rows[-1]) >= batch)
                  or int(rows[-1]) > np.iinfo(np.int32).max):
        raise ProtocolError("raw block: row ids are not increasing ids of the batch")
    rows = rows.astype(np.int32, copy=False)
    if "dense_t" in fields:
        dense_t = _vector(fields, "dense_t", "f", ndim=2)
        if dense_t.dtype != np.float32 or dense_t.shape[1] != nrows:
            raise ProtocolError(f"raw block: dense values of shape {dense_t.shape} and dtype "
                                f"{dense_t.dtype} for {nrows} rows")
        return Block(rows, dense_t=dense_t)
    ncols = fields.get("ncols")
    if type(ncols) is not int or ncols < 0:
        raise ProtocolError(f"raw block: column count {ncols!r}")
    indptr, indices = _vector(fields, "indptr", "iu"), _vector(fields, "indices", "iu")
    data = _vector(fields, "data", "f")
    nnz = len(indices)
    if (data.dtype != np.float32 or len(data) != nnz or len(indptr) != nrows + 1
            or indptr[0] != 0 or indptr[-1] != nnz or np.any(indptr[1:] < indptr[:-1])):
        raise ProtocolError(f"raw block: CSR arrays of {len(indptr)} pointers, {nnz} column "
                            f"ids and {len(data)} values ({data.dtype}) for {nrows} rows")
    if nnz:
        # Column ids do not fall within a row (the order every kernel and the reference sum
        # in): each step is >= 0 except where a row starts (its first id only has to be in
        # range).
        steps = np.diff(indices.astype(np.int64))
        starts = indptr[1:-1]
        steps[starts[(starts > 0) & (starts < nnz)] - 1] = 0
        if int(indices.min()) < 0 or int(indices.max()) >= ncols or np.any(steps < 0):
            raise ProtocolError("raw block: CSR column ids out of range or not sorted")
    csr = sp.csr_matrix((data, indices.astype(np.int32, copy=False), indptr),
                        shape=(nrows, ncols))
    csr.has_sorted_indices = True  # checked above: nobody sorts (writes) these arrays again
    return Block(rows, csr=csr)


# -- the objects a worker reads and writes whole ----------------------------------------------
#: The layout of a worker's staged input object (``runs/<run>/input/<w>``).
INPUT_VERSION = 2
#: The layout of a worker's output object (``runs/<run>/out/<w>``).
OUTPUT_VERSION = 2


def input_parts(block: Block) -> list[bytes | memoryview]:
    """The parts of a worker's input object: ``{"version", "block"}``, the block raw."""
    return pack_parts({"version": INPUT_VERSION, "block": block_fields(block)})


def _versioned(what: str, parts: Sequence[bytes | memoryview], version: int) -> dict[str, Any]:
    d = unpack_parts(parts)
    if not isinstance(d, dict) or d.get("version") != version:
        got = d.get("version") if isinstance(d, dict) else type(d).__name__
        raise ProtocolError(f"{what} version {got!r} is not {version}, the version this "
                            "fsdgraph reads")
    return d


def read_input(key: str, parts: Sequence[bytes | memoryview], batch: int) -> Block:
    """The block of the input object ``key`` (its unsealed ``parts``); ProtocolError naming the
    key if it is not a well-formed one."""
    try:
        return block_from_fields(_versioned("input", parts, INPUT_VERSION).get("block"), batch)
    except ProtocolError as exc:
        raise ProtocolError(f"object {key}: {exc}") from exc


def output_parts(block: Block, columns: np.ndarray,
                 metrics: dict[str, Any]) -> list[bytes | memoryview]:
    """The parts of a worker's output object: ``{"version", "block", "columns", "metrics"}``,
    the block raw, ``columns`` its global output neuron ids."""
    return pack_parts({"version": OUTPUT_VERSION, "block": block_fields(block),
                       "columns": columns, "metrics": metrics})


def read_output(key: str, parts: Sequence[bytes | memoryview], batch: int,
                width: int) -> tuple[Block, np.ndarray, dict[str, Any]]:
    """The block, its column ids and the metrics of the output object ``key`` (its unsealed
    ``parts``), for a run of ``batch`` rows and ``width`` outputs; ProtocolError naming the key
    if it is not a well-formed one."""
    try:
        d = _versioned("output", parts, OUTPUT_VERSION)
        block = block_from_fields(d.get("block"), batch)
    except ProtocolError as exc:
        raise ProtocolError(f"object {key}: {exc}") from exc
    columns, metrics = d.get("columns"), d.get("metrics")
    if (not isinstance(columns, np.ndarray) or columns.ndim != 1
            or columns.dtype.kind not in "iu" or len(columns) != block.ncols
            or (len(columns) and (int(columns.min()) < 0 or int(columns.max()) >= width))):
        raise ProtocolError(f"object {key}: output column ids do not match its block and the "
                            f"output width {width}")
    if not isinstance(metrics, dict):
        raise ProtocolError(f"object {key}: output without metrics")
    return block, columns, metrics
